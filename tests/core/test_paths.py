"""Path rules, exhaustively: what is refused, and that keys identify case and NFC/NFD variants."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cubby.core import paths
from cubby.errors import InvalidPath

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"), min_size=1, max_size=20
).filter(lambda n: n not in (".", "..") and n == n.strip(" ") and not n.endswith("."))


@given(st.lists(names, min_size=1, max_size=6))
def test_normalize_round_trips_and_is_idempotent(parts):
    p = paths.normalize("/" + "/".join(parts))
    assert paths.normalize(p) == p
    assert p == unicodedata.normalize("NFC", p)
    assert paths.key(paths.key(p)) == paths.key(p)
    parent, name = paths.split(p)
    assert paths.join(parent, name) == p


@given(st.lists(names, min_size=1, max_size=4))
def test_case_and_normalisation_variants_share_a_key(parts):
    p = "/" + "/".join(parts)
    # Case-folding is not closed under upper() (dotless i), so compare with casefold() itself.
    variants = [p.casefold(), unicodedata.normalize("NFD", p), unicodedata.normalize("NFD", p.casefold()), p]
    keys = set()
    for v in variants:
        try:
            keys.add(paths.key(paths.normalize(v)))
        except InvalidPath:
            pass  # upper-casing can make a name longer than the limit (ß -> SS)
    assert len(keys) <= 1


@pytest.mark.parametrize(
    "bad",
    ["/a/../b", "..", "/..", "/a/.", "a//b", "//a", "/a\x00", "/a\nb", "/a\\b", "/" + "n" * 256, "/ x", "/x ", "/x."],
)
def test_invalid_paths(bad):
    with pytest.raises(InvalidPath):
        paths.normalize(bad)


def test_ascii_case_variants_share_a_key():
    assert paths.key(paths.normalize("/Docs/Report.TXT")) == paths.key(paths.normalize("/docs/report.txt"))


def test_root_forms():
    assert paths.normalize("") == paths.normalize("/") == "/"
    assert paths.normalize("a/b/") == "/a/b"


def test_rebase_and_within():
    assert paths.rebase("/STRASSE/b", "/straße", "/x") == "/x/b"
    assert paths.rebase("/A", "/a", "/b") == "/b"
    assert paths.is_within("/a/b", "/A") and not paths.is_within("/ab", "/a")
    assert paths.ancestors("/a/b/c") == ["/a", "/a/b"]
    with pytest.raises(InvalidPath):
        paths.rebase("/other", "/a", "/b")


def test_long_paths_are_refused():
    deep = "/" + "/".join(["d" * 200] * 20)
    with pytest.raises(InvalidPath, match="longer"):
        paths.normalize(deep)


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=40))
def test_key_fast_path_for_ascii_agrees_with_nfc_casefold(text: str) -> None:
    """`key` skips normalising an ASCII path (the common case, on every sync pass); the key
    must be the one the full rule gives, for ASCII and non-ASCII paths alike."""
    path = "/" + text
    assert paths.key(path) == unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def test_every_control_character_is_refused_and_no_other_ascii_character() -> None:
    """The control-character test is one regular expression search per name (a scan checks
    every name of the tree); it must refuse exactly 0-31 and 127."""
    for code in range(128):
        if chr(code) in "/\\":
            continue  # the separator, and the backslash (refused for its own reason)
        refused = False
        try:
            paths.child("/", f"a{chr(code)}b")
        except InvalidPath:
            refused = True
        assert refused == (code < 32 or code == 127), code


@given(st.text(alphabet=st.sampled_from("ab. /\\\x01\x7f"), max_size=30))
def test_the_ascii_fast_path_agrees_with_the_rule_for_each_name(text: str) -> None:
    """`normalize` accepts a plain ASCII path with one match of the whole path; what it
    answers must be what checking each name with `_check_component` answers."""
    def by_names(path: str) -> str | None:
        body = path.removeprefix("/").removesuffix("/")
        try:
            for part in body.split("/"):
                paths._check_component(part, path)
        except InvalidPath:
            return None
        return "/" + body

    try:
        fast: str | None = paths.normalize(text)
    except InvalidPath:
        fast = None
    if text in ("", "/"):
        assert fast == paths.ROOT
    else:
        assert fast == by_names(text)
