"""A range write cut short by ``RLIMIT_FSIZE`` (issue 11): with ``durability="none"``
it says how many bytes it wrote; journaled, it is rolled back, and so is a
write whose data sync fails or whose record is cut short. Split from
``test_durability.py``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._journal_records import journal_files
from tests._processes import child_env
from tests._shard_helpers import OURS, new_array
from zarr_rangelock import JournalWarning, RangeLockedStore

pytestmark = pytest.mark.timeout(60)

B = cpu.Buffer.from_bytes

MiB = 1 << 20
OLD = bytes(range(256)) * (MiB // 256)  # the data file, written before the limit
NEW = b"\xff" * (64 << 10)

_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from zarr.core.buffer import cpu
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    root, mode, limit, start, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    store = RangeLockedStore(LocalStore(root), durability=mode)
    # Before the limit: open the lock file (it is sized once) and, journaled,
    # make the journal file with a first record of one byte.
    first = store.get_sync("k", byte_range=None).to_bytes()[:1]
    store.set_range_sync("k", cpu.Buffer.from_bytes(first), 0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        store.set_range_sync("k", cpu.Buffer.from_bytes(b"\\xff" * n), start)
    except OSError as exc:
        out = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc),
               "notes": getattr(exc, "__notes__", [])}
        out |= {a: getattr(exc, a, None) for a in ("key", "start", "length", "written")}
        print(json.dumps(out))
    else:
        print(json.dumps(None))
    """
)


def _write_past_the_limit(root: Path, mode: str, limit: int, start: int) -> dict[str, Any]:
    """A child writes NEW at ``start`` of key "k" (OLD, 1 MiB) with files
    limited to ``limit`` bytes; what it raised."""
    root.mkdir(exist_ok=True)
    (root / "k").write_bytes(OLD)
    return _child_json(_CHILD, str(root), mode, str(limit), str(start), str(len(NEW)))


def _child_json(code: str, *args: str) -> dict[str, Any]:
    """What the child ``code`` raised (its JSON line): it must exit cleanly, and fail."""
    env = child_env()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got is not None, "the write did not fail: the limit was not hit"
    return dict(got)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
def test_a_range_write_cut_short_says_how_many_bytes_it_wrote(tmp_path: Path) -> None:
    limit = 256 << 10
    start = limit - 1000  # 1000 bytes fit, the 64 KiB range crosses the limit
    got = _write_past_the_limit(tmp_path, "none", limit, start)
    assert got["type"] == "PartialWriteError"
    assert got["errno"] == errno.EFBIG
    assert (got["key"], got["start"], got["length"], got["written"]) == (
        "k",
        start,
        len(NEW),
        1000,
    )
    assert "key 'k'" in got["message"]
    assert f"failed after 1000 bytes: [{start}, {limit}) was written" in got["message"]
    assert f"[{limit}, {start + len(NEW)}) was not" in got["message"]
    data = (tmp_path / "k").read_bytes()
    assert data[start:limit] == NEW[:1000]  # as the error says
    assert data[limit:] == OLD[limit:]
    assert data[:start] == OLD[:start]


def _reopen_journaled(root: Path) -> None:
    """Open the root in journal mode, failing on any JournalWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalWarning)
        RangeLockedStore(LocalStore(root), durability="journal")


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
def test_a_journaled_range_write_cut_short_is_rolled_back(tmp_path: Path) -> None:
    # The record (64 KiB and a header) fits under the limit; the data write,
    # 1000 bytes below it in a 1 MiB file, is cut short. Writing the old
    # bytes back must itself stay below the limit.
    limit = 256 << 10
    start = limit - 1000
    got = _write_past_the_limit(tmp_path, "journal", limit, start)
    assert got["errno"] == errno.EFBIG
    assert got["type"] == "PartialWriteError"
    assert (got["key"], got["start"], got["written"]) == ("k", start, 1000)
    assert any("rolled back" in note for note in got["notes"]), got
    assert (tmp_path / "k").read_bytes() == OLD
    # The record was retired: opening the root (the child is gone) replays nothing.
    _reopen_journaled(tmp_path)
    assert (tmp_path / "k").read_bytes() == OLD
    assert journal_files(tmp_path) == []


_ARRAY_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    import zarr
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    root, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    store = RangeLockedStore(LocalStore(root), durability="journal")
    with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
        arr = zarr.open_array(store, mode="r+")
        arr[0:1] = 1  # before the limit: the journal file is made
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            arr[448 << 10 : 576 << 10] = 2  # the last chunk of c/0 and the first of c/1
        except OSError as exc:
            print(json.dumps({"type": type(exc).__name__, "written": getattr(exc, "written", None),
                              "notes": getattr(exc, "__notes__", [])}))
        else:
            print(json.dumps(None))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
def test_an_array_write_cut_short_in_a_journal_transaction_is_rolled_back(tmp_path: Path) -> None:
    # Two dense shards of 8 chunks of 64 KiB; a child limits files to 1000
    # bytes past the start of c/0's last chunk and writes that chunk and
    # c/1's first, one transaction of two ranges: applying it, the write
    # into c/0 is cut short after 1000 bytes. Its undo must write back
    # those 1000 bytes only: the old bytes of the whole chunk run into the
    # limit again, the rollback fails, and the record (the new chunks) is
    # replayed at the next open, though the call raised.
    root = tmp_path.resolve()
    store = RangeLockedStore(
        LocalStore(root)
    )  # "none": this process replays at its first journal open
    arr = new_array(
        store, shape=(1 << 20,), chunks=(64 << 10,), shards=(512 << 10,), dtype="u1", pipeline=OURS
    )
    with zarr.config.set(OURS):
        arr[:] = 1
    got = _child_json(_ARRAY_CHILD, str(root), str((448 << 10) + 1000))
    assert (got["type"], got["written"]) == ("PartialWriteError", 1000)
    assert any("rolled back" in note for note in got["notes"]), got
    _reopen_journaled(root)  # the child is gone: the record was retired, nothing to replay
    assert journal_files(root) == []
    with zarr.config.set(OURS):
        assert (zarr.open_array(store, mode="r")[:] == 1).all()


def test_a_journaled_range_write_whose_data_sync_fails_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The range is written whole, then the data file's fdatasync reports EIO:
    # every byte of the range was written, so every one is written back (an
    # error that is no PartialWriteError says nothing of a short write).
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability="journal")
    store.set_sync("k", B(b"0" * 64))
    store.set_range_sync("k", B(b"w"), 0)  # the journal file exists now
    data = str(root / "k")
    real = os.fdatasync
    failed: list[int] = []

    def failing(fd: int) -> None:
        if not failed and os.readlink(f"/proc/self/fd/{fd}") == data:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError) as info:
        store.set_range_sync("k", B(b"N" * 8), 8)
    monkeypatch.undo()
    assert failed, "the data file was never synced"
    assert info.value.errno == errno.EIO
    assert any("rolled back" in note for note in getattr(info.value, "__notes__", []))
    assert store.get_sync("k").to_bytes() == b"w" + b"0" * 63  # type: ignore[union-attr]
    assert (root / "k").read_bytes() == b"w" + b"0" * 63


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
def test_a_journal_record_cut_short_applies_nothing_and_is_retired(tmp_path: Path) -> None:
    # Here the limit (32 KiB) is below the record's size: the record write is
    # the first to hit EFBIG, before any data byte is touched.
    got = _write_past_the_limit(tmp_path, "journal", 32 << 10, 0)
    assert got["errno"] == errno.EFBIG
    assert got["type"] == "PartialWriteError"
    assert got["key"] == ""  # a journal file, no key
    assert got["written"] == 32 << 10
    assert any("journal record" in n and "nothing was applied" in n for n in got["notes"]), got
    assert (tmp_path / "k").read_bytes() == OLD
    # No half-written record is left to be discarded (with a warning) later.
    _reopen_journaled(tmp_path)
    assert (tmp_path / "k").read_bytes() == OLD
