"""Planning downloads straight from the bucket (`cubby.blockstore.direct`): a signed read covers
chunks asked for that lie back to back in one pack, and never a byte between or around them."""

from __future__ import annotations

from pathlib import Path

from cubby.blockstore.direct import plan_direct_reads
from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.objects import SignedRead
from cubby.blockstore.packfile import Location, pack_object_name
from cubby.blockstore.readahead import ReadAheadObjectStore
from cubby.blockstore.retrying import RetryingObjectStore


class Signing(FolderObjectStore):
    """A folder that signs reads (as an S3 store with ``downloads=direct``), each a record of
    what it covers."""

    def signed_read(self, name: str, offset: int, length: int) -> SignedRead | None:
        return SignedRead(f"http://bucket/{name}", {"Range": f"bytes={offset}-{offset + length - 1}"})


def name(i: int) -> str:
    return f"{i:064x}"


def test_only_chunks_back_to_back_in_one_pack_share_a_read(tmp_path: Path) -> None:
    located = {
        name(1): Location("p1", 8, 100, 99),
        name(2): Location("p1", 108, 50, 49),  # right after 1
        name(3): Location("p1", 200, 10, 9),  # 42 bytes after 2: another chunk lies between
        name(4): Location("p2", 210, 10, 9),  # where 3 ends, but in another pack
    }
    plan = plan_direct_reads(Signing(tmp_path), [name(1), name(2), name(3), name(4), name(6)], located, min_read=0)
    assert plan is not None and plan.fetch == [name(6)]  # not in a pack: fetched through the server
    assert [(r.read.url, r.read.headers["Range"], [c[0] for c in r.chunks]) for r in plan.reads] == [
        (f"http://bucket/{pack_object_name('p1')}", "bytes=8-157", [name(1), name(2)]),
        (f"http://bucket/{pack_object_name('p1')}", "bytes=200-209", [name(3)]),
        (f"http://bucket/{pack_object_name('p2')}", "bytes=210-219", [name(4)]),
    ]
    assert plan.reads[0].chunks == [(name(1), 100, 99), (name(2), 50, 49)]
    # asked in the other order, neighbours do not share a read (a read's chunks are in its byte order)
    backwards = plan_direct_reads(Signing(tmp_path), [name(2), name(1)], located, min_read=0)
    assert backwards is not None and [len(r.chunks) for r in backwards.reads] == [1, 1]


def test_a_read_stays_within_its_span(tmp_path: Path) -> None:
    located = {name(i): Location("p", 8 + 100 * i, 100, 99) for i in range(10)}
    plan = plan_direct_reads(Signing(tmp_path), [name(i) for i in range(10)], located, span=350, min_read=0)
    assert plan is not None and [len(r.chunks) for r in plan.reads] == [3, 3, 3, 1]


def test_a_store_that_signs_no_reads_plans_none_through_its_wrappers(tmp_path: Path) -> None:
    located = {name(1): Location("p", 8, 100, 99)}
    assert plan_direct_reads(FolderObjectStore(tmp_path), [name(1)], located, min_read=0) is None
    wrapped = ReadAheadObjectStore(RetryingObjectStore(FolderObjectStore(tmp_path)))
    assert plan_direct_reads(wrapped, [name(1)], located, min_read=0) is None
    signing = ReadAheadObjectStore(RetryingObjectStore(Signing(tmp_path)))
    plan = plan_direct_reads(signing, [name(1)], located, min_read=0)
    assert plan is not None and plan.reads[0].read.headers == {"Range": "bytes=8-107"}


def test_reads_of_a_few_small_chunks_are_left_to_the_fetch_route(tmp_path: Path) -> None:
    """Small chunks back to back share a read that is worth a GET; scattered ones, or one
    alone, are fetched through the blocks role (many in one answer)."""
    located = {name(i): Location("p", 8 + 4096 * i, 4096, 4095) for i in range(100)}
    together = plan_direct_reads(Signing(tmp_path), [name(i) for i in range(100)], located, min_read=256 << 10)
    assert together is not None and together.fetch == [] and [len(r.chunks) for r in together.reads] == [100]
    scattered = [name(i) for i in range(0, 100, 2)]
    apart = plan_direct_reads(Signing(tmp_path), scattered, located, min_read=256 << 10)
    assert apart is not None and apart.reads == [] and apart.fetch == scattered
    # and a store that signs no reads says so, whatever the sizes
    assert plan_direct_reads(FolderObjectStore(tmp_path), scattered, located, min_read=256 << 10) is None
