"""zarr API surfaces beyond ``arr[sel] = v``, against stock zarr.

Fancy writes (mask, block, coordinate, orthogonal and vectorized selections)
reach the pipeline with selections that ``arr[sel] = v`` never makes
(coordinate selections inside a shard, whose values zarr reshapes), and
zarr's own listings (group members, consolidated metadata,
``nbytes_stored``) read the store through ``list``/``list_prefix``/
``list_dir``, where the lock file and the journal must not show. Each test
compares with stock zarr (default pipeline, bare store) on the same input:
the same values, the same keys, and stock zarr reading our store back.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, FirstSetWaits, new_array
from tests._threads import run_together
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME
from zarr_rangelock.store._keys import JOURNAL_DIR

pytestmark = pytest.mark.timeout(60)

A = np.array


def _sharding(encoding: str, index_location: str = "end") -> ShardingCodec:
    codecs: list[Any] = [BytesCodec()] + ([ZstdCodec()] if encoding == "zstd" else [])
    return ShardingCodec(chunk_shape=(2, 3), codecs=codecs, index_location=index_location)  # type: ignore[arg-type]


async def _keys(store: Any) -> list[str]:
    return sorted([k async for k in store.list()])


def _stock_values(bare: MemoryStore | LocalStore) -> np.ndarray:
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(bare, mode="r")[...])


# ------------------------------------------ threads: chunks of one shard
#
# One shard of 4 x 4 inner chunks of 2 x 3; writer i writes chunk i whole,
# by the selection kind _FANCY[i % 4] names.

_ONE_SHARD = (8, 12)


def _fancy_write(arr: zarr.Array[Any], i: int) -> None:
    r, c = divmod(i, 4)
    rows, cols = np.arange(2 * r, 2 * r + 2), np.arange(3 * c, 3 * c + 3)
    value = np.full((2, 3), 100 + i, dtype="i4")
    kind = i % 4
    if kind == 0:
        arr.oindex[rows, cols] = value
    elif kind == 1:
        grid = np.meshgrid(rows, cols, indexing="ij")
        arr.vindex[grid[0].ravel(), grid[1].ravel()] = value.ravel()
    elif kind == 2:
        mask = np.zeros(_ONE_SHARD, dtype=bool)
        mask[2 * r : 2 * r + 2, 3 * c : 3 * c + 3] = True
        arr.set_mask_selection(mask, value.ravel())
    else:
        grid = np.meshgrid(rows, cols, indexing="ij")
        arr.set_coordinate_selection((grid[0], grid[1]), value)


def _fancy_model(n: int) -> np.ndarray:
    model = np.zeros(_ONE_SHARD, dtype="i4")
    for i in range(n):
        r, c = divmod(i, 4)
        model[2 * r : 2 * r + 2, 3 * c : 3 * c + 3] = 100 + i
    return model


def test_stock_zarr_loses_a_chunk_when_two_fancy_writes_of_one_shard_interleave() -> None:
    """The control: an orthogonal and a vectorized write of two chunks of one
    shard, from two threads, with zarr's default pipeline on a bare store
    whose first shard ``set`` is held until the second has landed (a
    deterministic interleaving): the first writer's shard, merged before the
    second chunk existed, replaces it, so one chunk is lost."""
    inner = FirstSetWaits()
    arr = new_array(
        inner, shape=_ONE_SHARD, chunks=_ONE_SHARD, pipeline=STOCK, serializer=_sharding("fixed")
    )
    run_together(2, lambda i: _fancy_write(arr, i))
    assert inner.held_sets == 2
    got, model = _stock_values(inner), _fancy_model(2)
    lost = [i for i in range(2) if not (got[:2, 3 * i : 3 * i + 3] == 100 + i).all()]
    assert len(lost) == 1 and not np.array_equal(got, model)


@pytest.mark.parametrize("encoding", ["fixed", "zstd"])
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_threads_writing_chunks_of_one_shard_by_fancy_selections_lose_nothing(
    kind: str, encoding: str, tmp_path: Path
) -> None:
    """Eight threads, released together, each write one chunk of the same
    shard by an orthogonal, vectorized, mask or coordinate selection (the
    workload of the control above, where stock zarr keeps one writer's
    chunk). Every chunk is there, and stock zarr reads it."""
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")
    arr = new_array(
        RangeLockedStore(inner),
        shape=_ONE_SHARD,
        chunks=_ONE_SHARD,
        pipeline=OURS,
        serializer=_sharding(encoding),
    )
    run_together(8, lambda i: _fancy_write(arr, i))
    np.testing.assert_array_equal(_stock_values(inner), _fancy_model(8))


# --------------------------------------------- fancy writes, one by one

_SHAPE = (7, 9)  # shards of 4 x 6: edge shards on both axes


def _mask(cells: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    rows, cols = np.indices(_SHAPE)
    return cells(rows, cols)


_WRITES: list[Callable[[zarr.Array[Any]], None]] = [
    lambda a: a.set_mask_selection(_mask(lambda r, c: (r + c) % 3 == 0), 7),
    lambda a: a.blocks.__setitem__((1, 1), np.arange(9, dtype="i4").reshape(3, 3) + 1),
    lambda a: a.set_block_selection((slice(0, 2), 0), np.arange(42, dtype="i4").reshape(7, 6)),
    lambda a: a.vindex.__setitem__((A([[0, 6], [3, 4]]), A([[8, 0], [5, 6]])), A([[1, 2], [3, 4]])),
    lambda a: a.oindex.__setitem__(
        (A([True, False] * 3 + [True]), A([8, 1, 4])), np.arange(12, dtype="i4").reshape(4, 3)
    ),
    lambda a: a.oindex.__setitem__((5, A([7, 2])), 3),
    lambda a: a.set_coordinate_selection((A([6, 6, 0]), A([8, 7, 0])), A([5, 6, 0])),
    # every cell of the edge shard (1, 1) back to the fill value: it goes
    lambda a: a.set_mask_selection(_mask(lambda r, c: (r >= 4) & (c >= 6)), 0),
    # a value too short for the cells (of chunk (0, 0)): stock zarr's error
    lambda a: a.set_mask_selection(_mask(lambda r, c: (r < 2) & (c < 3)), A([1, 2])),
    # out of bounds: stock zarr's error, nothing written
    lambda a: a.set_block_selection((2, 0), 1),
]


def _outcome(write: Callable[[zarr.Array[Any]], None], arr: zarr.Array[Any]) -> tuple[str, ...]:
    try:
        write(arr)
    except Exception as e:  # compared by type and message
        return (type(e).__name__, str(e))
    return ("ok",)


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("encoding", ["fixed", "zstd"])
@pytest.mark.parametrize("kind", ["memory", "local", "local dense_shards", "local journal"])
def test_fancy_writes_leave_stock_zarrs_values_keys_and_errors(
    kind: str, encoding: str, index_location: str, tmp_path: Path
) -> None:
    """Mask, block, vectorized (2-D index arrays), orthogonal and coordinate
    writes over edge shards, one that empties a shard, and two that fail:
    after each, the same outcome (an error of the same type and message), the
    same values and keys as stock zarr, and stock zarr reads ours back. (Each
    failing write fails in every shard it touches, so neither writes
    anything: where some shards of a write fail and others do not, stock
    zarr finishes the others after raising, and a journaled store writes
    none, as the README says.)"""
    options: dict[str, Any] = {}
    if kind == "local dense_shards":
        options = {"dense_shards": True}
    elif kind == "local journal":
        options = {"durability": "journal"}
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")
    stock_store = MemoryStore()
    arrays = {}
    for name, store, pipeline in [
        ("stock", stock_store, STOCK),
        ("ours", RangeLockedStore(inner, **options), OURS),
    ]:
        arrays[name] = new_array(
            store,
            shape=_SHAPE,
            chunks=(4, 6),
            pipeline=pipeline,
            serializer=_sharding(encoding, index_location),
        )
    for step, write in enumerate(_WRITES):
        expected = _outcome(write, arrays["stock"])
        assert _outcome(write, arrays["ours"]) == expected, step
        want = np.asarray(arrays["stock"][...])
        np.testing.assert_array_equal(arrays["ours"][...], want, err_msg=f"write {step}")
        np.testing.assert_array_equal(_stock_values(inner), want, err_msg=f"write {step}")
        keys = asyncio.run(_keys(arrays["ours"].store))
        assert keys == asyncio.run(_keys(stock_store)), step


# ------------------------------------------------------ zarr's listings


def _hierarchy(store: Any, pipeline: dict[str, str]) -> zarr.Group:
    with zarr.config.set(pipeline):
        root = zarr.open_group(store, mode="w")
        a = root.create_array("a", shape=(10, 7), chunks=(2, 3), shards=(4, 6), dtype="i4")
        a[:] = np.arange(70, dtype="i4").reshape(10, 7)
        a[1:3, 2:5] = 0
        sub = root.create_group("sub")
        sub.create_array("b", shape=(5,), chunks=(2,), shards=(4,), dtype="f8")[:3] = 1.5
    return root


def test_zarrs_listings_through_a_journaled_store_see_what_stock_zarr_sees(
    tmp_path: Path,
) -> None:
    """A journaled store keeps its journal files (and the lock file) in the
    root; group members, consolidated metadata, ``nbytes_stored`` and the
    shard count of ``info_complete`` see neither, and stock zarr's listings
    of a bare LocalStore holding the same hierarchy see the same names,
    without warnings."""
    ours = RangeLockedStore(LocalStore(tmp_path / "ours"), durability="journal")
    stock = LocalStore(tmp_path / "stock")
    results = {}
    for name, store, pipeline in [("ours", ours, OURS), ("stock", stock, STOCK)]:
        _hierarchy(store, pipeline)
        with zarr.config.set(pipeline), warnings.catch_warnings():
            warnings.simplefilter("error")  # stock zarr warns on names it does not know
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            group = zarr.open_group(store, mode="r")
            members = sorted(k for k, _ in group.members(max_depth=None))
            zarr.consolidate_metadata(store)
            meta = zarr.open_consolidated(store).metadata.consolidated_metadata
            assert meta is not None
            shards = zarr.open_array(store, path="a").info_complete()._count_chunks_initialized
        results[name] = (members, sorted(meta.flattened_metadata), shards)
    assert results["ours"] == results["stock"]
    assert results["ours"][0] == ["a", "sub", "sub/b"]
    root = tmp_path / "ours"
    assert list((root / JOURNAL_DIR).iterdir())  # a journal file to hide
    on_disk = sum(
        os.path.getsize(Path(d) / f)
        for d, _, files in os.walk(root)
        for f in files
        if Path(d).relative_to(root).parts[:1] != (JOURNAL_DIR,) and f != LOCK_FILE_NAME
    )
    # what an array at the root's nbytes_stored() adds up
    assert asyncio.run(ours.getsize_prefix("")) == on_disk
