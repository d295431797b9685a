"""`cubby.core.batched`: the pages a walk over something large holds one at a time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cubby.core.batched import batched


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=9))
def test_batches_are_the_items_in_order_in_full_lists_but_the_last(items: list[int], size: int) -> None:
    out = list(batched(iter(items), size))
    assert [x for b in out for x in b] == items
    assert all(len(b) == size for b in out[:-1]) and all(0 < len(b) <= size for b in out)


def test_a_batch_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        list(batched([1, 2], 0))
