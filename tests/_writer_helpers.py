"""Setup shared by the ``ShardWriter`` tests: twin arrays, one written
through a writer and one through the plain API, and their comparison."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array, no_locks_left
from zarr_rangelock import RangeLockedStore, ShardWriter

COMPRESSORS: dict[str, Any] = {"raw": None, "zstd": [ZstdCodec(level=1)]}
STORES = ("memory", "local")

Inner = MemoryStore | LocalStore


@contextlib.contextmanager
def inner_stores(kind: str) -> Iterator[tuple[Inner, Inner]]:
    """Two empty stores of ``kind`` (LocalStores under a fresh temporary
    directory, so hypothesis examples never share one)."""
    if kind.startswith("memory"):
        yield MemoryStore(), MemoryStore()
        return
    with tempfile.TemporaryDirectory(prefix="wtests-") as tmp:
        yield LocalStore(Path(tmp) / "writer"), LocalStore(Path(tmp) / "plain")


def locked_array(inner: Inner, path: str = "", **options: Any) -> zarr.Array[Any]:
    """A sharded array at ``path`` of ``inner``, through the wrapper and our
    pipeline (``options``: ``new_array``'s, plus ``empty`` for
    ``write_empty_chunks``, and the wrapper's ``durability``, ``confine``,
    ``map_writes`` and ``dense_shards``)."""
    empty = options.pop("empty", False)
    compressor = options.pop("compressor", "raw")
    durability = options.pop("durability", "none")
    confine = options.pop("confine", False)
    map_writes = options.pop("map_writes", False)
    dense_shards = options.pop("dense_shards", False)
    if path:
        options["name"] = path
    return new_array(
        RangeLockedStore(
            inner,
            durability=durability,
            confine=confine,
            map_writes=map_writes,
            dense_shards=dense_shards,
        ),
        pipeline=OURS,
        compressors=COMPRESSORS[compressor],
        config={"write_empty_chunks": empty},
        **options,
    )


def array_keys(arr: zarr.Array[Any]) -> list[str]:
    """The array's keys, relative to its own path (metadata left out)."""
    path = arr.store_path.path
    prefix = f"{path}/" if path else ""

    async def collect() -> list[str]:
        return [k async for k in arr.store.list_prefix(prefix)]

    return sorted(k[len(prefix) :] for k in sync(collect()) if not k.endswith("zarr.json"))


def stock_read(inner: Inner, path: str = "") -> np.ndarray:
    """Read with stock zarr (default pipeline, the bare store)."""
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(inner, path=path, mode="r")[...])


def assert_same(
    written: zarr.Array[Any], plain: zarr.Array[Any], model: np.ndarray | None = None
) -> None:
    """The writer's array and the plain API's hold the same values (the
    model's, if given) and the same keys."""
    got = written[...]
    np.testing.assert_array_equal(got, plain[...])
    if got.dtype.kind in "fc":  # NaN payloads and signed zeros too
        width = got.dtype.itemsize // (2 if got.dtype.kind == "c" else 1)
        np.testing.assert_array_equal(got.view(f"u{width}"), plain[...].view(f"u{width}"))
    if model is not None:
        np.testing.assert_array_equal(got, model)
    assert array_keys(written) == array_keys(plain)


def chunk_region(coords: tuple[int, ...], shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
    """The region of the inner chunk at ``coords``, clipped at the edge."""
    return tuple(
        slice(i * n, min((i + 1) * n, s)) for i, n, s in zip(coords, chunks, shape, strict=True)
    )


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """The grid of inner chunks."""
    return tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))


SHAPE, CHUNKS, SHARDS = (10, 7), (4, 3), (8, 6)  # a 3 x 3 grid of chunks, edges on both axes
GRID = chunk_grid(SHAPE, CHUNKS)
ALL_CHUNKS = list(itertools.product(*(range(g) for g in GRID)))


def twins(
    kind: str, tmp_path: Path, compressor: str = "raw", empty: bool = False, **options: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    """The writer's array (at a path inside its store) and the plain API's."""
    options = {"shape": SHAPE, "chunks": CHUNKS, "shards": SHARDS, **options}
    if kind == "memory":
        inner, twin = MemoryStore(), MemoryStore()
    else:
        inner, twin = LocalStore(tmp_path / "writer"), LocalStore(tmp_path / "plain")
    return (
        locked_array(inner, "group/array", compressor=compressor, empty=empty, **options),
        locked_array(twin, compressor=compressor, empty=empty, **options),
    )


def chunk_value(
    coords: tuple[int, ...],
    salt: int,
    shape: tuple[int, ...] = SHAPE,
    chunks: tuple[int, ...] = CHUNKS,
) -> np.ndarray:
    """Distinct numbers for the chunk at ``coords`` (clipped shape), none fill."""
    clipped = np.empty(shape)[chunk_region(coords, shape, chunks)].shape
    return np.arange(int(np.prod(clipped)), dtype="i4").reshape(clipped) + 100 * salt + 1


def make_dense(writer: ShardWriter, plain: zarr.Array[Any], model: np.ndarray) -> None:
    """Shard (0, 0) dense (every chunk written), then one partial chunk write
    through the pipeline, which validates its index: what the fast path needs."""
    for arr in (writer, plain):
        arr[0:8, 0:6] = 5
        arr[1, 1] = 6
    model[0:8, 0:6] = 5
    model[1, 1] = 6


def dense_twins(
    kind: str, tmp_path: Path, compressor: str = "raw", **options: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any], ShardWriter, np.ndarray]:
    """``twins``, a writer of the first, and the numpy model, after
    ``make_dense``: shard (0, 0) dense and its index validated."""
    written, plain = twins(kind, tmp_path, compressor, **options)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    make_dense(writer, plain, model)
    return written, plain, writer, model


def make_all_dense(
    arrays: Iterable[ShardWriter | zarr.Array[Any]],
    model: np.ndarray,
    shards: tuple[int, ...],
    value: Any = 5,
) -> None:
    """Every shard of each of ``arrays`` dense (the whole array written with
    ``value``, no fill in it), then one element of each shard written (6)
    through the pipeline, which validates the shard's index (what the
    in-place fast path needs) or, for compressed chunks, leaves this process
    the index it wrote (what the appending fast path needs; a whole shard
    written is laid out with free space for later chunks, see ``_jobs``)."""
    corners = [
        tuple(s * n for s, n in zip(shard, shards, strict=True))
        for shard in itertools.product(*(range(g) for g in chunk_grid(model.shape, shards)))
    ]
    for arr in arrays:
        arr[...] = value
        for corner in corners:
            arr[corner] = 6
    model[...] = value
    for corner in corners:
        model[corner] = 6


def raw_values(arr: zarr.Array[Any]) -> dict[str, bytes]:
    """The bytes of every key of the array (metadata left out), by key."""
    path = arr.store_path.path
    prefix = f"{path}/" if path else ""
    values = {}
    for key in array_keys(arr):
        buf = sync(arr.store.get(prefix + key, default_buffer_prototype()))
        assert buf is not None
        values[key] = buf.to_bytes()
    return values


def draw_geometry(
    draw: st.DrawFn, max_chunks: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A random sharded array's ``(shape, chunks, shards)``: 1 to 3 dimensions,
    up to two shards and a bit along each (edge shards and edge chunks), at
    most ``max_chunks`` inner chunks."""
    ndim = draw(st.integers(1, 3), label="ndim")
    chunks = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    per_shard = tuple(draw(st.integers(1, 3 if ndim < 3 else 2)) for _ in range(ndim))
    shards = tuple(c * p for c, p in zip(chunks, per_shard, strict=True))
    shape = tuple(draw(st.integers(1, 2 * s + 1)) for s in shards)
    assume(int(np.prod(chunk_grid(shape, chunks))) <= max_chunks)
    return shape, chunks, shards


NAN = float("nan")
#: Values of a float or complex array that zarr counts as its fill or not
#: by value where the bytes differ: another NaN payload, signed zeros,
#: complex NaNs in one part (see ``_fill.ends_may_be_fill``).
FLOAT_SPECIAL = [-0.0, 0.0, NAN, np.array(0x7FF8000000000001, dtype="u8").view("f8")[()]]
COMPLEX_SPECIAL = [complex(-0.0, 0.0), complex(0.0, -0.0), complex(NAN, 0.0), complex(1.0, NAN)]


def draw_value(draw: st.DrawFn, shape: tuple[int, ...], fill: Any) -> Any:
    """A value for a selection of ``shape``: a scalar (often the fill value;
    a Python or a 0-d numpy one), or an array of that shape (sometimes all
    fill). Zarr broadcasts scalars only (see the error tests). For a float
    or a complex fill (an array of that kind), the special values above too,
    as scalars and in arrays."""
    specials = (
        COMPLEX_SPECIAL + FLOAT_SPECIAL
        if isinstance(fill, complex)
        else FLOAT_SPECIAL
        if isinstance(fill, float)
        else []
    )
    hows = ["fill", "scalar", "0-d", "array", "array of fill"]
    how = draw(st.sampled_from(hows + (["special", "array of special"] if specials else [])))
    if how == "fill":
        return fill
    if how == "scalar":
        return draw(st.integers(0, 99), label="scalar")
    if how == "0-d":
        return np.array(draw(st.integers(0, 99), label="scalar"), dtype="i8")
    if how == "array of fill":
        return np.full(shape, fill)
    if how == "special":
        return draw(st.sampled_from(specials), label="special")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 100, size=shape)
    if how == "array of special":
        out = np.array(values, dtype=type(fill))
        out[...] = draw(st.sampled_from(specials), label="special")
        out[values < 20] = values[values < 20]  # data among them now and then
        return out
    values[values < 30] = fill if not specials else 0  # chunks of fill values now and then
    if specials:
        out = np.array(values, dtype=type(fill))
        out[values == 0] = fill
        return out
    return values


# ------------------------------------ random writes against the plain API


def random_twin_test[F: Callable[..., None]](examples: int) -> Callable[[F], F]:
    """The parameters and settings of a random test of twin arrays: both
    stores (``kind``), both compressors, ``write_empty_chunks`` off and on
    (``empty``), ``examples`` hypothesis examples each. Put it above the
    test's ``@given``."""

    def decorate(test: F) -> F:
        test = settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(test)
        test = pytest.mark.parametrize("kind", STORES)(test)
        test = pytest.mark.parametrize("compressor", list(COMPRESSORS))(test)
        return pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])(
            test
        )

    return decorate


@dataclass(frozen=True)
class RandomArray:
    """A random array's metadata, and the path of the writer's twin in its store."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...]
    dtype: str
    fill: Any
    path: str


#: Fill values by dtype kind: for floats and complex numbers also NaNs and
#: a negative zero (Python scalars of the kind: ``draw_value`` tells by them).
FILLS: dict[str, list[Any]] = {
    "i": [0, 7],
    "u": [0, 7],
    "f": [0.0, 7.0, NAN, -0.0],
    "c": [0j, 7 + 0j, complex(NAN, 0.0), complex(NAN, NAN)],
}

RANDOM_MAX_CHUNKS = 36  # inner chunks per random array: keeps an example cheap


def draw_array(draw: st.DrawFn, max_chunks: int = RANDOM_MAX_CHUNKS) -> RandomArray:
    """A random sharded array (``draw_geometry``'s), its dtype, fill value
    and path."""
    shape, chunks, shards = draw_geometry(draw, max_chunks)
    dtype = draw(st.sampled_from(["i4", "u2", "f8", "f4", "c8"]), label="dtype")
    return RandomArray(
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        fill=draw(st.sampled_from(FILLS[np.dtype(dtype).kind]), label="fill"),
        path=draw(st.sampled_from(["", "group/array"]), label="path"),
    )


def array_options(array: RandomArray, compressor: str, empty: bool) -> dict[str, Any]:
    """``locked_array``'s options for ``array`` with ``compressor`` and
    ``write_empty_chunks`` (``empty``)."""
    return {
        "shape": array.shape,
        "chunks": array.chunks,
        "shards": array.shards,
        "dtype": array.dtype,
        "fill_value": array.fill,
        "compressor": compressor,
        "empty": empty,
    }


def write_chunks_by(
    writer: ShardWriter,
    values: dict[tuple[int, ...], Any],
    how: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
) -> None:
    """Write whole inner chunks ``{coords: value}`` through ``writer`` one
    way: ``"write_chunk"`` each, one ``"write_chunks"``, or each by its
    region (``writer[region] = value``, any other ``how``)."""
    if how == "write_chunk":
        for c, value in values.items():
            writer.write_chunk(c, value)
    elif how == "write_chunks":
        writer.write_chunks(values)
    else:
        for c, value in values.items():
            writer[chunk_region(c, shape, chunks)] = value


def check_random_steps[S](
    kind: str,
    compressor: str,
    empty: bool,
    array: RandomArray,
    steps: Iterable[S],
    write: Callable[[ShardWriter, S], list[tuple[Any, Any]]],
) -> None:
    """Twin arrays of ``array``'s metadata on fresh stores of ``kind``
    (``"local-mapped"``: LocalStores, the writer's wrapper with
    ``map_writes=True``, the plain API's without; ``"local-dense"`` and
    ``"memory-dense"``: the writer's wrapper with ``dense_shards=True``;
    ``"local-journal"``: with ``durability="journal-nosync"``),
    and a numpy model. Each
    step is written by ``write(writer, step)`` through a ``ShardWriter`` of
    the first; it returns what the plain API writes for
    the step, ``(region, value)`` pairs in order, which the second twin and
    the model then write. After every step both twins hold the model's
    values and the same keys; at the end stock zarr reads the model from the
    writer's bare store, and no lock is left."""
    options = array_options(array, compressor, empty)
    with inner_stores(kind) as (inner, twin_inner):
        written = locked_array(
            inner,
            array.path,
            map_writes=kind == "local-mapped",
            dense_shards=kind.endswith("-dense"),
            durability="journal-nosync" if kind == "local-journal" else "none",
            **options,
        )
        plain = locked_array(twin_inner, **options)
        writer = ShardWriter(written)
        model = np.full(array.shape, array.fill, dtype=array.dtype)
        for step in steps:
            for region, value in write(writer, step):
                plain[region] = value
                model[region] = value
            assert_same(written, plain, model)  # values, and the same keys
        np.testing.assert_array_equal(stock_read(inner, array.path), model)
        no_locks_left(written)


Outcome = tuple[type[BaseException], str] | None


def outcome(fn: Callable[[], None]) -> Outcome:
    """What ``fn()`` raised (type and message), or None."""
    try:
        fn()
    except Exception as e:
        return type(e), str(e)
    return None


_BROADCAST = re.compile(r"could not broadcast input array from shape \(.*\) into shape \(.*\)")


def assert_same_outcome(got: Outcome, expected: Outcome, compressor: str) -> None:
    """The same exception type and message, or both none. One latitude: a
    value of the wrong shape fails on whichever chunk zarr merges first, and
    with a compressor chunks are encoded concurrently, so the plain API
    itself names the shapes of one chunk or another from run to run."""
    if got != expected and compressor != "raw" and got and expected:
        assert got[0] is expected[0] and _BROADCAST.fullmatch(got[1]), (got, expected)
        assert _BROADCAST.fullmatch(expected[1]), (got, expected)
        return
    assert got == expected


class ShardReadsMeet(MemoryStore):
    """A MemoryStore whose reads of a chunk (shard) key return only once
    ``expected`` of them have started: every writer of the shard has read it
    before any writes it back, the interleaving in which stock zarr's
    read-merge-write of a shard loses the others' chunks."""

    def __init__(self, expected: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # with_read_only() passes store_dict and read_only
        self.expected = expected
        self.reads = 0
        self._all_in: asyncio.Event | None = None

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if key.endswith("zarr.json") or self.expected == 0:
            return await super().get(key, prototype, byte_range)
        if self._all_in is None:
            self._all_in = asyncio.Event()
        self.reads += 1
        if self.reads >= self.expected:
            self._all_in.set()
        await asyncio.wait_for(self._all_in.wait(), 10)  # the deadline only catches a hang
        return await super().get(key, prototype, byte_range)


def refusals_inside_a_loop(attempts: Iterable[Callable[[], object]]) -> list[str]:
    """Run each of ``attempts`` inside a running event loop, each raising
    ``RuntimeError``; their messages. Asserts that no coroutine was left
    un-awaited (the writer must refuse before it makes one)."""

    async def inside() -> list[str]:
        errors = []
        for attempt in attempts:
            with pytest.raises(RuntimeError) as info:
                attempt()
            errors.append(str(info.value))
        return errors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = asyncio.run(inside())
        gc.collect()
    assert [w for w in caught if "never awaited" in str(w.message)] == []
    return errors
