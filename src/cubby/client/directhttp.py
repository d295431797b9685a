"""Chunk downloads read straight off the socket, and the API's JSON requests: `DirectHttp`.

A 1 GiB `cubby get` through httpx spent most of its client CPU moving bytes, not hashing
them: httpcore reads 64 KiB at a time into h11's receive buffer (a ``bytearray`` appended to
and sliced out of), h11 undoes the chunked transfer coding with another copy, and every piece
is an event, a generator step and a ``bytes`` object before `cubby.core.frames` joins the
pieces of a chunk into a third copy. Here the answer's head is parsed by h11 (a sans-IO
parser: its rules, not ours, decide what a valid head is), and the body is read with
``socket.recv_into`` into the buffer each chunk ends up in, so each byte is copied once, by
the kernel.

It takes only what it can read that way: plain ``http://`` URLs, answers 200/206 whose body
is delimited by Content-Length or chunked transfer coding, with no Content-Encoding. For
anything else it raises `Declined` before yielding a body, and the caller sends the request
through httpx (the client falls back to httpx for every request when a proxy is configured
or a custom transport is in use; see `ApiClient`). A request may be sent twice, once over a
kept-alive connection the server had closed and then over a fresh one: harmless for chunk
fetches, file content, chunk uploads and the API's reads; a request that must not be applied
twice (a commit) says so (``resend=False``) and gets `Unavailable` instead, as it would
through httpx, which never sends a request again.

The API's JSON requests come this way too (`ApiClient`): with them httpx is not even
imported by a command that needs nothing else (about 35 ms of every command's start).

A request body may be a `GatheredBody` (`cubby.client.directsend`): a list of buffers written
with ``sendmsg`` after the head, uncopied. A request may ask for every answer
(``any_status``), so that an error answer is read here and mapped by the caller, instead of
the request being sent again through httpx to learn the same error: uploads (the whole body
again), the API's JSON requests, chunk fetches and file downloads all do.

Connections are kept alive in a small pool: a request takes one (each worker thread of a
download holds its own while it reads), and gives it back only when its body was read to the
end and the server did not ask to close.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from cubby.client.directsend import GatheredBody
from cubby.errors import Unavailable

HEAD_LIMIT = 64 * 1024
"""The most bytes an answer's head (status line and headers) may take."""
LINE_LIMIT = 4096
"""The most bytes a chunk-size line or a trailer line of the chunked coding may take."""
FILL = 8 * 1024
"""Bytes asked of the socket when a head or a chunk-size line is read: little, since what
follows such a line is body bytes that would then be copied out of the small buffer."""
PIECE = 64 * 1024
"""Bytes asked of the socket at a time for a chunked answer read whole (`Body.read`)."""
KEEP_IDLE = 8
"""Idle connections kept per server (as httpx's ``max_keepalive_connections``)."""


class Declined(Exception):
    """The direct path does not take this answer (a status other than 200/206, an encoded body,
    a body delimited by closing the connection): send the request through httpx instead."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds, as the httpx client's: to connect, and for each read or write to progress."""

    connect: float | None
    read: float | None
    write: float | None


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    reused: bool = False


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent bytes
    nobody asked for), so it cannot carry a request. poll, where there is one: select refuses
    descriptors above 1024, which a sync client holding many files may reach."""
    try:
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Body:
    """An answer's body, read with `readinto` until it returns 0. Bytes already buffered with
    the head (or with a chunk-size line) are copied out; the rest is received straight into
    the caller's buffer. Every length on the wire is bounded before it is believed."""

    def __init__(
        self, sock: socket.socket, buf: bytearray, pos: int, end: int, length: int | None,
        on_bytes: Callable[[int], None] | None, retry_after: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        """The answer's Retry-After, if any: an error answer's caller tells a failure that may
        pass from one that will not by it (`cubby.client.api.raise_for`)."""
        self._sock = sock
        self._buf = buf
        self._pos = pos
        self._end = end
        self._chunked = length is None
        self._left = length or 0
        """Bytes left in the body (Content-Length) or in the current chunk (chunked)."""
        self._first = True
        self.done = length == 0
        self._on_bytes = on_bytes

    @property
    def clean(self) -> bool:
        """Read to its end with nothing after it: the connection may carry another request."""
        return self.done and self._pos == self._end

    def _recv_buffered(self) -> None:
        """Receive more bytes into the small buffer (after what it holds)."""
        if self._pos == self._end:
            self._pos = self._end = 0
        elif self._end + FILL > len(self._buf):
            self._buf[: self._end - self._pos] = self._buf[self._pos : self._end]
            self._pos, self._end = 0, self._end - self._pos
        n = self._sock.recv_into(memoryview(self._buf)[self._end : self._end + FILL])
        if n == 0:
            raise Unavailable("the server closed the connection before the end of its answer (truncated body)", code="truncated_body")
        self._end += n

    def _line(self) -> bytes:
        """The next CRLF-ended line of the chunked coding, without its CRLF."""
        while (i := self._buf.find(b"\r\n", self._pos, self._end)) < 0:
            if self._end - self._pos > LINE_LIMIT:
                raise Unavailable("the server's answer holds an over-long line in its chunked body", code="bad_answer")
            self._recv_buffered()
        if i - self._pos > LINE_LIMIT:
            raise Unavailable("the server's answer holds an over-long line in its chunked body", code="bad_answer")
        line = bytes(self._buf[self._pos : i])
        self._pos = i + 2
        return line

    def _next_chunk(self) -> None:
        if not self._first and self._line() != b"":
            raise Unavailable("the server's chunked body misses the CRLF after a chunk", code="bad_answer")
        self._first = False
        size = self._line().split(b";", 1)[0].strip()
        if not size or len(size) > 15 or any(c not in b"0123456789abcdefABCDEF" for c in size):
            raise Unavailable(f"the server's chunked body has a bad chunk size {size[:20]!r}", code="bad_answer")
        self._left = int(size, 16)
        if self._left == 0:
            while self._line() != b"":  # trailers, unused
                pass
            self.done = True

    def read(self, limit: int) -> bytes:
        """The rest of the body (an answer of the API: JSON), refused beyond ``limit`` bytes.
        A body of known length is received into one buffer of its size: a few large ``recv``
        calls, not one per 8 KiB (a commit batch's answer is 300 KB, and each call lets go
        of the GIL and waits to win it back)."""
        if not self._chunked:
            if self._left > limit:
                raise Unavailable(f"the server's answer is over {limit} bytes", code="bad_answer")
            out = bytearray(self._left)
            view = memoryview(out)
            got = 0
            while got < len(out) and (n := self.readinto(view[got:])):
                got += n
            return bytes(out)
        whole = bytearray()
        piece = memoryview(bytearray(PIECE))
        while n := self.readinto(piece):
            whole += piece[:n]
            if len(whole) > limit:
                raise Unavailable(f"the server's answer is over {limit} bytes", code="bad_answer")
        return bytes(whole)

    def readinto(self, view: memoryview) -> int:
        """Fill the front of ``view`` with the next body bytes; how many (0 at the end)."""
        while self._left == 0:
            if self.done or not self._chunked:
                self.done = True
                return 0
            self._next_chunk()
        want = min(len(view), self._left)
        if want == 0:
            return 0
        have = self._end - self._pos
        if have:
            n = min(want, have)
            view[:n] = self._buf[self._pos : self._pos + n]
            self._pos += n
        else:
            n = self._sock.recv_into(view, want)
            if n == 0:
                raise Unavailable(
                    f"the server closed the connection before the end of its answer ({self._left} bytes short: truncated body)",
                    code="truncated_body",
                )
        self._left -= n
        if self._left == 0 and not self._chunked:
            self.done = True
        if self._on_bytes:
            self._on_bytes(n)
        return n


class DirectHttp:
    """Requests whose answer bodies are read with ``recv_into`` (see the module)."""

    def __init__(self, headers: Mapping[str, str], timeouts: Timeouts) -> None:
        self.headers = dict(headers)
        self.timeouts = timeouts
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def takes(url: str) -> bool:
        """Whether a request to ``url`` may go this way (plain HTTP only: https goes to httpx)."""
        return urlsplit(url).scheme == "http"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks = [s for group in self._idle.values() for s in group]
            self._idle.clear()
        for s in socks:
            s.close()

    # -- connections -------------------------------------------------------------------------
    def _connect(self, host: str, port: int) -> socket.socket:
        try:
            sock = socket.create_connection((host, port), timeout=self.timeouts.connect)
        except OSError as exc:
            raise Unavailable(f"cannot reach the cubby server at http://{host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _take(self, key: tuple[str, int]) -> _Conn:
        """An idle connection to ``key`` that the server has not closed, else a new one."""
        while True:
            with self._lock:
                group = self._idle.get(key)
                sock = group.pop() if group else None
            if sock is None:
                return _Conn(self._connect(*key))
            if not _readable(sock):
                return _Conn(sock, reused=True)
            sock.close()

    def _give_back(self, key: tuple[str, int], sock: socket.socket) -> None:
        with self._lock:
            group = self._idle.setdefault(key, [])
            if not self._closed and len(group) < KEEP_IDLE:
                group.append(sock)
                return
        sock.close()

    # -- requests ----------------------------------------------------------------------------
    def _request_bytes(
        self, method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | GatheredBody
    ) -> tuple[h11.Connection, bytes]:
        """The request's head (h11 writes it), and its body when it is ``bytes``; a
        `GatheredBody` is sent after the head by the caller, h11 only told its length."""
        conn = h11.Connection(h11.CLIENT)
        all_headers = [("Host", host), ("Accept-Encoding", "identity"), *self.headers.items(), *headers.items()]
        length = body.length if isinstance(body, GatheredBody) else len(body)
        if length or method == "POST":
            all_headers.append(("Content-Length", str(length)))
        out = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
        if isinstance(body, GatheredBody):
            return conn, out
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        return conn, out

    def _read_head(self, conn: h11.Connection, sock: socket.socket, buf: bytearray) -> tuple[h11.Response, int, int]:
        """The final answer's head (1xx answers skipped), and where the body's first bytes lie
        in ``buf``."""
        pos = end = 0
        while True:
            while (i := buf.find(b"\r\n\r\n", pos, end)) < 0:
                if end - pos >= HEAD_LIMIT:
                    raise Unavailable(f"the server's answer head is over {HEAD_LIMIT} bytes", code="bad_answer")
                if end + FILL > len(buf):
                    buf[: end - pos] = buf[pos:end]
                    pos, end = 0, end - pos
                n = sock.recv_into(memoryview(buf)[end : end + FILL])
                if n == 0:
                    raise ConnectionResetError("the server closed the connection before answering")
                end += n
            try:
                conn.receive_data(bytes(buf[pos : i + 4]))
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise Unavailable(f"the server's answer head is malformed: {exc}", code="bad_answer") from exc
            pos = i + 4
            if isinstance(event, h11.Response):
                return event, pos, end
            if not isinstance(event, h11.InformationalResponse):
                raise Unavailable(f"the server's answer head is malformed ({type(event).__name__})", code="bad_answer")

    @contextlib.contextmanager
    def open(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, body: bytes | GatheredBody = b"",
        on_bytes: Callable[[int], None] | None = None, on_sent: Callable[[int], None] | None = None,
        any_status: bool = False, resend: bool = True, encoded: frozenset[bytes] = frozenset(),
    ) -> Iterator[tuple[int, Body]]:
        """Send the request; yield (status, body) for a 200 or 206 answer (for any answer with
        ``any_status``), else raise `Declined` (nothing was yielded, the caller may send the
        request elsewhere). ``encoded``: Content-Encodings whose body is read as it comes, for
        a caller that checks every byte (Ceph RGW 16 answers ``aws-chunked`` for an object
        PUT signed in chunks, whose stored bytes are plain). ``on_sent`` is told the bytes of a `GatheredBody` as they leave
        (a rate limiter's ``consume``). The connection goes back to the pool only if the body
        was read to its end.

        A server may answer before it has read the whole body (an error found in its first
        frames) and close: as httpcore does, a failed write of the body is followed by reading
        the answer, and only when there is none is the write's error raised.

        The one retry: only on a kept-alive (reused) socket, only for a connection error
        before any byte of an answer (not a timeout), and on a new socket. It happens even
        when the kernel had taken bytes of the request: a socket whose server already closed
        takes them just the same (the reset comes after), so "nothing accepted" would never
        hold in the race it exists for. Hence not with ``resend=False`` (see the module)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise Declined(f"not a plain http URL: {url}")
        key = (parts.hostname, parts.port or 80)
        host = parts.netloc.rsplit("@", 1)[-1]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        buf = bytearray(HEAD_LIMIT + FILL)
        for attempt in (1, 2):
            c = self._take(key)
            conn, request = self._request_bytes(method, target, host, headers or {}, body)
            unsent: OSError | None = None
            try:
                c.sock.settimeout(self.timeouts.write)
                c.sock.sendall(request)
                if isinstance(body, GatheredBody):
                    try:
                        body.send(c.sock, on_sent)
                    except TimeoutError:
                        raise
                    except OSError as exc:
                        unsent = exc  # the server may have answered early (and closed): read on
                c.sock.settimeout(self.timeouts.read)
                head, pos, end = self._read_head(conn, c.sock, buf)
                break
            except (ConnectionError, TimeoutError, OSError, Unavailable) as exc:
                c.sock.close()
                if attempt == 1 and c.reused and resend and not isinstance(exc, (TimeoutError, Unavailable)):
                    continue  # a kept-alive connection the server had closed: once more, on a new one
                if isinstance(exc, Unavailable) and unsent is None:
                    raise
                raise Unavailable(f"lost the connection to http://{host} while sending {parts.path}: {unsent or exc}") from exc
        if head.status_code not in (200, 206) and not any_status:
            c.sock.close()
            raise Declined(f"answer {head.status_code}")
        fields = {name.lower(): value for name, value in head.headers}
        encoding = fields.get(b"content-encoding", b"identity").strip().lower()
        transfer = fields.get(b"transfer-encoding")
        keep = head.http_version == b"1.1" and b"close" not in fields.get(b"connection", b"").lower() and unsent is None
        length: int | None
        if encoding != b"identity" and encoding not in encoded:
            c.sock.close()
            raise Declined(f"Content-Encoding {encoding!r}")
        if transfer is not None:
            if transfer.strip().lower() != b"chunked":
                c.sock.close()
                raise Declined(f"Transfer-Encoding {transfer!r}")
            length = None
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])  # h11 checked it is a number
        else:
            c.sock.close()
            raise Declined("a body delimited by closing the connection")
        retry_after = fields.get(b"retry-after")
        reader = Body(c.sock, buf, pos, end, length, on_bytes, None if retry_after is None else retry_after.decode("latin-1"))
        try:
            yield head.status_code, reader
        except BaseException:
            c.sock.close()
            raise
        if keep and reader.clean:
            self._give_back(key, c.sock)
        else:
            c.sock.close()
