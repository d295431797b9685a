"""Fixtures shared by the integration tests that drive the client library against a server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.live_server import LiveServer


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `cubby serve` on loopback, one per test module (each test makes its own user)."""
    with LiveServer(tmp_path_factory.mktemp("server") / "data") as s:
        yield s
