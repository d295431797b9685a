"""A shared throttle whose cache server is down or cut off: each attempt is counted in the
process instead (`cubby.server.throttle.fallback`), nothing raises, and the outage is logged
as one structured line that holds no key. Real servers of the test's own, killed and cut off
for real (`tests.helpers.cache_servers`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.server.throttle.base import Policy
from cubby.server.throttle.fallback import FallbackThrottle
from cubby.server.throttle.memory import FailureThrottle
from cubby.server.throttle.opener import Throttles, open_throttles
from tests.helpers.cache_servers import CacheServer, Partition, start_cache_server

SECRET = "u:victim@example.org"
LOG = "test.throttle"


@pytest.fixture(params=["redis", "memcached"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheServer]:
    s = start_cache_server(request.param, tmp_path / request.param)
    try:
        yield s
    finally:
        s.stop()


def throttles(url: str, *, timeout: float = 0.5) -> Throttles:
    t = open_throttles(url, logging.getLogger(LOG), timeout=timeout)
    assert t.health is not None
    t.health.breaker.pause = 0.0  # try the server on every call: no waiting in the test
    return t


def no_secret_in(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert "victim" not in repr(vars(record)) and "victim" not in record.getMessage()


def test_the_cache_urls_choose_where_the_counts_live(server: CacheServer) -> None:
    for url in ("memory", "none"):
        assert isinstance(open_throttles(url, logging.getLogger(LOG)).make("login", Policy(free=5)), FailureThrottle)
    shared = open_throttles(server.url, logging.getLogger(LOG))
    try:
        assert shared.kind == server.kind
        assert isinstance(shared.make("login", Policy(free=5)), FallbackThrottle)
    finally:
        shared.close()


def test_a_dead_cache_falls_back_to_the_process_and_is_logged(server: CacheServer, caplog: pytest.LogCaptureFixture) -> None:
    ts = throttles(server.url)
    other = throttles(server.url)  # another process, to see what reached the server
    try:
        t = ts.make("login", Policy(free=3, first_delay=10.0))
        seen = other.make("login", Policy(free=3, first_delay=10.0))
        t.failed(SECRET)  # reaches the server, and this process's own count
        assert seen.admit(SECRET) == 0  # another process's failure: two in the deployment
        server.stop()
        with caplog.at_level(logging.INFO, logger=LOG):
            assert t.retry_after(SECRET) == 0
            # The process remembers its own failure from before the outage: one more, not three.
            assert t.admit(SECRET) == 0
            t.failed(SECRET)
            assert t.retry_after(SECRET) == 10
            t.succeeded(SECRET)
            assert t.retry_after(SECRET) == 0
        down = [r for r in caplog.records if getattr(r, "event", "") == "throttle_shared_down"]
        assert len(down) == 1 and down[0].levelno == logging.WARNING  # once, not per call
        assert vars(down[0])["cache"] == server.kind and vars(down[0])["throttle"] == "login"
        no_secret_in(caplog)
        caplog.clear()
        server.start()  # back, and empty
        with caplog.at_level(logging.INFO, logger=LOG):
            # A connection the client kept from before the restart fails once, and is dropped.
            t.retry_after(SECRET)
            seen.retry_after(SECRET)
            t.failed(SECRET)
            assert seen.retry_after(SECRET) == 0
            seen.failed(SECRET)
            seen.failed(SECRET)
            assert t.retry_after(SECRET) == 10  # counted together again
        events = [getattr(r, "event", "") for r in caplog.records]
        assert events[-1] == "throttle_shared_up" and events.count("throttle_shared_up") >= 1
    finally:
        ts.close()
        other.close()


def test_a_cache_that_stops_answering_costs_a_timeout_then_counts_in_the_process(
    server: CacheServer, caplog: pytest.LogCaptureFixture,
) -> None:
    partition = Partition(server)
    ts = throttles(partition.url, timeout=0.2)
    try:
        t = ts.make("link", Policy(free=2, first_delay=10.0))
        assert t.admit(SECRET) == 0
        partition.cut()
        with caplog.at_level(logging.INFO, logger=LOG):
            assert t.admit(SECRET) == 0  # the second free attempt, counted here
            assert t.admit(SECRET) == 10  # refused by this process's own count
            t.forgive(SECRET)
        assert any(getattr(r, "event", "") == "throttle_shared_down" for r in caplog.records)
        no_secret_in(caplog)
    finally:
        ts.close()
        partition.close()
