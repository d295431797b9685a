"""The front of every request (`cubby.server.front`), over real HTTP on loopback: one JSON log
line per request with the same fields in the same order, and the request counted under its
route template with its status."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import httpx

from tests.server.conftest import Users

FIELDS = [
    "ts", "level", "logger", "msg", "method", "path", "status", "duration_ms", "user_id", "error_code",
    "bytes_in", "bytes_out",
]


def request_lines(users: Users, path: str) -> list[dict[str, Any]]:
    """The request log lines for ``path`` (the server writes each as its answer is sent)."""
    for _ in range(100):
        lines = [
            json.loads(line) for line in users.server.logs().splitlines()
            if line.startswith("{") and '"msg":"request"' in line
        ]
        found = [d for d in lines if d.get("path") == path]
        if found:
            return found
        time.sleep(0.05)
    return []


def metric(url: str, route: str, method: str, status: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if (
            line.startswith("cubby_http_requests_total{")
            and f'route="{route}"' in line and f'method="{method}"' in line and f'status="{status}"' in line
        ):
            return float(line.split()[-1])
    return 0.0


def test_a_commit_is_logged_once_with_its_user_bytes_and_status(users: Users) -> None:
    name = f"/front-{uuid.uuid4().hex}"
    digest = hashlib.sha256(name.encode()).hexdigest()
    body = json.dumps({"path": name, "size": 3, "chunks": [{"hash": digest, "size": 3}]}).encode()
    user_id = users.alice.account()["user_id"]
    before = metric(users.server.url, "/api/v1/files/commit", "POST", "200")
    with users.raw(users.alice_token) as c:
        r = c.post("/api/v1/files/commit", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["status"] == "need_chunks"
    [line] = [d for d in request_lines(users, "/api/v1/files/commit") if d["bytes_in"] == len(body)][-1:]
    assert list(line) == FIELDS
    assert line["level"] == "info" and line["logger"] == "cubby.access"
    assert line["method"] == "POST" and line["status"] == 200
    assert line["user_id"] == user_id and line["error_code"] is None
    assert line["bytes_out"] == len(r.content)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert metric(users.server.url, "/api/v1/files/commit", "POST", "200") == before + 1


def test_an_error_names_its_code_and_a_stranger_no_user(users: Users) -> None:
    missing = f"/missing-{uuid.uuid4().hex}"
    with users.raw(users.alice_token) as c:
        r = c.get("/api/v1/files/stat", params={"path": missing})
    assert r.status_code == 404
    with users.raw("not-a-token") as stranger:
        refused = stranger.post(
            "/api/v1/files/mkdir", content=b'{"path": "/x"}', headers={"content-type": "application/json"}
        )
    assert refused.status_code == 401
    lines = request_lines(users, "/api/v1/files/stat")
    assert any(d["status"] == 404 and d["error_code"] == "not_found" and d["user_id"] is not None for d in lines)
    strangers = [d for d in request_lines(users, "/api/v1/files/mkdir") if d["status"] == 401]
    assert strangers and strangers[-1]["user_id"] is None and strangers[-1]["error_code"] == "unauthorized"
    assert strangers[-1]["bytes_in"] == len(b'{"path": "/x"}')  # the unread body, drained before the answer


def test_an_unknown_path_is_counted_as_other(users: Users) -> None:
    before = metric(users.server.url, "other", "GET", "404")
    assert httpx.get(users.server.url + f"/no-such-{uuid.uuid4().hex}").status_code == 404
    assert metric(users.server.url, "other", "GET", "404") == before + 1
