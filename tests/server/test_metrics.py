"""``GET /metrics``: Prometheus text that counts what happened, by route template, never by
raw path (paths hold file names and link tokens)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from cubby.metadata.store import open_store
from tests.helpers.live_server import LiveServer


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in got.items() if n == name and all((k, lv) in ls for k, lv in labels.items()))


def test_metrics_count_requests_transactions_and_block_bytes(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    (tmp_path / "secret-name.txt").write_bytes(payload)
    with LiveServer(tmp_path / "data") as s:
        token = s.add_user("mo")
        before = samples(s.url)
        with ApiClient(s.url, token) as api:
            for _ in range(3):
                api.account()
            after_accounts = samples(s.url)
            upload_file(api, tmp_path / "secret-name.txt", "/secret-name.txt")
            api.stat("/secret-name.txt")
            link = api.create_link("/secret-name.txt")
        assert httpx.get(link["url"]).status_code == 200
        httpx.get(s.url + "/api/v1/files/stat", params={"path": "/x"})  # no token: 401
        got = samples(s.url)
        text = httpx.get(s.url + "/metrics").text

    accounts = value(after_accounts, "cubby_http_requests_total", route="/api/v1/account", method="GET", status="200")
    assert accounts - value(before, "cubby_http_requests_total", route="/api/v1/account") == 3
    assert value(got, "cubby_http_requests_total", route="/api/v1/files/stat", status="401") == 1
    assert value(got, "cubby_http_request_seconds_count", route="/api/v1/files/commit") >= 2
    assert value(got, "cubby_db_transactions_total", kind="write") > value(before, "cubby_db_transactions_total", kind="write")
    assert value(got, "cubby_db_transactions_total", kind="read") > 0
    assert value(got, "cubby_blockstore_bytes_total", op="put") >= len(payload)
    assert value(got, "cubby_blockstore_bytes_total", op="get") >= len(payload)  # the link download
    # nothing identifying: neither the file's name nor the link's token is a label anywhere
    assert "secret-name" not in text and link["token"] not in text


def test_the_lean_notify_front_serves_metrics_with_its_waiting_connections(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'meta.db'}"
    with LiveServer(tmp_path / "notify", db_url=db, role="notify") as notify:
        token = notify.add_user("nia")
        headers = {"Authorization": f"Bearer {token}"}
        ns = httpx.get(notify.url + "/api/v1/notify", headers=headers).status_code
        assert ns == 200
        with httpx.Client(timeout=60) as waiting:
            store = open_store(db)
            try:
                root = store.authenticate(token).root_ns
                head = store.head(root)
            finally:
                store.close()

            def wait() -> None:
                # The long poll outlives the test's checks: the server stopping under it (its
                # connection cut mid-read) is how it ends, not a failure.
                with contextlib.suppress(httpx.TransportError):
                    waiting.post(
                        notify.url + "/api/v1/notify/longpoll", json={"cursor": {str(root): head}, "timeout": 30},
                        headers=headers)

            t = threading.Thread(target=wait)
            t.daemon = True
            t.start()
            got: dict = {}
            for _ in range(100):
                got = samples(notify.url)
                if value(got, "cubby_notify_connections") >= 1:
                    break
                time.sleep(0.1)
            assert value(got, "cubby_notify_connections") == 1
