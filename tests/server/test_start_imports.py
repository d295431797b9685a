"""A server on the embedded default loads no library it does not use: every process of a
deployment starts (each worker, each role, each restart; the test suite starts about three
hundred), and a start is mostly imports (`bench/start_cost.py`).

Checked in a fresh interpreter that builds the app as `cubby serve` does, with all three roles
on SQLite and a local folder: psycopg is for PostgreSQL, botocore for S3, Jinja2 for the first
page, and Alembic for a database not yet at the newest revision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD = """
import sys
from pathlib import Path

from cubby.config import Config
from cubby.server.app import ROLES, build_app
from cubby.server.context import build_context

build_app(build_context(Config(data_dir=Path(sys.argv[1])), ROLES), ROLES)
print(" ".join(sorted(m for m in ("alembic", "botocore", "jinja2", "psycopg") if m in sys.modules)))
"""


def _loaded_by_a_start(data: Path) -> str:
    out = subprocess.run([sys.executable, "-c", BUILD, str(data)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_a_start_on_the_embedded_default_loads_only_what_it_uses(tmp_path: Path) -> None:
    assert _loaded_by_a_start(tmp_path / "data") == "alembic"  # a new database: migrated
    assert _loaded_by_a_start(tmp_path / "data") == ""  # at the newest revision: one read
