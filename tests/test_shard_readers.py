"""A shard's reader against a writer that moves its chunks (README, caveats).

zarr reads a shard with two store calls: its index, then the chunks at the
offsets the index gives. A writer that moves chunks between them (the
one-time dense layout of a compact shard here; a compaction likewise) makes
the second call read other bytes. Our pipeline holds the shard shared
across both calls, so the writer waits and the reader gets the values it
asked for; zarr's default pipeline on the same store (a process that never
set ``codec_pipeline.path``) does not, and gets another chunk's values.
Deterministic: the writer runs right after the reader's first read of the
shard (with our pipeline, it queues behind the read and is let go after).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from tests._shard_helpers import OURS, STOCK
from tests._threads import wait_until
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.shards import _reads

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("pipeline", ["ours", "default"])
def test_a_shard_laid_out_densely_between_a_readers_index_and_chunk_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipeline: str
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store,
            shape=(8, 8),
            chunks=(2, 2),
            shards=(8, 8),
            dtype="i4",
            compressors=None,
            fill_value=0,
        )
        arr[2:4, 2:4] = 11  # chunk (1, 1) alone: a compact shard, the chunk at offset 0
        writer = ShardWriter(arr)
    new = np.arange(64, dtype="i4").reshape(8, 8)
    new[2:4, 2:4] = 11  # chunk (1, 1) keeps its values; the others get data
    with zarr.config.set(OURS if pipeline == "ours" else STOCK):
        reader = zarr.open_array(store, mode="r")
    writing: list[threading.Thread] = []

    def race() -> None:
        """Right after the reader's read of the shard's index: the writer
        lays the shard out densely, moving chunk (1, 1)."""
        if writing:
            return
        t = threading.Thread(target=writer.__setitem__, args=(Ellipsis, new))
        writing.append(t)
        waits = store.lock_manager.stats().waits
        t.start()
        if pipeline == "ours":  # it waits for the read, which goes on
            wait_until(lambda: store.lock_manager.stats().waits > waits, "the writer waits")
        else:
            t.join()

    if pipeline == "ours":
        real_index = _reads._index

        def index(*args: Any) -> Any:
            got = real_index(*args)
            race()
            return got

        monkeypatch.setattr(_reads, "_index", index)
    else:
        real_get = type(store).get

        async def get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
            got = await real_get(self, key, *args, **kwargs)
            if key == "c/0/0":
                race()
            return got

        monkeypatch.setattr(type(store), "get", get)
    got = reader[2:4, 2:4]
    monkeypatch.undo()
    assert len(writing) == 1, "the reader did not read the shard's index"
    writing[0].join()
    if pipeline == "ours":
        np.testing.assert_array_equal(got, 11)
    else:
        # the bytes now at the old offset: chunk (0, 0)'s new values
        np.testing.assert_array_equal(got, new[0:2, 0:2])
    np.testing.assert_array_equal(reader[...], new)
