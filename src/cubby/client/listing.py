"""Listing a tree the way a person sees it: through shared folders.

The server lists one namespace at a time: a recursive listing of the root shows a shared
folder's mount point (a folder entry with ``target_ns``) but not what is inside it, since that
lives in another namespace. `walk` lists each mount point it meets in turn, so ``cubby ls -r /``
shows the whole tree, and tells the caller which entries are mount points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from cubby.model import Entry

Lister = Callable[[str, bool], Iterable[Entry]]
"""``(path, recursive) -> entries``: `ApiClient.list` or anything shaped like it."""


def walk(lister: Lister, path: str, recursive: bool) -> Iterator[Entry]:
    """The entries below ``path`` (all of them when ``recursive``), descending into every
    shared folder met on the way; a mount point is an entry whose ``target_ns`` is set.
    Each namespace is entered once, whatever a (faulty) server says."""
    seen: set[int] = set()
    todo = [path]
    while todo:
        for e in lister(todo.pop(0), recursive):
            yield e
            if recursive and e.target_ns is not None and e.target_ns not in seen:
                seen.add(e.target_ns)
                todo.append(e.path)
