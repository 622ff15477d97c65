"""``RangeLockedStore(dense_shards=True)``: a shard of uncompressed inner
chunks is laid out densely by its first write, not once a quarter of its
chunks hold data.

The option changes where bytes go, never what a reader sees: the tests
compare values (and keys) with the plain API on a store without it, a
numpy model or stock zarr. The layout tests carry their own control (the
same write without the option leaves the shard compact), and show the
slots of chunks not written yet are holes where the fill value encodes to
zero bytes.
"""

from __future__ import annotations

import asyncio
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, note, settings
from zarr.storage import LocalStore, MemoryStore

from tests._fds import has_holes
from tests._shard_helpers import STOCK, new_array
from tests._threads import run_together
from tests._writer_helpers import (
    array_keys,
    check_random_steps,
    chunk_region,
    locked_array,
    raw_values,
    stock_read,
)
from tests.test_shard_writer import Case, writes_of
from tests.test_shard_writer import _cases as writer_cases
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = pytest.mark.timeout(120)

# 16 KiB inner chunks, 16 to a shard: a dense shard is 256 KiB and the index.
SHAPE, CHUNKS, SHARDS = (512, 512), (64, 64), (256, 256)
CHUNK_BYTES = 64 * 64 * 4
INDEX_BYTES = 16 * 16 + 4  # offset and length per chunk, and the CRC-32C
MARKS_BYTES = 12 + 2 + 4  # which chunks are fill stand-ins: magic, a bit a chunk, CRC-32C
DENSE_BYTES = 16 * CHUNK_BYTES + INDEX_BYTES + MARKS_BYTES  # (laid out with stand-ins)


def _array(root: Path, *, dense: bool, **options: Any) -> zarr.Array[Any]:
    """The module's array at ``root`` (``options``: ``locked_array``'s)."""
    options = {"shape": SHAPE, "chunks": CHUNKS, "shards": SHARDS, **options}
    return locked_array(LocalStore(root), dense_shards=dense, **options)


def _stock(root: Path) -> np.ndarray:
    return stock_read(LocalStore(root, read_only=True))


def _write_one_chunk(arr: zarr.Array[Any], api: str, value: np.ndarray) -> None:
    """Chunk (1, 2) (of shard (0, 0)) set to ``value`` through ``api``."""
    region = chunk_region((1, 2), SHAPE, CHUNKS)
    if api == "write_chunk":
        ShardWriter(arr).write_chunk((1, 2), value)
    elif api == "write_chunks":
        ShardWriter(arr).write_chunks({(1, 2): value})
    elif api == "writer[sel]":  # two chunks: the writer's pipeline, not its fast path
        ShardWriter(arr)[region[0], 128:256] = np.concatenate([value, value], axis=1)
    elif api == "async":
        asyncio.run(arr._async_array.setitem(region, value))
    else:
        arr[region] = value


APIS = ["write_chunk", "write_chunks", "writer[sel]", "plain", "async"]


@pytest.mark.parametrize("api", APIS)
def test_a_shards_first_write_lays_it_out_densely_with_the_option_and_compactly_without(
    tmp_path: Path, api: str
) -> None:
    """One chunk (two for ``writer[sel]``) into a fresh array: with the
    option the shard file has its dense size at once, and the slots of the
    chunks not written are holes (its disk blocks about what was written);
    without it (the control) the shard is compact. Stock zarr reads the
    same values from both."""
    value = np.arange(CHUNK_BYTES // 4, dtype="i4").reshape(CHUNKS) + 1
    sizes = {}
    for dense in (False, True):
        root = tmp_path / f"dense_{dense}"
        arr = _array(root, dense=dense)
        _write_one_chunk(arr, api, value)
        shard = root / "c" / "0" / "0"
        sizes[dense] = shard.stat().st_size
        model = np.zeros(SHAPE, dtype="i4")
        model[chunk_region((1, 2), SHAPE, CHUNKS)] = value
        if api == "writer[sel]":
            model[64:128, 128:256] = np.concatenate([value, value], axis=1)
        np.testing.assert_array_equal(_stock(root), model)
        assert array_keys(arr) == ["c/0/0"]
        if dense and has_holes(shard):
            assert shard.stat().st_blocks * 512 <= 3 * CHUNK_BYTES + 4096
    assert sizes[True] == DENSE_BYTES
    assert sizes[False] < DENSE_BYTES // 2  # the control: compact, as before


def test_a_fill_value_of_other_bytes_than_zeros_is_written_into_every_slot(
    tmp_path: Path,
) -> None:
    """Fill 7: the dense shard made by the first chunk holds the fill
    chunk's bytes in every other slot (no holes to leave), and stock zarr
    reads 7 there."""
    arr = _array(tmp_path / "root", dense=True, fill_value=7)
    value = np.full(CHUNKS, 3, dtype="i4")
    ShardWriter(arr).write_chunk((1, 2), value)
    shard = tmp_path / "root" / "c" / "0" / "0"
    assert shard.stat().st_size == DENSE_BYTES
    assert shard.stat().st_blocks * 512 >= 16 * CHUNK_BYTES
    model = np.full(SHAPE, 7, dtype="i4")
    model[chunk_region((1, 2), SHAPE, CHUNKS)] = 3
    np.testing.assert_array_equal(_stock(tmp_path / "root"), model)


def test_a_journaled_store_lays_a_shard_out_densely_at_its_first_write_too(
    tmp_path: Path,
) -> None:
    """With ``durability="journal"`` the writer's fast path leaves a shard
    that is not dense to the pipeline (the chunk and the index are one
    transaction there): the pipeline honours the option as well."""
    arr = _array(tmp_path / "root", dense=True, durability="journal")
    value = np.full(CHUNKS, 5, dtype="i4")
    ShardWriter(arr).write_chunk((0, 0), value)
    assert (tmp_path / "root" / "c" / "0" / "0").stat().st_size == DENSE_BYTES
    assert (_stock(tmp_path / "root")[:64, :64] == 5).all()


def test_compressed_chunks_are_laid_out_as_without_the_option(tmp_path: Path) -> None:
    """zstd inner chunks have no dense layout: the same random writes leave
    the same bytes in every key with the option as without."""
    rng = np.random.default_rng(3)
    arrays = [_array(tmp_path / f"dense_{d}", dense=d, compressor="zstd") for d in (False, True)]
    writers = [ShardWriter(a) for a in arrays]
    for _ in range(20):
        coords = (int(rng.integers(8)), int(rng.integers(8)))
        value = rng.integers(0, 50, size=CHUNKS, dtype="i4")
        for w in writers:
            w.write_chunk(coords, value)
    arrays[0][3:70, 100:300] = 9
    arrays[1][3:70, 100:300] = 9
    assert raw_values(arrays[0]) == raw_values(arrays[1])


def test_the_option_travels_with_pickled_and_read_only_copies_and_shows_in_the_repr(
    tmp_path: Path,
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path / "root"), dense_shards=True)
    assert store.dense_shards
    assert repr(store).endswith(", dense_shards=True)")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.dense_shards and copy.with_read_only().dense_shards
    plain = RangeLockedStore(LocalStore(tmp_path / "root"))
    assert not plain.dense_shards and "dense_shards" not in repr(plain)
    assert not pickle.loads(pickle.dumps(plain)).dense_shards
    assert RangeLockedStore(MemoryStore(), dense_shards=True).dense_shards


def test_threads_writing_every_chunk_of_a_fresh_array_lose_nothing(tmp_path: Path) -> None:
    """Four threads sharing one writer, every chunk of a fresh array in a
    random order (``write_chunk`` and ``write_chunks``), on a store with the
    option: stock zarr reads every chunk's value and each shard is dense."""
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    arr = _array(tmp_path / "root", dense=True)
    writer = ShardWriter(arr)
    coords = [(i, j) for i in range(8) for j in range(8)]
    values = {c: np.full(CHUNKS, 100 * c[0] + c[1] + 1, dtype="i4") for c in coords}

    def work(t: int) -> None:
        mine = coords[t::4]
        random.Random(seed + t).shuffle(mine)
        for c in mine[: len(mine) // 2]:
            writer.write_chunk(c, values[c])
        writer.write_chunks({c: values[c] for c in mine[len(mine) // 2 :]})

    run_together(4, work)
    got = _stock(tmp_path / "root")
    for c in coords:
        np.testing.assert_array_equal(got[chunk_region(c, SHAPE, CHUNKS)], values[c])
    for key in array_keys(arr):
        assert (tmp_path / "root" / key).stat().st_size == DENSE_BYTES


# --------------------------------------- random writes against the plain API

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("kind", ["local-dense", "memory-dense"])
@pytest.mark.parametrize("compressor", ["raw", "zstd"])
@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
@SETTINGS
@given(case=writer_cases())
def test_random_writes_through_a_writer_on_a_dense_shards_store_match_the_plain_api(
    kind: str, compressor: str, empty: bool, case: Case
) -> None:
    """``test_shard_writer``'s random writes (``write_chunk``, whole chunks,
    any selection; random shapes, dtypes and fill values, edge chunks), the
    writer's wrapper with ``dense_shards=True``, the plain API's without,
    with ``write_empty_chunks`` off and on: the same values and keys after
    every write, and stock zarr reads the model."""
    note(repr(case))
    array = case.array
    check_random_steps(kind, compressor, empty, array, case.writes, writes_of(array))


@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
@SETTINGS
@given(case=writer_cases())
def test_random_writes_through_the_plain_api_on_a_dense_shards_store_match_stock_zarr(
    empty: bool, case: Case
) -> None:
    """The same random writes through ``arr[sel] = v`` with our pipeline on a
    store with the option, and through stock zarr on a bare MemoryStore
    (``write_empty_chunks`` off and on): the same values and the same keys
    after every write."""
    note(repr(case))
    a = case.array
    options: dict[str, Any] = {
        "shape": a.shape,
        "chunks": a.chunks,
        "shards": a.shards,
        "dtype": a.dtype,
        "fill_value": a.fill,
    }
    inner = MemoryStore()
    ours = locked_array(inner, dense_shards=True, empty=empty, **options)
    stock = new_array(
        MemoryStore(), pipeline=STOCK, config={"write_empty_chunks": empty}, **options
    )
    for w in case.writes:
        target = chunk_region(w.target, a.shape, a.chunks) if w.kind == "chunk" else w.target
        ours[target] = w.value
        stock[target] = w.value
        np.testing.assert_array_equal(ours[...], stock[...])
        assert array_keys(ours) == array_keys(stock)
    np.testing.assert_array_equal(stock_read(inner), stock[...])  # the bare store
