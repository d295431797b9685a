"""What sending chunks costs the client alone (branch putdirect): `ApiClient.upload_chunks`.

A `cubby put`'s client CPU is mostly hashing, proofs and reading the file, so a change to how
the bytes are written drowns in its noise on a shared 2-core machine. This times only the
writing: 256 MiB of 1 MiB chunks in 16 MiB requests to a real server on loopback (in its own
process), ``rounds`` times the same chunks, and the CPU of the calling thread
(``time.thread_time``: user and system, so the kernel's copy into the socket counts) per GiB.
The server stores the first round and verifies and drops the later ones; only client CPU is
the figure here, wall time is the server's.

    .venv/bin/python bench/send_cpu.py [--rounds 3] [--name send_cpu]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from machine import load_average

from cubby.client.api import ApiClient
from tests.helpers.live_server import LiveServer

CHUNK = 1 << 20
BATCH = 16
TOTAL = 256


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="send_cpu")
    args = ap.parse_args(argv)
    chunks = []
    for _ in range(TOTAL):
        data = os.urandom(CHUNK)
        chunks.append((hashlib.sha256(data).hexdigest(), data))
    batches = [chunks[i : i + BATCH] for i in range(0, TOTAL, BATCH)]
    per_gib = (1 << 30) / (TOTAL * CHUNK)
    rounds = []
    load = [load_average()]
    with LiveServer(Path(tempfile.mkdtemp(prefix="send-cpu-")) / "data") as srv:
        token = srv.add_user("bench")
        with ApiClient(srv.url, token) as api:
            ns = int(api.account()["root_ns"])
            for i in range(args.rounds):
                c0, w0 = time.thread_time(), time.perf_counter()
                for batch in batches:
                    api.upload_chunks(ns, batch)
                cpu, wall = (time.thread_time() - c0) * per_gib, (time.perf_counter() - w0) * per_gib
                rounds.append({"client_cpu_s_per_gib": round(cpu, 3), "wall_s_per_gib": round(wall, 3)})
                print(f"round {i}: client thread CPU {cpu:.3f} s/GiB, wall {wall:.2f} s/GiB")
    load.append(load_average())
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"benchmark": args.name, "rounds": rounds, "load_average": load}, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
