"""Setup shared by the tests of sharded arrays."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.storage import MemoryStore

from zarr_rangelock import RangeLockedStore

OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}


def new_array(
    store: Store,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    pipeline: dict[str, str] | None = None,
    **kwargs: Any,
) -> zarr.Array[Any]:
    """A new array in ``store``: int32, fill value 0 and no compressor unless
    ``kwargs`` (more ``zarr.create_array`` arguments) say otherwise. The array
    keeps the codec pipeline that the zarr config ``pipeline`` names (zarr's
    default if None)."""
    options: dict[str, Any] = {"dtype": "i4", "fill_value": 0, "compressors": None, **kwargs}
    with zarr.config.set(pipeline or {}):
        return zarr.create_array(store, shape=shape, chunks=chunks, **options)


def _not_metadata(key: str) -> bool:
    return not key.endswith("zarr.json")


class FirstSetWaits(MemoryStore):
    """A MemoryStore whose first ``set`` of a key that ``holds`` (by default
    any chunk or shard key) waits until a second such ``set`` has finished:
    forces the interleaving in which stock zarr's read-merge-write of a shard
    (or chunk) loses the other writer's part, when both write one key."""

    def __init__(self, holds: Callable[[str], bool] = _not_metadata, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # with_read_only() passes store_dict and read_only
        self.holds = holds
        self.held_sets = 0
        self._second_done: asyncio.Event | None = None

    async def set(self, key: str, value: Any, byte_range: tuple[int, int] | None = None) -> None:
        if not self.holds(key):
            await super().set(key, value, byte_range)
            return
        self.held_sets += 1
        if self.held_sets == 1:
            self._second_done = asyncio.Event()
            await asyncio.wait_for(self._second_done.wait(), 10)  # the deadline only catches a hang
            await super().set(key, value, byte_range)
        else:
            await super().set(key, value, byte_range)
            assert self._second_done is not None
            self._second_done.set()


def no_locks_left(arr: zarr.Array[Any]) -> None:
    """The lock table of ``arr``'s store (a ``RangeLockedStore``) holds
    nothing and nobody waits; its invariants hold."""
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    store.lock_manager._check()
    stats = store.lock_manager.stats()
    assert stats.holders == 0 and stats.waiters == 0
