"""The in-process broker: the embedded default, when metadata and notification roles share
one process. Publishing calls the subscribers directly; nothing can be lost, so
``on_reconnect`` is never called."""

from __future__ import annotations

from cubby.notify.base import MessageHandler, ReconnectHandler


class MemoryBroker:
    def __init__(self) -> None:
        self._handlers: list[MessageHandler] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        for handler in list(self._handlers):
            handler(topic, payload)

    async def subscribe(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._handlers.append(on_message)

    async def close(self) -> None:
        self._handlers.clear()
