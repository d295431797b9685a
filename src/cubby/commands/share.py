"""`cubby share add|accept|ls|rm|leave|unshare`: shared folders from the command line.

Paths are paths in your tree; a shared folder is named by where it is mounted for you.
"""

from __future__ import annotations

from typing import Any

import click


def _fmt_members(share: dict[str, Any]) -> str:
    return ", ".join(
        f"{m['user']} ({m['role']}{', invited' if m['state'] == 'invited' else ''})" for m in share.get("members", [])
    )


def register(main: click.Group) -> None:
    """Add the ``share`` group to the ``cubby`` command."""
    from cubby.cli import State, pass_state

    @main.group()
    def share() -> None:
        """Share folders with other people, and manage what others share with you."""

    @share.command("add")
    @click.argument("path")
    @click.argument("user")
    @click.option("--role", type=click.Choice(["editor", "viewer"]), default="editor", show_default=True,
                  help="editor: read and write; viewer: read only.")
    @pass_state
    def share_add(state: State, path: str, user: str, role: str) -> None:
        """Share the folder PATH with USER (or change USER's role). Only the owner invites."""
        with state.api() as api:
            info = api.share(path, user, role)
        what = "shared" if info["created"] else "invited to"
        state.emit(
            info,
            f"{what} {info['path']}: {info['user']} as {info['role']} ({info['state']}); "
            f"they accept with 'cubby share accept {info['ns_id']}'"
            if info["state"] == "invited"
            else f"{info['user']} is now {info['role']} of {info['path']}",
        )

    @share.command("accept")
    @click.argument("share_id", type=int)
    @pass_state
    def share_accept(state: State, share_id: int) -> None:
        """Accept the invitation SHARE_ID (see 'cubby share ls'): the folder appears in your tree."""
        with state.api() as api:
            info = api.accept_share(share_id)
        state.emit(info, f"mounted shared folder {share_id} at {info['path']} ({info['role']})")

    @share.command("ls")
    @pass_state
    def share_ls(state: State) -> None:
        """List your shared folders and invitations, with their members."""
        with state.api() as api:
            for s in api.shares():
                # An invitation has no path yet: its folder's name says what it is.
                where = s["path"] or f"{s.get('name') or '?'} (invitation: cubby share accept {s['ns_id']})"
                state.emit(s, f"{s['ns_id']:>6}  {s['role']:7} {where}  {_fmt_members(s)}")

    @share.command("rm")
    @click.argument("path")
    @click.argument("user")
    @pass_state
    def share_rm(state: State, path: str, user: str) -> None:
        """Remove USER from the shared folder PATH (owner only): they lose it at once."""
        with state.api() as api:
            info = api.remove_member(path, user)
        state.emit(info, f"removed {user} from {path}")

    @share.command("leave")
    @click.argument("folder")
    @pass_state
    def share_leave(state: State, folder: str) -> None:
        """Leave the shared folder FOLDER (its path, or its id from 'cubby share ls'): it leaves
        your tree; the others keep it. A folder named with digits only is given as /NAME."""
        with state.api() as api:
            info = api.leave_share(int(folder) if folder.isdigit() else folder)
        state.emit(info, f"left {info.get('path') or folder}")

    @share.command("unshare")
    @click.argument("path")
    @pass_state
    def share_unshare(state: State, path: str) -> None:
        """Stop sharing PATH (owner only): members lose it; you keep the folder as it is."""
        with state.api() as api:
            info = api.unshare(path)
        state.emit(info, f"unshared {path}; it is an ordinary folder again")


__all__ = ["register"]
