"""`check_store`: a block store is tried before a command relies on it.

Why at start. A ``--blocks`` URL can be wrong in ways the server would otherwise find only when
a user's upload fails (a 503 that says "tell the operator") or when every download does, while
``/healthz`` answers ok and the load balancer sends traffic to it:

- a bucket that does not exist, credentials or a region the bucket refuses, an endpoint that
  nobody answers, a folder the process cannot write;
- the wrong store altogether: a typo in a folder path (a new, empty folder is made for it), or
  another bucket or prefix. The metadata database indexes packs that are not there; every
  read fails, and new uploads land where no other process looks, splitting the store in two.

So `cubby serve` (for the blocks role), `cubby gc` and `cubby admin migrate-blocks` call this
first, and stop with an error that names the store and says what to check:

1. **The packs the index names are there.** The few newest packs of the index that still
   hold a chunk (`ChunkIndex.newest_packs`; a pack id begins with its creation time) are each
   looked for. If none of them is in the store, it is not this database's store: refused
   (``blocks_mismatch``), before anything is written to it. A store that lacks some but not all
   is damaged, not misnamed: that is logged, and the command goes on (what is left is served).
2. **An object can be written, read back and deleted**, under a name of its own
   (``checks/…``, outside ``packs/``, which the collector lists), so that two processes starting
   at once do not delete each other's. On S3 this is also the first PUT, which settles how
   bodies are checked (`cubby.blockstore.s3.S3ObjectStore.body_check`). A failure is
   ``blocks_unusable``: retryable when the store's own error was (an endpoint that did not
   answer within the retries' deadline), final otherwise (no such bucket, access denied).

A process killed between the write and the delete leaves one object of a few dozen bytes
under ``checks/``; nothing reads that prefix, and the next start does not need it gone.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from cubby.blockstore.index import ChunkIndex
from cubby.blockstore.objects import ObjectStore
from cubby.blockstore.packfile import pack_object_name
from cubby.errors import CubbyError

SAMPLE_PACKS = 3
"""Newest packs looked for at start: enough that one pack lost to damage does not look like
the wrong store, few enough that a start costs a handful of listings."""
CHECK_PREFIX = "checks/"
CHECK_BODY = b"cubby: a block store check, deleted at once\n"

log = logging.getLogger("cubby.blockstore")


class BlockStoreUnusable(CubbyError):
    """The block store cannot be used as it is named; the message says what to check."""

    code = "blocks_unusable"
    status = 503


@dataclass(frozen=True)
class StoreCheck:
    """What `check_store` found: packs read out of those sampled, and the seconds it took."""

    packs_sampled: int
    packs_found: int
    seconds: float


def check_store(objects: ObjectStore, index: ChunkIndex, where: str) -> StoreCheck:
    """Check ``objects`` (named ``where`` in messages: the ``--blocks`` URL, which holds no
    secret) against ``index`` as the module docstring says; raise `BlockStoreUnusable`."""
    start = time.monotonic()
    sampled = index.newest_packs(SAMPLE_PACKS)
    found = [p for p in sampled if _has(objects, p, where)]
    if sampled and not found:
        raise BlockStoreUnusable(
            f"the block store {where} holds none of the {len(sampled)} newest packs the metadata database "
            f"indexes (such as {pack_object_name(sampled[0])}): is --blocks the store this database was used "
            "with? (check the folder or the bucket and prefix; if it is, packs were lost: `cubby admin check` "
            "names the damage, and its --repair lets uploads mend it)",
            code="blocks_mismatch",
        )
    if len(found) < len(sampled):
        log.warning(
            "block store lacks indexed packs",
            extra={"blocks": where, "missing": [pack_object_name(p) for p in sampled if p not in found]},
        )
    _write_read_delete(objects, where)
    check = StoreCheck(len(sampled), len(found), round(time.monotonic() - start, 3))
    log.info("block store checked", extra={"blocks": where, **check.__dict__})
    return check


def _has(objects: ObjectStore, pack: str, where: str) -> bool:
    """Whether the pack's object exists: a listing of its own name, not a read, which a
    read-ahead wrapper would turn into megabytes (`cubby.blockstore.readahead`). On S3 that is
    one ListObjectsV2; in a folder, a walk of the two folders above it."""
    name = pack_object_name(pack)
    try:
        return any(n == name for n, _size in objects.list(name))
    except (CubbyError, OSError) as exc:
        raise _unusable(where, "read", exc) from exc


def _write_read_delete(objects: ObjectStore, where: str) -> None:
    name = f"{CHECK_PREFIX}{secrets.token_hex(12)}"
    try:
        objects.put(name, CHECK_BODY)
        try:
            back = objects.get(name)
        finally:
            objects.delete(name)
    except (CubbyError, OSError) as exc:
        raise _unusable(where, "written", exc) from exc
    if back != CHECK_BODY:
        raise BlockStoreUnusable(f"the block store {where} returned other bytes than were written to it: {name}")


def _unusable(where: str, verb: str, exc: CubbyError | OSError) -> BlockStoreUnusable:
    detail = exc.message if isinstance(exc, CubbyError) else str(exc)
    error = BlockStoreUnusable(
        f"the block store {where} cannot be {verb}: {detail} "
        "(check --blocks: the folder, or the bucket, its endpoint and region, and the AWS credentials)"
    )
    error.retryable = bool(getattr(exc, "retryable", False))
    return error


__all__ = ["CHECK_PREFIX", "SAMPLE_PACKS", "BlockStoreUnusable", "StoreCheck", "check_store"]
