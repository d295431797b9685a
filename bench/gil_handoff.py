"""What a call that lets go of the GIL costs while another thread runs Python (issue 11).

A thread that lets go of the GIL around a call (a system call; ``sqlite3`` around each step of
a statement; hashlib and blake3 for 2,048 bytes or more; ``hmac.digest`` always; zstd) must win it
back after, and while another thread is running Python that takes up to the interpreter's
switch interval (5 ms). A `cubby put` of small files makes such calls by the thousand on
both sides, from several threads. Each row is the time per call (or per batch) beside one
thread running Python; ``ratio`` is the same call's time alone, measured in the same run,
over it (1.0: the busy thread costs it nothing). Pairs show what cubby does against what it
did before: `update_holding` against one hashlib or blake3 call, ``hmac.new`` against
``hmac.digest``, `sqlitedriver.executemany` (many rows a statement) against ``sqlite3``'s own
one step per row, `sqlitedriver.chunk_rows` (one row) against a plain SELECT, `Codec.encode_many`
(a slice's small chunks in one zstd call) against a zstd call per chunk.

    .venv/bin/python bench/gil_handoff.py
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from machine import describe, summary_line
from report import Report, Row

from cubby.core.compression import Codec
from cubby.core.hashing import sha256_hex
from cubby.core.nonces import chunk_nonce_bytes
from cubby.core.proofs import proof_hasher, proof_hex
from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.migrate import upgrade


class Busy:
    """One thread running Python until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        x = 0
        while not self._stop.is_set():
            for i in range(1000):
                x += i
            self._running.set()

    def __enter__(self) -> Busy:
        self._thread.start()
        self._running.wait()  # running Python, not just started
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="calls per row (default 200)")
    ap.add_argument("--rows", type=int, default=5000, help="rows per database batch (default 5,000)")
    ap.add_argument("--name", default="gil_handoff")
    args = ap.parse_args(argv)
    machine = describe(Path(tempfile.gettempdir()))
    print(summary_line(machine), flush=True)
    report = Report(args.name, machine, {"calls": args.calls, "rows": args.rows, "switch_interval": sys.getswitchinterval()})

    data, nonce, key = os.urandom(4096), os.urandom(16), os.urandom(32)
    name = hashlib.sha256(data).hexdigest()

    codec = Codec()
    small_chunks = [os.urandom(4096) for _ in range(64)]  # random: stored raw

    def proof_in_one_call() -> str:
        h = proof_hasher(nonce)
        h.update(data)
        return h.hexdigest()

    calls: list[tuple[str, Callable[[], object]]] = [
        ("SHA-256 of 4 KiB, one hashlib call (before)", lambda: hashlib.sha256(data).hexdigest()),
        ("SHA-256 of 4 KiB, sha256_hex (holding the GIL)", lambda: sha256_hex(data)),
        ("proof of 4 KiB, one blake3 call (before)", proof_in_one_call),
        ("proof of 4 KiB, proof_hex (holding the GIL)", lambda: proof_hex(nonce, data)),
        ("nonce, hmac.digest (before)", lambda: hmac.digest(key, f"{name}:4096".encode(), hashlib.sha256)),
        ("nonce, chunk_nonce_bytes (hmac.new)", lambda: chunk_nonce_bytes(key, name, 4096)),
        ("os.fstat (a system call: nothing to hold)", lambda: os.fstat(0)),
        ("zstd of 64 x 4 KiB, a call per chunk (before)", lambda: [codec.encode_parts(c) for c in small_chunks]),
        ("zstd of 64 x 4 KiB, Codec.encode_many (one call)", lambda: codec.encode_many(small_chunks)),
    ]
    # One busy thread for all the rows: a second one, started after the first had stopped,
    # was not seen to take the GIL from this thread's hand-offs at all (3 us, not 800).
    alone_calls = [per_call(fn, args.calls) for _, fn in calls]
    with Busy():
        busy_calls = [per_call(fn, args.calls) for _, fn in calls]
    for (label, _), alone, busy in zip(calls, alone_calls, busy_calls):
        report.add(Row("call", label, busy, ratio=alone / busy, reference="the same, alone",
                       extra={"alone_us": round(alone * 1e6, 1), "busy_us": round(busy * 1e6, 1)}))

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'm.db'}")
        try:
            upgrade(db.writer)
            insert = "INSERT OR IGNORE INTO blocks (hash, size, touched_at) VALUES (?, ?, ?)"
            batch = 0

            def rows() -> list[tuple[str, int, float]]:
                nonlocal batch
                batch += 1
                return [(hashlib.sha256(f"{batch}:{i}".encode()).hexdigest(), i, 1.0) for i in range(args.rows)]

            def one_step_a_row() -> None:
                todo = rows()
                db.write(lambda c: c.connection.driver_connection.executemany(insert, todo))  # type: ignore[union-attr]

            def many_rows_a_step() -> None:
                todo = rows()
                db.write(lambda c: sqlitedriver.executemany(c, insert, todo))

            wanted = [r[0] for r in rows()]
            db.write(lambda c: sqlitedriver.executemany(c, insert, [(h, 1, 1.0) for h in wanted]))
            marks = ", ".join("?" * 500)

            def select_rows() -> None:
                def run(c: object) -> None:
                    for i in range(0, len(wanted), 500):
                        c.connection.driver_connection.execute(  # type: ignore[attr-defined]
                            f"SELECT hash FROM blocks WHERE hash IN ({marks})", wanted[i : i + 500]
                        ).fetchall()

                db.read(run)  # type: ignore[arg-type]

            def packed() -> None:
                db.read(lambda c: [sqlitedriver.chunk_rows(c, "blocks", ("hash",), wanted[i : i + 500])
                                   for i in range(0, len(wanted), 500)])

            batches: list[tuple[str, Callable[[], object]]] = [
                (f"insert {args.rows:,} rows, a step per row (before)", one_step_a_row),
                (f"insert {args.rows:,} rows, sqlitedriver.executemany", many_rows_a_step),
                (f"read {args.rows:,} chunk rows, a step per row (before)", select_rows),
                (f"read {args.rows:,} chunk rows, sqlitedriver.chunk_rows", packed),
            ]
            alone_batches = [per_call(fn, 1) for _, fn in batches]
            with Busy():
                busy_batches = [per_call(fn, 1) for _, fn in batches]
            for (label, _), alone, busy in zip(batches, alone_batches, busy_batches):
                report.add(Row("sqlite", label, busy, ratio=alone / busy, reference="the same, alone",
                               extra={"alone_ms": round(alone * 1e3, 1), "busy_ms": round(busy * 1e3, 1)}))
        finally:
            db.dispose()
    report.notes.append("seconds = per call (or per batch) beside one thread running Python; ratio = alone / beside it")
    report.finish()


if __name__ == "__main__":
    main()
