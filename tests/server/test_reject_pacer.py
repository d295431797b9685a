"""`RejectPacer`: the pad makes a held read and an absent one cost the same, from learnt reads."""

from __future__ import annotations

import asyncio

from cubby.server.possession import RejectPacer


def test_the_pad_is_the_budget_minus_the_reads_and_the_rate_is_learnt():
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    pacer = RejectPacer(base_seconds=0.001, default_rate=1e-9, margin=1.0, min_samples=4, sleep=sleep)
    mib = 1024 * 1024
    assert abs(pacer.budget([mib]) - (0.001 + mib * 1e-9)) < 1e-12
    # An absent chunk (no read) sleeps the whole budget; a held one only what its read left.
    absent = asyncio.run(pacer.pad([mib], []))
    held = asyncio.run(pacer.pad([mib], [(mib, 0.0005)]))
    assert abs(absent - (held + 0.0005)) < 1e-12
    # Reads slower than the default teach the pacer a larger rate; small reads teach nothing.
    pacer.record([(mib, 0.01)] * 4 + [(100, 5.0)])
    assert abs(pacer.rate() - 0.01 / mib) < 1e-15
    assert pacer.budget([2 * mib]) > 0.02
    # A read longer than the budget is not padded.
    assert asyncio.run(pacer.pad([mib], [(mib, 1.0)])) == 0.0
