"""A sync client whose notification role is unreachable says so (its log and `cubby status`),
keeps syncing by polling, keeps retrying push, and says so again when push comes back."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from cubby.cli import main
from cubby.client.api import ApiClient
from cubby.client.notify import PushWaiter
from cubby.client.push_status import PushStatus
from cubby.client.sync.daemon import SyncDaemon
from cubby.client.sync.engine import SyncEngine
from tests.conftest import require_service
from tests.helpers.live_server import LiveServer

pytestmark = pytest.mark.slow


def status(folder: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["--json", "status", str(folder)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_unreachable_notify_is_loud_and_push_is_retried(tmp_path: Path) -> None:
    require_service("redis")
    data = tmp_path / "data"
    broker = f"redis://127.0.0.1:6379/0?prefix=t{uuid.uuid4().hex[:12]}"
    notify = LiveServer(data, role="notify", extra_args=["--broker", broker])
    notify.stop()  # not running: its port refuses connections
    meta = LiveServer(data, role="meta,blocks", extra_args=["--broker", broker, "--advertise-notify", notify.url])
    meta.start()
    token = meta.add_user("alice")
    root, other = tmp_path / "a", tmp_path / "b"
    events: list[dict[str, Any]] = []
    engine = SyncEngine(root, ApiClient(meta.url, token), host="a", emit=events.append)
    writer = SyncEngine(other, ApiClient(meta.url, token), host="b")
    stop = threading.Event()
    runner: threading.Thread | None = None
    try:
        engine.run_once()
        report = PushStatus(root / ".cubby", events.append).report
        waiter = PushWaiter(engine.api, fallback_min=0.2, fallback_max=1.0, report=report)
        runner = threading.Thread(target=SyncDaemon(engine).run, args=(stop, waiter), kwargs={"watch": False}, daemon=True)
        runner.start()

        wait_for(lambda: any(e.get("event") == "push_unavailable" for e in events), "the client to say push is down")
        lines = status(root)
        assert lines[-1]["push"] is False
        warning = next(line for line in lines if "push_detail" in line)
        assert notify.url.removeprefix("http://") in warning["push_detail"]

        # Still syncing, by polling.
        (other / "one.txt").write_text("one")
        writer.run_once()
        wait_for(lambda: (root / "one.txt").exists(), "a polled change to arrive")

        notify.start()  # push comes back without a restart of the client
        auth = {"Authorization": f"Bearer {token}"}
        wait_for(lambda: httpx.get(notify.url + "/api/v1/notify", headers=auth).json()["subscribers"] >= 1,
                 "the client's long-poll")
        (other / "two.txt").write_text("two")
        writer.run_once()
        wait_for(lambda: any(e.get("event") == "push_restored" for e in events), "the client to use push again")
        wait_for(lambda: (root / "two.txt").exists(), "a pushed change to arrive")
        assert waiter.pushing
        assert status(root)[-1]["push"] is True
        assert not any("push_detail" in line for line in status(root))
    finally:
        stop.set()
        engine.trigger.set()
        if runner is not None:
            runner.join(timeout=30)
        engine.close()
        writer.close()
        meta.stop()
        notify.stop()
