"""`cubby admin move-namespace`: the move, its progress on stderr, and its errors with codes,
each with nothing changed (PostgreSQL + PostgreSQL, PostgreSQL + MariaDB)."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner
from sqlalchemy import update

from cubby.blockstore.memory import MemoryBlockStore
from cubby.cli import main
from cubby.metadata import nscopy
from cubby.metadata.leases import Owner
from cubby.metadata.schema import placements
from cubby.metadata.store import open_store
from tests.metadata.conftest import put_file


def run(a_url: str, b_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main,
        ["--json", "admin", "move-namespace", *args, "--directory", a_url, "--shard", f"a={a_url}", "--shard", f"b={b_url}"],
    )
    return result.exit_code, result.stdout, result.stderr


def test_move_namespace_moves_and_refuses_with_codes(two_urls):
    a_url, b_url = two_urls
    store = open_store(a_url, shards={"a": a_url, "b": b_url}, place_new="a")
    try:
        alice, _ = store.create_user("alice")
        for i in range(5):
            put_file(store, MemoryBlockStore(), alice.id, alice.root_ns, f"/f{i}.txt")
        before = nscopy.rows_of(store.router.shard_db("a"), alice.root_ns)
    finally:
        store.close()
    ns = str(alice.root_ns)

    code, out, err = run(a_url, b_url, ns, "--to", "b")
    assert code == 0, err
    done = json.loads(out.splitlines()[-1])
    assert (done["source"], done["target"], done["epoch"]) == ("a", "b", 2)
    steps = [json.loads(line)["progress"] for line in err.splitlines()]
    assert [s for s in steps if s != "copying"] == ["moving", "copied", "sealed", "placed", "deleted"]

    def error(*args: str) -> str:
        code, _out, err = run(a_url, b_url, *args)
        assert code == 2, err
        return str(json.loads(err.splitlines()[-1])["error"]["code"])

    assert error(ns, "--to", "b") == "already_there"
    assert error(ns, "--to", "nowhere") == "unknown_shard"
    assert error("999999", "--to", "a") == "unknown_namespace"
    code, _out, err = run(a_url, b_url, ns, "--to", "c", "--shard", f"c={b_url}")
    assert code == 2 and json.loads(err.splitlines()[-1])["error"]["code"] == "same_database"
    store = open_store(a_url, shards={"a": a_url, "b": b_url})
    try:
        # Another live process's move (this one's owner, alive): refused, and left alone.
        me = Owner.this_process()
        store.router.directory.write(
            lambda c: c.execute(
                update(placements).where(placements.c.ns_id == alice.root_ns)
                .values(state="moving", owner=str(me), lease_until=time.time() + 60)
            )
        )
        assert error(ns, "--to", "a") == "move_in_progress"
        assert store.router.placement(alice.root_ns).state == "moving"
        assert nscopy.rows_of(store.router.shard_db("b"), alice.root_ns) == before
        assert not nscopy.holds(store.router.shard_db("a"), alice.root_ns)
    finally:
        store.close()


def test_move_namespace_help():
    result = CliRunner().invoke(main, ["admin", "move-namespace", "--help"])
    assert result.exit_code == 0
    assert "--to SHARD" in result.output and "move_in_progress" in result.output
