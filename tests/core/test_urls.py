"""`cubby.core.urls.take_query`, and the two URL readers built on it: the broker's and the
Redis cache's ``?prefix=``."""

from __future__ import annotations

import pytest

from cubby.cache.redis import split_prefix as cache_prefix
from cubby.core.urls import take_query
from cubby.errors import BadRequest
from cubby.notify.base import split_prefix as broker_prefix


def test_one_parameter_leaves_and_the_rest_stays() -> None:
    assert take_query("redis://h:1/0?prefix=a&db=2&x=", "prefix") == (["a"], "redis://h:1/0?db=2&x=")
    assert take_query("redis://h:1/0?db=2", "prefix") == ([], "redis://h:1/0?db=2")
    assert take_query("redis://h:1/0?prefix=a", "prefix") == (["a"], "redis://h:1/0")
    assert take_query("nats://h:1?prefix=a&prefix=b#frag", "prefix") == (["a", "b"], "nats://h:1#frag")
    assert take_query("redis://h/0?prefix=", "prefix") == ([""], "redis://h/0")
    # no host: the "//" stays (redis-py 8 refuses unix:/path)
    assert take_query("unix:///run/redis.sock?db=0&prefix=p", "prefix") == (["p"], "unix:///run/redis.sock?db=0")
    # the rest is re-encoded, so what the client library decodes is what was written
    assert take_query("redis://h/0?password=a%2Fb%26c&prefix=p", "prefix") == (["p"], "redis://h/0?password=a%2Fb%26c")


def test_the_cache_and_the_broker_read_their_prefix_each_their_own_way() -> None:
    assert cache_prefix("redis://h:1/0?prefix=team&db=1") == ("team:", "redis://h:1/0?db=1")
    assert cache_prefix("redis://h:1/0") == ("", "redis://h:1/0")
    assert cache_prefix("redis://h:1/0?prefix=") == ("", "redis://h:1/0")
    assert cache_prefix("unix:///run/redis.sock?prefix=t") == ("t:", "unix:///run/redis.sock")
    assert broker_prefix("redis://h:1/0?prefix=team") == ("redis://h:1/0", "team")
    assert broker_prefix("nats://h:1") == ("nats://h:1", "cubby")
    for bad in ("redis://h/0?prefix=", "redis://h/0?prefix=a.b", "redis://h/0?prefix=a%20b"):
        with pytest.raises(BadRequest) as err:
            broker_prefix(bad)
        assert err.value.code == "bad_broker_url"


def test_a_password_is_masked_and_nothing_else_changes() -> None:
    from cubby.core.urls import masked

    assert masked("postgresql+psycopg://cubby:p%40ss@db:5432/cubby") == "postgresql+psycopg://cubby:***@db:5432/cubby"
    assert masked("redis://:pw@h:6379/0?prefix=a") == "redis://:***@h:6379/0?prefix=a"
    assert masked("nats://u:p@h:4222") == "nats://u:***@h:4222"
    for plain in ("mysql://root@127.0.0.1/test", "sqlite:////x/y.db", "memory", "redis://h:6379/0"):
        assert masked(plain) == plain
