"""An answer's head and body leave in one write (`cubby.server.onewrite`), over real HTTP on
loopback: the bytes are the same as before, and the answers that must not wait for a body
(HEAD, ``100 Continue``, a chunked stream) still go out as they did."""

from __future__ import annotations

import hashlib
import socket

from tests.helpers.raw_http import read_answer, read_until
from tests.server.conftest import Users


def request(method: str, path: str, token: str | None = None, extra: str = "", length: int | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    body = f"Content-Type: application/json\r\nContent-Length: {length}\r\n" if length is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}{body}{extra}\r\n".encode()


def split(answer: bytes) -> tuple[bytes, bytes, int]:
    """(head, body so far, declared Content-Length)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), -1
    )
    return head, body, length


def test_a_small_answer_arrives_whole_in_one_piece(users: Users) -> None:
    """One write of the head and the body: the first read holds the whole answer."""
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=20) as sock:
        for _ in range(3):  # and again on the kept-alive connection
            sock.sendall(request("GET", "/healthz"))
            head, body, length = split(sock.recv(65536))
            assert head.startswith(b"HTTP/1.1 200"), head
            assert length > 0 and len(body) == length, (head, body)
            assert b'"status":"ok"' in body


def test_an_error_answer_and_a_commit_answer_arrive_whole(users: Users) -> None:
    digest = hashlib.sha256(b"one write").hexdigest()
    body = b'{"path": "/ow", "size": 9, "chunks": [{"hash": "%s", "size": 9}]}' % digest.encode()
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=20) as sock:
        sock.sendall(request("POST", "/api/v1/files/commit", users.alice_token, length=len(body)) + body)
        head, got, length = split(read_answer(sock))
        assert head.startswith(b"HTTP/1.1 200") and len(got) == length and b"need_chunks" in got
        sock.sendall(request("GET", "/api/v1/files/stat?path=/nothing-here", users.alice_token))
        head, got, length = split(read_answer(sock))
        assert head.startswith(b"HTTP/1.1 404") and len(got) == length and b"not_found" in got


def test_a_head_request_gets_its_head_and_no_body(users: Users) -> None:
    """A HEAD answer declares the GET's length and sends no body: nothing is held back
    waiting for one, and the connection serves the next request."""
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=20) as sock:
        sock.sendall(request("HEAD", "/healthz"))
        head = read_until(sock)
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n"), head
        assert split(head)[2] > 0
        sock.sendall(request("GET", "/healthz"))
        head, body, length = split(read_answer(sock))
        assert head.startswith(b"HTTP/1.1 200") and len(body) == length


def test_100_continue_still_comes_before_the_body_is_sent(users: Users) -> None:
    digest = hashlib.sha256(b"continue").hexdigest()
    body = b'{"path": "/cont", "size": 8, "chunks": [{"hash": "%s", "size": 8}]}' % digest.encode()
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=20) as sock:
        sock.sendall(
            request("POST", "/api/v1/files/commit", users.alice_token, extra="Expect: 100-continue\r\n", length=len(body))
        )
        interim = read_until(sock)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        answer = interim.partition(b"\r\n\r\n")[2] + read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"need_chunks" in answer


def test_pipelined_requests_are_answered_in_order(users: Users) -> None:
    with socket.create_connection(("127.0.0.1", users.server.port), timeout=20) as sock:
        sock.sendall(request("GET", "/healthz") + request("GET", "/nope") + request("GET", "/healthz"))
        buf = b""
        answers = []
        while len(answers) < 3:
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = split(head + b"\r\n\r\n")[2]
            while len(rest) < length:
                rest += sock.recv(65536)
            answers.append(head.split(b"\r\n")[0])
            buf = rest[length:]
        assert answers == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"]
