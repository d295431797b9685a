"""A load balancer's own error page (502/503/504 in HTML, not a cubby error) means the server
behind it is away for now: the client raises `Unavailable` (retry later), as for a refused
connection, so a sync pass backs off instead of failing."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cubby.client.api import ApiClient
from cubby.errors import Unavailable


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_error_page_is_unavailable(status: int) -> None:
    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = b"<html><body><h1>Bad Gateway</h1></body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with ApiClient(f"http://127.0.0.1:{server.server_address[1]}", "token") as api, pytest.raises(Unavailable):
            api.account()
    finally:
        server.shutdown()
        server.server_close()
