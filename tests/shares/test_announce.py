"""Membership changes reach the notification seam: through real HTTP on loopback against a
server running in this process, every share, accept, removal, leave and unshare calls
`ServerContext.account_changed` for each user concerned and `committed` for every journal it
moved (what the notification role listens to)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from cubby.client.api import ApiClient
from cubby.config import Config
from cubby.server.app import build_app
from cubby.server.context import build_context
from tests.helpers.live_server import listening_socket
from tests.shares.conftest import file_bytes, put_many


@pytest.fixture
def heard(tmp_path) -> Iterator[tuple[str, object, list, list]]:
    sock = listening_socket()
    port = sock.getsockname()[1]
    ctx = build_context(Config(data_dir=tmp_path / "data", port=port), ("meta", "blocks"))
    accounts: list[int] = []
    commits: list[tuple[int, int]] = []
    ctx.account_listeners.append(accounts.append)
    ctx.commit_listeners.append(lambda ns, head: commits.append((ns, head)))
    server = uvicorn.Server(uvicorn.Config(build_app(ctx, ("meta", "blocks")), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", ctx.store, accounts, commits
    server.should_exit = True
    thread.join()


def test_membership_changes_are_announced(heard):
    url, store, accounts, commits = heard
    users = {n: store.create_user(n) for n in ("alice", "bob", "carol")}
    api = {n: ApiClient(url, tok) for n, (u, tok) in users.items()}
    uid = {n: u.id for n, (u, _) in users.items()}
    root = {n: u.root_ns for n, (u, _) in users.items()}
    try:
        put_many(api["alice"], {f"/F/x{i}.txt": file_bytes(i) for i in range(3)})

        def step(fn) -> tuple[set[int], dict[int, int]]:
            accounts.clear()
            commits.clear()
            fn()
            return set(accounts), dict(commits)

        heard_users, heads = step(lambda: api["alice"].share("/F", "bob", "editor"))
        ns = api["alice"].shares()[0]["ns_id"]
        assert heard_users == {uid["alice"], uid["bob"]}
        assert heads == {root["alice"]: store.head(root["alice"]), ns: store.head(ns)}
        assert step(lambda: api["bob"].accept_share(ns)) == ({uid["bob"]}, {root["bob"]: store.head(root["bob"])})
        api["alice"].share("/F", "carol", "viewer")
        api["carol"].accept_share(ns)
        assert step(lambda: api["carol"].leave_share("/F")) == ({uid["carol"]}, {root["carol"]: store.head(root["carol"])})
        assert step(lambda: api["alice"].remove_member("/F", "bob")) == (
            {uid["bob"]}, {root["bob"]: store.head(root["bob"])}
        )
        api["alice"].share("/F", "bob", "editor")
        api["bob"].accept_share(ns)
        heard_users, heads = step(lambda: api["alice"].unshare("/F"))
        assert heard_users == {uid["alice"], uid["bob"]}
        assert heads == {root["alice"]: store.head(root["alice"]), root["bob"]: store.head(root["bob"])}
        # An edit by a member is announced on the shared namespace's journal, like any commit.
        api["alice"].share("/F", "bob", "editor")
        ns2 = max(s["ns_id"] for s in api["alice"].shares())
        api["bob"].accept_share(ns2)
        _, heads = step(lambda: put_many(api["bob"], {"/F/new.txt": b"from bob"}, ns_id=ns2))
        assert heads == {ns2: store.head(ns2)}
    finally:
        for a in api.values():
            a.close()
