#!/usr/bin/env python3
"""Benchmark: does the time to reject a proof of possession reveal whether the server holds
the chunk? (issue 10, item 4)

A real server (uvicorn, in this process, on a socket bound to port 0 on loopback) holds
chunks that Alice uploaded. Bob, who does not have the bytes, sends a wrong proof for one of
them ("held") and, interleaved, for a hash nobody stored ("absent"), with the same claimed
size. The reference for each size is the absent chunk: the figure is held / absent (1.0 =
nothing to tell them apart). Each size is measured twice: with the server as shipped
(`RejectPacer` pads each answer to a read budget) and with the pad switched off (only the
filler hashing of `cubby.metadata.possession` equalises the work), to show what the pad buys.

    .venv/bin/python bench/prove_timing.py [--sizes 256K,1M,4M] [--rounds 40]

Before this change the server read and hashed a held chunk and skipped an absent one at once:
4 MiB took 22-31 ms against 2 ms (issue 10). Results, with the machine, go to
``bench/results/prove_timing.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, summary_line
from report import Report, Row

from cubby.client.api import ApiClient
from cubby.config import Config
from cubby.core import proofs
from cubby.model import ChunkRef
from cubby.server import blocks as blocks_role
from cubby.server.possession import RejectPacer
from tests.helpers.moto_server import MOTO_CREDENTIALS, moto_server


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * mult


@contextmanager
def running_server(data: Path, padded: bool, blocks: str | None = None) -> Iterator[str]:
    """A server on a socket this process bound to port 0; yields its URL."""
    import uvicorn

    from cubby.server.app import build_app
    from cubby.server.context import build_context

    if not padded:  # the pacer with a zero budget: only the filler hashing is left
        blocks_role.RejectPacer = lambda **_: RejectPacer(first_seconds=0.0, base_seconds=0.0, default_rate=0.0, margin=0.0)  # type: ignore[assignment,misc]
    else:
        blocks_role.RejectPacer = RejectPacer  # type: ignore[misc]
    config = Config(data_dir=data, blocks_url=blocks)
    ctx = build_context(config, ("meta", "blocks"))
    app = build_app(ctx, ("meta", "blocks"))
    sock = socket.socket()
    # Accepted connections inherit it: uvicorn writes an answer's headers and body apart, and
    # without it every answer after a connection's first waited ~40 ms for a delayed ACK
    # (4 ms steps), under which smaller differences did not show (`cubby serve` has it).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=600)
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def measure(url: str, data: Path, sizes: list[int], rounds: int, alg: str) -> dict[int, dict[str, list[float]]]:
    from cubby.metadata.store import open_store

    store = open_store(Config(data_dir=data).metadata_url)
    ta = store.create_user(f"alice{os.getpid()}{time.time_ns()}")[1]
    tb = store.create_user(f"bob{os.getpid()}{time.time_ns()}")[1]
    store.close()
    out: dict[int, dict[str, list[float]]] = {}
    # http.client writes a request's headers and body apart (CPython 3.11): with Nagle's
    # algorithm the body would wait for the server's delayed ACK of the headers.
    raw = http.client.HTTPConnection(urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port, timeout=60)
    raw.connect()
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with ApiClient(url, ta) as alice, ApiClient(url, tb) as bob:
        ns_a, ns_b = alice.account()["root_ns"], bob.account()["root_ns"]
        for size in sizes:
            held = []
            for i in range(rounds):  # a different held chunk each round: no answer is cached
                chunk = os.urandom(size)
                h = hashlib.sha256(chunk).hexdigest()
                alice.upload_chunks(ns_a, [(h, chunk)])
                assert alice.commit(f"/held-{size}-{i}.bin", size, [ChunkRef(h, size)]).committed
                held.append(h)
            times: dict[str, list[float]] = {"held": [], "absent": []}

            def prove(h: str, size: int = size) -> float:
                body = json.dumps({"ns_id": ns_b, "alg": alg, "proofs": {h: {"size": size, "proof": "ab" * 32}}}).encode()
                headers = {"Authorization": f"Bearer {tb}", "Content-Type": "application/json"}
                start = time.perf_counter()
                raw.request("POST", "/api/v1/blocks/prove", body=body, headers=headers)
                r = raw.getresponse()
                answer = r.read()
                took = time.perf_counter() - start
                assert r.status == 200 and json.loads(answer) == {"accepted": [], "rejected": [h]}, answer
                return took

            prove(hashlib.sha256(os.urandom(16)).hexdigest())  # warm the connection
            for i in range(rounds):
                absent = hashlib.sha256(os.urandom(16)).hexdigest()
                order = [("held", held[i]), ("absent", absent)]
                if i % 2:
                    order.reverse()  # alternate, so that drift touches both alike
                for kind, h in order:
                    times[kind].append(prove(h))
            out[size] = times
    raw.close()
    return out


def p90(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[int(0.9 * (len(ordered) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256K,1M,4M", help="claimed chunk sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=40, help="rejections per size and kind")
    ap.add_argument("--name", default="prove_timing")
    ap.add_argument(
        "--alg", default=proofs.CURRENT, choices=proofs.ALGORITHMS,
        help="the proof algorithm the requests name (default: what the client sends)",
    )
    ap.add_argument(
        "--blocks", default=None,
        help="the server's block store: an s3:// URL, or 'moto' for a bucket on a moto server this starts (default: the local pack folder)",
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]

    info = describe(Path(tempfile.gettempdir()))
    print(summary_line(info))
    report = Report(args.name, info, {"sizes": sizes, "rounds": args.rounds, "alg": args.alg, "blocks": args.blocks or "folder"})
    for padded in (True, False):
        mode = "padded" if padded else "no pad"
        with tempfile.TemporaryDirectory(prefix="cubby-prove-") as tmp, contextlib.ExitStack() as stack:
            data = Path(tmp) / "data"
            blocks = args.blocks
            if blocks == "moto":
                os.environ.update(MOTO_CREDENTIALS)
                endpoint = stack.enter_context(moto_server())
                import boto3

                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="prove")
                blocks = f"s3://prove/packs?endpoint={endpoint}&region=us-east-1"
            with running_server(data, padded, blocks) as url:
                results = measure(url, data, sizes, args.rounds, args.alg)
        for size, times in results.items():
            group = f"{mode} {size // 1024} KiB"
            absent_med, held_med = statistics.median(times["absent"]), statistics.median(times["held"])
            report.add(Row(group, "absent", absent_med, extra={
                "median_ms": round(absent_med * 1000, 2), "p90_ms": round(p90(times["absent"]) * 1000, 2),
                "samples_seconds": [round(t, 5) for t in times["absent"]],
            }))
            report.add(Row(group, "held", held_med, reference="absent", ratio=held_med / absent_med, extra={
                "median_ms": round(held_med * 1000, 2), "p90_ms": round(p90(times["held"]) * 1000, 2),
                "p90_ratio": round(p90(times["held"]) / p90(times["absent"]), 3),
                "samples_seconds": [round(t, 5) for t in times["held"]],
            }))
    report.notes.append("ratio = held median / absent median for a wrong proof of the same claimed size (1.0 = indistinguishable)")
    report.notes.append("'no pad' switches off RejectPacer: only the filler hashing equalises the work")
    path = report.write()
    report.print()
    print()
    print(f"{'group':22} {'held ms (p90)':>16} {'absent ms (p90)':>17} {'held/absent':>12} {'diff ms':>8}")
    for r in report.rows:
        if r.name == "held":
            a = report.find(r.group, "absent")
            assert a is not None
            print(f"{r.group:22} {r.extra['median_ms']:>8} ({r.extra['p90_ms']:>6}) "
                  f"{a.extra['median_ms']:>8} ({a.extra['p90_ms']:>6}) {r.ratio:>12.2f} "
                  f"{r.extra['median_ms'] - a.extra['median_ms']:>8.2f}")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
