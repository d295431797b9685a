"""Every batch and window size of the client, in one place.

They bound two things: how much a request carries (the server's limits: `MAX_BATCH` items,
`MAX_WINDOW_CHUNKS` chunks per prove or upload, `MAX_PROOFS` proofs) and how much the client
holds in memory (a window of chunk bytes, `IN_FLIGHT` windows with the server, `KEEP_BYTES`
of a small file kept from its naming pass). `cubby put`/`get` and `cubby sync` use the same.
"""

from __future__ import annotations

from cubby.client.api import MAX_BATCH

MiB = 1024 * 1024

BATCH = MAX_BATCH
"""Commits, chunk lists or folder operations per request."""
MAX_PROOFS = 4096
MAX_WINDOW_CHUNKS = 4000
"""Chunks per prove/upload window: within both the server's proof limit and a frame batch."""
UPLOAD_WINDOW = 16 * MiB
"""Chunk bytes read, proved and uploaded per window."""
DOWNLOAD_WINDOW = 16 * MiB
"""Distinct chunk bytes asked of the server per fetch request; with the cache on disk, the most
a download holds in memory."""
DOWNLOAD_IN_FLIGHT = 2
"""Fetch requests of one file's download with the server at once, until the blocks role
advises otherwise: the next window is asked for while one is written, so the server reads
ahead and no round trip is waited for; memory holds at most this many windows. Four from
object storage, as the blocks role advises there (`ApiClient.fetch_advice`,
`cubby.server.blocks.FETCHES_FROM_OBJECTS`): a 1 GiB ``cubby get`` from Ceph RGW on the
2-core machine was faster with four (2.13-2.28 s against 2.44-2.58, `bench/s3_transfer.py`,
2026-12-06; 2.46 against 2.70, 2026-12-07), but from the default store, local packs, no
faster or slower (1.58-2.40 s against 1.06-1.66, four alternated rounds; paired 1.00 in
eight, 2026-12-07) and with twice the memory (125-150 MB of RSS against 61-76)."""
STAGE_IN_FLIGHT = 2
"""Batches of small files a sync download fetches and writes to temp files at once, on worker
threads, while the engine's thread lands the one before them (`cubby.client.sync.downloads`).
With one, the server sat idle while a batch was written and the client waited for each
fetch: on a first download of 20,000 files each side was busy less than half of the time.
Memory holds at most this many batches beyond the one landing, each about a
`DOWNLOAD_WINDOW`."""
IN_FLIGHT = 4
"""Upload windows (or tree groups) with the server at once; with the one being read, memory
holds at most ``IN_FLIGHT + 1`` windows (80 MiB of chunk bytes). Four, not two: a window's
prove answer waits out the server's padding of refused proofs (`RejectPacer`, which hides
whether a chunk is held), time in which neither side works, and only a deeper pipeline hides
it. On a quiet 2-core machine, back to back: a 1 GiB `cubby put` took 5.3-5.7 s at four
against 8.3-9.1 s at two, 10,000 files of 4 KiB 2.40 s against 2.87 s; three was between."""
PROVE_AHEAD = 4
"""Upload windows whose proofs may be with the server beyond the `IN_FLIGHT` ones, holding no
bytes while the server pads its answer (`cubby.client.upload.supply`: such a window is read
again once its proofs are refused). A 1 GiB put of new bytes, alternated on the 2-core
machine (medians of three, two sets): 3.97 and 3.85 s with none against 3.02 and 2.84 s with
four."""
STREAM_IN_TREE = 64 * MiB
"""In a folder's put, files new at their path larger than this are sent while they are named
(`cubby.client.upload._stream_new`, on the sending side); smaller ones are named ahead, on the
naming threads, beside the groups being sent, as before. Streaming a file of a window or two
moved its naming onto a sending slot and bought nothing: 48 new files of 8 MiB (local packs,
alternated, 7 rounds) took 2.43 s streamed against 2.34 s named ahead, while two new files of
256 MiB took 2.05-2.36 s streamed against 2.25-2.53 s (3 rounds, 3 of 3 faster). A single
file's put streams from `KEEP_BYTES` up: it has nothing else to overlap its naming with."""
KEEP_BYTES = 4 * MiB
"""Files up to this size keep their bytes from the naming pass, so they are never read again."""
FIRST_GROUP = 128
"""Files in the first group of a tree (and the fewest in its last ones), see
`cubby.client.upload.group_limit`: the groups between are `BATCH` files."""
GROUP_BYTES = 16 * MiB
"""A tree is named and committed in groups of at most `BATCH` files and about this many bytes
of kept file data."""
JOURNAL_PAGE = 5000
"""Journal entries asked for per request when a sync client catches up (the server allows
10,000): after a first upload of a tree it reads back an entry per file and folder it wrote,
so 34,000 files were 35 requests at 1,000 a page. A page of 5,000 is about 2 MB of JSON."""
SMALL_FILE = 4 * MiB
"""Files up to this size are fetched many per request and made durable together."""
SCAN_KEEP_FILE = 64 * 1024
"""A sync scan reads files up to this size in one call and may keep their bytes for the upload
that follows (`cubby.client.sync.scanner.KeepBudget`): a new small file is then read once."""
SCAN_KEEP_BYTES = 64 * MiB
"""The most bytes of such files one sync scan keeps in memory (until its uploads are sent)."""
