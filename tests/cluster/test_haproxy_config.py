"""The configuration generator: haproxy accepts what it writes, the shipped example is its
output, and the routes match the servers' own table of which role serves which path."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cubby.deploy.haproxy import Backends, main, render
from tests.helpers.cluster import HAPROXY
from tests.helpers.live_server import ROOT

EXAMPLE_ARGS = [
    "--bind", ":8765", "--meta", "10.0.0.11:8001", "--meta", "10.0.0.12:8001", "--blocks", "10.0.0.21:8002",
    "--blocks", "10.0.0.22:8002", "--notify", "10.0.0.31:8003", "--notify", "10.0.0.32:8003",
    "--stats-socket", "/run/haproxy/admin.sock",
]


def test_haproxy_accepts_the_generated_configuration(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(Backends(["127.0.0.1:1"], ["127.0.0.1:2"], ["127.0.0.1:3"]), bind="127.0.0.1:8765", maxconn=100))  # -c never binds)
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = cfg.read_text()
    for line in ("acl to_blocks path_beg /api/v1/blocks/", "acl to_blocks path_beg /l/", "acl to_notify path_beg /api/v1/notify",
                 "option forwardfor", "option abortonclose", "option httpchk GET /healthz"):
        assert line in text


def test_the_shipped_example_is_the_generators_output(capsys) -> None:  # type: ignore[no-untyped-def]
    main(EXAMPLE_ARGS)
    assert capsys.readouterr().out == (ROOT / "deploy" / "haproxy.cfg").read_text()
