"""Existing data keeps working (issue 11.5): a data folder written by the release before packs
(one file per chunk, made here by that release's own store code, taken from git) is served as
it is by today's server, and `cubby admin migrate-blocks` moves it into packs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from tests.helpers.live_server import ROOT, LiveServer

RELEASE_BEFORE_PACKS = "e894f18"
CUBBY = [sys.executable, "-m", "cubby"]


def _old_release(dest: Path) -> Path:
    """The source tree of the release before packs, from this repository's history."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", RELEASE_BEFORE_PACKS, "src"], capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"this checkout has no git history to take the old release from: {exc}")
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")
    return dest / "src"


OLD_WRITER = """
import hashlib, sys
from pathlib import Path
from cubby.blockstore.local import LocalBlockStore
from cubby.metadata.store import open_store
from cubby.model import ChunkRef, CommitRequest

data, src = Path(sys.argv[1]), Path(sys.argv[2])
data.mkdir(parents=True, exist_ok=True)
store = open_store(f"sqlite:///{data / 'meta.db'}")
blocks = LocalBlockStore(data / "blocks")
user, token = store.create_user("erin")
for name in ("a.bin", "b.txt"):
    payload = (src / name).read_bytes()
    items = [(hashlib.sha256(p).hexdigest(), p) for p in (payload[i : i + 300_000] for i in range(0, len(payload), 300_000))]
    store.ingest_chunks(user.root_ns, items, blocks)
    refs = tuple(ChunkRef(h, len(p)) for h, p in items)
    assert store.commit(user.id, user.root_ns, CommitRequest("/" + name, len(payload), refs)).committed
store.close()
print(token)
"""


def _content(server: LiveServer, token: str, path: str) -> bytes:
    r = httpx.get(f"{server.url}/api/v1/content{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def _old_store(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    """A data folder the release before packs wrote (``/a.bin`` and ``/b.txt`` of ``files``,
    kept in ``tmp_path`` too), and the token of its user."""
    old_src = _old_release(tmp_path / "old")
    data = tmp_path / "data"
    for name, payload in files.items():
        (tmp_path / name.strip("/")).write_bytes(payload)
    # The old release's own store code creates the user and stores the files' chunks.
    made = subprocess.run(
        [sys.executable, "-c", OLD_WRITER, str(data), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(old_src)}, capture_output=True, text=True, timeout=120, check=True,
    )
    return data, made.stdout.strip()


def test_a_store_of_the_previous_release_is_served_then_migrated(tmp_path: Path) -> None:
    rng = random.Random(5)
    files = {"/a.bin": rng.randbytes(2_500_000), "/b.txt": b"hello packs " * 100_000}
    data, token = _old_store(tmp_path, files)
    legacy = [p for p in (data / "blocks").glob("??/*") if p.is_file()]
    assert len(legacy) > 3 and not (data / "blocks" / "packs").exists()

    with LiveServer(data) as new:  # today's server: old chunks read where they are
        assert {n: _content(new, token, n) for n in files} == files
        files["/c.bin"] = rng.randbytes(1_000_000)
        (tmp_path / "c.bin").write_bytes(files["/c.bin"])
        with ApiClient(new.url, token) as api:
            upload_file(api, tmp_path / "c.bin", "/c.bin")
        assert list((data / "blocks" / "packs").rglob("*.pack"))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(
        [*CUBBY, "admin", "migrate-blocks", "--data", str(data), "--json"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert out[-1]["done"]["chunks"] == len(legacy) and out[-1]["done"]["removed"] == len(legacy)
    assert all("progress" in o for o in out[:-1]) and out[:-1]
    assert not [p for p in (data / "blocks").glob("??/*") if p.is_file()]

    with LiveServer(data) as new:
        assert {n: _content(new, token, n) for n in files} == files
    p = subprocess.run([*CUBBY, "gc", "--data", str(data), "--json"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["deleted"] == 0
    p = subprocess.run(
        [*CUBBY, "admin", "migrate-blocks", "--data", str(data), "--json"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert json.loads(p.stdout.splitlines()[-1])["done"]["chunks"] == 0  # nothing left: a no-op


def test_check_reads_the_previous_release_store_and_a_repair_lets_an_upload_mend_it(tmp_path: Path) -> None:
    """`cubby admin check --read-data` hashes the earlier release's chunk files too: one with a
    byte flipped at rest is found, and the file it breaks named (without --read-data only
    their presence is checked). `--repair` forgets the chunk and deletes its file; a put of
    the file then sends the chunk again, into a pack, the file downloads whole, and the check
    is clean."""
    # /a.bin is one slice of the old writer's and one chunk of today's (below FastCDC's least
    # cut): the same chunk name, which a put of it today sends again.
    files = {"/a.bin": random.Random(6).randbytes(200_000), "/b.txt": b"hello packs " * 50_000}
    data, token = _old_store(tmp_path, files)
    first = hashlib.sha256(files["/a.bin"]).hexdigest()
    path = data / "blocks" / first[:2] / first
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 1
    path.write_bytes(bytes(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def check(*extra: str) -> tuple[int, dict[str, Any]]:
        p = subprocess.run(
            [*CUBBY, "--json", "admin", "check", "--data", str(data), *extra],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        return p.returncode, json.loads(p.stdout)

    code, shallow = check()
    assert code == 0 and shallow["ok"] and shallow["held_chunks"] == 2  # b.txt repeats one slice
    code, deep = check("--read-data")
    assert code == 1 and deep["chunks_read"] == 2 and deep["chunks_corrupt"] == 1
    assert [f["path"] for f in deep["files"]] == ["/a.bin"]
    code, repaired = check("--read-data", "--repair")
    assert code == 1 and repaired["chunks_forgotten"] == 1 and not path.exists()
    with LiveServer(data) as new:
        with ApiClient(new.url, token) as api:
            sent = upload_file(api, tmp_path / "a.bin", "/again.bin")
        assert sent.chunks_sent == 1
        assert _content(new, token, "/a.bin") == files["/a.bin"] and _content(new, token, "/b.txt") == files["/b.txt"]
    code, after = check("--read-data")
    assert code == 0 and after["ok"] and after["chunks_read"] == 2
