"""`cubby.server.bodies.parse_json`: orjson first, the standard parser for what orjson refuses,
so that what is accepted and what is refused is the same as with the standard parser alone."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cubby.errors import BadRequest
from cubby.server.bodies import MAX_JSON_DEPTH, field_int, json_depth, parse_json


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": [1, 2.5, -0, 1e5, "x\\u00e9\\ud83d\\ude00", null, true, false]}',
        b'{"a": 1, "a": 2}',
        b'"\\u0000"',
        b'{"path": "/a[b]{c}\\"[[[", "n": [[[]]]}',
        b"1e400",  # refused by orjson, read by the standard parser (infinity) as before
        b'[' + b"9" * 40 + b"]",
    ],
)
def test_accepted_json_reads_as_the_standard_parser_reads_it(raw):
    body = parse_json(raw)
    want = json.loads(raw)
    if raw.startswith(b"[9"):  # beyond 64 bits: a float, which every integer field refuses
        assert body == [float(want[0])]
        with pytest.raises(BadRequest):
            field_int({"n": body[0]}, "n")
        with pytest.raises(BadRequest):
            field_int({"n": want[0]}, "n")
    else:
        assert body == want


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b'{"a": Infinity}', b'"\\ud800"', b'"a\\udc00"', b"\xef\xbb\xbf{}", b"[1,]", b'{"a": "\x01"}', b"\xff"],
)
def test_refused_json_is_refused_as_malformed(raw):
    with pytest.raises(BadRequest) as info:
        parse_json(raw)
    assert info.value.code == "malformed_json"


def test_depth_ignores_brackets_inside_strings_and_escapes():
    assert json_depth(b'{"a": "[[[{{{", "b": ["\\"]]]"]}') == 2
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    assert json_depth(deep) == MAX_JSON_DEPTH + 1
    with pytest.raises(BadRequest):
        parse_json(deep)
    assert parse_json(b'["' + b"[" * 100 + b'"]') == ["[" * 100]


def _depth_by_running_sum(raw: bytes) -> int:
    """The depth as first written: escapes, then strings, cut out by regex, then the deepest
    running sum of the brackets left (what `json_depth`'s shortcut must always agree with)."""
    raw = re.sub(rb"\\.", b"", raw, flags=re.DOTALL)
    brackets = re.sub(rb'"[^"]*"', b"", bytes(b for b in raw if b in b'[]{}"'))
    steps = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}  # a quote left over counts 0
    return max(itertools.accumulate(steps.get(b, 0) for b in brackets), default=0)


@given(st.binary(max_size=80).map(lambda b: bytes(b'[]{}"\\a,'[x % 8] for x in b)))
def test_depth_agrees_with_the_running_sum_on_any_brackets_quotes_and_escapes(raw):
    assert json_depth(raw) == _depth_by_running_sum(raw)


@pytest.mark.parametrize("depth", [0, 1, 5, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100])
def test_depth_of_deep_and_unbalanced_bodies(depth):
    for raw in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth, b"]" + b"[" * depth):
        assert json_depth(raw) == _depth_by_running_sum(raw)


H = "ab" * 32


@pytest.mark.parametrize(
    "body",
    [
        {"path": "/a/b.txt", "size": 5, "chunks": [{"hash": H, "size": 5}], "expected_rev": None, "mtime": 1.5},
        {"path": "/a", "size": 0, "chunks": [], "expected_rev": 3, "mtime": 7, "mode": 0o100755},
        {"path": "/a", "size": 5.0, "chunks": [{"hash": H, "size": 5}]},  # 5.0 is the integer 5
        {"path": "/a", "size": 5, "chunks": [{"hash": H, "size": 5}], "mtime": None, "extra": 1},
    ],
)
def test_a_commit_parses_alike_on_the_quick_path_and_the_checked_one(body):
    from cubby.server.meta import checked_commit, parse_commit

    assert parse_commit(body) == checked_commit(body)


@pytest.mark.parametrize(
    "body",
    [
        {"path": "/a", "size": True, "chunks": []},
        {"path": "/a", "size": -1, "chunks": []},
        {"path": "/a", "size": 5, "chunks": [{"hash": H.upper(), "size": 5}]},
        {"path": "/a", "size": 5, "chunks": [{"hash": H, "size": 0}]},
        {"path": "/a", "size": 5, "chunks": [], "mtime": float("nan")},
        {"path": 7, "size": 5, "chunks": []},
        {"path": "/a", "size": 5, "chunks": {}},
        [],
    ],
)
def test_a_malformed_commit_is_refused(body):
    from cubby.server.meta import parse_commit

    with pytest.raises(BadRequest):
        parse_commit(body)
