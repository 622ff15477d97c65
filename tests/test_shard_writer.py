"""``ShardWriter`` against the plain API and a numpy model (issue 12).

Every test builds twin arrays with the same metadata, each on a
``RangeLockedStore`` of its own: one written through a ``ShardWriter``, the
other through the plain API (``arr[sel] = value`` with ``ShardWritePipeline``).
After every write both must hold what a numpy model of the writes holds,
their stores must hold the same keys (so a shard that becomes all fill is
deleted, and one of fill values never made, exactly when the plain API does
it). The threaded tests are in ``test_shard_writer_threads.py``; errors,
event loops and the wrapper's flags in ``test_shard_writer_errors.py``.
"""

from __future__ import annotations

import copy
import itertools
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, note
from hypothesis import strategies as st
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from tests._shard_helpers import OURS, no_locks_left
from tests._writer_helpers import (
    ALL_CHUNKS,
    CHUNKS,
    COMPRESSORS,
    GRID,
    SHAPE,
    SHARDS,
    STORES,
    RandomArray,
    array_keys,
    assert_same,
    check_random_steps,
    chunk_grid,
    chunk_region,
    chunk_value,
    dense_twins,
    draw_array,
    draw_value,
    make_all_dense,
    make_dense,
    random_twin_test,
    stock_read,
    twins,
    write_chunks_by,
)
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards._known import _VALID

pytestmark = pytest.mark.timeout(120)

EXAMPLES = 25


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
    array: RandomArray
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


def _whole_chunks(draw: st.DrawFn, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
    """A selection of whole inner chunks (a box of the grid): slices on chunk
    boundaries, ending on one or at the edge (or open)."""
    sel = []
    for n, c in zip(shape, chunks, strict=True):
        g = -(-n // c)
        lo = draw(st.integers(0, g - 1), label="first chunk")
        hi = draw(st.integers(lo + 1, g), label="end chunk")
        stop = None if hi == g and draw(st.booleans(), label="open") else min(hi * c, n)
        sel.append(slice(lo * c, stop))
    return tuple(sel)


@st.composite
def _cases(draw: st.DrawFn) -> Case:
    array = draw_array(draw)
    shape, chunks, fill = array.shape, array.chunks, array.fill
    grid = chunk_grid(shape, chunks)
    writes = []
    if draw(st.booleans(), label="prefill"):  # every shard dense: the fast paths apply
        writes.append(Write("sel", Ellipsis, fill + 1))
    for _ in range(draw(st.integers(1, 8), label="writes")):
        how = draw(st.sampled_from(["write_chunk", "whole chunks", "any"]), label="how")
        if how == "write_chunk":
            coords = tuple(draw(st.integers(0, g - 1)) for g in grid)
            clipped = np.empty(shape)[chunk_region(coords, shape, chunks)].shape
            writes.append(Write("chunk", coords, draw_value(draw, clipped, fill)))
        else:
            sel = _selection(draw, shape) if how == "any" else _whole_chunks(draw, shape, chunks)
            writes.append(Write("sel", sel, draw_value(draw, np.empty(shape)[sel].shape, fill)))
    return Case(array, writes)


@random_twin_test(EXAMPLES)
@given(case=_cases())
def test_random_writes_through_a_writer_match_the_plain_api_and_a_numpy_model(
    kind: str, compressor: str, empty: bool, case: Case
) -> None:
    note(repr(case))
    check_random_steps(kind, compressor, empty, case.array, case.writes, writes_of(case.array))


def writes_of(array: RandomArray) -> Callable[[ShardWriter, Write], list[tuple[Any, Any]]]:
    """A step of ``check_random_steps`` for :class:`Write` steps into
    ``array``: the write through the writer, and what the plain API writes."""

    def write(writer: ShardWriter, w: Write) -> list[tuple[Any, Any]]:
        if w.kind == "chunk":
            writer.write_chunk(w.target, w.value)
            return [(chunk_region(w.target, array.shape, array.chunks), w.value)]
        writer[w.target] = w.value
        return [(w.target, w.value)]

    return write


# ----------------------------------------------------------------- write_chunk


def _write_chunk_everywhere(
    writer: ShardWriter,
    plain: zarr.Array[Any],
    model: np.ndarray,
    coords: tuple[int, ...],
    value: Any,
) -> None:
    """``writer.write_chunk(coords, value)``, then the chunk's region set to
    the same value through the plain API and in the model: a copy taken
    before the writer's write, so a writer that changed the caller's value
    would show."""
    before = copy.copy(value)
    writer.write_chunk(coords, value)
    region = chunk_region(coords, SHAPE, CHUNKS)
    plain[region] = before
    model[region] = before


@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_writes_what_the_plain_api_writes_into_its_region(
    kind: str, compressor: str, empty: bool, tmp_path: Path
) -> None:
    # Every chunk (full ones, edge chunks of clipped shape) with arrays, then
    # with broadcast scalars, then with the fill value chunk by chunk: with
    # write_empty_chunks False every shard is deleted as it becomes all fill.
    written, plain = twins(kind, tmp_path, compressor, empty)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    values: list[Callable[[tuple[int, ...], int], Any]] = [
        chunk_value,
        lambda coords, salt: np.int32(salt + 1),
        lambda coords, salt: 0,
    ]
    for make in values:
        for salt, coords in enumerate(ALL_CHUNKS):
            _write_chunk_everywhere(writer, plain, model, coords, make(coords, salt))
            assert_same(written, plain, model)
    assert array_keys(written) == ([] if not empty else array_keys(plain))
    no_locks_left(written)


@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_into_a_dense_uncompressed_shard_takes_the_fast_path(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    written, plain, writer, model = dense_twins(kind, tmp_path)
    setitem_calls.clear()
    for salt, coords in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (0, 0)]):
        value = chunk_value(coords, salt) if salt % 2 else np.int32(salt + 1)
        _write_chunk_everywhere(writer, plain, model, coords, value)
        assert_same(written, plain, model)
    assert setitem_calls == []  # all five in place, no event loop
    # Byte for byte the shard the plain API wrote.
    assert _raw(written, "c/0/0") == _raw(plain, "c/0/0")
    no_locks_left(written)


@pytest.mark.parametrize("how", ["write_chunk", "write_chunks", "writer[region]"])
@pytest.mark.parametrize("kind", STORES)
def test_edge_chunks_of_dense_shards_are_merged_in_place_as_zarr_merges_them(
    kind: str, how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 8 x 6 chunks of 3 x 4, the last row and column clipped by the edge, in
    # 2 x 2 shards that hold all their chunks: every shard dense. Edge
    # chunks are merged into the stored chunk under its lock, never through
    # the pipeline, and leave the plain API's bytes, also beyond the edge:
    # after a shrink that cuts chunks, what they held there shows again
    # once the array grows back (see shards/_writer, Edge chunks).
    shape, chunks, shards = (23, 22), (3, 4), (12, 12)
    written, plain = twins(kind, tmp_path, shape=shape, chunks=chunks, shards=shards)
    writer = ShardWriter(written)
    model = np.zeros(shape, dtype="i4")
    make_all_dense([writer, plain], model, shards, value=np.arange(23 * 22).reshape(23, 22) + 1)
    runs: list[Any] = []  # the pipeline's runs (ShardWriter._run)
    real_run = ShardWriter._run
    monkeypatch.setattr(ShardWriter, "_run", lambda self, *a: (runs.append(a), real_run(self, *a)))
    for step, now in enumerate([shape, (22, 21), shape]):
        if now != written.shape:
            written.resize(now)
            plain.resize(now)
        grid = chunk_grid(now, chunks)
        edges = [(grid[0] - 1, j) for j in range(grid[1])] + [
            (i, grid[1] - 1) for i in range(grid[0] - 1)
        ]
        values = {c: chunk_value(c, step, now, chunks) for c in edges}
        runs.clear()
        write_chunks_by(writer, values, how, now, chunks)
        assert runs == []  # never the pipeline
        for c, value in values.items():
            plain[chunk_region(c, now, chunks)] = value
        assert_same(written, plain)
        for key in ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]:
            assert _raw(written, key) == _raw(plain, key), (step, key)
    no_locks_left(written)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", STORES)
def test_an_edge_chunk_of_a_dense_shard_this_process_has_not_met_is_merged_in_place(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    # The process has not met the shard (another process laid it out
    # densely; here: the validated indexes forgotten). An edge chunk's first
    # try finds no validated index; the writer reads and checks the shard's,
    # then merges the chunk in place, not through the general path.
    written, plain = twins(kind, tmp_path)
    model = np.zeros(SHAPE, dtype="i4")
    make_all_dense([written, plain], model, SHARDS)
    writer = ShardWriter(written)
    _VALID.clear()
    edge = (GRID[0] - 1, 0)  # (clipped by the edge: 2 of its 4 rows are in the array)
    value = chunk_value(edge, 3)
    setitem_calls.clear()
    writer.write_chunk(edge, value)
    assert setitem_calls == []  # in place
    plain[chunk_region(edge, SHAPE, CHUNKS)] = value
    assert _raw(written, "c/1/0") == _raw(plain, "c/1/0")
    assert_same(written, plain)
    no_locks_left(written)


@pytest.mark.timeout(60)
def test_a_writer_pickles_as_its_array(tmp_path: Path, setitem_calls: list[Any]) -> None:
    # A used writer (an event loop of this thread's, shards it knows) pickles
    # as a new writer of its unpickled array: same store root, same
    # pipeline; its fast path works (it looks the shard up itself).
    written, plain, writer, model = dense_twins("local", tmp_path)
    _write_chunk_everywhere(writer, plain, model, (0, 0), chunk_value((0, 0), 1))
    again = pickle.loads(pickle.dumps(writer))
    assert isinstance(again, ShardWriter) and again is not writer
    assert again.array is not written
    assert again.array.store_path == written.store_path  # the same root and path
    setitem_calls.clear()
    again.write_chunk((1, 1), chunk_value((1, 1), 2))
    assert setitem_calls == []  # in place: no event loop
    plain[chunk_region((1, 1), SHAPE, CHUNKS)] = model[chunk_region((1, 1), SHAPE, CHUNKS)] = (
        chunk_value((1, 1), 2)
    )
    again[9, 6] = 8
    plain[9, 6] = model[9, 6] = 8
    assert_same(written, plain, model)
    assert copy.copy(writer).array is written  # a copy: another writer, the same array
    no_locks_left(written)


@pytest.mark.parametrize("edge", [False, True], ids=["whole", "with-edge"])
@pytest.mark.parametrize("known", [True, False], ids=["known", "met-first"])
@pytest.mark.parametrize("kind", STORES)
def test_a_selection_of_whole_chunks_of_dense_shards_is_written_in_place_by_shard(
    kind: str, known: bool, edge: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``writer[sel]`` over several whole chunks of dense shards: no pipeline
    run, one exclusive lock request per shard, the plain API's bytes; also
    when this process has not met the shards yet (another process laid them
    out: each is read and checked under a shared lock first). A selection
    with an edge chunk in it goes to the pipeline whole (zarr merges an
    edge chunk into the one stored before; see ``_writer``)."""
    shape = SHAPE if edge else (16, 12)  # (16, 12): 4 x 4 chunks, no edge
    written, plain = twins(kind, tmp_path, shape=shape)
    writer = ShardWriter(written)
    model = np.zeros(shape, dtype="i4")
    for arr in (writer, plain):
        arr[...] = 5  # every shard dense, and known to this process
    model[...] = 5
    if not known:
        _VALID.clear()  # as in a process that has not met them
    runs: list[Any] = []
    real_run = ShardWriter._run
    monkeypatch.setattr(ShardWriter, "_run", lambda self, *a: (runs.append(a), real_run(self, *a)))
    store = written.store
    assert isinstance(store, RangeLockedStore)
    requests: list[str] = []
    mgr = store._mgr
    for name in ("lock", "lock_ranges", "_lock_runs", "_hold_if_free"):  # (the last: one chunk)
        real = getattr(mgr, name)

        def spy(key: str, *a: Any, _real: Any = real, **k: Any) -> Any:
            if not k.get("shared"):
                requests.append(key)
            return _real(key, *a, **k)

        monkeypatch.setattr(mgr, name, spy)
    # Chunk rows 1-2, every column: two whole chunks in each of shards
    # (0, 0) and (1, 0), and in (0, 1) and (1, 1) two more, or with an edge
    # one chunk each, clipped by the edge.
    sel = (slice(4, shape[0] if edge else 12), slice(0, None))
    value = np.arange(8 * shape[1], dtype="i4").reshape(8, shape[1])[: sel[0].stop - 4] + 10
    writer[sel] = value
    plain[sel] = value
    model[sel] = value
    assert_same(written, plain, model)
    assert len(runs) == (1 if edge else 0)
    if not edge:
        assert sorted(requests) == [f"group/array/c/{i}/{j}" for i in (0, 1) for j in (0, 1)]
    assert _raw(written, "c/0/0") == _raw(plain, "c/0/0")
    no_locks_left(written)


def _raw(arr: zarr.Array[Any], key: str) -> bytes:
    path = arr.store_path.path
    buf = sync(arr.store.get(f"{path}/{key}" if path else key, default_buffer_prototype()))
    assert buf is not None
    return buf.to_bytes()


@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_falls_back_to_the_general_path_where_the_fast_path_does_not_apply(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    written, plain = twins(kind, tmp_path)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")

    def both(coords: tuple[int, ...], value: Any) -> None:
        _write_chunk_everywhere(writer, plain, model, coords, value)
        assert_same(written, plain, model)

    # A shard that does not exist yet is made by the fast path as the
    # pipeline makes it (the same bytes; here one chunk of four already
    # lays it out densely, see test_shard_writer_batches for compact ones).
    both((0, 0), chunk_value((0, 0), 1))
    assert setitem_calls == []
    assert _raw(written, "c/0/0") == _raw(plain, "c/0/0")
    make_dense(writer, plain, model)
    setitem_calls.clear()
    both((1, 0), np.int32(0))  # a chunk of fill values: zarr drops it
    assert len(setitem_calls) == 1
    both((0, 1), np.ones((1, 3), dtype="i4"))  # broadcast from another shape: zarr's rules
    assert len(setitem_calls) == 2
    both((1, 1), chunk_value((1, 1), 3))  # in place again
    assert len(setitem_calls) == 2
    # Shard (0, 0) emptied chunk by chunk through write_chunk: deleted as the
    # plain API deletes it (write_empty_chunks is False here).
    for coords in itertools.product(range(2), range(2)):
        both(coords, 0)
    assert "c/0/0" not in array_keys(written)
    both((0, 0), chunk_value((0, 0), 4))  # and made again
    assert "c/0/0" in array_keys(written)


@pytest.mark.parametrize("kind", STORES)
def test_write_chunk_into_a_compressed_shard_appends_without_the_general_path(
    kind: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    # Once this process has written a compressed shard (so it knows the
    # shard's index and its change stamp), write_chunk appends the chunk and
    # re-points the index itself, and compacts the shard itself when there
    # is no free space left (or too much dead space): never the general path
    # but for edge chunks (zarr merges those into the chunk stored before).
    written, plain, writer, model = dense_twins(kind, tmp_path, "zstd")
    setitem_calls.clear()
    for salt, coords in enumerate(ALL_CHUNKS * 3):
        _write_chunk_everywhere(writer, plain, model, coords, chunk_value(coords, salt))
        assert_same(written, plain, model)
    edges = [c for c in ALL_CHUNKS * 3 if c[0] == GRID[0] - 1 or c[1] == GRID[1] - 1]
    assert setitem_calls == [chunk_region(c, SHAPE, CHUNKS) for c in edges]
    assert len(edges) < len(ALL_CHUNKS * 3)  # (13 of 27 before the fast path compacted)


@pytest.mark.parametrize("durability", ["journal", "journal-nosync"])
def test_write_chunk_into_a_compressed_shard_of_a_journaled_store_takes_the_general_path(
    durability: str, tmp_path: Path, setitem_calls: list[Any]
) -> None:
    # Chunk and index must be one transaction there: the pipeline's.
    written, plain, writer, model = dense_twins("local", tmp_path, "zstd", durability=durability)
    setitem_calls.clear()
    for salt, coords in enumerate(ALL_CHUNKS):
        _write_chunk_everywhere(writer, plain, model, coords, chunk_value(coords, salt))
    assert len(setitem_calls) == len(ALL_CHUNKS)
    assert_same(written, plain, model)


@pytest.mark.parametrize("between", ["whole-shard write", "shard deleted", "other wrapper"])
def test_the_fast_path_sees_a_whole_shard_write_made_after_it_validated_the_index(
    between: str, tmp_path: Path
) -> None:
    # The fast path trusts a validated index only while the store's change
    # stamp of the key is unchanged: a whole-key write in between (through
    # the plain API, a delete, or another wrapper of the same root) must not
    # make it write at stale offsets.
    written, plain, writer, model = dense_twins("local", tmp_path)
    _write_chunk_everywhere(writer, plain, model, (0, 0), chunk_value((0, 0), 1))  # validated, fast
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
    assert_same(written, plain, model)
    for salt, coords in enumerate([(1, 1), (0, 1)]):
        _write_chunk_everywhere(writer, plain, model, coords, chunk_value(coords, salt + 2))
        assert_same(written, plain, model)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "writer"), "group/array"), model)


def _bits(values: np.ndarray) -> np.ndarray:
    """``values`` as their bytes (NaN payloads and the sign of a zero
    compared too)."""
    return np.ascontiguousarray(values).view(np.uint8)


RECORD = np.dtype([("a", "i2"), ("b", "f4")])


def _nan(bits: int) -> np.float32:
    """The float32 whose bits are ``bits``."""
    return np.array(bits, dtype="u4").view("f4")[()]


@pytest.mark.parametrize(
    ("dtype", "fill", "dropped", "kept"),
    [
        # A NaN of another bit pattern than the fill's NaN (zarr: any NaN
        # equals a NaN fill).
        ("f4", float("nan"), _nan(0x7FC00001), 2.5),
        # -0.0 in either part of a complex equals a zero fill by value.
        ("c8", 0, complex(-0.0, 0.0), 1j),
        ("c16", 0, complex(0.0, -0.0), 3.0),
        # A complex NaN in either part equals a NaN fill: zarr drops the
        # chunk and reads the fill back, not the chunk's other part.
        ("c8", complex(np.nan, 0.0), complex(1.0, np.nan), 2.0),
        ("c16", complex(np.nan, np.nan), complex(np.nan, 1.0), -1.0),
        # A record's fields are compared by value: (0, -0.0) equals (0, 0.0).
        (RECORD, None, (0, -0.0), (1, 2.0)),
    ],
)
@pytest.mark.parametrize("call", ["write_chunk", "write_chunks"])
def test_chunks_zarr_counts_as_fill_with_other_bytes_than_the_fill_are_dropped_as_zarr_drops_them(
    tmp_path: Path, dtype: Any, fill: Any, dropped: Any, kept: Any, call: str
) -> None:
    # The in-place fast path first compares a chunk's bytes with the
    # encoded fill chunk; for a complex dtype, a NaN fill or a record with
    # a float field, equal values can have other bytes, so a chunk whose
    # first and last elements equal the fill by zarr's rule is then checked
    # as zarr checks it (chunk_is_empty).
    # Stock zarr is the reference: the same keys (a shard whose chunks are
    # all dropped is deleted) and the same bits read back. First chunks
    # of such values around data (kept), then chunks of nothing else
    # (dropped).
    options = {} if fill is None else {"fill_value": fill}  # a record: zarr's zero fill
    written, plain = twins("memory", tmp_path, dtype=dtype, **options)
    writer = ShardWriter(written)
    for arr in (writer, plain):  # shard (0, 0) dense and known
        arr[0:8, 0:6] = 5
        arr[1, 1] = 6
    shard_chunks = [(0, 0), (0, 1), (1, 0), (1, 1)]

    def write_all(values: np.ndarray) -> None:
        if call == "write_chunk":
            for c in shard_chunks:
                writer.write_chunk(c, values)
        else:
            writer.write_chunks({c: values for c in shard_chunks})
        for c in shard_chunks:
            plain[chunk_region(c, SHAPE, CHUNKS)] = values

    mixed = np.full(CHUNKS, np.array(dropped, dtype=dtype))
    mixed[1, 1] = kept  # (not first or last: zarr's rule looks at every element)
    write_all(mixed)
    assert array_keys(written) == array_keys(plain)
    np.testing.assert_array_equal(_bits(written[...]), _bits(plain[...]))
    write_all(np.full(CHUNKS, np.array(dropped, dtype=dtype)))
    assert "c/0/0" not in array_keys(plain)  # every chunk dropped: the shard deleted
    assert array_keys(written) == array_keys(plain)
    np.testing.assert_array_equal(_bits(written[...]), _bits(plain[...]))
