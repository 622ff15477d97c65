"""``ShardWriter`` against the plain API and a numpy model (issue 12).

Every test builds twin arrays with the same metadata, each on a
``RangeLockedStore`` of its own: one written through a ``ShardWriter``, the
other through the plain API (``arr[sel] = value`` with ``ShardWritePipeline``).
After every write both must hold what a numpy model of the writes holds,
their stores must hold the same keys (so a shard that becomes all fill is
deleted, and one of fill values never made, exactly when the plain API does
it), and a failing write must raise what the plain API raises. The threaded
tests are in ``test_shard_writer_threads.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from tests._threads import run_threads, wait_until
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = pytest.mark.timeout(120)

COMPRESSORS: dict[str, Any] = {"raw": None, "zstd": [ZstdCodec(level=1)]}
STORES = ("memory", "local")
EXAMPLES = 25
MAX_CHUNKS = 36  # inner chunks per random array: keeps an example cheap

Inner = MemoryStore | LocalStore


# ------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _inner_stores(kind: str) -> Iterator[tuple[Inner, Inner]]:
    """Two empty stores of ``kind`` (LocalStores under a fresh temporary
    directory, so hypothesis examples never share one)."""
    if kind == "memory":
        yield MemoryStore(), MemoryStore()
        return
    with tempfile.TemporaryDirectory(prefix="wtests-") as tmp:
        yield LocalStore(Path(tmp) / "writer"), LocalStore(Path(tmp) / "plain")


def _create(inner: Inner, path: str = "", **options: Any) -> zarr.Array[Any]:
    """A sharded array at ``path`` of ``inner``, through the wrapper and our
    pipeline (``options``: ``new_array``'s, plus ``empty`` for
    ``write_empty_chunks``)."""
    empty = options.pop("empty", False)
    compressor = options.pop("compressor", "raw")
    if path:
        options["name"] = path
    return new_array(
        RangeLockedStore(inner),
        pipeline=OURS,
        compressors=COMPRESSORS[compressor],
        config={"write_empty_chunks": empty},
        **options,
    )


def _keys(arr: zarr.Array[Any]) -> list[str]:
    """The array's keys, relative to its own path (metadata left out)."""
    path = arr.store_path.path
    prefix = f"{path}/" if path else ""

    async def collect() -> list[str]:
        return [k async for k in arr.store.list_prefix(prefix)]

    return sorted(k[len(prefix) :] for k in sync(collect()) if not k.endswith("zarr.json"))


def _stock_read(inner: Inner, path: str = "") -> np.ndarray:
    """Read with stock zarr (default pipeline, the bare store)."""
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(inner, path=path, mode="r")[...])


def _assert_same(
    written: zarr.Array[Any], plain: zarr.Array[Any], model: np.ndarray | None = None
) -> None:
    """The writer's array and the plain API's hold the same values (the
    model's, if given) and the same keys."""
    got = written[...]
    np.testing.assert_array_equal(got, plain[...])
    if model is not None:
        np.testing.assert_array_equal(got, model)
    assert _keys(written) == _keys(plain)


def _no_locks_left(arr: zarr.Array[Any]) -> None:
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    store.lock_manager._check()
    stats = store.lock_manager.stats()
    assert stats.holders == 0 and stats.waiters == 0


def _region(coords: tuple[int, ...], shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
    """The region of the inner chunk at ``coords``, clipped at the edge."""
    return tuple(
        slice(i * n, min((i + 1) * n, s)) for i, n, s in zip(coords, chunks, shape, strict=True)
    )


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))


@pytest.fixture
def setitem_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call of ``ShardWriter.__setitem__`` (the general path) from now
    on, by its selection: ``write_chunk`` falls back to it where its fast
    path does not apply."""
    calls: list[Any] = []
    original = ShardWriter.__setitem__

    def counted(self: ShardWriter, selection: Any, value: Any) -> None:
        calls.append(selection)
        original(self, selection, value)

    monkeypatch.setattr(ShardWriter, "__setitem__", counted)
    return calls


# --------------------------------------------------- random writes (hypothesis)


@dataclass(frozen=True)
class Write:
    """``writer[target] = value`` (kind "sel") or
    ``writer.write_chunk(target, value)`` (kind "chunk"); the plain API's twin
    writes ``arr[target]`` or ``arr[region of the chunk]``."""

    kind: str
    target: Any
    value: Any


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    dtype: str
    fill: int
    path: str
    writes: list[Write]


def _dim_selection(draw: st.DrawFn, n: int) -> Any:
    """One dimension of a basic selection of a dimension of length ``n``: an
    integer (negative ones too) or a slice (open ends, negative bounds,
    bounds past the end, steps >= 1; zarr refuses negative steps)."""
    if draw(st.booleans(), label="integer"):
        return draw(st.integers(-n, n - 1), label="index")
    bound = st.none() | st.integers(-n - 1, n + 1)
    return slice(draw(bound), draw(bound), draw(st.sampled_from([None, 1, 2, 3])))


def _selection(draw: st.DrawFn, shape: tuple[int, ...]) -> Any:
    """A basic selection: one item per dimension, or fewer (the rest whole),
    or with an Ellipsis standing for some of them; a bare item for one."""
    items = [_dim_selection(draw, n) for n in shape]
    how = draw(st.sampled_from(["all", "prefix", "ellipsis", "bare"]), label="form")
    if how == "prefix":
        return tuple(items[: draw(st.integers(0, len(items)))])
    if how == "ellipsis":
        cut = draw(st.integers(0, len(items)))
        return (*items[:cut], Ellipsis, *items[cut + draw(st.integers(0, len(items) - cut)) :])
    if how == "bare":
        return items[0]
    return tuple(items)


def _value(draw: st.DrawFn, shape: tuple[int, ...], fill: int) -> Any:
    """A value for a selection of ``shape``: a scalar (often the fill value;
    a Python or a 0-d numpy one), or an array of that shape (sometimes all
    fill). Zarr broadcasts scalars only (see the error tests)."""
    how = draw(st.sampled_from(["fill", "scalar", "0-d", "array", "array of fill"]))
    if how == "fill":
        return fill
    if how == "scalar":
        return draw(st.integers(0, 99), label="scalar")
    if how == "0-d":
        return np.array(draw(st.integers(0, 99), label="scalar"), dtype="i8")
    if how == "array of fill":
        return np.full(shape, fill)
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    values = np.random.default_rng(seed).integers(0, 100, size=shape)
    values[values < 30] = fill  # chunks of fill values now and then
    return values


@st.composite
def _cases(draw: st.DrawFn) -> Case:
    ndim = draw(st.integers(1, 3), label="ndim")
    chunks = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    per_shard = tuple(draw(st.integers(1, 3 if ndim < 3 else 2)) for _ in range(ndim))
    shards = tuple(c * p for c, p in zip(chunks, per_shard, strict=True))
    # up to two shards and a bit: edge shards and edge chunks
    shape = tuple(draw(st.integers(1, 2 * s + 1)) for s in shards)
    grid = _grid(shape, chunks)
    assume(int(np.prod(grid)) <= MAX_CHUNKS)
    fill = draw(st.sampled_from([0, 7]), label="fill")
    writes = []
    for _ in range(draw(st.integers(1, 8), label="writes")):
        if draw(st.booleans(), label="write_chunk"):
            coords = tuple(draw(st.integers(0, g - 1)) for g in grid)
            clipped = np.empty(shape)[_region(coords, shape, chunks)].shape
            writes.append(Write("chunk", coords, _value(draw, clipped, fill)))
        else:
            sel = _selection(draw, shape)
            writes.append(Write("sel", sel, _value(draw, np.empty(shape)[sel].shape, fill)))
    return Case(
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=draw(st.sampled_from(["i4", "u2", "f8"]), label="dtype"),
        fill=fill,
        path=draw(st.sampled_from(["", "group/array"]), label="path"),
        writes=writes,
    )


@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=_cases())
def test_random_writes_through_a_writer_match_the_plain_api_and_a_numpy_model(
    kind: str, compressor: str, empty: bool, case: Case
) -> None:
    note(repr(case))
    options = {
        "shape": case.shape,
        "chunks": case.chunks,
        "shards": case.shards,
        "dtype": case.dtype,
        "fill_value": case.fill,
        "compressor": compressor,
        "empty": empty,
    }
    with _inner_stores(kind) as (inner, twin_inner):
        written = _create(inner, case.path, **options)
        plain = _create(twin_inner, **options)
        writer = ShardWriter(written)
        model = np.full(case.shape, case.fill, dtype=case.dtype)
        for w in case.writes:
            if w.kind == "chunk":
                writer.write_chunk(w.target, w.value)
                region = _region(w.target, case.shape, case.chunks)
            else:
                writer[w.target] = w.value
                region = w.target
            plain[region] = w.value
            model[region] = w.value
            _assert_same(written, plain, model)
        np.testing.assert_array_equal(_stock_read(inner, case.path), model)
        _no_locks_left(written)


# ----------------------------------------------------------------- write_chunk


SHAPE, CHUNKS, SHARDS = (10, 7), (4, 3), (8, 6)  # a 3 x 3 grid of chunks, edges on both axes
GRID = _grid(SHAPE, CHUNKS)
ALL_CHUNKS = list(itertools.product(*(range(g) for g in GRID)))


def _twins(
    kind: str, tmp_path: Path, compressor: str = "raw", empty: bool = False, **options: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    """The writer's array (at a path inside its store) and the plain API's."""
    options = {"shape": SHAPE, "chunks": CHUNKS, "shards": SHARDS, **options}
    if kind == "memory":
        inner, twin = MemoryStore(), MemoryStore()
    else:
        inner, twin = LocalStore(tmp_path / "writer"), LocalStore(tmp_path / "plain")
    return (
        _create(inner, "group/array", compressor=compressor, empty=empty, **options),
        _create(twin, compressor=compressor, empty=empty, **options),
    )


def _chunk_value(coords: tuple[int, ...], salt: int) -> np.ndarray:
    shape = np.empty(SHAPE)[_region(coords, SHAPE, CHUNKS)].shape
    return np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) + 100 * salt + 1


@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_writes_what_the_plain_api_writes_into_its_region(
    kind: str, compressor: str, empty: bool, tmp_path: Path
) -> None:
    # Every chunk (full ones, edge chunks of clipped shape) with arrays, then
    # with broadcast scalars, then with the fill value chunk by chunk: with
    # write_empty_chunks False every shard is deleted as it becomes all fill.
    written, plain = _twins(kind, tmp_path, compressor, empty)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    values: list[Callable[[tuple[int, ...], int], Any]] = [
        _chunk_value,
        lambda coords, salt: np.int32(salt + 1),
        lambda coords, salt: 0,
    ]
    for make in values:
        for salt, coords in enumerate(ALL_CHUNKS):
            value = make(coords, salt)
            region = _region(coords, SHAPE, CHUNKS)
            writer.write_chunk(coords, value)
            plain[region] = value
            model[region] = value
            _assert_same(written, plain, model)
    assert _keys(written) == ([] if not empty else _keys(plain))
    _no_locks_left(written)


def _make_dense(writer: ShardWriter, plain: zarr.Array[Any], model: np.ndarray) -> None:
    """Shard (0, 0) dense (every chunk written), then one partial chunk write
    through the pipeline, which validates its index: what the fast path needs."""
    for arr in (writer, plain):
        arr[0:8, 0:6] = 5
        arr[1, 1] = 6
    model[0:8, 0:6] = 5
    model[1, 1] = 6


@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_into_a_dense_uncompressed_shard_takes_the_fast_path(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    written, plain = _twins(kind, tmp_path)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    _make_dense(writer, plain, model)
    setitem_calls.clear()
    for salt, coords in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (0, 0)]):
        value = _chunk_value(coords, salt) if salt % 2 else np.int32(salt + 1)
        writer.write_chunk(coords, value)
        plain[_region(coords, SHAPE, CHUNKS)] = value
        model[_region(coords, SHAPE, CHUNKS)] = value
        _assert_same(written, plain, model)
    assert setitem_calls == []  # all five in place, no event loop
    # Byte for byte the shard the plain API wrote.
    assert _raw(written, "c/0/0") == _raw(plain, "c/0/0")
    _no_locks_left(written)


def _raw(arr: zarr.Array[Any], key: str) -> bytes:
    path = arr.store_path.path
    buf = sync(arr.store.get(f"{path}/{key}" if path else key, default_buffer_prototype()))
    assert buf is not None
    return buf.to_bytes()


@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_falls_back_to_the_general_path_where_the_fast_path_does_not_apply(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    written, plain = _twins(kind, tmp_path)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")

    def both(coords: tuple[int, ...], value: Any) -> None:
        region = _region(coords, SHAPE, CHUNKS)
        writer.write_chunk(coords, value)
        plain[region] = value
        model[region] = value
        _assert_same(written, plain, model)

    both((0, 0), _chunk_value((0, 0), 1))  # the shard does not exist yet
    assert setitem_calls == [_region((0, 0), SHAPE, CHUNKS)]
    _make_dense(writer, plain, model)
    setitem_calls.clear()
    both((1, 0), np.int32(0))  # a chunk of fill values: zarr drops it
    assert len(setitem_calls) == 1
    both((0, 1), np.ones((1, 3), dtype="i4"))  # broadcast from another shape: zarr's rules
    assert len(setitem_calls) == 2
    both((1, 1), _chunk_value((1, 1), 3))  # in place again
    assert len(setitem_calls) == 2
    # Shard (0, 0) emptied chunk by chunk through write_chunk: deleted as the
    # plain API deletes it (write_empty_chunks is False here).
    for coords in itertools.product(range(2), range(2)):
        both(coords, 0)
    assert "c/0/0" not in _keys(written)
    both((0, 0), _chunk_value((0, 0), 4))  # and made again
    assert "c/0/0" in _keys(written)


@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_into_a_compressed_shard_always_takes_the_general_path(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    written, plain = _twins(kind, tmp_path, "zstd")
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    _make_dense(writer, plain, model)
    setitem_calls.clear()
    for salt, coords in enumerate(ALL_CHUNKS):
        writer.write_chunk(coords, _chunk_value(coords, salt))
        plain[_region(coords, SHAPE, CHUNKS)] = _chunk_value(coords, salt)
        model[_region(coords, SHAPE, CHUNKS)] = _chunk_value(coords, salt)
    assert len(setitem_calls) == len(ALL_CHUNKS)
    _assert_same(written, plain, model)


@pytest.mark.parametrize("between", ["whole-shard write", "shard deleted", "other wrapper"])
def test_the_fast_path_sees_a_whole_shard_write_made_after_it_validated_the_index(
    between: str, tmp_path: Path
) -> None:
    # The fast path trusts a validated index only while the store's change
    # stamp of the key is unchanged: a whole-key write in between (through
    # the plain API, a delete, or another wrapper of the same root) must not
    # make it write at stale offsets.
    written, plain = _twins("local", tmp_path)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    _make_dense(writer, plain, model)
    writer.write_chunk((0, 0), _chunk_value((0, 0), 1))  # validated, fast
    plain[_region((0, 0), SHAPE, CHUNKS)] = _chunk_value((0, 0), 1)
    model[_region((0, 0), SHAPE, CHUNKS)] = _chunk_value((0, 0), 1)
    if between == "whole-shard write":
        region, value = (slice(0, 8), slice(0, 6)), np.arange(48, dtype="i4").reshape(8, 6)
    else:
        region, value = (slice(0, 8), slice(0, 6)), 0
    target = written
    if between == "other wrapper":
        other = RangeLockedStore(LocalStore(tmp_path / "writer"))
        with zarr.config.set(OURS):
            target = zarr.open_array(other, path="group/array")
        region, value = (slice(0, 8), slice(0, 6)), 9
    target[region] = value
    plain[region] = value
    model[region] = value
    _assert_same(written, plain, model)
    for salt, coords in enumerate([(1, 1), (0, 1)]):
        writer.write_chunk(coords, _chunk_value(coords, salt + 2))
        plain[_region(coords, SHAPE, CHUNKS)] = _chunk_value(coords, salt + 2)
        model[_region(coords, SHAPE, CHUNKS)] = _chunk_value(coords, salt + 2)
        _assert_same(written, plain, model)
    np.testing.assert_array_equal(
        _stock_read(LocalStore(tmp_path / "writer"), "group/array"), model
    )


# ---------------------------------------------------------------------- errors


Outcome = tuple[type[BaseException], str] | None


def _outcome(fn: Callable[[], None]) -> Outcome:
    try:
        fn()
    except Exception as e:
        return type(e), str(e)
    return None


_BROADCAST = re.compile(r"could not broadcast input array from shape \(.*\) into shape \(.*\)")


def _assert_same_outcome(got: Outcome, expected: Outcome, compressor: str) -> None:
    """The same exception type and message, or both none. One latitude: a
    value of the wrong shape fails on whichever chunk zarr merges first, and
    with a compressor chunks are encoded concurrently, so the plain API
    itself names the shapes of one chunk or another from run to run."""
    if got != expected and compressor != "raw" and got and expected:
        assert got[0] is expected[0] and _BROADCAST.fullmatch(got[1]), (got, expected)
        assert _BROADCAST.fullmatch(expected[1]), (got, expected)
        return
    assert got == expected


ERRORS: dict[str, tuple[Any, Any]] = {
    "row past the end": ((10,), 1),
    "row before the start": ((-11, 0), 1),
    "column past the end": ((slice(None), 7), 1),
    "too many indices": ((0, 0, 0), 1),
    "two ellipses": ((Ellipsis, Ellipsis), 1),
    "negative step": (slice(None, None, -1), 1),
    "a float index": ((1.5,), 1),
    "a new axis": ((None,), 1),
    "rows of the wrong length": (slice(0, 3), np.ones((2, 7), dtype="i4")),
    "a row of the wrong length": ((0,), np.ones(3, dtype="i4")),
    "a value with more dimensions": ((0, slice(0, 3)), np.ones((2, 3), dtype="i4")),
    "an empty value for a row": ((0,), np.ones(0, dtype="i4")),
    "rows broadcast from one": (slice(None), np.ones((1, 7), dtype="i4")),
    "columns broadcast from one": (slice(None), np.ones((10, 1), dtype="i4")),
    "leading dimensions dropped": (slice(None), np.arange(7, dtype="i4")),
    "a string for an integer": ((0,), "abc"),
    "strings for integers": ((0, slice(0, 2)), np.array(["1", "x"])),
    "an integer too large": ((0,), 2**40),
    "a complex number": ((0,), 1 + 2j),
    "None": ((0,), None),
    "a ragged list": ((slice(0, 2), slice(0, 2)), [[1, 2], [3]]),
    "a dict": ((0,), {"a": 1}),
}


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("name", list(ERRORS))
def test_a_bad_write_raises_exactly_what_the_plain_api_raises(
    name: str, compressor: str, tmp_path: Path
) -> None:
    selection, value = ERRORS[name]
    written, plain = _twins("memory", tmp_path, compressor)
    writer = ShardWriter(written)
    for arr in (writer, plain):  # some shards exist, some do not
        arr[0:8, 0:6] = 5
        arr[1, 1] = 6
    expected = _outcome(lambda: plain.__setitem__(selection, value))
    assert expected is not None, "the plain API accepted it: not an error case"
    _assert_same_outcome(
        _outcome(lambda: writer.__setitem__(selection, value)), expected, compressor
    )
    _assert_same(written, plain)  # what either left behind is alike
    _no_locks_left(written)


def test_the_writer_takes_basic_selections_only_as_set_basic_selection_does(
    tmp_path: Path,
) -> None:
    # The plain API's ``arr[...] =`` also takes orthogonal and vectorized
    # selections; the writer refuses them with set_basic_selection's error.
    written, plain = _twins("memory", tmp_path)
    writer = ShardWriter(written)
    for selection in [([0, 1],), (slice(0, 2), [1, 2]), (np.array([True] * 10),)]:
        expected = _outcome(lambda s=selection: plain.set_basic_selection(s, 1))
        assert expected is not None and expected[0] is IndexError
        assert _outcome(lambda s=selection: writer.__setitem__(s, 1)) == expected
    _assert_same(written, plain)


@pytest.mark.parametrize(
    "coords", [(3, 0), (0, 3), (-1, 0), (0,), (0, 0, 0), (1.0, 0), ("0", 0), ()]
)
def test_write_chunk_outside_the_grid_raises_an_index_error_naming_coords_and_grid(
    coords: Any, tmp_path: Path
) -> None:
    written, _ = _twins("memory", tmp_path)
    with pytest.raises(IndexError) as info:
        ShardWriter(written).write_chunk(coords, 1)
    message = str(info.value)
    assert repr(tuple(coords)) in message and repr(GRID) in message
    assert "group/array" in message
    assert _keys(written) == []


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("shard", ["missing", "dense"])
@pytest.mark.parametrize(
    "coords, value",
    [
        ((0, 0), np.ones((4, 2), dtype="i4")),
        ((0, 0), np.ones((1, 3), dtype="i4")),
        ((0, 0), np.ones((2, 4, 3), dtype="i4")),
        ((0, 0), np.ones(3, dtype="i4")),
        # larger than the region: zarr takes the leading part, without a word
        ((0, 0), np.arange(15, dtype="i4").reshape(5, 3)),
        ((2, 2), np.arange(12, dtype="i4").reshape(4, 3)),  # a full chunk for an edge chunk
        ((0, 0), "abc"),
        ((0, 0), np.full((4, 3), "x")),
        ((0, 0), 2**40),
        ((0, 0), None),
        ((0, 0), 1 + 2j),
        ((1, 1), [[1, 2, 3], [4, 5]]),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else str(v),
)
def test_write_chunk_with_an_odd_value_does_what_the_plain_api_does_with_its_region(
    coords: tuple[int, ...], value: Any, shard: str, compressor: str, tmp_path: Path
) -> None:
    # Raises the same error, or accepts it and writes the same values.
    written, plain = _twins("memory", tmp_path, compressor)
    writer = ShardWriter(written)
    if shard == "dense":  # the fast path applies to these shards (uncompressed)
        _make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
        for arr in (writer, plain):
            arr[8:10, 0:7] = 1
            arr[8, 6] = 2
    region = _region(coords, SHAPE, CHUNKS)
    expected = _outcome(lambda: plain.__setitem__(region, value))
    _assert_same_outcome(_outcome(lambda: writer.write_chunk(coords, value)), expected, compressor)
    _assert_same(written, plain)


def test_a_writer_needs_a_sharded_v3_zarr_array_on_a_range_locked_store() -> None:
    bare = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    unsharded = new_array(RangeLockedStore(MemoryStore()), shape=SHAPE, chunks=CHUNKS)
    v2 = new_array(RangeLockedStore(MemoryStore()), shape=SHAPE, chunks=CHUNKS, zarr_format=2)
    cases = {
        "RangeLockedStore": bare,
        "sharded": unsharded,
        "sharded Zarr v3": v2,
        "zarr.Array": bare.async_array,
        "zarr.Array, got ndarray": np.zeros(SHAPE),
    }
    for needle, thing in cases.items():
        with pytest.raises(TypeError, match=needle):
            ShardWriter(thing)


# ---------------------------------------------------------------- event loops


def test_a_writer_called_inside_a_running_event_loop_raises_runtime_error() -> None:
    # A writer blocks its thread; inside a coroutine it would block the event
    # loop (and could wait on a lock a task of that loop holds). It refuses,
    # before it changes anything, whichever path the write would take, and
    # leaves no coroutine behind un-awaited. Use AsyncArray there.
    written = _create(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)
    writer[0:8, 0:6] = 5
    writer[1, 1] = 6  # shard (0, 0) is dense and validated: write_chunk's fast path
    before = written[...]

    async def inside() -> list[str]:
        errors = []
        for attempt in [
            lambda: writer.__setitem__((0, 0), 1),
            lambda: writer.write_chunk((0, 0), 1),  # fast path
            lambda: writer.write_chunk((2, 2), 1),  # general path
        ]:
            with pytest.raises(RuntimeError) as info:
                attempt()
            errors.append(str(info.value))
        return errors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = asyncio.run(inside())
        gc.collect()
    assert all("AsyncArray" in e and "event loop" in e for e in errors), errors
    assert [w for w in caught if "never awaited" in str(w.message)] == []
    np.testing.assert_array_equal(written[...], before)
    _no_locks_left(written)


def test_a_writer_works_in_threads_started_after_asyncio_run_and_in_asyncio_to_thread() -> None:
    written = _create(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")

    async def use_to_thread() -> None:
        await asyncio.to_thread(writer.__setitem__, (slice(8, 10), slice(None)), 4)
        await asyncio.to_thread(writer.write_chunk, (2, 2), 5)

    asyncio.run(use_to_thread())  # a worker thread of a running loop has none running
    model[8:10, :] = 4
    model[8:10, 6:7] = 5
    writer[0:8, 0:6] = 1  # the main thread, after asyncio.run, has its own loop again
    model[0:8, 0:6] = 1
    asyncio.run(asyncio.sleep(0))

    def chunk(coords: tuple[int, ...]) -> Callable[[], None]:
        return lambda: writer.write_chunk(coords, _chunk_value(coords, 7))

    run_threads(*(chunk(c) for c in ALL_CHUNKS if c != (2, 2)))
    for coords in ALL_CHUNKS:
        if coords != (2, 2):
            model[_region(coords, SHAPE, CHUNKS)] = _chunk_value(coords, 7)
    np.testing.assert_array_equal(written[...], model)
    _no_locks_left(written)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_threads_that_used_a_writer_close_their_event_loops_when_they_end() -> None:
    # Each thread runs its writes on an event loop of its own. It must be
    # closed when the thread ends, not left to the garbage collector: a loop
    # holds three descriptors (a selector, a self-pipe of two sockets) and
    # warns "unclosed event loop" when collected. A pool that starts threads
    # anew would otherwise run out of descriptors between collections.
    written = _create(MemoryStore(), shape=SHAPE, chunks=CHUNKS, shards=SHARDS)
    writer = ShardWriter(written)
    writer[0:8, 0:6] = 5  # this thread's loop, made before counting
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
        gc.disable()
        try:
            before = _open_fds()
            for i in range(10):
                t = threading.Thread(target=writer.__setitem__, args=((i, 0), i + 1))
                t.start()
                t.join()
            after = _open_fds()
        finally:
            gc.enable()
        gc.collect()
    assert after - before < 3, (before, after)
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    assert written[0:10, 0].tolist() == list(range(1, 11))


# ------------------------------------------------- what the store's wrapper says


@pytest.mark.parametrize("shard", ["dense", "missing"])
@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_through_a_read_only_wrapper_raises_as_the_plain_api_and_writes_nothing(
    kind: str, shard: str, tmp_path: Path
) -> None:
    # The fast path writes through the wrapper's backend: it must honour the
    # wrapper's read-only flag as the wrapper's own set_range does, even
    # where a writable wrapper of the same store validated the shard's index.
    written, _ = _twins(kind, tmp_path)
    writer = ShardWriter(written)
    if shard == "dense":
        _make_dense(writer, written, np.zeros(SHAPE, dtype="i4"))
    before = written[...]
    store = written.store
    assert isinstance(store, RangeLockedStore)
    with zarr.config.set(OURS):
        read_only = zarr.open_array(store.with_read_only(True), path="group/array", mode="r")
    expected = _outcome(lambda: read_only.__setitem__(_region((0, 0), SHAPE, CHUNKS), 9))
    assert expected is not None and "read-only" in expected[1]
    for attempt in [
        lambda: ShardWriter(read_only).write_chunk((0, 0), 9),
        lambda: ShardWriter(read_only).write_chunk((0, 0), _chunk_value((0, 0), 1)),
        lambda: ShardWriter(read_only).__setitem__((0, 0), 9),
    ]:
        assert _outcome(attempt) == expected
    np.testing.assert_array_equal(written[...], before)


@pytest.mark.timeout(30)
def test_write_chunk_on_a_confined_store_locks_the_canonical_key_of_an_aliased_shard(
    tmp_path: Path,
) -> None:
    # With confine=True two keys reaching one file through a link lock as one
    # (its canonical key). The array is reached through a link "alias" to
    # its directory "real"; a block holding the shard through the other
    # spelling must hold the writer off, whichever path the write takes.
    root = tmp_path / "root"
    inner = LocalStore(root)
    new_array(RangeLockedStore(inner), shape=SHAPE, chunks=CHUNKS, shards=SHARDS, name="real")
    (root / "alias").symlink_to("real", target_is_directory=True)
    store = RangeLockedStore(LocalStore(root), confine=True)
    with zarr.config.set(OURS):
        arr = zarr.open_array(store, path="alias")
    writer = ShardWriter(arr)
    _make_dense(writer, arr, np.zeros(SHAPE, dtype="i4"))
    writer.write_chunk((0, 1), 3)  # fast path, if it applies, from here on
    done = threading.Event()

    def write() -> None:
        writer.write_chunk((0, 0), 7)
        done.set()

    with store.locked_sync("real/c/0/0", [(0, None)]):
        t = threading.Thread(target=write)
        t.start()
        mgr = store.lock_manager
        wait_until(lambda: done.is_set() or mgr.stats().waiters > 0, "the write ends or waits")
        assert not done.is_set(), "the writer wrote the shard while another spelling held it"
    t.join(10)
    assert done.is_set()
    assert arr[0, 0] == 7 and arr[0, 3] == 3
