"""The pipeline trusts a shard index it validated earlier only while the
store's change token for the key is unchanged (no whole-value write since).

The race narrated: our pipeline writes a chunk in place (index cached); then
stock zarr rewrites the same shard whole through the same wrapper, in a
compact layout where the chunks sit at other offsets; then our pipeline
writes another chunk. It must notice the rewrite and not write at the old
offsets (which would corrupt a neighbouring chunk).

Also with other processes: one that writes through the wrapper (its change
stamp tells), and one that rewrites a shard with stock zarr on a bare
LocalStore (no stamp: the file's identity tells), with its control, the
caches trusting the stamp alone, which must read or write by the old index.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from tests._processes import child_env
from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards import _dense as D
from zarr_rangelock.shards import _known
from zarr_rangelock.shards._layout import ShardGeometry

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The arguments of every ``ShardWriter._write_slow`` call (a write
    through the pipeline) from now on; the writes still happen."""
    calls: list[object] = []
    real = ShardWriter._write_slow

    def write_slow(self: ShardWriter, *args: Any) -> None:
        calls.append(args)
        real(self, *args)

    monkeypatch.setattr(ShardWriter, "_write_slow", write_slow)
    return calls


def _peeks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key of every index read as a guess (``_DenseJob._peek``) from now
    on; the reads still happen."""
    reads: list[str] = []
    real = D._DenseJob._peek

    async def peek(self: D._DenseJob) -> _known._Peek | None:
        reads.append(self.key)
        return await real(self)

    monkeypatch.setattr(D._DenseJob, "_peek", peek)
    return reads


def _assert_stock_reads(root: object, model: np.ndarray) -> None:
    """Stock zarr (default pipeline, bare LocalStore) reads ``model`` at ``root``."""
    with zarr.config.set(STOCK):
        np.testing.assert_array_equal(zarr.open_array(LocalStore(str(root)), mode="r")[:], model)


def _a_dense_shard_with_a_validated_index(
    kind: str, tmp_path: object
) -> tuple[MemoryStore | LocalStore, RangeLockedStore, zarr.Array[Any]]:
    """A 16 x 16 array of one shard of 4 x 4 chunks on a wrapped ``kind``
    store, 8 of its 16 chunks holding 1 (the dense layout) and chunk (2, 0)
    then written 2 in place, which leaves the shard's index cached as valid;
    the inner store, the wrapper and the array (our pipeline)."""
    inner = MemoryStore() if kind == "memory" else LocalStore(str(tmp_path))
    store = RangeLockedStore(inner)
    ours = new_array(store, shape=(16, 16), shards=(16, 16), chunks=(4, 4), pipeline=OURS)
    ours[0:8, :] = 1  # 8 of 16 chunks hold data: the dense layout
    ours[8:12, 0:4] = 2  # in place; the index is now cached as valid
    # this store's entry (the cache is global: other tests' shards are named c/0/0 too)
    assert (store._state.uid, "c/0/0") in {k[:2] for k in _known._VALID}
    return inner, store, ours


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_whole_shard_rewrite_by_another_writer_invalidates_the_cached_index(
    kind: str, tmp_path: object
) -> None:
    inner, store, _ = _a_dense_shard_with_a_validated_index(kind, tmp_path)
    model = np.zeros((16, 16), "i4")
    model[0:8, :] = 1
    model[8:12, 0:4] = 2

    with zarr.config.set(STOCK):
        stock = zarr.open_array(store, mode="r+")
        # Whole shard, mostly fill value: stock zarr writes a compact shard
        # holding only the non-empty chunks, at offsets other than ours.
        new = np.zeros((16, 16), "i4")
        new[12:16, 12:16] = 7
        stock[:, :] = new
    model[:, :] = new

    with zarr.config.set(OURS):
        ours = zarr.open_array(store, mode="r+")
        ours[8:12, 8:12] = 5
    model[8:12, 8:12] = 5

    with zarr.config.set(STOCK):
        back = zarr.open_array(inner, mode="r")[:]
    np.testing.assert_array_equal(back, model)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_whole_shard_rewrite_by_another_writer_invalidates_the_index_a_read_trusts(
    kind: str, tmp_path: object
) -> None:
    # As above, with a read after the rewrite: our reader of a dense shard
    # takes the validated index without reading it while the token is
    # unchanged. After stock zarr's compact rewrite chunk (1, 1) sits at
    # another offset; at its old one, inside the shard, are chunk (3, 3)'s
    # bytes. (A read reaching past the shorter shard would fall back to zarr.)
    _, store, ours = _a_dense_shard_with_a_validated_index(kind, tmp_path)
    with zarr.config.set(OURS):
        np.testing.assert_array_equal(ours[8:12, 0:4], 2)

    new = np.zeros((16, 16), "i4")
    new[4:8, 4:16] = 3  # three chunks, mostly fill: compact, at other offsets
    new[12:16, 12:16] = 7
    with zarr.config.set(STOCK):
        zarr.open_array(store, mode="r+")[:, :] = new

    with zarr.config.set(OURS):
        ours = zarr.open_array(store, mode="r")
        np.testing.assert_array_equal(ours[4:8, 4:8], 3)
        np.testing.assert_array_equal(ours[:], new)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_whole_shard_rewrite_by_another_writer_invalidates_the_index_an_edge_write_trusts(
    kind: str, tmp_path: object
) -> None:
    # As above, for an edge chunk (one the array's edge clips), which
    # ShardWriter merges into a dense shard in place at the offset the
    # validated index gives: after stock zarr's compact rewrite that offset
    # lies in other bytes of the shard (here its index).
    inner = MemoryStore() if kind == "memory" else LocalStore(str(tmp_path))
    store = RangeLockedStore(inner)
    ours = new_array(store, shape=(14, 14), shards=(16, 16), chunks=(4, 4), pipeline=OURS)
    ours[0:8, :] = 1  # 8 of 16 chunks hold data: the dense layout
    writer = ShardWriter(ours)
    writer.write_chunk((3, 0), np.full((2, 4), 2, dtype="i4"))  # in place, index validated
    assert (store._state.uid, "c/0/0") in {k[:2] for k in _known._VALID}

    model = np.zeros((14, 14), "i4")
    model[4:8, 4:14] = 3  # three chunks, mostly fill: compact, at other offsets
    model[12:14, 12:14] = 7
    with zarr.config.set(STOCK):
        zarr.open_array(store, mode="r+")[:, :] = model

    writer.write_chunk((3, 0), np.full((2, 4), 5, dtype="i4"))
    model[12:14, 0:4] = 5
    with zarr.config.set(STOCK):
        np.testing.assert_array_equal(zarr.open_array(inner, mode="r")[:], model)


def test_set_range_does_not_change_the_token_but_set_and_delete_do() -> None:
    store = RangeLockedStore(MemoryStore())
    state = store._state
    store.set_sync("k", cpu.Buffer.from_bytes(bytes(8)))
    t0 = state.generation("k")
    store.set_range_sync("k", cpu.Buffer.from_bytes(b"ab"), 2)
    assert state.generation("k") == t0
    store.set_sync("k", cpu.Buffer.from_bytes(bytes(8)))
    t1 = state.generation("k")
    assert t1 != t0
    store.delete_sync("k")
    assert state.generation("k") != t1


@pytest.mark.parametrize("how", ["overwrite", "delete_dir", "clear"])
@pytest.mark.parametrize("kind", ["memory", "local-in-process"])
def test_a_prefix_delete_invalidates_the_indexes_of_every_key_under_it(
    kind: str, how: str, tmp_path: Path
) -> None:
    # A writer knows its dense shard's index; the array is then removed by a
    # prefix operation (zarr's create_array(overwrite=True) calls delete_dir)
    # and made again. Without cross-process stamps the change token is this
    # process's epoch: left as it was, the writer trusted the removed shard's
    # index and raised KeyNotFoundError (set_range into a missing key)
    # where it should make the shard anew.
    if kind == "memory":
        store = RangeLockedStore(MemoryStore(), dense_shards=True)
    else:
        store = RangeLockedStore(LocalStore(tmp_path), dense_shards=True, cross_process=False)

    def made() -> zarr.Array[Any]:
        return new_array(
            store, name="a", shape=(8,), chunks=(2,), shards=(8,), pipeline=OURS, overwrite=True
        )

    writer = ShardWriter(made())
    writer.write_chunk((0,), np.array([1, 1], "i4"))
    writer.write_chunk((1,), np.array([2, 2], "i4"))  # in place, by the known index
    if how == "delete_dir":
        zarr.core.sync.sync(store.delete_dir("a"))
    elif how == "clear":
        zarr.core.sync.sync(store.clear())
    arr = made()
    writer = ShardWriter(arr)
    writer.write_chunk((1,), np.array([3, 3], "i4"))
    np.testing.assert_array_equal(arr[:], [0, 0, 3, 3, 0, 0, 0, 0])


@pytest.mark.parametrize("durability", ["none", "fsync", "journal"])
def test_a_shard_laid_out_densely_is_known_at_once_so_the_next_chunk_needs_no_index_read(
    tmp_path: object, durability: str, monkeypatch: pytest.MonkeyPatch, slow_writes: list[object]
) -> None:
    """A write that lays a shard out densely (here a whole-array write) keeps
    the index it wrote, under the key's stamp after its commit: the next
    one-chunk write goes in place without reading the index, and
    ``ShardWriter.write_chunk`` takes its fast path at once."""
    store = RangeLockedStore(LocalStore(str(tmp_path)), durability=durability)
    with zarr.config.set(OURS):
        arr = new_array(store, shape=(16, 16), shards=(8, 8), chunks=(4, 4), compressors=None)
        arr[:] = 3
    reads = _peeks(monkeypatch)
    with zarr.config.set(OURS):
        arr[0:4, 0:4] = 5  # through the pipeline: the kept index, not a peek
        ShardWriter(arr).write_chunk((3, 3), np.full((4, 4), 6, "i4"))
    assert reads == []
    assert slow_writes == []
    model = np.full((16, 16), 3, "i4")
    model[0:4, 0:4] = 5
    model[12:16, 12:16] = 6
    _assert_stock_reads(tmp_path, model)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_compact_shard_this_process_wrote_is_not_peeked_before_its_whole_key_lock(
    kind: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard this process left compact (too few chunks to lay it out
    densely) cannot be written in place: the next write takes the whole-key
    lock without first reading the index as a guess (``_known.left_compact``);
    one written by another wrapper (its stamp changed) is peeked again."""
    inner = MemoryStore() if kind == "memory" else LocalStore(str(tmp_path))
    store = RangeLockedStore(inner)
    with zarr.config.set(OURS):
        arr = new_array(store, shape=(16, 16), shards=(16, 16), chunks=(4, 4), compressors=None)
        arr[0:4, 0:4] = 1  # one chunk of 16: compact
    reads = _peeks(monkeypatch)
    with zarr.config.set(OURS):
        arr[4:8, 0:4] = 2
        arr[0:2, 4:8] = 3  # a partial chunk too
    assert reads == []
    with zarr.config.set(STOCK):  # a whole-value write the stamp records
        zarr.open_array(store, mode="r+")[12:16, 12:16] = 4
    with zarr.config.set(OURS):
        arr[8:12, 0:4] = 5
    assert reads == ["c/0/0"]
    model = np.zeros((16, 16), "i4")
    model[0:4, 0:4], model[4:8, 0:4], model[0:2, 4:8] = 1, 2, 3
    model[12:16, 12:16], model[8:12, 0:4] = 4, 5
    np.testing.assert_array_equal(arr[:], model)


_OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    import numpy as np, zarr
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore, ShardWriter
    root, how = sys.argv[1:3]
    with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
        arr = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r+")
        n = arr.chunks[0]
        if how == "plain":  # chunk 1, appended
            arr[n : 2 * n] = 2
        elif how == "writer":  # the same through a ShardWriter
            ShardWriter(arr).write_chunk((1,), np.full(n, 2, dtype="i4"))
        elif how == "compacting":  # chunk 1, too big for the free space
            values = np.random.default_rng(1).integers(0, 2**31, n, dtype="i4")
            ShardWriter(arr).write_chunk((1,), values)
            print(values.tolist())
        else:  # "densifying": chunks 1 to 3, enough to lay the shard out densely
            ShardWriter(arr).write_chunks({(c,): np.full(n, 2, dtype="i4") for c in (1, 2, 3)})
    """
)


def _in_another_process(root: object, how: str) -> str:
    """Run ``_OTHER_PROCESS`` on ``root`` in a new interpreter; what it printed."""
    env = child_env()
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(root), how],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
        env=env,
    )
    return done.stdout


@pytest.mark.parametrize("how", ["plain", "writer"])
def test_an_append_by_another_process_invalidates_the_index_this_one_keeps(
    how: str, tmp_path: Path
) -> None:
    # This process makes a compressed shard and keeps its index; another
    # process appends chunk 1 and re-points the index in place (no
    # whole-value write: only the stamp it gives the key tells); this process
    # then appends chunk 2. From the index it kept, chunk 2 would land on
    # chunk 1's bytes and the index written would not name chunk 1.
    store = RangeLockedStore(LocalStore(str(tmp_path)))
    arr = new_array(
        store, shape=(16,), chunks=(4,), shards=(16,), pipeline=OURS, compressors=ZstdCodec()
    )
    writer = ShardWriter(arr)

    def write(chunk: int, value: int) -> None:
        if how == "plain":
            arr[4 * chunk : 4 * chunk + 4] = value
        else:
            writer.write_chunk((chunk,), np.full(4, value, dtype="i4"))

    write(0, 1)  # makes the shard, compact: this process keeps its index
    assert (store._state.uid, "c/0") in {k[:2] for k in _known._INDEXES}
    _in_another_process(tmp_path, how)
    write(2, 3)
    model = np.zeros(16, "i4")
    model[0:4], model[4:8], model[8:12] = 1, 2, 3
    _assert_stock_reads(tmp_path, model)


@pytest.mark.parametrize("how", ["compacting", "densifying"])
def test_a_shard_writers_rewrite_in_another_process_invalidates_the_index_this_one_keeps(
    how: str, tmp_path: Path
) -> None:
    # This process makes a compact shard and keeps its index; a ShardWriter
    # in another process rewrites the shard whole, compacted with a chunk
    # too big for its free space (zstd) or laid out densely (no
    # compression); this process then writes chunk 4. From the index it
    # kept, it would append after data that has moved and write that index
    # over the new shard's bytes.
    store = RangeLockedStore(LocalStore(str(tmp_path)))
    compressors = ZstdCodec() if how == "compacting" else None
    n = 256 if how == "compacting" else 4  # values per chunk (16 chunks a shard)
    arr = new_array(
        store,
        shape=(16 * n,),
        chunks=(n,),
        shards=(16 * n,),
        pipeline=OURS,
        compressors=compressors,
    )
    arr[0:n] = 1  # one chunk of 16: compact, and this process keeps its index
    assert (store._state.uid, "c/0") in {k[:2] for k in _known._INDEXES}
    printed = _in_another_process(tmp_path, how)
    arr[4 * n : 5 * n] = 5
    model = np.zeros(16 * n, "i4")
    model[0:n], model[4 * n : 5 * n] = 1, 5
    if how == "compacting":
        model[n : 2 * n] = json.loads(printed)
    else:
        model[n : 4 * n] = 2
    _assert_stock_reads(tmp_path, model)


def test_a_dense_layout_written_by_a_call_that_failed_is_not_kept(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call lays out two shards; the second fails. The call did not
    commit, so the first shard's index is not trusted either (in a journaled
    store it would not even be written)."""
    from zarr_rangelock.store._backends import LocalBackend

    store = RangeLockedStore(LocalStore(str(tmp_path)))
    with zarr.config.set(OURS):
        arr = new_array(store, shape=(8, 16), shards=(8, 8), chunks=(4, 4), compressors=None)
    real = LocalBackend.rewrite_value

    async def fail_second(self: LocalBackend, key: str, *args: Any, **kwargs: Any) -> None:
        if key == "c/0/1":
            raise OSError(28, "No space left on device")
        await real(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalBackend, "rewrite_value", fail_second)
    with zarr.config.set(OURS), pytest.raises(OSError, match="No space"):
        arr[:] = 3
    kept = {k[:2] for k in _known._VALID}
    assert (store._state.uid, "c/0/1") not in kept
    assert (store._state.uid, "c/0/0") not in kept


@pytest.mark.parametrize("compressor", ["raw", "zstd"])
def test_a_writer_that_knows_no_index_of_a_shard_reads_it_instead_of_running_the_pipeline(
    tmp_path: object, compressor: str, slow_writes: list[object]
) -> None:
    """A process that has not written a shard yet (here: the caches emptied)
    reads and checks its index under a lock, then writes the chunks of a
    batch together, or one chunk: no pipeline run (which would write them
    one by one)."""
    store = RangeLockedStore(LocalStore(str(tmp_path)))
    with zarr.config.set(OURS):
        arr = new_array(
            store,
            shape=(16, 16),
            shards=(8, 8),
            chunks=(4, 4),
            compressors=None if compressor == "raw" else [ZstdCodec(level=1)],
        )
        arr[:] = 3
    _known._VALID.clear()
    _known._INDEXES.clear()
    batch = {(0, 0): np.full((4, 4), 5, "i4"), (1, 1): np.full((4, 4), 6, "i4")}
    with zarr.config.set(OURS):
        ShardWriter(arr).write_chunks(batch)
    assert slow_writes == []
    _known._VALID.clear()
    _known._INDEXES.clear()
    with zarr.config.set(OURS):  # one chunk alike
        ShardWriter(arr).write_chunk((2, 2), np.full((4, 4), 7, "i4"))
    assert slow_writes == []
    model = np.full((16, 16), 3, "i4")
    model[0:4, 0:4] = 5
    model[4:8, 4:8] = 6
    model[8:12, 8:12] = 7
    _assert_stock_reads(tmp_path, model)


def test_the_indexes_the_shard_writer_keeps_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every index this process keeps for compact shards goes through one
    bounded store (``_known.remember_index``), the ``ShardWriter``'s appends
    and compactions too: with the bound at two shards' worth, three shards
    written leave at most two kept, and the values stay right."""
    _known._INDEXES.clear()
    monkeypatch.setattr(_known, "CACHE_BYTES", 2 * _known.entry_bytes(16))  # shards of 16 chunks
    store = RangeLockedStore(MemoryStore())
    with zarr.config.set(OURS):
        arr = new_array(
            store, shape=(16, 48), shards=(16, 16), chunks=(4, 4), compressors=ZstdCodec()
        )
    writer = ShardWriter(arr)
    model = np.zeros((16, 48), "i4")
    for k in range(3):  # three shards, each made and then appended to
        for c in range(2):
            value = np.full((4, 4), 10 * k + c + 1, "i4")
            writer.write_chunk((0, 4 * k + c), value)
            model[0:4, 16 * k + 4 * c : 16 * k + 4 * c + 4] = value
    assert 0 < len(_known._INDEXES) <= 2
    np.testing.assert_array_equal(arr[:], model)


def _index_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key of every shard whose index a ``ShardWriter`` reads and checks
    before writing a chunk in place (``ShardWriter._validate``) from now on."""
    keys: list[str] = []
    real = ShardWriter._validate

    def validate(self: ShardWriter, key: str, *args: Any) -> bool:
        keys.append(key)
        return real(self, key, *args)

    monkeypatch.setattr(ShardWriter, "_validate", validate)
    return keys


def _many_shards(tmp_path: object, rows: int) -> tuple[zarr.Array[Any], np.ndarray]:
    """A dense array of ``rows`` x 40 shards of 2x2 chunks of 1x1 (int8),
    every chunk written (one write, its locks across processes holding one
    lock-file description, see ``test_hardening_descriptors``), and its
    model."""
    store = RangeLockedStore(LocalStore(str(tmp_path)))
    arr = new_array(
        store, shape=(2 * rows, 80), shards=(2, 2), chunks=(1, 1), dtype="i1", pipeline=OURS
    )
    with zarr.config.set(OURS):
        arr[:] = 1
    return arr, np.ones((2 * rows, 80), "i1")


def test_a_writer_of_more_shards_than_a_thousand_reads_each_index_once(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexes kept are bounded by chunks, not by shards: a writer of an
    array of 1,200 small shards that writes a chunk of each, then another
    chunk of each, reads every shard's index once, for the first. (Kept by
    the number of shards, 1,024 at most and emptied when full, it read most
    of them again: each read costs several chunk writes.)"""
    _known._VALID.clear()
    arr, model = _many_shards(tmp_path, 30)
    _known._VALID.clear()  # as in a process that has met none of them
    reads = _index_reads(monkeypatch)
    writer = ShardWriter(arr)
    for within in [(0, 0), (1, 1)]:
        for i in range(30):
            for j in range(40):
                coords = (2 * i + within[0], 2 * j + within[1])
                writer.write_chunk(coords, np.full((1, 1), i + j, "i1"))
                model[coords] = i + j
    # (the writer's first chunk goes through the pipeline, which reads its
    # shard's index there)
    assert len(set(reads)) >= 30 * 40 - 1
    assert len(reads) == len(set(reads)), "an index was read twice"
    _assert_stock_reads(tmp_path, model)


def test_the_indexes_kept_for_in_place_writes_are_bounded_by_chunks(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bound at ten shards' worth (of 4 chunks), a writer of 120 shards
    keeps at most ten of their indexes, drops the oldest first (the last
    shard written is kept), reads an index again once it was dropped, and
    writes the right values."""
    monkeypatch.setattr(_known, "CACHE_BYTES", 10 * _known.entry_bytes(4))
    arr, model = _many_shards(tmp_path, 3)
    _known._VALID.clear()
    reads = _index_reads(monkeypatch)
    writer = ShardWriter(arr)
    uid = arr.store._state.uid  # type: ignore[attr-defined]
    for i in range(3):
        for j in range(40):
            writer.write_chunk((2 * i, 2 * j), np.full((1, 1), 7, "i1"))
            model[2 * i, 2 * j] = 7
            assert 0 < len(_known._VALID) <= 10
    assert (uid, "c/2/39") in {k[:2] for k in _known._VALID}
    assert (uid, "c/0/0") not in {k[:2] for k in _known._VALID}
    writer.write_chunk((1, 1), np.full((1, 1), 9, "i1"))  # c/0/0 once more
    model[1, 1] = 9
    assert reads.count("c/0/0") == 2
    _assert_stock_reads(tmp_path, model)


def test_room_is_made_by_what_an_entry_costs() -> None:
    """``_known._make_room``: a new entry for a shard of ``n`` chunks finds at
    most ``CACHE_BYTES // entry_bytes(n)`` entries before it (the oldest go,
    an eighth at a time); a key already there makes no room; entries for
    smaller shards may exceed what a larger one allows, and the larger one's
    insert brings the cache back under its own bound. Shards of one chunk
    are not free: about 73,000 of them fill a cache (925 bytes each, measured)."""
    cache: dict[Any, Any] = {}
    cap = _known.CACHE_BYTES // _known.entry_bytes(4096)
    for k in range(cap):
        _known._make_room(cache, k, 4096)
        cache[k] = k
    assert len(cache) == cap
    _known._make_room(cache, 0, 4096)  # already there: nothing goes
    assert len(cache) == cap
    _known._make_room(cache, "new", 4096)
    assert len(cache) == cap - cap // 8
    assert 0 not in cache and cap - 1 in cache  # the oldest went
    for k in range(cap, 2 * cap):  # entries for small shards
        _known._make_room(cache, ("small", k), 4)
        cache[("small", k)] = k
    assert len(cache) > cap
    _known._make_room(cache, "large", 4096)
    assert len(cache) < cap


@pytest.mark.parametrize("chunks", [1, 4, 256])
def test_what_an_entry_is_counted_to_cost_is_what_it_takes(chunks: int) -> None:
    """``_known.entry_bytes`` against tracemalloc: 2,000 entries (200 of the
    largest) of ``_VALID``'s shape (key, stamp, a peek with its offsets worked out) for
    shards of ``chunks`` chunks take within a third of what they are
    counted to (what this test's lines and ``_known`` allocated: other
    threads and collections of earlier tests' objects do not count)."""
    g = ShardGeometry((chunks, 1), "end", 16 * chunks + 4, 8)
    n = 2000 if chunks < 256 else 200
    where = [tracemalloc.Filter(True, __file__), tracemalloc.Filter(True, _known.__file__)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(where)
        cache: dict[Any, Any] = {}
        for k in range(n):
            index = np.empty((chunks, 1, 2), np.uint64)
            index[..., 0] = np.arange(chunks).reshape(chunks, 1) * 65536 + 2**20
            index[..., 1] = 65536
            peek = _known._Peek(
                size=2**30, index_bytes=index.tobytes() + bytes(4), index=index, writable=True
            )
            assert peek.offsets
            cache[(123456789, f"data/c/{k}/{k % 97}", g)] = ((k, k + 1), peek)
        after = tracemalloc.take_snapshot().filter_traces(where)
    finally:
        tracemalloc.stop()
    taken = sum(d.size_diff for d in after.compare_to(before, "filename")) / n
    assert 0.67 < taken / _known.entry_bytes(chunks) < 1.33, taken


def _stock_history(compressors: Any) -> np.ndarray:
    """The values stock zarr alone leaves after the steps of the test below
    (our writes, the bare writes, ours again), on a store of its own."""
    with zarr.config.set(STOCK):
        arr = new_array(
            MemoryStore(), shape=(8, 8), shards=(4, 8), chunks=(2, 2), compressors=compressors
        )
        for i in range(4):
            arr[2 * i : 2 * i + 2, :] = i + 1
        arr[0:2, 0:4] = 0
        arr[2, 7] = 99
        arr[2:4, 4:6] = 55
        return arr[:]


@pytest.mark.parametrize("how", ["plain", "writer"])
@pytest.mark.parametrize("layout", ["dense", "zstd"])
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_shard_stock_zarr_rewrote_through_the_bare_store_is_read_and_written_by_its_new_index(
    kind: str, layout: str, how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our writes leave each shard's index in this process's caches (dense:
    # validated; zstd: as the last append left it), under the key's change
    # stamp. Then stock zarr rewrites the shards through the *bare* store
    # (the same dict, the same root; a viewer, zarr's own test strategies),
    # which changes no stamp: chunk (0, 0) and (0, 1) dropped as fill, the
    # rest at other offsets. Our next read and write must go by the new
    # index: by the cached one, the read gave other chunks' (or the
    # index's) bytes and the write merged them into the shard for good.
    # A LocalStore's file is re-checked at most every 10 ms (as a write's
    # descriptor is): the clock is moved past that instead of sleeping.
    from zarr_rangelock.store import _backends

    clock = [0.0]
    monkeypatch.setattr(_backends, "_monotonic", lambda: clock[0])
    inner = MemoryStore() if kind == "memory" else LocalStore(str(tmp_path))
    compressors = ZstdCodec() if layout == "zstd" else None
    store = RangeLockedStore(inner, dense_shards=layout == "dense")
    ours = new_array(
        store, shape=(8, 8), shards=(4, 8), chunks=(2, 2), compressors=compressors, pipeline=OURS
    )
    for i in range(4):
        ours[2 * i : 2 * i + 2, :] = i + 1
    np.testing.assert_array_equal(ours[:], np.repeat(np.arange(1, 5, dtype="i4"), 16).reshape(8, 8))
    ours[0:2, 6:8] = 1  # again, in place: a MemoryStore's value became our copy
    kept = {k[:2] for k in (*_known._VALID, *_known._INDEXES)}
    assert (store._state.uid, "c/0/0") in kept

    with zarr.config.set(STOCK):
        bare = zarr.open_array(inner, mode="r+")
        bare[0:2, 0:4] = 0
        bare[2, 7] = 99
        after_bare = bare[:]
    clock[0] += 1.0

    np.testing.assert_array_equal(ours[:], after_bare)
    if how == "plain":
        ours[2:4, 4:6] = 55
    else:
        ShardWriter(ours).write_chunk((1, 2), np.full((2, 2), 55, dtype="i4"))
    expected = _stock_history(compressors)
    np.testing.assert_array_equal(ours[:], expected)
    with zarr.config.set(STOCK):
        np.testing.assert_array_equal(zarr.open_array(inner, mode="r")[:], expected)


_BARE_STOCK_PROCESS = textwrap.dedent(
    """
    import json, sys
    import zarr
    from zarr.storage import LocalStore
    bare = zarr.open_array(LocalStore(sys.argv[1]), mode="r+")  # zarr's default pipeline
    bare[0:2, 0:4] = 0  # chunks (0, 0) and (0, 1) become fill: dropped from the shard
    bare[2, 7] = 99
    # (zarr_rangelock is imported, as zarr loads the entry points of its codec
    # pipelines, but neither its store nor its pipeline is used here)
    assert type(bare._async_array.codec_pipeline).__module__.startswith("zarr.")
    print(json.dumps(bare[:].tolist()))
    """
)


def _our_writes_around_a_bare_stock_rewrite_in_another_process(
    layout: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[np.ndarray, dict[str, Any]]:
    """The steps of the test below: our writes of an 8 x 8 array (shards of
    4 x 8, chunks of 2 x 2, ``layout`` "dense" or "zstd") through the
    wrapper, leaving shard c/0/0's index in this process's caches; the
    rewrite by stock zarr through a bare LocalStore in another process; then
    our read of the array and our write of chunk (1, 2) = 55. Returns the
    model (what stock zarr wrote, then our chunk) and what was seen: our
    read after the rewrite, ours and stock zarr's after our write (or the
    exception a step raised, under "error")."""
    from zarr_rangelock.store import _backends

    # A cached descriptor's path is re-checked at most every 10 ms: the
    # clock stands still until the other process is done, then moves past
    # the window (no sleep, and no re-check by chance while it writes).
    clock = [0.0]
    monkeypatch.setattr(_backends, "_monotonic", lambda: clock[0])
    compressors = ZstdCodec() if layout == "zstd" else None
    store = RangeLockedStore(LocalStore(str(root)), dense_shards=layout == "dense")
    ours = new_array(
        store, shape=(8, 8), shards=(4, 8), chunks=(2, 2), compressors=compressors, pipeline=OURS
    )
    for i in range(4):
        ours[2 * i : 2 * i + 2, :] = i + 1
    ShardWriter(ours).write_chunk((0, 3), np.full((2, 2), 1, dtype="i4"))  # again, in place
    kept = _known._VALID if layout == "dense" else _known._INDEXES
    assert (store._state.uid, "c/0/0") in {k[:2] for k in kept}

    env = child_env()
    done = subprocess.run(
        [sys.executable, "-c", _BARE_STOCK_PROCESS, str(root)],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
        env=env,
    )
    model = np.array(json.loads(done.stdout), dtype="i4")
    clock[0] += 1.0

    seen: dict[str, Any] = {}
    try:
        seen["read"] = ours[:]
        ShardWriter(ours).write_chunk((1, 2), np.full((2, 2), 55, dtype="i4"))
        seen["ours after"] = ours[:]
        with zarr.config.set(STOCK):
            seen["stock after"] = zarr.open_array(LocalStore(str(root)), mode="r")[:]
    except Exception as e:  # the control's cached index may give bytes that do not decode
        seen["error"] = e
    return model, seen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", ["dense", "zstd"])
def test_a_shard_stock_zarr_rewrote_in_another_process_is_read_and_written_by_its_new_index(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process version of the test above. This process writes the array
    # through the wrapper, which leaves shard c/0/0's index in its caches
    # (dense: validated; zstd: as its last append left it), under the key's
    # change stamp. Another process, stock zarr on a bare LocalStore, then
    # rewrites the shard: a new file renamed over ours, chunks (0, 0) and
    # (0, 1) dropped as fill, the rest at other offsets; no stamp records
    # it. 10 ms later on this process's clock, our read and our write of
    # chunk (1, 2) must go by the new index.
    model, seen = _our_writes_around_a_bare_stock_rewrite_in_another_process(
        layout, tmp_path, monkeypatch
    )
    expected = np.repeat(np.arange(1, 5, dtype="i4"), 16).reshape(8, 8)
    expected[0:2, 0:4] = 0
    expected[2, 7] = 99
    np.testing.assert_array_equal(model, expected)  # what the other process read back
    assert "error" not in seen, seen.get("error")
    np.testing.assert_array_equal(seen["read"], model)
    model[2:4, 4:6] = 55
    np.testing.assert_array_equal(seen["ours after"], model)
    np.testing.assert_array_equal(seen["stock after"], model)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", ["dense", "zstd"])
def test_the_control_without_the_value_identity_check_reads_or_writes_that_shard_by_its_old_index(
    layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test above with the caches trusting the stamp alone (a LocalStore
    # value always taken for the one an index was read from): it must go
    # wrong, which shows that the test above can see the old index used.
    from zarr_rangelock.store import _backends

    monkeypatch.setattr(_backends.LocalBackend, "same_value", lambda self, key, ident: True)
    model, seen = _our_writes_around_a_bare_stock_rewrite_in_another_process(
        layout, tmp_path, monkeypatch
    )
    print({k: v.tolist() if isinstance(v, np.ndarray) else repr(v) for k, v in seen.items()})
    if layout == "dense":
        # By the old offsets: other chunks' bytes (and the index's) read, and
        # chunk (1, 2) written where chunk (1, 3) now is, for good.
        assert not np.array_equal(seen["read"], model)
        model[2:4, 4:6] = 55
        assert not np.array_equal(seen["stock after"], model)
    else:  # the old ranges now cut across other chunks' compressed bytes
        assert "decompression error" in repr(seen.get("error"))
