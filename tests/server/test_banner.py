"""What `cubby serve` prints at start, through the real command: the database password masked
(a service manager keeps this in its journal), and once per server, not once per worker."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL, require_service, worker_database
from tests.helpers.fresh_db import fresh_database
from tests.helpers.live_server import LiveServer

SECRET = "s3cret-banner-pw"


def test_the_database_password_is_masked_in_what_serve_prints(tmp_path: Path) -> None:
    require_service("postgresql")
    # Emptied first: it indexes packs of earlier tests that this data folder does not hold,
    # and a blocks process refuses such a store at start (`cubby.blockstore.startcheck`).
    fresh_database(worker_database(POSTGRES_URL))
    url = make_url(worker_database(POSTGRES_URL)).set(password=SECRET).render_as_string(hide_password=False)
    with LiveServer(tmp_path / "srv", db_url=url) as server:
        # The server is up and the password worked (trust accepts any).
        server.add_user(f"ann-{uuid.uuid4().hex[:8]}")
        logs = server.logs()
    assert "cubby is serving" in logs
    assert SECRET not in logs
    assert ":***@127.0.0.1" in logs


def test_a_server_of_two_workers_prints_its_banner_once(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", extra_args=["--workers", "2"]) as server:
        server.add_user("bob")
        logs = server.logs()
    assert logs.count("cubby is serving") == 1
    assert logs.count("add a user:") == 1
