"""The block store tried at start (`cubby.blockstore.startcheck`): on real folders, a SQLite
index and moto's S3 server. What a command does with a failed check (`cubby serve` does not
start, `cubby gc` touches nothing) is in tests/integration."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.opener import open_block_store
from cubby.blockstore.packfile import pack_object_name
from cubby.blockstore.s3 import S3Location, S3ObjectStore
from cubby.blockstore.startcheck import CHECK_PREFIX, SAMPLE_PACKS, BlockStoreUnusable, check_store
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.store import SqlMetadataStore, open_store
from tests.helpers.s3_servers import S3Server, fresh_prefix


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[SqlMetadataStore]:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    yield store
    store.close()


def fill(meta: SqlMetadataStore, root: Path, packs: int) -> list[str]:
    """``packs`` packs of a few chunks each in the store at ``root``; their ids, newest first."""
    store = open_block_store(str(root), meta.db)
    for i in range(packs):
        items = [(hashlib.sha256(d).hexdigest(), d) for d in (os.urandom(3000 + i) for _ in range(3))]
        store.put_many(items)
    store.close()
    return SqlChunkIndex(meta.db).newest_packs(packs)


def test_a_fresh_store_passes_and_keeps_nothing_of_the_check(meta: SqlMetadataStore, tmp_path: Path) -> None:
    objects = FolderObjectStore(tmp_path / "blocks")
    check = check_store(objects, SqlChunkIndex(meta.db), "blocks")
    assert (check.packs_sampled, check.packs_found) == (0, 0)
    assert list(objects.list()) == []  # the probe object was written, read back and deleted


def test_the_newest_packs_are_sampled_and_found(meta: SqlMetadataStore, tmp_path: Path) -> None:
    ids = fill(meta, tmp_path / "blocks", 5)
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)
    check = check_store(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db), "blocks")
    assert (check.packs_sampled, check.packs_found) == (SAMPLE_PACKS, SAMPLE_PACKS)


def test_another_folder_is_refused_and_left_empty(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """A typo in ``--blocks``: the index names packs this (new) folder does not hold. Refused
    before the write probe, so nothing lands in the wrong folder."""
    fill(meta, tmp_path / "blocks", 2)
    wrong = FolderObjectStore(tmp_path / "blokcs")
    with pytest.raises(BlockStoreUnusable) as info:
        check_store(wrong, SqlChunkIndex(meta.db), str(tmp_path / "blokcs"))
    assert info.value.code == "blocks_mismatch" and not info.value.retryable
    assert str(tmp_path / "blokcs") in info.value.message and "--blocks" in info.value.message
    assert list(wrong.list()) == []


def test_a_store_missing_some_packs_is_used_and_the_loss_logged(
    meta: SqlMetadataStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = fill(meta, tmp_path / "blocks", 4)
    os.unlink(tmp_path / "blocks" / pack_object_name(ids[0]))
    with caplog.at_level(logging.WARNING, logger="cubby.blockstore"):
        check = check_store(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db), "blocks")
    assert (check.packs_sampled, check.packs_found) == (SAMPLE_PACKS, SAMPLE_PACKS - 1)
    lacking = [r for r in caplog.records if r.getMessage() == "block store lacks indexed packs"]
    assert lacking and lacking[0].missing == [pack_object_name(ids[0])]  # type: ignore[attr-defined]


def test_a_folder_that_cannot_be_written_is_refused(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """The probe's folder is taken by a file (tests run as root, whom permissions do not stop):
    the write fails, and the error names the store and what to check."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / CHECK_PREFIX.rstrip("/")).write_text("in the way")
    with pytest.raises(BlockStoreUnusable) as info:
        check_store(FolderObjectStore(tmp_path / "blocks"), SqlChunkIndex(meta.db), "/srv/blocks")
    assert info.value.code == "blocks_unusable" and "/srv/blocks cannot be written" in info.value.message


def test_the_opener_checks_unless_told_not_to(meta: SqlMetadataStore, tmp_path: Path) -> None:
    fill(meta, tmp_path / "blocks", 1)
    with pytest.raises(BlockStoreUnusable):
        open_block_store(str(tmp_path / "elsewhere"), meta.db)
    open_block_store(str(tmp_path / "elsewhere"), meta.db, check=False).close()


def test_a_bucket_that_is_not_there_is_named_and_final(meta: SqlMetadataStore, s3_server: S3Server) -> None:
    where = f"s3://no-such-bucket-here/{fresh_prefix()}"
    objects = S3ObjectStore(S3Location("no-such-bucket-here", "", s3_server.endpoint, "us-east-1"))
    with pytest.raises(BlockStoreUnusable) as info:
        check_store(objects, SqlChunkIndex(meta.db), where)
    assert not info.value.retryable and "NoSuchBucket" in info.value.message and where in info.value.message


def test_a_bucket_passes_and_keeps_nothing_of_the_check(meta: SqlMetadataStore, s3_server: S3Server) -> None:
    objects = S3ObjectStore(S3Location.parse(s3_server.url(fresh_prefix())))
    check_store(objects, SqlChunkIndex(meta.db), "s3")
    assert list(objects.list()) == []


def test_a_lost_pack_that_holds_no_chunk_any_more_is_not_sampled(meta: SqlMetadataStore, tmp_path: Path) -> None:
    """The newest pack is gone, but its chunks were mended into another (or forgotten): it holds
    nothing, waits for a repack to retire it, and says nothing about the store. Sampled alone,
    it would have refused a healthy store."""
    older, newest = sorted(fill(meta, tmp_path / "blocks", 2))
    index = SqlChunkIndex(meta.db)
    index.forget(list(index.locations_in([newest])))
    os.unlink(tmp_path / "blocks" / pack_object_name(newest))
    assert index.newest_packs(SAMPLE_PACKS) == [older]
    check = check_store(FolderObjectStore(tmp_path / "blocks"), index, "blocks")
    assert (check.packs_sampled, check.packs_found) == (1, 1)
