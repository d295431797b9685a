"""A live server in a thread on loopback, shared by a module's web tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.thread_server import ThreadServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with ThreadServer(tmp_path_factory.mktemp("web") / "data") as s:
        yield s
