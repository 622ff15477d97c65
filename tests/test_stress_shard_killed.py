"""The shard mode's check of killed writes: one journal transaction, all old or all new.

A write of the shard mode killed in its call (``--kill-every``) comes back
as a failed write that ended when the journal it left had been replayed.
Where its kind is one transaction (``WHOLE_IF_KILLED``: the pipeline's
writes, ``write_chunk``, ``writer[sel] =`` and each chunk of
``write_chunks``), a view after that end must show it on all of its box or
on none, except in shards another write touched in between (a replay leaves
such a key alone). Hand-made histories on an array of two shards side by
side; the runs with kills are in ``test_stress_kills.py``.
"""

from __future__ import annotations

import pytest

from stress.records import ERROR, Violation
from stress.shard_check import WHOLE_IF_KILLED
from stress.shard_model import Geometry
from stress.signature import make_wid
from tests._shard_story import Story, kinds

pytestmark = pytest.mark.timeout(30)

#: 4 x 8: shard c/0/0 is columns 0-3, c/0/1 columns 4-7; inner chunks 2 x 4.
TWO = Geometry((4, 8), (4, 4), (2, 4))
A, W, X = make_wid(2, 1), make_wid(3, 1), make_wid(4, 1)
ALL = ((0, 0), (4, 8))
LEFT, RIGHT = ((0, 0), (4, 4)), ((0, 4), (4, 8))
LEFT_TOP, LEFT_BOTTOM = ((0, 0), (2, 4)), ((2, 0), (4, 4))
REPLAYED = 30  # the killed write's end: its journal replayed by then


def story(kind: str = "shard_span", box: tuple[tuple[int, int], ...] = ALL) -> Story:
    """A fills the array (ended at 10); W, over ``box``, is killed at 20 and
    its journal replayed by REPLAYED."""
    s = Story(geometry=TWO)
    s.write(A, ALL, 0, 10)
    s.write(W, box, 20, REPLAYED, ERROR, kind=kind, killed=True)
    s.put(A, ALL)
    return s


def torn(found: list[Violation]) -> list[str]:
    return [v.detail for v in found if v.kind == "torn_write" and "killed in its call" in v.detail]


def test_a_killed_write_shown_in_one_shard_and_not_the_other_is_torn() -> None:
    s = story()
    s.put(W, LEFT)  # its record applied to one key of two
    found = s.check()
    assert kinds(found) == ["torn_write"]
    assert len(torn(found)) == 1
    assert found[0].key == "c/0/1"


def test_a_killed_write_torn_inside_one_shard_is_torn() -> None:
    s = story(box=LEFT)
    s.put(W, LEFT_TOP)
    assert len(torn(s.check())) == 1


@pytest.mark.parametrize("shown", ["all", "none"])
def test_a_killed_write_all_new_or_all_old_is_clean(shown: str) -> None:
    s = story()
    if shown == "all":
        s.put(W, ALL)
    assert s.check() == []


def test_a_shard_another_write_touched_before_the_replay_may_keep_old_values() -> None:
    # X wrote one chunk of c/0/1 while W's journal waited for its replay:
    # the replay leaves that key alone (the journal's limits), so the rest
    # of c/0/1 may keep A while c/0/0 shows W.
    s = story()
    s.write(X, ((0, 4), (2, 8)), 22, 25)
    s.put(W, LEFT)
    s.put(X, ((0, 4), (2, 8)))
    assert s.check() == []


def test_a_write_in_one_shard_excuses_only_that_shard() -> None:
    s = story()
    s.write(X, ((0, 4), (2, 8)), 22, 25)
    s.put(W, LEFT_TOP)  # torn inside c/0/0, which nobody else touched
    s.put(X, ((0, 4), (2, 8)))
    found = torn(s.check())
    assert len(found) == 1


def test_a_write_after_the_replay_excuses_nothing() -> None:
    s = story()
    s.write(X, ((0, 4), (2, 8)), 40, 45)
    s.put(W, LEFT)
    s.put(X, ((0, 4), (2, 8)))
    assert len(torn(s.check())) == 1


def test_a_read_after_the_replay_is_held_to_it_and_one_before_is_not() -> None:
    s = story()
    s.put(W, LEFT)
    s.read(ALL, 21, 29)  # while W's process was dead, before the replay
    s.put(W, ALL)  # the replay applied the rest
    assert s.check() == []
    s = story()
    s.put(W, LEFT)
    s.read(ALL, 31, 35)
    s.put(W, ALL)
    found = s.check()
    assert len(torn(found)) == 1
    assert found[0].op == "shard_read"


@pytest.mark.parametrize("kind", ["shard_fill", "writer_fill"])
def test_writes_of_the_fill_value_are_not_held_to_it(kind: str) -> None:
    # (their elements name no write: a fill value shown says nothing of which)
    assert kind not in WHOLE_IF_KILLED
    s = story(kind=kind)
    s.put(W, LEFT)
    assert s.check() == []


def test_each_chunk_of_a_killed_write_chunks_call_is_held_to_it_on_its_own() -> None:
    # write_chunks is recorded chunk by chunk, each chunk a write of its own
    # (W and X here, one call killed): each is written whole by one
    # transaction (the call is one per shard, its edge chunks one each), so
    # a chunk shown in part is torn; one chunk shown and the other not is
    # not (the call is not atomic across shards).
    s = Story(geometry=TWO)
    s.write(A, ALL, 0, 10)
    s.write(W, LEFT_TOP, 20, REPLAYED, ERROR, kind="writer_chunks", killed=True)
    s.write(X, ((0, 4), (2, 8)), 20, REPLAYED, ERROR, kind="writer_chunks", killed=True)
    s.put(A, ALL)
    s.put(W, LEFT_TOP)
    assert s.check() == []
    s.put(X, ((0, 4), (1, 8)))  # half of X's chunk
    found = torn(s.check())
    assert len(found) == 1 and "writer_chunks" in found[0], found


def test_a_failed_write_that_was_not_killed_is_not_held_to_it() -> None:
    # An exception in the call says nothing of what it applied.
    s = Story(geometry=TWO)
    s.write(A, ALL, 0, 10)
    s.write(W, ALL, 20, REPLAYED, ERROR, kind="shard_span")
    s.put(A, ALL)
    s.put(W, LEFT)
    assert s.check() == []
