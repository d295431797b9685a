"""An upload's chunk frames read off the socket straight into each chunk's own buffer: `FrameSink`.

Why. Through uvicorn, every byte of an upload's body was copied five times on the event loop
before the store saw it (uvloop's read buffer into ``bytes``, httptools' ``on_body`` into
another, uvicorn's ``bytearray`` of the body, ``bytes()`` of that for the ASGI message, and
`cubby.core.frames.FrameReader` joining the pieces into chunks), and each of some 12,400 reads
per GiB was a trip through ASGI ``receive``, Starlette's stream, the body cap, the budget and
the reader. Profiled during a 1 GiB ``cubby put``, those copies and trips were most of the
event loop's time; reading the body as below takes 0.3-0.5 CPU s off the server's 2.2-2.4 for
a 1 GiB put into Ceph. The client already reads downloads this way (`cubby.core.frames.read_frames`).

How. For the rest of an upload's body, the connection's transport is given to a sink (an
`asyncio.BufferedProtocol`; `cubby.server.guard` switches it in and back) for exactly the bytes
its Content-Length says are still to come, so the sink never reads into the next request:

- A frame with at least `DIRECT` bytes still to come is read by the kernel straight into the
  buffer that becomes the chunk's bytes: no copy at all.
- Anything else (headers, small chunks, a frame's last few bytes) is read into a scratch buffer
  of `SCRATCH` bytes and copied into its frame: a copy of bytes in the CPU's cache, as before.
- A frame's buffer is only made once the route's budget has room for it (``reserve``, or, when
  it has none, the route waits for room with reading paused: `frames`), so a hostile length
  costs nothing and a crowd of stalled uploads holds no more than the budget allows.
- Reading pauses while more than `AHEAD` bytes of whole frames wait for the route (it is
  storing a batch): the next batch arrives while one is stored, and no more.
- A frame longer than the largest chunk, a body that ends inside a frame, and a client gone
  are errors raised to the route, as `FrameReader` raises them.

The route wakes once per batch of whole frames, not per read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.requests import ClientDisconnect

from cubby.core.chunking import MAX_SIZE
from cubby.core.frames import HEADER, ends_inside_a_frame, frame_too_long

DIRECT = 64 * 1024
"""A frame with at least this many bytes still to come is read straight into its buffer."""
SCRATCH = 256 * 1024
"""The scratch buffer for everything else: what one read of a body of small chunks takes."""
AHEAD = 16 * 1024 * 1024
"""Bytes of whole frames the route has not taken yet beyond which reading pauses (one batch,
`cubby.server.blocks.INGEST_BATCH_BYTES`, arriving while the one before it is stored)."""


class SinkOwner(Protocol):
    """The HTTP protocol whose connection the sink reads for a while (`cubby.server.guard`):
    what the transport tells the sink that is the connection's business, and its end."""

    def connection_lost(self, exc: Exception | None) -> None: ...

    def eof_received(self) -> bool | None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def sink_done(self, sink: FrameSink, *, whole: bool) -> None:
        """The sink has finished: ``whole``, the body was read to its end (the connection
        may serve its next request); else it stopped in the middle (the connection must close)."""


Frame = tuple[str, bytearray]


class FrameSink(asyncio.BufferedProtocol):
    """Reads ``remaining`` bytes of a body of chunk frames (module docstring).

    ``reserve(n)``: take ``n`` bytes of the budget if there is room now (a frame's length and
    header, before its buffer is made); ``arrived(n)``: ``n`` more bytes came (the rate the
    budget judges a body by); ``pause`` / ``resume``: stop and restart reading the connection."""

    def __init__(
        self, owner: SinkOwner, remaining: int, *, reserve: Callable[[int], bool], arrived: Callable[[int], None],
        pause: Callable[[], None], resume: Callable[[], None], max_frame: int = MAX_SIZE,
    ) -> None:
        self._owner = owner
        self._left = remaining
        self._reserve = reserve
        self._arrived = arrived
        self._pause_reading = pause
        self._resume_reading = resume
        self._max_frame = max_frame
        self._scratch = memoryview(bytearray(min(SCRATCH, max(remaining, 1))))
        self._src = memoryview(b"")  # bytes read or handed over and not yet consumed
        self._direct = False  # the last buffer handed out was a frame's own
        self._head = bytearray(HEADER.size)
        self._head_got = 0
        self._name = ""
        self._data: bytearray | None = None
        self._got = 0
        self._wanted = 0  # bytes of budget the frame whose header is in needs, not yet had
        self._ready: list[Frame] = []
        self._ready_bytes = 0
        self._paused = False
        self._ended = False
        self._error: BaseException | None = None
        self._event = asyncio.Event()
        self.received = 0
        """Bytes of the body this sink has taken in (the log's count of bytes received)."""

    # -- the body already received before the sink took over --------------------------------------

    def preload(self, data: bytes) -> None:
        """Take ``data``, the part of the body the HTTP protocol had received already."""
        self.received += len(data)
        self._src = memoryview(data)
        self._consume()
        self._settle()

    @property
    def paused(self) -> bool:
        return self._paused

    # -- asyncio.BufferedProtocol ----------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        data = self._data
        if data is not None and len(data) - self._got >= DIRECT:
            self._direct = True
            return memoryview(data)[self._got : self._got + min(len(data) - self._got, self._left)]
        self._direct = False
        return self._scratch[: min(len(self._scratch), self._left)]

    def buffer_updated(self, nbytes: int) -> None:
        if self._ended or self._error is not None:
            return
        self._left -= nbytes
        self.received += nbytes
        self._arrived(nbytes)
        if self._direct:
            self._got += nbytes
            if self._data is not None and self._got == len(self._data):
                self._finish_frame()
        else:
            self._src = self._scratch[:nbytes]
            self._consume()
        self._settle()

    def eof_received(self) -> bool | None:
        return self._owner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ended and self._error is None:
            self._error = ClientDisconnect()
            self._event.set()
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    # -- the route's side ------------------------------------------------------------------------

    async def frames(self, room: Callable[[int], Awaitable[None]]) -> list[Frame] | None:
        """The whole frames that came since the last call, waiting for at least one; None at
        the end of the body. When a frame's buffer waits for room in the budget, ``room(n)``
        is awaited for it (it takes the room, or raises: 503, the client gone)."""
        while True:
            if self._error is not None:
                raise self._error
            if self._ready:
                out, self._ready, self._ready_bytes = self._ready, [], 0
                self._settle()
                return out
            if self._ended:
                return None
            if self._wanted:
                await room(self._wanted)
                self._grant()
                continue
            self._event.clear()
            await self._event.wait()

    def abandon(self) -> None:
        """The route stopped before the end of the body (it failed): the connection closes."""
        if not self._ended and self._error is None:
            self._fail(ClientDisconnect())

    # -- inside --------------------------------------------------------------------------------

    def _consume(self) -> None:
        """Move the bytes of ``_src`` into their frames, until it is empty or a frame's buffer
        waits for budget (``_wanted``)."""
        src, off, end = self._src, 0, len(self._src)
        size = HEADER.size
        while off < end and not self._wanted:
            data = self._data
            if data is None:
                take = min(size - self._head_got, end - off)
                self._head[self._head_got : self._head_got + take] = src[off : off + take]
                self._head_got += take
                off += take
                if self._head_got == size and not self._open_frame():
                    break
            else:
                take = min(len(data) - self._got, end - off)
                data[self._got : self._got + take] = src[off : off + take]
                self._got += take
                off += take
                if self._got == len(data):
                    self._finish_frame()
        self._src = src[off:]

    def _open_frame(self) -> bool:
        """The header is in: make the frame's buffer if the budget has room now (True), else
        ask the route to wait for it (False). Raises on a length above the largest chunk."""
        raw, length = HEADER.unpack(self._head)
        if length > self._max_frame:
            self._fail(frame_too_long(length, self._max_frame))
            return False
        self._name = raw.hex()
        if not self._reserve(length + HEADER.size):
            self._wanted = length + HEADER.size
            self._event.set()  # the route waits for room; it may be waiting for bytes now
            return False
        self._start_data(length)
        return True

    def _start_data(self, length: int) -> None:
        self._data = bytearray(length)
        self._got = 0
        if length == 0:
            self._finish_frame()

    def _grant(self) -> None:
        """The route took the room the waiting frame needed: make its buffer, go on."""
        length = self._wanted - HEADER.size
        self._wanted = 0
        self._start_data(length)
        self._consume()
        self._settle()

    def _finish_frame(self) -> None:
        assert self._data is not None
        self._ready.append((self._name, self._data))
        self._ready_bytes += len(self._data)
        self._data = None
        self._head_got = 0
        self._event.set()

    def _settle(self) -> None:
        """After any change: end at the end of the body, else pause or resume reading."""
        if self._ended or self._error is not None:
            return
        if self._left == 0 and not self._src and not self._wanted:
            if self._data is not None or self._head_got:
                self._fail(ends_inside_a_frame(), whole=True)
                return
            self._ended = True
            self._set_paused(False)
            self._event.set()
            self._owner.sink_done(self, whole=True)
            return
        self._set_paused(bool(self._wanted) or bool(self._src) or self._ready_bytes >= AHEAD)

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            (self._pause_reading if paused else self._resume_reading)()

    def _fail(self, exc: BaseException, *, whole: bool = False) -> None:
        self._error = exc
        self._event.set()
        if not whole:
            self._set_paused(True)
        self._owner.sink_done(self, whole=whole)
