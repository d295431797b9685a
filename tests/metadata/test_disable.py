"""Disabling a user (`UserDirectory.set_disabled`) on every engine: what it refuses, what it
keeps, and what enabling brings back. Through the command line and a running server, see
tests/server/test_user_disable.py."""

from __future__ import annotations

import pytest

from cubby.errors import AccountDisabled, NotFound, Unauthorized
from cubby.metadata.store import SqlMetadataStore
from cubby.metadata.tree import ROOT_NODE

PASSWORD = "correct horse battery"


def test_disabling_refuses_tokens_logins_sessions_and_links_and_enabling_brings_them_back(
    store: SqlMetadataStore,
) -> None:
    ann, token = store.create_user("ann")
    bob, bob_token = store.create_user("bob")
    store.accounts.set_password("ann", PASSWORD)
    _, secret = store.accounts.create_session(ann.id, "127.0.0.1", "test")
    _, link_token = store.links.create(ann.id, ann.root_ns, ROOT_NODE)

    done = store.set_disabled("ANN", True)  # names are matched as everywhere: case aside
    assert (done.user_id, done.name, done.disabled, done.changed) == (ann.id, "ann", True, True)
    assert done.sessions_ended == 1 and done.tokens_revoked == 0 and len(done.token_hashes) == 1

    with pytest.raises(AccountDisabled) as e:
        store.authenticate(token)
    assert e.value.status == 403 and e.value.code == "account_disabled"
    with pytest.raises(AccountDisabled):
        store.accounts.verify("ann", PASSWORD)  # the right password learns why
    assert store.accounts.verify("ann", "a wrong password") is None  # a guess learns nothing
    with pytest.raises(Unauthorized) as ended:
        store.accounts.authenticate(secret)
    assert ended.value.code == "session_ended"
    with pytest.raises(AccountDisabled):
        store.create_token(ann.id, "laptop")
    with pytest.raises(NotFound):
        store.links.resolve(link_token)
    assert store.authenticate(bob_token).user_id == bob.id  # nobody else is touched
    listed = {r["name"]: r for r in store.list_users()}
    assert listed["ann"]["disabled_at"] is not None and listed["bob"]["disabled_at"] is None
    assert listed["ann"]["tokens"] == 1  # kept, only refused

    assert store.set_disabled("ann", True).changed is False
    assert {r["name"]: r for r in store.list_users()}["ann"]["disabled_at"] == listed["ann"]["disabled_at"]  # kept

    back = store.set_disabled("ann", False)
    assert back.changed and not back.disabled and back.sessions_ended == 0
    assert store.authenticate(token).user_id == ann.id
    assert store.accounts.verify("ann", PASSWORD) == (ann.id, "ann")
    with pytest.raises(Unauthorized):
        store.accounts.authenticate(secret)  # an ended session stays ended
    assert store.links.resolve(link_token).link.created_by == ann.id
    store.create_token(ann.id, "laptop")
    assert store.set_disabled("ann", False).changed is False


def test_disabling_with_revoke_tokens_revokes_them_for_good(store: SqlMetadataStore) -> None:
    ann, token = store.create_user("ann")
    _, second = store.create_token(ann.id, "phone")
    done = store.set_disabled("ann", True, revoke_tokens=True)
    assert done.tokens_revoked == 2 and len(done.token_hashes) == 2
    store.set_disabled("ann", False)
    for old in (token, second):
        with pytest.raises(Unauthorized) as e:
            store.authenticate(old)
        assert e.value.code == "unauthorized" and "revoked" in e.value.message
    _, fresh = store.create_token(ann.id, "new laptop")
    assert store.authenticate(fresh).user_id == ann.id
    assert [r["tokens"] for r in store.list_users()] == [1]


def test_an_unknown_user_cannot_be_disabled(store: SqlMetadataStore) -> None:
    with pytest.raises(NotFound) as e:
        store.set_disabled("nobody", True)
    assert "cubby user ls" in e.value.message
    assert store.list_users() == []
