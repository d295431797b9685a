"""A server killed (SIGKILL) while a client uploads file after file: what it acknowledged
before, for a test to read back from the restarted server (the kill -9 tests of the S3 block
store, through the blocks role and straight to the bucket)."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Sequence
from pathlib import Path

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from cubby.errors import CubbyError
from tests.helpers.live_server import LiveServer


def kill_mid_upload(
    server: LiveServer, token: str, folder: Path, sizes: Sequence[int], seed: int, acknowledged_first: int
) -> dict[str, str]:
    """Upload files of random ``sizes`` to ``/f/N.bin`` from a thread until the server has
    acknowledged ``acknowledged_first`` of them, then kill it in the middle of the next: the
    acknowledged files (remote path -> SHA-256). An upload the kill interrupts is not
    acknowledged; any error other than the server going away fails the test."""
    acknowledged: dict[str, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def upload_until_killed() -> None:
        rng = random.Random(seed)
        with ApiClient(server.url, token, timeout=30) as api:
            for i in range(10_000):
                if stop.is_set():
                    return
                data = rng.randbytes(rng.choice(list(sizes)))
                local = folder / f"up-{i}"
                local.write_bytes(data)
                try:
                    upload_file(api, local, f"/f/{i}.bin")
                except CubbyError:
                    return  # the server went away mid-request: not acknowledged
                except BaseException as exc:
                    errors.append(exc)
                    return
                acknowledged[f"/f/{i}.bin"] = hashlib.sha256(data).hexdigest()

    uploader = threading.Thread(target=upload_until_killed)
    uploader.start()
    try:
        while len(acknowledged) < acknowledged_first and uploader.is_alive():
            threading.Event().wait(0.05)
        server.stop(kill=True)  # SIGKILL, in the middle of whatever upload is running
    finally:
        stop.set()
        uploader.join(60)
    assert not errors and len(acknowledged) >= acknowledged_first, errors
    return acknowledged
