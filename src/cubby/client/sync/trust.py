"""What the sync client accepts from the server, and where on disk it lets itself write.

The server is not trusted with the client's disk: a compromised server, or anyone on a
plain-HTTP path, could send a journal entry that mkdirs ``/../X`` or moves a folder to
``/.cubby/state.db``. Two guards stop that, one at each end:

- `remote_path` is the check at the door. Every path the client takes from the server (journal
  entries, listings, mount points, the answers to its own operations) passes it before it
  enters the client's trees; it is the rule ``cubby get`` applies (`cubby.core.paths.normalize`:
  no ``.``/``..``/empty components, NUL, control characters, backslashes, over-long names or
  paths), plus "never the client's own state folder, whatever its case". A refused entry is
  skipped and recorded (`Refusal`), so ``cubby status`` can say what was never applied.
- `local_target` is the last guard, at the disk: whatever path reaches a disk operation, it
  resolves the target's folder (following symbolic links) and refuses anything that is not
  strictly inside the synced folder, or that is inside its state folder. It should never fire
  once the first guard holds; it is there so that a bug in between cannot become a write
  outside the folder.

Both are pure apart from `local_target`'s ``realpath``, and raise `UnsafePath`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cubby.client.localfiles import lies_within
from cubby.client.sync.ignore import STATE_DIR
from cubby.core import paths
from cubby.errors import BadRequest, InvalidPath


class UnsafePath(BadRequest):
    """A path from the server (or on its way to the disk) that the client will not use."""

    code = "unsafe_path"


@dataclass(frozen=True)
class Refusal:
    """One thing the server sent that the client refused to apply."""

    ns_id: int
    source: str
    """Where it came from: ``journal``, ``listing``, ``mount`` or ``answer``."""
    path: str
    """The path as the server sent it (``repr``-safe: control characters are escaped)."""
    reason: str
    jid: int = 0


def is_state_name(name: str) -> bool:
    """True for the state folder's name in any case (``.cubby``, ``.CUBBY``, ``.Cubby``): a
    case-insensitive disk (macOS, Windows) would open the state folder under every spelling."""
    return paths.key(name) == STATE_DIR


USER_PATH_BYTES = paths.MAX_PATH_BYTES + paths.MAX_NAME_BYTES + 1
"""Longest path of the user's tree: a mount point's name, then a path of the shared namespace."""


def remote_path(path: object, *, in_user_tree: bool = True) -> str:
    """The normalised form of a path received from the server, or `UnsafePath`. The root
    itself is refused: nothing the server sends may replace it. Each name follows the rules
    of `cubby.core.paths`; a namespace's own path is at most `paths.MAX_PATH_BYTES` long, a
    path of the user's tree (``in_user_tree``) at most `USER_PATH_BYTES` (it may begin with a
    mount point) and may not begin with the state folder. A namespace-internal path (a shared
    folder's journal) is checked for that once it is placed under its mount."""
    if not isinstance(path, str) or not path.startswith("/") or path == paths.ROOT:
        raise UnsafePath(f"the server sent {shown(path)!r} where a path below the root belongs")
    names = path[1:].split("/")
    try:
        if "" in names:
            raise InvalidPath(f"path {shown(path)!r} has an empty component")
        norm = _ascii_whole(path) or "/" + "/".join(paths.normalize("/" + name)[1:] for name in names)
    except InvalidPath as exc:
        raise UnsafePath(exc.message) from None
    limit = USER_PATH_BYTES if in_user_tree else paths.MAX_PATH_BYTES
    if len(paths.key(norm).encode("utf-8")) > limit:
        raise UnsafePath(f"{shown(path)[:60]!r}... is longer than {limit} bytes")
    if in_user_tree and is_state_name(names[0]):
        raise UnsafePath(f"{shown(path)!r} names the sync client's own state folder")
    return norm


def _ascii_whole(path: str) -> str | None:
    """An ASCII path with no empty name, normalised whole, or None to do it name by name. For
    ASCII, NFC changes nothing, so the whole path's `paths.normalize` checks and returns each
    name as its own would (in one regular-expression match: journals and answers bring paths
    by the thousand); it also refuses a path longer than `paths.MAX_PATH_BYTES`, which a path
    of the user's tree may be, so a refusal here decides nothing."""
    if not path.isascii():
        return None
    try:
        return paths.normalize(path)
    except InvalidPath:
        return None


def mount_path(path: object) -> str:
    """A namespace's mount point from the account: the root, or a path `remote_path` accepts."""
    return paths.ROOT if path == paths.ROOT else remote_path(path)


def shown(path: object) -> str:
    """A path as it may be printed: NUL and control characters escaped, at most 300 characters."""
    text = path if isinstance(path, str) else repr(path)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 300 else text[:300] + "..."


Resolved = dict[str, str]
"""A batch's folders found inside the synced folder: path under the root as given -> the same
folder with every symbolic link resolved (`local_target`)."""


def local_target(root: Path, rel: str, resolved: Resolved | None = None) -> Path:
    """``root / rel`` if that is a place strictly inside the synced folder ``root`` (already
    resolved) and outside its state folder; `UnsafePath` otherwise.

    The folder that would hold the target is resolved (symbolic links followed, as the
    kernel would) and must lie under ``root``; the last component itself is not followed,
    because every operation (rename, unlink, rmdir, mkdir) acts on the name, not on what a
    link there points to. A caller resolving many paths at once (a batch of uploads or
    downloads) passes ``resolved``, the folders already found inside (and where they
    resolve to), so that each folder is resolved once for the batch rather than once per
    file, and a folder whose parent was resolved costs one ``lstat``: a folder that is not a
    link resolves to its parent's place plus its name (what ``realpath`` would find, walking
    every level of the path again)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise UnsafePath(f"refusing to touch {shown(rel)!r}: not a plain path inside the synced folder")
    if is_state_name(parts[0]):
        raise UnsafePath(f"refusing to touch {shown(rel)!r}: it is inside the sync client's state folder")
    top = os.fspath(root)
    target = f"{top}/{rel}" if top != "/" else f"/{rel}"
    parent = target.rpartition("/")[0] or "/"
    if resolved is not None:
        if parent in resolved:
            return Path(target)
        resolved.setdefault(top, top)  # the root is resolved already: its folders start from it
    folder = _resolve(parent, resolved) if resolved is not None else os.path.realpath(parent)
    if not lies_within(folder, top):
        raise UnsafePath(f"refusing to touch {shown(rel)!r}: it resolves outside {root}")
    inside = folder[len(top) :].lstrip("/").split("/", 1)[0]
    if inside and is_state_name(inside):
        raise UnsafePath(f"refusing to touch {shown(rel)!r}: it resolves into the sync client's state folder")
    if resolved is not None:
        resolved[parent] = folder
    return Path(target)


def _resolve(folder: str, resolved: Resolved) -> str:
    """``realpath(folder)``, from its parent's resolution when the batch has it and ``folder``
    is a real folder (not a link): then it is that place plus its name."""
    up, _, name = folder.rpartition("/")
    real_up = resolved.get(up)
    if real_up is not None:
        try:
            st = os.lstat(folder)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            return f"{real_up}/{name}" if real_up != "/" else f"/{name}"
    return os.path.realpath(folder)
