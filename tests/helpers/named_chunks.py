"""Random chunks named by their SHA-256, for the tests that send chunk frames by hand."""

from __future__ import annotations

import hashlib
import random


def named_chunks(seed: int, sizes: list[int]) -> list[tuple[str, bytes]]:
    """One chunk of random bytes per size in ``sizes`` (seeded), each with its name."""
    rng = random.Random(seed)
    out = []
    for size in sizes:
        data = rng.randbytes(size)
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out
