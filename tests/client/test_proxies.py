"""`proxies_from_environment`: whether httpx would send requests through a proxy (then the
client's own HTTP path stands aside and httpx sends everything)."""

from __future__ import annotations

import os

import pytest

from cubby.client.api import proxies_from_environment


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"PATH": "/usr/bin", "HOME": "/root"}, False),
        ({"no_proxy": "localhost"}, False),  # says where not to use one: no proxy named
        ({"HTTPS_PROXY": "http://proxy:3128"}, True),
        ({"http_proxy": "http://proxy:3128"}, True),
        ({"ALL_PROXY": "socks5://proxy:1080"}, True),
        ({"https_proxy": ""}, False),  # set but empty
    ],
)
def test_a_proxy_is_seen_only_where_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: bool
) -> None:
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxies_from_environment() is expected
