"""`ApiClient`: cubby's HTTP API as Python methods, over kept-alive connections.

Requests go over `DirectHttp` (plain ``http://``, no proxy, no custom transport), else through
an httpx client, which is made, and httpx imported, only when a request needs it (https, a
proxy, a streamed answer). Importing httpx and what it pulls in (urllib's request module, the
email parser, ssl) was most of a short command's start: `cubby ls` took 154 ms before, 92 ms
after, and a `cubby put` of 10,000 files sent its first proof 25-40 ms sooner (2026-12-06).

The client knows one URL. When a request lands on a process that does not serve its role (421
``wrong_role``), it asks ``/api/v1/discovery`` where each role is, remembers the answer, sends
the request there, and sends later requests of that role there directly.

Error answers become the same `CubbyError` subclasses the server raised (by their code);
a server that cannot be reached becomes `Unavailable`, which is retryable. Chunks fetched
from the server are verified against their names: the client trusts the server no more than
the server trusts it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

import orjson

from cubby import __version__
from cubby.client.bucketreads import BadPlan, BucketRead, PieceReader, Plan, parse_plan, read_chunks
from cubby.client.bucketwrites import PutPlan, parse_put_plan
from cubby.client.directhttp import Body, Declined, DirectHttp, Timeouts
from cubby.client.directsend import GatheredBody
from cubby.client.ratelimit import TokenBucket
from cubby.core import delta, frames
from cubby.core.chunking import MAX_SIZE, MIN_DIRECT
from cubby.core.hashing import sha256_hex
from cubby.core.proofs import CURRENT as PROOF_ALG
from cubby.errors import BadRequest, ChunkMismatch, CubbyError, NotFound, Unavailable, error_from_dict
from cubby.model import ChunkRef, CommitResult, Entry, JournalEntry, NeededChunk
from cubby.roles import ROLES, role_for_path

if TYPE_CHECKING:
    import httpx

MAX_BATCH = 1000
"""Operations the server takes in one batch request (commits, blocklists, folder operations)."""
STORED_AS_IS = frozenset({b"aws-chunked"})
"""Content-Encodings a bucket may name for bytes it sends as they are stored: Ceph RGW 16 keeps
the ``aws-chunked`` of a PUT signed in chunks (`cubby.blockstore.s3chunked`) and answers every
GET of the object with it, though what it stored and sends is the decoded body. Every byte is
verified anyway (`cubby.client.bucketreads`)."""
BUCKET_READS = 4
"""Reads from the bucket one client makes at once (`ApiClient.fetch_chunks`)."""
MOST_FETCHES = 4
"""The most requests of one download a client keeps in flight, whatever the blocks role advises
(`fetch_advice`): each holds a window of chunks (16 MiB) in memory."""
BUCKET_FAILURES = 2
"""Direct reads from the bucket that fail in a row before a client stops trying them (and
fetches everything through the blocks role): a bucket it cannot reach should cost it a
couple of attempts, not one per read."""
PIECE = 1024 * 1024
"""Bytes per piece of a file streamed through the content route (`ApiClient.download`)."""
ANSWER_LIMIT = 1024 * 1024
"""The most bytes of a small answer (an upload's JSON, an error) read off the direct path."""
JSON_ANSWER_LIMIT = 64 * 1024 * 1024
"""The most bytes of an API answer read off the direct path (a page of 5,000 journal entries
is about 2 MB): a server that sends more is refused, not believed."""
USER_AGENT = f"cubby/{__version__}"
"""What every request of the client says it is (``User-Agent``), whichever way it goes."""
log = logging.getLogger("cubby.client")
CONNECT_TIMEOUT = 10.0
"""Seconds to connect to the server (any other wait on it: ``timeout``, 60 by default)."""
KEY_MARGIN = 600.0
"""Seconds of validity a proof key must have left to be used (a window's proofs are sent
within seconds of being computed; ten minutes leave room for a slow link)."""


@dataclass(frozen=True, slots=True)
class ProofKey:
    """A namespace's proof key for one hour (``window``), usable until ``until`` (monotonic)."""

    window: int
    key: bytes
    until: float


class Reply(Protocol):
    """What `raise_for`, `json_of` and the rerouting read of an answer: an httpx.Response, or
    an `Answer` read off `DirectHttp`."""

    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


class Answer:
    """An answer read off `DirectHttp`, whole: its status, its body and its Retry-After (the
    one header `raise_for` reads), as a `Reply`."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, retry_after: str | None = None) -> None:
        self.status_code = status_code
        self.content = content
        self.headers: dict[str, str] = {} if retry_after is None else {"retry-after": retry_after}

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _read_whole(status: int, body: Body, limit: int = ANSWER_LIMIT) -> Answer:
    """An answer read off the socket, its body whole (so that the connection is kept) and no
    longer than ``limit`` (an error or an upload's answer: `ANSWER_LIMIT`)."""
    return Answer(status, body.read(limit), body.retry_after)


def _raise_refusal(refusal: Answer | None) -> None:
    """Raise the error that ``refusal`` (a download's answer read off the socket that is not
    the one asked for, or None) carries. Returns for a ``wrong_role`` (421) answer, which the
    caller sends again through httpx's path, where it is rerouted; and for any other status
    below 400, which no cubby server sends there (httpx's path makes of it what it can).
    Before, every such answer was declined and the request sent a second time through
    httpx, only to read the same error again."""
    if refusal is not None and refusal.status_code != 421:
        raise_for(refusal)


def raise_for(resp: Reply) -> None:
    """Raise the `CubbyError` that an error answer carries (nothing for a success)."""
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError):
        if resp.status_code in (502, 503, 504):  # a proxy's own page: the server behind it is away
            raise Unavailable(f"server answered {resp.status_code} (a proxy could not reach a server): retry later") from None
        body = {"code": "http_error", "message": f"server answered {resp.status_code}: {resp.text[:200]}"}
    if not isinstance(body, dict):
        body = {"code": "http_error", "message": f"server answered {resp.status_code}"}
    err = error_from_dict(body, resp.status_code)
    if err.code == "object_store_error" and "retry-after" not in resp.headers:
        # The server's block store refused for good (a missing bucket, refused credentials):
        # the server sends Retry-After only for a failure that may pass, and a script that
        # retries on exit status 3 must not retry this one for ever.
        err.retryable = False
    raise err


_JSON_HEADERS = {"Content-Type": "application/json"}


def proxies_from_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment names a proxy that httpx would send requests through: then
    only httpx talks to the server. The variables and rules of ``urllib.request``'s
    ``getproxies_environment``, which httpx reads (``SCHEME_proxy`` in any case, a lowercase
    one overriding, an empty lowercase one removing; ``HTTP_PROXY`` in upper case not
    believed when ``REQUEST_METHOD`` says a CGI script runs), without importing it: urllib's
    request module brings the email parser and http.client, 15 ms of every command's start."""
    found: dict[str, str] = {}
    for name, value in environ.items():
        if value and name.lower().endswith("_proxy"):
            found[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in environ:
        found.pop("http", None)
    for name, value in environ.items():
        if name.endswith("_proxy"):
            if value:
                found[name.lower()[:-6]] = value
            else:
                found.pop(name.lower()[:-6], None)
    return any(found.get(scheme) for scheme in ("http", "https", "all"))


def json_bytes(body: object) -> bytes:
    """A request body as JSON, encoded by orjson: a batch of 1,000 commits or proofs is most
    of what `cubby put` spends on JSON, and the standard encoder took 5x the CPU. What orjson
    refuses (a string holding a lone surrogate, from a file name that is not UTF-8; an integer
    beyond 64 bits) goes through the standard encoder, so the server refuses it as before."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(body).encode("utf-8")


def json_of(resp: Reply) -> Any:
    """An answer's JSON, decoded by orjson (a commit batch's answer holds an entry per file)."""
    return orjson.loads(resp.content)


def parse_commit_answer(body: dict[str, Any]) -> CommitResult | CubbyError:
    status = body.get("status")
    if status == "committed":
        return CommitResult(entry=Entry.from_dict(body["entry"]))
    if status == "need_chunks":
        return CommitResult(needed=tuple(
            NeededChunk(n["hash"], n["nonce"], _bases(n.get("base")), n["window"] if isinstance(n.get("window"), int) else None)
            for n in body["needed"]
        ))
    err = body.get("error") or {}
    # The status the refusal would have had alone (servers before 2026-12-07 sent none: a
    # conflict's code says 409, and anything else was taken for a bad request).
    status = err.get("status")
    if type(status) is not int or not 400 <= status <= 599:
        status = 409 if err.get("code") == "conflict" else 400
    return error_from_dict(err, status)


def commit_body(
    path: str, size: int, chunks: Sequence[ChunkRef], expected_rev: int | None, mtime: float | None, mode: int | None = None
) -> dict[str, Any]:
    body = {
        "path": path,
        "size": size,
        "chunks": [{"hash": c.hash, "size": c.size} for c in chunks],
        "expected_rev": expected_rev,
        "mtime": mtime,
    }
    if mode is not None:
        body["mode"] = mode
    return body



def _bases(raw: object) -> tuple[str, ...]:
    """A needed chunk's base chunks: a list, or one name (a server before bases spanned chunks)."""
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(b, str) for b in raw):
        return tuple(raw)
    return ()

class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        upload_limit: TokenBucket | None = None,
        download_limit: TokenBucket | None = None,
    ) -> None:
        self.upload_limit = upload_limit
        self.download_limit = download_limit
        # The client names itself, as httpx named itself before (a server's or a proxy's logs).
        headers = {"User-Agent": USER_AGENT, **({"Authorization": f"Bearer {token}"} if token else {})}
        self.base_url = base_url.rstrip("/")
        self.role_urls: dict[str, str] = {}
        """Where each role is, once discovery was asked (after a ``wrong_role`` answer)."""
        self.proof_keys: dict[int, ProofKey] = {}
        """This hour's proof key of each writable namespace, from the last account answer."""
        self.keyless: dict[int, float] = {}
        """Namespaces the server gave no key for, and until when not to ask again."""
        self._headers = headers
        self._timeout = timeout
        self._transport = transport
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self.on_request: list[Callable[[str, str], None]] = []
        """Called with (method, URL path) before each request, whichever way it goes, but for
        chunk transfers (uploads, fetches, content): what a test counts."""
        self.direct: DirectHttp | None = None
        """Requests sent and answers read off the socket (`cubby.client.directhttp`), unless
        a custom transport or a proxy from the environment must carry every request."""
        if transport is None and not proxies_from_environment():
            self.direct = DirectHttp(headers, Timeouts(CONNECT_TIMEOUT, timeout, timeout))
        self.bucket_reads: bool | None = None
        """Whether chunks are read straight from the bucket (`cubby.client.bucketreads`): None
        until the blocks role was asked, False once it said it hands out no reads, or once
        `BUCKET_FAILURES` reads in a row failed (a bucket this client cannot reach)."""
        self._bucket_failures = 0
        self.fetch_advice: int | None = None
        """How many requests of one download the blocks role advises keeping in flight (its
        ``locate`` answer's ``fetches``, at most `MOST_FETCHES`): more where its chunks come
        from object storage. None until it was asked, or from a server that gives none."""
        self.bucket_writes: bool | None = None
        """Whether chunks are put straight into the bucket (`cubby.client.bucketwrites`): None
        until a prove answer said whether the blocks role offers it (`direct_puts`), then
        that; False once a plan said it hands out no PUTs, or once `BUCKET_FAILURES` puts in a
        row failed. Only True sends chunks to the bucket."""
        self._bucket_put_failures = 0
        self._bucket: DirectHttp | None = None
        self._bucket_https: httpx.Client | None = None
        self._bucket_reader: ThreadPoolExecutor | None = None

    @property
    def http(self) -> httpx.Client:
        """The httpx client, made (and httpx imported) on first use: for https, a proxy, a
        custom transport, a streamed answer, or an answer `DirectHttp` declined."""
        with self._http_lock:
            if self._http is None:
                import httpx

                self._http = self._httpx_client(
                    self._headers,
                    base_url=self.base_url,
                    limits=httpx.Limits(max_keepalive_connections=8),
                    event_hooks={"request": [self._seen]},
                )
            return self._http

    def _httpx_client(self, headers: Mapping[str, str], **options: Any) -> httpx.Client:
        """An httpx client with this client's timeouts and transport, and the CA store loaded
        by its first TLS connection, if any (`deferred_trust`); ``options``: httpx's others."""
        import httpx

        from cubby.client.tls import deferred_trust

        return httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self._timeout, connect=CONNECT_TIMEOUT),
            transport=self._transport,
            verify=deferred_trust(),
            **options,
        )

    def _seen(self, request: httpx.Request) -> None:
        for hook in self.on_request:
            hook(request.method, request.url.path)

    def close(self) -> None:
        with self._http_lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()
        if self.direct is not None:
            self.direct.close()
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            bucket.close()
        reader, self._bucket_reader = self._bucket_reader, None
        if reader is not None:
            reader.shutdown(cancel_futures=True)
        bucket_https, self._bucket_https = self._bucket_https, None
        if bucket_https is not None:
            bucket_https.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------
    def discover(self) -> dict[str, str]:
        """Ask the server where each role is; remember and return the known addresses."""
        resp = self._send("GET", self.base_url + "/api/v1/discovery")
        raise_for(resp)
        body = resp.json()
        self.role_urls = {r: str(body[r]).rstrip("/") for r in ROLES if isinstance(body.get(r), str) and body[r]}
        return dict(self.role_urls)

    def role_url(self, role: str) -> str:
        """The base URL for ``role``'s requests: discovered, else the configured one."""
        return self.role_urls.get(role, self.base_url)

    def _url(self, path: str) -> str:
        role = role_for_path(path)
        return (self.role_urls.get(role, self.base_url) if role else self.base_url) + path

    def _send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        import httpx  # (for its errors: `self.http` makes the client)

        try:
            return self.http.request(method, url, **kw)
        except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.TimeoutException) as exc:
            raise Unavailable(f"cannot reach the cubby server at {url.split('/api/', 1)[0]}: {exc}") from exc

    def _rerouted(self, path: str, resp: Reply) -> bool:
        """After a 421 ``wrong_role`` answer: learn where the roles are; True when ``path``'s
        role now has another address (so the request is worth sending again)."""
        if resp.status_code != 421:
            return False
        tried = self._url(path)
        self.discover()
        return self._url(path) != tried

    def _request(
        self, method: str, path: str, *, content_factory: Callable[[], Any] | None = None, **kw: Any
    ) -> httpx.Response:
        """One request to the role that serves ``path``; ``content_factory`` makes the body
        anew if the request has to be sent again elsewhere (a stream is consumed by sending)."""
        for attempt in (1, 2):
            if content_factory is not None:
                kw["content"] = content_factory()
            resp = self._send(method, self._url(path), **kw)
            if attempt == 1 and self._rerouted(path, resp):
                continue
            break
        raise_for(resp)
        return resp

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, **kw: Any) -> Iterator[httpx.Response]:
        """A streamed answer from the role that serves ``path`` (rerouted like `_request`)."""
        for attempt in (1, 2):
            with self.http.stream(method, self._url(path), **kw) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    if attempt == 1 and self._rerouted(path, resp):
                        continue
                    raise_for(resp)
                yield resp
                return

    @contextlib.contextmanager
    def _direct(self, method: str, url: str, doing: str, **kw: Any) -> Iterator[tuple[int, Body] | None]:
        """The answer to a request sent over `DirectHttp` (``kw``: `DirectHttp.open`'s), or None
        when it does not take the URL or declines the answer: the caller then sends the
        request through httpx. A connection lost on the way, while the caller reads the body
        too, is `Unavailable` (``doing``: what the client was doing, for the message)."""
        try:
            with contextlib.ExitStack() as stack:
                answer = None
                if self.direct is not None and self.direct.takes(url):
                    with contextlib.suppress(Declined):
                        answer = stack.enter_context(self.direct.open(method, url, **kw))
                yield answer
        except OSError as exc:
            raise Unavailable(f"lost the connection to {self.base_url} while {doing}: {exc}") from exc

    def _get(self, url: str, **params: Any) -> Any:
        return self._json("GET", url, params={k: v for k, v in params.items() if v is not None})

    def _post(self, url: str, body: dict[str, Any], *, once: bool = True) -> Any:
        """``once``: the request must not reach the server twice (a commit, a new token), so a
        kept-alive connection found closed after it was sent is `Unavailable`, not a resend;
        False for what may be sent again (a proof, a fetch of signatures)."""
        return self._json("POST", url, body=json_bytes(body), resend=not once)

    def _json(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: bytes | None = None,
        resend: bool = True,
    ) -> Any:
        """The JSON answer to a request of the API (its error raised as its `CubbyError`), sent
        over `DirectHttp` when it takes the URL, else through httpx; rerouted after a
        ``wrong_role`` answer either way."""
        query = f"?{urlencode(params)}" if params else ""
        resp = self._over_socket(path, lambda: self._json_direct(method, path, self._url(path) + query, body, resend))
        if resp is not None:
            return json_of(resp)
        kw: dict[str, Any] = {"params": params} if params else {}
        if body is not None:
            kw.update(content=body, headers=_JSON_HEADERS)
        return json_of(self._request(method, path, **kw))

    def _over_socket(self, path: str, send: Callable[[], Answer | None]) -> Answer | None:
        """The answer ``send`` got over `DirectHttp`, sent again once to where a ``wrong_role``
        answer says ``path``'s role is, and raised as its `CubbyError` if it is an error; None
        when ``send`` returned None (the caller then goes through httpx)."""
        for attempt in (1, 2):
            resp = send()
            if resp is None:
                return None
            if attempt == 1 and self._rerouted(path, resp):
                continue
            raise_for(resp)
            return resp
        return None  # (not reached: the second answer is returned or raised)

    def _json_direct(self, method: str, path: str, url: str, body: bytes | None, resend: bool) -> Answer | None:
        """The answer, whole, to a request sent over `DirectHttp`; None when it does not take
        the URL, or declined the answer of a request that may be sent again (httpx then sends
        it). A request that may not is not sent twice: an answer declined after it was sent (an
        encoded body, one delimited by closing the connection: no cubby server sends either)
        is `Unavailable`, which says the request may or may not have been applied."""
        direct = self.direct
        if direct is None or not direct.takes(url):
            return None
        for hook in self.on_request:
            hook(method, path)
        try:
            with direct.open(
                method, url, headers=_JSON_HEADERS if body is not None else None, body=body or b"", any_status=True,
                resend=resend,
            ) as (status, answer):
                return _read_whole(status, answer, JSON_ANSWER_LIMIT)
        except Declined as exc:
            if resend:
                return None
            raise Unavailable(
                f"the answer of {self.base_url} to {path} could not be read ({exc}); the request may or may not "
                "have been applied: look before sending it again"
            ) from exc
        except OSError as exc:
            raise Unavailable(f"lost the connection to {self.base_url} while sending {path}: {exc}") from exc

    # -- account ---------------------------------------------------------------------------------
    def account(self) -> dict[str, Any]:
        """The account and its namespaces; remembers each namespace's proof key (`proof_key`)."""
        body = dict(self._get("/api/v1/account"))
        now = time.monotonic()
        for n in body.get("namespaces", ()):
            k = n.get("proof_key") if isinstance(n, dict) else None
            if isinstance(k, dict) and isinstance(k.get("window"), int) and isinstance(k.get("key"), str):
                try:
                    key = bytes.fromhex(k["key"])
                except ValueError:
                    continue
                until = now + float(k.get("valid_for", 0)) - KEY_MARGIN
                self.proof_keys[int(n["ns_id"])] = ProofKey(int(k["window"]), key, until)
        return body

    def proof_key(self, ns_id: int) -> ProofKey | None:
        """The proof key of ``ns_id`` to compute nonces with (`cubby.core.nonces`), asked for
        again (one account request) when the one held is near the end of its validity; None
        when the server gives none (an older server: the client then commits first and uses
        the nonces of the answer). A key is used only while it has at least `KEY_MARGIN`
        seconds left, so a proof is never refused for being late, which would make the client
        upload a chunk the server holds."""
        k = self.proof_keys.get(ns_id)
        if k is None or time.monotonic() >= k.until:
            if self.keyless.get(ns_id, 0.0) > time.monotonic():
                return None
            self.account()
            k = self.proof_keys.get(ns_id)
            if k is None:  # not asked again for a while: each ask is a request
                self.keyless[ns_id] = time.monotonic() + KEY_MARGIN
        return k if k is not None and time.monotonic() < k.until else None

    def create_token(self, label: str = "") -> dict[str, Any]:
        return dict(self._post("/api/v1/tokens", {"label": label}))

    def list_tokens(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/tokens")["tokens"])

    def revoke_token(self, token_id: int) -> None:
        self._request("DELETE", f"/api/v1/tokens/{int(token_id)}")

    # -- files -----------------------------------------------------------------------------------
    def commit(
        self, path: str, size: int, chunks: Sequence[ChunkRef], expected_rev: int | None = None, mtime: float | None = None,
        mode: int | None = None,
    ) -> CommitResult:
        res = parse_commit_answer(self._post("/api/v1/files/commit", commit_body(path, size, chunks, expected_rev, mtime, mode)))
        if isinstance(res, CubbyError):
            raise res
        return res

    def commit_batch(self, reqs: Sequence[dict[str, Any]]) -> list[CommitResult | CubbyError]:
        """``reqs`` are `commit_body` dicts; each gets its own outcome."""
        out = self._post("/api/v1/files/commit_batch", {"commits": list(reqs)})
        return [parse_commit_answer(r) for r in out["results"]]

    def stat(self, path: str) -> Entry:
        return Entry.from_dict(self._get("/api/v1/files/stat", path=path)["entry"])

    def list(self, path: str = "/", recursive: bool = False, limit: int = 2000) -> Iterator[Entry]:
        cursor = None
        while True:
            page = self._get("/api/v1/files/list", path=path, recursive=str(recursive).lower(), cursor=cursor, limit=limit)
            for e in page["entries"]:
                yield Entry.from_dict(e)
            if not page["has_more"]:
                return
            cursor = page["cursor"]

    def blocklist(self, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        body = self._get("/api/v1/files/blocklist", path=path, rev=rev)
        return Entry.from_dict(body["entry"]), [ChunkRef(c["hash"], int(c["size"])) for c in body["chunks"]]

    def blocklists(self, paths_: Sequence[str]) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        out: list[tuple[Entry, list[ChunkRef]] | CubbyError] = []
        for r in self._post("/api/v1/files/blocklists", {"paths": list(paths_)}, once=False)["results"]:
            if "error" in r:
                out.append(error_from_dict(r["error"], 404))
            else:
                out.append((Entry.from_dict(r["entry"]), [ChunkRef(c["hash"], int(c["size"])) for c in r["chunks"]]))
        return out

    def mkdir(self, path: str) -> Entry:
        return Entry.from_dict(self._post("/api/v1/files/mkdir", {"path": path})["entry"])

    def batch(self, ops: Sequence[dict[str, Any]]) -> Sequence[Entry | CubbyError]:
        """Folder creations, deletes and moves (``{"op": "mkdir"|"delete"|"move", ...}`` with
        the fields of the single routes), applied in order; each gets its own outcome."""
        out: list[Entry | CubbyError] = []
        for i in range(0, len(ops), MAX_BATCH):
            for r in self._post("/api/v1/files/batch", {"ops": list(ops[i : i + MAX_BATCH])})["results"]:
                if "error" in r:
                    out.append(error_from_dict(r["error"], int(r.get("status", 400))))
                else:
                    out.append(Entry.from_dict(r["entry"]))
        return out

    def delete(self, path: str, expected_rev: int | None = None, unchanged_since: int | None = None) -> Entry:
        body: dict[str, Any] = {"path": path, "expected_rev": expected_rev}
        if unchanged_since is not None:
            body["unchanged_since"] = unchanged_since
        return Entry.from_dict(self._post("/api/v1/files/delete", body)["entry"])

    def move(self, src: str, dst: str, expected_rev: int | None = None) -> Entry:
        body = {"from_path": src, "to_path": dst, "expected_rev": expected_rev}
        return Entry.from_dict(self._post("/api/v1/files/move", body)["entry"])

    def history(self, path: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return list(self._get("/api/v1/files/history", path=path, limit=limit)["revisions"])

    def restore(self, path: str, rev: int) -> Entry:
        return Entry.from_dict(self._post("/api/v1/files/restore", {"path": path, "rev": rev})["entry"])

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> tuple[builtins.list[JournalEntry], int, bool]:
        body = self._get("/api/v1/journal", ns_id=ns_id, after=after, limit=limit)
        return [JournalEntry.from_dict(e) for e in body["entries"]], int(body["head"]), bool(body["has_more"])

    # -- shared folders --------------------------------------------------------------------------
    def share(self, path: str, user: str, role: str = "editor") -> dict[str, Any]:
        """Share the folder at ``path`` with ``user`` (or change their role); returns
        ``{ns_id, path, created, user, role, state}``."""
        return dict(self._post("/api/v1/shares", {"path": path, "user": user, "role": role})["share"])

    def shares(self) -> builtins.list[dict[str, Any]]:
        """The caller's shared folders and invitations, each with its members."""
        return list(self._get("/api/v1/shares")["shares"])

    def accept_share(self, ns_id: int) -> dict[str, Any]:
        """Accept an invitation; returns ``{ns_id, path, role}`` (where it is mounted)."""
        return dict(self._request("POST", f"/api/v1/shares/{int(ns_id)}/accept").json()["share"])

    def remove_member(self, path: str, user: str) -> dict[str, Any]:
        return dict(self._post("/api/v1/shares/remove", {"path": path, "user": user})["share"])

    def leave_share(self, folder: str | int) -> dict[str, Any]:
        """Leave the shared folder mounted at path ``folder``, or with namespace id ``folder``."""
        body = {"ns_id": folder} if isinstance(folder, int) else {"path": folder}
        return dict(self._post("/api/v1/shares/leave", body)["share"])

    def unshare(self, path: str) -> dict[str, Any]:
        return dict(self._post("/api/v1/shares/unshare", {"path": path})["share"])

    # -- chunks ----------------------------------------------------------------------------------
    def upload_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]]) -> int:
        """Send chunks; returns how many were new to the server.

        Where the blocks role hands out PUTs of packs (``uploads=direct``, as its prove answers
        say: an upload's chunks are always proven first), the chunks of at
        least `MIN_DIRECT` bytes go to the bucket in one pack (`_put_to_bucket`), and only the
        rest (and all of them, if that fails) through the blocks role in one request.

        Sending a chunk again is harmless: chunks are content-addressed, so the server
        verifies the bytes against their name and stores a chunk it holds already as nothing
        new. That is what lets the request be sent a second time after a kept-alive
        connection turned out closed, even if the server had read (and stored) part of it:
        the count of new chunks is then low by what the first try stored, and nothing else
        differs.

        Over `DirectHttp` when it takes the URL: the frames are written with ``sendmsg``
        from the chunks' own bytes (`cubby.client.directsend`: no join, no copy in Python,
        no h11 event per piece) and the answer, error or not, is read there too. Through
        httpx otherwise (a proxy, a custom transport, https), with a Content-Length, which
        keeps the body out of chunked transfer encoding, whose framing h11 joins with every
        piece (measured, branch bigproof: 0.50 -> 0.37 client CPU s/GiB of sending)."""
        if not items:
            return 0
        stored = 0
        if self.bucket_writes:
            big = {name: data for name, data in items if len(data) >= MIN_DIRECT}
            put = self._put_to_bucket(ns_id, big) if big else None
            if put is not None:
                stored, items = put, [(name, data) for name, data in items if name not in big]
                if not items:
                    return stored
        return stored + self._upload_through_blocks(ns_id, items)

    def _put_to_bucket(self, ns_id: int, items: dict[str, bytes]) -> int | None:
        """Put ``items`` into a pack in the bucket, straight from this client
        (`cubby.client.bucketwrites`): how many were new, or None when the blocks role hands
        out no PUTs or this one failed (the caller uploads them through the blocks role).
        The bucket refuses the PUT unless every chunk is the bytes its name says, so nothing
        this client does wrong reaches anyone else's files."""
        try:
            answer = self._post(
                "/api/v1/blocks/put_plan", {"ns_id": ns_id, "chunks": [[n, len(d)] for n, d in items.items()]}, once=False
            )
            plan = parse_put_plan(answer, ns_id, items)
        except NotFound:
            self.bucket_writes = False  # no such route: a server from before
            return None
        except BadPlan:
            self.bucket_writes = False
            return None
        if plan is None:
            self.bucket_writes = False
            return None
        try:
            self._send_put(plan)
            done = self._post("/api/v1/blocks/put_done", plan.done, once=False)
        except (BadPlan, Declined, OSError, Unavailable) as exc:
            self._bucket_put_failures += 1
            if self._bucket_put_failures >= BUCKET_FAILURES:
                self.bucket_writes = False
            log.info("a pack put to the bucket failed; its chunks go through the blocks role", extra={"error": str(exc)})
            return None
        except CubbyError as exc:
            if exc.code != "pack_not_stored":
                raise
            self._bucket_put_failures += 1  # the bucket took the PUT but does not show the pack
            if self._bucket_put_failures >= BUCKET_FAILURES:
                self.bucket_writes = False
            return None
        self._bucket_put_failures = 0
        self.bucket_writes = True
        return int(done["stored"])

    def _send_put(self, plan: PutPlan) -> None:
        """Send ``plan``'s PUT to the bucket: over a `DirectHttp` of its own (no cubby token in
        its headers) for plain http, else through the bucket's httpx client; `BadPlan`
        unless the bucket stored it (200)."""
        on_sent = self.upload_limit.consume if self.upload_limit else None
        if self.direct is not None and DirectHttp.takes(plan.url):
            with self._http_lock:
                if self._bucket is None:
                    self._bucket = DirectHttp({"User-Agent": USER_AGENT}, self.direct.timeouts)
            with self._bucket.open(
                "PUT", plan.url, headers=plan.headers, body=GatheredBody(plan.body), on_sent=on_sent, any_status=True
            ) as (status, body):
                text = body.read(ANSWER_LIMIT)
            if status != 200:
                raise BadPlan(f"the bucket answered {status} to a pack's PUT: {text[:300]!r}")
            return
        import httpx

        try:
            resp = self._bucket_client().put(
                plan.url, headers={**plan.headers, "Content-Length": str(plan.length)}, content=(bytes(b) for b in plan.body)
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"lost the connection to the bucket while uploading: {exc}") from exc
        if resp.status_code != 200:
            raise BadPlan(f"the bucket answered {resp.status_code} to a pack's PUT: {resp.text[:300]!r}")

    def _upload_through_blocks(self, ns_id: int, items: Sequence[tuple[str, bytes]]) -> int:
        """`upload_chunks` through the blocks role's upload route."""
        path = "/api/v1/blocks/upload"
        resp = self._over_socket(path, lambda: self._upload_direct(path, ns_id, items))
        if resp is not None:
            return int(json_of(resp)["stored"])
        length = sum(frames.HEADER.size + len(data) for _, data in items)

        def body() -> Any:
            return self.upload_limit.paced(frames.encode_many(items)) if self.upload_limit else frames.encode_many(items)

        answer = self._request(
            "POST",
            path,
            params={"ns_id": ns_id},
            content_factory=body,
            headers={"Content-Type": frames.CONTENT_TYPE, "Content-Length": str(length)},
        ).json()
        return int(answer["stored"])

    def _upload_direct(self, path: str, ns_id: int, items: Sequence[tuple[str, bytes]]) -> Answer | None:
        """The answer to an upload sent over `DirectHttp` (as an `Answer`, so that an
        error goes through `raise_for` and a ``wrong_role`` through `_rerouted` like every
        other answer); None when the direct path does not take it (send it through httpx)."""
        url = f"{self._url(path)}?ns_id={int(ns_id)}"
        if self.direct is None or not self.direct.takes(url):
            return None
        buffers: list[bytes] = []
        for name, data in items:
            buffers += (frames.header(name, len(data)), data)
        on_sent = self.upload_limit.consume if self.upload_limit else None
        with self._direct(
            "POST", url, "uploading", headers={"Content-Type": frames.CONTENT_TYPE}, body=GatheredBody(buffers),
            on_sent=on_sent, any_status=True,
        ) as answer:
            return None if answer is None else _read_whole(*answer)

    def prove(
        self, ns_id: int, proofs: dict[str, tuple[int, str]], windows: Mapping[str, int | None] | None = None
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """Prove possession: ``proofs`` maps a chunk to (its size, its proof: `cubby.core.proofs`
        `proof_hex` with the `CURRENT` algorithm, which the request names);
        returns (accepted, rejected). The size is the one the commit stated (it is bound into
        the nonce); ``windows``, the hour the commit answer named with each nonce, lets the
        server hash the bytes once instead of once per hour the nonce could be from."""
        if not proofs:
            return [], []
        wire: dict[str, dict[str, Any]] = {h: {"size": size, "proof": proof} for h, (size, proof) in proofs.items()}
        for h, window in (windows or {}).items():
            if h in wire and window is not None:
                wire[h]["window"] = window
        body = self._post("/api/v1/blocks/prove", {"ns_id": ns_id, "alg": PROOF_ALG, "proofs": wire}, once=False)
        if self.bucket_writes is None:  # a server that does not say offers none (a server from before, too)
            self.bucket_writes = body.get("direct_puts") is True
        return list(body["accepted"]), list(body["rejected"])

    def fetch_chunks(self, hashes: Sequence[str]) -> Iterator[tuple[str, bytes | bytearray]]:
        """Yield (name, bytes) of each of ``hashes``, each verified against its name. The
        bytes are a ``bytearray`` when they were read off the socket into it.

        Read straight from the bucket where the blocks role hands out reads
        (``downloads=direct``, `cubby.client.bucketreads`): the chunks of each read in the
        order asked, then those the plan leaves to the blocks role; the chunks of a read that
        fails (the bucket unreachable, the read expired, a byte damaged) are fetched through
        the blocks role instead. Else all through the blocks role, in the order asked."""
        if not hashes:
            return
        plan = self._bucket_plan(hashes) if self.bucket_reads is not False else None
        if plan is None:
            yield from self._fetched(hashes)
            return
        pool = self._bucket_pool()
        reading = [pool.submit(self._read_bucket, read) for read in plan.reads]
        try:
            for read, future in zip(plan.reads, reading):
                try:
                    got = future.result()
                    self._bucket_failures = 0
                except (BadPlan, Declined, CubbyError, OSError):
                    self._bucket_failures += 1
                    if self._bucket_failures >= BUCKET_FAILURES:
                        self.bucket_reads = False
                    got = list(self._fetched([name for name, _, _ in read.chunks]))
                yield from got
        finally:
            for future in reading:
                future.cancel()
        if plan.fetch:
            yield from self._fetched(plan.fetch)

    def _bucket_pool(self) -> ThreadPoolExecutor:
        with self._http_lock:
            if self._bucket_reader is None:
                self._bucket_reader = ThreadPoolExecutor(BUCKET_READS, thread_name_prefix="cubby-bucket-reads")
            return self._bucket_reader

    def _bucket_plan(self, hashes: Sequence[str]) -> Plan | None:
        """The blocks role's plan of direct reads for ``hashes`` (`parse_plan`), or None when
        it hands out none (remembered). Any other error of the request is the download's
        (an unreachable or overloaded blocks role would fail the fetch the same way, after
        as long a wait). A plan that is not well formed stops the asking. A 404 that names
        how many chunks the caller may not read (``missing``) is theirs, and the fetch that
        follows says so; any other 404 to the first request is taken for a server without
        the route (an older release), and the client stops asking. (Both were taken for the
        latter once: a sync daemon whose first download met a file unshared since it was
        listed fetched everything through the server for the rest of its life.)"""
        try:
            answer = self._post("/api/v1/blocks/locate", {"hashes": list(hashes)}, once=False)
            advice = answer.get("fetches") if isinstance(answer, dict) else None
            if type(advice) is int and advice >= 1:  # a number, bounded here: the server's word is advice
                self.fetch_advice = min(advice, MOST_FETCHES)
            plan = parse_plan(answer, hashes)
        except NotFound as exc:
            if self.bucket_reads is None and "missing" not in exc.details:
                self.bucket_reads = False  # no such route here
            return None
        except (BadPlan, ValueError):
            self.bucket_reads = False  # not a plan this client follows (or not JSON): fetch, and stop asking
            return None
        self.bucket_reads = plan is not None
        return plan

    def _read_bucket(self, read: BucketRead) -> builtins.list[tuple[str, bytes | bytearray]]:
        """The chunks of ``read``, read whole from the bucket (on a thread of `_bucket_pool`):
        over a `DirectHttp` of its own (no cubby token in its headers) for plain http, through
        an httpx client of its own for https or where a proxy carries every request."""
        on_bytes = self.download_limit.consume if self.download_limit else None
        headers = {"Range": read.range}
        if self.direct is not None and DirectHttp.takes(read.url):
            with self._http_lock:
                if self._bucket is None:
                    self._bucket = DirectHttp({"User-Agent": USER_AGENT}, self.direct.timeouts)
            opened = self._bucket.open("GET", read.url, headers=headers, on_bytes=on_bytes, encoded=STORED_AS_IS)
            with opened as (status, body):
                if status != 206:
                    raise BadPlan(f"the bucket answered {status} to a ranged read")
                return list(read_chunks(read, body.readinto, lambda: body.done))
        import httpx

        try:
            with self._bucket_client().stream("GET", read.url, headers=headers) as resp:
                if resp.status_code != 206:
                    raise BadPlan(f"the bucket answered {resp.status_code} to a ranged read")
                pieces = PieceReader(resp.iter_raw(PIECE), on_bytes)
                return list(read_chunks(read, pieces.readinto, pieces.ended))
        except httpx.HTTPError as exc:
            raise Unavailable(f"lost the connection to the bucket while downloading: {exc}") from exc

    def _bucket_client(self) -> httpx.Client:
        """The httpx client for the bucket: no cubby token in its headers."""
        with self._http_lock:
            if self._bucket_https is None:
                self._bucket_https = self._httpx_client({"User-Agent": USER_AGENT})
            return self._bucket_https

    def _fetched(self, hashes: Sequence[str]) -> Iterator[tuple[str, bytes | bytearray]]:
        """`fetch_chunks` through the blocks role: frames, in the order asked."""
        if not hashes:
            return
        for name, data in self._stream_frames("/api/v1/blocks/fetch", {"hashes": list(hashes)}, MAX_SIZE):
            if sha256_hex(data) != name:
                raise ChunkMismatch(f"the server sent bytes that do not match chunk {name}")
            yield name, data

    def signatures(self, hashes: Sequence[str]) -> dict[str, bytes]:
        """Signatures of old chunks (`cubby.core.delta.signature`), for those the caller may read."""
        out: dict[str, bytes] = {}
        for i in range(0, len(hashes), delta.MAX_BASES):
            body = self._post("/api/v1/blocks/signatures", {"hashes": list(hashes[i : i + delta.MAX_BASES])}, once=False)
            out.update({h: base64.b64decode(s) for h, s in body["signatures"].items()})
        return out

    def upload_patches(self, ns_id: int, items: Sequence[tuple[str, Sequence[str], bytes]]) -> int:
        """Send (new chunk, base chunks, patch) triples; the server rebuilds, verifies and stores
        every new chunk, or stores nothing (`ChunkMismatch`). Returns how many were new."""
        stored = 0
        step = delta.MAX_BASES // delta.MAX_SPAN
        for i in range(0, len(items), step):
            part = [(new, delta.pack_patch(bases, blob)) for new, bases, blob in items[i : i + step]]
            body = self._request(
                "POST", "/api/v1/blocks/patch", params={"ns_id": ns_id},
                content=frames.encode_many(part), headers={"Content-Type": frames.CONTENT_TYPE},
            ).json()
            stored += int(body["stored"])
        return stored

    def fetch_against(
        self, pairs: Sequence[tuple[str, Sequence[str]]], held: Mapping[str, bytes | bytearray]
    ) -> Iterator[tuple[str, bytes | bytearray]]:
        """Fetch new chunks as deltas against old chunks this client holds (each new chunk's
        base is the concatenation of its old chunks; ``held``: name -> bytes). Each result is
        verified against its name; one that does not decode or does not match is refused and
        fetched whole afterwards (`fetch_chunks`), so chunks come in the order asked except
        those. A whole chunk where a delta was asked is checked the same way."""
        step = delta.MAX_BASES // delta.MAX_SPAN
        refused: list[str] = []
        for i in range(0, len(pairs), step):
            part = pairs[i : i + step]
            base_of = dict(part)
            body = {"pairs": [[new, list(bases)] for new, bases in part]}
            for name, data in self._stream_frames("/api/v1/blocks/fetch_delta", body, delta.FETCH_FRAME):
                if name not in base_of:
                    raise BadRequest(f"the server sent chunk {name}, which was not asked for", code="bad_delta")
                try:
                    if data[:1] == delta.WHOLE:
                        chunk = data[1:]
                    else:
                        chunk = delta.decode_against(b"".join(held[b] for b in base_of[name]), bytes(data[1:]))
                except BadRequest:
                    refused.append(name)
                    continue
                if sha256_hex(chunk) != name:
                    refused.append(name)
                    continue
                yield name, chunk
        if refused:
            yield from self.fetch_chunks(refused)

    def _stream_frames(self, path: str, body: dict[str, Any], max_frame: int) -> Iterator[tuple[str, bytes | bytearray]]:
        """The chunk frames of a POST's answer. Read off the socket by `DirectHttp` when it
        takes the request (`frames.read_frames`: each chunk received into its own buffer), an
        error answer too (`_raise_refusal`); through httpx otherwise, or when it declines the
        answer (one no cubby server sends) or the answer is ``wrong_role`` (httpx's path
        reroutes)."""
        on_bytes = self.download_limit.consume if self.download_limit else None
        refusal = None
        with self._direct(
            "POST", self._url(path), "downloading", headers=_JSON_HEADERS, body=json_bytes(body), on_bytes=on_bytes,
            any_status=True,
        ) as answer:
            if answer is not None and answer[0] == 200:
                yield from frames.read_frames(answer[1].readinto, max_frame)
                return
            if answer is not None:
                refusal = _read_whole(*answer)
        _raise_refusal(refusal)
        yield from self._httpx_frames(path, body, max_frame)

    def _httpx_frames(self, path: str, body: dict[str, Any], max_frame: int) -> Iterator[tuple[str, bytes]]:
        import httpx  # (for its errors: `_stream` makes the client)

        try:
            with self._stream("POST", path, json=body) as resp:
                reader = frames.FrameReader(max_frame)
                for piece in resp.iter_raw():
                    if self.download_limit:
                        self.download_limit.consume(len(piece))
                    yield from reader.feed(piece)
                reader.close()
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.TimeoutException) as exc:
            raise Unavailable(f"lost the connection to {self.base_url} while downloading: {exc}") from exc

    def download(self, path: str, *, offset: int = 0, rev: int | None = None) -> Iterator[bytes | bytearray]:
        """Stream a whole file (from ``offset``) through the content route: pieces of up to
        `PIECE` bytes, each received into its own buffer when `DirectHttp` takes the request."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        route = "/api/v1/content/" + quote(path.lstrip("/"))
        params = {"rev": rev} if rev else None
        url = self._url(route) + (f"?rev={int(rev)}" if rev else "")
        on_bytes = self.download_limit.consume if self.download_limit else None
        refusal = None
        with self._direct("GET", url, f"downloading {path}", headers=headers, on_bytes=on_bytes, any_status=True) as answer:
            if answer is not None and answer[0] not in (200, 206):
                refusal, answer = _read_whole(*answer), None
            if answer is not None:
                readinto = answer[1].readinto
                while True:
                    piece = bytearray(PIECE)
                    n = frames.fill(readinto, memoryview(piece))
                    if n:
                        del piece[n:]
                        yield piece
                    if n < PIECE:
                        return
        _raise_refusal(refusal)
        with self._stream("GET", route, headers=headers, params=params) as resp:
            yield from resp.iter_bytes()

    # -- links -----------------------------------------------------------------------------------
    def create_link(self, path: str, expires: str | float | None = None, password: str | None = None) -> dict[str, Any]:
        """Make a public link to ``path``; the answer holds ``url`` and ``token`` (shown only now).
        ``expires`` is an ISO 8601 time (UTC when it has no zone) or seconds since the epoch."""
        body: dict[str, Any] = {"path": path}
        if expires is not None:
            body["expires"] = expires
        if password is not None:
            body["password"] = password
        return dict(self._post("/api/v1/links", body))

    def list_links(self, *, include_members: bool = False) -> builtins.list[dict[str, Any]]:
        """The caller's links that are not revoked, newest first; with ``include_members``,
        also the links members made into folders the caller owns (``created_by`` set)."""
        return list(self._get("/api/v1/links", all="true" if include_members else None)["links"])

    def revoke_link(self, link_id: str) -> None:
        self._request("DELETE", f"/api/v1/links/{quote(str(link_id), safe='')}")


def batches(items: Iterable[tuple[str, bytes]], max_bytes: int = 16 * 1024 * 1024, max_count: int = 4000) -> Iterator[list[tuple[str, bytes]]]:
    """Group chunks into requests of bounded size."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[1])
        if size >= max_bytes or len(batch) >= max_count:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
