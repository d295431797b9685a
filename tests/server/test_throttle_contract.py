"""The `Throttle` contract (`cubby.server.throttle.base`) on every implementation: in this
process, in a Redis and in a memcached of the test's own (real servers, started by
`tests.helpers.cache_servers`; under CI=true one that cannot start fails the test). Time is a
clock the test moves: the shared implementations take the caller's clock too, so nothing here
sleeps."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from cubby.server.throttle.base import Policy, Throttle, admit_all, forgive_all, shared_key
from cubby.server.throttle.memory import FailureThrottle
from tests.helpers.cache_servers import CacheServer, start_cache_server

KINDS = ["memory", "redis", "memcached"]
_names = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0  # a wall clock's kind of number, as the shared ones get

    def __call__(self) -> float:
        return self.now


Maker = Callable[[Policy, Clock], Throttle]
"""A new throttle object on the fixture's store: for the shared kinds, one with a client of its
own, as another process would have."""


def client_for(server: CacheServer) -> Any:
    if server.kind == "redis":
        from cubby.cache.redis import connect

        return connect(server.url, 2.0)
    from cubby.cache.memcached import connect as connect_memcached

    return connect_memcached(server.url, 2.0)


def shared_maker(server: CacheServer, clients: list[Any]) -> Callable[[str], Maker]:
    """Throttles named ``name`` on ``server``, each through a client of its own."""

    def named(name: str) -> Maker:
        def make(policy: Policy, clock: Clock) -> Throttle:
            if server.kind == "redis":
                from cubby.server.throttle.redis import RedisThrottle

                prefix, client = client_for(server)
                clients.append(client)
                return RedisThrottle(client, name, policy, prefix=prefix, clock=clock)
            from cubby.server.throttle.memcached import MemcachedThrottle

            client = client_for(server)
            clients.append(client)
            return MemcachedThrottle(client, name, policy, clock=clock)

        return make

    return named


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CacheServer]]:
    started: dict[str, CacheServer] = {}
    try:
        for kind in ("redis", "memcached"):
            started[kind] = start_cache_server(kind, tmp_path_factory.mktemp(kind))
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest) -> Iterator[Maker]:
    """Throttles of one kind under a name of this test's own (so tests share no keys)."""
    name = f"t{next(_names)}"
    if request.param == "memory":
        yield lambda policy, clock: FailureThrottle(policy, clock=clock)
        return
    clients: list[Any] = []
    yield shared_maker(request.getfixturevalue("servers")[request.param], clients)(name)
    for client in clients:
        client.close()


@pytest.fixture(params=["redis", "memcached"])
def make_shared(request: pytest.FixtureRequest, servers: dict[str, CacheServer]) -> Iterator[Maker]:
    clients: list[Any] = []
    yield shared_maker(servers[request.param], clients)(f"t{next(_names)}")
    for client in clients:
        client.close()


def test_locks_after_free_failures_for_the_first_delay(make: Maker) -> None:
    clock = Clock()
    t = make(Policy(free=3, first_delay=10.0), clock)
    assert t.retry_after("k") == 0
    t.failed("k")
    t.failed("k")
    assert t.retry_after("k") == 0
    t.failed("k")
    assert t.retry_after("k") == 10
    clock.now += 9.5
    assert t.retry_after("k") == 1  # whole seconds, rounded up
    clock.now += 0.5
    assert t.retry_after("k") == 0
    assert t.retry_after("other") == 0  # keys are separate


def test_the_delay_doubles_up_to_the_maximum(make: Maker) -> None:
    clock = Clock()
    t = make(Policy(free=2, first_delay=10.0, max_delay=50.0), clock)
    waits = []
    for _ in range(6):
        t.failed("k")
        waits.append(t.retry_after("k"))
        clock.now += waits[-1]
    assert waits == [0, 10, 20, 40, 50, 50]


def test_a_success_clears_the_key(make: Maker) -> None:
    clock = Clock()
    t = make(Policy(free=2, first_delay=10.0), clock)
    t.failed("k")
    t.failed("k")
    assert t.retry_after("k") == 10
    t.succeeded("k")
    assert t.retry_after("k") == 0
    t.failed("k")  # counting starts again: one failure is free
    assert t.retry_after("k") == 0
    t.succeeded("never failed")  # harmless


def test_a_right_guess_is_forgiven_and_clears_nothing_else(make: Maker) -> None:
    clock = Clock()
    t = make(Policy(free=3, first_delay=10.0), clock)
    t.failed("a")
    t.failed("a")
    t.failed("a")  # recorded in advance: the third locks the key...
    assert t.retry_after("a") == 10
    t.forgive("a")  # ...until it proves right: then it is as if it never happened
    assert t.retry_after("a") == 0
    t.failed("a")  # the two earlier failures still count
    assert t.retry_after("a") == 10
    clock.now += 10
    assert t.retry_after("a") == 0
    t.failed("a")
    assert t.retry_after("a") == 20  # doubled
    t.forgive("b")  # an unknown key: nothing happens
    assert t.retry_after("b") == 0
    t.failed("c")
    t.forgive("c")
    t.failed("c")
    t.failed("c")
    assert t.retry_after("c") == 0  # the forgiven one no longer counts: two of three


def test_failures_count_within_a_window_only(make: Maker) -> None:
    clock = Clock()
    t = make(Policy(free=3, first_delay=10.0, window=60.0), clock)
    t.failed("k")
    t.failed("k")
    clock.now += 60.5  # the window of the first failure is over
    t.failed("k")
    t.failed("k")
    assert t.retry_after("k") == 0  # two in this window
    t.failed("k")
    assert t.retry_after("k") == 10


def test_admit_refuses_a_locked_key_and_records_nothing(make: Maker) -> None:
    clock = Clock()
    t = make(Policy(free=2, first_delay=10.0), clock)
    assert t.admit("k") == 0  # let in, and counted in advance
    assert t.admit("k") == 0  # the second free attempt: let in, and it locks the key
    assert t.retry_after("k") == 10
    clock.now += 4
    for _ in range(5):
        assert t.admit("k") == 6  # refused, and not counted: the lock does not grow
    clock.now += 6
    assert t.admit("k") == 0  # the third failure of the window
    assert t.retry_after("k") == 20
    t.forgive("k")  # it proved right
    assert t.retry_after("k") == 0


def test_admit_all_records_nothing_when_a_later_key_is_locked(make: Maker) -> None:
    """`admit_all` (a login's account and address, a link's address and link): a key locked
    after one that let the attempt in gives that one its failure back."""
    clock = Clock()
    first, second = make(Policy(free=2, first_delay=10.0), clock), make(Policy(free=1, first_delay=10.0), clock)
    assert admit_all(((first, "a"), (second, "b"))) == 0  # both let in; "b" is now locked
    assert second.retry_after("b") == 10
    for _ in range(3):
        assert admit_all(((first, "a"), (second, "b"))) == 10  # refused by "b": "a" gets its failure back
    assert first.admit("a") == 0 and first.retry_after("a") == 10  # "a" had one failure, not four
    forgive_all(((first, "a"), (second, "b")))
    assert first.retry_after("a") == 0 and second.retry_after("b") == 0


def test_concurrent_failures_from_two_clients_are_all_counted(make: Maker) -> None:
    """Three threads on two throttle objects (two clients, as two processes would have) record
    one failure fewer than the free ones: no lock; one more locks. A failure lost in a race would
    leave the key open, one counted twice would lock it early."""
    clock = Clock()
    policy = Policy(free=121, first_delay=10.0)
    first = make(policy, clock)
    second = make(policy, clock) if not isinstance(first, FailureThrottle) else first
    go = threading.Barrier(3)

    def fail(t: Throttle) -> None:
        go.wait()
        for _ in range(40):
            t.failed("k")

    threads = [threading.Thread(target=fail, args=(t,)) for t in (first, second, first)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert first.retry_after("k") == 0 and second.retry_after("k") == 0
    second.failed("k")
    assert first.retry_after("k") == 10 and second.retry_after("k") == 10


def test_two_throttles_on_one_server_share_their_free_attempts(make_shared: Maker) -> None:
    clock = Clock()
    policy = Policy(free=4, first_delay=10.0)
    here, there = make_shared(policy, clock), make_shared(policy, clock)
    here.failed("u:pat")
    there.failed("u:pat")
    here.failed("u:pat")
    assert here.retry_after("u:pat") == there.retry_after("u:pat") == 0
    there.failed("u:pat")  # the fourth in total: locked for both
    assert here.retry_after("u:pat") == there.retry_after("u:pat") == 10
    there.succeeded("u:pat")  # a success in one process clears it for all
    assert here.retry_after("u:pat") == 0
    assert here.admit("u:pat") == 0 and there.admit("u:pat") == 0 and here.admit("u:pat") == 0
    assert there.admit("u:pat") == 0  # the fourth attempt gets in (and locks)...
    assert here.admit("u:pat") == 10  # ...and the fifth, elsewhere, does not


def test_throttles_of_other_names_do_not_meet(servers: dict[str, CacheServer]) -> None:
    for server in servers.values():
        clients: list[Any] = []
        named = shared_maker(server, clients)
        clock = Clock()
        suffix = next(_names)
        login, link = named(f"login{suffix}")(Policy(free=1), clock), named(f"link{suffix}")(Policy(free=1), clock)
        login.failed("same key")
        assert login.retry_after("same key") == 10 and link.retry_after("same key") == 0
        for client in clients:
            client.close()


def stored_keys(server: CacheServer) -> list[str]:
    """Every key the server holds."""
    if server.kind == "redis":
        _, client = client_for(server)
        try:
            return [k.decode() for k in client.scan_iter()]
        finally:
            client.close()
    client = client_for(server)
    try:
        dump = client.raw_command(b"lru_crawler metadump all", b"END\r\n").decode()
    finally:
        client.close()
    # metadump shows each key URL-encoded
    return [unquote(part.removeprefix("key=")) for line in dump.splitlines() for part in line.split() if part.startswith("key=")]


def test_keys_are_namespaced_and_hold_no_raw_key(servers: dict[str, CacheServer]) -> None:
    secret = "link:Sup3rSecretLinkToken with spaces"
    for server in servers.values():
        clients: list[Any] = []
        name = f"link{next(_names)}"
        t = shared_maker(server, clients)(name)(Policy(free=5), Clock())
        t.failed(secret)
        keys = stored_keys(server)
        mine = [k for k in keys if f":{name}:" in k]
        assert mine == [shared_key(name, secret)], keys
        assert all(k.startswith("thr:") for k in keys)
        assert not any("Sup3r" in k or " " in k for k in keys)
        for client in clients:
            client.close()


def test_the_redis_prefix_of_the_cache_url_is_kept(servers: dict[str, CacheServer]) -> None:
    from cubby.cache.redis import connect
    from cubby.server.throttle.redis import RedisThrottle

    server = servers["redis"]
    prefix, client = connect(server.url + "&prefix=run7", 2.0)
    try:
        RedisThrottle(client, "login", Policy(free=5), prefix=prefix).failed("k")
        assert client.exists("run7:" + shared_key("login", "k"))
    finally:
        client.close()


def test_records_expire_with_their_window_and_lock(servers: dict[str, CacheServer], tmp_path: Path) -> None:
    """The store forgets a key once its window and its lock are over (it keeps nothing for good)."""
    from cubby.cache.redis import connect
    from cubby.server.throttle.redis import RedisThrottle

    _, client = connect(servers["redis"].url, 2.0)
    try:
        t = RedisThrottle(client, f"exp{next(_names)}", Policy(free=2, first_delay=30.0, window=60.0))
        t.failed("k")
        assert 0 < client.pttl(t.key("k")) <= 60_000
        t.failed("k")  # locked for 30 s: the window still ends later
        assert 30_000 < client.pttl(t.key("k")) <= 60_000
        t.failed("k")  # locked for 60 s from now: past the window's end
        assert client.pttl(t.key("k")) > 59_000
    finally:
        client.close()
