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
  promise), on every path;
- threads: writers of disjoint chunks of shared shards lose nothing (the
  control in this module shows stock zarr losing the same pattern), writers
  of overlapping batches leave every chunk whole from one writer; and two
  deterministic interleavings show what the fast paths' locks prevent (with
  the lock taken out, a batch appended beside another loses the other's
  chunks, and a batch written in place beside a whole-shard write writes at
  stale offsets: both tests then fail);
- durable stores: one ``fdatasync`` per shard of a batch with
  ``durability="fsync"``; the right values with the journal.

Processes writing batches into shared shards are in ``test_processes.py``.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, note
from hypothesis import strategies as st
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from tests._threads import run_together, wait_until
from tests._writer_helpers import (
    ALL_CHUNKS,
    CHUNKS,
    COMPRESSORS,
    GRID,
    SHAPE,
    STORES,
    RandomArray,
    ShardReadsMeet,
    array_keys,
    assert_same,
    assert_same_outcome,
    check_random_steps,
    chunk_grid,
    chunk_region,
    chunk_value,
    draw_array,
    draw_value,
    locked_array,
    make_all_dense,
    make_dense,
    no_locks_left,
    outcome,
    random_twin_test,
    raw_values,
    stock_read,
    twins,
)
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = pytest.mark.timeout(120)

EXAMPLES = 20
MAX_CHUNKS = 36  # inner chunks per random array: keeps an example cheap

# The geometry of the fast-path, thread and durability tests: 8 x 6 inner
# chunks of 3 x 4 in 2 x 2 shards of 4 x 3 chunks, edge chunks (and shards)
# in the last row and column. Every shard has all twelve of its chunks in
# the array, so every shard can be dense (a chunk alone in an edge shard
# would be a whole-shard write, always the pipeline's).
T_SHAPE, T_CHUNKS, T_SHARDS = (23, 22), (3, 4), (12, 12)
T_ALL = list(itertools.product(*(range(g) for g in chunk_grid(T_SHAPE, T_CHUNKS))))
T_SHARD_KEYS = ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]
THREE_PER_SHARD = [c for c in T_ALL if c[0] % 4 == 1]
"""A row of three chunks in each shard: few enough to be appended into a
compressed shard's free space without a compaction (see ``_jobs``)."""
CHUNK_BYTES = 3 * 4 * 4  # one inner chunk of i4, uncompressed


def _t_region(coords: tuple[int, ...]) -> Any:
    return chunk_region(coords, T_SHAPE, T_CHUNKS)


def _t_shard(coords: tuple[int, ...]) -> str:
    return f"c/{coords[0] // 4}/{coords[1] // 3}"


def _t_value(coords: tuple[int, ...], tag: int) -> Any:
    """Distinct numbers per chunk and tag >= 1 (a scalar for every fifth
    chunk), none fill; the tag can be read back from any element:
    ``value // 1000``."""
    k = T_ALL.index(coords)
    if k % 5 == 0:
        return np.int32(1000 * tag + k)
    shape = np.empty(T_SHAPE)[_t_region(coords)].shape
    return (np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) % 1000) + 1000 * tag


def _t_full(tag: int) -> np.ndarray:
    """The whole array, every chunk ``_t_value(chunk, tag)``."""
    full = np.zeros(T_SHAPE, dtype="i4")
    for coords in T_ALL:
        full[_t_region(coords)] = _t_value(coords, tag)
    return full


def _t_array(inner: MemoryStore | LocalStore, compressor: str) -> zarr.Array[Any]:
    return locked_array(
        inner, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS, compressor=compressor
    )


def _ready(
    kind: str, tmp_path: Path, compressor: str, **options: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any], ShardWriter, np.ndarray]:
    """Twins, their writer and the model, every shard written whole and then
    in part: dense and validated (uncompressed), or with an index this
    process wrote and free space (compressed): the fast paths are open."""
    written, plain = twins(
        kind, tmp_path, compressor, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS, **options
    )
    writer = ShardWriter(written)
    model = np.zeros(T_SHAPE, dtype="i4")
    make_all_dense([writer, plain], model, T_SHARDS, _t_full(1))
    return written, plain, writer, model


def _plain_writes(
    plain: zarr.Array[Any],
    model: np.ndarray,
    pairs: Any,
    shape: tuple[int, ...] = T_SHAPE,
    chunks: tuple[int, ...] = T_CHUNKS,
) -> None:
    """The plain API's twin of a batch: each chunk in turn (and the model)."""
    for coords, value in pairs:
        region = chunk_region(tuple(coords), shape, chunks)
        plain[region] = value
        model[region] = value


# ------------------------------------------------------------------- the spies


@dataclass
class Spy:
    """What the writer did: regions written through the pipeline
    (``_write_slow``), and each try of a fast path: (shard key, chunks, all
    of them written)."""

    slow: list[Any] = field(default_factory=list)
    in_place: list[tuple[str, int, bool]] = field(default_factory=list)
    appended: list[tuple[str, int, bool]] = field(default_factory=list)

    def clear(self) -> None:
        self.slow.clear()
        self.in_place.clear()
        self.appended.clear()


def _shard_name(key: str) -> str:
    """A shard's key relative to its array ("c/0/1")."""
    return key if key.startswith("c/") else key[key.rindex("/c/") + 1 :]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    s = Spy()
    slow, in_place, appended = (
        ShardWriter._write_slow,
        ShardWriter._put_in_place,
        ShardWriter._put_appended,
    )

    def write_slow(self: ShardWriter, region: Any, value: Any) -> None:
        s.slow.append(region)
        slow(self, region, value)

    def put_in_place(self: ShardWriter, key: str, writes: list[Any], path: Any) -> int:
        done = in_place(self, key, writes, path)  # how many were written (all or none)
        s.in_place.append((_shard_name(key), len(writes), done == len(writes)))
        return done

    def put_appended(self: ShardWriter, key: str, writes: list[Any], path: Any) -> int:
        done = appended(self, key, writes, path)  # how many, from the first, were written
        s.appended.append((_shard_name(key), len(writes), done == len(writes)))
        return done

    monkeypatch.setattr(ShardWriter, "_write_slow", write_slow)
    monkeypatch.setattr(ShardWriter, "_put_in_place", put_in_place)
    monkeypatch.setattr(ShardWriter, "_put_appended", put_appended)
    return s


def _spy_locks(monkeypatch: pytest.MonkeyPatch, arr: zarr.Array[Any]) -> list[tuple[str, Any]]:
    """Every exclusive ``lock``/``lock_ranges``/``_lock_runs`` request made from now on on the
    lock manager of ``arr``'s store, as (key relative to the array, ranges)."""
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    mgr = store.lock_manager
    requests: list[tuple[str, Any]] = []
    lock, lock_ranges, lock_runs = mgr.lock, mgr.lock_ranges, mgr._lock_runs
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

    monkeypatch.setattr(mgr, "lock", spied_lock)
    monkeypatch.setattr(mgr, "lock_ranges", spied_lock_ranges)
    monkeypatch.setattr(mgr, "_lock_runs", spied_lock_runs)
    return requests


# --------------------------------------------------- random batches (hypothesis)


@dataclass(frozen=True)
class Batch:
    """``writer.write_chunks(...)`` of ``pairs`` in the form ``form``: a
    mapping (a chunk named twice keeps its last value, as dict() does), a list
    of pairs or a generator of them (duplicates kept: the last wins)."""

    form: str
    pairs: list[tuple[Any, Any]]

    def argument(self) -> Any:
        if self.form == "mapping":
            return {tuple(c): v for c, v in self.pairs}
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
    array = draw_array(draw, MAX_CHUNKS)
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
        form = draw(st.sampled_from(["mapping", "pairs", "generator"]), label="form")
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
    written, plain = twins("memory", tmp_path)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    make_dense(writer, plain, model)
    pairs = [
        ((0, 0), 1),
        ((2, 2), chunk_value((2, 2), 1)),
        ((0, 0), chunk_value((0, 0), 2)),  # dense shard: in place
        ((2, 2), 9),  # shard (1, 1) does not exist: the pipeline
        ((1, 1), 3),
        ((1, 1), 4),
    ]
    writer.write_chunks(pairs)
    _plain_writes(plain, model, pairs, SHAPE, CHUNKS)
    assert_same(written, plain, model)
    assert written[0, 0] == 1 + 200 and written[9, 6] == 9 and written[4, 3] == 4
    writer.write_chunks(iter([((2, 2), 5), ((2, 2), 0)]))  # ends with fill: the shard goes
    _plain_writes(plain, model, [((2, 2), 5), ((2, 2), 0)], SHAPE, CHUNKS)
    assert_same(written, plain, model)
    assert "c/1/1" not in array_keys(written)


# ------------------------------------------------------------- the fast paths


@pytest.mark.parametrize("kind", STORES)
def test_a_batch_over_dense_validated_shards_is_written_in_place_one_lock_per_shard(
    kind: str, tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    written, plain, writer, model = _ready(kind, tmp_path, "raw")
    locks = _spy_locks(monkeypatch, written)
    rng = np.random.default_rng(12)
    # Every chunk, shards interleaved, arrays and scalars, edge chunks too.
    pairs = [(T_ALL[i], _t_value(T_ALL[i], 2)) for i in rng.permutation(len(T_ALL))]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []  # no chunk through the pipeline
    assert sorted(spy.in_place) == [(key, 12, True) for key in T_SHARD_KEYS]
    # One exclusive request per shard, of its twelve chunks' ranges.
    assert sorted((k, sum(e - s for s, e in r)) for k, r in locks) == [
        (key, 12 * CHUNK_BYTES) for key in T_SHARD_KEYS
    ]
    _plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    assert raw_values(written) == raw_values(plain)  # byte for byte the plain API's shards

    # A chunk alone in its shard (one lock of its range), two in another
    # (one request for both).
    locks.clear()
    spy.clear()
    pairs = [((0, 0), _t_value((0, 0), 3)), ((7, 5), _t_value((7, 5), 3)), ((5, 4), 7)]
    writer.write_chunks(dict(pairs))
    assert spy.slow == []
    assert sorted(spy.in_place) == [("c/0/0", 1, True), ("c/1/1", 2, True)]
    assert sorted((k, sum(e - s for s, e in r)) for k, r in locks) == [
        ("c/0/0", CHUNK_BYTES),
        ("c/1/1", 2 * CHUNK_BYTES),
    ]
    _plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    no_locks_left(written)


@pytest.mark.parametrize("kind", STORES)
def test_a_batch_over_compressed_shards_this_process_wrote_is_appended_one_lock_per_shard(
    kind: str, tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compressed: each shard's chunks appended at once and the index
    # re-pointed once, under one whole-key lock per shard, from the index
    # this process last wrote there; no pipeline (until a compaction).
    written, plain, writer, model = _ready(kind, tmp_path, "zstd")
    locks = _spy_locks(monkeypatch, written)
    pairs = [(c, _t_value(c, 2)) for c in reversed(THREE_PER_SHARD)]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []
    assert spy.in_place == []
    assert sorted(spy.appended) == [(key, 3, True) for key in T_SHARD_KEYS]
    assert sorted(locks) == [(key, [(0, None)]) for key in T_SHARD_KEYS]
    _plain_writes(plain, model, pairs)
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
    # process's pipeline's, which keeps the index it wrote (our pipeline, or
    # another writer: a ShardWriter on another wrapper of the same root, one
    # lock table). Stock zarr through a wrapper rewrites the shard under the
    # wrapper's locks (the change stamp moves) and keeps no index. The next
    # batch must see the change, never write where the chunks were.
    written, plain, writer, model = _ready("local", tmp_path, compressor)
    ours = [c for c in THREE_PER_SHARD if _t_shard(c) == "c/0/0"]
    # One chunk first (compressed: the index this process knows then leaves
    # room for three more, so only the stamp can stop a stale append).
    pairs = [(ours[0], _t_value(ours[0], 2))]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []  # the fast path, before
    _plain_writes(plain, model, pairs)

    config = STOCK if between == "stock zarr" else OURS
    with zarr.config.set(config):
        other = zarr.open_array(
            RangeLockedStore(LocalStore(tmp_path / "writer")), path="group/array"
        )
    target: Any = ShardWriter(other) if between == "another writer" else other
    value = np.zeros((12, 12), dtype="i4")
    value[6:9, 4:8] = _t_value((2, 1), 9)  # chunk (2, 1) only
    target[0:12, 0:12] = value
    plain[0:12, 0:12] = value
    model[0:12, 0:12] = value
    assert_same(written, plain, model)

    spy.clear()
    pairs = [(c, _t_value(c, 3)) for c in ours]
    writer.write_chunks(pairs)
    first = (spy.in_place + spy.appended)[0]
    known = compressor == "zstd" and between != "stock zarr"
    assert first == ("c/0/0", 3, known), "the fast path did not see the shard rewritten"
    _plain_writes(plain, model, pairs)
    assert_same(written, plain, model)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "writer"), "group/array"), model)
    # ... and the fast path opens again once the shard is dense and validated.
    make_all_dense([writer, plain], model, T_SHARDS, _t_full(4))
    spy.clear()
    pairs = [(c, _t_value(c, 5)) for c in ours]
    writer.write_chunks(pairs)
    assert spy.slow == []
    _plain_writes(plain, model, pairs)
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
    written, plain = twins("memory", tmp_path)
    writer = ShardWriter(written)
    make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
    before = raw_values(written)
    batch = Batch(form, [*_GOOD, (coords, 1)])
    with pytest.raises(IndexError) as info:
        writer.write_chunks(batch.argument())
    message = str(info.value)
    assert repr(tuple(coords)) in message and repr(GRID) in message
    assert "group/array" in message
    assert raw_values(written) == before
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
    written, plain = twins(kind, tmp_path, compressor, **options)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    make_dense(writer, plain, model)
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
    written, plain = twins("memory", tmp_path, compressor)
    writer = ShardWriter(written)
    make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
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
    written, plain = twins("memory", tmp_path)
    writer = ShardWriter(written)
    make_dense(writer, plain, np.zeros(SHAPE, dtype="i4"))
    before = raw_values(written)

    async def inside() -> list[str]:
        errors = []
        for batch in [{(0, 0): 1, (1, 1): 2}, [((2, 2), 1)], {}]:
            with pytest.raises(RuntimeError) as info:
                writer.write_chunks(batch)
            errors.append(str(info.value))
        return errors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors = asyncio.run(inside())
        gc.collect()
    assert all("write_chunks" in e and "event loop" in e for e in errors), errors
    assert [w for w in caught if "never awaited" in str(w.message)] == []
    assert raw_values(written) == before
    no_locks_left(written)


# -------------------------------------------------------------------- threads


N = 8  # threads


def _batches(chunks: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for i in range(0, len(chunks), size):
        yield chunks[i : i + size]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("kind", STORES)
def test_threads_writing_batches_of_their_own_chunks_of_shared_shards_lose_nothing(
    kind: str, compressor: str, tmp_path: Path
) -> None:
    # Thread i owns chunks i, i + 8, ... (row-major): every shard is written
    # by all eight at once. Batches of three chunks over two or three shards,
    # three rounds: the first makes the shards (but shard (0, 0), dense and
    # validated beforehand: in place from the start), the later ones find
    # them made. The control below shows stock zarr losing this pattern.
    inner: MemoryStore | LocalStore = (
        MemoryStore() if kind == "memory" else LocalStore(tmp_path / "data")
    )
    arr = _t_array(inner, compressor)
    writer = ShardWriter(arr)
    model = np.zeros(T_SHAPE, dtype="i4")
    writer[0:12, 0:12] = 1
    writer[0, 0] = 2
    mine = [T_ALL[i::N] for i in range(N)]

    def work(i: int) -> None:
        for salt in (1, 2, 3):
            for j, batch in enumerate(_batches(mine[i], 3)):
                pairs = [(c, _t_value(c, salt)) for c in batch]
                writer.write_chunks(dict(pairs) if j % 2 else pairs)

    run_together(N, work)
    for coords in T_ALL:
        model[_t_region(coords)] = _t_value(coords, 3)
    np.testing.assert_array_equal(arr[...], model)
    np.testing.assert_array_equal(stock_read(inner), model)
    no_locks_left(arr)


# The control: a batch of two chunks of one shard is, for stock zarr, one
# write of their region (one shard read-merge-write).
C_THREADS = 4
C_PAIRS = [((2 * i, j), (2 * i + 1, j)) for i, j in [(0, 0), (0, 1), (1, 0), (1, 2)]]
"""Each thread's two vertically adjacent chunks, all in shard (0, 0)."""


def _whole(coords: tuple[int, ...], tag: int) -> np.ndarray:
    value = _t_value(coords, tag)
    return np.broadcast_to(value, np.empty(T_SHAPE)[_t_region(coords)].shape)


def _c_region(pair: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    (top, col), _ = pair
    return slice(top * 3, top * 3 + 6), slice(col * 4, col * 4 + 4)


@pytest.mark.timeout(60)
def test_control_stock_zarr_threads_writing_two_chunks_of_one_shard_each_keep_one_pair() -> None:
    # Four threads each write two chunks of shard (0, 0) in one call of stock
    # zarr's plain API on a bare store, which holds every shard read until all
    # four have read: each then sets the whole shard with its own two chunks
    # only, and the last one wins. The same workload through write_chunks
    # (next test) loses nothing.
    inner = ShardReadsMeet()
    arr = new_array(inner, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS, pipeline=STOCK)
    inner.expected = C_THREADS

    def work(i: int) -> None:
        arr[_c_region(C_PAIRS[i])] = np.vstack([_whole(c, i + 1) for c in C_PAIRS[i]])

    run_together(C_THREADS, work)
    assert inner.reads == C_THREADS
    inner.expected = 0
    got = stock_read(inner)
    kept = [
        i
        for i, pair in enumerate(C_PAIRS)
        if all(np.array_equal(got[_t_region(c)], _whole(c, i + 1)) for c in pair)
    ]
    assert len(kept) == 1, kept  # three of the four batches are lost


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_the_control_workload_through_write_chunks_loses_nothing(compressor: str) -> None:
    inner = MemoryStore()
    arr = _t_array(inner, compressor)
    writer = ShardWriter(arr)

    def work(i: int) -> None:
        writer.write_chunks({c: _t_value(c, i + 1) for c in C_PAIRS[i]})

    run_together(C_THREADS, work)
    got = stock_read(inner)
    for i, pair in enumerate(C_PAIRS):
        for c in pair:
            np.testing.assert_array_equal(got[_t_region(c)], _t_value(c, i + 1))
    no_locks_left(arr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_threads_writing_overlapping_batches_leave_every_chunk_whole_from_one_writer(
    compressor: str, spy: Spy
) -> None:
    # Eight threads write every chunk of two shards, each its own values (a
    # tag per thread and round), in batches of whole shards, in orders of
    # their own. Each chunk must end as one write's whole value, never mixed.
    # Uncompressed, every shard dense and validated beforehand: every batch
    # goes in place, one lock per shard, so a shard also holds one batch's
    # chunks only (the lock makes the shard's group one write).
    arr = _t_array(MemoryStore(), compressor)
    writer = ShardWriter(arr)
    make_all_dense([writer], np.zeros(T_SHAPE, dtype="i4"), T_SHARDS)
    shard_of = {c: (c[0] // 4, c[1] // 3) for c in T_ALL}
    shards = [s for s in [(0, 0), (1, 1)]]
    groups = {s: [c for c in T_ALL if shard_of[c] == s] for s in shards}
    rounds = 4
    spy.clear()

    def work(i: int) -> None:
        rng = np.random.default_rng(i)
        for r in range(rounds):
            tag = 1 + i * rounds + r
            batch = []
            for s in rng.permutation(len(shards)):
                chunks = groups[shards[s]]
                batch += [chunks[k] for k in rng.permutation(len(chunks))]
            writer.write_chunks([(c, _t_value(c, tag)) for c in batch])

    run_together(N, work)
    got = arr[...]
    tags = {}
    for c in itertools.chain.from_iterable(groups.values()):
        found = got[_t_region(c)]
        tag = int(found.flat[0]) // 1000
        assert 1 <= tag <= N * rounds, (c, tag)
        np.testing.assert_array_equal(found, np.broadcast_to(_t_value(c, tag), found.shape))
        tags[c] = tag
    if compressor == "raw":
        assert spy.slow == []
        for s, chunks in groups.items():
            assert len({tags[c] for c in chunks}) == 1, (s, {c: tags[c] for c in chunks})
    no_locks_left(arr)


# The two races the fast paths' locks prevent, as deterministic
# interleavings: a batch is paused in the middle of writing its shard (in the
# backend's write, after it looked at the index); the other writer must wait
# until it is done. Without the lock the other writer gets in, and the end
# state shows it (a lost batch, or a batch written at stale offsets).


class _Pause:
    """Pause the first call of ``Backend.<method>`` made by thread "A" until
    :attr:`go` is set; :attr:`paused` is set when it got there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Any, method: str) -> None:
        self.paused = threading.Event()
        self.go = threading.Event()
        backend = type(store._backend)
        original = getattr(backend, method)

        def paused(self_: Any, *args: Any) -> None:
            if threading.current_thread().name == "A" and not self.paused.is_set():
                self.paused.set()
                self.go.wait(10)  # the deadline only catches a hang
            original(self_, *args)

        monkeypatch.setattr(backend, method, paused)


def _interleave(
    first: Callable[[], None], second: Callable[[], None], pause: _Pause, mgr: Any
) -> bool:
    """``first`` in thread "A" until it pauses, then ``second`` in another
    thread; whether ``second`` waited (a waiter queued on the lock table)
    rather than finished while ``first`` was paused. Both finish."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> Callable[[], None]:
        def target() -> None:
            try:
                fn()
            except BaseException as e:  # surfaced below
                errors.append(e)
            finally:
                if fn is second:
                    done.set()

        return target

    a = threading.Thread(target=run(first), name="A")
    a.start()
    wait_until(pause.paused.is_set, "the first writer is paused in its write")
    b = threading.Thread(target=run(second), name="B")
    b.start()
    wait_until(lambda: done.is_set() or mgr.stats().waiters > 0, "the second writer waits or ends")
    waited = not done.is_set()
    pause.go.set()
    a.join(10)
    b.join(10)
    assert not a.is_alive() and not b.is_alive()
    if errors:
        raise errors[0]
    return waited


@pytest.mark.timeout(60)
def test_a_batch_being_appended_holds_off_another_batch_into_its_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    # Compressed: A appends its chunks at the end of the shard's live data
    # and re-points the index, from the index it knows. B, appending into
    # the same shard meanwhile from the same index, would write at the same
    # place; whichever index is written last drops the other's chunks.
    written, plain, writer, model = _ready("memory", tmp_path, "zstd")
    store = written.store
    assert isinstance(store, RangeLockedStore)
    a_pairs = [(c, _t_value(c, 2)) for c in [(1, 0), (1, 1)]]
    b_pairs = [(c, _t_value(c, 3)) for c in [(1, 2), (2, 0)]]
    pause = _Pause(monkeypatch, store, "set_range")
    waited = _interleave(
        lambda: writer.write_chunks(a_pairs),
        lambda: writer.write_chunks(b_pairs),
        pause,
        store.lock_manager,
    )
    _plain_writes(plain, model, a_pairs + b_pairs)
    assert_same(written, plain, model)
    assert waited, "a second batch appended into a shard while another was appending"
    assert [t for *_, t in spy.appended] == [True, True]  # both appended, no pipeline
    no_locks_left(written)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunks", [3, 1])
def test_a_whole_shard_write_waits_for_a_batch_being_written_in_place(
    chunks: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    # Uncompressed: A writes its chunks at the offsets of the shard's
    # validated index. B rewrites the shard whole meanwhile, all but one
    # chunk fill, so zarr lays it out compact: A's writes, let go after,
    # would land at offsets that now hold B's data (or past the end).
    # (One chunk: write_chunk, whose lock is a single range.)
    written, plain, writer, model = _ready("memory", tmp_path, "raw")
    store = written.store
    assert isinstance(store, RangeLockedStore)
    a_pairs = [(c, _t_value(c, 2)) for c in [(0, 0), (1, 1), (3, 2)][:chunks]]
    whole = np.zeros((12, 12), dtype="i4")
    whole[6:9, 4:8] = _t_value((2, 1), 3)
    pause = _Pause(monkeypatch, store, "set_ranges")
    waited = _interleave(
        lambda: writer.write_chunks(a_pairs) if chunks > 1 else writer.write_chunk(*a_pairs[0]),
        lambda: written.__setitem__((slice(0, 12), slice(0, 12)), whole),
        pause,
        store.lock_manager,
    )
    assert waited, "a whole-shard write got in while a batch was written in place"
    assert spy.in_place == [("c/0/0", chunks, True)]
    _plain_writes(plain, model, a_pairs)
    plain[0:12, 0:12] = whole
    model[0:12, 0:12] = whole
    assert_same(written, plain, model)
    no_locks_left(written)


# ------------------------------------------------------------ durable stores


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
def test_a_batch_on_an_fsync_store_syncs_each_shard_once(
    compressor: str, tmp_path: Path, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # durability="fsync": range writes are fdatasync-ed before they return.
    # In place, a batch's chunks of one shard are one write under one lock
    # (Backend.set_ranges): one fdatasync for all of them, not one per chunk.
    # Appended (compressed): the chunks, then the index, each synced, in
    # that order (the index must not reach the disk pointing at chunks that
    # did not): two per shard, whatever the number of chunks.
    written, plain, writer, model = _ready("local", tmp_path, compressor, durability="fsync")
    syncs: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    chunks = T_ALL if compressor == "raw" else THREE_PER_SHARD
    pairs = [(c, _t_value(c, 2)) for c in chunks]
    spy.clear()
    writer.write_chunks(pairs)
    assert spy.slow == []
    per_shard = 1 if compressor == "raw" else 2
    assert len(syncs) == per_shard * len(T_SHARD_KEYS), syncs
    monkeypatch.undo()
    _plain_writes(plain, model, pairs)
    assert_same(written, plain, model)


@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("durability", ["journal", "journal-nosync"])
def test_batches_on_a_journaled_store_write_the_plain_apis_values(
    durability: str, compressor: str, tmp_path: Path, spy: Spy
) -> None:
    # Compressed chunks and their index must be one transaction: no append
    # fast path there, the pipeline's. Uncompressed dense shards: in place,
    # each chunk journaled.
    written, plain = twins("local", tmp_path, compressor, durability=durability)
    writer = ShardWriter(written)
    model = np.zeros(SHAPE, dtype="i4")
    for salt in range(3):
        pairs = [
            (c, chunk_value(c, salt) if (salt + k) % 4 else 0) for k, c in enumerate(ALL_CHUNKS)
        ]
        writer.write_chunks(pairs)
        _plain_writes(plain, model, pairs, SHAPE, CHUNKS)
        assert_same(written, plain, model)
        writer[1, 1] = salt  # partial writes: validates dense shards
        plain[1, 1] = salt
        model[1, 1] = salt
    assert spy.appended == []
    if compressor == "raw":
        assert any(taken for *_, taken in spy.in_place)
    np.testing.assert_array_equal(stock_read(LocalStore(tmp_path / "writer"), "group/array"), model)
    store = written.store
    assert isinstance(store, RangeLockedStore)
    assert store.recover() == 0  # nothing left to replay
