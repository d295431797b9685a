"""`open_block_store`: the block store a ``--blocks`` URL names, on the metadata database's index.

Every command that touches chunks (`cubby serve`, `cubby gc`, `cubby admin migrate-blocks`)
opens its store here, so that they all agree on where chunks are, and each finds a wrong or
unusable ``--blocks`` before it relies on it (`cubby.blockstore.startcheck`). A folder that an earlier
release filled with one file per chunk (``ab/abcd…``) is opened as the pack store's legacy
store: its chunks are served as they are until `cubby admin migrate-blocks` moves them.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import Executor
from pathlib import Path

from cubby.blockstore.objects import open_object_store
from cubby.blockstore.packs import PackBlockStore
from cubby.blockstore.startcheck import check_store
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.engine import Database

_FANOUT = re.compile(r"[0-9a-f]{2}")


def folder_of(url: str) -> Path | None:
    """The local folder a blocks URL names, or None for a remote store."""
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    return None if "://" in url else Path(url)


def offers_direct_puts(url: str) -> bool:
    """Whether a blocks URL asks for uploads straight to the bucket (``s3://…&uploads=direct``):
    what the blocks role tells clients with every prove answer, so that a client asks for a
    pack to put (`cubby.blockstore.directput`) only where one may be handed out. Whether it
    is (the S3 server must be seen to check chunk signatures) the pack's plan says."""
    if not url.startswith("s3://"):
        return False
    from cubby.blockstore.s3 import S3Location

    return S3Location.parse(url).direct_uploads


def has_legacy_chunks(folder: Path) -> bool:
    """Whether ``folder`` holds chunks in the one-file-per-chunk layout of earlier releases."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if _FANOUT.fullmatch(entry.name) and entry.is_dir() and any(os.scandir(entry.path)):
                    return True
    except FileNotFoundError:
        return False
    return False


def open_block_store(url: str, db: Database, *, executor: Executor | None = None, check: bool = True) -> PackBlockStore:
    """The pack store at ``url`` with its index on ``db``; ``check``: tried first
    (`check_store`), and closed again if it fails."""
    folder = folder_of(url)
    legacy = None
    if folder is not None and has_legacy_chunks(folder):
        from cubby.blockstore.local import LocalBlockStore

        legacy = LocalBlockStore(folder)
    objects, index = open_object_store(url), SqlChunkIndex(db)
    if check:
        try:
            check_store(objects, index, url)
        except BaseException:
            objects.close()
            raise
    return PackBlockStore(objects, index, executor=executor, legacy=legacy)
