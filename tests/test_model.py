"""`cubby.model.Entry`: the quick constructor of a file's entry is the dataclass's own."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

from cubby.model import Entry


def test_a_file_entry_made_quickly_is_the_one_the_dataclass_makes() -> None:
    args: dict[str, Any] = {"ns_id": 3, "node_id": 7, "parent_id": 2, "path": "/a/b.txt", "name": "b.txt",
                            "rev": 11, "size": 5, "content_hash": "ab" * 32, "mtime": 1.5, "mode": 0o100755}
    quick, plain = Entry.file(**args), Entry(kind="file", **args)
    assert quick == plain and hash(quick) == hash(plain) and repr(quick) == repr(plain)
    assert list(quick.to_dict()) == list(plain.to_dict()) and quick.to_dict() == plain.to_dict()
    assert pickle.loads(pickle.dumps(quick)) == plain
    # A field added to Entry must be set by Entry.file too: every declared field is there.
    assert set(vars(quick)) == {f.name for f in dataclasses.fields(Entry)}
