"""Downloads read off the socket (`cubby.client.directhttp`), through real HTTP on loopback.

Against a real server: a whole file and a range of one come back exactly, a kept-alive
connection the server closed is replaced without the caller noticing, and the client falls
back to httpx where it must (a proxy in the environment, an error answer). Against a scripted
server that answers what a test wants: an encoded body goes through httpx (which decodes it),
and a truncated or malformed answer, or an oversize frame, is a clear error, never bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import cubby
from cubby.client.api import MOST_FETCHES, ApiClient
from cubby.client.download import download_file
from cubby.client.upload import upload_file
from cubby.core import frames
from cubby.errors import BadRequest, CubbyError, NotFound, PayloadTooLarge, Unavailable
from tests.helpers.live_server import LiveServer
from tests.helpers.loopback_http import LoopbackServer

SIZE = 9 * 1024 * 1024 + 12345


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("server") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def stored(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes, list[str]]:
    """A token, the bytes of ``/big.bin`` and its chunk names."""
    token = server.add_user("direct")
    data = os.urandom(SIZE)
    src = tmp_path_factory.mktemp("src") / "big.bin"
    src.write_bytes(data)
    with ApiClient(server.url, token) as api:
        upload_file(api, src, "/big.bin")
        _, chunks = api.blocklist("/big.bin")
    return token, data, [c.hash for c in chunks]


class Relay(LoopbackServer):
    """A TCP relay on loopback in front of a server, counting connections. `doom` marks the
    connections open now: the next request on each is dropped unanswered, as a server closes
    a kept-alive connection just as the client reuses it."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.doomed: set[socket.socket] = set()
        self.open: set[socket.socket] = set()
        super().__init__()

    def doom(self) -> None:
        self.doomed = set(self.open)

    def cut(self) -> None:
        """Close the connections open now, as a server ends idle kept-alive connections."""
        for s in list(self.open):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle(self, conn: socket.socket) -> None:
        self.open.add(conn)
        up = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=self._pump, args=(conn, up, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(up, conn, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if from_client and src in self.doomed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.open.discard(src)


class Scripted(LoopbackServer):
    """An HTTP server on loopback that answers every request with ``answer(method, path)``'s
    bytes as they are (head and body), then closes the connection."""

    def __init__(self, answer: Callable[[str, str], bytes]) -> None:
        self.answer = answer
        self.requests: list[str] = []
        self.agents: list[str] = []
        self.stopped = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            top, _, rest = head.partition(b"\r\n\r\n")
            lines = top.decode().split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in lines[1:])
            need = int(fields.get("content-length", 0)) - len(rest)
            while need > 0:
                need -= len(conn.recv(need))
            method, path, _ = lines[0].split(" ")
            self.requests.append(f"{method} {path} {fields.get('accept-encoding', '')}")
            self.agents.append(fields.get("user-agent", ""))
            reply = self.answer(method, path)
            if not reply:  # no answer at all, until the test ends
                self.stopped.wait(30)
            conn.sendall(reply)

    def close(self) -> None:
        self.stopped.set()
        super().close()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def head(status: str, **fields: str) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- a real server ------------------------------------------------------------------------------


def test_whole_get_is_exact_and_read_off_the_socket(server: LiveServer, stored: tuple[str, bytes, list[str]], tmp_path: Path) -> None:
    token, data, names = stored
    with ApiClient(server.url, token) as api:
        assert api.direct is not None
        got = list(api.fetch_chunks(names))
        assert [n for n, _ in got] == names
        assert all(type(d) is bytearray for _, d in got)  # received into their own buffers
        download_file(api, "/big.bin", tmp_path / "big.bin")
    assert hashlib.sha256((tmp_path / "big.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_range_get_through_the_content_route(server: LiveServer, stored: tuple[str, bytes, list[str]]) -> None:
    token, data, _ = stored
    with ApiClient(server.url, token) as api:
        whole = list(api.download("/big.bin"))
        assert b"".join(whole) == data
        assert all(type(p) is bytearray for p in whole)
        for offset in (1, 1024 * 1024, SIZE - 10):
            assert b"".join(api.download("/big.bin", offset=offset)) == data[offset:]


def test_a_kept_alive_connection_the_server_dropped_is_replaced(server: LiveServer, stored: tuple[str, bytes, list[str]]) -> None:
    token, data, names = stored
    with Relay(server.port) as relay, ApiClient(relay.url, token) as api:
        for _ in range(2):
            first = b"".join(d for _, d in api.fetch_chunks(names[:2]))
            assert first == data[: len(first)]
        assert relay.accepted == 1  # one connection, kept alive for the second fetch
        relay.doom()
        again = list(api.fetch_chunks(names))
        assert [n for n, _ in again] == names
        assert b"".join(d for _, d in again) == data
        assert relay.accepted == 2


def test_a_kept_alive_connection_closed_while_idle_is_not_reused(server: LiveServer, stored: tuple[str, bytes, list[str]]) -> None:
    token, data, names = stored
    with Relay(server.port) as relay, ApiClient(relay.url, token) as api:
        list(api.fetch_chunks(names[:1]))
        relay.cut()
        for _ in range(1000):  # until the relay has seen the close through
            if not relay.open:
                break
            threading.Event().wait(0.01)
        assert b"".join(d for _, d in api.fetch_chunks(names)) == data
        assert relay.accepted == 2


def test_a_proxy_in_the_environment_sends_everything_through_httpx(
    server: LiveServer, stored: tuple[str, bytes, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    token, data, names = stored
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with ApiClient(server.url, token) as api:
        assert api.direct is None
        got = list(api.fetch_chunks(names))
        assert all(type(d) is bytes for _, d in got)
        assert b"".join(d for _, d in got) == data


def test_a_custom_transport_carries_everything(server: LiveServer, stored: tuple[str, bytes, list[str]]) -> None:
    token, data, names = stored
    with ApiClient(server.url, token, transport=httpx.HTTPTransport()) as api:
        assert api.direct is None
        got = list(api.fetch_chunks(names))
        assert all(type(d) is bytes for _, d in got)
        assert b"".join(d for _, d in got) == data


def test_an_error_answer_is_the_servers_error(server: LiveServer, stored: tuple[str, bytes, list[str]]) -> None:
    token, _, _ = stored
    with ApiClient(server.url, token) as api:
        with pytest.raises(NotFound):
            list(api.fetch_chunks(["ab" * 32]))
        with pytest.raises(NotFound):
            list(api.download("/no-such-file"))


# -- a scripted server --------------------------------------------------------------------------


def _refusing(code: str, status: str, retry_after: str | None = None) -> Callable[[str, str], bytes]:
    body = f'{{"code": "{code}", "message": "scripted refusal"}}'.encode()
    fields = {"Content_Type": "application/json", "Content_Length": str(len(body))}
    if retry_after is not None:
        fields["Retry_After"] = retry_after
    return lambda m, p: head(status, **fields) + body


def test_an_error_answer_is_read_off_the_socket_and_not_asked_again() -> None:
    """A refused fetch or download is one request, read over `DirectHttp`: its error is the
    server's, with its Retry-After. (It was declined there, and the request sent again
    through httpx only to read the same error.)"""
    with Scripted(_refusing("not_found", "404 Not Found")) as srv:
        with ApiClient(srv.url, None) as api:
            with pytest.raises(NotFound):
                list(api.fetch_chunks(["ab" * 32]))
            with pytest.raises(NotFound):
                list(api.download("/no-such-file"))
        fetches = [r for r in srv.requests if "/blocks/fetch" in r]
        assert fetches == ["POST /api/v1/blocks/fetch identity"]
        assert [r for r in srv.requests if "/content/" in r] == ["GET /api/v1/content/no-such-file identity"]
    for retry_after in ("7", None):  # the object store may come back only if it says so
        with Scripted(_refusing("object_store_error", "503 Service Unavailable", retry_after)) as srv:
            with ApiClient(srv.url, None) as api, pytest.raises(CubbyError) as exc:
                list(api.download("/busy.bin"))
            assert exc.value.code == "object_store_error"
            assert exc.value.retryable is (retry_after is not None)
            assert srv.requests == ["GET /api/v1/content/busy.bin identity"]


@pytest.mark.parametrize(
    ("fetches", "taken"),
    [(3, 3), (10**9, MOST_FETCHES), (0, None), (-2, None), (True, None), ("4", None), (2.5, None), ("absent", None)],
)
def test_a_server_s_advice_on_windows_in_flight_is_bounded_and_checked(fetches: object, taken: int | None) -> None:
    """`locate`'s ``fetches`` is advice the client bounds (at most `MOST_FETCHES` windows, each
    16 MiB in memory) and takes only as a positive integer: anything else leaves the
    client's own number, and the download goes on as before (here to the fetch's refusal)."""
    locate = json.dumps({"direct": False} | ({} if fetches == "absent" else {"fetches": fetches})).encode()

    def answer(method: str, path: str) -> bytes:
        if path.endswith("/blocks/locate"):
            return head("200 OK", Content_Type="application/json", Content_Length=str(len(locate))) + locate
        return _refusing("not_found", "404 Not Found")(method, path)

    with Scripted(answer) as srv, ApiClient(srv.url, None) as api:
        with pytest.raises(NotFound):
            list(api.fetch_chunks(["ab" * 32]))
        assert api.fetch_advice == taken and api.bucket_reads is False


def test_an_encoded_body_goes_through_httpx_and_is_decoded() -> None:
    body = b"hello " * 1000
    gz = gzip.compress(body)
    with Scripted(lambda m, p: head("200 OK", Content_Encoding="gzip", Content_Length=str(len(gz))) + gz) as srv:
        with ApiClient(srv.url, None) as api:
            assert b"".join(api.download("/f.txt")) == body
        assert len(srv.requests) == 2  # declined on the socket, then sent through httpx
        assert srv.requests[0].endswith("identity")


def test_a_body_delimited_by_closing_goes_through_httpx() -> None:
    with Scripted(lambda m, p: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it") as srv:
        with ApiClient(srv.url, None) as api:
            assert b"".join(api.download("/f.txt")) == b"all of it"
        assert len(srv.requests) == 2


def _frames_answer(body: bytes, **fields: str) -> Callable[[str, str], bytes]:
    return lambda m, p: head("200 OK", Content_Type=frames.CONTENT_TYPE, **fields) + body


def test_a_truncated_body_is_a_clear_error() -> None:
    name = hashlib.sha256(b"x" * 5000).hexdigest()
    body = frames.encode(name, b"x" * 5000)
    for answer in (
        _frames_answer(body[:3000], Content_Length=str(len(body))),  # the connection closes early
        _frames_answer(chunked(body[:3000])[:-5], Transfer_Encoding="chunked"),  # the same, chunked
    ):
        with Scripted(answer) as srv:
            with ApiClient(srv.url, None) as api, pytest.raises(Unavailable) as exc:
                list(api.fetch_chunks([name]))
            assert exc.value.code == "truncated_body"
            assert "truncated" in str(exc.value)
    # A complete HTTP body whose frames stop halfway is refused too.
    with Scripted(_frames_answer(chunked(body[:3000]), Transfer_Encoding="chunked")) as srv:
        with ApiClient(srv.url, None) as api, pytest.raises(BadRequest) as bad:
            list(api.fetch_chunks([name]))
        assert bad.value.code == "truncated_body"


def test_an_oversize_frame_is_refused() -> None:
    body = frames.header("ab" * 32, 64 * 1024 * 1024) + b"x" * 1000
    answer = _frames_answer(chunked(body), Transfer_Encoding="chunked")
    with Scripted(answer) as srv, ApiClient(srv.url, None) as api, pytest.raises(PayloadTooLarge):
        list(api.fetch_chunks(["ab" * 32]))


@pytest.mark.parametrize("bad", [b"zz\r\nxx\r\n0\r\n\r\n", b"1" * 40 + b"\r\n", b"5\r\nxxxxxNO0\r\n\r\n"])
def test_a_malformed_chunked_body_is_a_clear_error(bad: bytes) -> None:
    with Scripted(_frames_answer(bad, Transfer_Encoding="chunked")) as srv:
        with ApiClient(srv.url, None) as api, pytest.raises(Unavailable) as exc:
            list(api.fetch_chunks(["ab" * 32]))
        assert exc.value.code == "bad_answer"


def test_a_chunk_that_does_not_match_its_name_is_refused() -> None:
    body = frames.encode("ab" * 32, b"not the chunk")
    with Scripted(_frames_answer(body, Content_Length=str(len(body)))) as srv:
        with ApiClient(srv.url, None) as api, pytest.raises(BadRequest) as exc:
            list(api.fetch_chunks(["ab" * 32]))
        assert exc.value.code == "chunk_hash_mismatch"


def test_a_server_that_never_answers_times_out_as_through_httpx() -> None:
    with Scripted(lambda m, p: b"") as srv:
        with ApiClient(srv.url, None, timeout=0.3) as api, pytest.raises(Unavailable):
            list(api.fetch_chunks(["ab" * 32]))
        assert srv.requests == ["POST /api/v1/blocks/locate identity"]  # (a fetch asks where to read first)


# -- the API's JSON requests --------------------------------------------------------------------


def test_the_apis_requests_go_over_the_socket_and_a_commit_is_never_sent_twice(
    server: LiveServer, stored: tuple[str, bytes, list[str]]
) -> None:
    """JSON requests take `DirectHttp` too. When a kept-alive connection turns out closed
    under a request: a read is sent again on a new connection, unnoticed; a commit is not (the
    server may have applied it), and the caller gets `Unavailable`, as through httpx."""
    token, _, _ = stored
    with Relay(server.port) as relay, ApiClient(relay.url, token) as api:
        root = api.account()["root_ns"]
        assert relay.accepted == 1
        relay.doom()
        assert any(e.path == "/big.bin" for e in api.list("/"))  # read again on a new connection
        assert relay.accepted == 2
        relay.doom()
        with pytest.raises(Unavailable):
            api.commit("/once.txt", 0, [])
        assert relay.accepted == 2  # not sent again
        with pytest.raises(NotFound):
            api.stat("/once.txt")  # the dropped request never reached the server
        assert api.commit("/once.txt", 0, []).entry is not None
        assert api.stat("/once.txt").size == 0 and api.account()["root_ns"] == root
        assert api._http is None  # all of it without httpx


def test_an_answer_the_socket_declines_is_read_through_httpx_but_a_commit_is_not_sent_again() -> None:
    """An encoded answer (no cubby server sends one): a read goes again through httpx, which
    decodes it; a commit is `Unavailable`, its one request having reached the server."""
    body = gzip.compress(b'{"user_id": 1, "namespaces": []}')
    with Scripted(lambda m, p: head("200 OK", Content_Encoding="gzip", Content_Length=str(len(body))) + body) as srv:
        with ApiClient(srv.url, "t") as api:
            assert api.account()["user_id"] == 1
            assert srv.requests[0] == "GET /api/v1/account identity"
            assert srv.requests[1].startswith("GET /api/v1/account gzip")  # httpx's own Accept-Encoding
            with pytest.raises(Unavailable) as exc:
                api.commit("/x.txt", 0, [])
            assert "may or may not have been applied" in exc.value.message
        assert srv.requests[2:] == ["POST /api/v1/files/commit identity"]
        assert srv.agents == [f"cubby/{cubby.__version__}"] * 3  # over the socket and through httpx alike


def test_a_command_that_needs_only_the_api_never_imports_httpx(
    server: LiveServer, stored: tuple[str, bytes, list[str]], tmp_path: Path
) -> None:
    """`cubby put` of a folder and `cubby ls`, in fresh processes: httpx is not imported at all
    (a third of a command's start, see `cubby.client.api`); nor pyfastcdc, as no file is
    larger than one chunk (`cubby.core.chunking.new_chunker`), nor tomllib, as there is no
    configuration file (`cubby.config`)."""
    import subprocess
    import sys

    token, _, _ = stored
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / "sub" / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    check = (
        "import atexit, sys; atexit.register(lambda: print('imported:', "
        "[m for m in ('httpx', 'pyfastcdc', 'tomllib') if m in sys.modules]))\n"
    )
    for args, said in ((["put", str(folder), "/nohttpx"], 5), (["ls", "-r", "/nohttpx"], 6)):
        script = check + f"from cubby.cli import main; main({['--json', *args]!r})"
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        lines = out.strip().splitlines()
        assert lines[-1] == "imported: []", out
        assert len(lines) == said + 1, out  # five files put; five files and their folder listed


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"HTTP_PROXY": "http://p:1"},
        {"https_proxy": "http://p:1"},
        {"ALL_PROXY": "socks5://p:1"},
        {"NO_PROXY": "*", "ftp_proxy": "http://p:1"},
        {"HTTP_PROXY": "http://p:1", "http_proxy": ""},  # an empty lowercase one removes it
        {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"},  # a CGI script's HTTP_PROXY: not believed
        {"http_proxy": "http://p:1", "REQUEST_METHOD": "GET"},
        {"Http_Proxy": "http://p:1"},
    ],
)
def test_proxies_are_read_from_the_environment_as_urllib_reads_them(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`proxies_from_environment` says what httpx would see (through urllib), without urllib."""
    import urllib.request

    from cubby.client.api import proxies_from_environment

    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    found = urllib.request.getproxies_environment()
    assert proxies_from_environment() == any(found.get(s) for s in ("http", "https", "all"))
    assert proxies_from_environment(environ) == proxies_from_environment()


def test_an_api_answer_is_read_whole_sized_or_chunked_and_an_oversize_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    import cubby.client.api as api_module

    answer = json.dumps({"user_id": 7, "namespaces": [], "pad": "x" * 200_000}).encode()
    sized = head("200 OK", Content_Type="application/json", Content_Length=str(len(answer))) + answer
    pieces = chunked(*(answer[i : i + 70_000] for i in range(0, len(answer), 70_000)))
    in_pieces = head("200 OK", Content_Type="application/json", Transfer_Encoding="chunked") + pieces
    for reply in (sized, in_pieces):
        with Scripted(lambda m, p, reply=reply: reply) as srv, ApiClient(srv.url, "t") as api:
            assert api.account()["user_id"] == 7
            assert api._http is None
    monkeypatch.setattr(api_module, "JSON_ANSWER_LIMIT", 100_000)
    for reply in (sized, in_pieces):
        with Scripted(lambda m, p, reply=reply: reply) as srv, ApiClient(srv.url, "t") as api:
            with pytest.raises(Unavailable) as exc:
                api.account()
            assert exc.value.code == "bad_answer" and len(srv.requests) == 1
