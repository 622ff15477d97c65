"""``ShardWriter`` on every inner codec and dtype zarr ships writes what stock zarr writes.

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
stock zarr reads the writer's store. Edge chunks on both axes. The same
for fixed-size dtypes other than numbers (strings, bytes, times, records),
uncompressed and zstd.
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
from tests.test_hardening_codecs import _values, cell_options, over_every_cell
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = [
    pytest.mark.timeout(120),
    # zarr warns on every use of its numcodecs wrappers and of some dtypes
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    # zarr's fill check comparing records whose random float fields are NaN
    pytest.mark.filterwarnings("ignore:invalid value encountered in equal:RuntimeWarning"),
]

SHAPE = (11, 9)  # edge chunks on both axes
CHUNKS = (3, 5)
SHARDS = (6, 10)
STEPS = 12


def _bits(values: np.ndarray) -> np.ndarray:
    """``values`` as their bytes (NaN payloads and signed zeros compared too)."""
    return np.ascontiguousarray(values).view(np.uint8)


def _any_values(dtype: Any, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    """Random values of any fixed-size dtype (``_values``' for numbers)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dt.kind in "US":
        words = [f"w{i}" for i in rng.integers(0, 100, n)]
        return np.array(words if dt.kind == "U" else [w.encode() for w in words], dtype=dt).reshape(
            shape
        )
    if dt.kind in "Mm":
        return rng.integers(-(10**6), 10**6, n).astype(dt).reshape(shape)
    if dt.kind == "V":
        raw = rng.integers(0, 256, n * dt.itemsize, dtype="u1")
        return raw.view(dt).reshape(shape)  # (a record's floats: any bits)
    if dt.kind == "c":
        return (_values("f8", shape, seed) + 1j * _values("f8", shape, seed + 1)).astype(dt)
    return _values(dt.str if dt.kind != "b" else "bool", shape, seed)


def _chunk(rng: np.random.Generator, dtype: Any, fill: Any) -> tuple[tuple[int, int], Any]:
    """A random inner chunk's coordinates and a value for it (fill one time in five)."""
    grid = chunk_grid(SHAPE, CHUNKS)
    coords = (int(rng.integers(grid[0])), int(rng.integers(grid[1])))
    clipped = np.empty(SHAPE)[chunk_region(coords, SHAPE, CHUNKS)].shape
    if rng.random() < 0.2:
        return coords, np.full(clipped, fill, dtype=dtype)
    return coords, _any_values(dtype, clipped, int(rng.integers(1 << 30)))


def _steps(seed: int, dtype: Any, fill: Any) -> Iterator[tuple[str, Any, list[tuple[Any, Any]]]]:
    """``(how, what, plain writes)``: the writer's call and, as
    ``(region, value)`` pairs, what stock zarr writes for it."""
    rng = np.random.default_rng(seed)
    whole = _any_values(dtype, SHAPE, seed)
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
            value = _any_values(dtype, (int(b - a), int(d - c)), int(rng.integers(1 << 30)))
            yield how, (sel, value), [(sel, value)]


@over_every_cell
def test_the_writer_on_every_inner_codec_writes_what_stock_zarr_writes(
    kind: str,
    cell: str,
    dtype: str,
    fill: Any,
    kwargs: dict[str, Any],
    index_location: str,
    tmp_path: Path,
) -> None:
    options = cell_options(dtype, fill, kwargs, index_location, SHARDS)
    inner = LocalStore(tmp_path) if kind == "local" else MemoryStore()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = new_array(
            RangeLockedStore(inner), shape=SHAPE, chunks=CHUNKS, pipeline=OURS, **options
        )
        stock = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, pipeline=STOCK, **options)
    _write_both(ours, stock, inner, zlib.crc32(cell.encode()))


#: Fixed-size dtypes other than the numbers above, with a fill (None: zarr's
#: default): strings, bytes, times, raw bytes, records (zarr 3.4 refuses a
#: record with an array field).
DTYPES: list[tuple[str, Any, Any]] = [
    ("U4", "U4", ""),
    ("S4", "S4", b""),
    ("datetime", "datetime64[s]", "NaT"),
    ("timedelta", "timedelta64[ms]", 0),
    ("i1", "i1", -3),
    ("u8", "u8", 5),
    ("f2-nan", "f2", float("nan")),
    ("c8-nan", "c8", complex(float("nan"), 0.0)),
    ("V4", "V4", b"\x00\x00\x00\x00"),
    ("record", [("a", "i2"), ("b", "f4")], None),
    ("nested-record", [("a", "i2"), ("r", [("x", "c8"), ("y", "u1")])], None),
]


@pytest.mark.parametrize("kind", ["memory", "local"])
@pytest.mark.parametrize(("cell", "dtype", "fill"), DTYPES, ids=[c[0] for c in DTYPES])
@pytest.mark.parametrize("compressor", ["raw", "zstd"])
def test_the_writer_on_other_dtypes_writes_what_stock_zarr_writes(
    kind: str, cell: str, dtype: Any, fill: Any, compressor: str, tmp_path: Path
) -> None:
    options = {
        "dtype": dtype,
        "shards": SHARDS,
        "compressors": None if compressor == "raw" else [zarr.codecs.ZstdCodec(level=1)],
        **({} if fill is None else {"fill_value": fill}),
    }
    inner = LocalStore(tmp_path) if kind == "local" else MemoryStore()
    ours = new_array(RangeLockedStore(inner), shape=SHAPE, chunks=CHUNKS, pipeline=OURS, **options)
    stock = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, pipeline=STOCK, **options)
    _write_both(ours, stock, inner, zlib.crc32(cell.encode()))


def _write_both(
    ours: zarr.Array[Any], stock: zarr.Array[Any], inner: MemoryStore | LocalStore, seed: int
) -> None:
    """The writes of ``_steps(seed)`` through a ``ShardWriter`` of ``ours``
    and through stock zarr: the same bits and keys after each, and stock
    zarr's read of ``inner`` (``ours``' bare store) at the end."""
    writer = ShardWriter(ours)
    for step, (how, what, plain) in enumerate(_steps(seed, stock.dtype, stock.fill_value)):
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
