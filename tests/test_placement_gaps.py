"""Gaps kept by ``repointed`` (``shards/_placement``): the same as worked out anew.

A compressed write of a shard places its chunks by the stored index's dead
space. ``repointed`` works out the dead space of the index it makes from the
one it was given, and keeps it for the next write of that index
(``_placement._GAPS``, by the index's bytes). Here random write sequences go
through it, and at every step the kept gaps equal ``gaps_of`` (from every
chunk) of the same index, and the write itself (its pieces and its new
index) equals the write made from fresh gaps. A broken successor (one that
forgets the bytes a write freed) fails the same check.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarr_rangelock.shards import _layout as L
from zarr_rangelock.shards import _placement as P

pytestmark = pytest.mark.timeout(120)

Write = list[tuple[int, int | None]]  # (chunk, bytes of its new value; None: dropped)


@st.composite
def histories(draw: st.DrawFn) -> tuple[L.ShardGeometry, list[int | None], list[Write]]:
    n = draw(st.integers(1, 24))
    location = draw(st.sampled_from(["start", "end"]))
    geometry = L.ShardGeometry((n,), location, 16 * n + 4, None)
    first = draw(st.lists(st.none() | st.integers(1, 40), min_size=n, max_size=n))
    one = st.tuples(st.integers(0, n - 1), st.none() | st.integers(1, 60))
    writes = draw(
        st.lists(
            st.lists(one, min_size=1, max_size=4, unique_by=lambda w: w[0]),
            min_size=1,
            max_size=40,
        )
    )
    return geometry, first, writes


def _compacted(
    g: L.ShardGeometry, index: L.IndexArray | None, new: dict[tuple[int, ...], bytes | None]
) -> tuple[int, L.IndexArray] | None:
    order = [(j,) for j in range(g.chunks_per_shard[0])]
    done = P.compacted(g, index, new, order)
    return None if done is None else (done[0], done[2])


def replay(g: L.ShardGeometry, first: list[int | None], writes: list[Write]) -> tuple[int, int]:
    """Run ``writes`` through ``repointed`` from a shard compacted with
    ``first``, checking each step (see the module); how many writes found
    their gaps kept, and how many were compacted."""
    start = _compacted(g, None, {(j,): b"a" * k for j, k in enumerate(first) if k})
    if start is None:
        return 0, 0
    size, index = start
    hits = compactions = 0
    for i, write in enumerate(writes):
        new = [(j, None if k is None else bytes([i % 251]) * k) for j, k in write]
        kept = P._GAPS.get((g, index.tobytes()))
        if kept is not None:
            hits += 1
            assert kept == P.gaps_of(index, g), (i, write)
        with (
            mock.patch.object(P, "_take", lambda g, i: P.gaps_of(i, g)),
            mock.patch.object(P, "_keep", lambda *args: None),
        ):
            expected = P.repointed(g, size, index, new)
        got = P.repointed(g, size, index, new)
        if expected is None or got is None:
            assert got is None and expected is None, (i, write)
            compactions += 1
            start = _compacted(g, index, {(j,): d for j, d in new})
            if start is None:
                return hits, compactions
            size, index = start
            continue
        assert got[0] == expected[0], (i, write)
        assert (got[1] == expected[1]).all(), (i, write)
        index = got[1]
    return hits, compactions


@settings(max_examples=300, deadline=None)
@given(histories())
def test_kept_gaps_are_the_gaps_worked_out_from_every_chunk(
    history: tuple[L.ShardGeometry, list[int | None], list[Write]],
) -> None:
    replay(*history)


def test_kept_gaps_are_used_for_most_writes_of_a_long_history() -> None:
    # (The property above is no check if nothing is ever kept.)
    n = 16
    g = L.ShardGeometry((n,), "end", 16 * n + 4, None)
    writes: list[Write] = [[((7 * i) % n, 10 + (13 * i) % 30)] for i in range(200)]
    hits, compactions = replay(g, [20] * n, writes)
    assert hits >= 200 - 2 * compactions - 1 and compactions < 50, (hits, compactions)


def _forgetful(real: Callable[..., P.Gaps]) -> Callable[..., P.Gaps]:
    def next_gaps(gaps: P.Gaps, freed: list[tuple[int, int]]) -> P.Gaps:
        return real(gaps, [])  # the freed bytes not joined

    return next_gaps


def test_control_a_successor_that_forgets_the_bytes_a_write_freed_fails_the_check() -> None:
    # Three chunks of 10 bytes back to back; the middle one rewritten with 5
    # bytes goes after the last (no gap yet): its old 10 bytes are a gap.
    g = L.ShardGeometry((3,), "end", 16 * 3 + 4, None)
    with (
        mock.patch.object(P, "_next_gaps", _forgetful(P._next_gaps)),
        pytest.raises(AssertionError),
    ):
        replay(g, [10, 10, 10], [[(1, 5)], [(0, 4)]])
    replay(g, [10, 10, 10], [[(1, 5)], [(0, 4)]])  # (the real one passes)


def test_an_index_whose_chunks_overlap_is_placed_from_every_chunk_each_time() -> None:
    # Another tool's shard: two chunks over the same bytes. Nothing is kept
    # for its next index (the successor's arithmetic assumes chunks apart).
    g = L.ShardGeometry((3,), "end", 16 * 3 + 4, None)
    index = L.empty_index((3,))
    index[0] = (0, 10)
    index[1] = (5, 10)
    assert P.gaps_of(index, g).starts is None
    got = P.repointed(g, 1000, index, [(2, b"x" * 4)])
    assert got is not None
    assert (g, got[1].tobytes()) not in P._GAPS


def test_kept_gaps_are_bounded_by_the_bytes_of_their_indexes() -> None:
    n = 8
    g = L.ShardGeometry((n,), "end", 16 * n + 4, None)
    with mock.patch.object(P, "GAPS_BYTES_MAX", 16 * n * 5):
        for k in range(20):
            first = [10 + k] * n
            start = _compacted(g, None, {(j,): b"a" * s for j, s in enumerate(first)})
            assert start is not None
            assert P.repointed(g, start[0], start[1], [(0, b"b" * 3)]) is not None
        assert P._gaps_bytes[0] == sum(len(key[1]) for key in P._GAPS) <= 16 * n * 5
