"""`FrameSink` on its own: fed as a transport feeds a buffered protocol (reads of any size
into the buffers it hands out), what comes out, what it reads where, and when it stops."""

from __future__ import annotations

import asyncio
import random

import pytest
from starlette.requests import ClientDisconnect

from cubby.core import frames
from cubby.errors import BadRequest, PayloadTooLarge
from cubby.server.framesink import AHEAD, DIRECT, FrameSink
from tests.helpers.named_chunks import named_chunks


class Owner:
    """The HTTP protocol's side, recorded: reading paused or not, how the sink ended."""

    def __init__(self) -> None:
        self.paused = False
        self.done: list[bool] = []
        self.lost: list[Exception | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def sink_done(self, sink: FrameSink, *, whole: bool) -> None:
        self.done.append(whole)


class Budget:
    def __init__(self, room: int = 1 << 40) -> None:
        self.room = room
        self.taken = 0
        self.arrived = 0

    def reserve(self, n: int) -> bool:
        if n > self.room:
            return False
        self.room -= n
        self.taken += n
        return True

    def add(self, n: int) -> None:
        self.arrived += n


def make(remaining: int, budget: Budget | None = None, max_frame: int = 4 * 1024 * 1024) -> tuple[FrameSink, Owner, Budget]:
    owner, budget = Owner(), budget or Budget()

    def pause() -> None:
        owner.paused = True

    def resume() -> None:
        owner.paused = False

    sink = FrameSink(owner, remaining, reserve=budget.reserve, arrived=budget.add, pause=pause, resume=resume, max_frame=max_frame)
    return sink, owner, budget


def feed(sink: FrameSink, owner: Owner, data: bytes, rng: random.Random, into: dict[int, int] | None = None) -> int:
    """Feed ``data`` in reads of random sizes, as long as reading is not paused; the bytes fed.
    ``into``: bytes read, by the id of the buffer the sink handed out for them."""
    at = 0
    while at < len(data) and not owner.paused and not owner.done:
        buf = sink.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), len(data) - at, rng.choice([1, 36, 1000, 70_000, 1 << 20]))
        buf[:n] = data[at : at + n]
        if into is not None:
            into[id(buf.obj)] = into.get(id(buf.obj), 0) + n
        at += n
        sink.buffer_updated(n)
    return at


def body(chunks: list[tuple[str, bytes]]) -> bytes:
    return b"".join(frames.encode(n, d) for n, d in chunks)


async def drain(sink: FrameSink, *, keep: bool = False) -> list[tuple[str, bytes]]:
    """The frames to the end; their buffers as the sink made them with ``keep``."""
    async def no_room(n: int) -> None:
        raise AssertionError("no frame should wait for room")

    out: list[tuple[str, bytes]] = []
    while (got := await sink.frames(no_room)) is not None:
        out.extend((n, d if keep else bytes(d)) for n, d in got)  # type: ignore[misc]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_frames_come_out_whole_whatever_the_reads(seed: int) -> None:
    chunks = named_chunks(seed, [300_000, 4096, 0, 17, 70_000, 65_535, 1 << 20, 5])
    data = body(chunks)
    sink, owner, budget = make(len(data))
    into: dict[int, int] = {}
    assert feed(sink, owner, data, random.Random(seed), into) == len(data)
    assert owner.done == [True]
    got = asyncio.run(drain(sink, keep=True))
    assert [(n, bytes(d)) for n, d in got] == chunks
    assert budget.arrived == len(data) == sink.received
    assert budget.taken == sum(len(d) + frames.HEADER.size for _, d in chunks)
    # The 1 MiB chunk's bytes were read into the very buffer handed out as the chunk, all
    # but what came in the read with its header (through a scratch buffer of 256 KiB) and
    # its last bytes, fewer than DIRECT.
    large = next(d for n, d in got if len(d) == 1 << 20)
    assert into.get(id(large), 0) >= len(large) - 256 * 1024 - DIRECT


def test_what_came_before_the_sink_took_over_is_taken_first() -> None:
    chunks = named_chunks(10, [100_000, 10, 200_000])
    data = body(chunks)
    sink, owner, _ = make(len(data) - 50_000)
    sink.preload(data[:50_000])
    feed(sink, owner, data[50_000:], random.Random(1))
    assert asyncio.run(drain(sink)) == chunks


def test_a_body_that_ends_inside_a_frame_is_refused_whole() -> None:
    data = body(named_chunks(11, [100_000]))[:-1]
    sink, owner, _ = make(len(data))
    feed(sink, owner, data, random.Random(2))
    assert owner.done == [True]  # the body was read to its end: the connection goes on
    with pytest.raises(BadRequest) as err:
        asyncio.run(drain(sink))
    assert err.value.code == "truncated_body"


def test_a_frame_longer_than_the_largest_chunk_stops_reading_before_any_allocation() -> None:
    good = named_chunks(12, [1000])
    data = body(good) + frames.header("ab" * 32, 64 * 1024 * 1024) + b"\0" * 1000
    sink, owner, budget = make(len(data) + (64 << 20), max_frame=4 * 1024 * 1024)
    feed(sink, owner, data, random.Random(3))
    assert owner.done == [False] and owner.paused  # no more is read
    assert budget.taken == 1000 + frames.HEADER.size  # nothing reserved for the long one
    with pytest.raises(PayloadTooLarge):
        asyncio.run(drain(sink))


def test_a_frame_without_room_waits_for_it_with_reading_paused() -> None:
    chunks = named_chunks(13, [100_000, 200_000, 5000])
    data = body(chunks)
    budget = Budget(room=150_000)
    sink, owner, _ = make(len(data), budget)
    asked: list[int] = []

    async def run() -> list[tuple[str, bytes]]:
        async def room(n: int) -> None:
            asked.append(n)
            assert owner.paused  # nothing more is read while the frame waits
            budget.room += 1 << 30
            assert budget.reserve(n)

        async def network() -> None:  # the transport: a read whenever reading is on
            rng, fed = random.Random(8), 0
            while fed < len(data):
                if not owner.paused:
                    buf = sink.get_buffer(-1)
                    n = min(len(buf), len(data) - fed, rng.choice([1, 36, 1000, 70_000]))
                    buf[:n] = data[fed : fed + n]
                    fed += n
                    sink.buffer_updated(n)
                await asyncio.sleep(0)

        feeding = asyncio.create_task(network())
        out: list[tuple[str, bytes]] = []
        while (got := await sink.frames(room)) is not None:
            out.extend((n, bytes(d)) for n, d in got)
        await feeding
        return out

    assert asyncio.run(run()) == chunks
    assert asked == [200_000 + frames.HEADER.size]


def test_a_frame_without_room_wakes_a_route_already_waiting() -> None:
    """The header of a frame that does not fit comes while the route waits for frames, with
    none before it: the route is woken to wait for room (it slept on, holding the upload)."""
    chunks = named_chunks(17, [300_000])
    data = body(chunks)
    budget = Budget(room=1000)
    sink, owner, _ = make(len(data), budget)
    asked: list[int] = []

    async def run() -> list[tuple[str, bytes]]:
        async def room(n: int) -> None:
            asked.append(n)
            budget.room += n
            assert budget.reserve(n)

        async def route() -> list[tuple[str, bytes]]:
            out: list[tuple[str, bytes]] = []
            while (got := await sink.frames(room)) is not None:
                out.extend((n, bytes(d)) for n, d in got)
            return out

        waiting = asyncio.create_task(route())
        await asyncio.sleep(0)  # the route is waiting before any byte comes
        fed = 0
        while fed < len(data):
            if not owner.paused:
                buf = sink.get_buffer(-1)
                n = min(len(buf), len(data) - fed, 50_000)
                buf[:n] = data[fed : fed + n]
                fed += n
                sink.buffer_updated(n)
            await asyncio.sleep(0)
        return await waiting

    # (a route never woken would wait, and reading stay paused, for ever)
    assert asyncio.run(asyncio.wait_for(run(), 30)) == chunks
    assert asked == [300_000 + frames.HEADER.size]


def test_reading_pauses_while_the_route_has_not_taken_what_came() -> None:
    size = 4 * 1024 * 1024
    chunks = named_chunks(14, [size] * (AHEAD // size + 2))
    data = body(chunks)
    sink, owner, _ = make(len(data))
    fed = feed(sink, owner, data, random.Random(4))
    assert owner.paused and fed < len(data)

    async def take_one() -> int:
        got = await sink.frames(lambda n: asyncio.sleep(0))
        return len(got or [])

    assert asyncio.run(take_one()) >= AHEAD // size
    assert not owner.paused  # taken: reading goes on
    feed(sink, owner, data[fed:], random.Random(5))
    assert owner.done == [True]


def test_a_client_gone_is_a_disconnect_for_the_route() -> None:
    data = body(named_chunks(15, [500_000]))
    sink, owner, _ = make(len(data))
    feed(sink, owner, data[:1000], random.Random(6))
    sink.connection_lost(None)
    assert owner.lost == [None]  # the HTTP protocol hears of it too
    with pytest.raises(ClientDisconnect):
        asyncio.run(drain(sink))


def test_a_route_that_gives_up_closes_the_connection() -> None:
    data = body(named_chunks(16, [500_000]))
    sink, owner, _ = make(len(data))
    feed(sink, owner, data[:1000], random.Random(7))
    sink.abandon()
    assert owner.done == [False] and owner.paused
