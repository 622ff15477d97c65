"""Range writes copied into mappings of the files: ``RangeLockedStore(..., map_writes=True)``.

What the option promises (the store's docstring, the README): every range
write the ``pwrite`` path would make is copied into a shared mapping of the
file instead, with the same bytes afterwards, the same errors, the same
locks; the bytes are seen by every reader (this process's, the bare
store's, other processes': ``tests/test_processes.py``); a mapping lives and
dies with its cached descriptor, is never closed under a copy, and counts
against the descriptor budget; ranges the mapping cannot take go through
``pwrite``. The lock is what keeps a copy whole for readers: shown with a
copy paused halfway, and (the control) the same copy without the lock torn.
Threads are ordered with events, never with sleeps.
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import random
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from tests import test_store_conformance_local as local
from tests._fds import FakeClock, cached, fake_clock, has_holes, sparse_file
from tests._threads import run_threads, run_together, wait_until
from tests._writer_helpers import check_random_steps
from tests.test_shard_writer import Case, writes_of
from tests.test_shard_writer import _cases as writer_cases
from zarr_rangelock import RangeLockedStore, ShardWriter, _fallocate
from zarr_rangelock._errors import RangeOutOfBoundsError
from zarr_rangelock.locks import _fdbudget
from zarr_rangelock.locks._mounts import filesystem_type
from zarr_rangelock.store import _backends, _fdcache
from zarr_rangelock.store._backends import unlocked_set_range_sync

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd"
    ),
    pytest.mark.timeout(60),
]

B = cpu.Buffer.from_bytes
KEY = "arr/c/0"
SIZE = 64


@pytest.fixture(autouse=True)
def _collect_earlier_garbage() -> None:
    """As in tests/test_store_fd_cache.py: earlier tests' garbage holds
    descriptors, which a collection during a count would close."""
    gc.collect()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return fake_clock(monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RangeLockedStore]:
    s = RangeLockedStore(LocalStore(tmp_path / "root"), map_writes=True)
    s.set_sync(KEY, B(bytes(SIZE)))
    yield s
    s.close()


def on_disk(store: RangeLockedStore, key: str = KEY) -> bytes:
    inner = store._store
    assert isinstance(inner, LocalStore)
    return (inner.root / key).read_bytes()


def copies_and_pwrites(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """From now on, ``(start, length)`` of every copy into a mapping and of
    every ``pwrite`` of value bytes, in two lists."""
    copies: list[tuple[int, int]] = []
    pwrites: list[tuple[int, int]] = []
    copy, pwrite = _backends._write_mapped, _backends._write_range

    def counted_copy(mapping: mmap.mmap, data: memoryview, start: int) -> None:
        copies.append((start, len(data)))
        copy(mapping, data, start)

    def counted_pwrite(target: Any, data: memoryview, start: int) -> None:
        pwrites.append((start, len(data)))
        pwrite(target, data, start)

    monkeypatch.setattr(_backends, "_write_mapped", counted_copy)
    monkeypatch.setattr(_backends, "_write_range", counted_pwrite)
    return copies, pwrites


# ------------------------------------------------------------ the option


def test_map_writes_needs_a_local_store_with_durability_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="map_writes=True needs a LocalStore: a MemoryStore"):
        RangeLockedStore(MemoryStore(), map_writes=True)
    for durability in ("fsync", "journal", "journal-nosync"):
        with pytest.raises(ValueError, match=f"durability={durability!r}"):
            RangeLockedStore(
                LocalStore(tmp_path / durability),
                durability=durability,  # type: ignore[arg-type]
                map_writes=True,
            )
    assert not RangeLockedStore(MemoryStore(), map_writes=False).map_writes


def test_map_writes_is_kept_by_copies_and_pickles_and_shown_by_repr(
    store: RangeLockedStore,
) -> None:
    assert store.map_writes
    assert repr(store).endswith(", map_writes=True)")
    assert store.with_read_only(True).map_writes
    again = pickle.loads(pickle.dumps(store))
    assert again.map_writes
    again.set_range_sync(KEY, B(b"\x05"), 1)
    assert on_disk(store)[:2] == b"\x00\x05"
    plain = RangeLockedStore(LocalStore(store._store.root))  # type: ignore[attr-defined]
    assert not plain.map_writes and not repr(plain).endswith("map_writes=True)")


# ----------------------------------------------------- where bytes go


def test_a_range_write_is_copied_into_the_mapping_and_every_reader_sees_it(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies, pwrites = copies_and_pwrites(monkeypatch)
    store.set_range_sync(KEY, B(b"\x11" * 8), 4)
    store.set_range_sync(KEY, B(b"\x22" * 4), SIZE - 4)
    assert copies == [(4, 8), (SIZE - 4, 4)] and pwrites == []
    expected = bytes(4) + b"\x11" * 8 + bytes(SIZE - 16) + b"\x22" * 4
    assert on_disk(store) == expected  # a fresh open and read: the page cache
    got = store.get_sync(KEY)
    assert got is not None and got.to_bytes() == expected
    bare = LocalStore(store._store.root).get_sync(KEY)  # type: ignore[attr-defined]
    assert bare is not None and bare.to_bytes() == expected
    (entry,) = cached(store).values()
    assert entry.map is not None and len(entry.map) == SIZE


def test_without_map_writes_range_writes_are_pwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = RangeLockedStore(LocalStore(tmp_path / "plain"))
    plain.set_sync(KEY, B(bytes(SIZE)))
    copies, pwrites = copies_and_pwrites(monkeypatch)
    plain.set_range_sync(KEY, B(b"\x11" * 8), 4)
    assert copies == [] and pwrites == [(4, 8)]
    (entry,) = cached(plain).values()
    assert entry.map is None


def test_ranges_the_mapping_cannot_take_are_pwritten(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Longer than ``MAP_WRITE_MAX``, or past the file's size when it was
    mapped (the file grew since, behind the wrappers' backs): ``pwrite``."""
    monkeypatch.setattr(_backends, "MAP_WRITE_MAX", 8)
    copies, pwrites = copies_and_pwrites(monkeypatch)
    store.set_range_sync(KEY, B(b"\x01" * 9), 0)
    store.set_range_sync(KEY, B(b"\x02" * 8), 16)
    assert pwrites == [(0, 9)] and copies == [(16, 8)]
    with open(store._store.root / KEY, "ab") as f:  # type: ignore[attr-defined]
        f.write(b"\x33" * 16)
    clock.advance_past_the_recheck()  # the entry learns the new size
    store.set_range_sync(KEY, B(b"\x04" * 4), SIZE + 4)  # beyond the mapping
    store.set_range_sync(KEY, B(b"\x05" * 4), SIZE - 2)  # across its end
    store.set_range_sync(KEY, B(b"\x06" * 2), SIZE - 2)  # inside it
    assert pwrites[1:] == [(SIZE + 4, 4), (SIZE - 2, 4)] and copies[1:] == [(SIZE - 2, 2)]
    expected = bytearray(b"\x01" * 9 + bytes(SIZE - 9) + b"\x33" * 16)
    expected[16:24] = b"\x02" * 8
    expected[SIZE + 4 : SIZE + 8] = b"\x04" * 4
    expected[SIZE - 2 : SIZE + 2] = b"\x05" * 4
    expected[SIZE - 2 : SIZE] = b"\x06" * 2
    assert on_disk(store) == bytes(expected)


def test_several_ranges_in_one_call_go_to_the_mapping_or_pwrite_each(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``set_ranges`` (the shard writer's batch path): each range by itself."""
    monkeypatch.setattr(_backends, "MAP_WRITE_MAX", 8)
    copies, pwrites = copies_and_pwrites(monkeypatch)
    writes = [(0, memoryview(b"\x01" * 4)), (8, memoryview(b"\x02" * 12)), (30, memoryview(b""))]
    with store._mgr.lock(KEY):
        store._backend.set_ranges(KEY, writes)
    assert copies == [(0, 4)] and pwrites == [(8, 12)]
    assert on_disk(store)[:20] == b"\x01" * 4 + bytes(4) + b"\x02" * 12
    with store._mgr.lock(KEY), pytest.raises(RangeOutOfBoundsError):
        store._backend.set_ranges(KEY, [(0, memoryview(b"\x07")), (SIZE, memoryview(b"\x07"))])
    assert on_disk(store)[0] == 1  # nothing written: every range checked first


def test_a_file_that_cannot_be_mapped_is_pwritten(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> mmap.mmap:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(_fdcache.mmap, "mmap", refused)
    copies, pwrites = copies_and_pwrites(monkeypatch)
    store.set_range_sync(KEY, B(b"\x09" * 3), 1)
    assert copies == [] and pwrites == [(1, 3)]
    assert on_disk(store)[:4] == b"\x00\x09\x09\x09"
    (entry,) = cached(store).values()
    assert entry.map is None
    monkeypatch.undo()
    empty = store._store.root / "empty"  # type: ignore[attr-defined]
    empty.write_bytes(b"")
    with open(empty, "r+b") as f:
        assert _fdcache.map_file(f.fileno(), 0) is None  # nothing to map (mmap refuses)


@pytest.mark.parametrize("durability", ["none", "fsync"])
def test_a_wrapper_without_map_writes_pwrites_into_a_file_another_wrapper_mapped(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    """The root's descriptors are shared by its wrappers in the process; the
    option is the wrapper's, not the descriptor's: the other wrapper (the
    durable one too, which refuses the option) keeps ``pwrite``."""
    store.set_range_sync(KEY, B(b"\x11"), 0)  # mapped now
    (entry,) = cached(store).values()
    assert entry.map is not None
    other = RangeLockedStore(LocalStore(store._store.root), durability=durability)  # type: ignore[attr-defined,arg-type]
    copies, pwrites = copies_and_pwrites(monkeypatch)
    other.set_range_sync(KEY, B(b"\x22"), 1)
    assert copies == [] and pwrites == [(1, 1)]
    assert list(cached(other).values()) == [entry]  # through the same descriptor
    store.set_range_sync(KEY, B(b"\x33"), 2)
    assert copies == [(2, 1)]
    assert on_disk(store)[:4] == b"\x11\x22\x33\x00"
    got = store.get_sync(KEY)
    assert got is not None and got.to_bytes()[:4] == b"\x11\x22\x33\x00"


def test_a_file_first_opened_without_map_writes_is_pwritten_until_its_descriptor_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    plain = RangeLockedStore(LocalStore(root))
    plain.set_sync(KEY, B(bytes(SIZE)))
    plain.set_range_sync(KEY, B(b"\x11"), 0)  # opened unmapped
    mapping = RangeLockedStore(LocalStore(root), map_writes=True)
    copies, pwrites = copies_and_pwrites(monkeypatch)
    mapping.set_range_sync(KEY, B(b"\x22"), 1)
    assert copies == [] and pwrites == [(1, 1)]
    plain.close()  # closes the root's cached descriptors
    mapping.set_range_sync(KEY, B(b"\x33"), 2)
    assert copies == [(2, 1)] and pwrites == [(1, 1)]
    assert on_disk(mapping)[:4] == b"\x11\x22\x33\x00"
    mapping.close()


# ------------------------------------------- holes and copy-on-write


def fallocates(monkeypatch: pytest.MonkeyPatch, result: int | None) -> list[tuple[int, int, int]]:
    """From now on, ``(mode, offset, length)`` of every ``fallocate`` made;
    ``result``: what it returns instead of calling libc (None: call it)."""
    calls: list[tuple[int, int, int]] = []
    real = _fallocate._fallocate
    assert real is not None, "libc has fallocate64 (glibc, on every Linux here)"

    def counted(fd: int, mode: int, offset: int, length: int) -> int:
        calls.append((mode, offset, length))
        return real(fd, mode, offset, length) if result is None else result

    monkeypatch.setattr(_fallocate, "_fallocate", counted)
    return calls


def test_a_file_with_holes_has_them_allocated_before_it_is_mapped(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (A copy into a page over a hole on a full disk would kill the process
    # with SIGBUS; a file with no hole can only meet errors of the device.)
    size = 1 << 20
    path = store._store.root / "sparse"  # type: ignore[attr-defined]
    sparse_file(path, size)
    calls = fallocates(monkeypatch, None)
    copies, pwrites = copies_and_pwrites(monkeypatch)
    store.set_range_sync("sparse", B(b"\x22" * 8), size // 2)
    assert calls == [(_fallocate.FALLOC_FL_KEEP_SIZE, 0, size)]
    assert copies == [(size // 2, 8)] and pwrites == []
    assert not has_holes(path)
    assert os.stat(path).st_size == size
    expected = b"\x01" + bytes(size // 2 - 1) + b"\x22" * 8 + bytes(size // 2 - 8)
    assert path.read_bytes() == expected


def test_a_file_without_holes_is_mapped_without_fallocate(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fallocates(monkeypatch, None)
    copies, _ = copies_and_pwrites(monkeypatch)
    store.set_range_sync(KEY, B(b"\x11"), 0)  # set_sync wrote every byte of it
    assert calls == [] and copies == [(0, 1)]


@pytest.mark.parametrize("fallocate", ["fails", "missing"])
def test_a_file_whose_holes_cannot_be_allocated_is_pwritten(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch, fallocate: str
) -> None:
    """The disk full already (``fallocate`` fails), or no ``fallocate`` in
    libc: not mapped, written with ``pwrite``, which reports a full disk as
    ``OSError``."""
    size = 1 << 20
    path = store._store.root / "sparse"  # type: ignore[attr-defined]
    sparse_file(path, size)
    if fallocate == "fails":
        calls = fallocates(monkeypatch, -1)
    else:
        calls = []
        monkeypatch.setattr(_fallocate, "_fallocate", None)
    copies, pwrites = copies_and_pwrites(monkeypatch)
    store.set_range_sync("sparse", B(b"\x22" * 8), size // 2)
    assert copies == [] and pwrites == [(size // 2, 8)]
    # (fails: the mapping's allocation of every hole, then, before the
    # pwrite, the written range's, which fails too, not with ENOSPC: the
    # pwrite goes ahead; _backends._reserve)
    keep = _fallocate.FALLOC_FL_KEEP_SIZE
    expected = [(keep, 0, size), (keep, size // 2, 8)] if fallocate == "fails" else []
    assert calls == expected
    (entry,) = [e for e in cached(store).values() if e.path.endswith("sparse")]
    assert entry.map is None
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 8, size // 2) == b"\x22" * 8


@pytest.mark.parametrize("fs", ["btrfs", "zfs", "bcachefs", None])
def test_nothing_is_mapped_on_a_copy_on_write_or_unknown_file_system_and_a_warning_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fs: str | None
) -> None:
    """Every overwrite there may need a new block, hole or not (None: no
    /proc/self/mountinfo to tell). The option is kept as asked."""
    asked: list[str] = []

    def fake_type(path: str) -> str | None:
        asked.append(path)
        return fs

    monkeypatch.setattr(_backends, "filesystem_type", fake_type)
    root = tmp_path / "root"
    with pytest.warns(RuntimeWarning, match="map_writes=True has no effect") as caught:
        s = RangeLockedStore(LocalStore(root), map_writes=True)
    (warning,) = caught
    assert os.fspath(root) in str(warning.message)
    assert (fs or "unknown") in str(warning.message)
    assert warning.filename == __file__  # points at the caller
    assert asked == [os.fspath(root)]
    assert s.map_writes and "map_writes=True" in repr(s)
    with warnings.catch_warnings():  # the root's answer is kept: not asked, nor said, again
        warnings.simplefilter("error")
        again = RangeLockedStore(LocalStore(root), map_writes=True)
        copy = pickle.loads(pickle.dumps(again)).with_read_only()
    assert asked == [os.fspath(root)]
    assert not again._backend.mapped and not copy._backend.mapped  # type: ignore[attr-defined]
    s.set_sync(KEY, B(bytes(SIZE)))
    copies, pwrites = copies_and_pwrites(monkeypatch)
    s.set_range_sync(KEY, B(b"\x11"), 3)
    assert copies == [] and pwrites == [(3, 1)]
    (entry,) = cached(s).values()
    assert entry.map is None
    s.close()


def test_the_file_system_of_the_temporary_directory_maps_without_a_warning(
    tmp_path: Path,
) -> None:
    # (The premise of every test here that expects a copy.)
    fs = filesystem_type(os.fspath(tmp_path))
    assert _backends.why_not_mapped(os.fspath(tmp_path)) is None, f"on {fs!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RangeLockedStore(LocalStore(tmp_path / "root"), map_writes=True).close()


# ------------------------------------------------------- lifetimes


def test_a_replaced_file_is_mapped_anew_and_the_old_mapping_closed(
    store: RangeLockedStore, clock: FakeClock
) -> None:
    store.set_range_sync(KEY, B(b"\x11"), 0)
    (first,) = cached(store).values()
    store.set_sync(KEY, B(b"\x55" * (2 * SIZE)))  # the wrapper's own replace
    assert first.dead and first.map is not None and first.map.closed
    store.set_range_sync(KEY, B(b"\x22"), 2 * SIZE - 1)
    (second,) = cached(store).values()
    assert second.map is not None and len(second.map) == 2 * SIZE
    assert on_disk(store) == b"\x55" * (2 * SIZE - 1) + b"\x22"
    store._store.set_sync(KEY, B(b"\x66" * SIZE))  # the bare store's replace
    clock.advance_past_the_recheck()
    store.set_range_sync(KEY, B(b"\x33"), 0)
    assert second.map.closed
    assert on_disk(store) == b"\x33" + b"\x66" * (SIZE - 1)


def test_zarrs_own_store_replaces_a_mapped_file_and_never_shortens_it(
    store: RangeLockedStore, clock: FakeClock
) -> None:
    """What makes ``map_writes`` safe beside the bare store (the README):
    zarr's ``LocalStore.set`` of a shorter value renames a new file over the
    old one, so the mapped file keeps its size, and a copy made within the
    descriptor's re-check window lands in it (a file shortened in place
    would have killed this process with SIGBUS here)."""
    store.set_range_sync(KEY, B(b"\x11"), 0)
    (entry,) = cached(store).values()
    store._store.set_sync(KEY, B(b"\x55" * 4))
    assert os.fstat(entry.fd).st_size == SIZE
    store.set_range_sync(KEY, B(b"\xee" * 8), SIZE - 8)  # within the window: the old file
    assert on_disk(store) == b"\x55" * 4
    assert entry.map is not None and entry.map[SIZE - 8 :] == b"\xee" * 8
    clock.advance_past_the_recheck()
    with pytest.raises(RangeOutOfBoundsError):
        store.set_range_sync(KEY, B(b"\xee" * 8), SIZE - 8)
    assert entry.dead and entry.map.closed


def test_a_mapping_in_use_is_closed_only_after_its_copy(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer pauses inside its copy while the main thread flushes the
    # cache (as close() or an eviction would): the mapping and descriptor
    # stay open until the copy is done, then both are closed.
    store.set_range_sync(KEY, B(b"\x00"), 0)
    (entry,) = cached(store).values()
    copying, flushed = threading.Event(), threading.Event()
    real = _backends._write_mapped

    def paused(mapping: mmap.mmap, data: memoryview, start: int) -> None:
        copying.set()
        assert flushed.wait(10)
        real(mapping, data, start)

    monkeypatch.setattr(_backends, "_write_mapped", paused)
    writer = threading.Thread(target=lambda: store.set_range_sync(KEY, B(b"\x77" * 4), 4))
    writer.start()
    assert copying.wait(10)
    store._state.fds.close()
    assert entry.dead and entry.map is not None and not entry.map.closed
    flushed.set()
    writer.join(10)
    assert not writer.is_alive()
    assert entry.map.closed
    assert on_disk(store)[4:8] == b"\x77" * 4


def _open_files_under(root: Path) -> int:
    """This process's open descriptors of files under ``root`` but its lock file."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # (closed meanwhile, or the listing's own)
            continue
        n += target.startswith(f"{root}/") and not target.endswith("/.zarr-rangelock")
    return n


def test_mappings_count_against_the_process_descriptor_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``mmap`` keeps a descriptor of its own (Python 3.12), a mapped
    entry counts twice: with a budget of 8, at most 8 descriptors stay open
    however many files are written, and closing gives all of them back."""
    monkeypatch.setattr(_fdbudget, "cache_budget", lambda soft=None: 8)
    # Only this root's files are counted: the budget is the process's, so
    # these writes also evict (close) earlier tests' cached descriptors
    # (426 == 430 in CI after the interrupt-point tests).
    root = tmp_path / "root"

    def open_fds() -> int:
        return _open_files_under(root)

    before = open_fds()
    store = RangeLockedStore(LocalStore(root), map_writes=True)
    keys = [f"k/{i}" for i in range(20)]
    for key in keys:
        store.set_sync(key, B(bytes(SIZE)))
    entries = []
    for key in keys:
        store.set_range_sync(key, B(b"\x01"), 0)
        entries.extend(e for e in cached(store).values() if e not in entries)
        assert open_fds() - before <= 8
        assert store._state.fds.held() <= 8
    per_entry = 2 if _fdcache.MAP_DUPS else 1
    assert len(cached(store)) == 8 // per_entry
    assert store._state.fds.held() == 8
    assert all(e.map is not None for e in entries)
    store.close()
    assert all(e.map is not None and e.map.closed for e in entries)
    assert open_fds() == before
    assert all(on_disk(store, key)[0] == 1 for key in keys)


def test_the_bytes_mapped_at_once_are_capped_and_files_past_the_cap_are_pwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages written through a mapping count in the process's resident size
    while mapped (``benchmarks/map_writes_rss.py``), so at most
    ``MAP_BYTES_MAX`` of files are mapped at once: here two files' worth."""
    monkeypatch.setattr(_fdcache, "MAP_BYTES_MAX", _fdcache._mapped + 2 * SIZE)
    store = RangeLockedStore(LocalStore(tmp_path / "root"), map_writes=True)
    keys = ["a", "b", "c", "d"]
    for key in keys:
        store.set_sync(key, B(bytes(SIZE)))
    copies, pwrites = copies_and_pwrites(monkeypatch)
    for key in keys[:3]:
        store.set_range_sync(key, B(b"\x01"), 0)
    assert len(copies) == 2 and len(pwrites) == 1
    assert [cached(store)[p].map is not None for p in sorted(cached(store))] == [True, True, False]
    store.set_sync("a", B(bytes(SIZE)))  # a's mapping goes with its file: room for one
    store.set_range_sync("d", B(b"\x01"), 0)
    assert len(copies) == 3 and len(pwrites) == 1
    before = _fdcache._mapped - 2 * SIZE
    store.close()
    assert _fdcache._mapped == before
    assert all(on_disk(store, key)[0] == (key != "a") for key in keys)


# ------------------------------------------------------ concurrency


def _half_copied_read(
    store: RangeLockedStore, write: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> bytes:
    """Run ``write`` (one copy of SIZE bytes of 0xEE over zeros) in a thread
    whose copy stops halfway until a reader thread has either read the key
    or queued for its lock; return what the reader read."""
    real = _backends._write_mapped
    half, resume = threading.Event(), threading.Event()

    def halves(mapping: mmap.mmap, data: memoryview, start: int) -> None:
        n = len(data) // 2
        real(mapping, data[:n], start)
        half.set()
        assert resume.wait(10)
        real(mapping, data[n:], start + n)

    monkeypatch.setattr(_backends, "_write_mapped", halves)
    read: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        assert half.wait(10)
        got = store.get_sync(KEY)
        assert got is not None
        read.append(got.to_bytes())
        done.set()

    def release() -> None:
        # Resume the copy once the reader has read (no lock) or is waiting
        # for the writer's lock (locked).
        assert half.wait(10)
        wait_until(
            lambda: done.is_set() or store._mgr.stats().waiters > 0, "the reader read or queued"
        )
        resume.set()

    run_threads(write, reader, release)
    return read[0]


def test_a_reader_never_sees_a_mapped_copy_half_done(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _half_copied_read(
        store, lambda: store.set_range_sync(KEY, B(b"\xee" * SIZE), 0), monkeypatch
    )
    assert got == b"\xee" * SIZE  # it waited for the whole copy


def test_control_without_the_lock_a_reader_sees_a_mapped_copy_half_done(
    store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same copy through the unlocked control path, on the mapped
    # wrapper's backend (patched in, as the store's own would be used).
    monkeypatch.setattr(_backends, "_prepare_unlocked", _through(store))
    got = _half_copied_read(
        store,
        lambda: unlocked_set_range_sync(store._store, KEY, B(b"\xee" * SIZE), 0),
        monkeypatch,
    )
    assert got == b"\xee" * (SIZE // 2) + bytes(SIZE // 2)  # torn


def _through(store: RangeLockedStore) -> Callable[..., Any]:
    """``_prepare_unlocked`` that hands out ``store``'s own (mapping) backend."""
    real = _backends._prepare_unlocked

    def prepare(inner: Any, key: str, value: Any, start: int) -> Any:
        _, key, data, start = real(inner, key, value, start)
        return store._backend, key, data, start

    return prepare


@pytest.mark.timeout(120)
def test_threads_writing_ranges_of_shared_files_through_mappings_lose_nothing(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    store = RangeLockedStore(LocalStore(tmp_path / "root"), map_writes=True)
    keys = [f"k/{i}" for i in range(6)]
    size, nthreads, per_thread = 4096, 4, 400
    for key in keys:
        store.set_sync(key, B(bytes(size)))
    model = {key: bytearray(size) for key in keys}
    lock = threading.Lock()

    def work(t: int) -> None:
        rng = random.Random(seed + t)
        for i in range(per_thread):
            key = rng.choice(keys)
            # thread t owns every nthreads-th block of 16 bytes
            block = rng.randrange(size // 16 // nthreads) * nthreads + t
            n = rng.randint(1, 16)
            value = bytes([(t * 37 + i) % 255 + 1]) * n
            store.set_range_sync(key, B(value), block * 16)
            with lock:
                model[key][block * 16 : block * 16 + n] = value

    run_together(nthreads, work)
    for key in keys:
        assert on_disk(store, key) == bytes(model[key]), key
    store.close()


# --------------------------------------- against pwrite, on random input


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 200)),
        st.tuples(st.just("range"), st.integers(0, 220), st.integers(0, 40)),
        st.tuples(st.just("delete")),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, seed=st.integers(0, 1 << 16))
def test_random_writes_through_mappings_and_through_pwrite_leave_the_same_bytes_and_errors(
    ops: list[tuple[Any, ...]], seed: int
) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="maptests-") as tmp:
        stores = [
            RangeLockedStore(LocalStore(Path(tmp) / "mapped"), map_writes=True),
            RangeLockedStore(LocalStore(Path(tmp) / "pwrite")),
        ]
        model: bytes | None = None
        for op in ops:
            data = bytes(rng.randrange(256) for _ in range(op[1] if op[0] == "set" else 0))
            outcomes = []
            for s in stores:
                try:
                    if op[0] == "set":
                        s.set_sync(KEY, B(data))
                    elif op[0] == "range":
                        s.set_range_sync(KEY, B(bytes([op[2] % 256]) * op[2]), op[1])
                    else:
                        s.delete_sync(KEY)
                    outcomes.append(None)
                except Exception as e:
                    outcomes.append((type(e), str(e).replace("mapped", "pwrite")))
            note(f"{op} -> {outcomes[0]}")
            assert outcomes[0] == outcomes[1]
            if op[0] == "set":
                model = data
            elif op[0] == "delete":
                model = None
            elif outcomes[0] is None and model is not None:
                start, n = op[1], op[2]
                model = model[:start] + bytes([n % 256]) * n + model[start + n :]
            values = [s.get_sync(KEY) for s in stores]
            assert [None if v is None else v.to_bytes() for v in values] == [model, model]
        for s in stores:
            s.close()


# ------------------------------------- ShardWriter, against the plain API


@pytest.mark.parametrize("compressor", ["raw", "zstd"])
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=writer_cases())
def test_random_writes_through_a_writer_on_a_mapped_store_match_the_plain_api(
    compressor: str, case: Case
) -> None:
    """``test_shard_writer``'s random writes (``write_chunk``, whole chunks,
    any selection), the writer's wrapper with ``map_writes=True``, the plain
    API's without: the same values and keys after every write, and stock
    zarr reads the model."""
    note(repr(case))
    array = case.array
    check_random_steps("local-mapped", compressor, False, array, case.writes, writes_of(array))


@pytest.mark.timeout(120)
def test_threads_writing_chunks_through_a_writer_on_a_mapped_store_lose_nothing(
    tmp_path: Path,
) -> None:
    """Four threads, one writer, every chunk of dense shards written by
    ``write_chunk`` and ``write_chunks`` in a random order, twice: stock
    zarr reads every chunk's last value, and the copies went to mappings."""
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    store = RangeLockedStore(LocalStore(tmp_path / "root"), map_writes=True)
    arr = zarr.create_array(store, shape=(64, 64), chunks=(8, 8), shards=(32, 32), dtype="i4")
    arr[...] = -1
    writer = ShardWriter(arr)
    coords = [(i, j) for i in range(8) for j in range(8)]
    values = {c: np.full((8, 8), 100 * c[0] + c[1], dtype="i4") for c in coords}

    def work(t: int) -> None:
        rng = random.Random(seed + t)
        mine = coords[t::4]
        for _ in range(2):
            rng.shuffle(mine)
            for c in mine[: len(mine) // 2]:
                writer.write_chunk(c, values[c])
            writer.write_chunks({c: values[c] for c in mine[len(mine) // 2 :]})

    run_together(4, work)
    got = zarr.open_array(LocalStore(tmp_path / "root", read_only=True), mode="r")[...]
    for c in coords:
        np.testing.assert_array_equal(
            got[c[0] * 8 : c[0] * 8 + 8, c[1] * 8 : c[1] * 8 + 8], values[c]
        )
    assert any(e.map is not None for e in cached(store).values())
    store.close()


# ----------------------------------------- zarr's store conformance suite


class _MappedStore(RangeLockedStore):
    def __init__(self, store: LocalStore, **kwargs: Any) -> None:
        kwargs.setdefault("map_writes", True)
        super().__init__(store, **kwargs)


class TestRangeLockedLocalStoreMapped(local.TestRangeLockedLocalStore):
    store_cls = _MappedStore

    def test_store_repr(self, store: RangeLockedStore) -> None:  # type: ignore[override]  # same test, one more field
        root = local.inner(store).root.as_posix()
        assert repr(store) == f"RangeLockedStore(LocalStore('file://{root}'), map_writes=True)"
        assert str(store) == f"rangelocked-file://{root}"

    def test_the_store_under_test_maps_its_writes(self, store: RangeLockedStore) -> None:
        assert type(store) is _MappedStore and store.map_writes
