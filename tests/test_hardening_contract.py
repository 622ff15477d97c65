"""Issue 10, item 9: one contract for both stores, with clear messages.

A differential table: every bad (or unusual) input is run against a wrapped
MemoryStore and a wrapped LocalStore, and both must do the same thing: the
same result, or the same exception type with a message that names the key
and the numbers. Where stock zarr's two stores differ, the row says which
behaviour was chosen and why.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from tests._threads import wait_until
from zarr_rangelock import (
    InvalidKeyError,
    RangeLockedStore,
    RangeLockManager,
    RangeOutOfBoundsError,
)

pytestmark = pytest.mark.timeout(60)

B = cpu.Buffer.from_bytes
KEY = "arr/c/0"
VALUE = bytes(range(10))
LONG_KEY = "x" * 5000
LONG_SEGMENT = "a/" + "y" * 300


def strided() -> cpu.Buffer:
    """A Buffer over a non-contiguous array: every other byte of 0..19."""
    return cpu.Buffer(np.arange(20, dtype="B")[::2])


STRIDED_BYTES = bytes(range(0, 20, 2))


async def _set_then_getsize(s: RangeLockedStore, key: str, asked: str) -> int:
    """``getsize(asked)`` while ``key`` exists (then deleted again)."""
    await s.set(key, B(b"{}"))
    try:
        return await s.getsize(asked)
    finally:
        await s.delete(key)


async def _partial_bytes(s: RangeLockedStore, requests: list[tuple[str, Any]]) -> list[Any]:
    got = await s.get_partial_values(cpu.buffer_prototype, requests)
    return [None if b is None else b.to_bytes() for b in got]


def both(tmp_path: Path) -> dict[str, RangeLockedStore]:
    stores = {
        "memory": RangeLockedStore(MemoryStore()),
        "local": RangeLockedStore(LocalStore(tmp_path / "root")),
    }
    for s in stores.values():
        s.set_sync(KEY, B(VALUE))
    return stores


async def _locked(store: RangeLockedStore, timeout: Any) -> str:
    async with store.locked(KEY, [(0, 1)], timeout=timeout):
        return "held"


def _locked_sync(store: RangeLockedStore, timeout: Any) -> str:
    with store.locked_sync(KEY, [(0, 1)], timeout=timeout):
        return "held"


async def _manager_lock(store: RangeLockedStore, timeout: Any) -> str:
    # the lock table of the wrapper: for a LocalStore it also takes OS locks,
    # whose path used to run max(timeout, 0) before any check
    with store.lock_manager.lock(KEY, 0, 1, timeout=timeout):
        return "held"


async def _get(store: RangeLockedStore, key: str, byte_range: Any = None) -> bytes | None:
    got = await store.get(key, byte_range=byte_range)
    return None if got is None else got.to_bytes()


async def _set_then_get(store: RangeLockedStore, call: Callable[[], Awaitable[None] | None]) -> Any:
    done = call()
    if done is not None:
        await done
    return await _get(store, "new") or await _get(store, KEY)


async def _handle_set(store: RangeLockedStore) -> None:
    async with store.locked("new", [(0, None)]) as handle:
        await handle.set(strided())


def _handle_set_sync(store: RangeLockedStore) -> None:
    with store.locked_sync("new", [(0, None)]) as handle:
        handle.set(strided())


@dataclass
class Row:
    """One input: what to run, and what both stores must do."""

    call: Callable[[RangeLockedStore], Awaitable[Any]]
    raises: type[BaseException] | None = None
    words: tuple[str, ...] = ()
    result: Any = None


ROWS: dict[str, Row] = {
    # Stock: MemoryStore keeps the Buffer, LocalStore raises a bare BufferError
    # (file.write / os.pwrite need contiguous memory). Chosen: both work; a
    # non-contiguous Buffer is a valid zarr Buffer, so the wrapper copies it
    # into contiguous memory first (only then: contiguous ones are not copied).
    "set a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: s.set("new", strided())), result=STRIDED_BYTES
    ),
    "set_sync a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: s.set_sync("new", strided())), result=STRIDED_BYTES
    ),
    "set_if_not_exists a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: s.set_if_not_exists("new", strided())),
        result=STRIDED_BYTES,
    ),
    "set_range a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: s.set_range(KEY, strided(), 0)), result=STRIDED_BYTES
    ),
    "set_range_sync a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: s.set_range_sync(KEY, strided(), 0)),
        result=STRIDED_BYTES,
    ),
    "a locked() handle's set of a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: _handle_set(s)), result=STRIDED_BYTES
    ),
    "a locked_sync() handle's set of a non-contiguous Buffer": Row(
        lambda s: _set_then_get(s, lambda: asyncio.to_thread(_handle_set_sync, s)),
        result=STRIDED_BYTES,
    ),
    # Stock: TypeError "'<' not supported between 'str' and 'int'" (or '>').
    'locked(timeout="1")': Row(
        lambda s: _locked(s, "1"), TypeError, ("timeout", "'1'", "str", KEY, "number of seconds")
    ),
    'locked_sync(timeout="1")': Row(
        lambda s: asyncio.to_thread(_locked_sync, s, "1"), TypeError, ("timeout", "'1'", KEY)
    ),
    'lock_manager.lock(timeout="1")': Row(
        lambda s: _manager_lock(s, "1"), TypeError, ("timeout", "'1'", KEY)
    ),
    "locked(timeout=True)": Row(lambda s: _locked(s, True), TypeError, ("timeout", "bool")),
    # Stock: NaN passed every check (NaN < 0 is False) and was used as a timeout.
    "locked(timeout=nan)": Row(
        lambda s: _locked(s, math.nan), ValueError, ("timeout must be >= 0", "nan", KEY)
    ),
    "lock_manager.lock(timeout=nan)": Row(
        lambda s: _manager_lock(s, math.nan), ValueError, ("timeout must be >= 0", "nan", KEY)
    ),
    "locked(timeout=-1)": Row(
        lambda s: _locked(s, -1), ValueError, ("timeout must be >= 0", "-1", KEY)
    ),
    "locked(timeout=inf) waits forever, as None": Row(
        lambda s: _locked(s, math.inf), result="held"
    ),
    # Stock: AttributeError "'str' object has no attribute '_owner'".
    'release("x")': Row(
        lambda s: _async(s.lock_manager.release, "x"),
        TypeError,
        ("release()", "Grant", "str", "'x'"),
    ),
    "release(None)": Row(
        lambda s: _async(s.lock_manager.release, None), TypeError, ("Grant", "NoneType")
    ),
    # Stock: ENAMETOOLONG on LocalStore, works (or KeyNotFoundError for
    # set_range) on MemoryStore. Chosen: refused on both, as every key rule
    # is, so that a program tested on a MemoryStore runs on disk.
    "get of a 5000-character key": Row(
        lambda s: s.get(LONG_KEY), InvalidKeyError, ("5000 bytes", "1024", "x" * 50)
    ),
    "set of a 5000-character key": Row(
        lambda s: s.set(LONG_KEY, B(b"1")), InvalidKeyError, ("5000 bytes", "1024")
    ),
    "set_range of a 5000-character key": Row(
        lambda s: s.set_range(LONG_KEY, B(b"1"), 0), InvalidKeyError, ("5000 bytes", "1024")
    ),
    "exists of a 5000-character key": Row(
        lambda s: s.exists(LONG_KEY), InvalidKeyError, ("5000 bytes", "1024")
    ),
    "delete of a 5000-character key": Row(
        lambda s: s.delete(LONG_KEY), InvalidKeyError, ("5000 bytes", "1024")
    ),
    "set of a key with a 300-byte segment": Row(
        lambda s: s.set(LONG_SEGMENT, B(b"1")),
        InvalidKeyError,
        ("segment of 300 bytes", "214", "y" * 50),
    ),
    "a 214-byte segment is fine": Row(lambda s: _roundtrip(s, "z" * 214), result=b"ok"),
    "a 1024-byte key is fine": Row(
        lambda s: _roundtrip(s, "/".join(["w" * 204] * 5)), result=b"ok"
    ),
    # Stock: b"" on MemoryStore (value[5:2]), ValueError "read length must be
    # non-negative" on LocalStore. Chosen: ValueError naming key and numbers;
    # an inverted range is a caller's bug that b"" would hide.
    "get RangeByteRequest(5, 2)": Row(
        lambda s: _get(s, KEY, RangeByteRequest(5, 2)),
        ValueError,
        ("[5, 2)", KEY, "end must be >= start"),
    ),
    "get_sync RangeByteRequest(5, 2)": Row(
        lambda s: _async(s.get_sync, KEY, byte_range=RangeByteRequest(5, 2)),
        ValueError,
        ("[5, 2)", KEY),
    ),
    "get_partial_values RangeByteRequest(5, 2)": Row(
        lambda s: s.get_partial_values(
            cpu.buffer_prototype, [(KEY, None), (KEY, RangeByteRequest(5, 2))]
        ),
        ValueError,
        ("[5, 2)", KEY),
    ),
    # Stock: MemoryStore answers None for a missing key, LocalStore raises
    # FileNotFoundError (its get_partial_values calls the file reader
    # directly, where its get answers None). Chosen: None on both, as get.
    "get_partial_values of a missing key": Row(
        lambda s: _partial_bytes(s, [(KEY, None), ("missing", None)]), result=[VALUE, None]
    ),
    # Stock: MemoryStore raises FileNotFoundError for a key naming no value,
    # LocalStore answers the directory's own st_size (4096 on ext4) for a
    # key naming a directory (a group's path). Chosen: FileNotFoundError on
    # both, as for any key with no value.
    "getsize of a key naming a directory": Row(
        lambda s: _set_then_getsize(s, "grp/zarr.json", "grp"), FileNotFoundError, ("grp",)
    ),
    # Stock: LocalStore raises TypeError, MemoryStore ValueError, with one
    # message. Chosen: TypeError (the argument's type is wrong), LocalStore's.
    "get with a byte range that is no ByteRequest": Row(
        lambda s: _get(s, KEY, (1, 2)), TypeError, ("Unexpected byte_range, got (1, 2)",)
    ),
    # Stock: b"" on both (a start past the end). Chosen: ValueError; a
    # negative suffix is never meant.
    "get SuffixByteRequest(-1)": Row(
        lambda s: _get(s, KEY, SuffixByteRequest(-1)), ValueError, ("suffix", "-1", KEY)
    ),
    "get SuffixByteRequest('3')": Row(
        lambda s: _get(s, KEY, SuffixByteRequest("3")),  # type: ignore[arg-type]
        TypeError,
        ("suffix", "must be an int", "str", KEY),
    ),
    # A range past what a file offset can hold: refused before the value's
    # size is looked up, naming the limit (it once said "the value's size").
    "set_range ending past 2**63 - 2": Row(
        lambda s: s.set_range(KEY, B(b"12"), (1 << 63) - 3),
        RangeOutOfBoundsError,
        (KEY, str((1 << 63) - 1), f"past {(1 << 63) - 2}, the largest end"),
    ),
    "set_range ending at 2**63 - 2 is only past the value's size": Row(
        lambda s: s.set_range(KEY, B(b"1"), (1 << 63) - 3),
        RangeOutOfBoundsError,
        (KEY, str((1 << 63) - 2), "exceeds the value's size 10"),
    ),
    # Stock: LocalStore raises ValueError "embedded null byte" for a NUL,
    # TypeError (get) and AttributeError (list_prefix) for an int; MemoryStore
    # answers None and [] for all three. Chosen: refused on both, naming the
    # key, as every key rule is.
    "get of a key with a NUL": Row(
        lambda s: s.get("a\x00b", cpu.buffer_prototype), InvalidKeyError, ("NUL", "'a\\x00b'")
    ),
    "get of a key that is no str": Row(
        lambda s: s.get(5, cpu.buffer_prototype),  # type: ignore[arg-type]
        TypeError,
        ("store key must be a str", "int", "5"),
    ),
    "list_prefix of a prefix that is no str": Row(
        lambda s: _listed(s.list_prefix(5)),  # type: ignore[arg-type]
        TypeError,
        ("store prefix must be a str", "int", "5"),
    ),
    # These agreed already; kept in the table so they stay agreed.
    "get RangeByteRequest(5, 5) is empty": Row(
        lambda s: _get(s, KEY, RangeByteRequest(5, 5)), result=b""
    ),
    "get RangeByteRequest(5, 50) stops at the end": Row(
        lambda s: _get(s, KEY, RangeByteRequest(5, 50)), result=VALUE[5:]
    ),
    "get OffsetByteRequest(50) past the end is empty": Row(
        lambda s: _get(s, KEY, OffsetByteRequest(50)), result=b""
    ),
    "get OffsetByteRequest(-1)": Row(
        lambda s: _get(s, KEY, OffsetByteRequest(-1)), ValueError, ("-1", KEY)
    ),
    "get RangeByteRequest(-1, 2)": Row(
        lambda s: _get(s, KEY, RangeByteRequest(-1, 2)), ValueError, ("-1", KEY)
    ),
    # Found by a bug hunt: a None offset reached a comparison before any
    # check ("'>' not supported between 'int' and 'NoneType'", no key), and a
    # locked handle's reads, which take no lock, named the key '' in their
    # errors and did not check offsets at all (a float start raised
    # "'float' object cannot be interpreted as an integer").
    "get RangeByteRequest(None, 3)": Row(
        lambda s: _get(s, KEY, RangeByteRequest(None, 3)),  # type: ignore[arg-type]
        TypeError,
        ("start", KEY, "must be an int", "NoneType"),
    ),
    "get RangeByteRequest(0, None)": Row(
        lambda s: _get(s, KEY, RangeByteRequest(0, None)),  # type: ignore[arg-type]
        TypeError,
        ("end", KEY, "must be an int", "NoneType"),
    ),
    "a locked handle's get RangeByteRequest(5, 2)": Row(
        lambda s: _handle_get(s, RangeByteRequest(5, 2)), ValueError, ("[5, 2)", repr(KEY))
    ),
    "a locked handle's get SuffixByteRequest(-1)": Row(
        lambda s: _handle_get(s, SuffixByteRequest(-1)), ValueError, ("suffix", "-1", repr(KEY))
    ),
    "a locked handle's get RangeByteRequest(2.0, 3)": Row(
        lambda s: _handle_get(s, RangeByteRequest(2.0, 3)),  # type: ignore[arg-type]
        TypeError,
        ("start", repr(KEY), "must be an int", "float", "2.0"),
    ),
    "a locked handle's get OffsetByteRequest(None)": Row(
        lambda s: _handle_get(s, OffsetByteRequest(None)),  # type: ignore[arg-type]
        TypeError,
        ("start", repr(KEY), "must be an int", "NoneType"),
    ),
    "a locked handle's get RangeByteRequest(-1, 3)": Row(
        lambda s: _handle_get(s, RangeByteRequest(-1, 3)),
        ValueError,
        ("start", repr(KEY), "must be >= 0", "-1"),
    ),
    "a locked_sync handle's get RangeByteRequest(None, 3)": Row(
        lambda s: asyncio.to_thread(_handle_get_sync, s, RangeByteRequest(None, 3)),  # type: ignore[arg-type]
        TypeError,
        ("start", repr(KEY), "must be an int", "NoneType"),
    ),
}


async def _handle_get(store: RangeLockedStore, byte_range: Any) -> bytes | None:
    async with store.locked(KEY, [(0, 6)]) as handle:
        got = await handle.get(byte_range=byte_range)
    return None if got is None else got.to_bytes()


def _handle_get_sync(store: RangeLockedStore, byte_range: Any) -> bytes | None:
    with store.locked_sync(KEY, [(0, 6)]) as handle:
        got = handle.get(byte_range=byte_range)
    return None if got is None else got.to_bytes()


async def _listed(keys: Any) -> list[str]:
    return [k async for k in keys]


async def _async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


async def _roundtrip(store: RangeLockedStore, key: str) -> bytes | None:
    await store.set(key, B(b"ok"))
    return await _get(store, key)


@pytest.mark.asyncio
@pytest.mark.parametrize("name", list(ROWS))
async def test_both_wrapped_stores_answer_each_input_the_same_way(
    name: str, tmp_path: Path
) -> None:
    row = ROWS[name]
    outcomes: dict[str, Any] = {}
    for kind, store in both(tmp_path).items():
        try:
            outcomes[kind] = ("result", await row.call(store))
        except Exception as e:  # the table decides below
            outcomes[kind] = ("raised", e)
        store.lock_manager._check()
        assert store.lock_manager.stats().holders == 0, kind
    for kind, (how, what) in outcomes.items():
        if row.raises is None:
            assert how == "result", f"{kind}: {what!r}"
            assert what == row.result, kind
        else:
            assert how == "raised", f"{kind} returned {what!r}"
            assert type(what) is row.raises, f"{kind}: {type(what).__name__}: {what}"
            for word in row.words:
                assert word in str(what), f"{kind}: {word!r} not in {what}"
    if row.raises is not None:
        # the same type and message on both stores
        messages = {str(what) for _, what in outcomes.values()}
        assert len(messages) == 1, messages


@pytest.mark.asyncio
async def test_a_refused_input_changes_nothing_on_either_store(tmp_path: Path) -> None:
    stores = both(tmp_path)
    for row in ROWS.values():
        if row.raises is None:
            continue
        for store in stores.values():
            with pytest.raises(row.raises):
                await row.call(store)
    for store in stores.values():
        assert sorted([k async for k in store.list()]) == [KEY]
        assert await _get(store, KEY) == VALUE


@pytest.mark.parametrize("cross_process", [True, False])
def test_an_infinite_timeout_waits_for_the_holder_as_none_does(
    tmp_path: Path, cross_process: bool
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path / "root"), cross_process=cross_process)
    store.set_sync(KEY, B(VALUE))
    mgr = store.lock_manager
    got = threading.Event()
    with store.locked_sync(KEY, [(0, 4)]):

        def waiter() -> None:
            with store.locked_sync(KEY, [(2, 6)], timeout=math.inf):
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        wait_until(lambda: mgr.stats().waiters > 0, "the waiter queued")
        assert not got.is_set()
    t.join(30)
    assert got.is_set()


@pytest.mark.parametrize("timeout", [1e10, 1e300, 10**400], ids=["1e10", "1e300", "10**400"])
@pytest.mark.parametrize("cross_process", [True, False])
def test_a_timeout_too_long_for_a_thread_wait_waits_for_the_holder_as_none_does(
    tmp_path: Path, cross_process: bool, timeout: float
) -> None:
    # Found by a bug hunt: a finite timeout past threading.TIMEOUT_MAX (about
    # 292 years) reached Lock.acquire(timeout=...) and raised OverflowError
    # ("timestamp out of range for platform time_t") instead of waiting, and
    # an int too large for a float raised it from float().
    store = RangeLockedStore(LocalStore(tmp_path / "root"), cross_process=cross_process)
    store.set_sync(KEY, B(VALUE))
    mgr = store.lock_manager
    got = threading.Event()
    errors: list[BaseException] = []
    with store.locked_sync(KEY, [(0, 4)]):

        def waiter() -> None:
            try:
                with store.locked_sync(KEY, [(2, 6)], timeout=timeout):
                    got.set()
            except BaseException as e:  # reported below
                errors.append(e)
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        wait_until(lambda: mgr.stats().waiters > 0 or got.is_set(), "the waiter queued")
        assert not got.is_set(), errors
    t.join(30)
    assert got.is_set() and errors == []
    assert mgr.stats().holders == mgr.stats().waiters == 0


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "memory"},
        {"durability": "none"},
        {"durability": "none", "confine": True},
        {"durability": "fsync"},
        {"durability": "journal"},
        {"durability": "journal-nosync"},
    ],
    ids=lambda o: "-".join(f"{v}" for v in o.values()),
)
def test_deleting_a_key_under_another_keys_value_is_a_no_op_as_for_any_missing_key(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    # Found by a bug hunt: delete("arr/c/0/x"), where "arr/c/0" holds a
    # value, raised NotADirectoryError naming the file's path on a
    # LocalStore (stock LocalStore does too), where a MemoryStore did nothing
    # and every read answers "missing" (get None, exists False).
    if options.get("kind") == "memory":
        store = RangeLockedStore(MemoryStore())
    else:
        store = RangeLockedStore(LocalStore(tmp_path / "root"), **options)
    store.set_sync(KEY, B(VALUE))
    under = f"{KEY}/x"
    assert store.get_sync(under) is None
    assert asyncio.run(store.exists(under)) is False
    store.delete_sync(under)
    asyncio.run(store.delete(under))
    with store.locked_sync(under, [(0, None)]) as handle:
        handle.delete()

    async def in_a_block() -> None:
        async with store.locked(under, [(0, None)]) as handle:
            await handle.delete()

    asyncio.run(in_a_block())
    got = store.get_sync(KEY)
    assert got is not None and got.to_bytes() == VALUE
    assert store.lock_manager.stats().holders == store.lock_manager.stats().waiters == 0


def test_a_bare_manager_refuses_bad_timeouts_and_non_grants_with_clear_errors() -> None:
    mgr = RangeLockManager()
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds or None, got str"):
        mgr.acquire("k", [(0, 1)], timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"timeout must be >= 0 or None, got nan"):
        mgr.acquire("k", [(0, 1)], timeout=math.nan)
    with pytest.raises(ValueError, match=r"timeout must be >= 0 or None, got -1000"):
        mgr.acquire("k", [(0, 1)], timeout=-(10**400))
    with pytest.raises(TypeError, match=r"got str: 'x'"):
        mgr.release("x")  # type: ignore[arg-type]
    mgr._check()
    assert mgr.stats().holders == 0


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_recover_of_a_store_without_durability_says_what_it_needs(
    kind: str, tmp_path: Path
) -> None:
    store = both(tmp_path)[kind]
    with pytest.raises(ValueError, match=r"recover\(\) needs a durable store;.*durability='none'"):
        store.recover()
    assert store.lock_manager.stats().holders == 0


@pytest.mark.parametrize("shared", ["no", "false", 0, 1, None, 1.0])
def test_a_lock_mode_that_is_not_a_bool_is_refused_naming_it_and_the_key(
    tmp_path: Path, shared: object
) -> None:
    # Read with bool(), shared="no" took a shared lock: two callers meaning
    # to write did not exclude each other (found by a bug hunt).
    mgr = RangeLockManager()
    calls = [
        lambda: mgr.acquire("k", [(0, 1)], shared=shared),  # type: ignore[arg-type]
        lambda: mgr.lock("k", 0, 1, shared=shared).__enter__(),  # type: ignore[arg-type]
        lambda: mgr.lock_ranges("k", [(0, 1), (4, 8)], shared=shared).__enter__(),  # type: ignore[arg-type]
        lambda: mgr.acquire_nowait("k", [(0, 1)], shared=shared),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(TypeError, match=rf"shared must be a bool, got .*{shared!r}.*'k'"):
            call()
    store = both(tmp_path)["local"]
    with pytest.raises(TypeError, match=r"shared must be a bool"):
        store.locked_sync(KEY, [(0, 4)], shared=shared).__enter__()  # type: ignore[arg-type]
    mgr._check()
    assert mgr.stats().holders == mgr.stats().waiters == 0
    assert store.lock_manager.stats().holders == 0
    with mgr.lock("k", 0, 1, shared=np.bool_(True)), mgr.lock("k", 0, 1, shared=True):
        assert mgr.stats().holders == 2  # numpy's bool is a bool


@pytest.mark.parametrize(("keys", "named"), [("c0", "str: 'c0'"), (None, "NoneType: None")])
def test_consistent_reads_of_anything_but_a_collection_of_keys_is_a_type_error(
    tmp_path: Path, keys: Any, named: str
) -> None:
    # A string is iterable: consistent_reads("c0") held keys "c" and "0",
    # and reads of "c0" in the block were not held.
    store = RangeLockedStore(LocalStore(tmp_path / "root"))

    async def block() -> None:
        async with store.consistent_reads(keys):
            pass  # pragma: no cover - refused on entry

    with pytest.raises(TypeError, match="consistent_reads takes an iterable of keys") as info:
        asyncio.run(block())
    assert named in str(info.value)
    assert store.lock_manager.stats().holders == 0
