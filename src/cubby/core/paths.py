"""Path rules: what a valid cubby path is, and the key under which it is looked up.

A path is stored twice: as given (NFC-normalised, for display) and as a *key* (NFC, then
case-folded) for lookups and uniqueness, so that ``A.txt`` and ``a.txt`` (or the NFC and NFD
spellings of ``é.txt``) cannot both exist in one folder. Paths are absolute within a namespace,
``/`` separated, and never end in ``/``; the root is ``/``.

Every function here is pure, so the rules are tested exhaustively without a disk or a database.
"""

from __future__ import annotations

import re
import unicodedata

from cubby.errors import InvalidPath

MAX_NAME_BYTES = 255
"""Longest component, in UTF-8 bytes: what ext4, APFS and NTFS all accept."""

MAX_PATH_BYTES = 2900
"""Longest path key, in UTF-8 bytes: keeps (namespace, key) inside MariaDB's 3072-byte index limit."""

ROOT = "/"

_CONTROL = re.compile("[\x00-\x1f\x7f]")
"""A control character: one search per name, where a scan of a tree checks every name."""


_PLAIN_NAME = re.compile(r"(?! )[^\x00-\x1f\x7f\\/]{0,%d}[^\x00-\x1f\x7f\\/ .]" % (MAX_NAME_BYTES - 1))
"""An ASCII name `_check_component` accepts, as one match: no control character, backslash or
slash, no leading space, no trailing space or dot (which also refuses ``.`` and ``..``), at
most `MAX_NAME_BYTES` long (one byte per ASCII character)."""
_PLAIN_BODY = re.compile(rf"(?:{_PLAIN_NAME.pattern}/)*{_PLAIN_NAME.pattern}")
"""A path of such names joined by ``/``, as one match: half the time of a match per name, on
a path `normalize` sees several times per file of a commit (client and server)."""


def _check_component(name: str, original: str) -> None:
    if name in ("", ".", ".."):
        what = "an empty component" if name == "" else f"a '{name}' component"
        raise InvalidPath(f"path {original!r} has {what}; use plain names separated by single '/'")
    if "\x00" in name:
        raise InvalidPath(f"path {original!r} contains a NUL byte")
    if _CONTROL.search(name):
        raise InvalidPath(f"path {original!r} contains a control character")
    if "\\" in name:
        raise InvalidPath(f"path {original!r} contains a backslash; use '/' as the separator")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidPath(f"name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if name != name.strip(" ") or name.endswith("."):
        raise InvalidPath(
            f"name {name!r} begins or ends with a space or ends with '.', which Windows cannot store"
        )


def normalize(path: str) -> str:
    """Return the display form of ``path``: NFC, leading ``/``, no trailing ``/``.

    Raises `InvalidPath` for anything that could escape or be ambiguous: ``..`` and ``.``
    components, empty components (``a//b``), NUL and control characters, backslashes,
    over-long names or paths. A relative path is taken relative to the root, but a path
    may not start with more than one ``/``.
    """
    if not isinstance(path, str):
        raise InvalidPath("path must be a string")
    if path in ("", "/"):
        return ROOT
    if path.isascii():
        # already NFC, and each name needs one match (`_PLAIN_NAME`): paths are normalised
        # by the thousand (a journal replayed, a tree listed) and most are plain ASCII
        body = path[1:] if path.startswith("/") else path
        body = body[:-1] if body.endswith("/") else body
        if len(body) < MAX_PATH_BYTES and _PLAIN_BODY.fullmatch(body):
            return "/" + body
    original = path
    if "\x00" in path:
        raise InvalidPath(f"path {original!r} contains a NUL byte")
    path = unicodedata.normalize("NFC", path)
    body = path.removeprefix("/")
    body = body.removesuffix("/")
    parts = body.split("/")
    for part in parts:
        _check_component(part, original)
    result = "/" + "/".join(parts)
    if len(key(result).encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidPath(f"path is longer than {MAX_PATH_BYTES} bytes")
    return result


def check_length(path: str) -> str:
    """``path`` if its key fits `MAX_PATH_BYTES`, else `InvalidPath` (code ``path_too_long``).

    `normalize` checks the path it is given; a folder move also lengthens every path below the
    folder, and one of those past the limit would be a file that no client can write (``File
    name too long``) on every sync pass, so a move checks each path it rebuilds."""
    size = len(key(path).encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise InvalidPath(
            f"this would make {path[:60]!r}... {size} bytes long, more than {MAX_PATH_BYTES}: "
            "move it higher up or use shorter names",
            code="path_too_long",
        )
    return path


def fit_name(stem: str, tail: str = "", ext: str = "", limit: int = MAX_NAME_BYTES) -> str:
    """``stem + tail + ext``, with ``stem`` cut short so that the whole fits in ``limit`` UTF-8
    bytes: how a generated name (``name (1)``, ``name (conflicted copy ...).ext``) stays a
    valid name whatever the length of the one it is made from. The cut falls on a character
    boundary and drops the spaces and dots it leaves at the end (Windows cannot store them);
    an extension too long to keep is treated as part of the stem."""
    if len((tail + ext).encode("utf-8")) >= limit:
        stem, ext = stem + ext, ""
    room = max(limit - len((tail + ext).encode("utf-8")), 1)
    short = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .") or "_"
    return short + tail + ext


def key(path: str) -> str:
    """The lookup key of an already normalised path: NFC of the case-folded form. (An ASCII
    path needs neither: its NFC is itself and its case folding is `str.lower`. Keys are taken
    of every item of every tree on every sync pass, and most paths are ASCII.)"""
    if path.isascii():
        return path.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def split(path: str) -> tuple[str, str]:
    """Split a normalised path into (parent, name); the root has no parent."""
    if path == ROOT:
        raise InvalidPath("the root has no parent")
    parent, _, name = path.rpartition("/")
    return (parent or ROOT, name)


def join(parent: str, name: str) -> str:
    return ("" if parent == ROOT else parent) + "/" + name


def child(parent: str, name: str) -> str:
    """`normalize` of ``join(parent, name)`` for an already normalised ``parent``, checking only
    the new name: a scan of a tree normalises each folder once, not once per file below it.
    (An ASCII name is its own NFC and is checked by one expression: a scan calls this for
    every item of the tree, and most names are plain ASCII.)"""
    if name.isascii() and _PLAIN_NAME.fullmatch(name):
        result = join(parent, name)
        if len(result) <= MAX_PATH_BYTES or len(key(result).encode("utf-8")) <= MAX_PATH_BYTES:
            return result
    name = unicodedata.normalize("NFC", name)
    result = join(parent, name)
    _check_component(name, result)
    if len(key(result).encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidPath(f"path is longer than {MAX_PATH_BYTES} bytes")
    return result


def ancestors(path: str) -> list[str]:
    """Every proper ancestor of a normalised path, root first (root excluded)."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def is_within(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or below it (compares keys, so case-insensitively)."""
    p, f = key(path), key(folder)
    return f == ROOT or p == f or p.startswith(f + "/")


def rebase(path: str, old_prefix: str, new_prefix: str) -> str:
    """Replace the leading ``old_prefix`` of ``path`` (matched case-insensitively) by ``new_prefix``."""
    if not is_within(path, old_prefix):
        raise InvalidPath(f"{path!r} is not within {old_prefix!r}")
    depth = 0 if old_prefix == ROOT else old_prefix.count("/")
    rest = path.split("/")[depth + 1 :]
    base = "" if new_prefix == ROOT else new_prefix
    return (base + "/" + "/".join(rest)) if rest else (new_prefix)
