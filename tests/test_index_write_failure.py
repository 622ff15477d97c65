"""A compressed shard's index rewritten in place that fails part way.

A write of compressed chunks puts them in the shard's dead or free space,
then rewrites the index in place. A ``pwrite`` of the index that fails half
way (``EIO``, a copy-on-write file system out of space) left half an index:
the shard failed its checksum, for stock zarr and for us, every chunk of it
lost. The old index is now written back, so the shard reads as before the
write, which raises the error. Deterministic: the one range write of the
index's size writes half and fails.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from tests._shard_helpers import OURS, new_array
from zarr_rangelock import PartialWriteError, RangeLockedStore, ShardWriter
from zarr_rangelock.store import _backends

pytestmark = pytest.mark.timeout(60)

INDEX_NBYTES = 16 * 16 + 4  # 16 chunks of (offset, length) and a CRC-32C


@pytest.mark.parametrize("durability", ["none", "fsync"])
@pytest.mark.parametrize("api", ["plain", "write_chunk"])
def test_an_index_write_that_fails_half_way_leaves_the_shard_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, api: str
) -> None:
    store, arr, old = _torn_index_write(tmp_path, monkeypatch, durability, api, put_back=True)
    # Stock zarr reads the shard as before the write (the chunk stays old).
    stock = zarr.open_array(LocalStore(tmp_path, read_only=True), mode="r")
    np.testing.assert_array_equal(stock[...], old)
    np.testing.assert_array_equal(arr[...], old)
    # and the chunk can be written again.
    new = np.full((2, 2), -7, dtype="i4")
    arr[2:4, 2:4] = new
    want = old.copy()
    want[2:4, 2:4] = new
    np.testing.assert_array_equal(stock[...], want)
    s = store.lock_manager.stats()
    assert s.holders == s.waiters == 0


@pytest.mark.parametrize("api", ["plain", "write_chunk"])
def test_an_index_that_cannot_be_written_back_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    # The disk refuses the old index too: the error says the shard is torn.
    _torn_index_write(tmp_path, monkeypatch, "none", api, put_back=False)


def _torn_index_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, api: str, put_back: bool
) -> tuple[RangeLockedStore, Any, np.ndarray]:
    """Write one chunk of a compact zstd shard whose index write fails half
    way (and the write of the old index back too, unless ``put_back``);
    check the error and its note; return the store, the array and the
    values before."""
    store = RangeLockedStore(LocalStore(tmp_path), durability=durability)  # type: ignore[arg-type]
    arr = new_array(
        store,
        shape=(8, 8),
        shards=(8, 8),
        chunks=(2, 2),
        pipeline=OURS,
        compressors=[ZstdCodec(level=1)],
    )
    old = np.arange(64, dtype="i4").reshape(8, 8)
    arr[...] = old  # one compact shard, with free space for appends
    real = _backends._write_range
    torn: list[int] = []

    def write_range(target: Any, data: memoryview, start: int) -> None:
        if len(data) == INDEX_NBYTES and (not torn or not put_back):
            torn.append(start)
            half = len(data) // 2
            real(target, data[:half], start)
            raise _backends.PartialWriteError(errno.EIO, "I/O error", "", start, len(data), half)
        real(target, data, start)

    monkeypatch.setattr(_backends, "_write_range", write_range)
    new = np.full((2, 2), -7, dtype="i4")
    with pytest.raises(PartialWriteError) as info:
        if api == "plain":
            arr[2:4, 2:4] = new
        else:
            ShardWriter(arr).write_chunk((1, 1), new)
    monkeypatch.setattr(_backends, "_write_range", real)
    notes = "".join(getattr(info.value, "__notes__", []))
    if put_back:
        assert torn and "was written back as it was" in notes, notes
    else:
        assert len(torn) == 2 and "index is torn" in notes, notes
    return store, arr, old
