"""Sizes on the command line (`cubby.commands.units`): ``48M``, ``1.5G``, ``512k`` or bytes, for
every size and rate option, through the real ``cubby`` command where it matters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cubby.commands.units import parse_size
from tests.helpers.live_server import ROOT, LiveServer


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("48M", 48 << 20), ("48m", 48 << 20), ("1.5G", 3 << 29), ("512k", 512 << 10),
     ("2MiB", 2 << 20), ("2MB", 2 << 20), (" 16 M ", 16 << 20), ("1T", 1 << 40), ("0.5K", 512)],
)
def test_sizes_take_a_unit_in_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "M", "-1M", "2X", "1e6", "2MB/s", "2 M B", "0x10", "1,5M"])
def test_what_is_not_a_size_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(bad)


def cubby(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "cubby", *args], env=env, capture_output=True, text=True, check=False)


def test_a_size_option_refuses_a_bad_size_and_one_too_small(tmp_path: Path) -> None:
    bad = cubby("sync", "--once", "--max-upload-rate", "2X", str(tmp_path))
    assert bad.returncode == 2 and "'2X' is not a size" in bad.stderr, bad.stderr
    small = cubby("serve", "--data", str(tmp_path / "data"), "--max-buffered-bodies", "100k")
    assert small.returncode == 2 and "less than the least allowed" in small.stderr, small.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_a_server_takes_its_budgets_with_units(tmp_path: Path) -> None:
    args = ["--max-buffered-bodies", "2M", "--max-buffered-uploads", "8M", "--max-request-bytes", "64M"]
    with LiveServer(tmp_path / "data", extra_args=args) as server:
        token = server.add_user("units")
        up = subprocess.run(
            [sys.executable, "-m", "cubby", "--url", server.url, "--token", token, "put", "--max-upload-rate", "8M",
             str(ROOT / "README.md"), "/README.md"],
            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True, text=True, check=False,
        )
        assert up.returncode == 0 and "README.md" in up.stdout, up.stderr
