"""The WebSocket codec of the lean front: the opening handshake checked against RFC 6455 §4.2.1,
and framing done by the ``websockets`` package's sans-I/O `Protocol`.

The framing rules a hand-written decoder gets wrong — RSV bits without an extension, control
frames over 125 bytes or fragmented, a continuation without a start or a new message inside
one, unmasked client frames, invalid UTF-8 in text (1007), messages over the size cap (1009) —
are the library's: `Protocol.receive_data` fails the connection with the right close code and
queues the close frame, and answers pings and close frames by itself. Only the UTF-8 of a whole
text message is checked by the caller (1007). A `Protocol` costs about 1.1 KB, a third of an
idle subscriber's budget: the connection keeps one only while a frame is in progress and drops
it between frames (`at_rest`); server messages are whole frames encoded here.

The handshake is checked here rather than by ``websockets.ServerProtocol`` because the front
has already parsed the request with httptools: re-parsing it would keep a second copy of every
header per connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping

from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol, Side, State

from cubby.errors import BadRequest

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LOG = logging.getLogger("cubby.notify.websocket")
HANDSHAKE_HEADERS = frozenset({b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version"})
"""The request headers `accept` reads (the front keeps only these)."""


def accept(method: bytes, headers: Mapping[bytes, bytes]) -> bytes:
    """The ``101 Switching Protocols`` answer to a valid opening handshake; `BadRequest`
    (code ``bad_websocket``) for anything else: not GET, no ``Upgrade: websocket``, no
    ``upgrade`` token in ``Connection``, a key that is not 16 bytes in base64, a version
    other than 13."""
    if method != b"GET":
        raise BadRequest("a WebSocket is opened with GET", code="bad_websocket")
    if headers.get(b"upgrade", b"").strip().lower() != b"websocket":
        raise BadRequest("the Upgrade header must be 'websocket'", code="bad_websocket")
    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    if b"upgrade" not in tokens:
        raise BadRequest("the Connection header must include 'Upgrade'", code="bad_websocket")
    key = headers.get(b"sec-websocket-key", b"").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("Sec-WebSocket-Key must be 16 bytes in base64", code="bad_websocket") from exc
    if headers.get(b"sec-websocket-version", b"").strip() != b"13":
        raise BadRequest("only WebSocket version 13 is spoken here", code="bad_websocket")
    digest = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: " + digest + b"\r\n\r\n"
    )


def server_protocol(max_size: int) -> Protocol:
    """The framing state of one accepted connection (no extensions are negotiated)."""
    return Protocol(Side.SERVER, state=State.OPEN, max_size=max_size, logger=LOG)


def at_rest(ws: Protocol) -> bool:
    """Whether ``ws`` sits between whole messages with nothing buffered, so that a new
    `server_protocol` would continue exactly where it stands. (It reads the library's state
    attributes ``expect_continuation_frame`` and ``reader``, which it documents no other way.)"""
    return ws.state is State.OPEN and not ws.expect_continuation_frame and not ws.reader.buffer


def text_frame(text: bytes) -> bytes:
    """One unmasked text frame (a server message), encoded once even for a fan-out."""
    return Frame(Opcode.TEXT, text).serialize(mask=False)


def close_frame(code: int, reason: str = "") -> bytes:
    """The server's close frame with ``code`` (4401: token revoked, 4429: too many waits...)."""
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=False)


__all__ = ["Frame", "Opcode", "Protocol", "State", "accept", "at_rest", "close_frame", "server_protocol", "text_frame"]
