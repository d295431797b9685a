"""NATS (core, at-most-once) as the broker between cubby processes (nats-py).

nats-py reconnects by itself, re-sends the subscription and buffers what is published while
it is away; cubby only has to resynchronise after a reconnect, because NATS keeps nothing
for a subscriber that was away. One connection serves publishing and subscribing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from cubby.errors import Unavailable
from cubby.notify.base import MessageHandler, ReconnectHandler

log = logging.getLogger("cubby.notify")

CONNECT_TIMEOUT = 3.0


class NatsBroker:
    def __init__(self, url: str, *, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self._nc: NatsClient | None = None
        self._lock = asyncio.Lock()
        self._on_reconnect: ReconnectHandler | None = None

    async def _connection(self) -> NatsClient:
        async with self._lock:
            if self._nc is not None and not self._nc.is_closed:
                return self._nc

            async def reconnected() -> None:
                log.info("NATS connection re-established")
                if self._on_reconnect is not None:
                    result = self._on_reconnect()
                    if inspect.isawaitable(result):
                        await result

            async def disconnected() -> None:
                log.warning("lost the NATS connection; reconnecting")

            async def error(exc: Exception) -> None:
                log.debug("NATS: %s", exc)

            try:
                self._nc = await asyncio.wait_for(
                    nats.connect(
                        self._url,
                        connect_timeout=CONNECT_TIMEOUT,
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.2,
                        reconnected_cb=reconnected,
                        disconnected_cb=disconnected,
                        error_cb=error,
                    ),
                    CONNECT_TIMEOUT * 2,
                )
            except (NatsError, OSError, TimeoutError) as exc:
                raise Unavailable(f"cannot connect to NATS at {self._url}: {exc}") from exc
            return self._nc

    async def publish(self, topic: str, payload: bytes) -> None:
        nc = await self._connection()
        try:
            await nc.publish(f"{self._prefix}.{topic}", payload)
        except (NatsError, OSError) as exc:
            raise Unavailable(f"cannot publish to NATS at {self._url}: {exc}") from exc

    async def subscribe(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        nc = await self._connection()
        self._on_reconnect = on_reconnect
        skip = len(self._prefix) + 1

        async def handler(msg: Any) -> None:
            on_message(msg.subject[skip:], msg.data)

        try:
            await nc.subscribe(f"{self._prefix}.>", cb=handler, pending_msgs_limit=1_000_000)
            await nc.flush(timeout=int(CONNECT_TIMEOUT))
        except (NatsError, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot subscribe to NATS at {self._url}: {exc}") from exc

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.close()
            except (NatsError, OSError):
                pass
