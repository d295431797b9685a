"""The hub on its own: who wakes, who does not, and the shared timer."""

from __future__ import annotations

import asyncio

from cubby.notify.hub import Hub, Subscription, Wake


def collect() -> tuple[list[tuple[Subscription, Wake]], object]:
    got: list[tuple[Subscription, Wake]] = []

    def deliver(sub: Subscription, wake: Wake) -> None:
        got.append((sub, wake))

    return got, deliver


def test_a_commit_wakes_only_the_subscribers_of_its_namespace_that_are_behind() -> None:
    hub = Hub()
    got, deliver = collect()
    behind = Subscription(1, {10: 5}, deliver, oneshot=True)  # type: ignore[arg-type]
    current = Subscription(2, {10: 7}, deliver, oneshot=True)  # type: ignore[arg-type]
    other = Subscription(3, {11: 0}, deliver, oneshot=True)  # type: ignore[arg-type]
    for s in (behind, current, other):
        hub.add(s)
    assert hub.advance(10, 7) == 1
    assert got == [(behind, Wake(heads={10: 7}))]
    assert not behind.active and current.active and other.active
    assert hub.subscribers(10) == 1 and hub.subscribers(11) == 1
    assert hub.advance(10, 6) == 0  # stale message: nobody
    assert hub.advance(12, 100) == 0  # nobody waits there


def test_a_lasting_subscription_advances_its_cursor_and_is_not_woken_twice() -> None:
    hub = Hub()
    got, deliver = collect()
    ws = Subscription(1, {10: 5, 11: 1}, deliver, oneshot=False)  # type: ignore[arg-type]
    hub.add(ws)
    assert hub.advance(10, 6) == 1
    assert hub.advance(10, 6) == 0
    assert hub.advance(11, 2) == 1
    assert ws.cursor == {10: 6, 11: 2} and ws.active
    assert [w.heads for _, w in got] == [{10: 6}, {11: 2}]
    hub.remove(ws)
    hub.remove(ws)  # idempotent
    assert hub.count == 0 and hub.namespaces() == []


def test_account_change_reaches_that_users_subscriptions_only() -> None:
    hub = Hub()
    got, deliver = collect()
    a1 = Subscription(1, {10: 0}, deliver, oneshot=True)  # type: ignore[arg-type]
    a2 = Subscription(1, {10: 0}, deliver, oneshot=False)  # type: ignore[arg-type]
    b = Subscription(2, {20: 0}, deliver, oneshot=True)  # type: ignore[arg-type]
    for s in (a1, a2, b):
        hub.add(s)
    assert hub.account_changed(1) == 2
    assert {id(s) for s, w in got if w.account_changed} == {id(a1), id(a2)}
    assert not a1.active and a2.active and b.active


def test_timeouts_share_one_timer_and_skip_subscriptions_that_ended() -> None:
    async def run() -> None:
        hub = Hub()
        done = asyncio.Event()
        got: list[Wake] = []

        def deliver(sub: Subscription, wake: Wake) -> None:
            got.append(wake)
            done.set()

        early = Subscription(1, {10: 0}, deliver, oneshot=True)
        gone = Subscription(2, {10: 0}, deliver, oneshot=True)
        hub.add(gone, timeout=0.0)
        hub.add(early, timeout=0.01)
        hub.remove(gone)
        hub.add(Subscription(3, {10: 0}, deliver, oneshot=True), timeout=300)
        timer = hub._timer
        await done.wait()
        assert got == [Wake(timed_out=True)]
        assert not early.active and hub.count == 1
        assert hub._timer is not None and hub._timer is not timer  # re-armed once, for the later deadline
        hub.close()

    asyncio.run(run())


def test_woken_long_polls_do_not_pile_up_in_the_timer_heap() -> None:
    """Every commit to a busy namespace wakes (and ends) all its long-polls before their
    deadline; their heap entries must be compacted away, not kept for the whole timeout."""

    async def run() -> None:
        hub = Hub()
        _got, deliver = collect()
        for rnd in range(10):
            for _ in range(1000):
                hub.add(Subscription(1, {10: rnd}, deliver, oneshot=True), timeout=300)  # type: ignore[arg-type]
            assert hub.advance(10, rnd + 1) == 1000
        assert hub.count == 0
        assert len(hub._heap) <= 2 * 1024 + 1000
        late = Subscription(2, {11: 0}, deliver, oneshot=True)  # type: ignore[arg-type]
        hub.add(late, timeout=0.0)
        hub.remove(late)
        hub.add(late)  # registered again without a deadline: its old entry must not fire
        keep = Subscription(3, {11: 0}, deliver, oneshot=True)  # type: ignore[arg-type]
        done = asyncio.Event()
        hub.add(keep, timeout=0.01)
        keep.deliver = lambda s, w: done.set()  # type: ignore[assignment]
        await done.wait()
        assert late.active and not keep.active
        hub.close()

    asyncio.run(run())


def test_narrow_drops_namespaces_an_account_lost_and_removes_an_empty_subscription() -> None:
    hub = Hub()
    _got, deliver = collect()
    sub = Subscription(1, {10: 0, 11: 0}, deliver, oneshot=False)  # type: ignore[arg-type]
    hub.add(sub)
    assert hub.narrow(sub, lambda ns: ns != 11) == [11]
    assert sub.active and sub.cursor == {10: 0} and hub.subscribers(11) == 0
    assert hub.advance(11, 5) == 0 and hub.advance(10, 5) == 1
    assert hub.narrow(sub, lambda ns: False) == [10]
    assert not sub.active and hub.count == 0
    assert hub.narrow(sub, lambda ns: False) == []  # no longer registered: nothing to drop
