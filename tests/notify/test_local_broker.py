"""`cubby.notify.local`, on real Unix datagram sockets: what one process publishes reaches
every process of the folder, a socket left by a dead process is cleared, and bad URLs are refused."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from cubby.errors import BadRequest
from cubby.notify.base import open_broker
from cubby.notify.local import SUFFIX, LocalBroker, folder_of


def _nothing() -> None:
    pass


async def _collect(broker: LocalBroker) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    await broker.subscribe(lambda t, p: got.append((t, p)), _nothing)
    return got


async def _until(cond: object, seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not cond() and loop.time() < end:  # type: ignore[operator]
        await asyncio.sleep(0.005)


def test_a_message_reaches_every_subscriber_of_the_folder_and_none_elsewhere(tmp_path: Path) -> None:
    async def run() -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        one, two, apart = LocalBroker(tmp_path / "a"), LocalBroker(tmp_path / "a"), LocalBroker(tmp_path / "b")
        got_one, got_two, got_apart = await _collect(one), await _collect(two), await _collect(apart)
        await two.publish("ns.7", b"42")
        await one.publish("user.3", b"")
        await _until(lambda: len(got_one) == 2 and len(got_two) == 2)
        for got in (got_one, got_two):
            assert sorted(got) == [("ns.7", b"42"), ("user.3", b"")]
        assert got_apart == []
        await one.close()
        await one.close()  # idempotent
        assert len(list((tmp_path / "a").glob("*" + SUFFIX))) == 1  # its socket is gone
        await two.publish("ns.7", b"43")
        await _until(lambda: len(got_two) == 3)
        assert got_two[-1] == ("ns.7", b"43") and len(got_one) == 2
        await two.close()
        await apart.close()

    asyncio.run(run())


def test_a_socket_left_by_a_dead_process_is_removed_at_the_next_publish(tmp_path: Path) -> None:
    dead = tmp_path / f"{os.getpid()}-dead{SUFFIX}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(dead))
    s.close()  # what SIGKILL leaves: the file, and nobody reading it

    async def run() -> None:
        live = LocalBroker(tmp_path)
        got = await _collect(live)
        await live.publish("ns.1", b"5")
        await _until(lambda: bool(got))
        assert got == [("ns.1", b"5")]
        assert not dead.exists()
        await live.close()

    asyncio.run(run())


def test_a_full_receiver_drops_and_counts_without_blocking_the_publisher(tmp_path: Path) -> None:
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(tmp_path / f"1-stuck{SUFFIX}"))  # bound and never read

    async def run() -> int:
        pub = LocalBroker(tmp_path)
        for i in range(5000):
            await pub.publish("ns.1", str(i).encode())
        await pub.close()
        return pub.dropped

    try:
        dropped = asyncio.run(run())
    finally:
        stuck.close()
    assert 0 < dropped < 5000


def test_local_urls_name_an_absolute_folder(tmp_path: Path) -> None:
    assert folder_of(f"local://{tmp_path}") == tmp_path
    assert isinstance(open_broker(f"local://{tmp_path}"), LocalBroker)
    for bad in ("local:relative/dir", "local://", "local:///x?prefix=y", "local:"):
        with pytest.raises(BadRequest) as err:
            open_broker(bad)
        assert err.value.code == "bad_broker_url"


def test_subscribing_in_a_folder_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    from cubby.errors import Unavailable

    async def run() -> None:
        broker = LocalBroker(tmp_path / "gone")
        with pytest.raises(Unavailable, match="cannot listen for notifications"):
            await broker.subscribe(lambda t, p: None, _nothing)
        with pytest.raises(Unavailable, match="cannot be read"):
            await broker.publish("ns.1", b"1")
        await broker.close()

    asyncio.run(run())


def test_a_subscriber_whose_folder_a_cleaner_removed_listens_again(tmp_path: Path) -> None:
    """A tmp cleaner may remove the folder of a server that ran for weeks: the subscriber's
    check makes it again and binds a new socket, and messages reach it as before."""
    import shutil

    folder = tmp_path / "notify"
    folder.mkdir(mode=0o700)

    async def run() -> None:
        sub = LocalBroker(folder, check_every=0.02)
        got = await _collect(sub)
        shutil.rmtree(folder)
        await _until(lambda: bool(list(folder.glob("*" + SUFFIX))) if folder.exists() else False)
        assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
        pub = LocalBroker(folder)
        await pub.publish("ns.2", b"9")
        await _until(lambda: bool(got))
        assert got == [("ns.2", b"9")]
        await pub.close()
        await sub.close()
        assert list(folder.glob("*" + SUFFIX)) == []

    asyncio.run(run())
