"""Write one sharded zarr array from several processes: multiprocessing, then dask.

Run from the repository root (``tests/test_examples.py`` runs it too)::

    python examples/many_processes.py [ROOT]

Every shard is written by every process at once, and nothing is lost: the
LocalStore-backed ``RangeLockedStore`` takes each lock as an OS byte-range
lock too (see README, "Writing one sharded array from many processes").
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile

import dask.array as da
import numpy as np
import zarr
from distributed import Client, LocalCluster
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore

PIPELINE = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
SHAPE, SHARDS, CHUNKS = (1024, 1024), (512, 512), (64, 64)


def write_rows(root: str, rows: list[int]) -> None:
    """Runs in a worker process: write whole rows of inner chunks (each crosses two shards)."""
    zarr.config.set(PIPELINE)  # before the array object is built
    arr = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r+")
    for r in rows:
        arr[r * 64 : (r + 1) * 64, :] = np.full((64, 1024), r + 1, "f4")


def main(root: str) -> None:
    zarr.config.set(PIPELINE)
    store = RangeLockedStore(LocalStore(root))
    arr = zarr.create_array(
        store, shape=SHAPE, shards=SHARDS, chunks=CHUNKS, dtype="f4", compressors=ZstdCodec()
    )

    # 1. multiprocessing: 4 processes take interleaved rows of chunks, so each
    #    of the 4 shards is written by all of them at once.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(write_rows, [(root, list(range(i, 16, 4))) for i in range(4)])
    rows = np.repeat(np.arange(1, 17, dtype="f4"), 64)
    assert (arr[:] == rows[:, None]).all(), "a chunk was lost"

    # 2. dask distributed: worker processes write blocks that straddle shards.
    #    The array object shipped to the workers keeps its pipeline; the
    #    environment variable selects it for arrays a worker opens itself.
    x = da.fromfunction(lambda i, j: i * 1024 + j, shape=SHAPE, chunks=(192, 320), dtype="f4")
    env = {"ZARR_CODEC_PIPELINE__PATH": PIPELINE["codec_pipeline.path"]}
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True, env=env) as cluster,
        Client(cluster),
    ):
        da.store(x, arr, lock=False)  # no dask lock: the store's locks do the work
    assert (arr[:] == np.fromfunction(lambda i, j: i * 1024 + j, SHAPE, dtype="f4")).all()

    # Stock zarr (bare store, default pipeline) reads the same values.
    stock = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
    with zarr.config.set(stock):
        assert (zarr.open_array(LocalStore(root), mode="r")[:] == arr[:]).all()
    print(f"ok: {root}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(suffix=".zarr"))
