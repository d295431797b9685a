"""Database URLs as people type them: ``postgresql://``, ``postgres://``, ``mysql://`` and
``mariadb://`` open the real servers with the drivers cubby installs; anything else is one
line from the CLI, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cubby.metadata.engine import UnsupportedDatabase, database_url
from cubby.metadata.schema import drop_all
from cubby.metadata.store import open_store
from tests.conftest import db_url_for

CUBBY = [sys.executable, "-m", "cubby.cli"]


def typed(url: str, scheme: str) -> str:
    """``url`` written with a bare scheme, as a person or a hosting panel writes it."""
    return f"{scheme}://{url.split('://', 1)[1]}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CUBBY, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("engine", "scheme"),
    [("postgresql", "postgresql"), ("postgresql", "postgres"), ("mariadb", "mysql"), ("mariadb", "mariadb")],
)
def test_bare_schemes_open_the_real_server(engine, scheme, tmp_path_factory):
    url = db_url_for(engine, tmp_path_factory)
    drop_all(url)
    store = open_store(typed(url, scheme))
    try:
        _, token = store.create_user(f"u-{scheme}")
        assert store.authenticate(token).name == f"u-{scheme}"
    finally:
        store.close()
    # The command line takes the same URL.
    r = cli("user", "add", f"v-{scheme}", "--db", typed(url, scheme))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("cby_")


def test_each_scheme_gets_the_installed_driver():
    assert database_url("postgres://u:pw@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql://h/db").drivername == "postgresql+psycopg"
    assert database_url("mysql://h/db").drivername == "mysql+pymysql"
    assert database_url("mariadb://h/db").drivername == "mariadb+pymysql"
    assert database_url("postgresql+psycopg://h/db").drivername == "postgresql+psycopg"
    assert database_url("sqlite:////tmp/x.db").drivername == "sqlite"
    for bad in ("mongodb://h/db", "postgresql+psycopg2://h/db", "mysql+mysqldb://h/db", "oracle://h/db", "not a url"):
        with pytest.raises(UnsupportedDatabase) as exc:
            database_url(bad)
        assert "postgresql://" in exc.value.message


@pytest.mark.parametrize("url", ["mongodb://h/db", "postgresql+psycopg2://u:secret@h/db", "nonsense"])
def test_unsupported_url_is_one_line_from_the_cli(url, tmp_path: Path):
    r = cli("user", "add", "someone", "--db", url)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "[unsupported_database]" in lines[0], r.stderr
    assert "secret" not in r.stderr
