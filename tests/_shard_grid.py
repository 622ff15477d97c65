"""The sharded array most of the shard-write tests use, and helpers for it.

16 x 24 int32, shards of 8 x 12 (four shards), inner chunks of 2 x 3
(sixteen per shard); regions of it and a numpy model of writes into them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore

SHAPE, SHARD, INNER = (16, 24), (8, 12), (2, 3)
ENCODINGS = ["fixed", "crc32c", "zstd"]
THREADS = [2, 4, 8, 16]

Region = tuple[Any, ...]


def codecs(encoding: str) -> list[Any]:
    if encoding == "fixed":
        return [BytesCodec()]
    if encoding == "crc32c":
        return [BytesCodec(), Crc32cCodec()]
    return [BytesCodec(), ZstdCodec()]


def inner_store(kind: str, tmp_path: Path) -> MemoryStore | LocalStore:
    return MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")


def sharding(encoding: str, index_location: str, order: str = "morton") -> ShardingCodec:
    return ShardingCodec(
        chunk_shape=INNER,
        codecs=codecs(encoding),
        index_location=index_location,  # type: ignore[arg-type]
        subchunk_write_order=order,  # type: ignore[arg-type]
    )


def create(
    inner: MemoryStore | LocalStore,
    encoding: str = "fixed",
    index_location: str = "end",
    *,
    locked: bool = True,
    pipeline: dict[str, str] = OURS,
    serializer: Any = None,
    compressors: Any = None,
    filters: Any = None,
) -> zarr.Array[Any]:
    return new_array(
        RangeLockedStore(inner) if locked else inner,
        shape=SHAPE,
        chunks=SHARD,
        pipeline=pipeline,
        serializer=serializer or sharding(encoding, index_location),
        compressors=compressors,
        **({} if filters is None else {"filters": filters}),
    )


def stock_read(inner: MemoryStore | LocalStore) -> np.ndarray:
    """Read with stock zarr: default pipeline, the bare store."""
    with zarr.config.set(STOCK):
        arr = zarr.open_array(inner, mode="r")
        assert type(arr.async_array.codec_pipeline).__name__ == "BatchedCodecPipeline"
        return np.asarray(arr[:])


def reopen(inner: MemoryStore | LocalStore) -> zarr.Array[Any]:
    """The array in ``inner`` again, through the wrapper and ``ShardWritePipeline``."""
    with zarr.config.set(OURS):
        return zarr.open_array(RangeLockedStore(inner))


def aligned_regions(n: int) -> list[Region]:
    """``n`` distinct inner chunks of shard (1, 1), each exactly one chunk."""
    regions = []
    for i in range(n):
        r, c = divmod(i, 4)
        regions.append((slice(8 + 2 * r, 10 + 2 * r), slice(12 + 3 * c, 15 + 3 * c)))
    return regions


def band_regions(n: int) -> list[Region]:
    """``n`` disjoint row bands with unaligned edges, each spanning columns 1..22,
    so every band crosses chunk edges and the shard edge at column 12, and most
    split inner chunks between two writers. Bands of one row use an integer index."""
    if n == 16:
        edges = list(range(17))
    else:
        edges = [0, *sorted({min(15, k * 16 // n + 1) for k in range(1, n)}), 16]
    assert len(edges) == n + 1
    return [
        (lo if hi - lo == 1 else slice(lo, hi), slice(1, 23))
        for lo, hi in itertools.pairwise(edges)
    ]


def value(model: np.ndarray, region: Region, i: int) -> Any:
    """What writer ``i`` writes: a scalar for even ``i``, distinct numbers otherwise."""
    shape = model[region].shape
    if i % 2 == 0:
        return np.int32(i + 1)
    return np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) + 1000 * (i + 1)


def model_of(regions: list[Region]) -> tuple[np.ndarray, list[Any]]:
    model = np.zeros(SHAPE, dtype="i4")
    values = [value(model, r, i) for i, r in enumerate(regions)]
    for r, v in zip(regions, values, strict=True):
        model[r] = v
    return model, values
