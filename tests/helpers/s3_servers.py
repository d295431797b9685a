"""The S3 servers the tests run against: moto's server (always), and a real Ceph RGW when
``CUBBY_TEST_CEPH=1``.

The Ceph tier does not start a cluster: bring one up first with ``ceph-up.sh`` (about 20 s
here; ``ceph-down.sh`` stops it). Its endpoint and keys are ``S3_ENDPOINT`` and the ``AWS_*``
variables when ``S3_ENDPOINT`` is set (``source`` the ``s3.env`` that ceph-up.sh writes),
otherwise read from that file itself, ``$CUBBY_CEPH_ENV`` or ceph-up.sh's default
``${TMPDIR:-/tmp}/cubby-ceph/s3.env``. Why the tests do not start it themselves: a cluster
costs 20 s and over a GiB of memory, outlives a test run by design (it is a server, like the
PostgreSQL the suite uses), and under ``pytest -n 2`` each worker is its own session, so two
workers would race to create one cluster on the same ports. Asked for and absent (no s3.env,
or nothing answering at its endpoint), every Ceph test fails with a message saying how to
start it: a tier that was asked for never skips.

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
import botocore.exceptions
import pytest
from botocore.config import Config

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

    def client(self, config: Config | None = None) -> object:
        """A plain boto3 client, for checking what the server really holds."""
        creds = {**os.environ, **self.credentials}
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
            config=config,
        )

    def url(self, prefix: str, endpoint: str | None = None) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={endpoint or self.endpoint}&region=us-east-1"

    @property
    def secret(self) -> str:
        """The secret key clients sign with here (for a proxy that checks signatures)."""
        return {**os.environ, **self.credentials}["AWS_SECRET_ACCESS_KEY"]


def _make_bucket(server: S3Server) -> S3Server:
    server.client().create_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
    return server


CEPH_UP = "/work/shared/tools/ceph-up.sh"
"""Where this machine keeps the script that starts a one-node cluster (see the docstring)."""


def ceph_env_file() -> str:
    return os.environ.get("CUBBY_CEPH_ENV") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "cubby-ceph", "s3.env"
    )


def read_env_file(path: str) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of a shell file such as ceph-up.sh's s3.env."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("export ") and "=" in line:
                name, _, value = line.removeprefix("export ").partition("=")
                found[name.strip()] = value.strip().strip("'\"")
    return found


def ceph_server(bucket: str) -> S3Server:
    """The Ceph RGW asked for (see the module docstring), checked to answer, a bucket made on it;
    otherwise an error that says how to start one."""
    how = f"start one with {CEPH_UP} (ceph-down.sh stops it), or unset CUBBY_TEST_CEPH"
    if os.environ.get("S3_ENDPOINT"):
        endpoint, credentials = os.environ["S3_ENDPOINT"], {}
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            raise RuntimeError("CUBBY_TEST_CEPH=1 with S3_ENDPOINT set needs the AWS_* keys of ceph-up.sh's s3.env")
    else:
        path = ceph_env_file()
        try:
            found = read_env_file(path)
        except FileNotFoundError:
            raise RuntimeError(f"CUBBY_TEST_CEPH=1 but no Ceph cluster: {path} does not exist; {how}") from None
        endpoint = found.get("S3_ENDPOINT", "")
        credentials = {k: found[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in found}
        if not endpoint or len(credentials) < 2:
            raise RuntimeError(f"{path} lacks S3_ENDPOINT or the AWS_* keys; {how}")
    server = S3Server("ceph", endpoint, bucket, credentials)
    quick = Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2, "mode": "standard"})
    try:
        server.client(quick).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise RuntimeError(f"CUBBY_TEST_CEPH=1 but Ceph RGW at {endpoint} does not answer ({exc}); {how}") from exc
    return server


@contextmanager
def s3_server(kind: str) -> Iterator[S3Server]:
    bucket = f"cubby-test-{uuid.uuid4().hex[:12]}"
    if kind == "moto":
        with moto_server() as endpoint:
            yield _make_bucket(S3Server("moto", endpoint, bucket, dict(MOTO_CREDENTIALS)))
        return
    server = ceph_server(bucket)
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
