"""Where a transfer's time goes, seen from the client: wall time per kind of API call (the
server's work plus the loopback), the hashing pass over the local files, and the rest
(client-side reading, framing and JSON). Measurement only; nothing here changes behaviour."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from cubby.client import upload
from cubby.client.api import ApiClient


class CallTimes(ApiClient):
    """An ApiClient that adds up the wall time of each kind of request of the API (`_json`,
    over DirectHttp or httpx; and what else goes through httpx, `_request`)."""

    def __enter__(self) -> Self:
        return self

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.times: dict[str, list[float]] = {}
        self._timing = threading.local()

    @contextmanager
    def _timed(self, method: str, url: str) -> Iterator[None]:
        if getattr(self._timing, "on", False):  # inside a timed call already (httpx after DirectHttp)
            yield
            return
        self._timing.on = True
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._timing.on = False
            spent = self.times.setdefault(f"{method} {url.split('?')[0]}", [0, 0.0])
            spent[0] += 1
            spent[1] += time.perf_counter() - t0

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        with self._timed(method, path):
            return super()._json(method, path, **kw)

    def _request(self, method: str, path: str, *, content_factory: Any = None, **kw: Any) -> Any:
        with self._timed(method, path):
            return super()._request(method, path, content_factory=content_factory, **kw)


@contextmanager
def timed_scans() -> Iterator[list[float]]:
    """While active, `upload.scan_file` records when each call starts and ends (the list
    yielded gets both), so the span of the hashing pass can be read off afterwards."""
    spans: list[float] = []
    real = upload.scan_file

    def timed(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spans.extend((t, time.perf_counter()))

    upload.scan_file = timed  # upload_file and upload_tree look it up at call time
    try:
        yield spans
    finally:
        upload.scan_file = real


def split(seconds: float, api: CallTimes, scan_spans: list[float]) -> tuple[dict[str, Any], str]:
    """The breakdown as JSON-ready fields and as one readable line."""
    scan = max(scan_spans) - min(scan_spans) if scan_spans else 0.0
    calls = {
        k: {"calls": int(v[0]), "seconds": round(v[1], 3)}
        for k, v in sorted(api.times.items(), key=lambda kv: -kv[1][1])
    }
    rest = seconds - scan - sum(v[1] for v in api.times.values())
    parts = [(f"{k} x{v['calls']}", v["seconds"]) for k, v in calls.items()]
    parts += [
        ("client: hashing pass (scan_file)", scan),
        ("client: the rest (reading chunks again, proofs, framing, JSON)", rest),
    ]
    line = ", ".join(
        f"{name} {t:.2f}s ({t / seconds:.0%})" for name, t in sorted(parts, key=lambda p: -p[1]) if t >= 0.005
    )
    return {
        "api_calls": calls,
        "client_scan_seconds": round(scan, 3),
        "client_other_seconds": round(rest, 3),
    }, line
