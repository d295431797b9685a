"""`Hop`: the worker threads a request's blocking work runs on (`ServerContext.in_thread`)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cubby.server.hop import Hop


def test_runs_on_a_worker_thread_and_returns_the_result() -> None:
    hop = Hop(4, name="t-hop")

    async def main() -> tuple[int, str]:
        return await hop.run(lambda: (6 * 7, threading.current_thread().name))

    try:
        value, thread = asyncio.run(main())
    finally:
        hop.close()
    assert value == 42
    assert thread.startswith("t-hop-")
    assert thread != threading.current_thread().name


def test_the_exception_reaches_the_awaiting_coroutine() -> None:
    hop = Hop(2)

    class Boom(Exception):
        pass

    def fail() -> None:
        raise Boom("no")

    async def main() -> None:
        with pytest.raises(Boom, match="no"):
            await hop.run(fail)
        assert await hop.run(lambda: "still serving") == "still serving"

    try:
        asyncio.run(main())
    finally:
        hop.close()


def test_stop_iteration_becomes_a_runtime_error_instead_of_a_hang() -> None:
    hop = Hop(1)

    def stop() -> None:
        raise StopIteration

    async def main() -> None:
        with pytest.raises(RuntimeError, match="StopIteration"):
            await hop.run(stop)

    try:
        asyncio.run(main())
    finally:
        hop.close()


def test_threads_start_on_demand_and_are_reused() -> None:
    hop = Hop(40)
    assert hop.threads == 0

    async def main() -> None:
        for i in range(50):
            assert await hop.run(lambda i=i: i) == i  # type: ignore[misc]

    try:
        asyncio.run(main())
        assert hop.threads == 1  # one job at a time: the one thread is idle for the next
    finally:
        hop.close()


def test_never_more_threads_than_the_bound_and_every_job_runs() -> None:
    bound = 5
    hop = Hop(bound)
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def job(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == bound:
                release.set()  # every thread is busy: let them all go
        release.wait()
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*(hop.run(lambda i=i: job(i)) for i in range(40)))  # type: ignore[misc]

    try:
        assert asyncio.run(main()) == list(range(40))
    finally:
        hop.close()
    assert most == bound
    assert hop.threads == bound


def test_a_cancelled_caller_lets_a_started_job_finish_and_the_hop_goes_on() -> None:
    hop = Hop(2)
    started = threading.Event()
    go_on = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        started.set()
        go_on.wait()
        finished.set()
        return "done"

    async def main() -> None:
        task = asyncio.ensure_future(hop.run(slow))
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go_on.set()
        await asyncio.get_running_loop().run_in_executor(None, finished.wait)
        assert await hop.run(lambda: "next") == "next"

    try:
        asyncio.run(main())
    finally:
        hop.close()
    assert finished.is_set()


def test_a_job_cancelled_before_it_starts_never_runs() -> None:
    hop = Hop(1)
    gate = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        first = asyncio.ensure_future(hop.run(gate.wait))
        second = asyncio.ensure_future(hop.run(lambda: ran.append("second")))
        await asyncio.sleep(0)  # both submitted; the one thread is held by the first
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        gate.set()
        assert await first is True
        assert await hop.run(lambda: "after") == "after"

    try:
        asyncio.run(main())
    finally:
        hop.close()
    assert ran == []


def test_close_joins_every_thread_and_refuses_new_jobs() -> None:
    hop = Hop(3)
    before = set(threading.enumerate())

    async def main() -> None:
        await asyncio.gather(*(hop.run(lambda: None) for _ in range(3)))

    asyncio.run(main())
    started = [t for t in threading.enumerate() if t not in before and t.name.startswith("cubby-hop")]
    assert started and all(t.daemon for t in started)
    hop.close()
    assert not any(t.is_alive() for t in started)

    async def late() -> None:
        await hop.run(lambda: None)

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(late())
    hop.close()  # twice is harmless


def test_runs_for_several_loops_at_once() -> None:
    """Each job goes back to the loop that asked for it (a hop serves one server, but the
    callback must not assume one loop)."""
    hop = Hop(4)
    results: dict[int, int] = {}

    def on_its_own_loop(n: int) -> None:
        async def main() -> int:
            return sum([await hop.run(lambda k=k: k * n) for k in range(10)])  # type: ignore[misc]

        results[n] = asyncio.run(main())

    threads = [threading.Thread(target=on_its_own_loop, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hop.close()
    assert results == {1: 45, 2: 90, 3: 135}
