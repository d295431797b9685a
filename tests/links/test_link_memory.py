"""A folder link's zip is streamed: the server's peak memory while sending a zip several times
larger than a small cap stays under that cap (Linux: peak RSS from /proc, reset before)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.client.transfer import upload_file
from tests.helpers.live_server import LiveServer

pytestmark = [pytest.mark.xdist_group("links"), pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

MiB = 1024 * 1024
CAP = 48 * MiB


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_zip_of_a_folder_larger_than_the_memory_cap(tmp_path: Path) -> None:
    payload = os.urandom(64 * MiB)
    local = tmp_path / "big.bin"
    local.write_bytes(payload)
    with LiveServer(tmp_path / "data") as server:
        assert server.proc is not None
        token = server.add_user("dora")
        with ApiClient(server.url, token, timeout=300) as api:
            for i in range(4):  # 256 MiB in the folder; deduplicated, so only 64 MiB is stored
                upload_file(api, local, f"/big/copy{i}.bin")
            link = api.create_link("/big")
        pid = server.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        before = _kib(pid, "VmRSS")
        sent = 0
        with httpx.stream("GET", link["url"], timeout=300) as r:
            assert r.status_code == 200
            for piece in r.iter_raw(MiB):
                sent += len(piece)
        peak = _kib(pid, "VmHWM")
    assert sent > 4 * len(payload)  # the bytes themselves are checked in test_links_http
    assert peak - before < CAP, f"the server grew by {(peak - before) / MiB:.0f} MiB sending a {sent / MiB:.0f} MiB zip"
