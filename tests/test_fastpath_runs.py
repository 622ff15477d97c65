"""The in-place fast path's lock ranges are canonical (issue 12).

``put_in_place`` hands the lock table the merged ranges of a group of chunks
through ``_lock_runs``, which skips ``normalize_ranges``; so ``_runs`` must
return exactly what ``normalize_ranges`` would, for any group of distinct
chunks of one shard, and the lock must behave as ``lock_ranges`` of them.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zarr_rangelock import RangeLockManager
from zarr_rangelock.locks._ranges import normalize_ranges
from zarr_rangelock.shards._fastpaths import _runs

pytestmark = pytest.mark.timeout(60)


@given(
    places=st.sets(st.integers(0, 63), min_size=1, max_size=64),
    size=st.integers(1, 4096),
    base=st.integers(0, 1 << 20),
)
def test_runs_of_any_group_of_chunks_are_what_normalize_ranges_returns(
    places: set[int], size: int, base: int
) -> None:
    at = sorted((base + j * size, memoryview(bytes(size))) for j in places)
    runs = _runs([(o, m) for o, m in at], size)
    assert tuple(runs) == normalize_ranges("k", [(o, o + size) for o, _ in at])


def test_a_lock_on_canonical_runs_excludes_and_admits_as_lock_ranges_does() -> None:
    mgr = RangeLockManager()
    with mgr._lock_runs("k", [(0, 10), (20, 30)]):
        mgr._check()
        mgr.release(mgr.acquire("k", [(10, 20)], timeout=0))  # the gap is free
        for inside in ([(5, 6)], [(25, 26)], [(9, 21)]):
            with pytest.raises(TimeoutError):
                mgr.acquire("k", inside, timeout=0)
    mgr.release(mgr.acquire("k", [(0, 30)], timeout=0))
    mgr._check()
