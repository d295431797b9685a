"""The client's TLS context (`cubby.client.tls`): no trust store is loaded until a connection
starts TLS, and then the one httpx would load; nothing is trusted before or without it.

A real TLS server on loopback (certificates from trustme's throwaway CA) answers the client.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from cubby.client.api import ApiClient
from cubby.client.tls import DeferredTrust, deferred_trust


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(ca: trustme.CA) -> Iterator[str]:
    """An HTTPS server on loopback whose certificate, for the name localhost alone, trustme's CA
    signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _loaded(ctx: ssl.SSLContext) -> int:
    return ctx.cert_store_stats()["x509_ca"]


def test_no_trust_store_is_loaded_before_a_tls_connection() -> None:
    ctx = deferred_trust()
    assert isinstance(ctx, ssl.SSLContext)
    assert not ctx.trust_loaded and _loaded(ctx) == 0
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname  # checks on from the start
    ctx.load_trust()
    assert ctx.trust_loaded and _loaded(ctx) > 0  # certifi's bundle, as httpx would load


def test_a_server_signed_by_the_named_ca_is_trusted(
    tls_server: str, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    ctx = DeferredTrust()
    with httpx.Client(verify=ctx) as client:
        assert not ctx.trust_loaded  # making the client loaded nothing
        resp = client.get(f"{tls_server}/hello")
    assert resp.status_code == 200 and resp.json() == {"path": "/hello"}
    assert ctx.trust_loaded and _loaded(ctx) == 1  # exactly the CA that SSL_CERT_FILE names


@pytest.mark.parametrize(
    ("trust_ca", "host", "why"),
    [
        (False, "localhost", "CERTIFICATE_VERIFY_FAILED"),  # no trusted CA signed it (certifi's store)
        (True, "127.0.0.1", "mismatch"),  # the same server, by a name its certificate does not hold
    ],
)
def test_a_server_the_store_does_not_vouch_for_is_refused(
    tls_server: str, ca_file: str, monkeypatch: pytest.MonkeyPatch, trust_ca: bool, host: str, why: str
) -> None:
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    if trust_ca:
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with httpx.Client(verify=deferred_trust()) as client, pytest.raises(httpx.ConnectError, match=why):
        client.get(f"{tls_server.replace('localhost', host)}/hello")


def test_the_api_client_speaks_tls_with_the_deferred_context(
    tls_server: str, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    with ApiClient(tls_server, "token") as api:
        resp = api.http.get("/api/v1/whatever")
    assert resp.status_code == 200 and resp.json() == {"path": "/api/v1/whatever"}
