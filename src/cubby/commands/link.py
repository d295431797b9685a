"""`cubby link create|ls|rm`: public links to a file or a folder.

``--expires`` takes an ISO 8601 date or time. A time without a zone is local time; a date alone
means the link works through that whole day (it expires at the next local midnight).
``--password`` prompts for the password (twice), or takes it from ``CUBBY_LINK_PASSWORD`` so
that scripts never put it on a command line.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import click

PASSWORD_ENV = "CUBBY_LINK_PASSWORD"


_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
"""The units of a relative ``--expires`` (``30m``, ``12h``, ``7d``, ``2w``)."""


def parse_expires(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An aware datetime from the ``--expires`` text: a time from now (``30m``, ``12h``,
    ``7d``, ``2w``), a day (through its end, local time) or an ISO 8601 time;
    `click.BadParameter` when unreadable."""
    raw = text.strip()
    unit = _UNITS.get(raw[-1:].lower())
    if unit is not None and raw[:-1].isdigit():
        start = now if now is not None else dt.datetime.now().astimezone()
        return start + dt.timedelta(seconds=int(raw[:-1]) * unit)
    try:
        if len(raw) == 10:  # YYYY-MM-DD: through the end of that day
            day = dt.date.fromisoformat(raw)
            when = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
        else:
            when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a date: use a time from now (30m, 12h, 7d, 2w), YYYY-MM-DD or "
            "YYYY-MM-DDTHH:MM[:SS][+HH:MM]", param_hint="--expires"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as a person means it
    return when


def register(main: click.Group) -> None:
    from cubby.cli import State, pass_state

    @main.group()
    def link() -> None:
        """Public links: anyone with the URL can download a file or a folder (as a zip)."""

    @link.command("create")
    @click.argument("remote")
    @click.option("--expires", "expires", default=None, metavar="DATE",
                  help="When the link stops working: in 30m, 12h, 7d or 2w; YYYY-MM-DD (end of that day); or an ISO 8601 time.")
    @click.option("--password", "with_password", is_flag=True,
                  help=f"Protect the link with a password (prompted, or read from {PASSWORD_ENV}).")
    @pass_state
    def link_create(state: State, remote: str, expires: str | None, with_password: bool) -> None:
        """Create a link to REMOTE and print its URL (shown only now: keep it)."""
        when = parse_expires(expires) if expires else None
        password: str | None = None
        if with_password:
            password = os.environ.get(PASSWORD_ENV) or click.prompt(
                "Link password", hide_input=True, confirmation_prompt=True, err=True
            )
        with state.api() as api:
            out: dict[str, Any] = api.create_link(remote, when.isoformat() if when else None, password)
        state.emit(out, out["url"])

    @link.command("ls")
    @click.option("--all", "include_members", is_flag=True,
                  help="Also list links that members made into folders you own (you can revoke those too).")
    @pass_state
    def link_ls(state: State, include_members: bool) -> None:
        """List your links (the URLs themselves are not stored, so they cannot be shown again)."""
        with state.api() as api:
            for item in api.list_links(include_members=include_members):
                expires = (
                    dt.datetime.fromtimestamp(item["expires_at"]).strftime("%Y-%m-%d %H:%M")
                    if item.get("expires_at") else "never"
                )
                lock = "password" if item.get("has_password") else "-"
                by = f"  (by {item['created_by']})" if item.get("created_by") else ""
                state.emit(item, f"{item['id']}  {item['state']:14} {expires:16} {lock:8} {item.get('path') or '(deleted)'}{by}")

    @link.command("rm")
    @click.argument("link_id")
    @pass_state
    def link_rm(state: State, link_id: str) -> None:
        """Revoke link LINK_ID (from 'cubby link ls'): its URL answers 404 from now on. Yours,
        or one a member made into a folder you own ('cubby link ls --all')."""
        with state.api() as api:
            api.revoke_link(link_id)
        state.emit({"revoked": link_id}, f"revoked link {link_id}")
