"""Remote journal replay: keep the remote tree in the state database equal to the server's.

Learns the namespaces the account can see (a shared folder mounted, unmounted or moved),
lists a namespace once when it first appears, then reads each journal from its cursor to its
head. Kept apart from applying plans because it only ever reads the server and writes the
state: it never touches the disk, so it can be reasoned about (and tested) as a pure catch-up.
"""

from __future__ import annotations

from typing import Any, cast

from cubby.client.sync.base import EngineCore
from cubby.client.sync.trust import Refusal, UnsafePath, mount_path, shown
from cubby.client.windows import JOURNAL_PAGE
from cubby.core import paths
from cubby.model import JournalEntry


class RemoteReplay:
    """Catch the remote tree up with the server (see the module docstring)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def refresh_remote(self) -> None:
        """Learn the namespaces (from the account) and read every journal to its head; read
        the account again afterwards and start over if the set of namespaces changed
        meanwhile, so that a folder being shared is never seen half moved (gone from one
        namespace, not yet in the other)."""
        acct = self.core.account()
        self._skip_answered(acct)
        if self._caught_up(acct):
            return  # the account's heads are our cursors: a pass with nothing new costs one request
        for _ in range(3):
            self._refresh_from(acct)
            again = self.core.api.account()
            if {(n["ns_id"], n["path"]) for n in again.get("namespaces", [])} == {
                (n["ns_id"], n["path"]) for n in acct.get("namespaces", [])
            }:
                return
            acct = again

    def _skip_answered(self, acct: dict[str, Any]) -> None:
        """Pass over the journal of each known namespace whose entries since its cursor are
        all this client's own changes, already recorded from their answers
        (`StateDb.skip_answered`): after a first upload the journal would only say again what
        the commits answered."""
        known = self.core.state.namespaces()
        moved = False
        for n in acct.get("namespaces", []):
            ns = known.get(int(n["ns_id"]))
            if ns is not None and ns.cursor < int(n["head"]):
                moved = self.core.state.skip_answered(ns.ns_id, int(n["head"])) or moved
        if moved:
            self.core.reload_cursors()

    def _caught_up(self, acct: dict[str, Any]) -> bool:
        """Does the account show the namespaces we know, each at the head we have read to?"""
        known = self.core.state.namespaces()
        seen = acct.get("namespaces", [])
        if len(seen) != len(known):
            return False
        for n in seen:
            ns = known.get(int(n["ns_id"]))
            if ns is None or ns.cursor != int(n["head"]) or (ns.mount, ns.role) != (paths.normalize(n["path"]), str(n.get("role", "owner"))):
                return False
        return True

    def _refresh_from(self, acct: dict[str, Any]) -> None:
        seen = {int(n["ns_id"]): n for n in acct.get("namespaces", [])}
        known = self.core.state.namespaces()
        for ns_id in set(known) - set(seen):
            self.core.state.drop_namespace(ns_id)
            self.core.emit({"event": "namespace_removed", "ns_id": ns_id, "path": known[ns_id].mount})
        for ns_id, n in seen.items():
            try:
                mount, role = mount_path(n.get("path")), str(n.get("role", "owner"))
            except UnsafePath as exc:
                self.core.state.record_refusal(Refusal(ns_id, "mount", shown(n.get("path")), exc.message))
                continue
            if ns_id not in known:
                head = int(n["head"])  # before the listing: the replay from here covers any race
                listing = list(self.core.api.list(mount, recursive=True))
                self.core.state.add_namespace(ns_id, mount, role, head, listing)
                self.core.emit({"event": "namespace_added", "ns_id": ns_id, "path": mount})
            elif (known[ns_id].mount, known[ns_id].role) != (mount, role):
                self.core.state.update_namespace(ns_id, mount, role)
        for ns_id, ns in self.core.state.namespaces().items():
            cursor = ns.cursor
            while True:
                page = self.core.api.journal(ns_id, cursor, JOURNAL_PAGE)
                # (cast: ApiClient has a method named `list`, which confuses mypy in its annotations)
                entries, more = cast("list[JournalEntry]", page[0]), page[2]
                last = max((e.jid for e in entries), default=cursor)
                self.core.state.apply_journal(ns_id, entries, last)
                cursor = last
                if not more or not entries:
                    break
        self.core.reload_cursors()
