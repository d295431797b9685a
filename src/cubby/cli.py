"""The `cubby` command.

Configuration is read once, here, from flags, the environment (``CUBBY_URL``, ``CUBBY_TOKEN``,
``CUBBY_DATA``, ``CUBBY_DB``) and ``~/.config/cubby/config.toml``, and passed down. Every command
has ``--help``; commands that print results take ``--json`` (one JSON object per line, for
scripts); long transfers show a progress bar on a terminal. Errors print their message and
code and exit non-zero, without a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from cubby.commands.units import ByteSize, count_of
from cubby.config import Config, load
from cubby.errors import CubbyError, NotFound, Unavailable

if TYPE_CHECKING:
    from cubby.metadata.store import SqlMetadataStore


class State:
    """What the top-level options decided, handed to every command."""

    def __init__(self, config: Config, as_json: bool) -> None:
        self.config = config
        self.as_json = as_json
        self.sharding: dict[str, Any] = {}
        """``--directory``, ``--shard`` and ``--place-new`` of a command that opens the
        metadata store (`shard_options`), applied by `_server_config`."""

    def api(self, *, max_upload_rate: float | None = None, max_download_rate: float | None = None) -> Any:
        from cubby.client.api import ApiClient
        from cubby.client.ratelimit import TokenBucket
        from cubby.core.gcpolicy import freeze_at_exit

        if not self.config.token:
            raise click.UsageError("no token: set CUBBY_TOKEN (printed by 'cubby user add') or pass --token")
        freeze_at_exit()  # a client command: its shutdown need not walk what it made
        return ApiClient(
            self.config.url,
            self.config.token,
            upload_limit=TokenBucket(max_upload_rate) if max_upload_rate else None,
            download_limit=TokenBucket(max_download_rate) if max_download_rate else None,
        )

    def emit(self, obj: dict[str, Any], human: str) -> None:
        self.emit_many([(obj, human)])

    def emit_many(self, items: Sequence[tuple[dict[str, Any], str]]) -> None:
        """Results printed together, in one write: a JSON line each with ``--json``, else each
        one's ``human`` line. A put or get calls this once per group of files: a write (and
        flush) per file was 10,000 system calls for 10,000 small files, made on the thread
        that drives the transfer, each waiting to win the interpreter back from the threads
        reading and hashing files (a tenth of that thread's time)."""
        if not items:
            return
        if self.as_json:
            # click.echo's terminal and colour checks cost more than a line (a JSON line has no
            # colour to strip), and the standard encoder four times orjson's (compact: the
            # same JSON without the spaces).
            sys.stdout.write("".join(map(_json_line, (obj for obj, _ in items))))
            sys.stdout.flush()
        else:
            click.echo("\n".join(human for _, human in items))


def _json_line(obj: dict[str, Any]) -> str:
    try:
        line = orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, say
        return json.dumps(obj, default=str) + "\n"
    return line.decode("utf-8")


_pass_state = click.make_pass_decorator(State)


def pass_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the State, and accept ``--json`` after the command name too (``cubby put --json``)."""
    import functools

    @functools.wraps(fn)
    def wrapper(state: State, *args: Any, as_json_local: bool = False, **kwargs: Any) -> Any:
        if as_json_local:
            state.as_json = True
        return fn(state, *args, **kwargs)

    return click.option("--json", "as_json_local", is_flag=True, help="Print one JSON object per line.")(_pass_state(wrapper))


@contextmanager
def progress_bar(
    state: State, total: int | Callable[[], int], what: str
) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr, or nothing when output is for a script or not a terminal.
    ``total`` may be a function, called only when a bar could be shown: the size of a folder
    costs a stat of every file in it, wasted when no bar is drawn (``--json``, a pipe)."""
    if state.as_json or not sys.stderr.isatty():
        yield None
        return
    if callable(total):
        total = total()
    if total < 4 * 1024 * 1024:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _status_line() -> Callable[[str | None], None]:
    """A line on stderr that long work rewrites in place as it goes, when stderr is a terminal
    (else nothing: a log or a pipe gets the result alone). None ends it."""
    if not sys.stderr.isatty():
        return lambda _text: None
    shown = False

    def show(text: str | None) -> None:
        nonlocal shown
        if text is None:
            if shown:
                click.echo("", err=True)
            shown = False
            return
        click.echo("\r\x1b[K" + text, nl=False, err=True)  # back to the start, the old line erased
        shown = True

    return show


class CubbyGroup(click.Group):
    """Turns a CubbyError into a one-line message and an exit code, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CubbyError as exc:
            raise CubbyGroup._fail(ctx, exc) from None
        except BrokenPipeError:
            # Whoever read the output stopped (`cubby ls -r / | head`): end quietly, as Unix
            # tools do, with nothing left to flush into the closed pipe at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(141) from None  # 128 + SIGPIPE, what a shell reports
        except OSError as exc:
            # A local file or folder the command could not read or write (permissions, a full
            # disk): a line that names it, not a traceback. (Network failures reach here as
            # CubbyErrors: the API client turns them into ``unavailable``.)
            raise CubbyGroup._fail(ctx, local_error(exc)) from None

    @staticmethod
    def _fail(ctx: click.Context, exc: CubbyError) -> click.exceptions.Exit:
        as_json = bool(ctx.obj and getattr(ctx.obj, "as_json", False))
        if as_json:
            click.echo(json.dumps({"error": exc.to_dict()}), err=True)
        else:
            click.echo(f"error: {exc.message} [{exc.code}]", err=True)
        return click.exceptions.Exit(3 if exc.retryable else 2)


_LOCAL_CODES = {
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EROFS: "read_only_filesystem",
    errno.ENOENT: "no_such_local_file",
    errno.ENOTDIR: "not_a_folder",
    errno.EISDIR: "is_a_folder",
}


def local_error(exc: OSError) -> CubbyError:
    """A failed local file operation as an error a person can act on: what, where, and a code."""
    where = f"{exc.filename}: " if exc.filename else ""
    return CubbyError(f"{where}{exc.strerror or exc}", code=_LOCAL_CODES.get(exc.errno or 0, "local_io_error"))


def _without_httpx_cli() -> None:
    """Keep httpx from importing its own command-line tool (`httpx._main`, which pulls in
    rich's console and pygments) when a command imports httpx: about 50 ms of every command's
    start (`cubby ls` took 0.23-0.30 s in all), for a tool this process never runs. An entry of
    None in `sys.modules` makes that one import fail, and httpx catches the failure and goes on
    without its tool (`httpx/__init__.py`). Only in a `cubby` command's process, before httpx
    is imported; a process that imported httpx already keeps it whole."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


@click.group(cls=CubbyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="CUBBY_URL", help="Server address (default from CUBBY_URL or the config file).")
@click.option("--token", envvar="CUBBY_TOKEN", help="Bearer token (default from CUBBY_TOKEN or the config file).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line, for scripts.")
@click.version_option(package_name="cubby")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None, as_json: bool) -> None:
    """cubby: self-hosted file storage and sync with deduplication."""
    from cubby.core.malloc import tune_for_chunks

    tune_for_chunks()  # every command moves chunks: big buffers without page faults
    _without_httpx_cli()
    cfg = load(os.environ).with_(url=url, token=token)
    ctx.obj = State(cfg, as_json)


# --------------------------------------------------------------------------------------------
# server side
# --------------------------------------------------------------------------------------------
def _server_config(state: State, data: Path | None, db: str | None, blocks: str | None = None) -> Config:
    return state.config.with_(data_dir=data, db_url=db, blocks_url=blocks, **state.sharding)


def _existing_store(state: State, data: Path | None, db: str | None) -> SqlMetadataStore:
    """The metadata store of a server that already has data: a usage error, not a new empty
    database, when ``--data``/``--db`` point at nothing."""
    from cubby.metadata.store import open_store

    cfg = _server_config(state, data, db)
    if cfg.db_url is None and not (cfg.data_dir / "meta.db").exists():
        raise click.UsageError(f"no cubby server data in {cfg.data_dir}: pass the server's --data or --db")
    return open_store(cfg.metadata_url, shards=cfg.shard_urls, place_new=cfg.place_new)


def shard_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--directory URL``, repeated ``--shard NAME=URL`` and ``--place-new NAME`` for a
    command that opens the metadata store (docs/SHARDING.md); kept on the `State` for
    `_server_config`. Without them, ``--db`` is the directory and the only shard."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, directory: str | None, shard: tuple[str, ...], place_new: str | None, **kwargs: Any) -> Any:
        from cubby.config import parse_shards

        try:
            parse_shards(shard)
        except CubbyError as exc:
            raise click.BadParameter(exc.message, param_hint="--shard") from exc
        state = click.get_current_context().find_object(State)
        if state is not None:
            state.sharding = {"directory_url": directory, "shards": shard or None, "place_new": place_new}
        return fn(*args, **kwargs)

    for option in reversed([
        click.option("--directory", default=None, metavar="URL",
                     help="The directory database of a sharded deployment (default: --db)."),
        click.option("--shard", multiple=True, metavar="NAME=URL",
                     help="A shard database (repeatable); without any, the directory is the only shard."),
        click.option("--place-new", default=None, metavar="NAME",
                     help="The shard new namespaces go to (default: the one holding the fewest)."),
    ]):
        wrapper = option(wrapper)
    return wrapper


def server_data_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--data`` and ``--db`` (where the server's data is) and `shard_options`, for a
    command run on the server machine against its database."""
    fn = shard_options(fn)
    fn = click.option("--db", help="The server's metadata database URL.")(fn)
    return click.option("--data", type=click.Path(path_type=Path), help="The server's data folder.")(fn)


BLOCKS_OPTION = click.option(
    "--blocks", default=None,
    help="Where chunk packs live: a folder (default DATA/blocks) or s3://BUCKET/PREFIX?endpoint=URL&region=R "
    "(optional too: &checksum=auto|crc32|md5|sha256|sha256-chunked, how PUT bodies are checked; &timeout=S; "
    "&downloads=direct, clients read chunks straight from the bucket, &uploads=direct, clients put packs of their "
    "chunks there, each chunk checked by the bucket, with &public_endpoint=URL where they reach it elsewhere; "
    "docs/DEPLOY.md).",
)


@main.command()
@click.option("--data", type=click.Path(path_type=Path), help="Folder for the embedded database and chunks.")
@click.option("--db", help="SQLAlchemy URL of the metadata database (PostgreSQL or MySQL/MariaDB).")
@shard_options
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8765).")
@click.option(
    "--fd", "listen_fd", type=int, default=None,
    help="Serve on this inherited, already-bound listening socket instead of --host/--port.",
)
@click.option("--role", default="all", show_default=True, help="Roles to run: all, meta, blocks, notify (comma-separated).")
@click.option("--broker", default=None, help="Notification broker: memory (default; local sockets between --workers), redis://HOST:PORT/DB or nats://HOST:PORT.")
@BLOCKS_OPTION
@click.option(
    "--cache", "cache_url", default=None, metavar="URL",
    help="Metadata cache, which also holds the password throttles' counts: memory (default), none, redis://HOST:PORT/DB, redis+unix:///SOCKET, memcached://HOST:PORT or memcached:///SOCKET.",
)
@click.option(
    "--notify-front", type=click.Choice(["lean", "asgi"]), default=None,
    help="How --role notify alone is served: lean (default, cheap idle connections) or asgi.",
)
@click.option("--max-request-bytes", type=ByteSize(minimum=1), default=None, help="Largest request body accepted, as 64M (the default).")
@click.option("--advertise-meta", default=None, metavar="URL", help="Where clients reach the meta role (told by /api/v1/discovery).")
@click.option("--advertise-blocks", default=None, metavar="URL", help="Where clients reach the blocks role.")
@click.option("--advertise-notify", default=None, metavar="URL", help="Where clients reach the notify role.")
@click.option(
    "--auto-accept-shares", is_flag=True, default=None,
    help="Mount shared folders in invitees' trees at once, without 'cubby share accept'.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Worker processes sharing the listening socket (one per core), restarted if they die.",
)
@click.option(
    "--dedup-scope", type=click.Choice(["global", "user"]), default=None,
    help="Reuse chunks any user stored (global, the default) or only the same user's (user): see docs/SECURITY.md.",
)
@click.option(
    "--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS[/BITS]",
    help="A load balancer whose X-Forwarded-For names the real client (repeatable; none by default).",
)
@click.option("--header-timeout", type=float, default=None, help="Seconds a client may take to send a request's headers (default 10).")
@click.option("--idle-timeout", type=float, default=None, help="Seconds a connection may stay silent between requests (default 120).")
@click.option("--max-connections", type=int, default=None, help="Open connections per process (default: the open-file limit less a reserve).")
@click.option("--max-connections-per-address", type=int, default=None, help="Open connections per client address (default 256).")
@click.option("--max-waits-per-token", type=int, default=None, help="Long-polls and WebSockets one token may hold (default 32).")
@click.option(
    "--max-buffered-bodies", type=ByteSize(minimum=1024 * 1024), default=None,
    help="Request bodies one process holds whole at once, all requests together, as 48M (the default); past it, 503.",
)
@click.option(
    "--max-buffered-uploads", type=ByteSize(minimum=8 * 1024 * 1024), default=None,
    help="Chunk uploads one process holds before storing them, all uploads together, as 256M (the default); past it, uploads wait.",
)
@pass_state
def serve(
    state: State, data: Path | None, db: str | None, host: str | None, port: int | None, listen_fd: int | None,
    role: str, broker: str | None, cache_url: str | None, blocks: str | None, notify_front: str | None,
    max_request_bytes: int | None,
    advertise_meta: str | None, advertise_blocks: str | None, advertise_notify: str | None,
    auto_accept_shares: bool | None, dedup_scope: str | None, trusted_proxies: tuple[str, ...],
    header_timeout: float | None, idle_timeout: float | None, max_connections: int | None,
    max_connections_per_address: int | None, max_waits_per_token: int | None, max_buffered_bodies: int | None,
    max_buffered_uploads: int | None, workers: int,
) -> None:
    """Run the cubby server."""
    from cubby.server.run import parse_roles
    from cubby.server.run import serve as run

    try:
        roles = parse_roles(role)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role") from exc
    cfg = _server_config(state, data, db, blocks).with_(
        host=host, port=port, listen_fd=listen_fd, broker_url=broker, cache_url=cache_url, notify_front=notify_front,
        max_request_bytes=max_request_bytes, auto_accept_shares=auto_accept_shares,
        advertise_meta=advertise_meta, advertise_blocks=advertise_blocks, advertise_notify=advertise_notify,
        dedup_scope=dedup_scope, trusted_proxies=trusted_proxies or None,
        header_timeout=header_timeout, idle_timeout=idle_timeout,
        max_connections=max_connections, max_connections_per_address=max_connections_per_address,
        max_waits_per_token=max_waits_per_token, max_buffered_bodies=max_buffered_bodies,
        max_buffered_uploads=max_buffered_uploads,
    )
    run(cfg, roles, workers=workers)


@main.group()
def user() -> None:
    """Manage users (run on the server machine)."""


def _read_password(from_stdin: bool) -> str:
    """A new password: the first line of standard input with ``--password-stdin``, else asked
    twice at the terminal (never an argument, which other users could read in ``ps``)."""
    import sys

    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise click.UsageError("standard input is not a terminal: pass --password-stdin and pipe the password")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _offer_password() -> str | None:
    """At a terminal, ask for an optional web password (empty: the user gets an API token
    only); elsewhere ask nothing, so that scripts that add users keep working unattended."""
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    answer = str(click.prompt("Web password (empty for none)", default="", show_default=False,
                              hide_input=True, confirmation_prompt=True))
    return answer or None


@user.command("add")
@click.argument("name")
@server_data_options
@click.option("--password-stdin", is_flag=True, help="Also set a web password, read from standard input.")
@click.option("--password", "ask_password", is_flag=True, help="Also set a web password, asked at the terminal.")
@pass_state
def user_add(
    state: State, name: str, data: Path | None, db: str | None, password_stdin: bool, ask_password: bool
) -> None:
    """Create a user; the token is printed on the last line. With --password(-stdin), or a
    password typed when asked at a terminal, the user can also log in to the web app."""
    from cubby.metadata.accounts import check_password_rules
    from cubby.metadata.store import open_store

    if password_stdin or ask_password:
        password: str | None = _read_password(password_stdin)
    else:
        password = _offer_password()
    if password is not None:
        check_password_rules(password)
    cfg = _server_config(state, data, db)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.metadata_url, shards=cfg.shard_urls, place_new=cfg.place_new)
    try:
        u, token = store.create_user(name)
        if password is not None:
            store.accounts.set_password(name, password)
    finally:
        store.close()
    if state.as_json:
        click.echo(json.dumps({"user_id": u.id, "name": u.name, "root_ns": u.root_ns, "token": token}))
    else:
        click.echo(f"created user {u.name} (id {u.id}); their token, shown only once:")
        click.echo(token)


@user.command("ls")
@server_data_options
@pass_state
def user_ls(state: State, data: Path | None, db: str | None) -> None:
    """List the users: id, name, when made, how many tokens each has that are not revoked, and
    whether they are disabled."""

    store = _existing_store(state, data, db)
    try:
        rows = store.list_users()
    finally:
        store.close()
    for r in rows:
        made = dt.datetime.fromtimestamp(float(r["created_at"])).strftime("%Y-%m-%d %H:%M")  # type: ignore[arg-type]
        off = "  disabled" if r.get("disabled_at") is not None else ""
        state.emit(r, f"{r['id']:>5}  {r['name']:<24} {made}  {r['tokens']} token{'s' if r['tokens'] != 1 else ''}{off}")


def _set_disabled(
    state: State, name: str, data: Path | None, db: str | None, disabled: bool, revoke_tokens: bool,
    broker: str | None = None,
) -> None:
    """`user disable` and `user enable`: one transaction on the database, then a pause of
    `TOKEN_SECONDS`, the longest any running server's cache keeps a token's owner, so that
    when the command returns no server lets the user in (requests already running finish).
    Then, with a broker the servers share (``--broker``, or the config's), the user's account
    change is published there, so that the notification processes check their open
    WebSockets again and close them (an in-process ``memory`` broker is out of reach); the
    JSON answer's ``told_broker`` says whether it was.

    A broker URL the servers could not use is refused before anything changes
    (``bad_broker_url``). A broker that cannot be reached once the user is disabled leaves
    the user disabled: the answer is printed, then ``broker_unreachable`` (exit 3), and the
    same command again (a repeated disable changes nothing but tells the broker again) closes
    the sockets once it is back."""
    import time

    from cubby.cache.store import TOKEN_SECONDS
    from cubby.notify.base import broker_kind

    url = (broker or state.config.broker_url) if disabled else None
    if url and broker_kind(url) == "memory":  # a bad URL is refused here, before anything changes
        url = None
    store = _existing_store(state, data, db)
    try:
        done = store.set_disabled(name, disabled, revoke_tokens=revoke_tokens)
    finally:
        store.close()
    told = False
    unheard: str | None = None
    if disabled and done.changed:
        time.sleep(TOKEN_SECONDS)
    if url:  # a repeated disable tells the broker again: how to reach it after it was down
        try:
            _tell_account_changed(url, done.user_id)
            told = True
        except Exception as exc:  # any failure to reach it: the disable stands
            unheard = exc.message if isinstance(exc, CubbyError) else f"{type(exc).__name__}: {exc}"
    facts = {
        "user_id": done.user_id, "name": done.name, "disabled": disabled, "changed": done.changed,
        "sessions_ended": done.sessions_ended, "tokens_revoked": done.tokens_revoked, "told_broker": told,
    }
    if not done.changed:
        text = f"{done.name} was already {'disabled' if disabled else 'enabled'}"
    elif disabled:
        text = (f"disabled {done.name}: their tokens, web logins and public links are refused; "
                f"{count_of(done.sessions_ended, 'web session')} ended")
        if revoke_tokens:
            text += f", {count_of(done.tokens_revoked, 'token')} revoked for good"
    else:
        text = f"enabled {done.name}: their tokens that were not revoked, password and public links work again"
    state.emit(facts, text)
    if unheard is not None:  # exit 3: the disable is done, telling the broker may be tried again
        raise Unavailable(
            f"{done.name} is disabled, but the broker could not be told ({unheard}): their open "
            "notification connections end only at their next request. Run the command again once "
            "the broker is reachable",
            code="broker_unreachable",
        )


def _tell_account_changed(url: str, user_id: int) -> None:
    """Publish ``user_id``'s account change on broker ``url``, as a server does when it
    revokes a token: every notification process checks that user's connections again."""
    import asyncio

    from cubby.notify.base import open_broker, user_topic

    async def tell() -> None:
        broker = open_broker(url)
        try:
            await broker.publish(user_topic(user_id), b"")
        finally:
            await broker.close()

    asyncio.run(tell())


@user.command("disable")
@click.argument("name")
@server_data_options
@click.option("--revoke-tokens", is_flag=True, help="Also revoke all their tokens for good (an account taken over).")
@click.option(
    "--broker", default=None, metavar="URL",
    help="The notification broker the servers share (default: the config's): their open "
    "notification connections are closed at once.",
)
@pass_state
def user_disable(
    state: State, name: str, data: Path | None, db: str | None, revoke_tokens: bool, broker: str | None
) -> None:
    """Lock a user out without deleting anything: their tokens, password and public links are
    refused (403 account_disabled; links answer as revoked ones) and their web sessions end.
    Their files stay, and shared folders stay with the other members. Takes effect on every
    running server by the time it returns (about 2 s). Open notification connections are
    closed too when the servers share a broker (--broker); with the embedded server's own,
    they end at their next reconnection. Undo with 'cubby user enable'."""
    _set_disabled(state, name, data, db, True, revoke_tokens, broker)


@user.command("enable")
@click.argument("name")
@server_data_options
@pass_state
def user_enable(state: State, name: str, data: Path | None, db: str | None) -> None:
    """Let a disabled user back in: their tokens (unless revoked), password and public links
    work again. Their web sessions stay ended: they log in afresh."""
    _set_disabled(state, name, data, db, False, False)


@user.command("token")
@click.argument("name")
@server_data_options
@click.option("--label", default="issued by the administrator", show_default=True, help="What the token is for.")
@pass_state
def user_token(state: State, name: str, data: Path | None, db: str | None, label: str) -> None:
    """Create a new API token for user NAME (a lost token, or after 'cubby user disable
    --revoke-tokens' and 'enable'); printed on the last line, shown only once. Refused for a
    disabled user."""
    store = _existing_store(state, data, db)
    try:
        u = store.get_user(name)
        token_id, token = store.create_token(u.id, label)
    finally:
        store.close()
    if state.as_json:
        click.echo(json.dumps({"user_id": u.id, "name": u.name, "token_id": token_id, "token": token}))
    else:
        click.echo(f"new token {token_id} for {u.name}, shown only once:")
        click.echo(token)


@user.command("passwd")
@click.argument("name")
@server_data_options
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@pass_state
def user_passwd(state: State, name: str, data: Path | None, db: str | None, password_stdin: bool) -> None:
    """Set a user's web password (asked at the terminal unless --password-stdin); ends the
    user's web sessions. API tokens are not touched."""
    from cubby.metadata.accounts import check_password_rules

    password = _read_password(password_stdin)
    check_password_rules(password)
    store = _existing_store(state, data, db)
    try:
        uid = store.accounts.set_password(name, password)
    finally:
        store.close()
    state.emit({"user_id": uid, "name": name}, f"password set for {name}; their web sessions were ended")


@main.command()
@server_data_options
@BLOCKS_OPTION
@click.option("--grace", type=float, default=24 * 3600, show_default=True, help="Keep unreferenced chunks this many seconds.")
@click.option(
    "--pack-grace", type=float, default=900, show_default=True,
    help="Keep packs emptied by repacking this many seconds, for reads in flight.",
)
@click.option("--threshold", type=float, default=0.25, show_default=True, help="Rewrite packs at least this share dead.")
@pass_state
def gc(
    state: State, data: Path | None, db: str | None, blocks: str | None, grace: float, pack_grace: float, threshold: float
) -> None:
    """Remove chunks that no file revision references, then repack (run on the server machine).
    On a terminal, a line on stderr follows its progress; the result is one line on stdout."""
    from cubby.blockstore.opener import open_block_store
    from cubby.blockstore.packs import CompactStats
    from cubby.metadata.shardchunks import TOUCH_INTERVAL
    from cubby.metadata.store import open_store
    from cubby.model import GcStats

    cfg = _server_config(state, data, db, blocks)
    if cfg.shard_urls and grace < 2 * TOUCH_INTERVAL:
        # Commits on a shard skip the chunk database's touch within TOUCH_INTERVAL of the last:
        # a shorter grace could take a chunk a commit is about to reference (metadata/shardchunks.py).
        raise click.BadParameter(f"on a sharded deployment the grace is at least {2 * TOUCH_INTERVAL:.0f} s", param_hint="--grace")
    store = open_store(cfg.metadata_url, shards=cfg.shard_urls, place_new=cfg.place_new)
    try:
        bs = open_block_store(cfg.blocks_location, store.router.chunks)
        status = _status_line()

        def swept(s: GcStats) -> None:
            status(f"gc: examined {s.examined} chunks, deleted {s.deleted} ({s.bytes_freed} bytes)")

        def repacked(s: CompactStats) -> None:
            status(f"repack: rewrote {s.packs_rewritten} packs ({s.chunks_moved} chunks moved), deleted {s.packs_deleted}")

        try:
            swept(GcStats())
            stats = store.collect_garbage(bs, grace, progress=swept)
            packs = bs.compact(threshold=threshold, grace=pack_grace, progress=repacked)
            found = bs.index.unreadable_count()
        finally:
            bs.objects.close()
            status(None)
    finally:
        store.close()
    state.emit(
        {**stats.__dict__, "packs": packs.__dict__, "chunks_found_unreadable": found},
        f"examined {stats.examined} chunks, deleted {stats.deleted}, freed {stats.bytes_freed} bytes; "
        f"rewrote {packs.packs_rewritten} packs ({packs.chunks_moved} chunks moved), deleted {packs.packs_deleted}"
        + (f"; {count_of(packs.packs_missing, 'pack')} missing from the store: run cubby admin check"
           if packs.packs_missing else "")
        + (f"; {count_of(found, 'chunk')} found unreadable by a server: run cubby admin check" if found else ""),
    )


@main.group()
def admin() -> None:
    """Server maintenance (run on the server machine)."""


@admin.command("migrate-blocks")
@server_data_options
@BLOCKS_OPTION
@pass_state
def admin_migrate_blocks(state: State, data: Path | None, db: str | None, blocks: str | None) -> None:
    """Move chunks stored one file each by earlier releases into packs (safe to interrupt,
    and to run while the server serves: until a chunk moves, it is read where it was)."""
    from cubby.blockstore.opener import open_block_store
    from cubby.blockstore.packs import MigrateStats
    from cubby.metadata.store import open_store

    cfg = _server_config(state, data, db, blocks)
    store = open_store(cfg.metadata_url, shards=cfg.shard_urls, place_new=cfg.place_new)
    try:
        bs = open_block_store(cfg.blocks_location, store.router.chunks)
        status = _status_line() if not state.as_json else (lambda _text: None)

        def progress(s: MigrateStats) -> None:
            if state.as_json:
                click.echo(json.dumps({"progress": s.__dict__}))
            status(f"moved {s.chunks} chunks ({s.bytes} bytes)")

        try:
            stats = bs.migrate_legacy(progress=progress)
        finally:
            bs.objects.close()
            status(None)
    finally:
        store.close()
    state.emit(
        {"done": stats.__dict__},
        f"moved {stats.chunks} chunks ({stats.bytes} bytes) into packs; removed {stats.removed} old chunk files",
    )


@admin.command("check")
@server_data_options
@BLOCKS_OPTION
@click.option(
    "--read-data", is_flag=True,
    help="Also read every pack and check each chunk against its name (reads the whole store).",
)
@click.option(
    "--files", "every_file", is_flag=True,
    help="Also look up every chunk of every current file (reads every file's chunk list).",
)
@click.option("--limit", type=click.IntRange(min=0), default=1000, show_default=True, help="Most damaged files to name.")
@click.option(
    "--repair", is_flag=True,
    help="Forget the damaged chunks, so that the next upload of their bytes stores them again and mends the files.",
)
@pass_state
def admin_check(
    state: State, data: Path | None, db: str | None, blocks: str | None, read_data: bool, every_file: bool,
    limit: int, repair: bool,
) -> None:
    """Check that every chunk the server holds can be read: each pack the index records is in
    the block store at its size, each held chunk has a place, with --read-data each chunk's
    bytes match its name, and with --files every chunk of every current file has a place.
    Damage names the current files it breaks. Without --repair it writes nothing, and is safe
    while the server serves. Exit status 1 when anything is damaged (with --repair too: the
    files stay damaged until their bytes are uploaded again)."""
    from cubby.blockstore.opener import open_block_store
    from cubby.blockstore.scrub import ScrubReport, scrub
    from cubby.commands.check import check_lines, check_result
    from cubby.metadata.damage import files_with_chunks, forget_damaged, held_chunks, referenced_chunks

    cfg = _server_config(state, data, db, blocks)
    store = _existing_store(state, data, db)
    try:
        # Not the start check: this command writes nothing, not even its probe, and finds a
        # wrong store by itself (every pack missing).
        bs = open_block_store(cfg.blocks_location, store.router.chunks, check=False)
        status = _status_line()

        def progress(r: ScrubReport) -> None:
            read = f", read {r.chunks_read} chunks ({r.bytes_read} bytes)" if r.read_data else ""
            files = f", {r.referenced_chunks} chunks of files" if every_file else ""
            status(f"check: {r.packs} packs, {r.held_chunks} held chunks{read}{files}")

        try:
            referenced = referenced_chunks(store.router.shards.values()) if every_file else ()
            report = scrub(
                bs, held_chunks(store.router.chunks), read_data=read_data, referenced=referenced, progress=progress
            )
        finally:
            bs.objects.close()
            status(None)
        files, total = files_with_chunks(store.router.shards.values(), report.damaged, limit=limit)
        forgotten = forget_damaged(store.router.chunks, bs.index, report.places) if repair and report.damaged else []
        if bs.legacy is not None:
            # A corrupt file of the earlier release's store goes once its row is gone, or the
            # next upload of its bytes would be deduplicated against it again.
            for name in set(forgotten).intersection(report.legacy_corrupt):
                bs.legacy.delete(name)
        if repair and report.findings_intact:
            bs.index.clear_unreadable(report.findings_intact)
        if repair and report.packs_absent:
            # A lost pack no chunk points at any more (forgotten now, or mended since) is
            # retired, as a compaction retires an emptied one.
            bs.index.switch(None, {}, report.packs_absent)
    finally:
        store.close()
    done = len(forgotten)
    state.emit(check_result(report, files, total, done), "\n".join(check_lines(report, files, total, done, repair=repair)))
    if not report.ok:
        raise click.exceptions.Exit(1)


@admin.command("move-namespace")
@click.argument("ns_id", metavar="NS", type=int)
@click.option("--to", "to", required=True, metavar="SHARD", help="The shard to move the namespace to (a --shard name).")
@server_data_options
@click.option(
    "--cache", "cache_url", default=None, metavar="URL",
    help="The metadata cache the servers share (redis://... or memcached://...): the new placement "
    "is invalidated there, so every server routes to the new shard at once.",
)
@pass_state
def admin_move_namespace(state: State, ns_id: int, to: str, data: Path | None, db: str | None, cache_url: str | None) -> None:
    """Move namespace NS, with its journal, history and chunk references, to shard SHARD while
    it is in use: writers to it pause for a moment and retry, nobody else notices, clients'
    cursors stay valid. Safe to interrupt: running it again (or any server starting) finishes
    or undoes an interrupted move. Errors: unknown_shard, unknown_namespace, already_there,
    move_in_progress, same_database."""
    from cubby.metadata.rebalance import NamespaceMover
    from cubby.metadata.store import open_store

    cfg = _server_config(state, data, db)
    cfg = cfg.with_(cache_url=cache_url) if cache_url else cfg
    store = open_store(cfg.metadata_url, shards=cfg.shard_urls, place_new=cfg.place_new)
    try:
        if cfg.cache_url not in ("memory", "none", "off", ""):
            from cubby.cache.base import open_cache
            from cubby.cache.store import CachedStore

            cache = open_cache(cfg.cache_url)
            if cache is not None:
                store.router.use_cache(CachedStore(store, cache))

        def progress(step: str, facts: dict[str, Any]) -> None:
            if state.as_json:
                click.echo(json.dumps({"progress": step, **facts}), err=True)
            elif step == "copying":
                if sys.stderr.isatty():
                    click.echo(f"\rcopying {facts['table']}: {facts['rows']} rows", nl=False, err=True)
            else:
                click.echo(("\n" if sys.stderr.isatty() else "") + f"{step} {json.dumps(facts) if facts else ''}".rstrip(), err=True)

        result = NamespaceMover(store.router, progress=progress).move(ns_id, to)
    finally:
        store.close()
    state.emit(
        result.to_dict(),
        f"moved namespace {result.ns_id} from {result.source} to {result.target} (epoch {result.epoch}) in "
        f"{result.seconds:.2f} s; writers waited {result.paused_seconds * 1000:.0f} ms",
    )


@main.group()
def token() -> None:
    """Create, list and revoke your tokens."""


@token.command("create")
@click.argument("name", required=False, default="")
@click.option("--label", default="", help="A name to recognise the token by (or give it as NAME).")
@pass_state
def token_create(state: State, name: str, label: str) -> None:
    """Create a new token, named NAME (e.g. the device it is for); it is printed on the last line."""
    if name and label and name != label:
        raise click.UsageError("give the token's name once: as NAME or as --label")
    with state.api() as api:
        t = api.create_token(name or label)
    state.emit(t, f"token {t['id']}:\n{t['token']}")


@token.command("ls")
@pass_state
def token_ls(state: State) -> None:
    """List your tokens."""
    with state.api() as api:
        for t in api.list_tokens():
            revoked = "revoked" if t.get("revoked_at") else "active"
            state.emit(t, f"{t['id']:>5}  {revoked:8} {t.get('label', '')}")


@token.command("revoke")
@click.argument("token_id", type=int)
@pass_state
def token_revoke(state: State, token_id: int) -> None:
    """Revoke a token by its id."""
    with state.api() as api:
        api.revoke_token(token_id)
    state.emit({"revoked": token_id}, f"revoked token {token_id}")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _remote_for(local: Path, remote: str | None) -> str:
    if remote is None:
        return "/" + local.resolve().name
    if remote.endswith("/"):
        return remote.rstrip("/") + "/" + local.resolve().name
    return remote


@main.command()
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote", required=False)
@click.option("--max-upload-rate", type=ByteSize(minimum=1, rate=True), default=None, help="Limit upload speed, in bytes per second, as 2M.")
@pass_state
def put(state: State, local: Path, remote: str | None, max_upload_rate: float | None) -> None:
    """Upload LOCAL (a file or a folder) to REMOTE (default: /NAME).

    In a folder, symbolic links, pipes, sockets and devices are not uploaded, and neither is
    a file or folder that cannot be read; each is listed on stderr with its reason, and the
    rest is uploaded. Anything unreadable makes the command exit with status 2
    (partial_upload): run it again once fixed, and only what is missing is sent."""
    from cubby.client.upload import upload_file, upload_tree

    target = _remote_for(local, remote)

    def line(r: Any) -> tuple[dict[str, Any], str]:
        return r.to_dict(), (
            f"{'unchanged' if r.skipped else 'uploaded'} {r.path}  rev {r.rev}  {r.size} bytes  "
            f"{r.chunks_sent}/{r.chunks} chunks sent"
        )

    def report(rs: list[Any]) -> None:
        state.emit_many([line(r) for r in rs])

    lost = 0

    def skipped(s: Any) -> None:
        # On stderr, as errors are: the JSON lines on stdout stay one shape, one per file sent.
        nonlocal lost
        lost += s.lost
        if state.as_json:
            click.echo(json.dumps({"not_uploaded": s.to_dict()}), err=True)
        else:
            click.echo(f"skipped {s.local}: {s.message} [{s.code}]", err=True)

    with state.api(max_upload_rate=max_upload_rate) as api:
        if local.is_dir():
            def total() -> int:
                n = 0
                for f in local.rglob("*"):
                    with contextlib.suppress(OSError):  # gone, or unreadable: the upload tells
                        st = f.lstat()  # one call: links are not uploaded, so not counted
                        n += st.st_size if stat.S_ISREG(st.st_mode) else 0
                return 2 * n

            with progress_bar(state, total, f"put {local.name}") as bar:
                upload_tree(api, local, target, progress=bar, on_results=report, on_skip=skipped)
            if lost:
                raise CubbyError(
                    f"{lost} item{'s' if lost > 1 else ''} could not be read and {'were' if lost > 1 else 'was'} not "
                    "uploaded (listed above); everything else was. Fix their permissions and run the command "
                    "again: only what is missing is sent",
                    code="partial_upload",
                )
        else:
            with progress_bar(state, 2 * local.stat().st_size, f"put {local.name}") as bar:
                report([upload_file(api, local, target, progress=bar)])


@main.command()
@click.argument("remote")
@click.argument("local", required=False, type=click.Path(path_type=Path))
@click.option("--max-download-rate", type=ByteSize(minimum=1, rate=True), default=None, help="Limit download speed, in bytes per second, as 2M.")
@pass_state
def get(state: State, remote: str, local: Path | None, max_download_rate: float | None) -> None:
    """Download REMOTE (a file or a folder) to LOCAL (default: its name, here)."""
    from cubby.client.download import download_file, download_tree

    with state.api(max_download_rate=max_download_rate) as api:
        entry = api.stat(remote)
        name = entry.name or "cubby"
        target = local if local is not None else Path(name)
        if target.is_dir() and entry.kind == "file":
            target = target / name

        def report(rs: list[Any]) -> None:
            state.emit_many([
                (r.to_dict(), f"downloaded {r.path} -> {r.local}  {r.size} bytes ({r.bytes_received} received)")
                for r in rs
            ])

        with progress_bar(state, entry.size, f"get {name}") as bar:
            if entry.kind == "folder":
                download_tree(api, remote, target, progress=bar, on_results=report)
            else:
                report([download_file(api, remote, target, progress=bar)])


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


@main.command("ls")
@click.argument("remote", default="/")
@click.option("-r", "--recursive", is_flag=True, help="List the whole subtree.")
@pass_state
def ls(state: State, remote: str, recursive: bool) -> None:
    """List a folder (with -r, the whole subtree, shared folders included)."""
    from cubby.client.listing import walk

    with state.api() as api:
        entry = api.stat(remote)
        entries = [entry] if entry.kind == "file" else walk(lambda p, r: api.list(p, recursive=r), remote, recursive)
        for e in entries:
            shown = e.path + ("/" if e.kind == "folder" else "")
            obj = e.to_dict()
            if e.target_ns is not None:
                obj.update(mount=True, ns_id=e.target_ns)
                shown += "  (shared folder)"
            state.emit(obj, f"{e.size if e.kind == 'file' else '-':>12}  {_when(e.mtime):16}  rev {e.rev:<6} {shown}")


@main.command()
@click.argument("remote")
@pass_state
def rm(state: State, remote: str) -> None:
    """Delete a file or a folder (history keeps the revisions)."""
    with state.api() as api:
        e = api.delete(remote)
    state.emit(e.to_dict(), f"deleted {e.path}")


@main.command()
@click.argument("src")
@click.argument("dst")
@pass_state
def mv(state: State, src: str, dst: str) -> None:
    """Move or rename; no data is sent."""
    with state.api() as api:
        try:
            if api.stat(dst).kind == "folder":
                dst = dst.rstrip("/") + "/" + api.stat(src).name
        except NotFound:
            pass
        e = api.move(src, dst)
    state.emit(e.to_dict(), f"moved {src} -> {e.path}")


@main.command()
@click.argument("remote")
@pass_state
def mkdir(state: State, remote: str) -> None:
    """Create a folder and any missing parents."""
    with state.api() as api:
        e = api.mkdir(remote)
    state.emit(e.to_dict(), f"created {e.path}")


@main.command()
@click.argument("remote")
@click.option("--limit", type=int, default=100, show_default=True)
@pass_state
def history(state: State, remote: str, limit: int) -> None:
    """Show the revisions of a file, newest first."""
    with state.api() as api:
        for r in api.history(remote, limit):
            gone = "  (deleted)" if r.get("deleted") else ""
            state.emit(r, f"rev {r['rev']:<6} {_when(r['created_at']):16} {r['size']:>12} bytes  {r['path']}{gone}")


@main.command()
@click.argument("remote")
@click.argument("rev", type=int)
@pass_state
def restore(state: State, remote: str, rev: int) -> None:
    """Make revision REV of REMOTE current again."""
    with state.api() as api:
        e = api.restore(remote, rev)
    state.emit(e.to_dict(), f"restored {e.path} to the content of rev {rev} (now rev {e.rev})")


def _register_plugins() -> None:
    """Commands that live with their subsystem (sync) add themselves if present."""
    __import__("cubby.commands.link", fromlist=["register"]).register(main)
    __import__("cubby.commands.share", fromlist=["register"]).register(main)
    try:
        from cubby.client.sync.cli import register
    except ImportError:
        return
    register(main)


_register_plugins()

if __name__ == "__main__":
    main()
