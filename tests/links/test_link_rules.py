"""The pure rules behind links: subpaths never leave their folder, expiry parsing, passwords
from request headers, and password hashes."""

from __future__ import annotations

import base64
import datetime as dt

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from cubby.commands.link import parse_expires as cli_expires
from cubby.core import paths
from cubby.errors import BadRequest, InvalidPath
from cubby.metadata.links import check_password, hash_password
from cubby.server.links import parse_expires, parse_subpath, presented_password

NOW = 1_800_000_000.0


@given(st.text(alphabet=st.sampled_from(list("ab./\\\x00 .é")), max_size=30))
def test_a_subpath_is_refused_or_stays_below_the_folder(raw: str) -> None:
    try:
        sub = parse_subpath(raw)
    except InvalidPath:
        return
    if sub is None:
        assert raw == ""
        return
    inside = paths.join("/Folder", sub.lstrip("/"))
    assert paths.is_within(inside, "/Folder") and inside != "/Folder"
    assert ".." not in inside.split("/") and "\x00" not in inside


@pytest.mark.parametrize("raw", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\x00b", "..", "."])
def test_escaping_subpaths_are_invalid(raw: str) -> None:
    with pytest.raises(InvalidPath):
        parse_subpath(raw)


def test_expiry_forms() -> None:
    assert parse_expires(None, NOW) is None
    assert parse_expires(NOW + 60, NOW) == NOW + 60
    assert parse_expires("2030-01-01T00:00:00Z", NOW) == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_expires("2030-01-01T02:00:00+02:00", NOW) == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    assert parse_expires("2030-01-01", NOW) == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()  # no zone: UTC
    for bad, code in [("soon", "invalid_expires"), ({"a": 1}, "invalid_expires"), (False, "invalid_expires"),
                      (10**400, "invalid_expires"), ("2030-02-30", "invalid_expires"),
                      (NOW, "expires_in_past"), ("2020-01-01", "expires_in_past"), (NOW + 200 * 365 * 86400, "invalid_expires")]:
        with pytest.raises(BadRequest) as e:
            parse_expires(bad, NOW)
        assert e.value.code == code, bad


def test_cli_dates_mean_the_end_of_that_day_in_local_time() -> None:
    when = cli_expires("2031-05-06")
    assert when.tzinfo is not None
    assert when.replace(tzinfo=None) == dt.datetime(2031, 5, 7, 0, 0)
    assert cli_expires("2031-05-06T10:00:00+00:00") == dt.datetime(2031, 5, 6, 10, tzinfo=dt.UTC)
    with pytest.raises(click.BadParameter):
        cli_expires("in a week")


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("12h", 43200), ("7d", 604800), ("2W", 1209600)])
def test_cli_expiry_may_be_a_time_from_now(text: str, seconds: int) -> None:
    now = dt.datetime(2031, 5, 6, 10, tzinfo=dt.UTC)
    assert cli_expires(text, now) == now + dt.timedelta(seconds=seconds)
    assert cli_expires(text).tzinfo is not None  # from the clock, aware


@pytest.mark.parametrize("bad", ["h", "-1h", "1.5h", "1y", "3 d", "d7"])
def test_a_malformed_time_from_now_is_refused(bad: str) -> None:
    with pytest.raises(click.BadParameter):
        cli_expires(bad)


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "path": "/l/x", "headers": raw, "query_string": b""})


def test_password_from_basic_auth_or_header() -> None:
    basic = base64.b64encode("any one:pä:ss".encode()).decode()
    assert presented_password(_request({"Authorization": f"Basic {basic}"})) == "pä:ss"
    assert presented_password(_request({"X-Cubby-Link-Password": "h"})) == "h"
    assert presented_password(_request({})) is None
    assert presented_password(_request({"Authorization": "Bearer abc"})) is None
    assert presented_password(_request({"Authorization": "Basic ***"})) is None
    assert presented_password(_request({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()})) is None


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_password_hashes_accept_only_their_password(right: str, other: str) -> None:
    stored = hash_password(right, n=2**4)  # cheap parameters: the rule, not the cost, is tested
    assert check_password(right, stored)
    assert check_password(other, stored) == (other == right)
    assert hash_password(right, n=2**4) != stored  # a fresh salt each time


def test_malformed_password_hashes_never_match() -> None:
    for stored in ("", "scrypt$1$2", "bcrypt$16$8$1$00$00", "scrypt$x$8$1$00$00", "scrypt$16$8$1$zz$00"):
        assert not check_password("pw", stored)
