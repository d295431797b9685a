"""Prometheus metrics: what an operator needs to see a deployment work (``GET /metrics``).

One `Metrics` object per process, built with the server context and passed in; nothing is a
module-level singleton, so tests can build as many servers as they like in one process.

- **requests** by route template (``/api/v1/files/commit``, never the raw path: a path holds
  file names and link tokens, and would make one series per file), method and status, with a
  latency histogram;
- **database transactions** by kind (read, write) with their time (`Database.observe`);
- **block store** requests and bytes by operation (`InstrumentedBlockStore` wraps any store);
- **notify** connections waiting and the time a commit's fan-out took (set by the notify role);
- **cache** hits and misses (for the metadata cache, by cache name).

Under several worker processes (``--workers``) each process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (set by the parent before any worker imports prometheus_client),
and any worker's ``/metrics`` answers for all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from cubby.blockstore.base import BlockStore, Plain, StagedPut
from cubby.blockstore.direct import DirectPlan, HandsOutReads
from cubby.blockstore.directput import DirectPut, HandsOutPuts, StagedDirect, stage_direct

log = logging.getLogger("cubby.server")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The process's metrics, registered in a registry of its own."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cubby_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "cubby_http_request_seconds", "Time to answer an HTTP request", ["route", "method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.transactions = Counter("cubby_db_transactions", "Metadata database transactions", ["kind"], registry=r)
        self.transaction_time = Histogram(
            "cubby_db_transaction_seconds", "Time inside a metadata transaction", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.cache = Counter("cubby_cache_requests", "Metadata cache lookups", ["cache", "result"], registry=r)
        self.block_requests = Counter("cubby_blockstore_requests", "Block store calls", ["op"], registry=r)
        self.block_bytes = Counter("cubby_blockstore_bytes", "Chunk bytes through the block store", ["op"], registry=r)
        self.notify_connections = Gauge(
            "cubby_notify_connections", "Connections waiting for a change", registry=r, multiprocess_mode="livesum",
        )
        self.buffered = Gauge(
            "cubby_buffered_body_bytes", "Request body bytes held in memory, by budget (json, upload)", ["budget"],
            registry=r, multiprocess_mode="livesum",
        )
        self.found_unreadable = Gauge(
            "cubby_chunks_found_unreadable",
            "Chunks a blocks process could not read where the index puts them, not yet mended by an upload",
            registry=r, multiprocess_mode="livemax",
        )
        self.refreshers: list[Callable[[], None]] = []
        """Gauges read at scrape time (the notify hub's size)."""
        self.fanout = Histogram(
            "cubby_notify_fanout_seconds", "Time to wake the subscribers of one change",
            buckets=_LATENCY_BUCKETS, registry=r,
        )

        self._children: dict[tuple[object, ...], Any] = {}
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per set of labels: `labels` checks and
        locks on every call, and the request path updates four series per request."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered HTTP request: counted by route template, method and status, and its
        time in the latency histogram of its route and method. The two series are looked up
        once per (route, method, status), with one key for both."""
        key = (route, method, status)
        pair = self._request_series.get(key)
        if pair is None:
            pair = self._request_series[key] = (
                self.child(self.requests, route, method, str(status)), self.child(self.latency, route, method),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def count_cache(self, cache: str, result: str) -> None:
        self.child(self.cache, cache, result).inc()

    def watch_notify(self, connections: Callable[[], int]) -> None:
        """Report ``connections()`` (the hub's waiting subscriptions) at every scrape."""
        self.refreshers.append(lambda: self.notify_connections.set(connections()))

    def watch_budget(self, name: str, held: Callable[[], int]) -> None:
        """Report ``held()`` (the bytes a `cubby.server.budget.BodyBudget` holds) at every
        scrape, as ``cubby_buffered_body_bytes{budget=name}``: bodies piling up against their
        budget are what precedes its 503s."""
        gauge = self.buffered.labels(name)
        self.refreshers.append(lambda: gauge.set(held()))

    def watch_findings(self, count: Callable[[], int], *, every: float = 30.0) -> None:
        """Report ``count()`` (`ChunkIndex.unreadable_count`, one small query on the chunk
        database) as ``cubby_chunks_found_unreadable``, asked at a scrape at most once every
        ``every`` seconds: a store losing packs shows on the dashboards before a cron's `cubby
        admin check` runs, and scrapes do not add a transaction each to the counts they report.
        Every worker reports the same table, so the workers' largest is shown, not their sum.
        A database that cannot answer leaves the last figure."""
        asked = [-every]

        def refresh() -> None:
            now = time.monotonic()
            if now - asked[0] < every:
                return
            asked[0] = now
            try:
                self.found_unreadable.set(count())
            except Exception:  # the scrape still answers: the other metrics say what is wrong
                log.warning("could not count chunks found unreadable for /metrics", exc_info=True)

        self.refreshers.append(refresh)

    def observe_transaction(self, kind: str, seconds: float) -> None:
        self.child(self.transactions, kind).inc()
        self.child(self.transaction_time, kind).observe(seconds)

    def exposition(self) -> bytes:
        """The text format, for this process or (multiprocess mode) for every worker."""
        for refresh in self.refreshers:
            refresh()
        if self.multiprocess:
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            return generate_latest(combined)
        return generate_latest(self.registry)


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The route template a request is counted under (``/api/v1/files/commit``), never its
    raw path: the route the router chose, else (the request was answered before routing)
    the first route that matches it in full, else ``other``."""
    matched = scope.get("route")  # the router records the route it chose in the scope
    if matched is not None:
        return str(getattr(matched, "path", "other"))
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
    return "other"


def routes(metrics: Metrics) -> list[BaseRoute]:
    async def scrape(request: Request) -> Response:
        # On a worker thread: a refresher may ask the database (`Metrics.watch_findings`).
        return Response(await run_in_threadpool(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"])]


class InstrumentedBlockStore:
    """A `BlockStore` that counts calls and bytes, wrapping any other (behaviour by wrapping)."""

    def __init__(self, inner: BlockStore, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def _count(self, op: str, nbytes: int = 0, calls: int = 1) -> None:
        self.metrics.block_requests.labels(op).inc(calls)
        if nbytes:
            self.metrics.block_bytes.labels(op).inc(nbytes)

    def put(self, name: str, data: bytes) -> bool:
        self._count("put", len(data))
        return self.inner.put(name, data)

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        batch = list(items)
        self._count("put", sum(len(d) for _, d in batch))
        return self.inner.put_many(batch)

    def stage_many(
        self, items: Sequence[tuple[str, bytes]], within: object
    ) -> tuple[list[bool], Callable[[], None]] | None:
        """The inner store's `StagedPut.stage_many`, or None when it has none."""
        if not isinstance(self.inner, StagedPut):
            return None
        staged = self.inner.stage_many(items, within)
        if staged is not None:
            self._count("put", sum(len(d) for _, d in items))
        return staged

    def direct_put(self, chunks: Sequence[tuple[str, int]]) -> DirectPut | None:
        """The inner store's `HandsOutPuts.direct_put` (None when it has none)."""
        return self.inner.direct_put(chunks) if isinstance(self.inner, HandsOutPuts) else None

    def stage_direct_put(self, pack: str, chunks: Sequence[tuple[str, int]], within: object) -> StagedDirect:
        """The inner store's `HandsOutPuts.stage_direct_put`, counted as ``put``: the bytes a
        client sent to the bucket itself."""
        staged = stage_direct(self.inner, pack, chunks, within)
        self._count("put", sum(size for (_, size), new in zip(chunks, staged.new) if new))
        return staged

    def direct_reads(self, names: Sequence[str]) -> DirectPlan | None:
        """The inner store's `HandsOutReads.direct_reads` (None when it has none), counted as
        ``direct``: the bytes a client is sent to read from the bucket itself."""
        if not isinstance(self.inner, HandsOutReads):
            return None
        plan = self.inner.direct_reads(names)
        if plan is not None and plan.reads:
            self._count("direct", sum(stored for r in plan.reads for _, stored, _ in r.chunks), len(plan.reads))
        return plan

    def get(self, name: str) -> bytes:
        data = self.inner.get(name)
        self._count("get", len(data))
        return data

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        found = self.inner.get_many(names)
        self._count("get", sum(len(d) for d in found.values()))
        return found

    def read_many(self, names: Sequence[str], *, verify: bool = True) -> Iterator[tuple[str, Plain]]:
        for name, data in self.inner.read_many(names, verify=verify):
            self._count("get", len(data))
            yield name, data

    def has(self, name: str) -> bool:
        self._count("has")
        return self.inner.has(name)

    def present(self, names: Iterable[str]) -> set[str]:
        self._count("present")
        return self.inner.present(names)

    def delete(self, name: str) -> None:
        self._count("delete")
        self.inner.delete(name)

    def iterate(self) -> Iterator[str]:
        self._count("iterate")
        return self.inner.iterate()

    def __getattr__(self, name: str) -> object:
        # Anything beyond the Protocol (a backend's own extras) is the inner store's.
        return getattr(self.inner, name)
