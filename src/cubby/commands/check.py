"""`cubby admin check`'s answer: the JSON object for scripts and the lines for a person.

Apart from the command (`cubby.cli.admin_check`), which only wires the stores together, so
that what a check reports is read in one place: a count of each kind of damage, the files it
breaks (the first ``--limit`` of them) and, with ``--repair``, what was forgotten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cubby.blockstore.scrub import ScrubReport
from cubby.commands.units import count_of
from cubby.metadata.damage import DamagedFile


def check_result(report: ScrubReport, files: Sequence[DamagedFile], total: int, forgotten: int) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "packs": report.packs,
        "packs_missing": report.packs_missing,
        "packs_wrong_size": report.packs_wrong_size,
        "orphan_packs": report.orphan_packs,
        "held_chunks": report.held_chunks,
        "chunks_damaged": len(report.damaged),
        "chunks_unlocated": len(report.chunks_unlocated),
        "chunks_lost": len(report.chunks_lost),
        "read_data": report.read_data,
        "chunks_read": report.chunks_read,
        "bytes_read": report.bytes_read,
        "chunks_corrupt": len(report.chunks_corrupt),
        "referenced_chunks": report.referenced_chunks,
        "chunks_missing": len(report.chunks_missing),
        "files_damaged": total,
        "files": [f.to_dict() for f in files],
        "chunks_forgotten": forgotten,
        "chunks_found_unreadable": report.found_unreadable,
        "findings_read_intact": len(report.findings_intact),
    }


def check_lines(
    report: ScrubReport, files: Sequence[DamagedFile], total: int, forgotten: int, *, repair: bool
) -> list[str]:
    """A summary line (``no damage found`` or ``DAMAGED``), then what is damaged, the files it
    breaks, and what to do about it."""
    read = f"; read {count_of(report.chunks_read, 'chunk')} ({report.bytes_read} bytes)" if report.read_data else ""
    verdict = "no damage found" if report.ok else "DAMAGED"
    if report.ok and not report.read_data:
        verdict += " (chunk bytes not read: --read-data reads them)"
    lines = [f"{count_of(report.packs, 'pack')}, {count_of(report.held_chunks, 'held chunk')}{read}: {verdict}"]
    lines += [f"missing pack: {name}" for name in report.packs_missing]
    lines += [f"pack of the wrong size: {name}" for name in report.packs_wrong_size]
    if report.damaged:
        lines.append(
            f"{count_of(len(report.damaged), 'chunk')} cannot be read: {len(report.chunks_lost)} in missing or short "
            f"packs, {len(report.chunks_unlocated)} held with no place, {len(report.chunks_corrupt)} corrupt, "
            f"{len(report.chunks_missing)} named by files but not held"
        )
    lines += [f"damaged file: namespace {f.ns_id} {f.path} (rev {f.rev}, {count_of(f.chunks, 'chunk')})" for f in files]
    if total > len(files):
        lines.append(f"... and {total - len(files)} more damaged files (--limit)")
    if report.found_unreadable:
        hint = "" if report.read_data else " (--read-data reads every chunk)"
        lines.append(
            f"{count_of(report.found_unreadable, 'chunk')} found unreadable by a server and not yet mended by an "
            f"upload of their bytes{hint}"
        )
    if report.findings_intact:
        done = "dropped" if repair else "--repair drops them"
        lines.append(f"{count_of(len(report.findings_intact), 'chunk')} of those read intact where found unreadable: {done}")
    if report.orphan_packs:
        lines.append(f"{count_of(report.orphan_packs, 'orphan pack')} no index names (cubby gc deletes them)")
    if forgotten:
        lines.append(
            f"forgot {count_of(forgotten, 'damaged chunk')}: the next upload of their bytes stores them again and "
            "mends every file above (a `cubby put` of a copy under a new name will do); until then those files "
            "cannot be read"
        )
    elif report.damaged and not repair:
        lines.append("with --repair, the damaged chunks are forgotten, so that uploading their bytes again mends the files")
    return lines


__all__ = ["check_lines", "check_result"]
