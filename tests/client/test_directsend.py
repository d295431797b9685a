"""Chunk uploads written with ``sendmsg`` (`cubby.client.directsend` over `DirectHttp`),
through real HTTP on loopback.

Against a real server: a whole file goes up and comes down byte-identical, and no upload
went through httpx; a kept-alive connection the server dropped (idle, or just as the upload
starts) is replaced without the caller noticing; a chunk whose bytes do not match its name is
the server's `ChunkMismatch` and nothing of that request is stored; a rate limit is paid for
every byte sent. Against a scripted server: a connection dropped in the middle of the body is
a clear `Unavailable`. A proxy in the environment or a custom transport sends uploads through
httpx.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.directsend import GatheredBody
from cubby.client.download import download_file
from cubby.client.ratelimit import TokenBucket
from cubby.client.upload import upload_file
from cubby.errors import ChunkMismatch, Unauthorized, Unavailable
from tests.client.test_directhttp import Relay
from tests.helpers.live_server import LiveServer
from tests.helpers.loopback_http import LoopbackServer

SIZE = 9 * 1024 * 1024 + 4321


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("server") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def token(server: LiveServer) -> str:
    return server.add_user("sender")


def chunk(n: int) -> tuple[str, bytes]:
    data = os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


def root_ns(api: ApiClient) -> int:
    return int(api.account()["root_ns"])


class Recording(httpx.HTTPTransport):
    """A real transport that notes the path of every request it carries."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


# -- a real server ------------------------------------------------------------------------------


def test_a_whole_file_goes_up_and_comes_back_exact_without_httpx(
    server: LiveServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(SIZE)
    (tmp_path / "up.bin").write_bytes(data)
    through_httpx: list[str] = []
    real_send = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kw: object) -> httpx.Response:
        through_httpx.append(request.url.path)
        return real_send(self, request, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.Client, "send", send)
    with ApiClient(server.url, token) as api:
        assert api.direct is not None
        seen: list[str] = []
        api.on_request.append(lambda method, path: seen.append(path))
        upload_file(api, tmp_path / "up.bin", "/up.bin")
        download_file(api, "/up.bin", tmp_path / "down.bin")
        assert api._http is None  # no httpx client was even made
    assert through_httpx == []
    assert any("commit" in p for p in seen)  # the API's JSON requests went over DirectHttp too
    assert (tmp_path / "down.bin").read_bytes() == data


def test_many_small_frames_in_one_body(server: LiveServer, token: str) -> None:
    """More buffers than one ``sendmsg`` takes (two per chunk, 1,500 chunks)."""
    items = [chunk(100 + i) for i in range(1500)]
    with ApiClient(server.url, token) as api:
        assert api.upload_chunks(root_ns(api), items) == len(items)
        assert api.upload_chunks(root_ns(api), items) == 0  # content-addressed: nothing new


def test_a_kept_alive_connection_dropped_as_the_upload_starts_is_replaced(server: LiveServer, token: str) -> None:
    with Relay(server.port) as relay, ApiClient(relay.url, token) as api:
        ns = root_ns(api)
        first = chunk(300_000)
        assert api.upload_chunks(ns, [first]) == 1
        opened = relay.accepted
        relay.doom()  # the next request on the open connections is dropped unanswered
        more = [chunk(2 * 1024 * 1024) for _ in range(3)]
        assert api.upload_chunks(ns, more) == 3
        assert relay.accepted == opened + 1


def test_a_kept_alive_connection_closed_while_idle_is_not_reused(server: LiveServer, token: str) -> None:
    with Relay(server.port) as relay, ApiClient(relay.url, token) as api:
        ns = root_ns(api)
        assert api.upload_chunks(ns, [chunk(1000)]) == 1
        opened = relay.accepted
        relay.cut()
        for _ in range(1000):  # until the relay has seen the close through
            if not relay.open:
                break
            threading.Event().wait(0.01)
        assert api.upload_chunks(ns, [chunk(5000)]) == 1
        assert relay.accepted == opened + 1


def test_a_chunk_that_is_not_its_name_is_refused_and_nothing_is_stored(server: LiveServer, token: str) -> None:
    good = chunk(70_000)
    name, _ = chunk(50_000)
    liar = (name, os.urandom(50_000))
    with ApiClient(server.url, token) as api:
        ns = root_ns(api)
        with pytest.raises(ChunkMismatch):
            api.upload_chunks(ns, [good, liar])
        # The connection that carried the refusal is not reused wrongly: the next upload works,
        # and the good chunk of the refused request was not stored (it is new now).
        assert api.upload_chunks(ns, [good]) == 1


def test_a_refused_token_is_unauthorized(server: LiveServer) -> None:
    with ApiClient(server.url, "not-a-token") as api, pytest.raises(Unauthorized):
        api.upload_chunks(1, [chunk(4 * 1024 * 1024)])


def test_a_rate_limit_is_paid_for_every_byte_sent(server: LiveServer, token: str) -> None:
    paid: list[int] = []

    class Counting(TokenBucket):
        def consume(self, n: int) -> None:
            paid.append(n)

    items = [chunk(1_000_000), chunk(10), chunk(300_000)]
    with ApiClient(server.url, token, upload_limit=Counting(1e12)) as api:
        assert api.upload_chunks(root_ns(api), items) == 3
    body = sum(36 + len(d) for _, d in items)
    assert sum(paid) == body
    assert max(paid) <= 64 * 1024


def test_a_proxy_in_the_environment_sends_uploads_through_httpx(
    server: LiveServer, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with ApiClient(server.url, token) as api:
        assert api.direct is None
        assert api.upload_chunks(root_ns(api), [chunk(200_000)]) == 1


def test_a_custom_transport_carries_uploads(server: LiveServer, token: str) -> None:
    transport = Recording()
    with ApiClient(server.url, token, transport=transport) as api:
        assert api.direct is None
        assert api.upload_chunks(root_ns(api), [chunk(200_000)]) == 1
    assert "/api/v1/blocks/upload" in transport.paths


# -- a scripted server --------------------------------------------------------------------------


class Dropper(LoopbackServer):
    """An HTTP server on loopback that reads ``keep`` bytes of each request and then closes
    the connection without answering (a server that died in the middle of a body)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            got = 0
            while got < self.keep and (data := conn.recv(65536)):
                got += len(data)


def test_a_connection_dropped_mid_body_is_a_clear_error() -> None:
    with Dropper(keep=200_000) as srv:
        with ApiClient(srv.url, "t") as api, pytest.raises(Unavailable, match="lost the connection"):
            api.upload_chunks(1, [chunk(8 * 1024 * 1024)])
        assert srv.accepted == 1  # a fresh connection: not sent again


def test_gathered_writes_send_every_buffer_in_order() -> None:
    """Partial ``sendmsg`` calls go on from where they stopped (a socket pair with a small
    send buffer, read on the other end while it is written)."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pieces = [os.urandom(n) for n in (1, 0, 70_000, 3, 1_000_000, 36, 5)] + [os.urandom(10) for _ in range(3000)]
    got = bytearray()

    def read() -> None:
        while data := b.recv(65536):
            got.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    body = GatheredBody(pieces)
    body.send(a)
    a.close()
    reader.join()
    b.close()
    assert body.length == sum(len(p) for p in pieces)
    assert bytes(got) == b"".join(pieces)

