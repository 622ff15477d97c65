"""A write holding a lock never waits for a worker thread that a waiter of that lock occupies.

An async write (the store's ``set_range``, ``set``, ``delete``,
``delete_dir``, ``clear``, the shard pipeline's writes, zarr's own write of
a chunk under the pipeline's lock) or read (``get``, zarr's own read of a
shard under the pipeline's shared hold) holds its lock while blocking work
runs in a worker thread: the file I/O, an encode. When those workers were
the event loop's default executor, a program's own blocking calls sent
there (``asyncio.to_thread`` of
``ShardWriter.write_chunk`` or of a sync store call, as a coroutine must)
that wait for the same lock could fill it: the write's work queued behind
them and nothing moved again (the stress runner's shard mode found it,
seed 9917: every default worker in ``put_appended``, waiting for a shard a
pipeline write held). The library's blocking work runs in worker threads
of its own (``store._io.workers``), which never wait for a lock.

Each test fills a one-worker default executor with a call that waits for
the lock the write takes (ordered by the lock table and an event, not by
sleeps); its control sends the library's work to the default executor, as
before the fix, and finds the waiter timed out: the deadlock.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec, ShardingCodec, ZstdCodec
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._shard_helpers import OURS
from zarr_rangelock import LockTimeout, RangeLockedStore
from zarr_rangelock.store import _io

pytestmark = pytest.mark.timeout(60)

KEY = "d/k"
SIZE = 1 << 20  # past INLINE_WRITE_MAX: a range write this large goes to a worker


def B(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


async def _starve(
    store: RangeLockedStore, key: str, write: Callable[[], Awaitable[Any]], wait_s: float
) -> BaseException | None:
    """Run ``write()`` while the loop's only default worker waits (at most
    ``wait_s``) for an exclusive lock on ``key``'s first bytes, asked for
    once ``write`` holds its lock; what the waiter raised, if anything."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    go = threading.Event()

    def waiter() -> None:
        assert go.wait(30)  # (a deadline only: never left waiting for good)
        with store.locked_sync(key, [(0, 8)], timeout=wait_s):
            pass

    waiting = loop.run_in_executor(None, waiter)
    mgr = store.lock_manager
    task = asyncio.ensure_future(write())
    # (It takes its lock and hands its work over in one step of the loop.)
    while mgr.stats().holders == 0 and not task.done():
        await asyncio.sleep(0)
    go.set()
    await task
    try:
        await waiting
    except LockTimeout as e:
        return e
    return None


def _store(root: Path, durability: str) -> RangeLockedStore:
    s = RangeLockedStore(LocalStore(root), durability=durability)
    s.set_sync(KEY, B(bytes(SIZE)))
    return s


STORE_WRITES: dict[str, Callable[[RangeLockedStore], Awaitable[Any]]] = {
    "set_range": lambda s: s.set_range(KEY, B(b"x" * SIZE), 0),
    "set": lambda s: s.set(KEY, B(b"y" * SIZE)),
    "get": lambda s: s.get(KEY),
    "delete": lambda s: s.delete(KEY),
    "delete_dir": lambda s: s.delete_dir("d"),
    "clear": lambda s: s.clear(),
}


ARRAYS: dict[str, dict[str, Any]] = {
    # our pipeline: the chunk read and decoded under the shard's lock, in a
    # worker (the decode's cost is not known yet)
    "zstd": {"shards": (64, 64), "compressors": ZstdCodec(level=1)},
    # zarr's own write of the chunk under its whole-key lock
    "zstd not sharded": {"compressors": ZstdCodec(level=1)},
    # zarr's own write and read of the shard (a codec around its sharding codec)
    "gzip around the sharding codec": {
        "serializer": ShardingCodec(chunk_shape=(16, 16)),
        "compressors": GzipCodec(),
    },
}


def _array_case(root: Path, name: str) -> tuple[RangeLockedStore, str, Any]:
    """An array of ``ARRAYS[name]`` with one chunk written, and the async
    write of part of that chunk (``"... read"``: the async read of the
    whole array)."""
    read = name.endswith(" read")
    store = RangeLockedStore(LocalStore(root))
    with zarr.config.set(OURS), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Combining a `sharding_indexed`")
        kind = ARRAYS[name.removesuffix(" read")]
        arr = zarr.create_array(store, shape=(64, 64), chunks=(16, 16), dtype="f4", **kind)
        arr[0:16, 0:16] = 1.0
    aarr = arr.async_array

    def write() -> Awaitable[Any]:
        if read:
            return aarr.getitem(slice(None))
        return aarr.setitem((slice(0, 8), slice(0, 16)), np.full((8, 16), 2.0))

    return store, "c/0/0", write


CASES = [
    *(f"store {w} {d}" for w in STORE_WRITES for d in ("none", "journal")),
    *(f"pipeline {a}" for a in ARRAYS),
    "pipeline gzip around the sharding codec read",
]


def _case(name: str, root: Path) -> tuple[RangeLockedStore, str, Callable[[], Awaitable[Any]]]:
    if name.startswith("pipeline "):
        return _array_case(root, name.removeprefix("pipeline "))
    _, write, durability = name.split()
    store = _store(root, durability)
    return store, KEY, lambda: STORE_WRITES[write](store)


@pytest.mark.parametrize("name", CASES)
def test_a_write_holding_its_lock_does_not_wait_for_the_default_workers(
    tmp_path: Path, name: str
) -> None:
    store, key, write = _case(name, tmp_path / "root")
    assert asyncio.run(_starve(store, key, write, wait_s=30.0)) is None


@pytest.mark.parametrize("name", CASES)
def test_control_with_its_work_in_the_default_workers_the_write_and_its_waiter_deadlock(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_io, "workers", lambda: None)  # the loop's default executor
    store, key, write = _case(name, tmp_path / "root")
    assert isinstance(asyncio.run(_starve(store, key, write, wait_s=1.0)), LockTimeout)


# (zarr's own code under our lock: not "pipeline zstd", ours through and through)
ZARRS_OWN = [c for c in CASES if c.startswith("pipeline ") and c != "pipeline zstd"]


@pytest.mark.parametrize("name", ZARRS_OWN)
def test_a_default_executor_the_program_sets_after_a_write_is_routed_too(
    tmp_path: Path, name: str
) -> None:
    # The first write of zarr's own under our lock wraps the loop's default
    # executor; a program that then sets another one replaces the wrapper
    # (each ``_starve`` sets a new one-worker executor): the next write
    # wraps that one, and does not starve either.
    store, key, write = _case(name, tmp_path / "root")

    async def twice() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        found = []
        for _ in range(2):
            found.append(await _starve(store, key, write, wait_s=30.0))
            routing = loop._default_executor  # type: ignore[attr-defined]
            assert isinstance(routing, _io._Routing)
        return found

    assert asyncio.run(twice()) == [None, None]
