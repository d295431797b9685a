"""Many processes opening one empty database at once all come up (the schema is created once,
under the migration lock), on every engine."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import create_engine, inspect

from tests.helpers.live_server import ROOT

OPEN = (
    "import sys\n"
    "from cubby.metadata.store import open_store\n"
    "open_store(sys.argv[1]).close()\n"
)


def test_eight_processes_start_at_once_on_an_empty_database(db_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN, db_url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    results = [(p.wait(timeout=240), p.stderr.read().decode() if p.stderr else "") for p in procs]
    failed = [err[-1500:] for code, err in results if code != 0]
    assert not failed, failed[0]
    engine = create_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "nodes", "journal", "namespaces"} <= tables
