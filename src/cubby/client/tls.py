"""The client's TLS context: verifying, with its trust store loaded at the first TLS connection.

httpx loads a trust store (certifi's bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``) whenever a
client is made, TLS or not: 50-100 ms of every `cubby` command, which most often talks plain
HTTP to a server on the LAN or behind a TLS-terminating proxy (`cubby ls /`, median of 21
alternating runs: 0.386 s before, 0.270 s after). `deferred_trust` gives httpx a context that does the same checks, with
the same store, and loads it only when a connection starts TLS.

Nothing is trusted before the store is loaded: the context verifies certificates and host
names from the start (``PROTOCOL_TLS_CLIENT``), and every TLS connection goes through
`DeferredTrust.wrap_socket` or `DeferredTrust.wrap_bio`, which load it first.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from typing import Any


class DeferredTrust(ssl.SSLContext):
    """An `ssl.SSLContext` for clients whose CA certificates are loaded by the first
    `wrap_socket` or `wrap_bio`, as `httpx.create_ssl_context` would have loaded them: from
    ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's bundle. Safe to share between
    threads (the load happens once, under a lock)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DeferredTrust:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        # ``ssl.create_default_context``'s settings, but its certificates: PROTOCOL_TLS_CLIENT
        # already requires a valid certificate for the host name.
        if sys.version_info >= (3, 13):  # its stricter X.509 checks (Python 3.13 and later)
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            self.keylog_filename = keylog
        self._lock = threading.Lock()
        self._loaded = False

    def load_trust(self) -> None:
        """Load the CA certificates now (once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    @property
    def trust_loaded(self) -> bool:
        return self._loaded

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        self.load_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        self.load_trust()
        return super().wrap_bio(*args, **kwargs)


def deferred_trust() -> DeferredTrust:
    """A new client context for one httpx client (``verify=deferred_trust()``)."""
    return DeferredTrust()


__all__ = ["DeferredTrust", "deferred_trust"]
