"""``ShardWriter.write_chunks``: many whole inner chunks, one lock per shard (issue 12).

A batch written with ``writer.write_chunks(chunks)`` must leave what the
plain API (``arr[region] = value`` with ``ShardWritePipeline``) leaves when it
writes the same chunks one after another, in the order given (a chunk named
twice keeps its last value), and what a numpy model holds; the same keys too
(a shard of fill values never made, one emptied deleted). The twins and the
comparison are ``tests/_writer_helpers.py``'s, as in ``test_shard_writer.py``.

Beyond the values:

- the fast paths are taken where they should be: once a shard is dense and
  validated (uncompressed), or this process knows the index it last wrote
  (compressed), a batch writes its chunks of the shard under one lock
  request per shard and never through the pipeline; a whole-shard write in
  between (the plain API, another wrapper, another writer) makes it fall
  back, never write at stale offsets;
- errors: coordinates outside the grid raise before anything is written; a
  bad value raises what the plain API raises for it, and, when it is the
  only bad value, nothing else of the batch is written (the docstring's
  promise), on every path.

Threads, the deterministic interleavings that show what the fast paths'
locks prevent, and durable stores are in ``test_shard_writer_batch_threads.py``;
processes writing batches into shared shards in ``test_processes.py``. The
geometry of the fast-path tests, their twins and the spy on the writer's
paths are ``tests/_batch_helpers.py``'s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, note
from hypothesis import strategies as st
from zarr.storage import LocalStore

from tests._batch_helpers import (
    CHUNK_BYTES,
    T_ALL,
    T_CHUNKS,
    T_SHAPE,
    T_SHARD_KEYS,
    T_SHARDS,
    THREE_PER_SHARD,
    Spy,
    plain_writes,
    ready_twins,
    spy_on_writer,
    t_full,
    t_region,
    t_value,
)
from tests._shard_helpers import OURS, STOCK, no_locks_left
from tests._writer_helpers import (
    CHUNKS,
    COMPRESSORS,
    GRID,
    SHAPE,
    STORES,
    RandomArray,
    array_keys,
    assert_same,
    assert_same_outcome,
    check_random_steps,
    chunk_grid,
    chunk_region,
    chunk_value,
    dense_twins,
    draw_array,
    draw_value,
    make_all_dense,
    outcome,
    random_twin_test,
    raw_values,
    refusals_inside_a_loop,
    stock_read,
    twins,
)
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards import _batches, _fastpaths

pytestmark = pytest.mark.timeout(120)

EXAMPLES = 20


def _random_bits(rng: np.random.Generator, coords: tuple[int, ...], bits: int) -> Any:
    """A value for the chunk at ``coords``: ``bits`` random bits an element, none fill."""
    shape = np.empty(T_SHAPE)[t_region(coords)].shape
    return (rng.integers(0, 2**bits, shape) + 1).astype("i4")


def _t_shard(coords: tuple[int, ...]) -> str:
    """The key of the shard (of ``_batch_helpers``' geometry) holding the chunk."""
    return f"c/{coords[0] // 4}/{coords[1] // 3}"


# ------------------------------------------------------------------- the spies


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return spy_on_writer(monkeypatch)


def _spy_locks(monkeypatch: pytest.MonkeyPatch, arr: zarr.Array[Any]) -> list[tuple[str, Any]]:
    """Every exclusive ``lock``/``lock_ranges``/``_lock_runs`` request (and
    ``_hold_if_free``, one chunk's) made from now on on the lock manager of
    ``arr``'s store, as (key relative to the array, ranges)."""
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    mgr = store.lock_manager
    requests: list[tuple[str, Any]] = []
    lock, lock_ranges, lock_runs = mgr.lock, mgr.lock_ranges, mgr._lock_runs
    hold_if_free = mgr._hold_if_free
    prefix = f"{arr.store_path.path}/"

    def spied_lock(key: str, start: int = 0, end: int | None = None, **kw: Any) -> Any:
        if not kw.get("shared"):
            requests.append((key.removeprefix(prefix), [(start, end)]))
        return lock(key, start, end, **kw)

    def spied_lock_ranges(key: str, ranges: Any, **kw: Any) -> Any:
        ranges = list(ranges)
        if not kw.get("shared"):
            requests.append((key.removeprefix(prefix), ranges))
        return lock_ranges(key, ranges, **kw)

    def spied_lock_runs(key: str, runs: list[tuple[int, int]]) -> Any:
        requests.append((key.removeprefix(prefix), list(runs)))
        return lock_runs(key, runs)

    def spied_hold_if_free(key: str, start: int, end: int) -> Any:
        requests.append((key.removeprefix(prefix), [(start, end)]))
        return hold_if_free(key, start, end)

    monkeypatch.setattr(mgr, "lock", spied_lock)
    monkeypatch.setattr(mgr, "lock_ranges", spied_lock_ranges)
    monkeypatch.setattr(mgr, "_lock_runs", spied_lock_runs)
    monkeypatch.setattr(mgr, "_hold_if_free", spied_hold_if_free)
    return requests


# --------------------------------------------------- random batches (hypothesis)


@dataclass(frozen=True)
class Batch:
    """``writer.write_chunks(...)`` of ``pairs`` in the form ``form``: a
    mapping (a chunk named twice keeps its last value, as dict() does), the
    same as a dict of numpy arrays by tuples of ints (the form the writer
    reads inside its gate), a list of pairs or a generator of them
    (duplicates kept: the last wins)."""

    form: str
    pairs: list[tuple[Any, Any]]

    def argument(self) -> Any:
        if self.form == "mapping":
            return {tuple(c): v for c, v in self.pairs}
        if self.form == "arrays":
            return {tuple(int(i) for i in c): np.asarray(v) for c, v in self.pairs}
        if self.form == "generator":
            return ((c, v) for c, v in self.pairs)
        return list(self.pairs)


@dataclass(frozen=True)
class Case:
    array: RandomArray
    steps: list[Batch | tuple[int, ...]]
    """Batches, and single elements written with ``writer[point] = 3``: a
    partial chunk write through the pipeline, which validates a dense shard's
    index (so later batches find the fast path open)."""


def _coords(draw: st.DrawFn, coords: tuple[int, ...]) -> Any:
    """Coordinates as a tuple, a list or numpy integers."""
    how = draw(st.sampled_from(["tuple", "list", "numpy"]), label="coords as")
    if how == "list":
        return list(coords)
    if how == "numpy":
        return tuple(np.int64(i) for i in coords)
    return coords


@st.composite
def _cases(draw: st.DrawFn) -> Case:
    array = draw_array(draw)
    shape, chunks = array.shape, array.chunks
    every = list(itertools.product(*(range(g) for g in chunk_grid(shape, chunks))))
    steps: list[Batch | tuple[int, ...]] = []
    for _ in range(draw(st.integers(1, 5), label="steps")):
        if draw(st.integers(0, 3), label="point?") == 0:
            steps.append(tuple(draw(st.integers(0, n - 1)) for n in shape))
            continue
        if draw(st.booleans(), label="every chunk"):
            chosen = draw(st.permutations(every))
        else:
            chosen = draw(st.lists(st.sampled_from(every), max_size=10), label="chunks")
        pairs = []
        for coords in chosen:
            clipped = np.empty(shape)[chunk_region(coords, shape, chunks)].shape
            if draw(st.integers(0, 9), label="broadcast?") == 0:
                # another shape, broadcast by zarr's rules: the pipeline's path
                value: Any = np.full((1,) * len(shape), draw(st.integers(0, 99)))
            else:
                value = draw_value(draw, clipped, array.fill)
            pairs.append((_coords(draw, coords), value))
        form = draw(st.sampled_from(["mapping", "arrays", "pairs", "generator"]), label="form")
        steps.append(Batch(form, pairs))
    return Case(array, steps)


@random_twin_test(EXAMPLES)
@given(case=_cases())
def test_random_batches_match_the_plain_api_chunk_by_chunk_and_a_numpy_model(
    kind: str, compressor: str, empty: bool, case: Case
) -> None:
    note(repr(case))
    array = case.array

    def write(writer: ShardWriter, step: Batch | tuple[int, ...]) -> list[tuple[Any, Any]]:
        if isinstance(step, Batch):
            writer.write_chunks(step.argument())
            return [(chunk_region(tuple(c), array.shape, array.chunks), v) for c, v in step.pairs]
        writer[step] = 3
        return [(step, 3)]

    check_random_steps(kind, compressor, empty, array, case.steps, write)


def test_a_chunk_named_twice_in_pairs_keeps_its_last_value(tmp_path: Path) -> None:
    # The deterministic case of what the random test draws now and then: in
    # pairs (and a mapping built from them) the last value of a chunk wins,
    # on the fast path and on the pipeline's, and a fill value named last
    # drops the chunk (the shard goes, as the plain API's does).
    written, plain, writer, model = dense_twins("memory", tmp_path)
    pairs = [
        ((0, 0), 1),
        ((2, 2), chunk_value((2, 2), 1)),
        ((0, 0), chunk_value((0, 0), 2)),  # dense shard: in place
        ((2, 2), 9),  # shard (1, 1) does not exist: the pipeline
        ((1, 1), 3),
        ((1, 1), 4),
    ]
    writer.write_chunks(pairs)
    plain_writes(plain, model, pairs, SHAPE, CHUNKS)
    assert_same(written, plain, model)
    assert written[0, 0] == 1 + 200 and written[9, 6] == 9 and written[4, 3] == 4
    writer.write_chunks(iter([((2, 2), 5), ((2, 2), 0)]))  # ends with fill: the shard goes
    plain_writes(plain, model, [((2, 2), 5), ((2, 2), 0)], SHAPE, CHUNKS)
    assert_same(written, plain, model)
    assert "c/1/1" not in array_keys(written)


# ------------------------------------------------------------- the fast paths


@pytest.mark.parametrize("kind", STORES)
def test_a_batch_over_dense_validated_shards_is_written_in_place_one_lock_per_shard(
    kind: str, tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    written, plain, writer, model = ready_twins(kind, tmp_path, "raw")
    locks = _spy_locks(monkeypatch, written)
    rng = np.random.default_rng(12)
    # Every chunk, shards interleaved, arrays and scalars.
    pairs = [(T_ALL[i], t_value(T_ALL[i], 2)) for i in rng.permutation(len(T_ALL))]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []  # no chunk through the pipeline
    assert sorted(spy.in_place) == [(key, 12, True) for key in T_SHARD_KEYS]
    # One exclusive request per shard, of its twelve chunks' ranges.
    assert sorted((k, sum(e - s for s, e in r)) for k, r in locks) == [
        (key, 12 * CHUNK_BYTES) for key in T_SHARD_KEYS
    ]
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    assert raw_values(written) == raw_values(plain)  # byte for byte the plain API's shards

    # A chunk alone in its shard (one lock of its range), two in another
    # (one request for both).
    locks.clear()
    spy.clear()
    pairs = [((0, 0), t_value((0, 0), 3)), ((7, 5), t_value((7, 5), 3)), ((5, 4), 7)]
    writer.write_chunks(dict(pairs))
    assert spy.slow == []
    assert sorted(spy.in_place) == [("c/0/0", 1, True), ("c/1/1", 2, True)]
    assert sorted((k, sum(e - s for s, e in r)) for k, r in locks) == [
        ("c/0/0", CHUNK_BYTES),
        ("c/1/1", 2 * CHUNK_BYTES),
    ]
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    no_locks_left(written)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
def test_a_batchs_edge_chunks_go_through_the_pipeline_after_its_whole_chunks(
    kind: str, compressor: str, tmp_path: Path, spy: Spy
) -> None:
    # Shard (0, 0) is dense (or holds an index this process wrote): its
    # whole chunks go in one fast-path group; the edge chunks of the batch
    # (clipped by the array's edge, in the other shards) go through the
    # pipeline, which merges them into the chunks stored before, as zarr
    # does (see shards/_writer), after the group and in the batch's order.
    written, plain, writer, model = dense_twins(kind, tmp_path, compressor)
    edges = [(2, 0), (0, 2), (2, 2)]
    pairs = [(c, chunk_value(c, 3)) for c in [(0, 0), *edges, (1, 1)]]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == [chunk_region(c, SHAPE, CHUNKS) for c in edges]
    done = spy.in_place if compressor == "raw" else spy.appended
    assert done == [("c/0/0", 2, True)]
    plain_writes(plain, model, pairs, SHAPE, CHUNKS)
    assert_same(written, plain, model)
    no_locks_left(written)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
def test_shards_not_made_yet_are_written_by_the_fast_path_with_the_pipelines_bytes(
    kind: str, compressor: str, tmp_path: Path, spy: Spy
) -> None:
    # A fresh array (the common case: every chunk written once): a missing
    # shard is made, a compact one appended to (or compacted), and an
    # uncompressed one laid out densely once a quarter of its chunks hold
    # data, all by the fast path under the whole-key lock, byte for byte as
    # the plain API's pipeline writes them; then in place.
    written, plain = twins(
        kind, tmp_path, compressor, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS
    )
    writer = ShardWriter(written)
    model = np.zeros(T_SHAPE, dtype="i4")
    ours = [c for c in T_ALL if _t_shard(c) == "c/0/0"]
    for n, coords in enumerate(ours, 1):
        pairs = [(coords, t_value(coords, n))]
        writer.write_chunk(coords, pairs[0][1])
        plain_writes(plain, model, pairs)
        assert_same(written, plain, model)
        assert raw_values(written) == raw_values(plain), f"after {n} chunks"
    assert spy.slow == []
    cold = [done for key, k, done in spy.cold if key == "c/0/0"]
    if compressor == "raw":  # 12 chunks a shard: compact for two, dense at the third
        assert cold == [True, True, True]
        assert [t for *_, t in spy.in_place] == [False, False, False] + [True] * 9
    else:
        assert cold == []
        assert all(done for *_, done in spy.appended)
    # A batch over shards not made yet: one whole-key write each, the bytes
    # of the plain API writing each shard's row of three chunks in one call.
    spy.clear()
    for key in T_SHARD_KEYS[1:]:
        row = [c for c in THREE_PER_SHARD if _t_shard(c) == key]
        block = np.zeros(T_SHAPE, dtype="i4")
        for c in row:
            block[t_region(c)] = t_value(c, 2)
        rows, first = t_region(row[0])
        span = (rows, slice(first.start, t_region(row[-1])[1].stop))
        plain[span] = block[span]
        model[span] = block[span]
        writer.write_chunks([(c, t_value(c, 2)) for c in row])
    assert_same(written, plain, model)
    assert raw_values(written) == raw_values(plain)
    assert spy.slow == []
    no_locks_left(written)


@pytest.mark.parametrize("kind", STORES)
def test_a_compressed_shard_out_of_free_space_is_compacted_by_the_fast_path(
    kind: str, tmp_path: Path, spy: Spy
) -> None:
    # Chunks that do not fit the free space compact the shard under the same
    # lock, with the compressed bytes in hand (no second encode, no pipeline);
    # the compacted shard is laid out as the pipeline's compaction lays it
    # out (one function), so the next writes append again. The chunks grow
    # round by round (more random bits), so they outgrow the dead gaps the
    # chunks they replace leave.
    written, plain, writer, model = ready_twins(kind, tmp_path, "zstd")
    ours = [c for c in T_ALL if _t_shard(c) == "c/0/0"]
    rng = np.random.default_rng(5)
    for tag in range(2, 8):
        pairs = [(c, _random_bits(rng, c, 4 * tag)) for c in ours]
        writer.write_chunks(pairs)
        plain_writes(plain, model, pairs)
        assert_same(written, plain, model)
    assert spy.slow == []
    assert spy.compacted.count("c/0/0") >= 2  # every few rounds, never the pipeline
    assert all(done for *_, done in spy.appended)
    no_locks_left(written)
    # The index the writer keeps is the shard's own.
    spy.clear()
    pairs = [(ours[0], t_value(ours[0], 9))]
    writer.write_chunks(pairs)
    assert spy.appended == [("c/0/0", 1, True)]
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)


@pytest.mark.parametrize("kind", STORES)
def test_a_batch_over_compressed_shards_this_process_wrote_is_appended_one_lock_per_shard(
    kind: str, tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compressed: each shard's chunks appended at once and the index
    # re-pointed once, under one whole-key lock per shard, from the index
    # this process last wrote there; no pipeline (until a compaction).
    written, plain, writer, model = ready_twins(kind, tmp_path, "zstd")
    locks = _spy_locks(monkeypatch, written)
    pairs = [(c, t_value(c, 2)) for c in reversed(THREE_PER_SHARD)]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []
    assert spy.in_place == []
    assert sorted(spy.appended) == [(key, 3, True) for key in T_SHARD_KEYS]
    assert sorted(locks) == [(key, [(0, None)]) for key in T_SHARD_KEYS]
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    no_locks_left(written)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("between", ["our pipeline", "stock zarr", "another writer"])
def test_a_batch_never_writes_at_offsets_a_whole_shard_write_made_stale(
    between: str, compressor: str, tmp_path: Path, spy: Spy
) -> None:
    # After a batch took the fast path into shard (0, 0), the shard is
    # rewritten whole with all but one chunk fill: zarr drops those, so the
    # shard is now compact, its one chunk at another offset and the file
    # shorter. The writer's validated offsets (uncompressed) are stale, and
    # so is the index it last wrote (compressed) unless the rewrite was this
    # process's pipeline's, which keeps the index it wrote with free space
    # (our pipeline, or another writer: a ShardWriter on another wrapper of
    # the same root, one lock table). Stock zarr through a wrapper rewrites
    # the shard under the wrapper's locks (the change stamp moves), keeps no
    # index and leaves no free space: the compressed fast path must read the
    # shard's index and compact (the stale index has room for three more).
    # The next batch must see the change, never write where the chunks were.
    written, plain, writer, model = ready_twins("local", tmp_path, compressor)
    ours = [c for c in THREE_PER_SHARD if _t_shard(c) == "c/0/0"]
    # One chunk first (compressed: the index this process knows then leaves
    # room for three more, so only the stamp can stop a stale append).
    pairs = [(ours[0], t_value(ours[0], 2))]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []  # the fast path, before
    plain_writes(plain, model, pairs)

    config = STOCK if between == "stock zarr" else OURS
    with zarr.config.set(config):
        other = zarr.open_array(
            RangeLockedStore(LocalStore(tmp_path / "writer")), path="group/array"
        )
    target: Any = ShardWriter(other) if between == "another writer" else other
    value = np.zeros((12, 12), dtype="i4")
    value[6:9, 4:8] = t_value((2, 1), 9)  # chunk (2, 1) only
    target[0:12, 0:12] = value
    plain[0:12, 0:12] = value
    model[0:12, 0:12] = value
    assert_same(written, plain, model)

    spy.clear()
    pairs = [(c, t_value(c, 3)) for c in ours]
    writer.write_chunks(pairs)
    first = (spy.in_place + spy.appended)[0]
    zstd = compressor == "zstd"
    assert first == ("c/0/0", 3, zstd), "the fast path did not see the shard rewritten"
    assert spy.compacted == (["c/0/0"] if zstd and between == "stock zarr" else [])
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "writer"), "group/array"), model)
    # ... and the fast path opens again once the shard is dense and validated.
    make_all_dense([writer, plain], model, T_SHARDS, t_full(4))
    spy.clear()
    pairs = [(c, t_value(c, 5)) for c in ours]
    writer.write_chunks(pairs)
    assert spy.slow == []
    plain_writes(plain, model, pairs)
    assert_same(written, plain, model)


# --------------------------------------------------------------------- errors


_GOOD = [((0, 0), chunk_value((0, 0), 1)), ((2, 2), 3), ((1, 0), chunk_value((1, 0), 1))]
"""A batch over a dense shard (0, 0) (in place) and shards that do not exist."""


@pytest.mark.parametrize("form", ["mapping", "pairs", "generator"])
@pytest.mark.parametrize(
    "coords", [(3, 0), (0, 3), (-1, 0), (0,), (0, 0, 0), (1.0, 2), ("0", 0), ()]
)
def test_coordinates_outside_the_grid_raise_an_index_error_before_anything_is_written(
    coords: Any, form: str, tmp_path: Path
) -> None:
    # The bad pair comes last: every chunk before it was already checked and
    # would be written first if the check came late.
    written, _, writer, _ = dense_twins("memory", tmp_path)
    before = raw_values(written)
    batch = Batch(form, [*_GOOD, (coords, 1)])
    with pytest.raises(IndexError) as info:
        writer.write_chunks(batch.argument())
    message = str(info.value)
    assert repr(tuple(coords)) in message and repr(GRID) in message
    assert "group/array" in message
    assert raw_values(written) == before
    no_locks_left(written)


@pytest.mark.parametrize(
    ("chunks", "named"),
    [
        (None, "NoneType: None"),
        (5, "int: 5"),
        ("ab", "str: 'ab'"),  # iterable, but of letters
        ([*_GOOD, ((0, 0),)], "tuple: ((0, 0),)"),  # an item that is not a pair
        ([*_GOOD, 7], "int: 7"),
    ],
)
def test_anything_but_a_mapping_or_pairs_raises_a_type_error_naming_it(
    chunks: Any, named: str, tmp_path: Path
) -> None:
    # Python's own "'NoneType' object is not iterable" or "cannot unpack"
    # named neither the call nor the value.
    written, _, writer, _ = dense_twins("memory", tmp_path)
    before = raw_values(written)
    with pytest.raises(TypeError, match="write_chunks") as info:
        writer.write_chunks(chunks)
    assert named in str(info.value)
    assert raw_values(written) == before
    no_locks_left(written)


_ARRAYS = {c: chunk_value(c, 1) for c in [(0, 0), (2, 2), (1, 0)]}
"""``_GOOD`` as ``write_chunks`` is mostly called: a dict of numpy arrays by
tuples of ints, which ``ShardWriter`` checks and encodes inside its gate
(``_fastpaths.GATE``) without a conversion first."""


@pytest.mark.parametrize("coords", [(3, 0), (0, 3), (-1, 0), (0,), (0, 0, 0), ()])
def test_a_dict_of_arrays_is_checked_before_anything_is_written_and_leaves_the_gate_open(
    coords: tuple[int, ...], tmp_path: Path
) -> None:
    written, _, writer, _ = dense_twins("memory", tmp_path)
    assert writer._fast is not None and writer._fast.gated
    before = raw_values(written)
    with pytest.raises(IndexError) as info:
        writer.write_chunks({**_ARRAYS, coords: np.ones(CHUNKS, dtype="i4")})
    assert repr(coords) in str(info.value) and repr(GRID) in str(info.value)
    assert raw_values(written) == before
    assert not _fastpaths.GATE.locked()
    no_locks_left(written)


@pytest.mark.parametrize("name", ["columns short", "a dimension more", "two for three", "strings"])
def test_a_bad_array_in_a_dict_of_arrays_raises_what_the_plain_api_raises(
    name: str, tmp_path: Path
) -> None:
    written, plain, writer, _ = dense_twins("memory", tmp_path)
    bad = _BAD_VALUES[name]
    expected = outcome(lambda: plain.__setitem__(chunk_region((1, 1), SHAPE, CHUNKS), bad))
    assert expected is not None
    before = raw_values(written)
    batch = {**_ARRAYS, (1, 1): bad}
    assert_same_outcome(outcome(lambda: writer.write_chunks(batch)), expected, "raw")
    assert raw_values(written) == before
    assert not _fastpaths.GATE.locked()
    no_locks_left(written)


def test_a_dict_of_arrays_is_written_as_the_plain_api_writes_it(tmp_path: Path) -> None:
    # Chunks of a dense shard (in place, in the gate), of shards not made yet
    # (after the gate, waiting for the whole-key lock), a chunk of fill
    # values (the pipeline) and one zarr broadcasts (the pipeline, first).
    written, plain, writer, model = dense_twins("memory", tmp_path)
    batch = {**_ARRAYS, (0, 1): np.zeros(CHUNKS, dtype="i4"), (2, 0): np.full((1, 1), 7, "i4")}
    writer.write_chunks(batch)
    plain_writes(plain, model, list(batch.items()), SHAPE, CHUNKS)
    assert_same(written, plain, model)
    assert not _fastpaths.GATE.locked()
    no_locks_left(written)


_BAD_VALUES: dict[str, Any] = {
    "columns short": np.ones((4, 2), dtype="i4"),
    "a dimension more": np.ones((2, 4, 3), dtype="i4"),
    "two for three": np.ones(2, dtype="i4"),
    "a string": "abc",
    "strings": np.full((4, 3), "x"),
    "too large": 2**40,
    "None": None,
    "ragged": [[1, 2, 3], [4, 5]],
}

_PATHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # store kind, compressor, wrapper options: which path the good chunks take
    "in place": ("memory", "raw", {}),
    "appended": ("memory", "zstd", {}),
    "no fast path (journaled, compressed)": ("local", "zstd", {"durability": "journal-nosync"}),
    "no fast path (confined)": ("local", "raw", {"confine": True}),
}


@pytest.mark.parametrize("path", list(_PATHS))
@pytest.mark.parametrize("name", list(_BAD_VALUES))
def test_a_bad_value_raises_what_the_plain_api_raises_and_nothing_else_is_written(
    name: str, path: str, tmp_path: Path
) -> None:
    # The bad value sits among good ones (before and after it in the call).
    # The docstring: a value zarr refuses raises before the others are
    # written. It is the only bad value: the store must be as before.
    kind, compressor, options = _PATHS[path]
    written, plain, writer, _ = dense_twins(kind, tmp_path, compressor, **options)
    bad = _BAD_VALUES[name]
    expected = outcome(lambda: plain.__setitem__(chunk_region((1, 1), SHAPE, CHUNKS), bad))
    assert expected is not None, "the plain API accepted it: not an error case"
    before = raw_values(written)
    batch = [*_GOOD[:2], ((1, 1), bad), *_GOOD[2:]]
    assert_same_outcome(outcome(lambda: writer.write_chunks(batch)), expected, compressor)
    assert raw_values(written) == before
    no_locks_left(written)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_values_zarr_broadcasts_in_a_batch_are_written_as_the_plain_api_writes_them(
    compressor: str, tmp_path: Path
) -> None:
    # Values of another shape that zarr takes (broadcast from ones, or the
    # leading part of a larger value) go through the pipeline with zarr's
    # rules, beside chunks written by the fast paths.
    written, plain, writer, _ = dense_twins("memory", tmp_path, compressor)
    pairs = [
        ((0, 1), chunk_value((0, 1), 1)),
        ((1, 0), np.arange(15, dtype="i4").reshape(5, 3)),
        ((2, 2), np.arange(12, dtype="i4").reshape(4, 3)),  # a full chunk for an edge chunk
        ((1, 1), np.ones((1, 3), dtype="i4") * 8),
        ((2, 0), np.array([[1], [2]], dtype="i4")),
    ]
    writer.write_chunks(pairs)
    for coords, value in pairs:
        plain[chunk_region(coords, SHAPE, CHUNKS)] = value
    assert_same(written, plain)
    assert written[8, 0] == 1 and written[9, 2] == 2 and written[4, 4] == 8


def test_write_chunks_inside_a_running_event_loop_raises_runtime_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    # As write_chunk: refused before anything is done, whether the batch
    # would take the fast path, the pipeline, or is empty, and no coroutine
    # is left un-awaited.
    written, _, writer, _ = dense_twins("memory", tmp_path)
    before = raw_values(written)

    batches: list[Any] = [{(0, 0): 1, (1, 1): 2}, [((2, 2), 1)], {}]
    errors = refusals_inside_a_loop(lambda b=b: writer.write_chunks(b) for b in batches)
    assert len(errors) == 3
    assert all("write_chunks" in e and "event loop" in e for e in errors), errors
    assert raw_values(written) == before
    no_locks_left(written)


def test_a_selection_over_dense_shards_whose_chunk_fails_to_encode_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # writer[sel] over whole chunks of two dense shards encodes every chunk
    # before it takes a lock, so a chunk whose encode fails (a codec's bug:
    # the bytes codec does not fail on a checked value) stops the write
    # before either shard is written. The plain API writes the shard whose
    # chunks encoded (test_a_shard_that_fails_does_not_stop_the_others_of_its_call):
    # here the writer is more atomic than the plain API (README).
    store = RangeLockedStore(LocalStore(tmp_path), dense_shards=True)
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store,
            shape=(4, 8),
            chunks=(2, 2),
            shards=(4, 4),
            dtype="i4",
            fill_value=0,
            compressors=None,
        )
    arr[...] = 1  # two dense shards
    writer = ShardWriter(arr)
    assert writer._fast is not None
    real = _batches.encode
    calls: list[int] = []

    def encode(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 6:  # a chunk of the second shard
            raise ValueError("chunk refused")
        return real(*args)

    monkeypatch.setattr(_batches, "encode", encode)
    with pytest.raises(ValueError, match="chunk refused"):
        writer[0:4, 0:8] = np.full((4, 8), 2, dtype="i4")
    assert len(calls) == 6, calls
    np.testing.assert_array_equal(arr[...], np.ones((4, 8), dtype="i4"))
