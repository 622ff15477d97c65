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
import errno
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, note, settings
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from tests._shard_helpers import OURS
from tests._writer_helpers import check_random_steps
from tests.test_shard_writer import Case, writes_of
from tests.test_shard_writer import _cases as writer_cases
from zarr_rangelock import JournalWarning, RangeLockedStore
from zarr_rangelock.shards import _jobs
from zarr_rangelock.store import _apply, _journal, _record

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


def _journaled_zstd_array(root: Path, shape: int, chunks: int, shards: int) -> zarr.Array[Any]:
    """A journal store at ``root`` with a 1-d compressed (zstd) sharded
    ``i4`` array "a" of fill value 0 (the caller fills it)."""
    store = RangeLockedStore(LocalStore(root), durability="journal")
    return zarr.create_array(
        store, name="a", shape=(shape,), chunks=(chunks,), shards=(shards,), dtype="i4",
        fill_value=0, compressors=ZstdCodec(),
    )  # fmt: skip


def _shard_files(root: Path) -> dict[str, bytes]:
    """Every file of array "a"'s ``c`` directory, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in (root / "a" / "c").iterdir()}


def _range_of_a(root: Path) -> tuple[bytes, _journal.Journal, _journal.Transaction]:
    """Key "a" holding 64 old bytes, a journal at ``root`` and a transaction
    writing b"new!" at bytes 10-14 of "a"; returns the old bytes, the
    journal and the transaction."""
    old = bytes(range(64))
    (root / "a").write_bytes(old)
    journal = _journal.Journal(str(root))
    txn = _journal.Transaction(journal)
    txn.add_range("a", b"new!", 10, len(old))
    return old, journal, txn


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


def test_a_commit_failing_while_applied_rolls_back_its_renames_and_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One call writes three compressed shards: c/0 in part (its chunk
    # appended, range writes), c/1 whole with fill values (deleted), c/2
    # new (a prepared file renamed over the missing key). The record is
    # durable; applying it, the fdatasync of c/0's file fails, so the apply
    # is undone in reverse: c/1 linked back, c/2 removed, c/0's bytes
    # written back and synced. Left undone, the call that raised had
    # deleted c/1 and made c/2.
    root = tmp_path.resolve()
    arr = _journaled_zstd_array(root, 12, chunks=2, shards=4)
    old = np.array([1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0, 0], "i4")
    arr[0:8] = old[0:8]
    before = _shard_files(root)
    assert sorted(before) == ["0", "1"]
    data = str(root / "a" / "c" / "0")
    real = os.fdatasync
    failed: list[int] = []

    synced_after: list[str] = []  # what is fdatasynced once the failure is in

    def failing(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if failed:
            synced_after.append(path)
        elif path == data:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error (injected)")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError) as info:
        arr[2:10] = np.array([5, 5, 0, 0, 0, 0, 7, 7], "i4")
    monkeypatch.undo()
    assert failed, "c/0's file was never synced"
    assert info.value.errno == errno.EIO
    assert any("rolled back" in note for note in getattr(info.value, "__notes__", []))
    assert data in synced_after  # the bytes written back are durable before the record goes
    assert _shard_files(root) == before
    np.testing.assert_array_equal(arr[:], old)


def test_a_failing_journaled_write_leaves_no_prepared_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shard c/0 is written whole with values that do not compress, so its
    # job builds the new shard in a prepared file (the transaction's, to be
    # renamed at commit); shard c/1's job then fails. Nothing commits, and
    # the prepared file goes with the transaction (left, it was litter no
    # listing shows, kept until a durable store opened a minute later).
    root = tmp_path.resolve()
    arr = _journaled_zstd_array(root, 16, chunks=4, shards=8)
    arr[:] = np.arange(16, dtype="i4")
    before = _shard_files(root)
    first_done = asyncio.Event()
    real = _jobs._AppendJob._write
    prepared: list[str] = []

    async def write(job: Any, handle: Any) -> None:
        if job.key == "a/c/1":
            await first_done.wait()
            prepared.extend(p.name for p in (root / "a" / "c").iterdir() if p.name not in before)
            raise OSError(28, "No space left on device (injected)")
        await real(job, handle)
        first_done.set()

    monkeypatch.setattr(_jobs._AppendJob, "_write", write)
    noise = np.random.default_rng(3).integers(-(2**31), 2**31 - 1, size=10, dtype="i4")
    with pytest.raises(OSError, match="injected"):
        arr[0:10] = noise
    monkeypatch.undo()
    assert len(prepared) == 1 and prepared[0].startswith("0."), prepared  # c/0's new value
    assert _shard_files(root) == before
    np.testing.assert_array_equal(arr[:], np.arange(16, dtype="i4"))


def test_a_commit_whose_new_keys_value_fails_to_be_written_is_rolled_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One transaction writes a range of "a" and a value of "n", a key with
    # no file yet. The range is applied; then writing n's temporary file
    # fails (a full disk), before any file is named "n". The undo must
    # still write a's bytes back and retire the record. (It undid n first,
    # by removing a file "n" there was none of, failed with
    # FileNotFoundError, and undid nothing more: a's range stayed written,
    # the record stayed for replay, and the error said the undo failed.)
    root = tmp_path.resolve()
    old, journal, txn = _range_of_a(root)
    txn.add_set("n", b"a new value")
    real = _apply.write_range

    def failing(fd: int, data: memoryview, start: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{root}/n."):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real(fd, data, start)

    monkeypatch.setattr(_apply, "write_range", failing)
    with pytest.raises(OSError, match="injected") as info:
        journal.commit(txn, sync=False)
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    assert any("rolled back" in note for note in notes), notes
    assert not any("undoing the transaction failed" in note for note in notes), notes
    assert (root / "a").read_bytes() == old
    assert not (root / "n").exists()
    assert [_record._decode(p.read_bytes()) for p in (root / _journal.JOURNAL_DIR).iterdir()] == [
        None
    ]


def test_a_rollback_that_fails_part_way_keeps_the_prepared_file_its_record_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One transaction writes a range of "a" and renames a prepared file over
    # "b" (a compaction's new shard beside another shard's appended chunk).
    # Applying it, the fdatasync of a's file fails (EIO); the undo renames
    # b's old file back, then writing a's old bytes back fails too (EIO):
    # the record stays, and replay is to bring the transaction to all new
    # (the design note's *Failures*). It must find b's prepared file there:
    # the undo had renamed b's old file over it, dropping it, so replay
    # skipped b with a warning and applied only a, half the transaction.
    root = tmp_path.resolve()
    old, journal, txn = _range_of_a(root)
    (root / "b").write_bytes(b"old b")
    prepared = root / f"b.{'ab' * 16}.partial"
    prepared.write_bytes(b"the new b")
    txn.add_file("b", prepared.name, prepared.stat().st_ino, 9)
    a = str(root / "a")
    real_sync, real_write = os.fdatasync, _apply.write_range

    def sync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == a:
            raise OSError(errno.EIO, "Input/output error (injected)")
        real_sync(fd)

    def write(fd: int, data: memoryview, start: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == a:
            raise OSError(errno.EIO, "Input/output error (injected, the undo)")
        real_write(fd, data, start)

    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(_apply, "write_range", write)
    with pytest.raises(OSError, match="injected") as info:
        journal.commit(txn, sync=True)
    monkeypatch.undo()
    assert any("undoing the transaction failed too" in n for n in info.value.__notes__)
    # The process dies: its journal file (kept for replay) is let go.
    (live,) = (fd for fd, ref in _journal._OPEN.items() if ref and (f := ref()) and f.live)
    _journal._close(live)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalWarning)
        RangeLockedStore(LocalStore(root), durability="journal")
    assert (root / "a").read_bytes() == old[:10] + b"new!" + old[14:]
    assert (root / "b").read_bytes() == b"the new b"


def test_a_rollback_makes_its_renames_back_durable_before_the_record_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One transaction writes a range of "a" and renames a prepared file over
    # "d/b". Applying it, the fdatasync of a's file fails (EIO) before the
    # directories were fsynced; the undo renames d/b's old file back, and the
    # record is retired. With durability="journal" the renames back must be
    # durable before that (d fsynced), or a power loss could leave d/b new
    # beside a's old bytes, the record gone: half the transaction.
    root = tmp_path.resolve()
    _, journal, txn = _range_of_a(root)
    (root / "d").mkdir()
    (root / "d" / "b").write_bytes(b"old b")
    prepared = root / "d" / f"b.{'ab' * 16}.partial"
    prepared.write_bytes(b"the new b")
    txn.add_file("d/b", f"d/{prepared.name}", prepared.stat().st_ino, 9)
    a = str(root / "a")
    real_sync, real_dir = os.fdatasync, _apply._fsync_dir
    events: list[str] = []

    def sync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path == a and not events:
            events.append("failed")
            raise OSError(errno.EIO, "Input/output error (injected)")
        if path.endswith(".jnl") and events and os.pread(fd, 8, 0) == bytes(8):
            events.append("retired")
        real_sync(fd)

    def sync_dir(path: str) -> None:
        events.append(path)
        real_dir(path)

    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(_apply, "_fsync_dir", sync_dir)
    with pytest.raises(OSError, match="injected") as info:
        journal.commit(txn, sync=True)
    monkeypatch.undo()
    assert any("rolled back" in n for n in info.value.__notes__)
    assert (root / "d" / "b").read_bytes() == b"old b"
    assert events[0] == "failed" and "retired" in events, events
    assert str(root / "d") in events[: events.index("retired")], events


@pytest.mark.parametrize("compressor", ["raw", "zstd"])
@pytest.mark.parametrize("empty", [False, True], ids=["elide-empty", "write-empty"])
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=writer_cases())
def test_random_writes_through_a_writer_on_a_journaled_store_match_the_plain_api(
    compressor: str, empty: bool, case: Case
) -> None:
    """``test_shard_writer``'s random writes (``write_chunk``, whole chunks,
    any selection; random shapes, dtypes and fill values, edge chunks), the
    writer's wrapper journaled (``journal-nosync``), the plain API's not,
    with ``write_empty_chunks`` off and on: the same values and keys after
    every write, and stock zarr reads the model."""
    note(repr(case))
    array = case.array
    check_random_steps("local-journal", compressor, empty, array, case.writes, writes_of(array))
