"""The set_range contract of RangeLockedStore, one suite for MemoryStore and LocalStore."""

from __future__ import annotations

import errno
import gc
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, cpu
from zarr.storage import GpuMemoryStore, LocalStore, ManagedMemoryStore, MemoryStore, ZipStore

from zarr_rangelock import LockTimeout, RangeLockedStore, SupportsSetRange
from zarr_rangelock._errors import (
    InvalidKeyError,
    KeyNotFoundError,
    RangeNotHeldError,
    RangeOutOfBoundsError,
    UnsupportedStoreError,
)
from zarr_rangelock.store._backends import unlocked_set_range, unlocked_set_range_sync
from zarr_rangelock.store._state import _registry

pytestmark = pytest.mark.timeout(30)

B = cpu.Buffer.from_bytes
ORIGINAL = bytes(range(10)) * 10  # 100 bytes
KEY = "arr/c/0"


def make_inner(kind: str, tmp_path: Path, *, read_only: bool = False) -> MemoryStore | LocalStore:
    if kind == "memory":
        return MemoryStore(read_only=read_only)
    return LocalStore(tmp_path / "root", read_only=read_only)


@pytest.fixture(params=["memory", "local"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: Path) -> RangeLockedStore:
    s = RangeLockedStore(make_inner(kind, tmp_path))
    s.set_sync(KEY, B(ORIGINAL))
    return s


def raw(store: RangeLockedStore, key: str = KEY) -> bytes | None:
    """The stored bytes, read behind the wrapper's back."""
    inner = store._store
    if isinstance(inner, MemoryStore):
        value = inner._store_dict.get(key)
        return None if value is None else value.to_bytes()
    path = inner.root / key
    return path.read_bytes() if path.is_file() else None


def patched(start: int, data: bytes) -> bytes:
    return ORIGINAL[:start] + data + ORIGINAL[start + len(data) :]


# ------------------------------------------------------------------ writes land


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, 7), (41, 13), (100 - 9, 9), (0, 100), (100, 0), (50, 0)],
    ids=["start", "middle", "exactly-at-end", "whole-value", "empty-at-end", "empty-middle"],
)
def test_set_range_sync_overwrites_exactly_its_bytes(
    store: RangeLockedStore, start: int, length: int
) -> None:
    data = bytes([0xEE]) * length
    store.set_range_sync(KEY, B(data), start)
    assert raw(store) == patched(start, data)
    got = store.get_sync(KEY)
    assert got is not None and got.to_bytes() == patched(start, data)


@pytest.mark.asyncio
@pytest.mark.parametrize(("start", "length"), [(0, 7), (41, 13), (91, 9)])
async def test_set_range_async_overwrites_exactly_its_bytes(
    store: RangeLockedStore, start: int, length: int
) -> None:
    data = bytes([0xAB]) * length
    await store.set_range(KEY, B(data), start)
    got = await store.get(KEY)
    assert got is not None and got.to_bytes() == patched(start, data)
    assert await store.getsize(KEY) == len(ORIGINAL)


@pytest.mark.asyncio
async def test_large_async_set_range_through_a_worker_thread_lands(
    kind: str, tmp_path: Path
) -> None:
    # Above INLINE_WRITE_MAX a LocalStore write runs in a worker thread.
    store = RangeLockedStore(make_inner(kind, tmp_path))
    size = 1 << 20
    await store.set(KEY, B(bytes(size)))
    data = np.random.default_rng(0).integers(0, 256, 600_000, dtype="u1").tobytes()
    await store.set_range(KEY, B(data), 1000)
    got = await store.get(KEY, byte_range=RangeByteRequest(1000, 601_000))
    assert got is not None and got.to_bytes() == data


def test_the_wrapper_is_a_supports_set_range(store: RangeLockedStore) -> None:
    assert isinstance(store, SupportsSetRange)


def test_local_set_range_writes_in_place_never_replacing_the_file(tmp_path: Path) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    store.set_sync(KEY, B(ORIGINAL))
    before = os.stat(tmp_path / KEY)
    store.set_range_sync(KEY, B(b"xyz"), 10)
    after = os.stat(tmp_path / KEY)
    assert (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev)
    assert (tmp_path / KEY).read_bytes() == patched(10, b"xyz")


def test_memory_set_range_never_writes_into_the_callers_buffer() -> None:
    # store_dict values are the caller's memory; the first set_range makes a private copy.
    callers = np.frombuffer(bytearray(ORIGINAL), dtype="B")
    store = RangeLockedStore(MemoryStore({KEY: cpu.Buffer(callers)}))
    store.set_range_sync(KEY, B(b"\xff\xff"), 0)
    assert callers.tobytes() == ORIGINAL
    assert raw(store) == patched(0, b"\xff\xff")


def test_memory_set_range_on_a_read_only_buffer_works() -> None:
    store = RangeLockedStore(MemoryStore({KEY: B(ORIGINAL)}))  # from_bytes: read-only array
    store.set_range_sync(KEY, B(b"\x01"), 99)
    assert raw(store) == patched(99, b"\x01")


def test_a_returned_buffer_never_changes_after_later_writes(store: RangeLockedStore) -> None:
    store.set_range_sync(KEY, B(b"first"), 0)  # the MemoryStore value is now a private copy
    whole = store.get_sync(KEY)
    part = store.get_sync(KEY, byte_range=RangeByteRequest(0, 5))
    assert whole is not None and part is not None
    store.set_range_sync(KEY, B(b"later"), 0)
    assert whole.to_bytes() == patched(0, b"first")
    assert part.to_bytes() == b"first"


def test_a_buffer_from_a_wrapper_of_a_copied_dict_never_changes_after_later_writes() -> None:
    # A dict copied by hand from a wrapped MemoryStore's holds the same
    # buffer objects, one of them owned (written in place) by the first
    # wrapper's state. A second wrapper of the copy handed out a view of it
    # (not its own, so thought immutable), which the first wrapper's later
    # write changed (found by a bug hunt).
    first = RangeLockedStore(MemoryStore())
    first.set_sync(KEY, B(ORIGINAL))
    first.set_range_sync(KEY, B(b"first"), 0)  # now owned by first's state
    inner = first._store
    assert isinstance(inner, MemoryStore)
    second = RangeLockedStore(MemoryStore(dict(inner._store_dict)))
    seen = second.get_sync(KEY)
    part = second.get_sync(KEY, byte_range=RangeByteRequest(0, 5))
    assert seen is not None and part is not None
    first.set_range_sync(KEY, B(b"later"), 0)
    assert seen.to_bytes() == patched(0, b"first")
    assert part.to_bytes() == b"first"
    # The second wrapper's writes go into a copy of its own.
    second.set_range_sync(KEY, B(b"other"), 0)
    assert raw(first) == patched(0, b"later")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("start", "length", "words"),
    [
        (95, 6, "start 95 + length 6 = 101 exceeds the value's size 100"),
        (100, 1, "start 100 + length 1 = 101 exceeds the value's size 100"),
        (101, 0, "start 101 + length 0 = 101 exceeds the value's size 100"),
        (500, 4, "exceeds the value's size 100"),
        (-1, 4, "start -1 is negative"),
    ],
)
def test_out_of_bounds_writes_raise_value_error_and_change_nothing(
    store: RangeLockedStore, start: int, length: int, words: str
) -> None:
    with pytest.raises(RangeOutOfBoundsError, match=re.escape(words)) as info:
        store.set_range_sync(KEY, B(b"z" * length), start)
    assert isinstance(info.value, ValueError)
    assert KEY in str(info.value)
    assert raw(store) == ORIGINAL


@pytest.mark.asyncio
async def test_out_of_bounds_async_write_changes_nothing(store: RangeLockedStore) -> None:
    with pytest.raises(ValueError, match="exceeds the value's size 100"):
        await store.set_range(KEY, B(b"zz"), 99)
    assert raw(store) == ORIGINAL
    assert store.lock_manager.stats().holders == 0


@pytest.mark.asyncio
async def test_missing_key_raises_key_error_naming_it_and_creates_nothing(
    store: RangeLockedStore,
) -> None:
    with pytest.raises(KeyError, match="'arr/c/1'") as info:
        store.set_range_sync("arr/c/1", B(b"x"), 0)
    assert isinstance(info.value, KeyNotFoundError)
    with pytest.raises(KeyError, match="does not exist"):
        await store.set_range("arr/c/1", B(b"x"), 0)
    with pytest.raises(KeyError):
        store.set_range_sync("arr/c/1", B(b""), 0)
    assert raw(store, "arr/c/1") is None
    assert not await store.exists("arr/c/1")


def test_a_directory_is_not_a_value(tmp_path: Path) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    store.set_sync("arr/c/0", B(b"abc"))
    with pytest.raises(KeyError):
        store.set_range_sync("arr/c", B(b"x"), 0)


@pytest.mark.parametrize(
    ("value", "start", "exc"),
    [(b"raw bytes", 0, TypeError), (None, 0, TypeError), ("B", 0, TypeError)],
)
def test_non_buffer_values_are_refused(
    store: RangeLockedStore, value: object, start: int, exc: type[Exception]
) -> None:
    with pytest.raises(exc, match="must be a zarr Buffer"):
        store.set_range_sync(KEY, value, start)  # type: ignore[arg-type]
    assert raw(store) == ORIGINAL


@pytest.mark.parametrize("start", [1.0, "0", True, None, np.True_])
def test_non_int_starts_are_refused(store: RangeLockedStore, start: object) -> None:
    with pytest.raises(TypeError, match="start must be an int") as info:
        store.set_range_sync(KEY, B(b"x"), start)  # type: ignore[arg-type]
    assert str(info.value).endswith(f": {start!r}")  # the value, not only its type
    assert raw(store) == ORIGINAL


@pytest.mark.parametrize("kind", [np.int64, np.uint16])
def test_numpy_integer_starts_are_taken_as_ints(store: RangeLockedStore, kind: type) -> None:
    # As a list index takes them (__index__): used to be a TypeError.
    store.set_range_sync(KEY, B(b"xy"), kind(3))
    assert raw(store) == ORIGINAL[:3] + b"xy" + ORIGINAL[5:]
    with pytest.raises(RangeOutOfBoundsError):
        store.set_range_sync(KEY, B(b"xy"), kind(99))
    assert raw(store) == ORIGINAL[:3] + b"xy" + ORIGINAL[5:]


@pytest.mark.asyncio
async def test_read_only_store_refuses_like_zarr_and_changes_nothing(
    store: RangeLockedStore,
) -> None:
    reader = store.with_read_only(True)
    assert reader.lock_manager is store.lock_manager
    message = "store was opened in read-only mode and does not support writing"
    with pytest.raises(ValueError, match=message):
        reader.set_range_sync(KEY, B(b"x"), 0)
    with pytest.raises(ValueError, match=message):
        await reader.set_range(KEY, B(b"x"), 0)
    with pytest.raises(ValueError, match=message):
        await reader.clear()
    with pytest.raises(ValueError, match=message):
        await reader.delete_dir("arr")
    with pytest.raises(ValueError, match=message):
        unlocked_set_range_sync(reader._store, KEY, B(b"x"), 0)
    assert raw(store) == ORIGINAL
    got = reader.get_sync(KEY)
    assert got is not None and got.to_bytes() == ORIGINAL


ESCAPING_KEYS = ["../x", "arr/../../x", "/etc/passwd", "a//b", "a/./b", "arr/", "", "a\\..\\b"]


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ESCAPING_KEYS)
async def test_escaping_keys_are_refused_by_every_operation(
    store: RangeLockedStore, bad: str, tmp_path: Path
) -> None:
    value = B(b"x")
    sync_calls: list[Callable[[], object]] = [
        lambda: store.set_range_sync(bad, value, 0),
        lambda: store.get_sync(bad),
        lambda: store.set_sync(bad, value),
        lambda: store.delete_sync(bad),
        lambda: unlocked_set_range_sync(store._store, bad, value, 0),
    ]
    for call in sync_calls:
        with pytest.raises(InvalidKeyError):
            call()
    async_calls = [
        store.set_range(bad, value, 0),
        store.get(bad),
        store.get_partial_values(None, [(KEY, None), (bad, None)]),  # type: ignore[arg-type]
        store.set(bad, value),
        store.set_if_not_exists(bad, value),
        store.delete(bad),
        store.exists(bad),
        store.getsize(bad),
        unlocked_set_range(store._store, bad, value, 0),
    ]
    for coro in async_calls:
        with pytest.raises(ValueError, match="invalid store key"):
            await coro
    with pytest.raises(ValueError), store.locked_sync(bad, [(0, 1)]):
        pass
    with pytest.raises(ValueError):
        async with store.locked(bad, [(0, 1)]):
            pass
    assert sorted(os.listdir(tmp_path)) in ([], ["root"])  # nothing written beside the root
    assert raw(store) == ORIGINAL


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["../", "//", "/a", "a//", "../x/", "a/../b"])
async def test_escaping_prefixes_are_refused(store: RangeLockedStore, bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        await store.delete_dir(bad)
    with pytest.raises(InvalidKeyError):
        store.list_prefix(bad)
    with pytest.raises(InvalidKeyError):
        store.list_dir(bad)
    with pytest.raises(InvalidKeyError):
        await store.is_empty(bad)
    assert raw(store) == ORIGINAL


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(lambda p: ZipStore(p / "z.zip", mode="w"), id="zip"),
        pytest.param(lambda p: ManagedMemoryStore(), id="managed-memory"),
        pytest.param(lambda p: GpuMemoryStore.__new__(GpuMemoryStore), id="gpu-memory"),
        pytest.param(lambda p: type("MyStore", (MemoryStore,), {})(), id="memory-subclass"),
        pytest.param(lambda p: {"a": 1}, id="not-a-store"),
    ],
)
def test_stores_that_cannot_write_ranges_are_refused_at_construction(
    inner: Callable[[Path], object], tmp_path: Path
) -> None:
    target = inner(tmp_path)
    with pytest.raises(TypeError, match=type(target).__qualname__) as info:
        RangeLockedStore(target)  # type: ignore[arg-type]
    assert isinstance(info.value, UnsupportedStoreError)
    assert "never falls back to rewriting whole values" in str(info.value)


@pytest.mark.parametrize("option", ["cross_process", "confine", "map_writes", "dense_shards"])
@pytest.mark.parametrize("value", ["no", "false", 1, None], ids=repr)
def test_an_option_that_is_not_a_bool_is_refused_naming_it_and_turns_nothing_on(
    option: str, value: object, tmp_path: Path
) -> None:
    # Found by a bug hunt: the options were read with bool(), so
    # dense_shards="no" or confine="false" (from a config file or an
    # environment variable) turned the option on without a word.
    inner = LocalStore(tmp_path / "root")
    with pytest.raises(
        TypeError, match=rf"{option} must be a bool, got \w+: {re.escape(repr(value))}"
    ):
        RangeLockedStore(inner, **{option: value})  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing made either
    store = RangeLockedStore(inner, **{option: np.bool_(False)})  # type: ignore[arg-type]
    assert repr(store) == f"RangeLockedStore({inner!r})"


# ---------------------------------------------------------- shared lock tables


def test_wrappers_of_the_same_data_share_one_lock_table(tmp_path: Path) -> None:
    d: dict[str, Buffer] = {}
    m1, m2 = RangeLockedStore(MemoryStore(d)), RangeLockedStore(MemoryStore(d))
    assert m1.lock_manager is m2.lock_manager
    assert m1.with_read_only(True).lock_manager is m1.lock_manager
    assert RangeLockedStore(MemoryStore()).lock_manager is not m1.lock_manager

    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    l1 = RangeLockedStore(LocalStore(tmp_path / "real"))
    l2 = RangeLockedStore(LocalStore(str(tmp_path / "link")))
    l3 = pickle.loads(pickle.dumps(l1))
    assert l1.lock_manager is l2.lock_manager is l3.lock_manager
    with l1 as entered:
        assert entered.lock_manager is l1.lock_manager
    assert RangeLockedStore(LocalStore(tmp_path / "other")).lock_manager is not l1.lock_manager


def test_a_held_lock_excludes_a_writer_through_another_wrapper(tmp_path: Path) -> None:
    a = RangeLockedStore(LocalStore(tmp_path))
    b = RangeLockedStore(LocalStore(tmp_path)).with_read_only(False)
    a.set_sync(KEY, B(ORIGINAL))
    with a.locked_sync(KEY, [(0, 10)]):
        with pytest.raises(LockTimeout), b.locked_sync(KEY, [(5, 6)], timeout=0.01):
            pass
        b.set_range_sync(KEY, B(b"ok"), 20)  # disjoint: no wait
    assert raw(a)[20:22] == b"ok"  # type: ignore[index]


def test_the_registry_keeps_nothing_once_the_wrappers_are_gone(tmp_path: Path) -> None:
    gc.collect()
    before = len(_registry)
    stores = [RangeLockedStore(MemoryStore()) for _ in range(5)]
    stores.append(RangeLockedStore(LocalStore(tmp_path)))
    assert len(_registry) == before + 6
    del stores
    gc.collect()
    assert len(_registry) == before


# --------------------------------------------------------------------- handles


def test_a_handle_reads_and_writes_inside_its_ranges_without_waiting_on_itself(
    store: RangeLockedStore,
) -> None:
    with store.locked_sync(KEY, [(10, 20), (20, 30), (60, 70)], timeout=1) as h:
        assert h.ranges == ((10, 30), (60, 70))
        old = h.get(byte_range=RangeByteRequest(10, 30))
        assert old is not None and old.to_bytes() == ORIGINAL[10:30]
        h.set_range(B(b"x" * 20), 10)  # spans two adjacent held ranges
        h.set_range(B(b"y" * 10), 60)
        assert h.getsize() == 100
        assert h.exists()
        assert store.lock_manager.stats().holders == 1
    assert raw(store) == ORIGINAL[:10] + b"x" * 20 + ORIGINAL[30:60] + b"y" * 10 + ORIGINAL[70:]
    assert store.lock_manager.stats().holders == 0


@pytest.mark.parametrize(
    ("byte_range", "expected"),
    [
        (RangeByteRequest(10, 30), ORIGINAL[10:30]),
        (RangeByteRequest(5, 15), None),
        (RangeByteRequest(20, 40), None),
        (RangeByteRequest(25, 25), b""),  # empty: reads nothing
        (None, None),
        (OffsetByteRequest(90), ORIGINAL[90:]),  # [90, 100) held: ends at the size
        (OffsetByteRequest(80), None),
        (SuffixByteRequest(10), ORIGINAL[90:]),
        (SuffixByteRequest(11), None),
    ],
)
def test_handle_reads_must_lie_inside_the_held_ranges(
    store: RangeLockedStore, byte_range: object, expected: bytes | None
) -> None:
    """A read inside the held ranges returns its bytes (``expected``); any other
    (``expected`` None) is refused."""
    with store.locked_sync(KEY, [(10, 30), (90, 100)], shared=True) as h:
        if expected is not None:
            got = h.get(byte_range=byte_range)  # type: ignore[arg-type]
            assert got is not None and got.to_bytes() == expected
        else:
            with pytest.raises(RangeNotHeldError, match=f"key '{KEY}' range .* is not inside"):
                h.get(byte_range=byte_range)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_handle_writes_need_exclusive_ranges_that_cover_them(
    store: RangeLockedStore,
) -> None:
    async with store.locked(KEY, [(0, 10)]) as h:
        with pytest.raises(ValueError, match=r"range \[8, 12\) is not inside the held ranges"):
            await h.set_range(B(b"abcd"), 8)
        with pytest.raises(RangeNotHeldError, match=r"\[0, end\) is not inside"):
            await h.set(B(b"new"))
        with pytest.raises(RangeNotHeldError):
            await h.delete()
        await h.set_range(B(b"abcd"), 6)
    async with store.locked(KEY, [(0, None)], shared=True) as h:
        with pytest.raises(RangeNotHeldError, match="held shared"):
            await h.set_range(B(b"x"), 0)
        got = await h.get()
        assert got is not None and got.to_bytes() == patched(6, b"abcd")
    assert raw(store) == patched(6, b"abcd")


@pytest.mark.asyncio
async def test_a_whole_key_handle_can_set_and_delete(store: RangeLockedStore) -> None:
    async with store.locked(KEY, [(0, None)]) as h:
        await h.set(B(b"short"))
        assert await h.getsize() == 5
        await h.set_range(B(b"S"), 0)
    assert raw(store) == b"Short"
    with store.locked_sync(KEY, [(0, None)]) as hs:
        hs.delete()
        assert not hs.exists()
        assert hs.get() is None
    assert raw(store) is None


@pytest.mark.asyncio
async def test_a_handle_refuses_use_after_its_block(store: RangeLockedStore) -> None:
    with store.locked_sync(KEY, [(0, None)]) as h:
        pass
    with pytest.raises(RangeNotHeldError, match="after the locked block ended"):
        h.get()
    with pytest.raises(RangeNotHeldError, match="after the locked block ended"):
        h.set_range(B(b"x"), 0)
    async with store.locked(KEY, [(0, 5)]) as ha:
        pass
    with pytest.raises(RangeNotHeldError):
        await ha.getsize()
    assert raw(store) == ORIGINAL


@pytest.mark.asyncio
async def test_handle_locks_are_released_by_an_exception_in_the_block(
    store: RangeLockedStore,
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with store.locked(KEY, [(0, None)]):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), store.locked_sync(KEY, [(0, None)]):
        raise RuntimeError("boom")
    assert store.lock_manager.stats().holders == 0
    store.lock_manager._check()


def test_a_handle_timeout_raises_lock_timeout_and_holds_nothing(store: RangeLockedStore) -> None:
    with (
        store.locked_sync(KEY, [(0, 50)]),
        pytest.raises(TimeoutError),
        store.locked_sync(KEY, [(40, 60)], timeout=0.01),
    ):
        pass
    stats = store.lock_manager.stats()
    assert (stats.holders, stats.waiters, stats.timeouts) == (0, 0, 1)


# ------------------------------------------------------------ errors and unlocked


@pytest.mark.parametrize(
    "error",
    [
        InvalidKeyError("../x", "contains a '..' segment"),
        KeyNotFoundError("a/b", "set_range"),
        RangeOutOfBoundsError("a/b", 95, 6, 100),
        RangeOutOfBoundsError("a/b", -1, 6, None),
        RangeNotHeldError("a/b", 5, None, ((0, 4), (8, None)), "is not inside the held ranges"),
        UnsupportedStoreError("zarr.storage.ZipStore"),
        LockTimeout("a/b", ((0, 4),), 0.5),
    ],
)
def test_errors_pickle_and_keep_their_message(error: Exception) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert clone.args == error.args


def test_a_lock_timeout_reads_as_etimedout_to_code_catching_oserror() -> None:
    error = LockTimeout("a/b", ((0, 4),), 0.5)
    assert isinstance(error, OSError) and error.errno == errno.ETIMEDOUT
    assert error.strerror == str(error)
    assert (error.key, error.ranges, error.timeout) == ("a/b", ((0, 4),), 0.5)


@pytest.mark.asyncio
async def test_unlocked_set_range_has_the_same_contract_without_locks(
    kind: str, tmp_path: Path
) -> None:
    inner = make_inner(kind, tmp_path)
    inner.set_sync(KEY, B(ORIGINAL))
    unlocked_set_range_sync(inner, KEY, B(b"ab"), 0)
    await unlocked_set_range(inner, KEY, B(b"yz"), 98)
    assert inner.get_sync(KEY).to_bytes() == b"ab" + ORIGINAL[2:98] + b"yz"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="exceeds"):
        unlocked_set_range_sync(inner, KEY, B(b"yz"), 99)
    with pytest.raises(KeyError):
        await unlocked_set_range(inner, "nope", B(b"y"), 0)
    with pytest.raises(TypeError, match="ZipStore"):
        unlocked_set_range_sync(ZipStore(tmp_path / "z.zip", mode="w"), KEY, B(b"y"), 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ zarr


def test_zarr_sharded_arrays_work_through_the_wrapper(kind: str, tmp_path: Path) -> None:
    store = RangeLockedStore(make_inner(kind, tmp_path))
    group = zarr.open_group(store=store, mode="w")
    arr = group.create_array(
        "a", shape=(32, 32), chunks=(8, 8), shards=(16, 16), dtype="i4", compressors=None
    )
    arr[:] = np.arange(32 * 32).reshape(32, 32)
    arr[3:5, 3:5] = -1
    reopened = zarr.open_array(store=store.with_read_only(True), path="a")
    assert isinstance(reopened.store, RangeLockedStore)
    assert reopened.store.lock_manager is store.lock_manager
    expected = np.arange(32 * 32).reshape(32, 32)
    expected[3:5, 3:5] = -1
    np.testing.assert_array_equal(reopened[:], expected)
    zarr.open_group(store=store, mode="w")  # overwrite: deletes under a prefix lock
    assert list(zarr.open_group(store=store).array_keys()) == []
    stats = store.lock_manager.stats()
    assert (stats.holders, stats.waiters, stats.keys) == (0, 0, 0)
