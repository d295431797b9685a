"""An upload's body read off the socket into each chunk's own buffer (`cubby.server.framesink`),
over real HTTP on loopback: what it stores is byte-identical, and the connection it borrowed
goes on serving requests exactly as one whose body went through uvicorn (kept alive after a
whole body, pipelined requests behind it answered, ``100 Continue`` sent, closed after a body
it stopped reading)."""

from __future__ import annotations

import hashlib
import json
import socket

from cubby.core import frames
from tests.helpers.named_chunks import named_chunks
from tests.helpers.raw_http import Answers, content_length, read_answer, read_until, recv
from tests.server.conftest import Users

SIZES = [300 * 1024, 4096, 70_000, 17, 1024 * 1024 + 5, 65_535, 2 * 1024 * 1024, 1]
"""Chunks read straight into their buffers (at least 64 KiB) and through the scratch buffer
(smaller), in a mixed order."""


def chunks(seed: int, sizes: list[int] = SIZES) -> list[tuple[str, bytes]]:
    return named_chunks(seed, sizes)


def upload_head(token: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST /api/v1/blocks/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {frames.CONTENT_TYPE}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def body_of(items: list[tuple[str, bytes]]) -> bytes:
    return b"".join(frames.encode(name, data) for name, data in items)


def answer_json(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def download(users: Users, path: str, items: list[tuple[str, bytes]]) -> bytes:
    """Commit ``items`` as the file ``path`` and read it back through the API."""
    with users.raw(users.alice_token) as c:
        commit = {"path": path, "size": sum(len(d) for _, d in items),
                  "chunks": [{"hash": h, "size": len(d)} for h, d in items]}
        r = c.post("/api/v1/files/commit", json=commit)
        assert r.status_code == 200 and r.json().get("status") != "need_chunks", r.text
        got = c.get(f"/api/v1/content{path}")
        assert got.status_code == 200
        return got.content


def test_uploads_and_requests_share_one_kept_alive_connection(users: Users) -> None:
    """Two uploads and a request pipelined in one write, then another upload sent in pieces of
    a few bytes at a time: every answer comes, in order, and the file of all the chunks reads
    back byte-identical."""
    first, second, third = chunks(1), chunks(2, [4096] * 40 + [200_000]), chunks(3, [90_000, 5, 130_000])
    a, b, c = body_of(first), body_of(second), body_of(third)
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(
            upload_head(users.alice_token, len(a)) + a + upload_head(users.alice_token, len(b)) + b
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = Answers(sock)  # (the answers may come in one read)
        assert answer_json(answers.next()) == (200, {"received": len(first), "stored": len(first)})
        assert answer_json(answers.next()) == (200, {"received": len(second), "stored": len(second)})
        head = answers.next()
        assert head.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in head
        message = upload_head(users.alice_token, len(c)) + c
        for at in range(0, len(message), 7919):  # the head and the body cut anywhere
            sock.sendall(message[at : at + 7919])
        assert answer_json(answers.next()) == (200, {"received": len(third), "stored": len(third)})
        assert answers.buf == b""  # nothing more than the four answers came
    everything = first + second + third
    assert download(users, "/sunk.bin", everything) == b"".join(d for _, d in everything)


def test_expect_100_continue_is_answered_before_the_body(users: Users) -> None:
    items = chunks(4, [500_000])
    body = body_of(items)
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(upload_head(users.alice_token, len(body), "Expect: 100-continue\r\n"))
        interim = read_until(sock)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        answer = interim.partition(b"\r\n\r\n")[2] + read_answer(sock)
        assert answer_json(answer) == (200, {"received": 1, "stored": 1})
    assert download(users, "/continued.bin", items) == items[0][1]


def test_a_body_that_ends_inside_a_frame_is_refused_and_the_connection_goes_on(users: Users) -> None:
    """The whole body was read, so the connection serves its next request."""
    items = chunks(5, [100_000])
    body = body_of(items)[:-10]
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(upload_head(users.alice_token, len(body)) + body)
        status, answer = answer_json(read_answer(sock))
        assert status == 400 and answer["code"] == "truncated_body", answer
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 200")
    with users.raw(users.alice_token) as c:  # and nothing of it was kept
        r = c.post("/api/v1/files/commit", json={"path": "/cut.bin", "size": 100_000,
                                                  "chunks": [{"hash": items[0][0], "size": 100_000}]})
        assert r.json()["status"] == "need_chunks"
        assert [n["hash"] for n in r.json()["needed"]] == [items[0][0]]


def test_a_frame_too_long_in_the_middle_of_a_body_closes_the_connection(users: Users) -> None:
    """413 for a header declaring more than the largest chunk, after a good frame: the rest of
    the body is not read, the connection closes after the answer, the server serves others."""
    good = chunks(6, [200_000])
    name = hashlib.sha256(b"x").hexdigest()
    body = body_of(good) + frames.header(name, 64 * 1024 * 1024)
    declared = len(body) + 1024 * 1024
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(upload_head(users.alice_token, declared) + body + b"\0" * 65536)
        answer = read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"connection: close" in answer.lower().partition(b"\r\n\r\n")[0]
        while recv(sock):  # the server closes its end
            pass
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 200")


def test_a_client_gone_in_the_middle_of_a_frame_leaves_the_server_serving(users: Users) -> None:
    items = chunks(7, [3 * 1024 * 1024])
    body = body_of(items)
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(upload_head(users.alice_token, len(body)) + body[: len(body) // 2])
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        whole = body_of(items)
        sock.sendall(upload_head(users.alice_token, len(whole)) + whole)
        assert answer_json(read_answer(sock)) == (200, {"received": 1, "stored": 1})


def test_a_chunked_body_still_goes_through_the_http_parser(users: Users) -> None:
    """Without a Content-Length, the body is not handed to a sink: uvicorn reads it."""
    items = chunks(8, [80_000, 3000])
    body = body_of(items)
    coded = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 10_000]), body[i : i + 10_000]) for i in range(0, len(body), 10_000))
    head = upload_head(users.alice_token, 0).replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(head + coded + b"0\r\n\r\n")
        answer = read_answer(sock)
        assert content_length(answer.partition(b"\r\n\r\n")[0]) > 0
        assert answer_json(answer) == (200, {"received": 2, "stored": 2})
    assert download(users, "/chunked.bin", items) == body_of([]) + items[0][1] + items[1][1]


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(users: Users) -> None:
    """413 from the Content-Length alone (this server's cap is 32 MiB): no sink is lent, the
    body is not waited for, and what was sent of it is not kept."""
    items = chunks(9, [100_000])
    body = body_of(items)
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=30) as sock:
        sock.sendall(upload_head(users.alice_token, 64 * 1024 * 1024) + body)  # the rest never comes
        status, answer = answer_json(read_answer(sock))
        assert status == 413 and answer["code"] == "payload_too_large", answer
    with users.raw(users.alice_token) as c:
        r = c.post("/api/v1/files/commit", json={"path": "/over.bin", "size": 100_000,
                                                  "chunks": [{"hash": items[0][0], "size": 100_000}]})
        assert r.json()["status"] == "need_chunks"
