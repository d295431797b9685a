"""The S3 servers the tests run against: moto's server (always), and a real Ceph RGW when
``CUBBY_TEST_CEPH=1`` (bring one up with ``/work/shared/tools/ceph-up.sh`` and ``source`` the
``s3.env`` it writes: ``S3_ENDPOINT`` and the ``AWS_*`` credentials).

Each test gets a bucket of the session's and a prefix of its own, so tests never see each
other's objects and nothing has to be emptied between them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import boto3
import pytest

from tests.helpers.moto_server import MOTO_CREDENTIALS, moto_server

S3_SERVER_KINDS = ["moto"] + (["ceph"] if os.environ.get("CUBBY_TEST_CEPH") == "1" else [])
"""moto always; a real Ceph RGW too when asked for."""


@dataclass(frozen=True)
class S3Server:
    kind: str
    endpoint: str
    bucket: str
    credentials: dict[str, str] = field(default_factory=dict)
    """Environment variables a client needs (empty: the environment already has them)."""

    def client(self) -> object:
        """A plain boto3 client, for checking what the server really holds."""
        creds = {**os.environ, **self.credentials}
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
        )

    def url(self, prefix: str, endpoint: str | None = None) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={endpoint or self.endpoint}&region=us-east-1"


def _make_bucket(server: S3Server) -> S3Server:
    server.client().create_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
    return server


@contextmanager
def s3_server(kind: str) -> Iterator[S3Server]:
    bucket = f"cubby-test-{uuid.uuid4().hex[:12]}"
    if kind == "moto":
        with moto_server() as endpoint:
            yield _make_bucket(S3Server("moto", endpoint, bucket, dict(MOTO_CREDENTIALS)))
        return
    endpoint = os.environ.get("S3_ENDPOINT", "http://127.0.0.1:18580")
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        raise RuntimeError(
            "CUBBY_TEST_CEPH=1 needs the AWS_* credentials of ceph-up.sh's s3.env in the environment"
        )
    server = _make_bucket(S3Server("ceph", endpoint, bucket))
    try:
        yield server
    finally:  # a real cluster outlives the test run: leave it as we found it
        client = server.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):  # type: ignore[attr-defined]
            for item in page.get("Contents", ()):
                client.delete_object(Bucket=bucket, Key=item["Key"])  # type: ignore[attr-defined]
        client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def fresh_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def use_s3_server(request: pytest.FixtureRequest, kind: str) -> S3Server:
    """The session's server of that kind, its credentials set in the environment for this test."""
    server: S3Server = request.getfixturevalue(f"{kind}_s3")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for key, value in server.credentials.items():
        monkeypatch.setenv(key, value)
    return server


def s3_object_store_for_test(request: pytest.FixtureRequest, kind: str) -> object:
    """An object store opened by URL on that server, under a prefix of this test's own."""
    from cubby.blockstore.objects import open_object_store

    return open_object_store(use_s3_server(request, kind).url(fresh_prefix()))
