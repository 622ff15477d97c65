"""One array write is one journal transaction: a failing write changes nothing.

With ``durability="journal"`` the pipeline collects the writes of every shard
(or, in an array that is not sharded, every chunk) of one ``arr[sel] = value``
and applies them only when all its jobs have finished
(``store._transaction()``). So when one shard's job fails, the other
shards of the same call are left exactly as they were. The control: with
``durability="none"`` the other shards of the failing call are written.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from tests._shard_helpers import OURS
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _jobs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _our_pipeline() -> Any:
    with zarr.config.set(OURS):
        yield


def _write_across_a_failing_shard(
    root: Path, durability: str, monkeypatch: pytest.MonkeyPatch, sharded: bool = True
) -> np.ndarray[Any, Any]:
    """Fill a 2-shard zstd array, then write across both shards while the second
    shard's job fails once the first shard's job has finished (a deterministic
    interleaving); return what the first shard holds afterwards. Not
    ``sharded``: the same with two chunks of an array that is not sharded
    (zarr's own write of each chunk, under its lock), the second chunk's
    ``set`` failing."""
    store = RangeLockedStore(LocalStore(root), durability=durability)  # type: ignore[arg-type]
    arr = zarr.create_array(
        store, name="a", shape=(16,), chunks=(4,) if sharded else (8,),
        shards=(8,) if sharded else None, dtype="i4", fill_value=0, compressors=ZstdCodec(),
    )  # fmt: skip
    arr[:] = np.arange(16, dtype="i4")
    first_done = asyncio.Event()
    if sharded:
        real = _jobs._AppendJob._write

        async def write(job: Any, handle: Any) -> None:
            if job.key == "a/c/1":
                await first_done.wait()
                raise OSError(28, "No space left on device (injected)")
            await real(job, handle)
            first_done.set()

        monkeypatch.setattr(_jobs._AppendJob, "_write", write)
    else:
        real_set = _jobs._HeldByteSetter.set

        async def set_chunk(setter: Any, value: Any) -> None:
            if setter.handle.key == "a/c/1":
                await first_done.wait()
                raise OSError(28, "No space left on device (injected)")
            await real_set(setter, value)
            first_done.set()

        monkeypatch.setattr(_jobs._HeldByteSetter, "set", set_chunk)
    with pytest.raises(OSError, match="injected"):
        arr[2:14] = -1
    monkeypatch.undo()
    first = zarr.open_array(RangeLockedStore(LocalStore(root)), path="a", mode="r")[0:8]
    assert isinstance(first, np.ndarray)
    return first


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "not sharded"])
def test_a_failing_array_write_leaves_its_other_shards_unchanged_in_journal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded: bool
) -> None:
    first = _write_across_a_failing_shard(tmp_path / "s", "journal", monkeypatch, sharded)
    np.testing.assert_array_equal(first, np.arange(8, dtype="i4"))


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "not sharded"])
def test_control_without_a_journal_a_failing_array_write_writes_its_other_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded: bool
) -> None:
    first = _write_across_a_failing_shard(tmp_path / "s", "none", monkeypatch, sharded)
    assert (first[2:8] == -1).all(), first
