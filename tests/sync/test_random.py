"""Randomized whole-system test: several clients, random edits, server outages and crashes.

A seeded generator drives three clients of one user through random steps: local changes
(create, edit, delete, move, rename, mkdir), sync passes that may crash at a random point (an
in-process crash hook, or `cubby sync --once` as a subprocess killed with SIGKILL), and server
outages (the server process stopped and started again). Then every client syncs until
nothing changes, and the test checks that all clients and the server hold the same tree and
that every version a client wrote survives (as the file or as a conflicted copy) unless a
person later deleted or overwrote it where they could see it.

``CUBBY_SYNC_SEEDS`` sets how many seeds run (default 3; ``HYPOTHESIS_PROFILE=long`` means 40).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from cubby.errors import Unavailable
from tests.helpers.live_server import ROOT, LiveServer
from tests.sync.conftest import Clients, local_tree, server_tree


def _seeds() -> list[int]:
    default = "40" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "3"
    return list(range(int(os.environ.get("CUBBY_SYNC_SEEDS", default))))


class SimulatedCrash(BaseException):
    """Raised by the crash hook: it unwinds everything, like a process dying at that point."""


NAMES = ["a.txt", "b.txt", "A.TXT", "notes", "caf\u00e9.md", "cafe\u0301.md", "d"]
FOLDERS = ["x", "y", "Z", "x/sub"]


class Driver:
    def __init__(self, clients: Clients, rng: random.Random, tmp: Path) -> None:
        self.c = clients
        self.rng = rng
        self.tmp = tmp
        self.roots = [tmp / f"c{i}" for i in range(3)]
        for r in self.roots:
            r.mkdir(parents=True)
        self.engines: dict[int, SyncEngine | None] = dict.fromkeys(range(3))
        self.written: set[bytes] = set()
        self.destroyed: set[bytes] = set()
        self.counter = 0
        self.log: list[str] = []

    def engine(self, i: int, crash_p: float = 0.0) -> SyncEngine:
        e = self.engines[i]
        if e is None:
            e = SyncEngine(self.roots[i], ApiClient(self.c.server.url, self.c.token, timeout=10), host=f"c{i}")
            self.engines[i] = e
        rng = self.rng

        def hook(where: str) -> None:
            if crash_p and rng.random() < crash_p:
                raise SimulatedCrash(where)

        e.crash_hook = hook
        return e

    def drop(self, i: int) -> None:
        e = self.engines[i]
        if e is not None:
            e.close()
            e.api.close()
            self.engines[i] = None

    # -- local changes -----------------------------------------------------------------------------
    def _files(self, root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_file() and ".cubby" not in p.relative_to(root).parts)

    def _dirs(self, root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_dir() and ".cubby" not in p.relative_to(root).parts)

    def content(self) -> bytes:
        self.counter += 1
        size = self.rng.choice([10, 100, 5000, 300_000, 1_500_000])
        body = f"version {self.counter} ".encode()
        data = (body * (size // len(body) + 1))[:size]
        self.written.add(data)
        return data

    def local_op(self, i: int) -> None:
        root = self.roots[i]
        files, dirs = self._files(root), self._dirs(root)
        kind = self.rng.choice(["create", "create", "edit", "edit", "delete", "move", "mkdir", "rmtree", "patch", "chmod"])
        if kind == "create" or (kind in ("edit", "delete", "move") and not files):
            folder = self.rng.choice(["", *FOLDERS])
            p = root / folder / self.rng.choice(NAMES)
            if p.exists() or any(a.is_file() for a in [*p.parents][: len(Path(folder).parts)]):
                return
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(self.content())
        elif kind == "edit":
            p = self.rng.choice(files)
            self.destroyed.add(p.read_bytes())
            p.write_bytes(self.content())
        elif kind == "delete":
            p = self.rng.choice(files)
            self.destroyed.add(p.read_bytes())
            p.unlink()
        elif kind == "move":
            p = self.rng.choice(files)
            folder = root / self.rng.choice(["", *FOLDERS])
            dst = folder / self.rng.choice(NAMES)
            if dst.exists() or folder.is_file() or any(a.is_file() for a in folder.parents if root in a.parents):
                return
            dst.parent.mkdir(parents=True, exist_ok=True)
            p.rename(dst)
        elif kind == "mkdir":
            d = root / self.rng.choice(FOLDERS) / "new"
            if not any(a.is_file() for a in [d, *d.parents] if root in a.parents):
                d.mkdir(parents=True, exist_ok=True)
        elif kind == "patch" and any(p.stat().st_size > 262_144 for p in files):
            # an edit inside a large file: its changed chunk travels as a delta, under faults
            p = self.rng.choice([p for p in files if p.stat().st_size > 262_144])
            old = p.read_bytes()
            self.destroyed.add(old)
            self.counter += 1
            at = self.rng.randrange(len(old))
            new = old[:at] + f"patch {self.counter}".encode() + old[at + self.rng.choice([0, 1, 4096]) :]
            self.written.add(new)
            with open(p, "r+b") as fh:  # in place, as a database or an editor of big files writes
                fh.write(new)
                fh.truncate()
        elif kind == "chmod" and files:
            p = self.rng.choice(files)
            os.chmod(p, os.stat(p).st_mode ^ 0o111)
        elif kind == "rmtree" and dirs:
            d = self.rng.choice(dirs)
            for f in self._files(d):
                self.destroyed.add(f.read_bytes())
            shutil.rmtree(d)
        self.log.append(f"c{i} {kind}")

    # -- syncing -----------------------------------------------------------------------------------
    def sync_in_process(self, i: int, crash_p: float) -> None:
        try:
            self.engine(i, crash_p).run_once()
        except SimulatedCrash:
            self.log.append(f"c{i} crashed")
            self.drop(i)
        except Unavailable:
            self.log.append(f"c{i} offline")

    def sync_concurrently(self) -> None:
        """Two clients' passes at the same time: their commits race on the server."""
        import threading

        ids = self.rng.sample(range(3), 2)
        for i in ids:
            self.engine(i)  # built here, not in the threads
        threads = [threading.Thread(target=self.sync_in_process, args=(i, 0.0)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.log.append(f"c{ids[0]}+c{ids[1]} together")

    def sync_killed(self, i: int) -> None:
        """`cubby sync --once` in a subprocess, killed with SIGKILL after a random moment."""
        self.drop(i)
        env = {**os.environ, "CUBBY_URL": self.c.server.url, "CUBBY_TOKEN": self.c.token,
               "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen([sys.executable, "-m", "cubby", "sync", "--once", str(self.roots[i])], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(self.rng.uniform(0.2, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.log.append(f"c{i} killed")

    def settle(self) -> None:
        for _ in range(8):
            changed = False
            for i in range(3):
                rep = self.engine(i).run_once()
                assert rep.converged, (rep.to_dict(), self.log)
                changed = changed or bool(rep.applied)
            if not changed:
                return
        raise AssertionError(f"no quiet round; {self.log}")

    def check(self, api: ApiClient) -> None:
        """Every client holds the server's tree (and the same executable bits), and every
        version a client wrote is there unless a person later deleted or overwrote it."""
        trees = [local_tree(r) for r in self.roots]
        srv = server_tree(api)
        if any(t != srv for t in trees):
            diff = {k for t in trees for k in set(t) ^ set(srv)}
            views = []
            for i in range(3):
                e = self.engine(i)
                views.append({
                    "remote": [r for r in e.state.remote_items() if r.path.lstrip("/") in diff],
                    "base": [b for b in e.state.base_items() if b.path.lstrip("/") in diff],
                    "has": [k for k in diff if k in trees[i]],
                })
            raise AssertionError(f"trees differ at {diff}; server has {[k for k in diff if k in srv]}; {views}; {self.log}")
        execs = [  # names compared as local_tree does (NFC): clients may hold either form
            {unicodedata.normalize("NFC", str(p.relative_to(r))) for p in self._files(r) if os.stat(p).st_mode & 0o100}
            for r in self.roots
        ]
        assert execs[0] == execs[1] == execs[2], (execs, self.log)
        present = {v for v in trees[0].values() if v is not None}
        lost = self.written - self.destroyed - present
        assert not lost, (f"{len(lost)} versions lost", self.log)

    def close(self) -> None:
        for i in range(3):
            self.drop(i)


@pytest.mark.parametrize("seed", _seeds())
def test_random_clients_outages_and_crashes_converge_without_loss(clients: Clients, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    d = Driver(clients, rng, tmp_path / "clients")
    server: LiveServer = clients.server
    kills = 0
    try:
        for _step in range(30):
            r = rng.random()
            i = rng.randrange(3)
            if r < 0.5:
                d.local_op(i)
            elif r < 0.75:
                d.sync_in_process(i, crash_p=0.15)
            elif r < 0.85:
                d.sync_concurrently()
            elif r < 0.92 and kills < 2:
                kills += 1
                d.sync_killed(i)
            else:
                server.stop()
                d.log.append("server down")
                for _ in range(3):
                    d.local_op(rng.randrange(3))
                d.sync_in_process(rng.randrange(3), crash_p=0.0)
                server.start()
                d.log.append("server up")
        d.settle()
        d.check(clients.api)
    finally:
        d.close()
        if server.proc is None:
            server.start()
