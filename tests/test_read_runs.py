"""Our shard readers read a long run of chunks in a worker thread, a short one
on zarr's event loop (``shards/_reads._read_run``).

zarr runs every sync call of every thread on its one loop thread, so a long
read done there holds up every other read and write until the disk answers.
Shown here: which thread reads what, that the long reads of one call (and of
two threads' calls) are in flight at once where, read on the loop, they wait
for each other (the control: a barrier between them breaks), that the values
are the same either way, and that a cancelled read still holds its shard
until its worker's read has ended.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.api.asynchronous
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, new_array
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _reads

pytestmark = pytest.mark.timeout(60)

LONG = 1024
"""``RUN_INLINE_MAX_BYTES`` in these tests: a shard's 16 chunks of 256 bytes
(4 KiB, dense or zstd of random values) are a long run, one chunk a short one."""

DATA = np.random.default_rng(7).integers(-(2**30), 2**30, size=(32, 64), dtype="i4")


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> RangeLockedStore:
    inner = MemoryStore() if request.param == "memory" else LocalStore(tmp_path)
    return RangeLockedStore(inner)


@pytest.fixture(params=["dense", "zstd"])
def arr(request: pytest.FixtureRequest, store: RangeLockedStore) -> zarr.Array[Any]:
    """Two shards of 32 x 32 int32 in 8 x 8 chunks, written with ``DATA``."""
    compressors = [ZstdCodec()] if request.param == "zstd" else None
    a = new_array(
        store,
        name="a",
        shape=DATA.shape,
        chunks=(8, 8),
        shards=(32, 32),
        compressors=compressors,
        pipeline=OURS,
    )
    with zarr.config.set(OURS):
        a[...] = DATA
    return a


@pytest.fixture(autouse=True)
def _long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reads, "RUN_INLINE_MAX_BYTES", LONG)


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _wrap_reads(monkeypatch: pytest.MonkeyPatch, before: Callable[[int, bool], None]) -> None:
    """Call ``before(length, on_an_event_loop)`` before each run our readers read."""
    real = _reads._read

    def read(store: RangeLockedStore, key: str, lo: int, hi: int) -> Any:
        before(hi - lo, _on_loop())
        return real(store, key, lo, hi)

    monkeypatch.setattr(_reads, "_read", read)


def test_a_long_run_is_read_in_a_worker_and_a_short_one_on_the_loop(
    arr: zarr.Array[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, bool]] = []
    _wrap_reads(monkeypatch, lambda n, on_loop: seen.append((n, on_loop)))
    with zarr.config.set(OURS):
        np.testing.assert_array_equal(arr[...], DATA)
        np.testing.assert_array_equal(arr[8:16, 40:48], DATA[8:16, 40:48])
    assert {on_loop for n, on_loop in seen if n > LONG} == {False}
    assert {on_loop for n, on_loop in seen if n <= LONG} == {True}
    assert len(seen) == 3  # (each shard's run, then the chunk's)


def _meet(monkeypatch: pytest.MonkeyPatch, timeout: float) -> None:
    """Each long run's read waits at a barrier of two before it reads."""
    barrier = threading.Barrier(2, timeout=timeout)

    def before(n: int, on_loop: bool) -> None:
        if n > LONG:
            barrier.wait()

    _wrap_reads(monkeypatch, before)


def _read_apart(arr: zarr.Array[Any], how: str) -> list[BaseException]:
    """Read ``arr``'s two shards in one call, or one each from two threads;
    the errors raised."""
    errors: list[BaseException] = []

    def read(sel: Any) -> None:
        try:
            np.testing.assert_array_equal(arr[sel], DATA[sel])
        except BaseException as e:
            errors.append(e)

    # Set here, once: zarr's config.set in two threads at once restores the
    # values in the wrong order, and left our pipeline set for the tests
    # after this one.
    with zarr.config.set(OURS):
        if how == "one call":
            read(np.s_[...])
        else:
            threads = [threading.Thread(target=read, args=(np.s_[:, c : c + 32],)) for c in (0, 32)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=45)  # (the barrier's own timeout is at most 30 s)
            hung = [t.name for t in threads if t.is_alive()]
            assert not hung, f"reads still running after 45 s: {hung}"
    return errors


@pytest.mark.parametrize("how", ["one call", "two threads"])
def test_the_long_runs_of_two_shards_are_read_at_once(
    arr: zarr.Array[Any], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _meet(monkeypatch, timeout=30)
    assert _read_apart(arr, how) == []


@pytest.mark.parametrize("how", ["one call", "two threads"])
def test_control_read_on_the_loop_the_long_runs_wait_for_each_other(
    arr: zarr.Array[Any], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same reads with every run read on zarr's loop: the first holds
    # the loop at the barrier, so the second never comes, and it breaks.
    monkeypatch.setattr(_reads, "RUN_INLINE_MAX_BYTES", 1 << 40)
    _meet(monkeypatch, timeout=0.25)
    errors = _read_apart(arr, how)
    assert errors
    assert all(isinstance(e, threading.BrokenBarrierError) for e in errors)


def test_a_cancelled_read_holds_its_shard_until_the_workers_read_ends(
    arr: zarr.Array[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reading, go_on = threading.Event(), threading.Event()

    def before(n: int, on_loop: bool) -> None:
        if n > LONG:
            reading.set()
            assert go_on.wait(30)

    async def scenario() -> None:
        with zarr.config.set(OURS):
            aarr = await zarr.api.asynchronous.open_array(store=arr.store, path="a")
        _wrap_reads(monkeypatch, before)
        task = asyncio.create_task(aarr.getitem(np.s_[:, :32]))
        assert await asyncio.to_thread(reading.wait, 30)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done  # the cancellation waits for the worker's read
        # ... holding the shard shared: an exclusive hold of it must wait too.
        store = arr.store
        assert isinstance(store, RangeLockedStore)
        with pytest.raises(TimeoutError):
            async with store.locked("a/c/0/0", [(0, None)], timeout=0.2):
                pass
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.locked("a/c/0/0", [(0, None)], timeout=30):
            pass
        await aarr.setitem(np.s_[:8, :8], 1)
        np.testing.assert_array_equal(await aarr.getitem(np.s_[:8, :8]), 1)

    asyncio.run(scenario())
