"""Sync tests: a real server on loopback, one user per test, clients on temporary folders."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from tests.helpers.live_server import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("server") / "data") as srv:
        yield srv


class Clients:
    """Sync clients of one user, each on its own folder, run in this process."""

    def __init__(self, server: LiveServer, tmp: Path, name: str) -> None:
        self.server = server
        self.tmp = tmp
        self.token = server.add_user(name)
        self.engines: list[SyncEngine] = []
        self.api = ApiClient(server.url, self.token)

    def new(self, label: str | None = None, **kw: object) -> SyncEngine:
        root = self.tmp / (label or f"c{len(self.engines)}")
        root.mkdir(parents=True, exist_ok=True)
        eng = SyncEngine(root, ApiClient(self.server.url, self.token), host=label or f"c{len(self.engines)}", **kw)  # type: ignore[arg-type]
        self.engines.append(eng)
        return eng

    def settle(self, engines: list[SyncEngine] | None = None, rounds: int = 4) -> None:
        """Run every client until a whole sweep changes nothing anywhere."""
        engines = engines or self.engines
        for _ in range(rounds):
            changed = False
            for e in engines:
                rep = e.run_once()
                assert rep.converged, rep.to_dict()
                changed = changed or bool(rep.applied)
            if not changed:
                return
        raise AssertionError("clients did not settle")

    def close(self) -> None:
        for e in self.engines:
            e.close()
            e.api.close()
        self.api.close()


@pytest.fixture
def clients(server: LiveServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Clients]:
    name = "u" + str(abs(hash(request.node.nodeid)) % 10**9)
    c = Clients(server, tmp_path, name)
    yield c
    c.close()


def local_tree(root: Path) -> dict[str, bytes | None]:
    """rel path (NFC) -> bytes for files, None for folders; the state folder left out."""
    out: dict[str, bytes | None] = {}
    for dirpath, dnames, fnames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".cubby" or rel_dir.startswith(".cubby" + os.sep):
            continue
        for d in dnames:
            rel = os.path.normpath(os.path.join(rel_dir, d))
            if rel != ".cubby":
                out[unicodedata.normalize("NFC", rel)] = None
        for f in fnames:
            rel = os.path.normpath(os.path.join(rel_dir, f))
            out[unicodedata.normalize("NFC", rel)] = Path(dirpath, f).read_bytes()
    return out


def server_tree(api: ApiClient) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for e in api.list("/", recursive=True):
        rel = e.path.lstrip("/")
        out[rel] = b"".join(api.download(e.path)) if e.kind == "file" else None
    return out
