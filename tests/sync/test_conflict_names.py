"""Conflicted copies of names at the 255-byte limit: the name is cut to fit, keeping its
extension, on a character boundary; and two clients editing such a file converge."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from cubby.client.sync.conflicts import conflict_name, split_ext
from cubby.core import paths
from cubby.errors import InvalidPath
from tests.sync.conftest import Clients, local_tree

names = st.text(st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"), min_size=1, max_size=300)


@given(stem=names, ext=st.text(st.characters(whitelist_categories=["Ll", "Lo"]), max_size=300), host=st.text(max_size=80))
def test_conflict_names_are_always_valid_and_keep_a_short_extension(stem: str, ext: str, host: str) -> None:
    name = (stem.strip(" .") or "x")[:255]
    name = name.encode()[:250].decode("utf-8", "ignore").rstrip(" .") or "x"
    name = paths.fit_name(name, "", "." + ext if ext else "")
    try:
        path = paths.normalize("/d/" + name)  # what the planner holds: a valid, NFC path
    except InvalidPath:
        assume(False)
    name = paths.split(path)[1]
    got = conflict_name(path, host, "2026-12-01", lambda k: False)
    assert paths.normalize(got) == got  # a valid path: every name within 255 bytes
    new_name = paths.split(got)[1]
    assert len(new_name.encode()) <= paths.MAX_NAME_BYTES
    kept = split_ext(name)[1]
    if len(kept.encode()) < 100:
        assert new_name.endswith(kept)


def test_a_255_byte_name_gets_a_conflicted_copy_that_fits() -> None:
    name = "é" * 125 + ".pdf"
    assert len(name.encode()) == 254
    got = paths.split(conflict_name("/" + name, "laptop", "2026-12-01", lambda k: False))[1]
    assert got.endswith(" (conflicted copy from laptop 2026-12-01).pdf")
    assert len(got.encode()) <= 255 and got.startswith("é" * 50)
    long_ext = "a." + "b" * 252
    got = paths.split(conflict_name("/" + long_ext, "laptop", "2026-12-01", lambda k: False))[1]
    assert len(got.encode()) <= 255 and "conflicted copy" in got


def test_two_clients_editing_a_255_byte_name_converge(clients: Clients) -> None:
    """The extension is all but the first letter: too long to keep, it is cut with the stem."""
    name = "r." + "é" * 126 + "x"
    assert len(name.encode()) == 255
    a, b = clients.new("a"), clients.new("b")
    (a.root / name).write_bytes(b"first")
    clients.settle()
    (a.root / name).write_bytes(b"from a")
    (b.root / name).write_bytes(b"from b, longer")
    assert a.run_once().converged
    report = b.run_once()
    assert report.converged and not report.failed, report.to_dict()
    clients.settle()
    tree = local_tree(b.root)
    assert tree == local_tree(a.root)
    copies = [n for n in tree if "conflicted copy" in n]
    assert len(copies) == 1 and len(copies[0].encode()) <= 255
    assert tree[copies[0]] == b"from b, longer" and tree[name] == b"from a"
