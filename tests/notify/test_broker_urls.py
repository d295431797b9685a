"""Broker URLs: what `--broker` accepts and how it refuses the rest."""

from __future__ import annotations

import pytest

from cubby.errors import BadRequest
from cubby.notify.base import open_broker, split_prefix
from cubby.notify.memory import MemoryBroker
from cubby.notify.nats import NatsBroker
from cubby.notify.redis import RedisBroker


def test_known_schemes_open_their_broker_without_connecting() -> None:
    assert isinstance(open_broker("memory"), MemoryBroker)
    assert isinstance(open_broker("redis://127.0.0.1:6379/0?prefix=abc"), RedisBroker)
    assert isinstance(open_broker("nats://127.0.0.1:4222"), NatsBroker)


def test_the_prefix_is_taken_out_of_the_url() -> None:
    assert split_prefix("redis://h:1/0?prefix=team-a&x=1") == ("redis://h:1/0?x=1", "team-a")
    assert split_prefix("nats://h:1") == ("nats://h:1", "cubby")
    # a unix socket has no host: the URL keeps its "//" (redis-py 8 refuses "unix:/path")
    assert split_prefix("unix:///run/redis.sock?db=0&prefix=p") == ("unix:///run/redis.sock?db=0", "p")
    assert split_prefix("unix:///run/redis.sock?db=0") == ("unix:///run/redis.sock?db=0", "cubby")


@pytest.mark.parametrize("url", ["bogus://x", "http://127.0.0.1", "", "redis://h/0?prefix=a.b", "nats://h?prefix="])
def test_bad_broker_urls_get_a_clear_error(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        open_broker(url)
    assert info.value.code == "bad_broker_url" and info.value.message
