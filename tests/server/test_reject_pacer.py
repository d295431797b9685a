"""`RejectPacer`: the pad makes a held read and an absent one cost the same, from learnt reads."""

from __future__ import annotations

import asyncio
import time

import pytest

from cubby.server.possession import FINE, LOCAL_FIRST, REMOTE_FIRST, RejectPacer, finish_on_thread, first_for

MIB = 1024 * 1024


def quiet_pacer(**kw: float) -> tuple[RejectPacer, list[float]]:
    """A pacer whose sleeps are recorded, not slept (the loop's part as its seconds, the
    thread's as ``-1``), with a margin of 1 and 4 samples to learn."""
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def finish(_deadline: float) -> None:
        slept.append(-1)

    return RejectPacer(margin=1.0, min_samples=4, sleep=sleep, finish=finish, **kw), slept  # type: ignore[arg-type]


def test_the_pad_is_the_budget_minus_the_reads_and_the_rate_is_learnt():
    pacer, slept = quiet_pacer(first_seconds=0.002, base_seconds=0.001, default_rate=1e-9)
    assert abs(pacer.budget([MIB]) - (0.001 + MIB * 1e-9)) < 1e-12
    assert pacer.budget([1]) == pacer.budget([]) == 0.002  # a small request gets the floor
    # An absent chunk (no read) sleeps the whole budget; a held one only what its read left.
    absent = asyncio.run(pacer.pad([MIB], []))
    held = asyncio.run(pacer.pad([MIB], [(1, MIB, 0.0005)]))
    assert abs(absent - (held + 0.0005)) < 1e-12
    # The loop sleeps all but the last FINE seconds; a thread sleeps those, to the deadline.
    assert held < FINE < absent and slept == [pytest.approx(absent - FINE), -1, -1]
    # Large reads slower than the default teach the pacer a larger rate; small ones do not.
    pacer.record([(1, MIB, 0.01)] * 4 + [(2, 100, 5.0)])
    assert abs(pacer.rate() - 0.01 / MIB) < 1e-15
    assert pacer.budget([2 * MIB]) > 0.02
    # A read longer than the budget is not padded.
    assert asyncio.run(pacer.pad([MIB], [(1, MIB, 1.0)])) == 0.0


def test_a_request_of_one_small_claim_is_padded_to_what_reaching_the_store_costs():
    """The hole this closes: one held 4 KiB chunk on S3 costs a ranged GET (8 ms on moto) but
    was budgeted 0.15 ms, so a wrong proof of it answered later than one of an absent chunk."""
    pacer, _ = quiet_pacer(first_seconds=REMOTE_FIRST)
    assert pacer.budget([4096]) >= REMOTE_FIRST
    # Slower single reads than the default raise it (say, a far bucket)...
    pacer.record([(1, 4096, 0.2)] * 4)
    assert pacer.first() == 0.2 and pacer.budget([4096]) == 0.2
    # ...and faster ones never lower it below the store's default: a prober picks the cold chunks.
    fast, _ = quiet_pacer(first_seconds=REMOTE_FIRST)
    fast.record([(1, 4096, 0.001)] * 50)
    assert fast.first() == REMOTE_FIRST
    assert first_for(remote=True) == REMOTE_FIRST and first_for(remote=False) == LOCAL_FIRST < REMOTE_FIRST


def test_the_per_claim_part_is_learnt_from_many_small_held_claims_and_only_raised():
    pacer, _ = quiet_pacer(base_seconds=0.00015)
    # 1,000 held 4 KiB chunks read in 0.5 s under load: 500 us a claim, not 150.
    pacer.record([(1000, 1000 * 4096, 0.5)] * 4)
    assert abs(pacer.base() - 0.0005) < 1e-12
    assert pacer.budget([4096] * 1000) >= 0.5
    # They say nothing of the per-byte rate (that was counted twice, once in each part).
    assert pacer.rate() == pacer.default_rate
    # Cheap batches (neighbours in one pack, read as one extent) leave the default in place.
    cheap, _ = quiet_pacer(base_seconds=0.00015)
    cheap.record([(1000, 1000 * 4096, 0.01)] * 10)
    assert cheap.base() == 0.00015
    # A batch of middling size teaches nothing.
    mid, _ = quiet_pacer()
    mid.record([(10, 10 * 4096, 9.0)] * 10)
    assert (mid.first(), mid.base(), mid.rate()) == (mid.first_seconds, mid.base_seconds, mid.default_rate)


def test_the_end_of_a_pad_is_slept_to_its_deadline_on_a_thread():
    """The event loop's timers wait in whole milliseconds from when they are set, so a pad
    slept there alone ends at the same millisecond after a held read's longer check as after
    an absent one's shorter check. The thread's sleep ends at the deadline itself."""
    for ahead in (0.0, 0.0003, 0.0017):
        deadline = time.perf_counter() + ahead
        asyncio.run(finish_on_thread(deadline))
        assert time.perf_counter() >= deadline
