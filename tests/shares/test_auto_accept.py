"""A server started with --auto-accept-shares mounts a shared folder in the invitee's tree at
once; without it the invitation waits for `cubby share accept`."""

from __future__ import annotations

import pytest

from cubby.client.api import ApiClient
from cubby.errors import NotFound
from tests.helpers.live_server import LiveServer
from tests.shares.conftest import file_bytes, put_many


@pytest.mark.parametrize("auto", [True, False])
def test_auto_accept(tmp_path, auto):
    extra = ["--auto-accept-shares"] if auto else []
    with LiveServer(tmp_path / "data", extra_args=extra) as server:
        alice = ApiClient(server.url, server.add_user("alice"))
        bob = ApiClient(server.url, server.add_user("bob"))
        put_many(alice, {"/Team/plan.txt": file_bytes(1, "auto")})
        shared = alice.share("/Team", "bob", "viewer")
        mounts = [n["path"] for n in bob.account()["namespaces"] if n["path"] != "/"]
        if auto:
            assert shared["state"] == "active" and mounts == ["/Team"]
            assert b"".join(bob.download("/Team/plan.txt")) == file_bytes(1, "auto")
        else:
            assert shared["state"] == "invited" and mounts == []
            with pytest.raises(NotFound):
                bob.stat("/Team/plan.txt")
        alice.close()
        bob.close()
