"""The server's CPU per small file in its three batched paths, in process (issues 11 and 12).

What a `cubby put` of many small files asks of the server, group by group, without HTTP:

- ``prove``: a prove request's JSON parsed (`orjson`), its claims checked (`parse_claims`) and
  judged (`accept_proofs`: one index lookup, a nonce and a proof over filler per claim, the
  chunks being new), its answer encoded (the route's padding is not here: it is a sleep);
- ``upload``: `ingest_chunks` of the group's chunks into a pack store on a local folder
  (verify, compress, pack append and fsync, index, ``blocks`` and ``ns_chunks`` rows);
- ``commit``: a commit batch's JSON parsed (`parse_commit`), each path resolved
  (`access.resolve`), `commit_many`, and the answers encoded.

Each phase's CPU (``time.process_time``) per file, and the read system calls per file of the
whole run (``/proc/self/io``: SQLite reads a page it does not hold with one ``pread``), on a
fresh SQLite database in ``--scratch``. One thread, so no wait on the GIL is counted; the
server's collector setting (`cubby.core.gcpolicy`) is applied first, as ``cubby serve`` does,
when the tree has it (``gc_tuned``).
``--src`` runs another tree's code (a copy of main, say) for a before/after pair::

    .venv/bin/python bench/batch_cpu.py --files 20000
    .venv/bin/python bench/batch_cpu.py --files 20000 --src /tmp/main-copy/src
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def read_calls() -> int:
    """Read system calls this process has made so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split(":")[1])
    return 0


def run(files: int, group: int, scratch: Path) -> dict[str, float]:
    import orjson

    from cubby.blockstore.opener import open_block_store
    from cubby.core import proofs
    from cubby.core.nonces import chunk_nonce
    from cubby.metadata.possession import parse_claims
    from cubby.metadata.store import open_store
    from cubby.model import CommitRequest
    from cubby.server import access
    from cubby.server.meta import commit_answer, parse_commit
    from cubby.server.responses import encode

    try:  # as `cubby serve` does, in a tree that has it
        from cubby.core.gcpolicy import tune_collector
    except ImportError:
        tuned = False
    else:
        tune_collector()
        tuned = True
    work = scratch / f"batch-cpu-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = open_store(f"sqlite:///{work / 'meta.db'}")
    try:
        blocks = open_block_store(str(work / "blocks"), store.router.chunks)
        _, token = store.create_user("bench")
        p = store.authenticate(token)
        ns = p.root_ns
        offer = store.proof_key(p.user_id, ns)
        key, window = bytes.fromhex(offer["key"]), offer["window"]
        rng = random.Random(1)
        datas = [rng.randbytes(4096) for _ in range(files)]
        names = [hashlib.sha256(d).hexdigest() for d in datas]
        spent = {"prove": 0.0, "upload": 0.0, "commit": 0.0}

        def timed(phase: str, fn: Callable[[], Any]) -> Any:
            t = time.process_time()
            out = fn()
            spent[phase] += time.process_time() - t
            return out

        calls = read_calls()
        for start in range(0, files, group):
            part = range(start, min(files, start + group))
            claims = {
                names[i]: {
                    "size": 4096, "window": window,
                    "proof": proofs.proof_hex(bytes.fromhex(chunk_nonce(key, names[i], 4096)), datas[i]),
                }
                for i in part
            }
            prove_body = orjson.dumps({"ns_id": ns, "alg": proofs.CURRENT, "proofs": claims})
            commit_body = orjson.dumps({"commits": [
                {"path": f"/small/d{i % 20}/f{i}", "size": 4096, "chunks": [{"hash": names[i], "size": 4096}],
                 "mtime": 1.7e9 + i, "mode": 0o100644}
                for i in part
            ]})

            def prove(raw: bytes = prove_body) -> bytes:
                body = orjson.loads(raw)
                checked = store.accept_proofs(
                    p.user_id, ns, parse_claims(body["proofs"], max_entries=group, alg=body["alg"]), blocks
                )
                return encode({"accepted": checked.proven, "rejected": checked.rejected})

            def upload(part: range = part) -> int:
                return store.ingest_chunks(ns, [(names[i], datas[i]) for i in part], blocks)

            def commit(raw: bytes = commit_body) -> bytes:
                reqs = [parse_commit(c) for c in orjson.loads(raw)["commits"]]
                targets = [access.resolve(p, r.path, write=True) for r in reqs]
                inner = [
                    r if t.path == r.path else CommitRequest(t.path, r.size, r.chunks, r.expected_rev, r.mtime, r.mode)
                    for r, t in zip(reqs, targets)
                ]
                outs = store.commit_many(p.user_id, ns, inner, list(access.mounts(p).values()))
                answers = []
                for t, o in zip(targets, outs):
                    if not hasattr(o, "entry") or o.entry is None:
                        raise SystemExit(f"a commit was not made: {o!r}")
                    answers.append(commit_answer(t, o))
                return encode({"results": answers})

            timed("prove", prove)
            timed("upload", upload)
            timed("commit", commit)
        reads = read_calls() - calls
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    out = {f"{k}_us_per_file": round(v / files * 1e6, 1) for k, v in spent.items()}
    out["total_us_per_file"] = round(sum(spent.values()) / files * 1e6, 1)
    out["read_calls_per_file"] = round(reads / files, 2)
    out["gc_tuned"] = tuned
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--group", type=int, default=1000, help="files per prove, upload and commit batch")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--src", help="run this src folder's cubby (in a child process, through PYTHONPATH)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run(args.files, args.group, args.scratch)), flush=True)
        return
    src = Path(args.src).resolve() if args.src else HERE.parent / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    for _ in range(args.rounds):
        child = [sys.executable, str(Path(__file__).resolve()), "--child", "--files", str(args.files),
                 "--group", str(args.group), "--scratch", str(args.scratch)]
        line = subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout.strip()
        print(json.dumps({"src": str(src), **json.loads(line.splitlines()[-1]), "load": round(os.getloadavg()[0], 1)}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
