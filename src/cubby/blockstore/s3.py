"""Pack files in an S3-compatible bucket: `S3ObjectStore`, and `open_s3_object_store(url)`.

URL form: ``s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:9000&region=us-east-1&checksum=auto&timeout=20``
(every query parameter optional: AWS's own endpoint, the region from the AWS config, the
PUT body's check `BodyCheck` (auto, crc32, md5, sha256 or sha256-chunked) and `DEFAULT_TIMEOUT` when left out),
and ``&downloads=direct&public_endpoint=https://s3.example.com`` to let clients read chunks
straight from the bucket (`S3ObjectStore.signed_read`; ``downloads=proxied``, the default,
sends every byte through a blocks process), ``&uploads=direct`` to let them put packs of their
chunks there, every chunk checked by the bucket against the SHA-256 the server signed
(`S3ObjectStore.signed_put`, `cubby.blockstore.directput`; ``uploads=proxied`` is the default).
Credentials come from where every AWS tool looks: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``,
or an instance role; never from the URL, so it can be logged.

Only the oldest, most widely implemented calls are used (PutObject, ranged GetObject,
DeleteObject, ListObjectsV2, HeadObject), so that AWS S3, Ceph RGW, MinIO and Garage all serve
it. Choices that follow from that, and from what a PUT costs the server's CPU:

- boto3 (since 1.36) adds CRC trailers in ``aws-chunked`` bodies to every PUT by default,
  which several S3-compatible servers refuse or store wrongly; we switch that off
  (``when_required``) and guard the body by a check the server makes: by default CRC32 in
  ``x-amz-checksum-crc32`` where the server is seen to check it, else a payload signed in
  chunks whose SHA-256 are mostly known (`cubby.blockstore.s3chunked`) where it is seen to
  check those, else a payload signed whole (`S3ObjectStore.body_check`); or the one
  ``?checksum=crc32|md5|sha256|sha256-chunked`` names. What each costs and which servers
  check which: `cubby.blockstore.s3body`. A PUT signed in chunks is not botocore's (it has
  no such signer): this store signs it (botocore's SigV4 for the request, its own HMAC chain
  for the chunks) and sends it on the client's own connections.
- Bodies are not signed (``UNSIGNED-PAYLOAD``, ``payload_signing_enabled`` off) unless the
  check is the signed payload. boto3 already does that over https when a checksum header is
  sent; over plain http (a bucket on the local network, Ceph RGW beside the server) it would
  hash every byte of every pack with SHA-256 for the signature, a full pass over the data on
  the server's CPU (and another on the S3 server's). The headers are always signed.
- A pack's parts are sent as they are (`PartsBody`): not joined into one buffer, and not
  copied again by botocore; and in socket writes of `SEND_BLOCK`, not botocore's 128 KiB.
- No multipart upload: packs are tens of MiB, far below the 5 GiB single-PUT limit, and one
  PUT is atomic by itself (a reader sees all of it or nothing; an unfinished multipart upload
  would leave parts to clean up). Nor does it pay for speed: S3's 5 MiB minimum part allows
  at most three parts of a 16 MiB pack, and against moto eight packs put as two parallel
  parts each took 7.6 s where single PUTs took 6.1 s (2026-12-02, loaded machine); the
  client's in-flight upload windows already keep several PUTs going at once.

Why boto3 and not obstore or aiobotocore: the `ObjectStore` Protocol is synchronous and called
from threads, which is boto3's own model (its client is thread-safe and pools connections);
aiobotocore would need an event loop per caller. Measured here against moto's server on
loopback (16 MiB objects, then 4 KiB requests): boto3 put 28 MiB/s and got 160 MiB/s, obstore
20 and 135 MiB/s; obstore's small requests were faster (9 ms against 47 ms per ranged 4 KiB
GET, mostly moto's own cost of parsing boto3's headers), which matters little for packs read
in large ranges. boto3 is also the reference the benchmarks compare against, the library the
Ceph, MinIO and Garage projects test with, and has a stable API; obstore is pre-1.0.

Faults: this store makes each call once. A connection refused or dropped, a timeout, a body that came
back short, 500, 502, 503, 504, SlowDown, RequestTimeout, BadDigest or
XAmzContentSHA256Mismatch (a PUT body that does not match its checksum: the server refuses
it and stores nothing) raise `ObjectStoreError` with ``retryable = True``; `open_s3_object_store` wraps the store in `RetryingObjectStore`, which
retries those with backoff and jitter (boto3's own retries are switched off so that there is
one policy, and so that a body cut after the headers, which boto3 does not retry, is retried
too). A read that is short because the object is short is not retried: it is final.

Timeouts: a request that waits ``timeout`` seconds (the URL's, else `DEFAULT_TIMEOUT`) for a
byte from the server fails as a dropped connection does, and a call stops retrying at
`DEADLINE_FACTOR` times that (`Backoff.deadline`): 45 s by default, so that an S3 server that
takes requests and never answers (seen here: Ceph RGW with its one OSD full and aborted) costs
an upload its 503 within the 60 s a client waits, instead of eight attempts of boto3's 60 s.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.exceptions
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from cubby.blockstore.folder import check_object_name
from cubby.blockstore.objects import (
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    ShortRead,
    SignedPut,
    SignedRead,
)
from cubby.blockstore.readahead import ReadAheadObjectStore
from cubby.blockstore.retrying import Backoff, RetryingObjectStore
from cubby.blockstore.s3body import BodyCheck, PartsBody
from cubby.blockstore.s3chunked import (
    EMPTY_SHA256,
    BodyChunk,
    ChunkSigner,
    StreamingAuth,
    encode,
    encoded_length_of,
    plan_chunks,
    signing_key,
)
from cubby.core.hashing import Sha256State, sha256_hex
from cubby.errors import BadRequest

_MISMATCH_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})
"""The body did not match its checksum (Content-MD5 or x-amz-checksum-*; the signed SHA-256):
damaged on the way, so sending it again may pass (they are transient too)."""
_TRANSIENT_CODES = (
    frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException"})
    | _MISMATCH_CODES
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_SETUP_CODES = frozenset({
    "NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "PermanentRedirect",
    "AuthorizationHeaderMalformed", "InvalidBucketName",
})
"""Refusals of a set-up fault (the bucket, the credentials, the region), which say nothing of
how the server treats a checksum: the probe raises them rather than take them for a verdict."""

DEFAULT_TIMEOUT = 20.0
"""Seconds a request to S3 may wait for the server before it fails (and is retried): a PUT's
answer comes well within it on a loaded Ceph RGW, and twice it stays under a client's 60 s."""
DEADLINE_FACTOR = 2.25
"""A call (its attempts and backoff waits) stops retrying at this many timeouts: two attempts
that wait out their whole timeout, plus the waits between; any number that fail fast."""
MAX_TIMEOUT = 3600.0
SIGNED_READ_SECONDS = 300
"""How long a read handed to a client (`S3ObjectStore.signed_read`) stays valid. A client uses
it at once (the next few MiB of its download); the rest is room for clocks that disagree.
Below the collector's default ``--pack-grace`` (900 s), so that a pack compacted away after
the read was handed out is still there when it is used; if it is not (a shorter grace), the
client's read fails and it asks the blocks process for those chunks instead."""
SEND_BLOCK = 1024 * 1024
"""Bytes per socket write of a PUT body. urllib3 sends a file-like body in reads of its
connection's ``blocksize``, which botocore sets to 128 KiB: 128 ``sendall`` calls for a 16 MiB
pack, each a trip through urllib3, http.client and the kernel's TCP send. Sending 1 GiB over
loopback cost the sending thread 0.42-0.43 CPU s in 128 KiB writes, 0.23-0.24 s in 1 MiB ones
and no less in 4 MiB ones; a 1 GiB ``cubby put`` to Ceph RGW (2-core machine, 2026-12-06,
four alternated rounds) spent 3.21 CPU s in the server with 128 KiB writes and 3.04 s with
1 MiB ones, and took 5.73 s against 5.34 s (medians). A write is a view of the body
(`PartsBody`), so a larger one copies nothing more."""

log = logging.getLogger("cubby.blockstore")

PROBE_NAME = "checksum-probe"
"""The object `S3ObjectStore.body_check` puts and deletes (outside ``packs/``, which the
collector lists)."""
PROBE_BODY = b"cubby: does this server check x-amz-checksum-crc32?"

_TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    botocore.exceptions.HTTPClientError,  # connections closed or reset, read timeouts, cut bodies
    # No connection made: refused (an S3 server restarting), or its connect timed out. botocore
    # files these apart from HTTPClientError, and they were once taken for final.
    botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError,  # body shorter than its Content-Length
)


def _http_session(client: Any) -> Any:
    """The connections ``client`` sends its requests on (botocore's ``URLLib3Session``, with the
    client's timeouts, proxies, certificates and `SEND_BLOCK`), for the PUTs this store signs
    itself; None where botocore keeps them elsewhere (no PUT is then signed in chunks)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    return session if callable(getattr(session, "send", None)) else None


def _send_in_blocks(client: Any, size: int) -> None:
    """Make the connections ``client`` opens from now on send bodies in writes of ``size``
    bytes (`SEND_BLOCK`). There is no setting for it: botocore chooses its
    own (128 KiB), as urllib3's ``blocksize`` in the keyword arguments its pool manager gives
    every connection pool it makes, and this replaces that value where botocore set it. Where
    it did not (urllib3 1.x, which has no such argument) or keeps it elsewhere, the client is
    left as it is: the writes are then smaller, and nothing else changes."""
    manager = getattr(_http_session(client), "_manager", None)
    pool_kw = getattr(manager, "connection_pool_kw", None)
    if not isinstance(pool_kw, dict) or "blocksize" not in pool_kw:
        log.info("s3 send block left to botocore", extra={"reason": "no blocksize where botocore keeps it"})
        return
    pool_kw["blocksize"] = size


_ERROR_FIELD = re.compile(r"<(Code|Message)>([^<]{0,500})</\1>")


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where an `S3ObjectStore` keeps its objects (``prefix`` is empty or ends with ``/``), and
    how the body of each PUT is checked on the way (`BodyCheck`)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    checksum: BodyCheck | None = None
    """None (the default): CRC32 where the server is seen to check it, else a payload signed in
    chunks or whole (`S3ObjectStore.body_check`)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds a request may wait for the server (module docstring, "Timeouts")."""
    direct: bool = False
    """``downloads=direct``: clients get signed reads of the chunks they may read (`S3ObjectStore.signed_read`)."""
    public_endpoint: str | None = None
    """The endpoint clients reach the bucket at, where it is not ``endpoint`` (a bucket the
    server reaches on a private network and clients through a public name): the signed
    reads and writes name it, since a signature covers the host."""
    direct_uploads: bool = False
    """``uploads=direct``: clients PUT packs of their chunks to the bucket themselves, each
    chunk's SHA-256 signed by the server (`S3ObjectStore.signed_put`)."""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Read ``s3://BUCKET/PREFIX?endpoint=…&region=…&checksum=…&timeout=S&downloads=…&uploads=…&public_endpoint=…``
        (`BodyCheck`'s names; downloads and uploads ``proxied`` or ``direct``); unknown parameters and
        values are refused, so that a misspelt one is not silently ignored."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise BadRequest(f"not an s3://BUCKET/PREFIX url: {url!r}", code="invalid_blocks_url")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"endpoint", "region", "checksum", "timeout", "downloads", "uploads", "public_endpoint"}
        if unknown:
            raise BadRequest(
                f"unknown s3 url parameter(s) {', '.join(sorted(unknown))}: only endpoint, region, checksum, timeout, "
                "downloads, uploads and public_endpoint",
                code="invalid_blocks_url",
            )
        prefix = parts.path.strip("/")
        if prefix:
            check_object_name(prefix)
            prefix += "/"

        def one(key: str) -> str | None:
            values = query.get(key)
            return values[-1] if values else None

        checksum = one("checksum") or "auto"
        try:
            check = None if checksum == "auto" else BodyCheck(checksum)
        except ValueError:
            raise BadRequest(
                f"unknown s3 checksum {checksum!r}: auto, crc32, md5, sha256 or sha256-chunked",
                code="invalid_blocks_url",
            ) from None
        downloads = one("downloads") or "proxied"
        if downloads not in ("proxied", "direct"):
            raise BadRequest(
                f"unknown s3 downloads {downloads!r}: proxied (through the blocks processes) or direct (from the bucket)",
                code="invalid_blocks_url",
            )
        uploads = one("uploads") or "proxied"
        if uploads not in ("proxied", "direct"):
            raise BadRequest(
                f"unknown s3 uploads {uploads!r}: proxied (through the blocks processes) or direct (to the bucket)",
                code="invalid_blocks_url",
            )
        public = one("public_endpoint")
        if public is not None:
            public_parts = urlsplit(public)
            if public_parts.scheme not in ("http", "https") or not public_parts.hostname:
                raise BadRequest(f"bad s3 public_endpoint {public!r}: an http:// or https:// URL", code="invalid_blocks_url")
            if downloads != "direct" and uploads != "direct":
                raise BadRequest(
                    "s3 public_endpoint is for downloads=direct or uploads=direct; add one, or drop public_endpoint",
                    code="invalid_blocks_url",
                )
        return cls(
            parts.netloc, prefix, one("endpoint"), one("region"), check, _timeout(one("timeout")), downloads == "direct", public,
            uploads == "direct",
        )


def _timeout(text: str | None) -> float:
    """The URL's ``timeout``: seconds, more than 0 and at most `MAX_TIMEOUT`."""
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT:  # also refuses nan
        raise BadRequest(
            f"bad s3 timeout {text!r}: seconds, more than 0 and at most {MAX_TIMEOUT:.0f}", code="invalid_blocks_url"
        )
    return value


class S3ObjectStore:
    """An `ObjectStore` on one bucket and prefix, each call made once (see the module docstring
    for faults). ``max_connections`` sizes the connection pool: at least the number of threads
    that call at once, or they queue for a connection. ``list_page_size`` is ListObjectsV2's
    MaxKeys (1000 is S3's most; tests use less to walk several pages). ``session`` is a
    `boto3.Session`, by default one that reads the standard AWS environment variables and
    files."""

    def __init__(
        self,
        location: S3Location,
        *,
        max_connections: int = 32,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        list_page_size: int = 1000,
        session: boto3.Session | None = None,
    ) -> None:
        self.location = location
        self.list_page_size = list_page_size
        self._check = location.checksum
        self._check_lock = threading.Lock()
        self._probed: dict[str, bool] = {}
        """The answers of the probe's steps so far (`_step`)."""
        self._session = session or boto3.Session()
        self._limits = (
            max_connections,
            min(10.0, location.timeout) if connect_timeout is None else connect_timeout,
            location.timeout if read_timeout is None else read_timeout,
        )
        self._client: Any = self._make_client(sign_payload=location.checksum is BodyCheck.SHA256)
        self._presigner: Any = None
        """The client that signs reads for others (`signed_read`), made at the first."""

    def _make_client(self, *, sign_payload: bool) -> Any:
        """A boto3 client for this location; ``sign_payload``: SHA-256 of every body for the
        signature (the ``sha256`` check), else none."""
        location = self.location
        max_connections, connect_timeout, read_timeout = self._limits
        config = Config(
            max_pool_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # No SHA-256 of each body for the signature, on http as on https, unless that is the
            # body's check (see the module docstring): it is a pass over every byte, on both sides.
            s3={
                "payload_signing_enabled": sign_payload,
                **({"addressing_style": "path"} if location.endpoint else {}),
            },
        )
        client = self._session.client(
            "s3", endpoint_url=location.endpoint, region_name=location.region, config=config
        )
        _send_in_blocks(client, SEND_BLOCK)
        return client

    def body_check(self) -> BodyCheck:
        """How PUT bodies are checked on the way: the URL's ``checksum`` if it names one, else
        found out once, at the first PUT (a store that is only read never writes a probe).

        Why a probe: CRC32 is the cheapest check (`cubby.blockstore.s3body`), but servers
        that do not implement S3's additional checksums (Ceph RGW before 19, moto, older
        MinIO and Garage) ignore its header, and a body damaged on the way would be stored and
        acknowledged. So `PROBE_NAME` is put with a wrong CRC32 and then the right one: refused
        then accepted, and the server checks CRC32, which is used. Else the payload is signed,
        which every SigV4 server checks: in chunks where the server is seen to check a chunk's
        signature (`_server_checks_chunks`), as Ceph RGW, MinIO, Garage and AWS do, since the
        chunks' SHA-256 are mostly known already; else whole, on a second client made for it
        (moto decodes chunked bodies without checking them). Then the probe object is deleted.

        Each step's answer is kept (`_step`): a transient failure of one fails this PUT
        (retried as a PUT is), and the next attempt goes on from that step rather than
        making the ones before it again, so that an S3 server refusing a share of requests
        (SlowDown, cut connections) does not have to let five in a row through."""
        with self._check_lock:
            if self._check is None:
                if self._server_checks_crc32():
                    check = BodyCheck.CRC32
                elif self._server_checks_chunks():
                    check = BodyCheck.SHA256_CHUNKED
                else:
                    check = BodyCheck.SHA256
                self._step("probe deleted", self._probe_deleted)
                if check is BodyCheck.SHA256:
                    self._client = self._make_client(sign_payload=True)
                self._check = check
                log.info("s3 body check", extra={"bucket": self.location.bucket, "check": check.value})
            return self._check

    def _probe_deleted(self) -> bool:
        self.delete(PROBE_NAME)
        return True

    def _step(self, name: str, probe: Callable[[], bool]) -> bool:
        """``probe()``'s answer, found once (`body_check`): kept unless it raised."""
        if name not in self._probed:
            self._probed[name] = probe()
        return self._probed[name]

    def _server_checks_crc32(self) -> bool:
        """A wrong CRC32 refused and the right one stored (a refusal of both: the header itself
        is not understood)."""
        return self._step("crc32 wrong refused", lambda: not self._probe_stored(right=False)) and self._step(
            "crc32 right stored", lambda: self._probe_stored(right=True)
        )

    def _server_checks_chunks(self) -> bool:
        """A body signed in chunks refused with one chunk's signature made for other bytes, and
        stored with the right ones: the server checks each chunk's signature. A server that
        cannot be sent such a body here (no session to send on), that refuses such bodies, or
        that takes a wrong signature (moto), does not. (One that checked the signatures and
        then stored the body still encoded would be a server that misreads what it checks:
        not looked for, at the cost of a read on every start.)"""
        if _http_session(self._client) is None:
            return False
        bad = [BodyChunk([PROBE_BODY], len(PROBE_BODY), sha256_hex(PROBE_BODY + b"!"))]
        good = [BodyChunk([PROBE_BODY], len(PROBE_BODY), sha256_hex(PROBE_BODY))]
        return self._step("chunks wrong refused", lambda: not self._chunked_probe_stored(bad, right=False)) and self._step(
            "chunks right stored", lambda: self._chunked_probe_stored(good, right=True)
        )

    def _chunked_probe_stored(self, chunks: list[BodyChunk], *, right: bool) -> bool:
        """Whether the server stores `PROBE_BODY` sent as ``chunks`` (``right``: signed for its
        bytes): False when it refuses it, unless the refusal may pass (retryable), which
        raises; of the wrong ones, a mismatch (XAmzContentSHA256Mismatch on Ceph RGW,
        SignatureDoesNotMatch on AWS) is the refusal looked for. A set-up fault (no bucket, no
        access) has been raised by the CRC32 probe before this one; a refusal of the right
        ones says only that this server does not take such bodies, which are then signed whole."""
        try:
            self._put_chunked(self._key(PROBE_NAME), chunks)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            failure = self._fail(exc, "put", PROBE_NAME)
            refused = _code(exc) in _MISMATCH_CODES | {"SignatureDoesNotMatch"}
            if getattr(failure, "retryable", False) and (right or not refused):
                raise failure from exc
            return False
        return True

    def _probe_stored(self, *, right: bool) -> bool:
        """Whether the server stores `PROBE_BODY` sent with its ``right`` CRC32 or a wrong one;
        False when it refuses the request, unless for a set-up fault (`_SETUP_CODES`: no bucket,
        no access), which raises, as every PUT would fail. A failure that may pass raises (retryable), and so
        does a checksum mismatch of the right CRC32 (the body was damaged on the way); of the
        wrong one, a mismatch (``BadDigest`` on AWS; other servers name it otherwise) is the
        refusal looked for."""
        check = BodyCheck.CRC32.headers([PROBE_BODY if right else PROBE_BODY + b"!"])
        try:
            self._client.put_object(
                Bucket=self.location.bucket, Key=self._key(PROBE_NAME), Body=PROBE_BODY, **check
            )
        except botocore.exceptions.ClientError as exc:
            failure = self._fail(exc, "put", PROBE_NAME)
            if getattr(failure, "retryable", False) and (right or _code(exc) not in _MISMATCH_CODES):
                raise failure from exc
            if _status(exc) in (301, 403, 404) or _code(exc) in _SETUP_CODES:
                raise failure from exc  # no bucket, no access: no PUT would pass, checked or not
            return False
        except botocore.exceptions.BotoCoreError as exc:
            raise self._fail(exc, "put", PROBE_NAME) from exc
        return True

    def _key(self, name: str) -> str:
        check_object_name(name)
        return self.location.prefix + name

    def _fail(self, exc: Exception, what: str, name: str) -> ObjectStoreError | ObjectMissing:
        """Turn a boto3 exception into ours: missing, transient (retryable) or final."""
        where = f"s3://{self.location.bucket}/{self.location.prefix}{name}"
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = _status(exc)
            if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
                return ObjectMissing(f"no object {where}", name=name)
            failure = ObjectStoreError(f"{what} {where} failed: {code} {err.get('Message', '')}".rstrip())
            failure.retryable = code in _TRANSIENT_CODES or status in (500, 502, 503, 504)
            return failure
        failure = ObjectStoreError(f"{what} {where} failed: {exc}")
        failure.retryable = isinstance(exc, _TRANSIENT_EXCEPTIONS)
        return failure

    def put(self, name: str, data: bytes) -> None:
        self.put_parts(name, (data,))

    def put_parts(
        self, name: str, parts: Iterable[bytes | memoryview], sha256: Mapping[int, Sha256State] | None = None
    ) -> None:
        """`StreamingPut.put_parts`: one PutObject whose body is the parts as they are (not
        joined, `PartsBody`). A PUT must know its length and checksum before it starts, so the
        parts are all taken first; if the iterable raises, nothing has been sent. The parts
        are read once for the checksum and once to send (and, retried, again: a sequence);
        signed in chunks, those whose hasher ``sha256`` holds are not read for the checksum."""
        key = self._key(name)
        pieces = parts if isinstance(parts, (list, tuple)) else list(parts)
        check_kind = self.body_check()
        if check_kind is BodyCheck.SHA256_CHUNKED and any(len(p) for p in pieces):
            # (an empty body has nothing to check, and Ceph RGW refuses one signed in chunks)
            self._send_chunked(name, key, plan_chunks(pieces, sha256 or {}))
            return
        check = check_kind.headers(pieces)
        try:
            self._client.put_object(Bucket=self.location.bucket, Key=key, Body=PartsBody(pieces), **check)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(exc, "put", name) from exc

    def _send_chunked(self, name: str, key: str, chunks: list[BodyChunk]) -> None:
        """`_put_chunked`, its failures made ours (`_fail`). A chunk's signature refused
        (SignatureDoesNotMatch, where the probe saw this server take these bodies) is taken
        for a body damaged on the way, as a signed payload's mismatch is: retryable."""
        try:
            self._put_chunked(key, chunks)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            failure = self._fail(exc, "put", name)
            if _code(exc) == "SignatureDoesNotMatch":
                failure.retryable = True
            raise failure from exc

    def _put_chunked(self, key: str, chunks: list[BodyChunk]) -> None:
        """PUT ``chunks`` as ``key``, signed in chunks (`cubby.blockstore.s3chunked`): the
        request signed by botocore's SigV4 with the streaming payload (`StreamingAuth`), each chunk
        by the HMAC chain from that signature, sent on the client's own connections (its
        timeouts, proxies and certificates). Raises botocore's exceptions, as its calls do, and
        `ObjectStoreError` where there is no such session (the probe does not choose this check
        then: only a URL that names it comes here)."""
        session = _http_session(self._client)
        if session is None:
            raise ObjectStoreError(
                f"put {key}: this botocore keeps its connections where a body signed in chunks"
                " cannot be sent on them; use checksum=sha256 in the --blocks URL"
            )
        request, signer = self._streaming_request(self._client, key, [chunk.size for chunk in chunks])
        request.data = PartsBody(encode(chunks, signer))
        response = session.send(request.prepare())
        content = response.content  # read whole, as botocore reads an answer, so the connection is reused
        if response.status_code == 200:
            return
        fields = dict(_ERROR_FIELD.findall(content.decode("utf-8", "replace")))
        raise botocore.exceptions.ClientError(
            {
                "Error": {"Code": fields.get("Code", str(response.status_code)), "Message": fields.get("Message", "")},
                "ResponseMetadata": {"HTTPStatusCode": response.status_code},
            },
            "PutObject",
        )

    def _streaming_request(self, client: Any, key: str, sizes: Sequence[int]) -> tuple[AWSRequest, ChunkSigner]:
        """A PutObject of ``key`` whose body is signed in chunks of ``sizes`` bytes, signed
        for ``client``'s endpoint (botocore's SigV4 with the streaming payload,
        `StreamingAuth`), and the chain that signs each chunk from the request's signature."""
        credentials = self._session.get_credentials()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
        region = self._client.meta.region_name
        # The URL botocore would send this PutObject to (path or virtual-host style, endpoint,
        # region), from a presigned one whose query (its signature) is dropped.
        url = client.generate_presigned_url(
            "put_object", Params={"Bucket": self.location.bucket, "Key": key}, ExpiresIn=900
        ).split("?", 1)[0]
        request = AWSRequest(
            method="PUT",
            url=url,
            headers={
                "Content-Encoding": "aws-chunked",
                "X-Amz-Decoded-Content-Length": str(sum(sizes)),
                "Content-Length": str(encoded_length_of(sizes)),
            },
        )
        StreamingAuth(frozen, "s3", region).add_auth(request)
        amz_date = request.headers["X-Amz-Date"]
        seed = request.headers["Authorization"].rsplit("Signature=", 1)[1]
        scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
        return request, ChunkSigner(signing_key(frozen.secret_key, amz_date[:8], region), amz_date, scope, seed)

    def signed_put(self, name: str, chunks: Sequence[tuple[int, str]]) -> SignedPut | None:
        """With ``uploads=direct`` on a server that checks each chunk's signature (the probe of
        `body_check`), a PUT of ``name`` that anyone may send for a few minutes, whose body is
        signed in ``chunks`` (size, SHA-256 hex each): the request's headers and every chunk's
        signature, then the final empty chunk's. The bytes are not needed to sign it: each
        chunk's SHA-256 is what the signature signs, and the S3 server refuses the PUT (stores
        nothing) if any chunk's bytes do not hash to it. So the server hands a client the
        signature of the chunks it names, and the client sends them to the bucket itself
        (`cubby.blockstore.direct`). None where this store hands out none: not configured to,
        or the S3 server takes a chunk whose signature does not match its bytes (moto), where
        the signature would check nothing. Made without a request, but for the first call's
        probe: a few HMACs per chunk."""
        if not self.location.direct_uploads:
            return None
        with self._check_lock:  # the probe's steps, once (a store that checks CRC32 made none of them)
            checks = self._server_checks_chunks()
            self._step("probe deleted after the chunks' probe", self._probe_deleted)
        if not checks:
            return None
        request, signer = self._streaming_request(self._presigning_client(), self._key(name), [size for size, _ in chunks])
        signatures = [signer.sign(sha256) for _, sha256 in chunks]
        signatures.append(signer.sign(EMPTY_SHA256))
        headers = {k: str(v) for k, v in request.headers.items()}
        return SignedPut(str(request.url), headers, signatures)

    def stored_size(self, name: str) -> int | None:
        """The size of object ``name`` (a HEAD request), or None when there is none."""
        try:
            answer = self._client.head_object(Bucket=self.location.bucket, Key=self._key(name))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            failure = self._fail(exc, "head", name)
            if isinstance(failure, ObjectMissing):
                return None
            raise failure from exc
        return int(answer["ContentLength"])

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0):
            raise BadRequest(f"bad range offset={offset} length={length}", code="invalid_range")
        if length == 0:
            self._head(name, key)  # an empty read of a missing object still says it is missing
            return b""
        args: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        try:
            response = self._client.get_object(**args)
            data: bytes = response["Body"].read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if _code(exc) == "InvalidRange":  # offset at or past the end: a short read
                raise ShortRead(f"short read of {name}: nothing at offset {offset}") from exc
            raise self._fail(exc, "get", name) from exc
        if length is not None and len(data) != length:
            # S3 answers a range that runs past the end with the part that exists (206).
            raise ShortRead(f"short read of {name}: {len(data)} of {length} bytes at {offset}", data)
        return data

    def _head(self, name: str, key: str) -> None:
        try:
            self._client.head_object(Bucket=self.location.bucket, Key=key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(exc, "head", name) from exc

    def signed_read(self, name: str, offset: int, length: int) -> SignedRead | None:
        """With ``downloads=direct``: a presigned GET of bytes ``[offset, offset + length)`` of
        ``name``, valid for `SIGNED_READ_SECONDS`, for a client that has no credentials; None
        otherwise. Signed with SigV4 and the ``Range`` header among the signed headers, so
        that the URL reads those bytes and no others of the object (a pack holds other
        users' chunks too; botocore's default for presigned S3 URLs, SigV2, signs no header).
        Made without a request: it costs a few HMACs. It names ``public_endpoint`` where set,
        since the host is signed too."""
        if not self.location.direct or length <= 0 or offset < 0:
            return None
        span = f"bytes={offset}-{offset + length - 1}"
        url = self._presigning_client().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.location.bucket, "Key": self._key(name), "Range": span},
            ExpiresIn=SIGNED_READ_SECONDS,
        )
        return SignedRead(str(url), {"Range": span})

    def _presigning_client(self) -> Any:
        """The client that signs requests for others (`signed_read`, `signed_put`), made at
        the first: SigV4, for the endpoint clients reach (``public_endpoint``)."""
        with self._check_lock:
            if self._presigner is None:
                location = self.location
                config = Config(
                    signature_version="s3v4", s3={"addressing_style": "path"} if location.endpoint or location.public_endpoint else {}
                )
                self._presigner = self._session.client(
                    "s3", endpoint_url=location.public_endpoint or location.endpoint, region_name=location.region, config=config
                )
            return self._presigner

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.location.bucket, Key=key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if isinstance(exc, botocore.exceptions.ClientError) and _code(exc) in _MISSING_CODES:
                return  # S3 answers 204 for a missing key, but some servers say 404
            raise self._fail(exc, "delete", name) from exc

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        if prefix:
            check_object_name(prefix.rstrip("/") or "x")
        full = self.location.prefix + prefix
        strip = len(self.location.prefix)
        args: dict[str, Any] = {
            "Bucket": self.location.bucket,
            "Prefix": full,
            "MaxKeys": self.list_page_size,
        }
        while True:
            try:
                page = self._client.list_objects_v2(**args)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise self._fail(exc, "list", prefix) from exc
            for item in page.get("Contents", ()):
                yield item["Key"][strip:], int(item["Size"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    def close(self) -> None:
        self._client.close()
        if self._presigner is not None:
            self._presigner.close()


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _code(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def open_s3_object_store(
    url: str, *, backoff: Backoff | None = None, read_ahead: bool = True, **options: Any
) -> ObjectStore:
    """The store for ``s3://…`` (see the module docstring): `S3ObjectStore` with its transient
    faults retried (`RetryingObjectStore`, by default until `DEADLINE_FACTOR` timeouts) and,
    unless ``read_ahead`` is False, small reads served from larger ones
    (`ReadAheadObjectStore`); ``options`` go to `S3ObjectStore`."""
    location = S3Location.parse(url)
    if backoff is None:
        backoff = Backoff(deadline=DEADLINE_FACTOR * location.timeout, timeout=location.timeout)
    store: ObjectStore = RetryingObjectStore(S3ObjectStore(location, **options), backoff)
    return ReadAheadObjectStore(store) if read_ahead else store
