"""Writing one sharded array from dask: a thread pool, and worker processes.

The array is 256 x 256 float32 in shards of 128 x 128 (four shards) of inner
chunks of 32 x 32 (sixteen per shard). The dask blocks are aligned to inner
chunks but not to shards (64 x 96, and 96 x 96), so every shard is written by
several blocks at once, which stock zarr does by reading, merging and
rewriting the whole shard: all but one of the writers lose. Every value is
distinct and non-zero (the fill value is 0), so a lost chunk and a chunk
holding another chunk's data are both visible, and every test compares what
stock zarr (bare LocalStore, zarr's default pipeline) reads back with a numpy
model.

Worker processes. The array object that dask ships to a worker carries the
codec pipeline it was built with: zarr pickles ``AsyncArray`` field by field,
``codec_pipeline`` included, and does not rebuild it from the worker's config
on unpickling. So ``da.store`` and ``to_zarr`` of an array created in the
client (with the pipeline selected there) write through ``ShardWritePipeline``
in every worker. An array that a worker opens itself gets the pipeline that
the worker's zarr config names, which is read from the environment when zarr
is imported: ``ZARR_CODEC_PIPELINE__PATH=zarr_rangelock.ShardWritePipeline``
(donfig: prefix ``ZARR_``, ``__`` for nesting, lower-cased key). The cluster
below sets it as a user would, through the nannies' ``env=``, which puts it in
each worker's environment before the worker imports zarr.
"""

from __future__ import annotations

import errno
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, get_task_stream
from zarr.codecs import ZstdCodec
from zarr.core.buffer import cpu
from zarr.core.sync import sync
from zarr.storage import LocalStore

import zarr_rangelock._errors as E
from tests._processes import assert_both_workers_ran, dask_workers
from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore, ShardWriter

SHAPE, SHARDS, INNER = (256, 256), (128, 128), (32, 32)
BLOCKS = {"blocks 64x96": (64, 96), "blocks 96x96": (96, 96)}
COMPRESSORS: dict[str, ZstdCodec | None] = {"uncompressed": None, "zstd": ZstdCodec()}

# What a user puts in the environment of every dask worker (see the module
# docstring): zarr's config maps ZARR_CODEC_PIPELINE__PATH to codec_pipeline.path.
WORKER_ENV = {"ZARR_CODEC_PIPELINE__PATH": OURS["codec_pipeline.path"]}


def _value_at(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The model's value at row ``i``, column ``j``: distinct and never the fill value 0."""
    return (i * SHAPE[1] + j + 1).astype("f4")


def _model() -> np.ndarray:
    return np.fromfunction(_value_at, SHAPE, dtype="f4")


def _source(blocks: tuple[int, int]) -> da.Array:
    """The model as a dask array, each block computed where its task runs."""
    return da.fromfunction(_value_at, shape=SHAPE, chunks=blocks, dtype="f4")


def _new_sharded(store: RangeLockedStore, compressor: ZstdCodec | None) -> zarr.Array[Any]:
    return new_array(
        store,
        shape=SHAPE,
        chunks=INNER,
        shards=SHARDS,
        dtype="f4",
        compressors=compressor,
        pipeline=OURS,
    )


def _wrong_chunks(actual: np.ndarray, expected: np.ndarray) -> str:
    """Which inner chunks differ from the model: '' if none, else a summary."""
    wrong, lost = [], 0
    for r in range(0, SHAPE[0], INNER[0]):
        for c in range(0, SHAPE[1], INNER[1]):
            sel = np.s_[r : r + INNER[0], c : c + INNER[1]]
            if not np.array_equal(actual[sel], expected[sel]):
                wrong.append((r // INNER[0], c // INNER[1]))
                lost += int(not actual[sel].any())
    if not wrong:
        return ""
    total = (SHAPE[0] // INNER[0]) * (SHAPE[1] // INNER[1])
    return (
        f"{len(wrong)} of {total} inner chunks differ from the model ({lost} lost, i.e. all "
        f"fill value; {len(wrong) - lost} hold other data), first few {wrong[:8]}"
    )


def _assert_matches_model(root: Path) -> None:
    """Read the array back through our store and pipeline, then with stock zarr."""
    expected = _model()
    with zarr.config.set(OURS):
        ours = zarr.open_array(RangeLockedStore(LocalStore(root, read_only=True)), mode="r")
        problem = _wrong_chunks(ours[...], expected)
    assert not problem, f"read through RangeLockedStore: {problem}"
    with zarr.config.set(STOCK):
        stock = zarr.open_array(LocalStore(root, read_only=True), mode="r")
        problem = _wrong_chunks(stock[...], expected)
    assert not problem, f"read by stock zarr: {problem}"


# ---------------------------------------------------------------- threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", COMPRESSORS)
@pytest.mark.parametrize("blocks", BLOCKS)
def test_dask_store_from_a_thread_pool_into_shared_shards_loses_nothing(
    blocks: str, compression: str, tmp_path: Path
) -> None:
    z = _new_sharded(RangeLockedStore(LocalStore(tmp_path)), COMPRESSORS[compression])
    # More threads than cores, so that several blocks of each shard are in flight.
    with dask.config.set(scheduler="threads", num_workers=8):
        da.store(_source(BLOCKS[blocks]), z, lock=False)
    _assert_matches_model(tmp_path)


# -------------------------------------------------------------- processes


def _worker_pipeline_path() -> str:
    return str(zarr.config.get("codec_pipeline.path"))


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two worker processes of two threads each, shared by this module's tests."""
    with dask_workers(WORKER_ENV) as c:
        yield c


@pytest.mark.timeout(120)
def test_worker_processes_select_the_shard_write_pipeline_from_their_environment(
    client: Client,
) -> None:
    paths = client.run(_worker_pipeline_path)
    assert len(paths) == 2
    assert set(paths.values()) == {"zarr_rangelock.ShardWritePipeline"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", COMPRESSORS)
def test_dask_store_from_worker_processes_into_shared_shards_loses_nothing(
    client: Client, compression: str, tmp_path: Path
) -> None:
    # The array is created here, in the client, with the pipeline selected;
    # the copies pickled to the workers keep it (see the module docstring).
    z = _new_sharded(RangeLockedStore(LocalStore(tmp_path)), COMPRESSORS[compression])
    with get_task_stream(client) as stream:
        da.store(_source(BLOCKS["blocks 64x96"]), z, lock=False)
    assert_both_workers_ran(stream.data)
    _assert_matches_model(tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", COMPRESSORS)
def test_dask_to_zarr_from_worker_processes_into_a_new_sharded_array_loses_nothing(
    client: Client, compression: str, tmp_path: Path
) -> None:
    # dask's to_zarr passes a store object through untouched and its extra
    # keyword arguments to zarr.create_array, which runs here in the client:
    # the pipeline must be selected around the call.
    with zarr.config.set(OURS), get_task_stream(client) as stream:
        _source(BLOCKS["blocks 64x96"]).to_zarr(
            RangeLockedStore(LocalStore(tmp_path)),
            chunks=INNER,
            shards=SHARDS,
            compressors=COMPRESSORS[compression],
            fill_value=0,
        )
    assert_both_workers_ran(stream.data)
    _assert_matches_model(tmp_path)


def _write_region_in_worker(region: tuple[slice, slice], store: RangeLockedStore) -> str:
    """Open the array in the worker (its own config picks the pipeline) and write ``region``."""
    arr = zarr.open_array(store, mode="r+")
    arr[region] = _model()[region]
    return type(arr.async_array.codec_pipeline).__qualname__


@pytest.mark.timeout(120)
def test_workers_that_open_the_array_themselves_write_through_the_shard_write_pipeline(
    client: Client, tmp_path: Path
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    _new_sharded(store, None)
    rows, cols = BLOCKS["blocks 64x96"]
    regions = [
        (slice(r, r + rows), slice(c, c + cols))
        for r in range(0, SHAPE[0], rows)
        for c in range(0, SHAPE[1], cols)
    ]
    futures = client.map(_write_region_in_worker, regions, store=store)
    assert set(client.gather(futures)) == {"ShardWritePipeline"}
    _assert_matches_model(tmp_path)


def _write_chunks_in_worker(coords: list[tuple[int, int]], one: bool, writer: ShardWriter) -> None:
    """Write the model's inner chunks at ``coords`` through ``writer`` (one
    ``write_chunk`` each, or one ``write_chunks``)."""
    model = _model()
    chunks = {
        c: model[tuple(slice(i * n, (i + 1) * n) for i, n in zip(c, INNER, strict=True))]
        for c in coords
    }
    if one:
        for c, value in chunks.items():
            writer.write_chunk(c, value)
    else:
        writer.write_chunks(chunks)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", COMPRESSORS)
def test_shard_writers_pickled_to_worker_processes_lose_nothing(
    client: Client, compression: str, tmp_path: Path
) -> None:
    # Tasks that take a ShardWriter made in the client: it pickles as its
    # array, so each worker gets a writer of the same array. The chunks in
    # random order, four a task: every shard written by several tasks on
    # both workers at once, write_chunk and write_chunks alike.
    writer = ShardWriter(
        _new_sharded(RangeLockedStore(LocalStore(tmp_path)), COMPRESSORS[compression])
    )
    grid = [(r, c) for r in range(SHAPE[0] // INNER[0]) for c in range(SHAPE[1] // INNER[1])]
    order = np.random.default_rng(7).permutation(len(grid))
    groups = [[grid[i] for i in order[k : k + 4]] for k in range(0, len(grid), 4)]
    with get_task_stream(client) as stream:
        futures = client.map(
            _write_chunks_in_worker, groups, [k % 2 == 0 for k in range(len(groups))], writer=writer
        )
        client.gather(futures)
    assert_both_workers_ran(stream.data, "_write_chunks_in_worker")
    _assert_matches_model(tmp_path)


# ----------------------------------------------------------------- errors

# Each entry: what a worker does to a store, given the writable store and a
# read-only one of the same root. The client does the same locally, and the
# error from the worker must be the same: type, message and attributes.
_BLOB = "blob"


def _set_range_past_the_end(rw: RangeLockedStore, ro: RangeLockedStore) -> None:
    rw.set_range_sync(_BLOB, cpu.Buffer.from_bytes(b"xyz"), 3)


def _set_range_of_a_missing_key(rw: RangeLockedStore, ro: RangeLockedStore) -> None:
    rw.set_range_sync("missing", cpu.Buffer.from_bytes(b"x"), 0)


def _set_range_of_a_key_outside_the_root(rw: RangeLockedStore, ro: RangeLockedStore) -> None:
    rw.set_range_sync("../escape", cpu.Buffer.from_bytes(b"x"), 0)


def _set_range_into_a_read_only_store(rw: RangeLockedStore, ro: RangeLockedStore) -> None:
    ro.set_range_sync(_BLOB, cpu.Buffer.from_bytes(b"x"), 0)


def _set_into_a_read_only_store(rw: RangeLockedStore, ro: RangeLockedStore) -> None:
    sync(ro.set(_BLOB, cpu.Buffer.from_bytes(b"new value")))


FAILING_OPS: dict[str, Callable[[RangeLockedStore, RangeLockedStore], None]] = {
    f.__name__.lstrip("_"): f
    for f in (
        _set_range_past_the_end,
        _set_range_of_a_missing_key,
        _set_range_of_a_key_outside_the_root,
        _set_range_into_a_read_only_store,
        _set_into_a_read_only_store,
    )
}


def _raised(op: Callable[[], None]) -> BaseException:
    with pytest.raises(Exception) as info:
        op()
    return info.value


def _public_state(error: BaseException) -> dict[str, object]:
    """``args`` and every public data attribute, the OSError ones included."""
    return {
        name: getattr(error, name, None)
        for name in dir(error)
        if not name.startswith("_") and not callable(getattr(error, name, None))
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", FAILING_OPS)
def test_a_store_error_raised_in_a_worker_reaches_the_client_as_raised(
    client: Client, op: str, tmp_path: Path
) -> None:
    rw = RangeLockedStore(LocalStore(tmp_path))
    ro = RangeLockedStore(LocalStore(tmp_path, read_only=True))
    sync(rw.set(_BLOB, cpu.Buffer.from_bytes(b"abcd")))
    local = _raised(lambda: FAILING_OPS[op](rw, ro))
    remote = _raised(lambda: client.submit(FAILING_OPS[op], rw, ro, pure=False).result())
    assert type(remote) is type(local)
    assert str(remote) == str(local)
    assert _public_state(remote) == _public_state(local)


@pytest.mark.timeout(120)
def test_a_dask_store_into_a_read_only_array_fails_at_the_client_with_zarrs_error(
    client: Client, tmp_path: Path
) -> None:
    _new_sharded(RangeLockedStore(LocalStore(tmp_path)), None)
    with zarr.config.set(OURS):
        z = zarr.open_array(RangeLockedStore(LocalStore(tmp_path, read_only=True)), mode="r")
    with pytest.raises(ValueError, match="read-only"):
        da.store(_source(BLOCKS["blocks 64x96"]), z, lock=False)


# One instance of every exception class the package defines, built as the
# package builds them. A class missing here fails the test below.
SAMPLE_ERRORS: dict[str, BaseException] = {
    "InvalidKeyError": E.InvalidKeyError("../x", "contains a '..' segment"),
    "KeyNotFoundError": E.KeyNotFoundError("c/0/0", "set_range"),
    "KeyOutsideRootError": E.KeyOutsideRootError("c/0", "/mnt/other/c/0", "/data/x.zarr"),
    "LockTimeout": E.LockTimeout("c/0/0", [(0, 64), (128, None)], 0.5),
    "RangeNotHeldError": E.RangeNotHeldError(
        "c/0/0", 10, None, ((0, 8), (16, 32)), "is not inside the held ranges"
    ),
    "RangeOutOfBoundsError": E.RangeOutOfBoundsError("c/0/0", 3, 3, 4),
    "SelfDeadlockError": E.SelfDeadlockError(
        "c/0/0", [(0, 64)], False, "c/0/0", [(0, None)], True, "this thread ('MainThread')"
    ),
    "UnsupportedStoreError": E.UnsupportedStoreError("zarr.storage.ZipStore"),
    "WouldBlock": E.WouldBlock("c/0/0", [(0, None)]),
    "CrossProcessLockError": E.CrossProcessLockError(
        "/data/x.zarr/.rangelock", errno.ENOLCK, "the filesystem refuses byte-range locks"
    ),
    "CrossProcessWarning": E.CrossProcessWarning("fell back to whole-file locks"),
    "DescriptorLimitError": E.DescriptorLimitError("c/0/0", "set_range", errno.EMFILE, 1024, 2),
    "PartialWriteError": E.PartialWriteError(errno.EFBIG, "too large", "c/0/0", 0, 65536, 1000),
    "JournalWarning": E.JournalWarning("journal record discarded: truncated"),
}


@pytest.mark.timeout(30)
def test_every_package_error_round_trips_through_pickle_with_its_message_and_attributes() -> None:
    assert set(SAMPLE_ERRORS) == set(E.__all__)
    for name, error in SAMPLE_ERRORS.items():
        assert type(error) is getattr(E, name)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error), name
        assert _public_state(copy) == _public_state(error), name
        # A note added on the way (the journal adds "the transaction was
        # rolled back") survives too; those pickled by a __reduce__ of their
        # own dropped it.
        copy.add_note("the transaction was rolled back")
        assert pickle.loads(pickle.dumps(copy)).__notes__ == copy.__notes__, name
