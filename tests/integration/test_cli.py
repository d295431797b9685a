"""The `cubby` command, run as a real process against a real server on loopback."""

from __future__ import annotations

import json
import os
import pty
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.live_server import LiveServer
from tests.helpers.unprivileged import reachable_folder, with_permissions

CUBBY = [str(Path(sys.executable).with_name("cubby"))] if Path(sys.executable).with_name("cubby").exists() else [
    sys.executable, "-m", "cubby"
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("cli") / "data") as s:
        yield s


def cubby(server: LiveServer, token: str, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
    p = subprocess.run([*CUBBY, *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"cubby {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def lines(p: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def test_dedup_across_users_and_a_one_byte_insert(server, tmp_path):
    alice, bob = server.add_user("alice"), server.add_user("bob")
    data = random.Random(64).randbytes(64 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    (first,) = lines(cubby(server, alice, "--json", "put", str(src), "/big.bin"))
    assert first["chunks_sent"] == first["chunks"] > 0 and first["bytes_sent"] == len(data)
    (second,) = lines(cubby(server, bob, "put", "--json", str(src), "/mine/big.bin"))
    assert second["chunks_sent"] == 0 and second["bytes_sent"] == 0 and second["size"] == len(data)
    for token, remote, out in [(alice, "/big.bin", "a.bin"), (bob, "/mine/big.bin", "b.bin")]:
        (got,) = lines(cubby(server, token, "--json", "get", remote, str(tmp_path / out)))
        assert got["size"] == len(data) and got["path"] == remote
        assert (tmp_path / out).read_bytes() == data
    edited = data[: len(data) // 2] + b"\x01" + data[len(data) // 2 :]
    src.write_bytes(edited)
    (third,) = lines(cubby(server, bob, "--json", "put", str(src), "/mine/big.bin"))
    assert 1 <= third["chunks_sent"] <= 3 and third["bytes_sent"] < 3 * 4 * 1024 * 1024
    assert third["rev"] > second["rev"]
    history = lines(cubby(server, bob, "--json", "history", "/mine/big.bin"))
    assert [h["rev"] for h in history] == [third["rev"], second["rev"]]


def _count_chunks(server: LiveServer) -> int:
    """Chunks the server has stored and indexed (each durable in a pack before it is counted)."""
    from sqlalchemy import create_engine, func, select

    from cubby.metadata.schema import chunk_index

    engine = create_engine(server.metadata_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(chunk_index)).scalar_one())
    finally:
        engine.dispose()


def test_killed_upload_leaves_nothing_visible_and_resumes(server, tmp_path):
    token = server.add_user("carol")
    data = random.Random(96).randbytes(48 * 1024 * 1024)
    src = tmp_path / "slow.bin"
    src.write_bytes(data)
    before = _count_chunks(server)
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
    proc = subprocess.Popen([*CUBBY, "put", "--json", "--max-upload-rate", "8000000", str(src), "/slow.bin"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _count_chunks(server) < before + 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    arrived = _count_chunks(server) - before
    assert arrived >= 2
    ls = cubby(server, token, "--json", "ls", "/", check=False)
    assert [e["path"] for e in lines(ls)] == []  # nothing visible
    (done,) = lines(cubby(server, token, "--json", "put", str(src), "/slow.bin"))
    assert done["chunks_sent"] <= done["chunks"] - arrived, (done, arrived)
    cubby(server, token, "get", "/slow.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data


def test_interrupted_get_resumes(server, tmp_path):
    token = server.add_user("dave")
    data = random.Random(7).randbytes(40 * 1024 * 1024)
    (tmp_path / "f.bin").write_bytes(data)
    cubby(server, token, "put", str(tmp_path / "f.bin"), "/f.bin")
    out = tmp_path / "dl"
    out.mkdir()
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
    proc = subprocess.Popen([*CUBBY, "get", "--max-download-rate", "4000000", "/f.bin", str(out / "f.bin")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = out / ".f.bin.cubby-part"
    deadline = time.monotonic() + 60
    while (not part.exists() or part.stat().st_size < 8 * 1024 * 1024) and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "f.bin").exists()  # never visible half-written
    (done,) = lines(cubby(server, token, "--json", "get", "/f.bin", str(out / "f.bin")))
    assert done["bytes_received"] < len(data) - 4 * 1024 * 1024
    assert (out / "f.bin").read_bytes() == data and not part.exists()


def test_folders_round_trip_and_file_commands(server, tmp_path):
    token = server.add_user("erin")
    tree = tmp_path / "Projects"
    files = {"a.txt": b"alpha", "sub/b.txt": b"beta" * 1000, "sub/deeper/é ü.md": b"unicode", "empty.bin": b""}
    for rel, content in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    (tree / "empty-folder").mkdir()
    put = lines(cubby(server, token, "--json", "put", str(tree)))
    assert sorted(p["path"] for p in put) == sorted(f"/Projects/{k}" for k in files)
    listed = {e["path"] for e in lines(cubby(server, token, "--json", "ls", "-r", "/Projects"))}
    assert "/Projects/empty-folder" in listed and "/Projects/sub/deeper/é ü.md" in listed
    again = lines(cubby(server, token, "--json", "put", str(tree)))
    assert all(p["chunks_sent"] == 0 for p in again)
    cubby(server, token, "get", "/Projects", str(tmp_path / "copy"))
    for rel, content in files.items():
        assert (tmp_path / "copy" / rel).read_bytes() == content
    assert (tmp_path / "copy" / "empty-folder").is_dir()
    # A line per file whichever way results are printed (a group of them at a time): files
    # found unchanged by a second get, and a put's lines for a person.
    back = lines(cubby(server, token, "--json", "get", "/Projects", str(tmp_path / "copy")))
    assert sorted(g["path"] for g in back) == sorted(f"/Projects/{k}" for k in files)
    assert all(g["bytes_received"] == 0 for g in back)
    human = cubby(server, token, "put", str(tree), "/Again").stdout.splitlines()
    assert len(human) == len(files)
    assert {h.split()[1] for h in human} == {f"/Again/{k}" for k in files if " " not in k} | {"/Again/sub/deeper/é"}
    assert all(h.startswith("uploaded /Again/") for h in human)
    cubby(server, token, "mkdir", "/Archive")
    cubby(server, token, "mv", "/Projects/sub", "/Archive")
    assert {e["path"] for e in lines(cubby(server, token, "--json", "ls", "/Archive"))} == {"/Archive/sub"}
    cubby(server, token, "rm", "/Archive/sub/b.txt")
    gone = cubby(server, token, "ls", "/Archive/sub/b.txt", check=False)
    assert gone.returncode != 0 and "not_found" in gone.stderr and "Traceback" not in gone.stderr
    (rev,) = lines(cubby(server, token, "--json", "history", "/Archive/sub/b.txt"))
    cubby(server, token, "restore", "/Archive/sub/b.txt", str(rev["rev"]))
    cubby(server, token, "get", "/Archive/sub/b.txt", str(tmp_path / "restored.txt"))
    assert (tmp_path / "restored.txt").read_bytes() == files["sub/b.txt"]


def test_errors_are_messages_not_tracebacks(server, tmp_path):
    p = cubby(server, "cby_wrong", "ls", "/", check=False)
    assert p.returncode == 2 and "unauthorized" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*CUBBY, "ls", "/"], env={**os.environ, "CUBBY_URL": "http://127.0.0.1:9", "CUBBY_TOKEN": "x"},
                       capture_output=True, text=True)
    assert p.returncode == 3 and "cannot reach" in p.stderr


def _run_with_a_terminal_for_stderr(args: list[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """``args`` run with stdout a pipe and stderr a pseudo-terminal; what each received."""
    master, slave = pty.openpty()
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=300)
    finally:
        os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 65536):
            out += chunk
    except OSError:  # EIO: the terminal's other side is closed and everything was read
        pass
    finally:
        os.close(master)
    return p, out.decode("utf-8", "replace")


def test_gc_shows_its_progress_on_a_terminal_and_answers_one_line(tmp_path):
    """`cubby gc` keeps a line on stderr up to date while it sweeps and repacks, when stderr is
    a terminal; its result is one line on stdout either way, and a pipe gets nothing else."""
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("gina")
        for i in range(3):  # three uploads, three small packs: repacking merges them
            f = tmp_path / f"f{i}.bin"
            f.write_bytes(random.Random(i).randbytes(200_000))
            cubby(s, token, "put", str(f), f"/f{i}.bin")
    args = [*CUBBY, "--json", "gc", "--data", str(s.data_dir), "--grace", "0", "--pack-grace", "0"]
    p, err = _run_with_a_terminal_for_stderr(args)
    assert p.returncode == 0, err
    (result,) = lines(p)
    assert result["packs"]["packs_rewritten"] == 3 and result["deleted"] == 0
    assert "gc: examined 0 chunks" in err and "repack: rewrote 3 packs" in err
    piped = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and piped.stderr == ""
    assert list(lines(piped)[0]) == list(result)
    with LiveServer(tmp_path / "data") as s:  # the files survive the repack
        for i in range(3):
            cubby(s, token, "get", f"/f{i}.bin", str(tmp_path / f"g{i}.bin"))
            assert (tmp_path / f"g{i}.bin").read_bytes() == (tmp_path / f"f{i}.bin").read_bytes()


def test_a_wrong_blocks_folder_is_refused_by_every_command_and_changes_nothing(tmp_path):
    """A typo in ``--blocks``: the database indexes packs the named folder does not hold.
    `cubby serve` does not start, `cubby gc` and `cubby admin migrate-blocks` stop before they
    touch anything (exit 2, ``blocks_mismatch``, the folder named), and nothing is written to
    the wrong folder. The proof that gc swept nothing: a chunk uploaded and never committed is
    still there for the gc on the right store to remove; and the file still downloads."""
    import hashlib

    from cubby.client.api import ApiClient

    data = random.Random(7).randbytes(300_000)
    (tmp_path / "f.bin").write_bytes(data)
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("wes")
        cubby(s, token, "put", str(tmp_path / "f.bin"), "/f.bin")
        stray = random.Random(8).randbytes(5000)
        with ApiClient(s.url, token) as api:
            api.upload_chunks(int(api.account()["root_ns"]), [(hashlib.sha256(stray).hexdigest(), stray)])
    typo = tmp_path / "data" / "blokcs"
    base = ["--data", str(s.data_dir), "--blocks", str(typo)]
    for args in (
        ["gc", *base, "--grace", "0", "--pack-grace", "0"], ["admin", "migrate-blocks", *base], ["serve", *base, "--port", "0"]
    ):
        p = subprocess.run([*CUBBY, *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        assert "is serving" not in p.stderr and p.stderr.strip().endswith("[blocks_mismatch]"), p.stderr
        assert f"the block store {typo} holds none of the" in p.stderr
        assert not any(f.is_file() for f in typo.rglob("*"))
    swept = subprocess.run(
        [*CUBBY, "--json", "gc", "--data", str(s.data_dir), "--grace", "0", "--pack-grace", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert swept.returncode == 0, swept.stderr
    assert lines(swept)[0]["deleted"] == 1
    with LiveServer(tmp_path / "data") as s:
        cubby(s, token, "get", "/f.bin", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == data


def test_admin_check_finds_a_damaged_pack_and_names_the_files_it_breaks(tmp_path):
    """`cubby admin check` on a server's data: clean, it exits 0; a byte flipped at rest in a
    pack is not seen without --read-data and is with it (exit 1, the chunk counted corrupt,
    both files with that content named); a pack deleted is found without reading. It writes
    nothing: the store holds the same files before and after."""
    data = random.Random(9).randbytes(250_000)
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "b.txt").write_text("another pack\n")
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("ivy")
        cubby(s, token, "put", str(tmp_path / "a.bin"), "/a.bin")
        cubby(s, token, "put", str(tmp_path / "a.bin"), "/copy/a.bin")  # the same chunk, deduplicated
        cubby(s, token, "put", str(tmp_path / "b.txt"), "/b.txt")
    packs = sorted((s.data_dir / "blocks" / "packs").rglob("*.pack"))
    assert len(packs) == 2
    check = [*CUBBY, "--json", "admin", "check", "--data", str(s.data_dir)]

    def run(*more: str) -> tuple[int, dict]:
        p = subprocess.run([*check, *more], capture_output=True, text=True, timeout=120)
        return p.returncode, json.loads(p.stdout)

    code, clean = run("--read-data", "--files")
    assert code == 0 and clean["ok"] and clean["packs"] == 2 and clean["held_chunks"] == 2 and clean["chunks_read"] == 2
    assert clean["referenced_chunks"] == 2 and clean["chunks_missing"] == 0  # three files, two distinct chunks
    big = max(packs, key=lambda p: p.stat().st_size)
    raw = bytearray(big.read_bytes())
    raw[len(raw) // 2] ^= 1
    big.write_bytes(bytes(raw))
    code, quick = run()
    assert code == 0 and quick["ok"] and quick["chunks_read"] == 0
    code, deep = run("--read-data")
    assert code == 1 and not deep["ok"] and deep["chunks_corrupt"] == 1 and deep["files_damaged"] == 2
    assert [f["path"] for f in deep["files"]] == ["/a.bin", "/copy/a.bin"]
    small = min(packs, key=lambda p: p.stat().st_size)
    small.unlink()
    human = subprocess.run([*check[:1], *check[2:]], capture_output=True, text=True, timeout=120)
    assert human.returncode == 1 and "DAMAGED" in human.stdout
    assert f"missing pack: packs/{small.parent.name}/{small.name}" in human.stdout
    assert "damaged file: namespace 1 /b.txt (rev" in human.stdout
    assert sorted(p.name for p in (s.data_dir / "blocks").rglob("*") if p.is_file()) == [big.name]


def test_lost_packs_are_mended_by_uploads_of_the_same_bytes_and_check_repair_does_the_rest(tmp_path):
    """Both files' packs are lost from the store (a third pack stays). A small file mends itself:
    a put of a copy proves its chunk up front, the server cannot read its own copy, refuses the
    proof, stores the bytes the client then sends although its index names a place for them,
    and the original downloads whole again. A large file that replaces another commits first,
    and the server, which believes it holds every chunk, asks for none: the copy is as broken
    as the original. (A large file new at its path is streamed, proven before its commit, and
    would mend itself as the small one does.)
    `admin check --repair` forgets the lost chunks (and retires the lost packs); then a put of a
    copy sends them, and every file downloads byte-identical; the check finds no damage."""
    small = random.Random(10).randbytes(180_000)
    large = random.Random(11).randbytes(6 << 20)  # over KEEP_BYTES: replacing a file, committed before it is proven
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "large.bin").write_bytes(large)
    (tmp_path / "b.txt").write_text("kept\n")
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("rex")
        packs_before = set((s.data_dir / "blocks" / "packs").rglob("*.pack"))
        cubby(s, token, "put", str(tmp_path / "small.bin"), "/small.bin")
        cubby(s, token, "put", str(tmp_path / "large.bin"), "/large.bin")
        lost = set((s.data_dir / "blocks" / "packs").rglob("*.pack")) - packs_before
        cubby(s, token, "put", str(tmp_path / "b.txt"), "/b.txt")  # a pack that stays
    for pack in lost:
        pack.unlink()

    def get(s: LiveServer, name: str) -> subprocess.CompletedProcess[str]:
        return cubby(s, token, "get", f"/{name}", str(tmp_path / f"back-{name}"), check=False)

    with LiveServer(tmp_path / "data") as s:
        assert "is missing [corrupt_chunk]" in get(s, "small.bin").stderr
        (copy,) = lines(cubby(s, token, "--json", "put", str(tmp_path / "small.bin"), "/small-copy.bin"))
        assert copy["chunks_sent"] == 1
        assert get(s, "small.bin").returncode == 0 and (tmp_path / "back-small.bin").read_bytes() == small
        assert "chunks mended from an upload" in s.logs() and "run cubby admin check" in s.logs()
        cubby(s, token, "put", str(tmp_path / "b.txt"), "/large-copy.bin")  # the file it replaces
        (copy,) = lines(cubby(s, token, "--json", "put", str(tmp_path / "large.bin"), "/large-copy.bin"))
        assert copy["chunks_sent"] == 0
        assert get(s, "large-copy.bin").returncode == 2
    check = [*CUBBY, "--json", "admin", "check", "--data", str(s.data_dir)]
    p = subprocess.run([*check, "--repair"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout)
    assert report["chunks_lost"] == report["chunks_forgotten"] == copy["chunks"] and len(report["packs_missing"]) == 1
    # The failed download recorded every chunk of the lost pack; the small file's was mended.
    assert report["chunks_found_unreadable"] == copy["chunks"]
    assert [f["path"] for f in report["files"]] == ["/large-copy.bin", "/large.bin"]
    with LiveServer(tmp_path / "data") as s:
        (mend,) = lines(cubby(s, token, "--json", "put", str(tmp_path / "large.bin"), "/mend.bin"))
        assert mend["chunks_sent"] == mend["chunks"]
        for name, data in (("large.bin", large), ("large-copy.bin", large), ("small.bin", small), ("mend.bin", large)):
            assert get(s, name).returncode == 0 and (tmp_path / f"back-{name}").read_bytes() == data, name
    p = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["ok"], p.stdout
    assert json.loads(p.stdout)["chunks_found_unreadable"] == 0


def test_a_streamed_put_of_a_large_copy_mends_its_lost_pack(tmp_path):
    """A large file new at its path is proven before its commit (streamed): the server cannot
    read its own copy of the lost pack's chunks, refuses the proofs, and stores the bytes the
    client then sends, so the original downloads whole again."""
    large = random.Random(12).randbytes(6 << 20)
    (tmp_path / "large.bin").write_bytes(large)
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("rex")
        cubby(s, token, "put", str(tmp_path / "large.bin"), "/large.bin")
        lost = set((s.data_dir / "blocks" / "packs").rglob("*.pack"))
        (tmp_path / "b.txt").write_text("kept\n")
        cubby(s, token, "put", str(tmp_path / "b.txt"), "/b.txt")  # a pack that stays (the start check wants one)
    for pack in lost:
        pack.unlink()
    with LiveServer(tmp_path / "data") as s:
        (copy,) = lines(cubby(s, token, "--json", "put", str(tmp_path / "large.bin"), "/copy.bin"))
        assert copy["chunks_sent"] == copy["chunks"] > 1
        for name in ("large.bin", "copy.bin"):
            cubby(s, token, "get", f"/{name}", str(tmp_path / f"back-{name}"))
            assert (tmp_path / f"back-{name}").read_bytes() == large, name


def test_gc_repacks_around_a_lost_pack_and_says_to_check(tmp_path):
    """Three small packs to merge, one lost from the store: `cubby gc` merges the other two
    (a lost pack once stopped every repack), says one is missing and what to run, and the
    files that were readable still are. Once a download has failed on the lost one, gc also
    counts the chunk the server found unreadable."""
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("gus")
        for i in range(3):
            (tmp_path / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
            cubby(s, token, "put", str(tmp_path / f"f{i}.txt"), f"/f{i}.txt")
    packs = sorted((s.data_dir / "blocks" / "packs").rglob("*.pack"), key=lambda p: p.stat().st_mtime)
    assert len(packs) == 3
    packs[1].unlink()
    p = subprocess.run(
        [*CUBBY, "gc", "--data", str(s.data_dir), "--grace", "0", "--pack-grace", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "rewrote 2 packs" in p.stdout and "1 pack missing from the store: run cubby admin check" in p.stdout
    with LiveServer(tmp_path / "data") as s:
        for i in (0, 2):
            cubby(s, token, "get", f"/f{i}.txt", str(tmp_path / f"g{i}.txt"))
            assert (tmp_path / f"g{i}.txt").read_text() == f"file {i}\n" * (i + 1)
        assert cubby(s, token, "get", "/f1.txt", str(tmp_path / "g1.txt"), check=False).returncode == 2
    p = subprocess.run(
        [*CUBBY, "gc", "--data", str(s.data_dir), "--grace", "0", "--pack-grace", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0 and "1 chunk found unreadable by a server: run cubby admin check" in p.stdout, p.stdout


def test_a_pack_restored_after_a_failed_read_is_told_apart_by_check_and_its_finding_dropped(tmp_path):
    """A pack goes missing, a download fails on it (the server records its chunk unreadable),
    and the operator puts the pack back from a backup: `admin check` counts the finding,
    with --read-data says the chunk reads intact where it was found unreadable, and with
    --repair drops the finding; nothing is damaged or forgotten, and the file downloads."""
    data = random.Random(14).randbytes(60_000)
    (tmp_path / "f.bin").write_bytes(data)
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("ida")
        cubby(s, token, "put", str(tmp_path / "f.bin"), "/f.bin")
        (pack,) = (s.data_dir / "blocks" / "packs").rglob("*.pack")
        pack.rename(tmp_path / "backup.pack")
        assert cubby(s, token, "get", "/f.bin", str(tmp_path / "g.bin"), check=False).returncode == 2
        (tmp_path / "backup.pack").rename(pack)
    check = [*CUBBY, "--json", "admin", "check", "--data", str(s.data_dir)]
    for extra, intact in (([], 0), (["--read-data"], 1), (["--read-data", "--repair"], 1)):
        p = subprocess.run([*check, *extra], capture_output=True, text=True, timeout=120)
        report = json.loads(p.stdout)
        assert p.returncode == 0 and report["ok"] and report["chunks_forgotten"] == 0, p.stdout
        assert (report["chunks_found_unreadable"], report["findings_read_intact"]) == (1, intact), extra
    p = subprocess.run([*CUBBY, "admin", "check", "--data", str(s.data_dir)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "found unreadable" not in p.stdout, p.stdout
    with LiveServer(tmp_path / "data") as s:
        assert cubby(s, token, "get", "/f.bin", str(tmp_path / "g.bin")).returncode == 0
        assert (tmp_path / "g.bin").read_bytes() == data


def test_user_add_prints_the_token_last(tmp_path):
    p = subprocess.run([*CUBBY, "user", "add", "zed", "--data", str(tmp_path / "d")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip().splitlines()[-1]
    assert token.startswith("cby_") and len(token) > 30


def test_every_command_has_help():
    from click.testing import CliRunner

    from cubby.cli import main

    runner = CliRunner()
    stack = [([], main)]
    seen = 0
    while stack:
        prefix, cmd = stack.pop()
        r = runner.invoke(main, [*prefix, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, prefix
        seen += 1
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append(([*prefix, name], sub))
    assert seen >= 15


def test_a_command_talks_to_the_server_without_importing_httpx_own_cli(server):
    """`cubby` keeps httpx from importing its command-line tool (rich, pygments: about 50 ms of
    every command's start): the command works, and httpx's tool module was never loaded."""
    token = server.add_user("ivan")
    probe = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('HTTPX_CLI', sys.modules.get('httpx._main') is not None, 'rich.console' in sys.modules))\n"
        "sys.argv = ['cubby', '--json', 'ls', '/']\n"
        "runpy.run_module('cubby', run_name='__main__')\n"
    )
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
    p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "HTTPX_CLI False False" in p.stdout


@pytest.fixture
def open_base() -> Iterator[Path]:
    with reachable_folder() as base:
        yield base


def test_a_folder_put_uploads_what_it_can_and_names_what_it_left_out(server, open_base):
    """Links, a pipe, an unreadable file and an unreadable folder: the rest is uploaded, each
    left-out item is named on stderr with its reason, links are not followed (a linked folder
    does not become an empty folder), and the exit status says the upload is incomplete."""
    token = server.add_user("partial")
    base = open_base
    root = base / "tree"
    (root / "ok" / "deep").mkdir(parents=True)
    (root / "ok" / "a.txt").write_text("a")
    (root / "ok" / "deep" / "b.txt").write_text("b")
    (root / "locked").mkdir()
    (root / "locked" / "hidden.txt").write_text("h")
    (root / "secret.txt").write_text("s")
    (root / "to-file").symlink_to(root / "ok" / "a.txt")
    (root / "to-folder").symlink_to(root / "ok")
    (root / "dangling").symlink_to(base / "nothing-here")
    os.mkfifo(root / "pipe")
    for d in (base, root, root / "ok", root / "ok" / "deep"):
        d.chmod(0o755)
    for f in (root / "ok" / "a.txt", root / "ok" / "deep" / "b.txt"):
        f.chmod(0o644)
    (root / "locked").chmod(0o000)
    (root / "secret.txt").chmod(0o000)
    config = base / "config"
    config.mkdir(mode=0o777)
    config.chmod(0o777)
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "XDG_CONFIG_HOME": str(config), "HOME": str(base)}
    try:
        p = subprocess.run(
            [*with_permissions(), *CUBBY, "--json", "put", str(root), "/t"], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        (root / "locked").chmod(0o755)
        (root / "secret.txt").chmod(0o644)
    assert p.returncode == 2, p.stderr
    uploaded = {r["path"] for r in lines(p)}
    assert uploaded == {"/t/ok/a.txt", "/t/ok/deep/b.txt"}
    told = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("{")]
    left = {Path(t["not_uploaded"]["local"]).name: t["not_uploaded"]["code"] for t in told if "not_uploaded" in t}
    assert left == {
        "to-file": "symlink", "to-folder": "symlink", "dangling": "symlink", "pipe": "special_file",
        "locked": "unreadable", "secret.txt": "unreadable",
    }
    assert told[-1]["error"]["code"] == "partial_upload" and "2 items" in told[-1]["error"]["message"]
    listed = {e["path"] for e in lines(cubby(server, token, "--json", "ls", "-r", "/t"))}
    assert listed == {"/t/ok", "/t/ok/a.txt", "/t/ok/deep", "/t/ok/deep/b.txt"}  # no /t/to-folder, no /t/locked

    # Fixed, and run again: only what was missing is sent, and the command succeeds.
    again = cubby(server, token, "--json", "put", str(root), "/t")
    sent = {r["path"]: r for r in lines(again)}
    assert {p for p, r in sent.items() if not r["skipped"]} == {"/t/locked/hidden.txt", "/t/secret.txt"}
    assert "partial_upload" not in again.stderr


def test_putting_an_unreadable_folder_is_an_error_not_an_empty_upload(server, open_base):
    token = server.add_user("unlisted")
    base = open_base
    (base / "shut").mkdir(mode=0o000)
    (base / "shut").chmod(0o000)
    config = base / "config"
    config.mkdir()
    config.chmod(0o777)
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "XDG_CONFIG_HOME": str(config), "HOME": str(base)}
    try:
        p = subprocess.run(
            [*with_permissions(), *CUBBY, "put", str(base / "shut"), "/shut"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        (base / "shut").chmod(0o755)
    assert p.returncode == 2 and "is not readable" in p.stderr and "Traceback" not in p.stderr
    assert cubby(server, token, "ls", "/shut", check=False).returncode == 2  # nothing was made


def test_putting_a_pipe_or_a_device_is_refused_at_once(server, tmp_path):
    """Reading a named pipe waits for a writer, and a device may never end: named on the
    command line, either is refused, and nothing is made on the server."""
    token = server.add_user("pipes")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for local, remote in ((pipe, "/pipe"), (Path("/dev/zero"), "/zero")):
        p = cubby(server, token, "put", str(local), remote, check=False)  # a hang would end in the timeout
        assert p.returncode == 2 and "[special_file]" in p.stderr and "not a regular file" in p.stderr
        assert cubby(server, token, "ls", remote, check=False).returncode == 2


def test_a_local_file_the_command_cannot_write_is_named_in_one_line(server, open_base):
    token = server.add_user("nowrite")
    src = open_base / "in.txt"
    src.write_text("contents")
    cubby(server, token, "put", str(src), "/in.txt")
    shut = open_base / "shut"
    shut.mkdir()
    shut.chmod(0o555)  # no one may write here (root could: hence `with_permissions`)
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "XDG_CONFIG_HOME": str(open_base / "cfg")}
    for args in (("get", "/in.txt", str(shut / "out.txt")), ("--json", "get", "/in.txt", str(shut / "sub" / "out.txt"))):
        p = subprocess.run([*with_permissions(), *CUBBY, *args], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "permission_denied" in p.stderr and str(shut) in p.stderr
    assert list(shut.iterdir()) == []


def test_output_cut_short_by_its_reader_ends_quietly(server):
    """`cubby ls -r / | head`: the reader goes away; the command stops without a traceback."""
    token = server.add_user("piped")
    env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
    cubby(server, token, "mkdir", "/folder")
    p = subprocess.Popen([*CUBBY, "ls", "-r", "/"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before anything was written: the first line meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == ""


def test_a_file_in_the_way_of_a_folder_is_named_with_what_was_asked(server, tmp_path):
    token = server.add_user("inway")
    src = tmp_path / "f.txt"
    src.write_text("f")
    cubby(server, token, "put", str(src), "/f.txt")
    cases = [
        (("mkdir", "/f.txt/sub/deeper"), "/f.txt is a file, so it cannot hold /f.txt/sub/deeper"),
        (("put", str(src), "/f.txt/inner.txt"), "/f.txt is a file, so it cannot hold /f.txt/inner.txt"),
        (("mv", "/f.txt", "/f.txt/moved.txt"), "/f.txt"),
        (("mkdir", "/f.txt"), "/f.txt is a file, not a folder"),
    ]
    for args, words in cases:
        p = cubby(server, token, *args, check=False)
        assert p.returncode == 2 and words in p.stderr and "[" in p.stderr, (args, p.stderr)
    assert [e["path"] for e in lines(cubby(server, token, "--json", "ls", "/"))] == ["/f.txt"]


def test_a_folder_download_is_not_carried_outside_by_a_link_already_there(server, tmp_path):
    """`cubby get /folder DIR` where DIR holds links: one to a folder elsewhere is refused
    (the server's files would land there), one at a file's own name is replaced by the file,
    never written through."""
    token = server.add_user("links")
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.txt").write_text("deep")
    (src / "top.txt").write_text("top")
    cubby(server, token, "put", str(src), "/tree")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a").symlink_to(outside)
    (dest / "top.txt").symlink_to(outside / "victim.txt")
    p = cubby(server, token, "get", "/tree", str(dest), check=False)
    assert p.returncode == 2 and "[unsafe_path]" in p.stderr and "Traceback" not in p.stderr
    assert sorted(x.name for x in outside.iterdir()) == ["victim.txt"]
    (dest / "a").unlink()
    cubby(server, token, "get", "/tree", str(dest))
    assert (outside / "victim.txt").read_text() == "keep me"
    assert not (dest / "top.txt").is_symlink() and (dest / "top.txt").read_text() == "top"
    assert (dest / "a" / "b" / "deep.txt").read_text() == "deep"


def test_a_token_is_named_as_an_argument_or_with_label(server):
    token = server.add_user("namer")
    made = [lines(cubby(server, token, "--json", "token", "create", *args))[0] for args in (["laptop"], ["--label", "phone"])]
    assert all(m["token"] for m in made)
    listed = {t["id"]: t["label"] for t in lines(cubby(server, token, "--json", "token", "ls"))}
    assert [listed[m["id"]] for m in made] == ["laptop", "phone"]
    both = cubby(server, token, "token", "create", "a", "--label", "b", check=False)
    assert both.returncode == 2 and "once" in both.stderr


def test_user_ls_lists_every_user_with_the_tokens_still_valid(tmp_path):
    from click.testing import CliRunner

    from cubby.cli import main
    from cubby.metadata.store import open_store

    data = tmp_path / "data"
    data.mkdir()
    store = open_store(f"sqlite:///{data / 'meta.db'}")
    try:
        zed, _ = store.create_user("zed")
        store.create_user("amy")
        (first,) = store.list_tokens(zed.id)
        store.create_token(zed.id, "laptop")
        store.revoke_token(zed.id, int(first["id"]))
    finally:
        store.close()
    p = subprocess.run([*CUBBY, "--json", "user", "ls", "--data", str(data)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [(u["name"], u["tokens"]) for u in lines(p)] == [("zed", 1), ("amy", 1)]  # by id: the order they were made
    human = CliRunner().invoke(main, ["user", "ls", "--data", str(data)])
    assert human.exit_code == 0 and "zed" in human.output and "1 token" in human.output
    missing = CliRunner().invoke(main, ["user", "ls", "--data", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no cubby server data" in missing.output
