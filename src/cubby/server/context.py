"""What every route handler needs, built once when the server starts and passed in."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cubby.blockstore.base import BlockStore
from cubby.config import Config
from cubby.metadata.base import MetadataStore
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.server.hop import Hop
from cubby.server.metrics import InstrumentedBlockStore, Metrics
from cubby.server.throttle.opener import Throttles, open_throttles

if TYPE_CHECKING:
    from cubby.cache.store import CachedStore
    from cubby.notify.base import Broker

T = TypeVar("T")
REQUEST_THREADS = 40
"""Threads of `ServerContext.requests` at most: as many as anyio's default for ``run_in_threadpool``."""
CommitListener = Callable[[int, int], None]
"""Called with (namespace id, new journal head) after a change is committed."""
AccountListener = Callable[[int], None]
"""Called with a user id after the set of namespaces that user can reach changed (a folder
shared with them, their membership removed, a role changed)."""


@dataclass
class ServerContext:
    config: Config
    store: MetadataStore
    blocks: BlockStore | None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("cubby.server"))
    commit_listeners: list[CommitListener] = field(default_factory=list)
    account_listeners: list[AccountListener] = field(default_factory=list)
    closers: list[Callable[[], object]] = field(default_factory=list)
    broker: Broker | None = None
    """The notification broker (meta publishes on it, notify subscribes); None if neither runs."""
    notify_service: Any = None
    """The notification role's `cubby.notify.service.NotifyService`, when that role runs."""
    metrics: Metrics = field(default_factory=Metrics)
    """This process's Prometheus metrics (`cubby.server.metrics`)."""
    cached: CachedStore | None = None
    """``store`` itself when it is behind the metadata cache (`cubby.cache.store`), else None."""
    throttles: Throttles = field(default_factory=Throttles)
    """Where the password throttles (`cubby.server.throttle`) keep their counts: this process
    alone, or the deployment's shared cache (`build_context`)."""
    requests: Hop = field(default_factory=lambda: Hop(REQUEST_THREADS, name="cubby-request"))
    """The threads that authenticate a caller and run their request's store calls in one hop
    (`in_thread`), started on demand, joined in `close`."""

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` on one of the `requests` threads, awaited on the event loop.

        Why not starlette's ``run_in_threadpool`` (anyio's worker threads): the hop there and
        back cost ~110-130 us of CPU against ~70-95 us through the loop's ``run_in_executor``
        (ad hoc loop of empty hops under uvloop, on the loaded 2-core machine), and less again
        through `Hop` (a queue and one ``call_soon_threadsafe``: see `cubby.server.hop`); a
        single-file commit makes one. Nothing here reads context variables, which anyio would
        have copied to the thread. If the awaiting request is cancelled once ``fn`` started,
        ``fn`` still runs to its end (a write still invalidates the cache before anyone may
        read it)."""
        return await self.requests.run(fn)

    def answer(self, ns_id: int, parts: tuple[object, ...], build: Callable[[MetadataStore], bytes]) -> bytes:
        """An encoded answer about ``ns_id`` as it is now: kept in the metadata cache under
        the namespace's head (`CachedStore.answer`), or ``build(store)`` without a cache."""
        if self.cached is not None:
            return self.cached.answer(ns_id, parts, build)
        return build(self.store)

    def committed(self, ns_id: int, head: int) -> None:
        """Tell listeners (the notification role's publisher) that a namespace moved on."""
        for listener in self.commit_listeners:
            try:
                listener(ns_id, head)
            except Exception:  # a notification failure must never fail an acknowledged commit
                self.log.exception("commit listener failed", extra={"ns_id": ns_id})

    def account_changed(self, user_id: int) -> None:
        """Tell listeners that ``user_id``'s namespaces changed, so that their open
        notification connections re-read what they may see (and drop what they may not)."""
        for listener in self.account_listeners:
            try:
                listener(user_id)
            except Exception:
                self.log.exception("account listener failed", extra={"user_id": user_id})

    def close(self) -> None:
        for fn in reversed(self.closers):
            fn()
        self.requests.close()
        self.store.close()


def build_context(config: Config, roles: tuple[str, ...]) -> ServerContext:
    """Open what the given roles need: every role needs the metadata store; only the blocks
    role opens the block store."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config.metadata_url, shards=config.shard_urls, place_new=config.place_new)
    blocks: BlockStore | None = None
    closers: list[Callable[[], object]] = []
    if "blocks" in roles:
        import os
        from concurrent.futures import ThreadPoolExecutor

        from cubby.blockstore.opener import open_block_store

        # Verifying and compressing uploaded chunks uses every core (both release the GIL).
        pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="cubby-chunks")
        closers.append(pool.shutdown)
        pack_store = open_block_store(config.blocks_location, store.router.chunks, executor=pool)
        closers.append(pack_store.close)
        blocks = pack_store
    metrics = Metrics()
    for db in store.router.databases():
        db.observe = metrics.observe_transaction
    if blocks is not None:
        metrics.watch_findings(pack_store.index.unreadable_count)
        blocks = InstrumentedBlockStore(blocks, metrics)
    if not store.router.single:
        # Calls reaching a namespace while `cubby admin move-namespace` moves it are asked again
        # at its new shard (`cubby.metadata.rerouting`), below the cache: one fenced write each.
        from cubby.metadata.rerouting import Rerouting

        store = cast("SqlMetadataStore", Rerouting(store))
    front = cached(store, config.cache_url, roles, metrics)
    ctx = ServerContext(config=config, store=front, blocks=blocks, closers=closers, metrics=metrics)
    if front is not store:
        ctx.cached = cast("CachedStore", front)
    # Failed-login counts go where the metadata cache goes, so that the processes behind a
    # load balancer share them (`cubby.server.throttle.opener` says what holds for each URL).
    ctx.throttles = open_throttles(config.cache_url, ctx.log)
    closers.append(ctx.throttles.close)
    if "meta" in roles or "notify" in roles:
        from cubby.notify.base import open_broker

        ctx.broker = open_broker(config.broker_url)
        if "meta" in roles:
            from cubby.notify.publisher import Publisher

            publisher = Publisher(ctx.broker)
            ctx.commit_listeners.append(publisher.commit)
            ctx.account_listeners.append(publisher.account)
    return ctx


def cached(store: SqlMetadataStore, url: str, roles: tuple[str, ...], metrics: Metrics) -> MetadataStore:
    """The store behind the metadata cache named by ``url`` (`cubby.cache`), or the plain
    store for ``none``. Both are a `MetadataStore`, the type the server holds.

    The in-process ``memory`` cache sees only its own process's writes, so it is used only by
    a process that serves every role (the embedded server); a process of a split deployment
    with the default ``memory`` runs uncached rather than stale."""
    from cubby.cache.base import open_cache
    from cubby.cache.store import CachedStore

    if url == "memory" and set(roles) != {"meta", "blocks", "notify"}:
        logging.getLogger("cubby.server").info("roles split over processes: no in-process metadata cache")
        return store
    cache = open_cache(url)
    if cache is None:
        return store

    return CachedStore(store, cache, count=metrics.count_cache)
