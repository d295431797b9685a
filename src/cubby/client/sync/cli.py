"""`cubby sync DIR` and `cubby status DIR`, added to the main command by `register`."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cubby.commands.units import ByteSize, count_of
from cubby.errors import CubbyError

if TYPE_CHECKING:  # imported where used: the planner's classes cost every `cubby` command's start 17 ms
    from cubby.client.sync import planner as P


def _engine(state: Any, root: Path, up: float | None = None, down: float | None = None, emit: Any = None) -> Any:
    from cubby.client.sync.engine import SyncEngine

    cache_mb = state.config.sync_cache_mb
    api = state.api(max_upload_rate=up, max_download_rate=down)
    return SyncEngine(root, api, cache_bytes=int(cache_mb * 1024 * 1024), emit=emit)


def _describe(op: P.Op) -> tuple[str, str]:
    from cubby.client.sync.base import path_of

    return type(op).__name__, path_of(op)


def register(main: click.Group) -> None:
    from cubby.cli import State, pass_state

    @main.command("sync")
    @click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--once", is_flag=True, help="Do one full pass and exit (0 when both sides agree).")
    @click.option("--max-upload-rate", type=ByteSize(minimum=1, rate=True), help="Bytes per second, at most, sent to the server, as 2M.")
    @click.option("--max-download-rate", type=ByteSize(minimum=1, rate=True), help="Bytes per second, at most, read from the server, as 2M.")
    @click.option("--relink", is_flag=True,
                  help="Sync a folder synced before whose state is gone, from the start (see below).")
    @pass_state
    def sync_cmd(
        state: State, folder: Path, once: bool, max_upload_rate: float | None, max_download_rate: float | None,
        relink: bool,
    ) -> None:
        """Keep FOLDER identical to your cubby, in both directions (first run: link and download).

        A folder synced before on this machine whose state (FOLDER/.cubby) is gone, or which
        is gone itself, is refused (folder_state_missing): it is most often a drive not mounted
        yet, or a folder moved elsewhere, and a first sync would download everything again
        into the wrong place. --relink starts it again from the start."""
        from cubby.client.changes import open_waiter
        from cubby.client.sync.daemon import SyncDaemon
        from cubby.client.sync.ignore import STATE_DIR
        from cubby.client.sync.known import KnownFolders, known_file
        from cubby.client.sync.signals import take_stop_signals

        folder = folder.resolve()
        known = KnownFolders(known_file(os.environ))
        if not relink and not (folder / STATE_DIR / "state.db").exists() and known.was_linked(folder):
            raise CubbyError(
                f"{folder} was synced on this machine before, but its state ({STATE_DIR}) is not there: is it on a "
                "drive that is not mounted, or was the folder moved? Nothing was done. To sync it again from the "
                f"start, run 'cubby sync --relink {folder}'",
                code="folder_state_missing",
            )
        folder.mkdir(parents=True, exist_ok=True)

        def emit(obj: dict[str, Any]) -> None:
            event = obj.get("event")
            if "op" in obj:
                state.emit(obj, f"{obj['op']:<13} {obj.get('path', '')}")
            elif event == "progress":
                what = obj.get("path") or f"{obj.get('files', 0)} files"
                state.emit(obj, f"{obj['direction']:<13} {what} {obj['done'] * 100 // max(obj['total'], 1)}%")
            elif event == "conflict":
                state.emit(obj, f"{'conflict':<13} {obj['path']} ({obj['reason']})")
            elif event == "offline":
                state.emit(obj, f"{'offline':<13} retrying in {obj['retry_in']} s: {obj['error']}")
            elif event == "push_unavailable":
                state.emit(obj, f"{'no push':<13} polling for changes, still trying push: {obj['detail']}")
            elif event == "push_restored":
                state.emit(obj, f"{'push':<13} notifications work again")
            elif event in ("namespace_added", "namespace_removed"):
                state.emit(obj, f"{event.replace('_', ' '):<13} {obj['path']}")
            elif event == "pass":
                # Every pass in JSON, for scripts that follow the daemon; for a person, only a
                # pass that left something out (what it could not read, or read mid-change).
                left = {k: obj[k] for k in ("changing", "unreadable", "failed") if obj.get(k)}
                if state.as_json or left:
                    state.emit(obj, f"{'not in sync':<13} " + "; ".join(f"{k}: {len(v)}" for k, v in left.items()))

        engine = _engine(state, folder, max_upload_rate, max_download_rate, emit)
        stop = threading.Event()

        def on_stop() -> None:
            stop.set()  # before the trigger: the loop clears the trigger, then looks at stop
            engine.trigger.set()

        if not once:
            take_stop_signals(on_stop)  # before the first thread starts (see its module)
        try:
            engine.lock()
            engine.link(state.config.url)
            known.remember(folder, state.config.url or "")
            if once:
                report = engine.run_once()
                state.emit({"event": "done", **report.to_dict()},
                           f"{'in sync' if report.converged else 'not in sync'}: "
                           f"{count_of(sum(report.applied.values()), 'operation')}, {len(report.failed)} failed, "
                           f"{count_of(len(report.blocked), 'read-only change')} kept")
                for f in report.failed:
                    click.echo(f"failed: {f['op']} {f['path']}: {f['error']}", err=True)
                for u in report.unreadable:
                    click.echo(f"unreadable: {u['path']}: {u['reason']} (not synced until it can be read)", err=True)
                for rel in report.changing:
                    click.echo(f"changing: {rel}: it changed while it was read (not synced until it stops changing)", err=True)
                if not report.converged:
                    raise SystemExit(4)
                return
            from cubby.client.push_status import PushStatus

            waiter = open_waiter(state.api(), PushStatus(folder / ".cubby", emit).report)
            SyncDaemon(engine).run(stop, waiter)
        finally:
            engine.close()

    @main.command("status")
    @click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @pass_state
    def status_cmd(state: State, folder: Path) -> None:
        """What `cubby sync FOLDER` would do now (as of its last contact with the server)."""
        from cubby.client import push_status
        from cubby.client.sync import planner as P
        from cubby.client.sync.engine import SyncEngine
        from cubby.client.sync.state import StateDb

        db = folder / ".cubby" / "state.db"
        if not db.exists():
            raise click.UsageError(f"{folder} is not synced yet: run 'cubby sync {folder}'")
        engine = SyncEngine(folder, None, state=StateDb(db))  # type: ignore[arg-type]
        try:
            ops, res = engine.pending()
            pending = [_describe(o) for o in ops if not isinstance(o, P.Blocked)]
            blocked = [o for o in ops if isinstance(o, P.Blocked)]
            for name, path in pending:
                state.emit({"pending": name, "path": path}, f"pending  {name:<12} {path}")
            for b in blocked:
                state.emit({"blocked": b.path, "reason": b.reason}, f"kept     {b.path}  ({b.reason})")
            for rel in res.unsyncable:
                state.emit({"unsyncable": rel}, f"skipped  {rel}  (a name cubby cannot store)")
            for rel in res.outside_links:
                state.emit({"outside_link": rel}, f"skipped  {rel}  (a link to outside the folder: not synced)")
            for u in res.unreadable:
                state.emit({"unreadable": u.rel, "reason": u.reason},
                           f"unreadable  {u.rel}  ({u.reason}: not synced until it can be read)")
            for rel in res.changing:
                state.emit({"changing": rel}, f"changing  {rel}  (it changed while it was read: not synced until it stops)")
            refused = engine.state.refusals()
            for r in refused:
                state.emit({"refused": r.path, "source": r.source, "reason": r.reason, "ns_id": r.ns_id, "jid": r.jid},
                           f"refused  {r.path}  (from the server's {r.source}: {r.reason})")
            push = push_status.read(folder / ".cubby")
            if push is not None and not push["push"]:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(push["since"]))
                state.emit({"push": False, "push_since": push["since"], "push_detail": push["detail"]},
                           f"warning  no push notifications since {since}: changes from elsewhere arrive late "
                           f"(polling). {push['detail']}")
            in_sync = not pending and not res.unreadable and not res.changing
            state.emit({"in_sync": in_sync, "pending": len(pending), "blocked": len(blocked), "refused": len(refused),
                        "unreadable": len(res.unreadable), "changing": len(res.changing),
                        "push": None if push is None else bool(push["push"])},
                       "in sync" if in_sync else
                       f"{count_of(len(pending), 'change')} pending" + (f", {len(res.unreadable)} unreadable" if res.unreadable else "")
                       + (f", {len(res.changing)} changing" if res.changing else ""))
        finally:
            engine.close()
