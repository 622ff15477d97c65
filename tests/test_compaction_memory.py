"""Compaction of compressed shards in bounded memory (issue 12), and its crash safety.

A compaction (``shards/_jobs``) rewrites a compressed shard with its live
chunks packed; the one-time dense conversion rewrites an uncompressed one.
Both name the new value as pieces (``handle.rewrite``, ``store/_rewrite``),
which a LocalStore streams through a temporary file instead of assembling
the shard in memory. Here:

* ``rewrite`` itself: the bytes equal a model's (new bytes, copies of the
  stored value, zeros between, later pieces win), on every store and
  durability mode, and bad pieces are refused naming the key;
* the values: random writes through our pipeline, with compactions, read
  back with stock zarr equal stock zarr's own writes and a numpy model;
* memory: the write that compacts a 32 MiB shard peaks below a quarter of
  the shard in traced memory (it peaked at about 4x before);
* crashes: a journaled compaction killed at each point of its commit (a
  forked child, ``ZARR_RANGELOCK_FAULT``), or while its temporary file is
  being written, recovers to all new or all old; a hand-made journal record
  naming a prepared file is replayed (renamed), recognised as applied, or
  skipped with a warning.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import shutil
import signal
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import ZstdCodec
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK
from zarr_rangelock import JournalWarning, KeyNotFoundError, RangeLockedStore, RangeNotHeldError
from zarr_rangelock.shards import _layout as L
from zarr_rangelock.shards import _placement
from zarr_rangelock.store import _rewrite
from zarr_rangelock.store._faults import FAULT_ENV, FAULT_POINTS
from zarr_rangelock.store._journal import JOURNAL_DIR
from zarr_rangelock.store._keys import is_temp_file
from zarr_rangelock.store._rewrite import Span

B = cpu.Buffer.from_bytes
MODES = ["none", "fsync", "journal", "journal-nosync"]


def _store(kind: str, root: Path) -> RangeLockedStore:
    if kind == "memory":
        return RangeLockedStore(MemoryStore())
    return RangeLockedStore(LocalStore(root), durability=kind)  # type: ignore[arg-type]


def _temp_files(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if is_temp_file(p.name)]


# ------------------------------------------------------------------ rewrite


def _model(old: bytes, size: int, pieces: list[tuple[int, bytes | Span]]) -> bytes:
    out = bytearray(size)
    for offset, src in pieces:
        data = old[src.start : src.end] if isinstance(src, Span) else src
        out[offset : offset + len(data)] = data
    return bytes(out)


@st.composite
def _rewrites(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, bytes | Span]]]:
    old = draw(st.binary(min_size=1, max_size=300))
    size = draw(st.integers(0, 400))
    pieces: list[tuple[int, bytes | Span]] = []
    for _ in range(draw(st.integers(0, 6))):
        if size == 0:
            break
        if draw(st.booleans()):
            start = draw(st.integers(0, len(old)))
            end = draw(st.integers(start, min(len(old), start + size)))
            src: bytes | Span = Span(start, end)
            n = end - start
        else:
            src = draw(st.binary(max_size=size))
            n = len(src)
        pieces.append((draw(st.integers(0, size - n)), src))
    return old, size, pieces


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["memory", *MODES])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=_rewrites())
def test_rewrite_writes_new_bytes_and_copies_of_the_stored_value_with_zeros_between(
    kind: str, case: tuple[bytes, int, list[tuple[int, bytes | Span]]]
) -> None:
    old, size, pieces = case
    with tempfile.TemporaryDirectory() as d:
        store = _store(kind, Path(d))
        store.set_sync("k/v", B(old))
        args = [(o, s if isinstance(s, Span) else B(s)) for o, s in pieces]
        with store.locked_sync("k/v", [(0, None)]) as h:
            h.rewrite(size, args)
        got = store.get_sync("k/v")
        assert got is not None and got.to_bytes() == _model(old, size, pieces)
        if kind != "memory":
            assert _temp_files(Path(d)) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", MODES)
def test_a_rewrite_failing_on_a_full_disk_says_which_file_and_leaves_it_as_it_was(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The temporary file's ftruncate fails (ENOSPC): its OSError names no
    # file; a note says which value and how large (found by a bug hunt).
    store = _store(kind, tmp_path)
    store.set_sync("k/v", B(b"old"))

    def full(fd: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "ftruncate", full)
    with pytest.raises(OSError) as info, store.locked_sync("k/v", [(0, None)]) as h:
        h.rewrite(1 << 20, [(0, Span(0, 3))])
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert any(
        "k/v" in note and "1048576 bytes" in note and "as it was" in note
        for note in getattr(info.value, "__notes__", [])
    ), info.value
    got = store.get_sync("k/v")
    assert got is not None and got.to_bytes() == b"old"
    assert _temp_files(tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", *MODES])
def test_async_rewrite_in_a_journal_transaction_is_applied_when_it_commits(
    kind: str, tmp_path: Path
) -> None:
    store = _store(kind, tmp_path)

    async def main() -> None:
        await store.set("k", B(b"abcdefgh"))
        async with store._transaction(), store.locked("k", [(0, None)]) as h:
            await h.rewrite(10, [(0, Span(4, 8)), (6, B(b"XY")), (8, Span(0, 2))])
            await h.set_range(B(b"!"), 9)  # patches the new value

    asyncio.run(main())
    got = store.get_sync("k")
    assert got is not None and got.to_bytes() == b"efgh\0\0XYa!"
    if kind != "memory":
        assert _temp_files(tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", *MODES])
def test_rewrite_refuses_pieces_that_do_not_fit_naming_the_key(kind: str, tmp_path: Path) -> None:
    store = _store(kind, tmp_path)
    store.set_sync("a/k", B(b"0123456789"))
    with store.locked_sync("a/k", [(0, None)]) as h:
        with pytest.raises(ValueError, match=r"'a/k'.*8 bytes at 5.*10 bytes"):
            h.rewrite(10, [(5, B(b"x" * 8))])
        with pytest.raises(ValueError, match=r"'a/k'.*\[4, 12\).*10 bytes"):
            h.rewrite(20, [(0, Span(4, 12))])
        with pytest.raises(ValueError, match=r"'a/k'.*\[9, 11\).*10 bytes"):
            h.rewrite(20, [(0, Span(9, 11))])  # one byte past the stored value
        for size in (-1, 2.5):
            with pytest.raises(
                ValueError, match=rf"'a/k'.*new size must be an int >= 0, got {size}"
            ):
                h.rewrite(size, [])  # type: ignore[arg-type]
    with (
        store.locked_sync("a/missing", [(0, None)]) as h,
        pytest.raises(KeyNotFoundError, match="a/missing"),
    ):
        h.rewrite(4, [(0, Span(0, 2))])
    with store.locked_sync("a/k", [(0, 4)]) as h, pytest.raises(RangeNotHeldError):
        h.rewrite(4, [(0, B(b"x"))])
    got = store.get_sync("a/k")
    assert got is not None and got.to_bytes() == b"0123456789"
    if kind != "memory":
        assert _temp_files(tmp_path) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", *MODES])
def test_rewrite_refuses_sizes_offsets_and_spans_that_are_not_ints_naming_the_key(
    kind: str, tmp_path: Path
) -> None:
    # Found by a bug hunt: a size past a file's largest offset raised
    # OverflowError ("Python int too large to convert to C long") on disk and
    # "Maximum allowed dimension exceeded" in memory, a float offset "'float'
    # object cannot be interpreted as an integer", a piece that was no pair
    # "not enough values to unpack": none named the key. A bool size was
    # taken as 1 and numpy's integers were refused as sizes.
    store = _store(kind, tmp_path)
    store.set_sync("a/k", B(b"0123456789"))
    with store.locked_sync("a/k", [(0, None)]) as h:
        with pytest.raises(ValueError, match=r"'a/k'.*new size 18446744073709551616 is past"):
            h.rewrite(1 << 64, [])
        with pytest.raises(ValueError, match=r"'a/k'.*new size must be an int >= 0, got True"):
            h.rewrite(True, [])
        with pytest.raises(TypeError, match=r"'a/k'.*piece's offset must be an int, got float"):
            h.rewrite(4, [(1.0, B(b"x"))])  # type: ignore[list-item]
        with pytest.raises(TypeError, match=r"'a/k'.*Span's start must be an int, got str"):
            h.rewrite(4, [(0, Span("0", 2))])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"'a/k'.*\(offset, Buffer or Span\) pair, got \(0,\)"):
            h.rewrite(4, [(0,)])  # type: ignore[list-item]
    got = store.get_sync("a/k")
    assert got is not None and got.to_bytes() == b"0123456789"
    assert store.lock_manager.stats().holders == 0
    if kind != "memory":
        assert _temp_files(tmp_path) == []
    with store.locked_sync("a/k", [(0, None)]) as h:  # numpy's integers are ints
        h.rewrite(np.int64(4), [(np.int32(0), Span(np.int64(2), np.uint8(6)))])  # type: ignore[list-item]
    got = store.get_sync("a/k")
    assert got is not None and got.to_bytes() == b"2345"


@pytest.mark.timeout(60)
def test_rewrite_copies_through_a_bounded_buffer_where_copy_file_range_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refused)
    monkeypatch.setattr(_rewrite, "COPY_BLOCK", 7)
    store = _store("none", tmp_path)
    old = bytes(range(200))
    store.set_sync("k", B(old))
    pieces: list[tuple[int, bytes | Span]] = [(3, Span(10, 150)), (160, Span(0, 30)), (190, b"!")]
    with store.locked_sync("k", [(0, None)]) as h:
        h.rewrite(200, [(o, s if isinstance(s, Span) else B(s)) for o, s in pieces])
    got = store.get_sync("k")
    assert got is not None and got.to_bytes() == _model(old, 200, pieces)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["copy_file_range", "buffer"])
def test_a_copy_from_a_file_that_ends_early_raises_instead_of_spinning(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stored value was checked long enough under the whole-key lock, but
    # a writer that bypasses the wrappers cut it short since: at its end
    # both copies read 0 bytes, which must end the copy with an error (a
    # loop that took 0 as progress spun forever, holding the lock).
    if how == "buffer":

        def refused(*args: Any) -> int:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refused)
    (tmp_path / "src").write_bytes(bytes(range(10)))
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError, match=r"ended at 10 while copying \[4, 40\)"):
            _rewrite._copy(src, dst, 4, 40, 0, [])
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == bytes(range(4, 10))


# ------------------------------------------------------------------ values


SHAPE, CHUNKS, SHARDS = (32, 32), (4, 4), (16, 16)


def _zstd_array(store: Any, pipeline: dict[str, str]) -> zarr.Array[Any]:
    with zarr.config.set(pipeline):
        return zarr.create_array(
            store, name="z", shape=SHAPE, chunks=CHUNKS, shards=SHARDS, dtype="i4",
            fill_value=0, compressors=ZstdCodec(level=1),
        )  # fmt: skip


@st.composite
def _writes(draw: st.DrawFn) -> list[tuple[tuple[slice, slice], int]]:
    out = []
    for _ in range(draw(st.integers(1, 40))):
        r0 = draw(st.integers(0, SHAPE[0] - 1))
        c0 = draw(st.integers(0, SHAPE[1] - 1))
        r1 = draw(st.integers(r0 + 1, min(SHAPE[0], r0 + 20)))
        c1 = draw(st.integers(c0 + 1, min(SHAPE[1], c0 + 20)))
        out.append(((slice(r0, r1), slice(c0, c1)), draw(st.integers(0, 1 << 20))))
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["memory", "none", "journal-nosync"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=_writes())
def test_random_writes_with_compactions_read_back_by_stock_zarr_as_stock_zarr_wrote_them(
    kind: str, writes: list[tuple[tuple[slice, slice], int]]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        ours = _store(kind, Path(d) / "ours")
        stock_store = MemoryStore() if kind == "memory" else LocalStore(Path(d) / "stock")
        arr = _zstd_array(ours, OURS)
        ref = _zstd_array(stock_store, STOCK)
        model = np.zeros(SHAPE, dtype="i4")
        for n, (sel, seed) in enumerate(writes):
            block = (
                np.random.default_rng(seed)
                .integers(
                    -(1 << 30), 1 << 30, (sel[0].stop - sel[0].start, sel[1].stop - sel[1].start)
                )
                .astype("i4")
            )
            if n % 5 == 4:
                block[:] = 0  # fill: chunks dropped, shards maybe deleted
            arr[sel] = block
            ref[sel] = block
            model[sel] = block
        inner = ours._store if kind == "memory" else LocalStore(Path(d) / "ours")
        with zarr.config.set(STOCK):
            back = zarr.open_array(inner, path="z", mode="r")[:]
        np.testing.assert_array_equal(back, model)
        np.testing.assert_array_equal(ref[:], model)


@pytest.mark.timeout(120)
def test_a_compaction_keeps_every_live_chunks_bytes_and_packs_them(tmp_path: Path) -> None:
    """Stock zarr's format: the compacted shard's chunks are the bytes they
    were, packed from the data start in the codec's order, then free space."""
    store = _store("none", tmp_path)
    arr = _zstd_array(store, OURS)
    rng = np.random.default_rng(3)
    arr[:] = rng.integers(0, 9, SHAPE).astype("i4")  # small chunks: the gaps they leave too
    path = tmp_path / "z" / "c" / "0" / "0"
    for _ in range(200):
        before = path.read_bytes()
        g_index = _index_of(arr, before)
        ino = path.stat().st_ino
        i, j = (int(x) for x in rng.integers(0, 4, 2))
        arr[i * 4 : i * 4 + 4, j * 4 : j * 4 + 4] = rng.integers(0, 1 << 20, (4, 4)).astype("i4")
        if path.stat().st_ino != ino:
            break
    else:
        pytest.fail("200 writes into one shard and no compaction")
    after = path.read_bytes()
    new_index = _index_of(arr, after)
    ends = []
    for c in np.ndindex(4, 4):
        if (i, j) == c:
            continue
        (o0, n0), (o1, n1) = (int(x) for x in g_index[c]), (int(x) for x in new_index[c])
        assert before[o0 : o0 + n0] == after[o1 : o1 + n1]
        ends.append((o1, o1 + n1))
    ends.append(tuple(int(x) for x in (new_index[i, j][0], new_index[i, j].sum())))
    ends.sort()
    assert ends[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(ends))


def _index_of(
    arr: zarr.Array[Any], shard: bytes, chunks: tuple[int, int] = (4, 4)
) -> np.ndarray[Any, Any]:
    """The decoded index at the end of a shard of ``chunks`` chunks (crc32c'd)."""
    n = chunks[0] * chunks[1] * 16 + 4
    return L.decode_index(arr.metadata.codecs[0], B(shard[-n:]), chunks)  # type: ignore[arg-type]


# ------------------------------------------------------------------ memory


@pytest.mark.timeout(600)
@pytest.mark.parametrize("durability", MODES)
def test_the_write_that_compacts_a_32_mib_shard_peaks_below_a_quarter_of_it_in_traced_memory(
    durability: str, tmp_path: Path
) -> None:
    """Before the rewrite streamed, this write read the shard, assembled the
    new one and set it: about 4x the shard, traced."""
    shape, inner = (4096, 8192), 256  # uint8: 32 MiB in 512 chunks of 64 KiB
    shard_bytes = shape[0] * shape[1]
    store = _store(durability, tmp_path)
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store, name="a", shape=shape, chunks=(inner, inner), shards=shape, dtype="u1",
            fill_value=0, compressors=ZstdCodec(level=1),
        )  # fmt: skip
    rng = np.random.default_rng(12)
    # 7 random bits a byte: zstd shrinks a chunk a little, so random chunks
    # (zstd cannot shrink them) outgrow the gap of the chunk they replace.
    # Every other chunk in byte order is rewritten, so no two of those gaps
    # touch: the new chunks go after the data until the free space runs out.
    arr[:] = rng.integers(0, 128, shape, dtype="u1")
    path = tmp_path / "a" / "c" / "0" / "0"
    assert path.stat().st_size > shard_bytes  # the data and free space
    grid = (shape[0] // inner, shape[1] // inner)
    index = _index_of(arr, path.read_bytes(), grid)
    stored = sorted(np.ndindex(grid), key=lambda c: int(index[c][0]))
    peak = -1
    tracemalloc.start()
    try:
        for i, j in stored[::2]:
            block = rng.integers(0, 256, (inner, inner), dtype="u1")
            ino = path.stat().st_ino
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            arr[i * inner : (i + 1) * inner, j * inner : (j + 1) * inner] = block
            if path.stat().st_ino != ino:  # this write compacted the shard
                peak = tracemalloc.get_traced_memory()[1] - base
                break
    finally:
        tracemalloc.stop()
    assert peak >= 0, f"{len(stored) // 2} writes of whole chunks and no compaction"
    print(f"durability={durability}: the compaction peaked at {peak / 2**20:.2f} MiB traced")
    assert peak < shard_bytes / 4, (peak, shard_bytes)
    assert _temp_files(tmp_path) == []


# ------------------------------------------------------------------ crashes


CRASH_SHAPE, CRASH_CHUNK, CRASH_SHARD = (256, 512), 32, (256, 256)


def _fork(child: Any) -> int:
    """Run ``child()`` in a forked process; -signal or the exit code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with zarr's loop thread
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            child()
            os._exit(0)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _crash_array(store: Any, create: bool = False) -> zarr.Array[Any]:
    with zarr.config.set(OURS):
        if not create:
            return zarr.open_array(store, path="a", mode="r+")
        return zarr.create_array(
            store, name="a", shape=CRASH_SHAPE, chunks=(CRASH_CHUNK, CRASH_CHUNK),
            shards=CRASH_SHARD, dtype="u1", fill_value=0, compressors=ZstdCodec(level=1),
        )  # fmt: skip


def _stock_values(root: Path) -> np.ndarray[Any, Any]:
    with zarr.config.set(STOCK):
        values = zarr.open_array(LocalStore(root, read_only=True), path="a", mode="r")[:]
    assert isinstance(values, np.ndarray)
    return values


Write = tuple[tuple[slice, slice], np.ndarray[Any, Any]]


def _compacting_setup(
    root: Path, durability: str, both: bool
) -> tuple[Write, np.ndarray[Any, Any]]:
    """A store whose next write (returned, with the values before it)
    compacts shard ``c/0/0``: its chunk ``(i, 7)`` and, if ``both``, chunk
    ``(i, 0)`` of shard ``c/0/1``, which only appends."""
    rng = np.random.default_rng(7)
    store = _store(durability, root)
    arr = _crash_array(store, create=True)
    # One random bit a byte: small chunks. The random bytes written next
    # (zstd cannot shrink them) do not fit the gaps those leave, so they
    # fill the free space, and shard c/0/0 gets ahead: it compacts first.
    arr[:] = rng.integers(0, 2, CRASH_SHAPE, dtype="u1")
    c = CRASH_CHUNK
    for _ in range(5):
        i = int(rng.integers(0, 8))
        arr[i * c : (i + 1) * c, 0:c] = rng.integers(0, 256, (c, c), dtype="u1")
    plan: list[Write] = []
    for _ in range(200):
        i = int(rng.integers(0, 8))
        cols = slice(7 * c, 9 * c if both else 8 * c)
        plan.append(
            (
                (slice(i * c, (i + 1) * c), cols),
                rng.integers(0, 256, (c, 2 * c if both else c), "u1"),
            )
        )
    # Where does it compact? Find out on a copy.
    scratch = root.parent / f"{root.name}-scratch"
    shutil.copytree(root, scratch, ignore=shutil.ignore_patterns(JOURNAL_DIR))
    a, b = scratch / "a" / "c" / "0" / "0", scratch / "a" / "c" / "0" / "1"
    copy = _crash_array(_store("none", scratch))
    for k in range(len(plan)):  # k: the compacting write, used after the loop
        sel, block = plan[k]
        inodes = a.stat().st_ino, b.stat().st_ino
        copy[sel] = block
        if a.stat().st_ino != inodes[0]:
            assert b.stat().st_ino == inodes[1], "both shards compacted at once"
            break
    else:
        pytest.fail("no compaction in 200 writes")
    shutil.rmtree(scratch)
    for sel, block in plan[:k]:
        arr[sel] = block
    return plan[k], _stock_values(root)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("both", [False, True], ids=["lone", "with-another-shard"])
@pytest.mark.parametrize("fault", FAULT_POINTS)
@pytest.mark.parametrize("durability", ["journal", "journal-nosync"])
def test_a_journaled_compaction_killed_at_a_commit_point_recovers_all_new(
    durability: str, fault: str, both: bool, tmp_path: Path
) -> None:
    """Alone, the compaction's rename is its commit point (the hooks fire
    after it); with another shard's append it is one record naming the
    prepared file, which replay renames (or finds renamed)."""
    root = tmp_path / "store"
    (sel, block), old = _compacting_setup(root, durability, both)
    new = old.copy()
    new[sel] = block

    def child() -> None:
        os.environ[FAULT_ENV] = fault
        _crash_array(_store(durability, root))[sel] = block

    assert _fork(child) == -signal.SIGKILL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", JournalWarning)
        _store(durability, root).recover()
    assert [w for w in caught if issubclass(w.category, JournalWarning)] == []
    np.testing.assert_array_equal(_stock_values(root), new)
    # A kill before the record is retired leaves the old file's link aside (as
    # for any whole-value op): a stray, hidden, removed once old.
    assert len(_temp_files(root)) <= (1 if fault == "before-retire" and both else 0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("both", [False, True], ids=["lone", "with-another-shard"])
@pytest.mark.parametrize("durability", ["none", "journal", "journal-nosync"])
def test_a_compaction_killed_while_writing_its_temporary_file_leaves_the_shard_all_old(
    durability: str, both: bool, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    (sel, block), old = _compacting_setup(root, durability, both)

    def child() -> None:
        real = _rewrite._copy

        def dying(src: int, dst: int, start: int, end: int, offset: int, buf: Any) -> None:
            real(src, dst, start, start + (end - start) // 2, offset, buf)
            os.kill(os.getpid(), signal.SIGKILL)

        _rewrite._copy = dying  # type: ignore[assignment]
        _crash_array(_store(durability, root))[sel] = block

    assert _fork(child) == -signal.SIGKILL
    store = _store(durability, root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", JournalWarning)
        if durability != "none":
            store.recover()
    assert [w for w in caught if issubclass(w.category, JournalWarning)] == []
    # Without a journal a write is all or nothing per shard only: the other
    # shard's append may have landed before the kill.
    cols = slice(None) if durability != "none" else slice(0, CRASH_SHARD[1])
    np.testing.assert_array_equal(_stock_values(root)[:, cols], old[:, cols])
    left = _temp_files(root)
    assert len(left) == 1  # a stray, removed once old (_durable.STRAY_TEMP_AGE_S)
    assert not any(is_temp_file(k) for k in asyncio.run(_keys(store)))


async def _keys(store: RangeLockedStore) -> list[str]:
    return [k async for k in store.list()]


# ------------------------------------------------------------------ replay


def _record(ops: list[tuple[bytes, str, int, bytes]]) -> bytes:
    body = b""
    for kind, key, start, data in ops:
        kb = key.encode()
        body += struct.pack("<cHQQ", kind, len(kb), start, len(data)) + kb + data
    head = b"ZRLJNL01" + struct.pack("<QQI", len(body), 1, google_crc32c.value(body))
    return head + struct.pack("<I", google_crc32c.value(head)) + body


def _dead_journal(root: Path, raw: bytes) -> None:
    d = root / JOURNAL_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / "4194999-0123456789abcdef.jnl").write_bytes(raw)


TEMP = ".0123456789abcdef0123456789abcdef.partial"


@pytest.mark.timeout(60)
def test_replay_renames_a_prepared_file_that_a_complete_record_names(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "k").mkdir(parents=True)
    (root / "k" / "v").write_bytes(b"old")
    (root / "k" / f"v{TEMP}").write_bytes(b"new value")
    ino = (root / "k" / f"v{TEMP}").stat().st_ino
    _dead_journal(root, _record([(b"F", "k/v", ino, f"k/v{TEMP}".encode())]))
    store = RangeLockedStore(LocalStore(root), durability="journal")
    assert store.recover() == 0  # the store's opening replayed it already
    assert (root / "k" / "v").read_bytes() == b"new value"
    assert _temp_files(root) == [] and os.listdir(root / JOURNAL_DIR) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("applied", [True, False])
def test_replay_of_a_prepared_file_that_is_gone_skips_it_warning_unless_it_was_renamed(
    tmp_path: Path, applied: bool
) -> None:
    root = tmp_path / "store"
    (root / "k").mkdir(parents=True)
    (root / "k" / "v").write_bytes(b"now")
    ino = (root / "k" / "v").stat().st_ino if applied else 1
    _dead_journal(root, _record([(b"F", "k/v", ino, f"k/v{TEMP}".encode())]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", JournalWarning)
        RangeLockedStore(LocalStore(root), durability="journal")
    msgs = [str(w.message) for w in caught if issubclass(w.category, JournalWarning)]
    if applied:
        assert msgs == []
    else:
        assert len(msgs) == 1 and "k/v" in msgs[0] and "gone" in msgs[0]
    assert (root / "k" / "v").read_bytes() == b"now"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("control", [False, True], ids=["dead-gap", "control-own-bytes"])
def test_a_writer_killed_before_its_index_leaves_a_compressed_shard_as_it_was(
    control: bool, tmp_path: Path
) -> None:
    """A forked writer (``durability="none"``) killed after writing a new
    chunk into the shard and before rewriting the index: the chunk went into
    a dead gap, so stock zarr reads the shard as it was. The control lets
    the placement count the replaced chunk's own bytes as dead (the smallest
    gap then, at the lowest offset): the same kill leaves the shard reading
    other values than before."""
    root = tmp_path / "store"
    arr = _crash_array(_store("none", root), create=True)
    rng = np.random.default_rng(4)
    arr[:] = rng.integers(0, 256, CRASH_SHAPE, dtype="u1")  # random: chunks of one size
    c = CRASH_CHUNK
    arr[c : 2 * c, c : 2 * c] = rng.integers(0, 256, (c, c), "u1")  # chunk (1, 1): a dead gap
    old = _stock_values(root)
    path = root / "a" / "c" / "0" / "0"
    before = path.read_bytes()
    block = rng.integers(0, 256, (c, c), "u1")

    def child() -> None:
        if control:
            real = L.dead_space

            def own_bytes_dead(index: Any, g: Any) -> Any:
                freed = index.copy()
                freed[0, 0] = L.EMPTY  # chunk (0, 0), the one written: its bytes count as dead
                return (*real(index, g)[:2], *real(freed, g)[2:])

            L.dead_space = own_bytes_dead  # type: ignore[assignment]
            _placement._GAPS.clear()  # (else the gaps the parent's write kept are used)

        async def die(*args: Any) -> Any:
            os._exit(0)  # the chunk is written, the index not yet

        L.encode_index_async = die  # type: ignore[assignment]
        _crash_array(_store("none", root))[0:c, 0:c] = block
        os._exit(3)  # not reached: the write did not get to its index

    assert _fork(child) == 0
    after = path.read_bytes()
    assert len(after) == len(before) and after != before  # written in place, not compacted
    if control:
        assert not np.array_equal(_stock_values(root), old)
    else:
        np.testing.assert_array_equal(_stock_values(root), old)
