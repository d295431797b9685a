"""A namespace moved between shards while two sync clients commit to it and follow it, a third
client uploads with acknowledgements and a fourth lists it, all through a real server on
loopback (PostgreSQL + PostgreSQL, PostgreSQL + MariaDB). Afterwards both sync clients
converge, the journal has no gap, no acknowledged write is lost, readers were never refused,
and a cursor taken before the move reads on after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from cubby.client.upload import upload_file
from cubby.errors import CubbyError, Unavailable
from cubby.metadata import nscopy
from cubby.metadata.store import open_store
from tests.conftest import require_service
from tests.helpers.live_server import ROOT, LiveServer
from tests.sync.conftest import local_tree, server_tree


def test_a_namespace_moves_while_clients_commit_and_follow(two_urls, tmp_path: Path) -> None:
    require_service("redis")
    a_url, b_url = two_urls
    shards = {"a": a_url, "b": b_url}
    flags = ["--shard", f"a={a_url}", "--shard", f"b={b_url}"]
    cache = f"redis://127.0.0.1:6379/0?prefix=t{uuid.uuid4().hex[:12]}"
    store = open_store(a_url, shards=shards, place_new="a")
    try:
        user, token = store.create_user("alice")
    finally:
        store.close()
    ns = user.root_ns
    stop = threading.Event()
    problems: list[str] = []
    written: dict[str, dict[str, bytes]] = {}
    acked: dict[str, int] = {}
    refused = {"sync": 0}

    def sync_client(label: str) -> None:
        root = tmp_path / label
        root.mkdir()
        engine = SyncEngine(root, ApiClient(server.url, token), host=label)
        mine = written.setdefault(label, {})
        i = 0
        try:
            while not stop.is_set():
                data = f"{label} {i} {os.urandom(8).hex()}".encode()
                (root / label).mkdir(exist_ok=True)
                (root / label / f"n{i}.txt").write_bytes(data)
                mine[f"{label}/n{i}.txt"] = data
                i += 1
                try:
                    engine.run_once()
                except Unavailable:
                    refused["sync"] += 1
                    time.sleep(0.05)
        except Exception as exc:  # the assertion below names it
            problems.append(f"{label}: {exc!r}")
        finally:
            engines[label] = engine

    def uploader() -> None:
        src = tmp_path / "up"
        src.mkdir()
        with ApiClient(server.url, token) as api:
            i = 0
            while not stop.is_set():
                f = src / f"u{i}.bin"
                f.write_bytes(os.urandom(3000))
                try:
                    res = upload_file(api, f, f"/uploads/u{i}.bin")
                    acked[res.path] = res.rev
                except Unavailable:
                    pass  # not acknowledged: nothing to keep
                except CubbyError as exc:
                    problems.append(f"uploader: {exc!r}")
                i += 1

    def reader() -> None:
        with ApiClient(server.url, token) as api:
            while not stop.is_set():
                try:
                    list(api.list("/", recursive=True))
                except CubbyError as exc:
                    problems.append(f"reader refused: {exc!r}")
                time.sleep(0.02)

    engines: dict[str, SyncEngine] = {}
    server = LiveServer(tmp_path / "data", db_url=a_url, extra_args=[*flags, "--cache", cache])
    with server, ApiClient(server.url, token) as api:
        threads = [threading.Thread(target=fn, args=args) for fn, args in (
            (sync_client, ("alpha",)), (sync_client, ("beta",)), (uploader, ()), (reader, ()),
        )]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 60
            while len(acked) < 5 and not problems and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(acked) >= 5, problems
            cursor = api.journal(ns, 0, limit=10_000)[1]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            moved = subprocess.run(
                [sys.executable, "-m", "cubby", "--json", "admin", "move-namespace", str(ns), "--to", "b",
                 "--directory", a_url, *flags, "--cache", cache],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )
            at_move = (len(acked), sum(len(f) for f in written.values()))
            # Writers go on at the new shard: wait for both kinds to get further (a sync pass
            # on a loaded machine can take over a second, so a fixed sleep would be a race).
            deadline = time.monotonic() + 30
            after_move = at_move
            while time.monotonic() < deadline and not problems:
                after_move = (len(acked), sum(len(f) for f in written.values()))
                if after_move[0] > at_move[0] and after_move[1] > at_move[1]:
                    break
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout.splitlines()[-1])["target"] == "b"
        assert not problems, problems
        assert after_move[0] > at_move[0] and after_move[1] > at_move[1]  # they went on at the new shard

        # Both sync clients converge with the server.
        for _ in range(6):
            changed = False
            for e in engines.values():
                rep = e.run_once()
                changed = changed or bool(rep.applied)
            if not changed:
                break
        trees = [local_tree(e.root) for e in engines.values()]
        assert trees[0] == trees[1] == server_tree(api)
        for files in written.values():  # every file either client wrote is there
            for rel, data in files.items():
                assert trees[0][rel] == data, rel
        for path, rev in acked.items():  # every acknowledged upload is there, unchanged
            assert api.stat(path).rev == rev, path
        # A cursor taken before the move reads on after it, and the journal has no gap.
        jids: list[int] = []
        more, at = True, cursor
        while more:
            page, head, more = api.journal(ns, at, limit=1000)
            jids += [e.jid for e in page]
            at = jids[-1] if jids else at
        assert jids == list(range(cursor + 1, head + 1))
        for e in engines.values():
            e.close()
            e.api.close()

    store = open_store(a_url, shards=shards)
    try:
        assert store.router.placement(ns).shard == "b"
        assert not nscopy.holds(store.router.shard_db("a"), ns)
        full = store.journal(ns, 0, limit=100_000)
        assert [e.jid for e in full] == list(range(1, store.head(ns) + 1))
    finally:
        store.close()
