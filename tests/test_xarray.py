"""Writing one sharded zarr store from xarray, in several processes.

Users write from xarray in two ways: ``Dataset.to_zarr`` of a dask-backed
dataset, computed by dask's worker processes; and independent jobs (one per
time step, tile or band of rows), each writing its region of a store laid
out beforehand (``to_zarr(store, compute=False)``, then ``to_zarr(store,
region=...)`` in every job). Where the pieces are not aligned to shards,
several pieces write one shard at once. Stock zarr writes part of a shard
(or of a chunk) by reading it, merging and writing it all back, so writers
of one shard lose each other's parts: the control at the end shows it
deterministically for two region writes, and xarray refuses a dask write
whose chunks straddle shards for that reason unless told
``safe_chunks=False``. Through a ``RangeLockedStore`` with
``ShardWritePipeline`` selected nothing is lost, in the sharded variables
and in one that is not sharded.

The dataset: ``v`` (float32) and ``w`` (int32) over ``(y, x)`` = 256 x 192,
in inner chunks of 16 x 32 and shards of 64 x 96 (4 x 2 shards); ``t``
(float64) over ``y``, one chunk, not sharded (a value per row, as the time
stamps of frames are). Values differ from round to round and are never the
fill value, so a lost piece shows. Every check reads with stock zarr (bare
``LocalStore``, zarr's default pipeline).

Worker functions live in this module, top level, so spawn can pickle them by
reference (``tests/test_processes.py`` says how the children import it).
"""

from __future__ import annotations

from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, get_task_stream
from zarr.abc.store import Store
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from tests._processes import (
    BARRIER_TIMEOUT,
    SPAWN,
    assert_both_workers_ran,
    dask_workers,
    run_workers,
)
from tests._shard_helpers import OURS, STOCK, FirstSetWaits
from tests._threads import run_threads
from zarr_rangelock import RangeLockedStore

pytestmark = [
    pytest.mark.timeout(90),
    # zarr warns that consolidated metadata is not part of the v3 spec when
    # xarray writes it (its default, kept here as users keep it)
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

NY, NX = 256, 192
INNER, SHARDS = (16, 32), (64, 96)
BAND = 16  # rows a region write writes: four bands a shard
N_BANDS = NY // BAND
ROUNDS = 2
COMPRESSORS: dict[str, ZstdCodec | None] = {"uncompressed": None, "zstd": ZstdCodec()}
VARIABLES = ("v", "w", "t")
# What a user puts in the environment of every dask worker (tests/test_dask.py).
WORKER_ENV = {"ZARR_CODEC_PIPELINE__PATH": OURS["codec_pipeline.path"]}


def _dataset(round_: int) -> xr.Dataset:
    """The model of round ``round_``: every value distinct within a variable,
    other in every round, never 0 (the fill value)."""
    y, x = np.mgrid[0:NY, 0:NX]
    return xr.Dataset(
        {
            "v": (("y", "x"), (y * NX + x + 1 + round_ * 100_000).astype("f4")),
            "w": (("y", "x"), (y * 7 + x + 1 + round_ * 1_000).astype("i4")),
            "t": ("y", (np.arange(NY) * 3 + 1 + round_ * 10_000).astype("f8")),
        },
        coords={"y": np.arange(NY), "x": np.arange(NX)},
    )


def _encoding(compressors: ZstdCodec | None) -> dict[str, dict[str, Any]]:
    sharded = {"chunks": INNER, "shards": SHARDS, "compressors": compressors, "fill_value": 0}
    return {"v": sharded, "w": sharded, "t": {"fill_value": 0}}


def _lay_out(store: Store, compressors: ZstdCodec | None) -> None:
    """The store's arrays and coordinates, no data yet: xarray's template
    write (a dask-backed dataset, ``compute=False``)."""
    _dataset(0).chunk().to_zarr(
        store, compute=False, encoding=_encoding(compressors), zarr_format=3
    )


def _write_band(store: Store, k: int, round_: int) -> None:
    """Job ``k`` of a round: rows ``k * BAND`` up to the next band, as a
    region write (variables without ``y``, here ``x``, must be dropped)."""
    rows = slice(k * BAND, (k + 1) * BAND)
    band = _dataset(round_).isel(y=rows).drop_vars("x")
    band.to_zarr(store, region={"y": rows}, mode="r+")


def _wrong(store: Store, expected: xr.Dataset) -> dict[str, str]:
    """Per variable that stock zarr reads back other than ``expected``: how
    many values, and in which bands of rows."""
    with zarr.config.set(STOCK):
        got = xr.open_zarr(store, zarr_format=3).load()
    wrong = {}
    for name in VARIABLES:
        differ = np.asarray(got[name].values != expected[name].values)
        bad_rows = np.flatnonzero(differ.reshape(NY, -1).any(axis=1))
        if bad_rows.size:
            bands = sorted({int(r) // BAND for r in bad_rows})
            wrong[name] = f"{int(differ.sum())} values differ, in bands {bands}"
    return wrong


def _root_store(root: Path) -> LocalStore:
    return LocalStore(root, read_only=True)


# --------------------------------------------- region writes, one job each


def _write_bands(worker: int, root: str, n_workers: int, start: Barrier) -> None:
    """A spawned job process: every ``n_workers``-th band from ``worker`` on,
    in each round (all workers start each round together)."""
    zarr.config.set(OURS)  # as a job's script does (or ZARR_CODEC_PIPELINE__PATH)
    store = RangeLockedStore(LocalStore(root))
    for round_ in range(ROUNDS):
        start.wait(BARRIER_TIMEOUT)
        for k in range(worker, N_BANDS, n_workers):
            _write_band(store, k, round_)


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_region_writes_from_spawned_processes_into_shared_shards_lose_nothing(
    compression: str, tmp_path: Path
) -> None:
    root = tmp_path / "data.zarr"
    with zarr.config.set(OURS):
        _lay_out(RangeLockedStore(LocalStore(root)), COMPRESSORS[compression])
    n_workers = 3  # each shard's four bands written by three processes at once
    run_workers(_write_bands, n_workers, str(root), n_workers, SPAWN.Barrier(n_workers))
    assert _wrong(_root_store(root), _dataset(ROUNDS - 1)) == {}


# ------------------------------------------------ dask's worker processes


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with dask_workers(WORKER_ENV) as c:
        yield c


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_to_zarr_of_a_dask_dataset_from_worker_processes_loses_nothing(
    client: Client, compression: str, tmp_path: Path
) -> None:
    # dask chunks of 40 x 56 straddle shards and inner chunks alike (xarray
    # refuses them unless safe_chunks=False); the arrays are made here, in
    # the client, with the pipeline selected, and their copies in the
    # workers keep it (tests/test_dask.py)
    root = tmp_path / "data.zarr"
    expected = _dataset(1)
    with zarr.config.set(OURS), get_task_stream(client) as stream:
        expected.chunk({"y": 40, "x": 56}).to_zarr(
            RangeLockedStore(LocalStore(root)),
            encoding=_encoding(COMPRESSORS[compression]),
            zarr_format=3,
            safe_chunks=False,
        )
    assert_both_workers_ran(stream.data, "store-map")
    assert _wrong(_root_store(root), expected) == {}


# ------------------------------------------------------------- the control


def test_stock_zarr_loses_a_band_when_two_region_writes_of_one_shard_interleave() -> None:
    """The control: two region writes of bands 0 and 1 (both in the first
    shard of ``v``) with zarr's default pipeline on a bare store, the first
    ``set`` of that shard held until the second has landed. The first
    writer's shard, merged before the second band was there, replaces it:
    one band of that shard is lost (other shards and variables, written by
    both, may lose one too, as the two writes happen to interleave). The
    tests above write the same way through our store and lose nothing."""
    store = FirstSetWaits(holds=lambda key: key == "v/c/0/0")
    with zarr.config.set(STOCK):
        _lay_out(store, None)
        run_threads(lambda: _write_band(store, 0, 0), lambda: _write_band(store, 1, 0))
        got = xr.open_zarr(store, zarr_format=3)["v"].values
    assert store.held_sets == 2
    model = _dataset(0)["v"].values
    shard = np.s_[:, : SHARDS[1]]  # the held shard's columns
    lost = [
        k
        for k in (0, 1)
        if not np.array_equal(
            got[k * BAND : (k + 1) * BAND][shard], model[k * BAND : (k + 1) * BAND][shard]
        )
    ]
    assert len(lost) == 1, f"bands of shard v/c/0/0 lost: {lost}"
