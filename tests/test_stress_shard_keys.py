"""The shard mode checks which shard keys the store keeps, as stock zarr keeps them.

Stock zarr deletes a shard that becomes all fill (``write_empty_chunks``
false, its default): after the load, and at each checkpoint, the bare store
must list a shard key exactly where the final array has an element that is
not the fill value (:func:`stress.shard_check.check_keys`). A key kept
beside nothing but fill values is a ``stray_key``; values read from a shard
the store does not list, a ``missing_key``. During the load, a listing
(``shard_list``) must show every shard that surely held a value throughout
it (``missing_key`` otherwise).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import zarr

from stress.records import ERROR
from stress.runner import RunConfig, RunResult, run
from stress.shard_check import check_keys
from stress.shard_model import BoxRead, Geometry
from stress.shard_ops import ShardConfig
from stress.signature import make_wid
from tests._shard_story import Story
from tests._stress_helpers import summary

#: 4 x 8: shard c/0/0 is columns 0-3, c/0/1 columns 4-7.
TWO = Geometry((4, 8), (4, 4), (2, 4))
A, F = make_wid(2, 1), make_wid(3, 1)
LEFT, RIGHT, ALL = ((0, 0), (4, 4)), ((0, 4), (4, 8)), ((0, 0), (4, 8))
#: 16 x 16 in four shards of four inner chunks, nothing written before the load.
SMALL = ShardConfig(shape=(16, 16), shards=(8, 8), chunks=(4, 4), prefill=0.0)


def test_keys_where_the_final_array_has_values_and_none_elsewhere_are_clean() -> None:
    final = np.zeros(TWO.shape, dtype="int32")
    final[1, 5] = 7
    assert check_keys(TWO, final, frozenset({"c/0/1"})) == []


def test_a_key_of_a_shard_of_fill_values_only_is_stray() -> None:
    final = np.zeros(TWO.shape, dtype="int32")
    final[1, 5] = 7
    found = check_keys(TWO, final, frozenset({"c/0/0", "c/0/1"}))
    assert [(v.kind, v.key) for v in found] == [("stray_key", "c/0/0")]
    assert "deletes a shard that becomes all fill" in found[0].detail


def test_values_of_a_shard_the_store_does_not_list_are_a_missing_key() -> None:
    final = np.ones(TWO.shape, dtype="int32")
    found = check_keys(TWO, final, frozenset({"c/0/0"}))
    assert [(v.kind, v.key) for v in found] == [("missing_key", "c/0/1")]


def listing(s: Story, keys: set[str], t0: int, t1: int) -> None:
    """A ``shard_list`` that listed ``keys`` between ``t0`` and ``t1``."""
    empty = np.empty((0, 0), dtype=s.codec.dtype)
    s.rec.reads.append(BoxRead((0, 0), TWO.shape, t0, t1, empty, "shard_list", frozenset(keys)))


def test_a_listing_without_a_shard_that_surely_held_values_is_a_missing_key() -> None:
    s = Story(geometry=TWO)
    s.write(A, ALL, 0, 10)
    s.put(A, ALL)
    listing(s, {"c/0/0"}, 20, 30)
    found = s.check()
    assert [(v.kind, v.key, v.op) for v in found] == [("missing_key", "c/0/1", "shard_list")]


@pytest.mark.parametrize(
    ("fill", "t0", "t1"),
    [
        (True, 15, 25),  # a fill write of the shard ran during the listing
        (True, 5, 12),  # one ended after the write of values began
        (False, 15, 25),  # the write of values ran during the listing
    ],
)
def test_a_listing_may_miss_a_shard_a_write_may_have_made_or_deleted_meanwhile(
    fill: bool, t0: int, t1: int
) -> None:
    s = Story(geometry=TWO)
    s.write(A, ALL, 0 if fill else t0, 10 if fill else t1)
    if fill:
        s.write(F, RIGHT, t0, t1, fill=True)
    s.put(A, LEFT)
    if not fill:
        s.put(A, RIGHT)
    listing(s, {"c/0/0"}, 20, 30)
    assert s.check() == []


def test_a_failed_fill_write_may_have_deleted_the_shard() -> None:
    s = Story(geometry=TWO)
    s.write(A, ALL, 0, 10)
    s.write(F, RIGHT, 12, 15, ERROR, fill=True)
    s.put(A, ALL)
    listing(s, {"c/0/0"}, 20, 30)
    assert s.check() == []  # (and the final array may keep c/0/1: a failed write may do nothing)


def brief(seed: int, **kw: object) -> RunResult:
    print(f"seed {seed}")
    cfg = RunConfig(seed=seed, mode="shard", shard=SMALL, duration=1.0, hang_after=20.0, **kw)  # type: ignore[arg-type]
    return run(cfg)


#: Writes of the fill value over chunks, spans and whole shards, beside writes of values.
FILLS = {"shard_fill": 3, "writer_fill": 2, "shard_chunk": 1, "writer_chunk": 1, "shard_span": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["memory", "local"])
def test_shards_that_become_all_fill_are_deleted_as_stock_zarr_deletes_them(store: str) -> None:
    result = brief(20261207, store=store, mix=FILLS, checkpoint=300)
    assert result.violations == [], summary(result)
    assert result.latency["shard_fill"].total > 0


@pytest.mark.timeout(60)
def test_control_stock_zarr_keeping_empty_chunks_leaves_stray_keys() -> None:
    # zarr with write_empty_chunks on keeps a shard of fill values; one
    # thread, so that the control loses no update and shows only that.
    with zarr.config.set({"array.write_empty_chunks": True}):
        result = brief(7, store="memory", unlocked=True, mix={"shard_fill": 1}, threads=1, tasks=0)
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    assert set(found) == {"stray_key"}, summary(result)


@pytest.mark.timeout(60)
def test_control_a_listing_that_hides_a_shard_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The wrapper's listing made to leave out shard c/0/0, which the load's
    # writes of values keep present most of the time.
    from zarr_rangelock import RangeLockedStore

    real = RangeLockedStore.list_prefix

    async def hiding(self: RangeLockedStore, prefix: str):  # type: ignore[no-untyped-def]
        async for name in real(self, prefix):
            if name != "c/0/0":
                yield name

    monkeypatch.setattr(RangeLockedStore, "list_prefix", hiding)
    mix = {"shard_list": 2, "shard_chunk": 3, "shard_span": 1}
    result = brief(20261207, store="memory", mix=mix)
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    missing = [v for v in result.violations if v.kind == "missing_key" and v.op == "shard_list"]
    assert missing and {v.key for v in missing} == {"c/0/0"}, summary(result)
