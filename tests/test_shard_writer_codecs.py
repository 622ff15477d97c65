"""``ShardWriter`` on every inner codec zarr ships writes what stock zarr writes.

The writer's fast paths take an array's inner codecs apart: plain bytes are
written as they are, other fixed-size chains (big-endian bytes, a checksum,
a transpose) are encoded with zarr's synchronous transform and written in
place, compressed ones appended (``shards/_fastpaths``). The writer's other
tests use plain bytes and zstd only; here every codec cell of
``test_hardening_codecs`` (each codec class zarr can put inside a shard)
takes a seeded sequence of ``write_chunk``, ``write_chunks`` (with chunks of
fill among them) and ``writer[sel] = value`` through a ``ShardWriter``, and
the same writes go through stock zarr on a bare ``MemoryStore``. After every
step both hold the same values (bit for bit) and the same keys; at the end
stock zarr reads the writer's store. Edge chunks on both axes.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from tests._writer_helpers import array_keys, chunk_grid, chunk_region
from tests.test_hardening_codecs import CELLS, _values
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::UserWarning")]

SHAPE = (11, 9)  # edge chunks on both axes
CHUNKS = (3, 5)
SHARDS = (6, 10)
STEPS = 12


def _bits(values: np.ndarray) -> np.ndarray:
    """Floats and complex numbers as unsigned integers of their width."""
    if values.dtype.kind not in "fc":
        return values
    width = values.dtype.itemsize // (2 if values.dtype.kind == "c" else 1)
    return values.view(f"u{width}")


def _chunk(rng: np.random.Generator, dtype: str, fill: Any) -> tuple[tuple[int, int], Any]:
    """A random inner chunk's coordinates and a value for it (fill one time in five)."""
    grid = chunk_grid(SHAPE, CHUNKS)
    coords = (int(rng.integers(grid[0])), int(rng.integers(grid[1])))
    clipped = np.empty(SHAPE)[chunk_region(coords, SHAPE, CHUNKS)].shape
    if rng.random() < 0.2:
        return coords, np.full(clipped, fill, dtype=dtype)
    return coords, _values(dtype, clipped, int(rng.integers(1 << 30)))


def _steps(seed: int, dtype: str, fill: Any) -> Iterator[tuple[str, Any, list[tuple[Any, Any]]]]:
    """``(how, what, plain writes)``: the writer's call and, as
    ``(region, value)`` pairs, what stock zarr writes for it."""
    rng = np.random.default_rng(seed)
    whole = _values(dtype, SHAPE, seed)
    yield "sel", (..., whole), [(..., whole)]  # every shard made (dense, then rewritten)
    for _ in range(STEPS):
        how = str(rng.choice(["chunk", "chunks", "sel"]))
        if how == "chunk":
            coords, value = _chunk(rng, dtype, fill)
            yield how, (coords, value), [(chunk_region(coords, SHAPE, CHUNKS), value)]
        elif how == "chunks":
            batch = dict(_chunk(rng, dtype, fill) for _ in range(int(rng.integers(1, 6))))
            yield how, batch, [(chunk_region(c, SHAPE, CHUNKS), v) for c, v in batch.items()]
        else:
            (a, b), (c, d) = (sorted(rng.integers(0, n + 1, 2)) for n in SHAPE)
            sel = (slice(int(a), int(b)), slice(int(c), int(d)))
            value = _values(dtype, (int(b - a), int(d - c)), int(rng.integers(1 << 30)))
            yield how, (sel, value), [(sel, value)]


@pytest.mark.parametrize("kind", ["memory", "local"])
@pytest.mark.parametrize(("cell", "dtype", "fill", "kwargs"), CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("index_location", ["start", "end"])
def test_the_writer_on_every_inner_codec_writes_what_stock_zarr_writes(
    kind: str,
    cell: str,
    dtype: str,
    fill: Any,
    kwargs: dict[str, Any],
    index_location: str,
    tmp_path: Path,
) -> None:
    options = {
        "dtype": dtype,
        "fill_value": fill,
        "shards": {"shape": SHARDS, "index_location": index_location},
        "compressors": None,
        **kwargs,
    }
    inner = LocalStore(tmp_path) if kind == "local" else MemoryStore()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = new_array(
            RangeLockedStore(inner), shape=SHAPE, chunks=CHUNKS, pipeline=OURS, **options
        )
        stock = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, pipeline=STOCK, **options)
    writer = ShardWriter(ours)
    seed = zlib.crc32(cell.encode())  # a fixed sequence per cell
    for step, (how, what, plain) in enumerate(_steps(seed, dtype, fill)):
        if how == "chunk":
            writer.write_chunk(*what)
        elif how == "chunks":
            writer.write_chunks(what)
        else:
            writer[what[0]] = what[1]
        for region, value in plain:
            stock[region] = value
        np.testing.assert_array_equal(
            _bits(ours[...]), _bits(stock[...]), err_msg=f"step {step}: {how}"
        )
        assert array_keys(ours) == array_keys(stock), f"step {step}: {how}"
    with zarr.config.set(STOCK):
        reread = zarr.open_array(inner, mode="r")[...]
    np.testing.assert_array_equal(_bits(reread), _bits(stock[...]))
