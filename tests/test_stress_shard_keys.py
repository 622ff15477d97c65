"""The shard mode checks which shard keys the store keeps, as stock zarr keeps them.

Stock zarr deletes a shard that becomes all fill (``write_empty_chunks``
false, its default): after the load, and at each checkpoint, the bare store
must list a shard key exactly where the final array has an element that is
not the fill value (:func:`stress.shard_check.check_keys`). A key kept
beside nothing but fill values is a ``stray_key``; values read from a shard
the store does not list, a ``missing_key``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import zarr

from stress.runner import RunConfig, RunResult, run
from stress.shard_check import check_keys
from stress.shard_model import Geometry
from stress.shard_ops import ShardConfig
from tests._stress_helpers import summary

#: 4 x 8: shard c/0/0 is columns 0-3, c/0/1 columns 4-7.
TWO = Geometry((4, 8), (4, 4), (2, 4))
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
