"""Redis pub/sub as the broker between cubby processes (redis-py's asyncio client).

The subscriber holds one pattern subscription (``PREFIX.*``) on its own connection, with
retries switched off so that every loss of that connection surfaces here: the reader then
reconnects with backoff and calls ``on_reconnect``, because Redis pub/sub keeps nothing for a
subscriber that was away. Publishing uses a separate connection.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cubby.errors import Unavailable
from cubby.notify.base import MessageHandler, ReconnectHandler

log = logging.getLogger("cubby.notify")

CONNECT_TIMEOUT = 3.0
HEALTH_CHECK_SECONDS = 10
MAX_BACKOFF = 5.0


class RedisBroker:
    def __init__(self, url: str, *, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self._pub: aioredis.Redis | None = None
        self._sub: aioredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    def _client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=HEALTH_CHECK_SECONDS,
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        if self._pub is None:
            self._pub = aioredis.Redis.from_url(
                self._url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 1)
            )
        try:
            await self._pub.publish(f"{self._prefix}.{topic}", payload)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"cannot publish to Redis at {self._url}: {exc}") from exc

    async def _open(self) -> aioredis.client.PubSub:
        client = self._client()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(f"{self._prefix}.*")
        except (RedisError, OSError) as exc:
            await pubsub.aclose()
            await client.aclose()
            raise Unavailable(f"cannot subscribe to Redis at {self._url}: {exc}") from exc
        if self._sub is not None:
            await self._sub.aclose()
        self._sub = client
        return pubsub

    async def subscribe(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        pubsub = await self._open()
        self._reader = asyncio.get_running_loop().create_task(self._read(pubsub, on_message, on_reconnect))

    async def _read(self, pubsub: aioredis.client.PubSub, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        skip = len(self._prefix) + 1
        while not self._closed:
            try:
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is not None and msg.get("type") == "pmessage":
                        channel = msg["channel"]
                        topic = channel.decode() if isinstance(channel, bytes) else str(channel)
                        data = msg["data"]
                        on_message(topic[skip:], data if isinstance(data, bytes) else str(data).encode())
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                log.warning("lost the Redis subscription (%s); reconnecting", exc)
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass
            backoff = 0.05
            while not self._closed:
                try:
                    pubsub = await self._open()
                    break
                except Unavailable:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                return
            log.info("Redis subscription re-established")
            result = on_reconnect()
            if inspect.isawaitable(result):
                await result

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
        for client in (self._pub, self._sub):
            if client is not None:
                try:
                    await client.aclose()
                except (RedisError, OSError):
                    pass
