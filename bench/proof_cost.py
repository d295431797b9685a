"""Proof-of-possession cost (issue 11, branch bigproof): CPU per GiB of each proof algorithm,
on the client's side (a proof over a chunk's bytes) and the server's (`Challenges.verify` over
a held chunk, and over the filler of an absent one), beside the SHA-256 that names a chunk.

A `cubby put` of new data computes one proof per chunk on the client and checks it on the
server (over filler: the server does not hold the chunk, and must not show it), so what one
algorithm costs per GiB here is paid twice per GiB uploaded. Rows are CPU seconds (user +
system, this process) per GiB, the median of ``--repeat`` rounds, chunks of 1 MiB (FastCDC's
mean); ``ratio`` is SHA-256's CPU over the row's (above 1: cheaper than the name's hash).
The held and absent rows of one algorithm should be equal: the check's work must not say
whether the server holds a chunk.

    .venv/bin/python bench/proof_cost.py                 # 256 MiB, 3 rounds
    .venv/bin/python bench/proof_cost.py --size 1G
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from datasets import parse_size
from machine import describe, summary_line
from report import Report, Row

from cubby.core import proofs
from cubby.metadata.possession import Challenges, Claim, check_claims

CHUNK = 1 << 20


def cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def cpu_per_gib(work: Callable[[], object], nbytes: int, repeat: int) -> float:
    """Median CPU seconds per GiB of ``work`` over ``repeat`` rounds."""
    runs = []
    for _ in range(repeat):
        start = cpu()
        work()
        runs.append((cpu() - start) / (nbytes / 2**30))
    return sorted(runs)[(len(runs) - 1) // 2]


class Store:
    """The block store as the check sees it: some chunks held, read from memory."""

    def __init__(self, chunks: dict[str, bytes]) -> None:
        self.chunks = chunks

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        return {n: self.chunks[n] for n in names if n in self.chunks}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M", help="bytes hashed per round (default 256M)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--name", default="proof_cost")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    machine = describe(Path("/tmp"))
    print(summary_line(machine), flush=True)
    report = Report(args.name, machine, {"size": size, "chunk": CHUNK, "repeat": args.repeat})
    chunks = [os.urandom(CHUNK) for _ in range(size // CHUNK)]
    names = [hashlib.sha256(c).hexdigest() for c in chunks]
    nonce = os.urandom(16)
    name_cost = cpu_per_gib(lambda: [hashlib.sha256(c).digest() for c in chunks], size, args.repeat)
    report.add(Row("name", "SHA-256 of each chunk (its name)", name_cost, extra={"cpu_s_per_gib": round(name_cost, 3)}))
    ch = Challenges(os.urandom(32))
    hour = ch.window()
    store = Store(dict(zip(names, chunks)))
    absent_names = [hashlib.sha256(n.encode()).hexdigest() for n in names]
    for alg in proofs.ALGORITHMS:
        client = cpu_per_gib(lambda alg=alg: [proofs.proof_hex(nonce, c, alg) for c in chunks], size, args.repeat)

        def check(held: bool, alg: str = alg) -> None:
            for name, absent, c in zip(names, absent_names, chunks):
                h = name if held else absent
                claim = Claim(h, len(c), "00" * 32, hour, alg)
                check_claims(ch, 1, 1, [claim], store)

        rows = [
            (f"{alg}: client proof over the bytes", client),
            (f"{alg}: server check, chunk held", cpu_per_gib(lambda: check(True), size, args.repeat)),
            (f"{alg}: server check, chunk absent (filler)", cpu_per_gib(lambda: check(False), size, args.repeat)),
        ]
        for label, seconds in rows:
            report.add(
                Row("proof", label, seconds, ratio=name_cost / seconds if seconds else None,
                    reference="SHA-256 of each chunk (its name)", extra={"cpu_s_per_gib": round(seconds, 3)})
            )
    report.notes.append("seconds = CPU seconds per GiB (median round); ratio = SHA-256's CPU / the row's")
    report.finish()


if __name__ == "__main__":
    main()
