"""Hostile connections against both HTTP fronts: the main server (uvicorn + Starlette, guarded by
`cubby.server.guard`) and the lean notification front (`cubby.notify.wire`).

Every attack goes through real sockets on loopback. After each, the server process's resident
memory (VmRSS) must stay within a generous bound of what it was before, and another client
(from another loopback address, so that per-address caps do not apply to it) must still be
served. Deadlines are short here (``--header-timeout``/``--idle-timeout`` flags).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import resource
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.live_server import LiveServer
from tests.helpers.raw_http import read_answer

HEADER_TIMEOUT = 1.5
IDLE_TIMEOUT = 3.0
PER_ADDRESS = 40
SERVER_FILES = 512
"""The server's open-file limit here, so that idle sockets can reach it in a test."""
MEMORY_BOUND = 120 * 1024 * 1024
"""Growth of the server's RSS an attack may cause (the old fronts grew by 0.6-1.5 GB)."""
WAIT = 30.0
"""How long a test waits for something the server must do within a deadline (generous)."""


@dataclass
class Front:
    name: str
    server: LiveServer
    token: str

    @property
    def port(self) -> int:
        return self.server.port

    def rss(self) -> int:
        assert self.server.proc is not None
        for line in Path(f"/proc/{self.server.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module", params=["main", "lean"])
def front(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    tmp = tmp_path_factory.mktemp(f"hostile-{request.param}")
    limits = [
        "--header-timeout", str(HEADER_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT),
        "--max-connections-per-address", str(PER_ADDRESS),
    ]
    role = "all" if request.param == "main" else "notify"
    db = f"sqlite:///{tmp / 'meta.db'}"
    server = LiveServer(tmp / "data", db_url=db, role=role, extra_args=limits)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(SERVER_FILES, hard), hard))  # inherited by the server
    try:
        server.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield Front(request.param, server, server.add_user(f"u{uuid.uuid4().hex[:8]}"))
    finally:
        server.stop()


# -- raw clients ----------------------------------------------------------------------------
_next_source = [10]


def fresh_source() -> str:
    """A loopback address no other test in this module connects from."""
    _next_source[0] += 1
    return f"127.0.{_next_source[0] // 250}.{_next_source[0] % 250 + 2}"


def connect(port: int, source: str, timeout: float = WAIT) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def served(front: Front) -> bool:
    """Another client, from an address of its own, gets an answer to GET /healthz."""
    with connect(front.port, fresh_source()) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return status_of(read_answer(s)) == 200


def closed_by_server(s: socket.socket, within: float = WAIT) -> bool:
    """True once the server closes ``s`` (EOF or reset), reading and discarding what it sends."""
    s.settimeout(within)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def ws_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def ws_open(front: Front, source: str | None = None) -> socket.socket:
    s = connect(front.port, source or fresh_source())
    s.sendall(
        b"GET /api/v1/notify/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + ws_key() + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer " + front.token.encode() + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, head
        head += chunk
    assert status_of(head) == 101, head
    return s


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(s: socket.socket) -> int | None:
    """Read server frames until a close frame; its status code (None if the socket just ends)."""
    buf = b""
    s.settimeout(WAIT)
    while True:
        while len(buf) >= 2:
            n, off = buf[1] & 0x7F, 2
            if n == 126:
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            opcode, payload, buf = buf[0] & 0x0F, buf[off : off + n], buf[off + n :]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        buf += chunk


def flood(s: socket.socket, unit: bytes, total: int) -> None:
    """Send ``unit`` repeatedly, up to ``total`` bytes, never reading; stop when the server
    stops reading (a send that blocks for seconds) or drops the connection."""
    s.settimeout(5)
    batch = unit * max(1, 65536 // len(unit))
    sent = 0
    try:
        while sent < total:
            s.sendall(batch)
            sent += len(batch)
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass


# -- the attacks ------------------------------------------------------------------------------
def test_a_websocket_ping_flood_never_read(front: Front) -> None:
    before = front.rss()
    s = ws_open(front)
    flood(s, frame(0x9, b"p" * 125), 200 * 1024 * 1024)
    assert front.rss() - before < MEMORY_BOUND
    assert served(front)
    assert closed_by_server(s) or front.rss() - before < MEMORY_BOUND
    s.close()


def test_pipelined_requests_never_read(front: Front) -> None:
    before = front.rss()
    s = connect(front.port, fresh_source())
    flood(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 40 * 1024 * 1024)
    assert front.rss() - before < MEMORY_BOUND
    assert served(front)
    s.close()


def test_slow_bodies_are_bounded(front: Front) -> None:
    before = front.rss()
    socks = []
    body = b"{" + b" " * (900 * 1024)
    for i in range(240):
        if i % (PER_ADDRESS - 5) == 0:
            source = fresh_source()
        s = connect(front.port, source)
        s.sendall(
            b"POST /api/v1/notify/longpoll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + front.token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100)
        )
        s.settimeout(2)
        try:
            s.sendall(body)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
        socks.append(s)
    assert front.rss() - before < MEMORY_BOUND
    assert served(front)
    for s in socks:
        s.close()


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "], ids=["idle", "half-sent"])
def test_idle_and_half_sent_headers_are_closed_after_the_deadline(front: Front, sent: bytes) -> None:
    s = connect(front.port, fresh_source())
    if sent:
        s.sendall(sent)
    assert closed_by_server(s, within=HEADER_TIMEOUT + WAIT)
    s.close()


def test_a_connection_idle_between_requests_is_closed(front: Front) -> None:
    s = connect(front.port, fresh_source())
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(read_answer(s)) == 200
    assert closed_by_server(s, within=IDLE_TIMEOUT + WAIT)
    s.close()


@pytest.mark.parametrize("request_line", [b"POST /anything", b"POST /api/v1/notify/ws", b"GET /healthz"])
def test_an_upgrade_off_the_websocket_route_is_refused(front: Front, request_line: bytes) -> None:
    with connect(front.port, fresh_source()) as s:
        s.sendall(
            request_line + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + ws_key() + b"\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
        )
        answer = read_answer(s)
        assert status_of(answer) != 101, answer


@pytest.mark.parametrize(
    "headers",
    [
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",  # no key
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 8\r\n",
    ],
    ids=["no-key", "short-key", "version-8"],
)
def test_a_bad_websocket_handshake_is_refused(front: Front, headers: bytes) -> None:
    if b"%s" in headers:
        headers = headers % ws_key()
    with connect(front.port, fresh_source()) as s:
        s.sendall(b"GET /api/v1/notify/ws HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = read_answer(s)
        assert 400 <= status_of(answer) < 500, answer


@pytest.mark.parametrize(
    "frames, code",
    [
        ([frame(0x1, b"{}", rsv=4)], 1002),  # RSV1 without an extension
        ([frame(0x9, b"x" * 126)], 1002),  # a control frame over 125 bytes
        ([frame(0x9, b"x", fin=False)], 1002),  # a fragmented control frame
        ([frame(0x0, b"{}")], 1002),  # a continuation with nothing to continue
        ([frame(0x1, b"{", fin=False), frame(0x1, b"}")], 1002),  # a new message inside one
        ([frame(0x1, b"{}", mask=False)], 1002),  # an unmasked client frame
        ([frame(0x3, b"")], 1002),  # a reserved opcode
        ([frame(0x1, b'{"cursor": "\xff\xfe"}')], 1007),  # invalid UTF-8 in text
        ([frame(0x1, b'{"a": "\xe2\x82', fin=False), frame(0x0, b'"}')], 1007),  # split, still invalid
    ],
    ids=["rsv", "long-control", "fragmented-control", "lone-continuation", "interleaved", "unmasked",
         "reserved-opcode", "utf8", "utf8-fragmented"],
)
def test_bad_frames_close_with_the_right_code(front: Front, frames: list[bytes], code: int) -> None:
    s = ws_open(front)
    s.sendall(b"".join(frames))
    assert close_code(s) == code
    s.close()
    assert served(front)


def test_connections_per_address_are_capped(front: Front) -> None:
    source = fresh_source()
    held = [connect(front.port, source) for _ in range(PER_ADDRESS)]
    try:
        with connect(front.port, source) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(read_answer(s)) == 429
        assert served(front)
    finally:
        for s in held:
            s.close()


def test_many_idle_sockets_never_lock_out_another_client(front: Front) -> None:
    """More idle sockets than the server has file descriptors: the global cap keeps some in
    reserve, and the oldest idle socket makes room for a client with a request."""
    before = front.rss()
    held = []
    for i in range(SERVER_FILES + 100):
        if i % (PER_ADDRESS - 5) == 0:
            source = fresh_source()
        held.append(connect(front.port, source))
    try:
        assert served(front)
        assert front.rss() - before < MEMORY_BOUND
    finally:
        for s in held:
            s.close()


def json_head(token: str, length: int) -> bytes:
    """The head of a JSON POST to a route that reads its body whole (``/blocks/fetch``)."""
    return (
        b"POST /api/v1/blocks/fetch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % length
    )


def test_bodies_held_whole_share_one_budget(tmp_path: Path) -> None:
    """``--max-buffered-bodies`` bounds the bodies one process holds whole, all requests
    together: a body that could never fit is refused with 413; while a slow client holds
    900 KB of an unfinished body, another request's 200 KB body is refused with 503 (retry
    later), not kept; once the slow client is gone, the same request is read and answered."""
    server = LiveServer(tmp_path / "data", extra_args=["--max-buffered-bodies", str(1 << 20)]).start()
    try:
        token = server.add_user("budget")

        def head(length: int) -> bytes:
            return json_head(token, length)

        def post(body: bytes) -> bytes:
            with connect(server.port, fresh_source()) as s:
                s.sendall(head(len(body)) + body)
                return read_answer(s)

        small = b" " * 200_000 + b'{"hashes": []}'
        assert status_of(post(small)) == 400  # read whole, then refused for what it says
        huge = post(b" " * 1_200_000 + b'{"hashes": []}')
        assert status_of(huge) == 413 and b"--max-buffered-bodies" in huge, huge[:300]

        # The slow body and the probe race for the budget, and the second to come is refused:
        # until the probe is the one refused, the slow client starts again.
        end = time.monotonic() + WAIT
        while True:
            slow = connect(server.port, fresh_source())
            slow.sendall(head(950_000) + b" " * 900_000)
            time.sleep(0.2)  # (not a bound: the loop tries again if the server was not there yet)
            busy = post(small)
            if status_of(busy) == 503 or time.monotonic() > end:
                break
            slow.close()
        try:
            assert status_of(busy) == 503 and b'"unavailable"' in busy, busy[:300]
        finally:
            slow.close()
        end = time.monotonic() + WAIT
        while status_of(after := post(small)) == 503 and time.monotonic() < end:
            time.sleep(0.05)
        assert status_of(after) == 400, after[:300]
    finally:
        server.stop()


UPLOAD_BUDGET = 16 * 1024 * 1024
"""``--max-buffered-uploads`` of the upload-budget tests."""


def budget_server(tmp_path: Path) -> Front:
    server = LiveServer(tmp_path / "data", extra_args=["--max-buffered-uploads", str(UPLOAD_BUDGET)]).start()
    return Front("main", server, server.add_user("uploader"))


def upload_on(front: Front, body: bytes, declared: int | None = None, patience: float = 2.0) -> socket.socket:
    """A connection that has sent an upload's head and ``body`` (of ``declared`` bytes in all:
    the rest never comes), or as much of it as the server took within ``patience`` seconds."""
    s = connect(front.port, fresh_source())
    s.sendall(
        b"POST /api/v1/blocks/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-cubby-chunks\r\n"
        b"Authorization: Bearer " + front.token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % (declared or len(body))
    )
    s.settimeout(patience)
    with contextlib.suppress(TimeoutError, ConnectionResetError, BrokenPipeError):
        s.sendall(body)
    s.settimeout(WAIT)
    return s


def buffered_uploads(front: Front) -> float:
    """The upload bytes the server holds, from its ``/metrics``."""
    for line in httpx.get(f"http://127.0.0.1:{front.port}/metrics").text.splitlines():
        if line.startswith('cubby_buffered_body_bytes{budget="upload"}'):
            return float(line.split()[-1])
    raise AssertionError("no cubby_buffered_body_bytes for uploads in /metrics")


def first_part_of_a_chunk(size: int) -> bytes:
    """The header of a frame of a 4 MiB chunk and its first ``size`` bytes: a body cut short."""
    return struct.pack(">32sI", os.urandom(32), 4 << 20) + os.urandom(size)


def test_slow_uploads_are_bounded(tmp_path: Path) -> None:
    """Forty connections each send most of a 4 MiB chunk frame and then nothing (140 MiB): the
    server takes in what ``--max-buffered-uploads`` allows (16 MiB here, as its metrics count
    what uploads hold), no more, each other upload waiting for room, and it keeps serving
    others."""
    front = budget_server(tmp_path)
    try:
        slow = [upload_on(front, first_part_of_a_chunk(3_500_000), declared=(4 << 20) + 36) for _ in range(40)]
        end = time.monotonic() + WAIT
        while buffered_uploads(front) < UPLOAD_BUDGET - (4 << 20) and time.monotonic() < end:
            time.sleep(0.05)  # (until the budget is full: the server reads as it can)
        assert UPLOAD_BUDGET - (4 << 20) <= buffered_uploads(front) <= UPLOAD_BUDGET
        assert served(front)
        for s in slow:
            s.close()
    finally:
        front.server.stop()


def test_an_upload_waits_for_room_then_is_refused_or_stored(tmp_path: Path) -> None:
    """With the upload budget held by three slow uploads (each holds room for the whole 4 MiB
    frame it began: 12.6 MB of 16 MiB, and a fourth 4 MiB frame is 144 bytes too many), an
    honest 4 MiB chunk waits for room and, none coming, is refused with 503 (retry later);
    once the slow uploads are gone, the same upload is stored."""
    front = budget_server(tmp_path)
    chunk = os.urandom(4 << 20)
    honest = struct.pack(">32sI", bytes.fromhex(hashlib.sha256(chunk).hexdigest()), len(chunk)) + chunk
    try:
        # (each sent whole, however loaded the machine: there is room for all three)
        frame = (4 << 20) + 36
        slow = [upload_on(front, first_part_of_a_chunk(3_500_000), declared=frame, patience=WAIT) for _ in range(3)]
        assert 4 * frame > UPLOAD_BUDGET
        # The honest upload must not race them for the room: it starts once the server holds
        # all of them, as its metrics say.
        end = time.monotonic() + WAIT
        while buffered_uploads(front) < 3 * frame and time.monotonic() < end:
            time.sleep(0.05)
        with upload_on(front, honest) as s:
            refused = read_answer(s)
        assert status_of(refused) == 503 and b'"unavailable"' in refused, refused[:300]
        for s in slow:
            s.close()
        end = time.monotonic() + WAIT
        while True:
            with upload_on(front, honest) as s:
                answer = read_answer(s)
            if status_of(answer) != 503 or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert status_of(answer) == 200 and b'"received":1' in answer, answer[:300]
    finally:
        front.server.stop()


def upload_lines(front: Front) -> list[dict[str, object]]:
    """The access log's lines for uploads, and every error line, from the server's log."""
    lines = [json.loads(x) for x in front.server.logs().splitlines() if x.startswith("{")]
    return [d for d in lines if d.get("path") == "/api/v1/blocks/upload" or d.get("level") == "error"]


def ended_uploads(front: Front, count: int) -> list[dict[str, object]]:
    """The log's upload and error lines once ``count`` uploads have ended (or `WAIT` passed)."""
    end = time.monotonic() + WAIT
    while len(lines := upload_lines(front)) < count and time.monotonic() < end:
        time.sleep(0.1)
    return lines


def test_an_upload_cut_off_is_logged_as_its_client_gone_not_as_a_server_error(tmp_path: Path) -> None:
    """A client that closes its connection half-way through an upload is nothing the server
    did wrong: one access line with 499 ``client_gone``, no 500, no traceback (before: a 500
    and two error lines of some 3 KB each, which anyone could make by closing sockets)."""
    front = budget_server(tmp_path)
    try:
        with upload_on(front, first_part_of_a_chunk(100_000), declared=(4 << 20) + 36):
            time.sleep(0.3)
        lines = ended_uploads(front, 1)
        assert [(d.get("status"), d.get("error_code")) for d in lines] == [(499, "client_gone")], lines
        assert served(front)
    finally:
        front.server.stop()


def test_a_request_short_of_room_closes_the_slowest_bodies(tmp_path: Path) -> None:
    """Thirty-four connections each send 30 KB of a 950 KB body and then nothing, filling a
    1 MiB budget (``--max-buffered-bodies``). Left alone they would hold it for ever, and every
    request after them would be refused. Once they are past the grace (``--header-timeout``,
    1 s here) and under the minimum rate, an honest request short of room closes the oldest of
    them (without an answer: they are cut off) to make it, and is answered."""
    server = LiveServer(
        tmp_path / "data", extra_args=["--max-buffered-bodies", str(1 << 20), "--header-timeout", "1"]
    ).start()
    try:
        token = server.add_user("budget")

        def head(length: int) -> bytes:
            return json_head(token, length)

        slow = []
        for _ in range(34):  # 1,020,000 bytes: all of them fit
            s = connect(server.port, fresh_source())
            s.sendall(head(950_000) + b" " * 30_000)
            slow.append(s)
        time.sleep(3)  # (the grace, and the rate: 30 KB in 3 s is under 16 KiB/s)
        with connect(server.port, fresh_source()) as s:
            body = b" " * 200_000 + b'{"hashes": []}'
            s.sendall(head(len(body)) + body)
            answer = read_answer(s)
        assert status_of(answer) == 400, answer[:300]  # read whole, then refused for what it says
        cut = 0
        for s in slow:
            s.settimeout(0.1)
            try:
                got = s.recv(65536)
                assert not got.startswith(b"HTTP/"), got[:200]  # none was answered
                cut += got == b""
            except ConnectionResetError:
                cut += 1
            except TimeoutError:
                pass  # still open: not needed for the room
            s.close()
        assert 0 < cut < len(slow)
    finally:
        server.stop()
