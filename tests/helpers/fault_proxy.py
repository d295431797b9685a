"""A fault-injecting HTTP proxy on loopback, between an S3 client and an S3 server.

It runs an asyncio server on 127.0.0.1 port 0 in a thread of its own. Each client connection
carries one request (the proxy answers ``Connection: close``, so the client opens a new
connection for the next one). For a set share of requests, chosen by a seeded random source so
a run can be repeated, it injects one fault:

- ``slowdown``: answers ``503 SlowDown`` itself, without forwarding the request;
- ``cut_put``: forwards the headers and half the body of a PUT, then drops both connections;
- ``cut_get``: forwards a GET, relays the response headers and half its body, then drops it;
- ``garble_put``: forwards a PUT whole but with one byte of its body changed (a body damaged on
  the way, which the server must refuse by its checksum rather than store, if it checks it);
- ``stall``: takes the request whole and never answers it (a server that accepts and hangs, as
  Ceph RGW does with its OSD down), until the proxy stops.

Everything else is forwarded whole. ``counts`` says how many of each fault it injected, and
``requests`` how many requests it saw, so a test can show the faults happened; with ``record_puts``,
``puts`` holds the headers (names in lower case) and body of each PUT as the client sent it.
``faults`` is read for each request: a test may replace it to start or end an outage.

With ``check_crc32`` or ``check_chunks`` it also stands in for a server that checks what the
one behind it (moto) does not: a body's CRC32, or the signatures of a body signed in chunks,
the request's own and each chunk's (`chunk_signatures_hold`, written here from AWS's
description, apart from cubby's signer, and checked against AWS's published example in
tests/blockstore/test_s3chunked.py).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
import random
import re
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

BAD_DIGEST_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code>'
    b"<Message>The CRC32 you specified did not match the calculated checksum.</Message></Error>"
)
BAD_CHUNK_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
    b"<Message>The chunk signature does not match.</Message></Error>"
)
BAD_QUERY_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
    b"<Message>The request signature we calculated does not match the signature you provided.</Message></Error>"
)
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Faults:
    """The share (0..1) of requests of each kind that get each fault."""

    slowdown: float = 0.0
    cut_put: float = 0.0
    cut_get: float = 0.0
    garble_put: float = 0.0
    stall: float = 0.0
    """Of every kind of request (checked first)."""
    seed: int = 1
    check_crc32: bool = False
    """Stand in for a server that checks S3's additional checksums (AWS, Ceph RGW from 19):
    a PUT whose body (as it arrives, garbled or not) does not match its
    ``x-amz-checksum-crc32`` is answered 400 BadDigest and not forwarded."""
    check_chunks: str | None = None
    """The secret key to check bodies signed in chunks with, standing in for a server that
    checks them (AWS, Ceph RGW, MinIO; moto decodes them unchecked): a PUT whose chunk
    signatures (as it arrives) do not hold is answered 403 SignatureDoesNotMatch and not
    forwarded."""
    check_query: str | None = None
    """The secret key to check presigned GETs with, standing in for a server that checks them
    (moto serves them unchecked): a GET whose query signature (`query_signature_holds`) does
    not hold for the request as it arrives (a Range header other than the one signed), or
    has expired, is answered 403 SignatureDoesNotMatch and not forwarded."""
    query_clock: float = 0.0
    """Seconds the clock that ``check_query`` judges expiry by is ahead of this machine's (a
    read used late: 400 expires every read the store signs)."""


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    faults: Faults
    port: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    record_puts: bool = False
    puts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.released = asyncio.Event()
        """Set when the proxy stops, to let stalled requests go (an Event binds to the loop
        that first waits on it: the proxy's)."""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _choose(self, method: str) -> str | None:
        with self._lock:
            self.requests[method] += 1
            roll = self._rng.random()
            f = self.faults
            fault = None
            if f.stall and self._rng.random() < f.stall:
                fault = "stall"
            elif roll < f.slowdown:
                fault = "slowdown"
            elif method == "PUT" and roll < f.slowdown + f.cut_put:
                fault = "cut_put"
            elif method == "PUT" and roll < f.slowdown + f.cut_put + f.garble_put:
                fault = "garble_put"
            elif method == "GET" and roll < f.slowdown + f.cut_get:
                fault = "cut_get"
            if fault:
                self.counts[fault] += 1
            return fault

    def _refusal(self, method: str, target: str, headers: list[str], body: bytes) -> bytes | None:
        """The answer of a server that checks what the faults say it checks, to a PUT whose
        body (as it arrived) fails that check, or a presigned GET whose signature does not
        hold; None when it passes."""
        if method == "GET" and self.faults.check_query and "X-Amz-Signature=" in target:
            now = time.time() + self.faults.query_clock
            if not query_signature_holds(method, target, headers, self.faults.check_query, now):
                self.counts["bad_query"] += 1
                return _error_response("403 Forbidden", BAD_QUERY_BODY)
            return None
        if method != "PUT":
            return None
        secret = self.faults.check_chunks
        if secret and not chunk_signatures_hold(method, target, headers, body, secret):
            self.counts["bad_chunk"] += 1
            return _error_response("403 Forbidden", BAD_CHUNK_BODY)
        if self.faults.check_crc32 and not _crc32_matches(headers, body):
            self.counts["bad_crc32"] += 1
            return _error_response("400 Bad Request", BAD_DIGEST_BODY)
        return None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            headers = [line for line in lines[1:] if line]
            length = 0
            expect = False
            for line in headers:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value.strip())
                expect = expect or (key.strip().lower() == "expect" and value.strip().lower() == "100-continue")
            if expect and length:
                # botocore asks before a PUT's body and waits a second for the answer: give it
                # at once (the server is asked nothing: the header is not forwarded)
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            body = await reader.readexactly(length) if length else b""
            if method == "PUT" and self.record_puts:
                sent = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}
                self.puts.append((sent, body))
            fault = self._choose(method)
            if fault == "stall":
                await self.released.wait()
                return
            if fault == "slowdown":
                writer.write(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(SLOWDOWN_BODY)}\r\nConnection: close\r\n\r\n".encode()
                    + (SLOWDOWN_BODY if method != "HEAD" else b"")
                )
                await writer.drain()
                return
            kept = [
                h
                for h in headers
                if h.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive", "expect")
            ]
            request_head = ("\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n").encode(
                "latin-1"
            )
            if fault == "garble_put" and body:
                middle = len(body) // 2
                body = body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]
            target = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
            refusal = self._refusal(method, target, headers, body) if fault != "cut_put" else None
            if refusal is not None:
                writer.write(refusal)
                await writer.drain()
                return
            up_reader, upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            if fault == "cut_put":
                upstream.write(request_head + body[: len(body) // 2])
                await upstream.drain()
                await asyncio.sleep(0.05)  # let the server read the half it got, then cut
                return
            upstream.write(request_head + body)
            await upstream.drain()
            response = await up_reader.read()  # the server closes after one response
            if fault == "cut_get":
                split = response.find(b"\r\n\r\n") + 4
                writer.write(response[: split + (len(response) - split) // 2])
            else:
                writer.write(_close_after(response))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            for w in (upstream, writer):
                if w is not None:
                    w.transport.abort()  # a reset, as a dropped connection looks to a client


def _error_response(status: str, body: bytes) -> bytes:
    """An S3 error answer: ``status`` (``403 Forbidden``) and its XML ``body``, then close."""
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def _crc32_matches(headers: list[str], body: bytes) -> bool:
    """Whether ``body`` matches the request's ``x-amz-checksum-crc32`` (true when it has none)."""
    for line in headers:
        key, _, value = line.partition(":")
        if key.strip().lower() == "x-amz-checksum-crc32":
            return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode() == value.strip()
    return True


_CHUNK_HEAD = re.compile(rb"([0-9a-f]+);chunk-signature=([0-9a-f]{64})\r\n")
_CREDENTIAL = re.compile(r"Credential=[^/]+/(\d{8})/([^/]+)/([^/]+)/aws4_request")
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([a-z0-9;-]+)")


def decode_chunked(body: bytes) -> list[tuple[bytes, str]] | None:
    """The chunks of a body signed in chunks (``aws-chunked``), each with its signature, the
    final empty one included; None when it is not well formed."""
    chunks: list[tuple[bytes, str]] = []
    at = 0
    while True:
        head = _CHUNK_HEAD.match(body, at)
        if head is None:
            return None
        size, start = int(head.group(1), 16), head.end()
        if body[start + size : start + size + 2] != b"\r\n":
            return None
        chunks.append((body[start : start + size], head.group(2).decode()))
        at = start + size + 2
        if size == 0:
            return chunks if at == len(body) else None


def decoded_body(headers: dict[str, str], body: bytes) -> bytes:
    """What a PUT stores: ``body`` itself, or its chunks' bytes when it is signed in chunks."""
    if headers.get("x-amz-content-sha256") != "STREAMING-AWS4-HMAC-SHA256-PAYLOAD":
        return body
    chunks = decode_chunked(body)
    assert chunks is not None, "a body signed in chunks that is not well formed"
    return b"".join(data for data, _ in chunks)


def _fields(headers: list[str]) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for step in (region, service, "aws4_request"):
        key = hmac.new(key, step.encode(), hashlib.sha256).digest()
    return key


def _signature(
    secret: str, method: str, target: str, fields: dict[str, str], signed: list[str], stamp: str,
    credential: tuple[str, str, str], payload: str, *, leave_out: str = "",
) -> str:
    """SigV4's signature of a request as it arrived: the canonical request (``target``'s path as
    sent, its query sorted and encoded but for ``leave_out``, the ``signed`` headers' values,
    ``payload`` as the payload's hash), then the string to sign at ``stamp`` in the scope of
    ``credential`` (date, region, service), per AWS's description."""
    path, _, query = target.partition("?")

    def enc(text: str) -> str:
        return quote(text, safe="-_.~")

    params = parse_qsl(query, keep_blank_values=True)
    canonical = "\n".join([
        method,
        path,
        "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(params) if k != leave_out),
        "".join(f"{h}:{' '.join(fields[h].split())}\n" for h in signed),
        ";".join(signed),
        payload,
    ])
    date, region, service = credential
    scope = f"{date}/{region}/{service}/aws4_request"
    text = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(_signing_key(secret, date, region, service), text.encode(), hashlib.sha256).hexdigest()


def chunk_signatures_hold(method: str, target: str, headers: list[str], body: bytes, secret: str) -> bool:
    """Whether a body signed in chunks is the one its request was signed for (true for any
    other body): the request's own signature (its ``Authorization`` header, the seed) holds for
    the request as it arrived, and each chunk's signature, chained from it, for that chunk."""
    fields = _fields(headers)
    if fields.get("x-amz-content-sha256") != "STREAMING-AWS4-HMAC-SHA256-PAYLOAD":
        return True
    auth = fields.get("authorization", "")
    credential = _CREDENTIAL.search(auth)
    signed_headers = _SIGNED_HEADERS.search(auth)
    chunks = decode_chunked(body)
    if credential is None or signed_headers is None or chunks is None or "Signature=" not in auth:
        return False
    signed = signed_headers.group(1).split(";")
    stamp = fields.get("x-amz-date", "")
    previous = auth.rsplit("Signature=", 1)[1]
    if any(h not in fields for h in signed) or not hmac.compare_digest(previous, _signature(
        secret, method, target, fields, signed, stamp, credential.groups(), fields["x-amz-content-sha256"],
    )):
        return False
    date, region, service = credential.groups()
    key = _signing_key(secret, date, region, service)
    empty = hashlib.sha256(b"").hexdigest()
    for data, signature in chunks:
        text = "\n".join([
            "AWS4-HMAC-SHA256-PAYLOAD", stamp, f"{date}/{region}/{service}/aws4_request",
            previous, empty, hashlib.sha256(data).hexdigest(),
        ])
        previous = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        if previous != signature:
            return False
    return sum(len(data) for data, _ in chunks) == int(fields.get("x-amz-decoded-content-length", "-1"))


def query_signature_holds(method: str, target: str, headers: list[str], secret: str, now: float | None = None) -> bool:
    """Whether the SigV4 signature in the query of a presigned request holds for the request
    as it arrived (``target``: its path and query; ``headers``: its header lines), and has not
    expired: the canonical request from the signed headers' values, per AWS's description
    of query-string authentication (``UNSIGNED-PAYLOAD``)."""
    given = dict(parse_qsl(target.partition("?")[2], keep_blank_values=True))
    fields = _fields(headers)
    credential = given.get("X-Amz-Credential", "").split("/")
    signed = given.get("X-Amz-SignedHeaders", "").split(";")
    if len(credential) != 5 or "X-Amz-Signature" not in given or any(h not in fields for h in signed):
        return False
    stamp = given.get("X-Amz-Date", "")
    try:
        start = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        expires = int(given.get("X-Amz-Expires", "0"))
    except ValueError:
        return False
    if (time.time() if now is None else now) > start + expires:
        return False
    date, region, service = credential[1:4]
    expected = _signature(
        secret, method, target, fields, signed, stamp, (date, region, service), "UNSIGNED-PAYLOAD",
        leave_out="X-Amz-Signature",
    )
    return hmac.compare_digest(expected, given["X-Amz-Signature"])


def _close_after(response: bytes) -> bytes:
    """The response with ``Connection: close``, so the client does not reuse the connection."""
    split = response.find(b"\r\n\r\n")
    if split < 0:
        return response
    lines = response[:split].split(b"\r\n")
    kept = [h for h in lines[1:] if h.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + response[split:]


@contextmanager
def fault_proxy(
    upstream: str, faults: Faults, *, record_puts: bool = False, sock: socket.socket | None = None
) -> Iterator[FaultProxy]:
    """Run a `FaultProxy` in front of ``upstream`` (``http://host:port``) until the block ends;
    on ``sock`` when given (bound, not yet listening: until then its port refuses connections,
    as an S3 server's does while it restarts), else on a port of its own."""
    host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
    proxy = FaultProxy(host, int(port), faults, record_puts=record_puts)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server: list[asyncio.Server] = []

    async def start() -> None:
        if sock is None:
            srv = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=1 << 20)
        else:
            srv = await asyncio.start_server(proxy.handle, sock=sock, limit=1 << 20)
        proxy.port = srv.sockets[0].getsockname()[1]
        server.append(srv)
        ready.set()

    def run() -> None:
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield proxy
    finally:

        async def stop() -> None:
            server[0].close()
            proxy.released.set()
            if proxy.counts["stall"]:  # let the stalled requests end, closing their connections
                await asyncio.sleep(0.05)
            loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop)
        thread.join(10)
        loop.close()
