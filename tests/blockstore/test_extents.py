"""The read planner of `get_many`: which chunks are read together (pure, no store)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cubby.blockstore.extents import plan_extents
from cubby.blockstore.packfile import Location


def loc(pack: str, pos: int, n: int) -> Location:
    return Location(pack, pos, n, n)


def test_neighbours_in_one_pack_are_one_read_up_to_the_span():
    wanted = [(f"c{i}", loc("p", 8 + i * 100, 100)) for i in range(25)]
    plan = plan_extents(wanted, span=1000, gap=0)
    assert [(e.pack, e.start, e.end, len(e.members)) for e in plan] == [
        ("p", 8, 1008, 10),
        ("p", 1008, 2008, 10),
        ("p", 2008, 2508, 5),
    ]


def test_another_pack_a_gap_a_step_back_or_a_missing_chunk_starts_a_new_read():
    wanted = [
        ("a", loc("p", 8, 100)),
        ("b", loc("q", 108, 100)),  # another pack
        ("c", loc("q", 208, 100)),
        ("d", loc("q", 900, 100)),  # past the gap
        ("e", loc("q", 8, 100)),  # before the read's start
        ("f", None),
        ("g", None),
        ("h", loc("q", 108, 100)),
    ]
    plan = plan_extents(wanted, span=10_000, gap=300)
    assert [[n for n, _ in e.members] for e in plan] == [["a"], ["b", "c"], ["d"], ["e"], ["f", "g"], ["h"]]
    assert plan[4].pack is None


@given(st.lists(st.tuples(st.sampled_from("pq"), st.integers(8, 5000), st.integers(1, 700)), max_size=40))
def test_every_chunk_is_in_one_read_in_the_order_asked_and_inside_it(raw):
    wanted = [(f"c{i}", loc(p, pos, n)) for i, (p, pos, n) in enumerate(raw)]
    plan = plan_extents(wanted, span=1000, gap=50)
    assert [m for e in plan for m in e.members] == wanted
    for e in plan:
        for _, where in e.members:
            assert where is not None and where.pack == e.pack
            assert e.start <= where.pos and where.pos + where.stored_len <= e.end
        assert e.end - e.start <= 1000 or len(e.members) == 1
