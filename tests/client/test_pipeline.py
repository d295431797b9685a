"""`cubby.client.pipeline`: results in order, and deferred work waiting for urgent work."""

from __future__ import annotations

import threading

import pytest

from cubby.client.pipeline import Pipeline, Precedence


def test_results_come_back_in_submission_order():
    gate = threading.Event()
    with Pipeline(2) as pipe:
        assert pipe.submit(lambda: gate.wait(5) and "slow") == []
        assert pipe.submit(lambda: "quick") == []
        gate.set()
        # full (two running): the oldest's result is waited for, though "quick" ended first
        assert pipe.submit(lambda: "third") == ["slow"]
        assert pipe.drain() == ["quick", "third"]


def test_an_error_is_raised_to_the_caller():
    with Pipeline(2) as pipe:
        pipe.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            pipe.drain()


def test_deferred_work_waits_while_urgent_work_is_under_way():
    first = Precedence()
    first.defer()  # nothing urgent: returns at once
    order: list[str] = []
    inside = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]

    def urgent(k: int) -> None:
        with first.urgent():
            inside[k].set()
            release[k].wait(5)
            order.append(f"urgent {k}")

    workers = [threading.Thread(target=urgent, args=(k,)) for k in range(2)]
    for k, t in enumerate(workers):
        t.start()
        inside[k].wait(5)

    def deferred() -> None:
        first.defer()
        order.append("deferred")

    waiting = threading.Thread(target=deferred)
    waiting.start()
    release[0].set()
    workers[0].join(5)
    # One urgent section is still open: the deferred work has not gone on (were it not
    # waiting, it would have ended long before this join gives up).
    waiting.join(0.3)
    assert waiting.is_alive() and order == ["urgent 0"]
    release[1].set()
    for t in (workers[1], waiting):
        t.join(5)
    assert order == ["urgent 0", "urgent 1", "deferred"]


def test_an_urgent_section_that_fails_still_lets_deferred_work_go_on():
    first = Precedence()
    with pytest.raises(RuntimeError), first.urgent():
        raise RuntimeError("boom")
    done = threading.Event()
    t = threading.Thread(target=lambda: (first.defer(), done.set()))
    t.start()
    t.join(5)
    assert done.is_set()
