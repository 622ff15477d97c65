"""Writes spanning several shards take their locks in key order, always.

The livelock narrated (found by the stress runner): W1 and W2 write the same
region across shards K1 < K2. When a write that holds K1 times out waiting
for K2 (its bounded hold-and-wait), it lets go of everything. It used to
start over with the busy shard K2 first; then W1 could take K2 while W2 took
K1, each time out on the other, start over with the other's shard first, and
repeat forever. Starting over in key order (after a random pause) cannot
cycle. The test checks the order of a write's lock requests across a
timeout; the livelock itself needs timing too exact to force. Below, how
a write across shards fails: the first error as itself, and one shard's
failure does not stop the others.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, new_array
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards._dense import _DenseJob
from zarr_rangelock.shards._jobs import _AppendJob


class RecordingStore(RangeLockedStore):
    """Records the key of every lock request, in order."""

    requests: ClassVar[list[str]] = []

    def locked(self, key: str, ranges: Any, **kwargs: Any) -> Any:
        RecordingStore.requests.append(key)
        return super().locked(key, ranges, **kwargs)


@pytest.mark.timeout(60)
def test_a_write_that_timed_out_on_a_later_shard_starts_over_in_key_order() -> None:
    async def scenario() -> None:
        store = RecordingStore(MemoryStore())
        arr = new_array(store, shape=(8, 16), shards=(8, 8), chunks=(4, 4), pipeline=OURS)
        a = arr.async_array
        await a.setitem(slice(None), np.zeros((8, 16), "i4"))  # both shards dense
        mgr = store.lock_manager
        release_k2 = asyncio.Event()
        k2_held = asyncio.Event()

        async def hold_k2() -> None:
            async with store.locked("c/0/1", [(0, None)]):
                k2_held.set()
                await release_k2.wait()

        holder = asyncio.create_task(hold_k2(), name="holder")
        await k2_held.wait()
        RecordingStore.requests = []
        w1 = asyncio.create_task(a.setitem((slice(0, 4), slice(4, 12)), 1), name="w1")

        async def timed_out_twice() -> None:  # W1 timed out on K2, started over, and again
            while mgr.stats().timeouts < 2:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(timed_out_twice(), 10)
        release_k2.set()
        await holder
        await asyncio.wait_for(w1, 10)
        keys = RecordingStore.requests
        # every attempt: K1 then K2; never K2 before K1 (and none left half-checked)
        assert keys[:2] == ["c/0/0", "c/0/1"], keys
        assert len(keys) % 2 == 0, keys
        for i in range(0, len(keys), 2):
            assert keys[i : i + 2] == ["c/0/0", "c/0/1"], keys
        assert (await a.getitem((slice(0, 4), slice(4, 12))) == 1).all()
        s = mgr.stats()
        assert s.holders == s.waiters == 0

    asyncio.run(scenario())


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_several_shard_writes_failing_at_once_raise_the_first_error_as_itself() -> None:
    # Stock zarr (asyncio.gather) raises the first failure as itself; a
    # TaskGroup would raise an ExceptionGroup when two shards fail together.
    from zarr_rangelock.shards._pipeline import _run_all

    both_started = asyncio.Barrier(2)

    def failing(n: int) -> Any:
        async def run() -> None:
            await both_started.wait()  # both are running before either fails
            raise ValueError(f"shard {n} refused")

        return run

    with pytest.raises(ValueError, match="shard 0 refused") as info:
        await _run_all([failing(0), failing(1)], None)
    _first_of_two_as_itself(info.value)


def _first_of_two_as_itself(error: BaseException) -> None:
    """``error`` is the first of two failures, as itself, naming the other.
    No cycle through an exception group (raised inside its except block,
    the error had the group as its __context__, and the group held the
    error): dask distributed pickles a task's error with its chain (tblib),
    which then recursed without end and sent the client a bare Exception."""
    assert type(error) is ValueError
    assert "1 other shard(s) of the same call failed too" in "".join(error.__notes__)
    chained: Any = error.__context__
    while chained is not None:
        assert not isinstance(chained, BaseExceptionGroup), "the error's context is a group"
        chained = chained.__context__


# ------------------------------------------------ one shard of a call failing


def _two_shards(tmp_path: Path, durability: str, compressed: bool) -> tuple[RangeLockedStore, Any]:
    """A 4 x 8 array of two shards of 2 x 2 chunks (zstd, or uncompressed)
    on a LocalStore of ``durability``, with our pipeline."""
    store = RangeLockedStore(LocalStore(tmp_path), durability=durability)  # type: ignore[arg-type]
    arr = new_array(
        store,
        shape=(4, 8),
        shards=(4, 4),
        chunks=(2, 2),
        pipeline=OURS,
        compressors=[ZstdCodec(level=1)] if compressed else None,
    )
    return store, arr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressed", [False, True], ids=["in-place", "appended"])
@pytest.mark.parametrize("phase", ["prepare", "run"])
@pytest.mark.parametrize("durability", ["none", "journal"])
@pytest.mark.parametrize("failing", [0, 1])
def test_a_shard_that_fails_does_not_stop_the_others_of_its_call(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compressed: bool,
    phase: str,
    durability: str,
    failing: int,
) -> None:
    # A write over two shards, one of which fails (its encode before the
    # locks, or its write under them; the first shard or the second): the
    # other is written all the same and the failure raised once both are
    # done, as stock zarr's writes end (it raises at once and lets the
    # others go on behind the caller's back). A journaled store commits a
    # call all or none: nothing.
    store, arr = _two_shards(tmp_path, durability, compressed)
    arr[...] = 1  # both shards made (dense, or compact)
    job = _AppendJob if compressed else _DenseJob

    def refused(self: Any) -> None:
        raise ValueError(f"{self.key} refused")

    if phase == "prepare":
        real_prepare = job.prepare

        async def prepare(self: Any) -> None:
            if self.key.endswith(f"c/0/{failing}"):
                refused(self)
            await real_prepare(self)

        monkeypatch.setattr(job, "prepare", prepare)
    else:
        real_acquire = job.acquire

        async def acquire(self: Any, held: Any, timeout: Any) -> Any:
            run = await real_acquire(self, held, timeout)
            if not self.key.endswith(f"c/0/{failing}"):
                return run

            async def refused_run() -> None:
                refused(self)

            return refused_run

        monkeypatch.setattr(job, "acquire", acquire)
    with pytest.raises(ValueError, match=f"c/0/{failing} refused"):
        arr[...] = 2
    want = np.ones((4, 8), dtype="i4")
    if durability == "none":
        other = 1 - failing
        want[:, 4 * other : 4 * other + 4] = 2
    np.testing.assert_array_equal(arr[...], want)
    s = store.lock_manager.stats()
    assert s.holders == s.waiters == 0


@pytest.mark.timeout(60)
def test_a_write_whose_shards_all_fail_raises_the_first_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Through the pipeline's write, as through _run_all above.
    arr = new_array(
        RangeLockedStore(MemoryStore()), shape=(4, 8), shards=(4, 4), chunks=(2, 2), pipeline=OURS
    )

    async def prepare(self: Any) -> None:
        raise ValueError(f"{self.key} refused")

    monkeypatch.setattr(_DenseJob, "prepare", prepare)
    with pytest.raises(ValueError, match="refused") as info:
        arr[...] = 2
    _first_of_two_as_itself(info.value)
    assert (arr[...] == 0).all()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compressed", [False, True], ids=["in-place", "appended"])
@pytest.mark.parametrize("durability", ["none", "journal"])
def test_a_shard_whose_part_chunk_fails_to_encode_stays_all_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool, durability: str
) -> None:
    # One shard, four part-chunks: the second one's encode fails. Stock zarr
    # encodes a shard whole before writing it, so the shard stays all old;
    # so must ours (a dense shard's in-place write wrote the first
    # part-chunk before encoding the second).
    store, arr = _two_shards(tmp_path, durability, compressed)
    arr[...] = 1
    job = _AppendJob if compressed else _DenseJob
    real_encode = job._encode
    calls: list[tuple[int, ...]] = []

    def encode(self: Any, existing: Any, projection: Any, spec: Any) -> Any:
        calls.append(projection[0])
        if len(calls) == 2:
            raise ValueError(f"chunk {projection[0]} of {self.key} refused")
        return real_encode(self, existing, projection, spec)

    monkeypatch.setattr(job, "_encode", encode)
    with pytest.raises(ValueError, match="refused"):
        arr[1:3, 0:4] = 2
    assert len(calls) == 2
    np.testing.assert_array_equal(arr[...], np.ones((4, 8), dtype="i4"))
    s = store.lock_manager.stats()
    assert s.holders == s.waiters == 0
