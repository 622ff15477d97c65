"""What a durable ``RangeLockedStore(LocalStore)`` does when it opens (issue 11).

Journal replay: records are written by hand (``tests/_journal_records.py``),
in the format of ``store/_record``'s design note, into the journal file of a
"dead" process (a ``<pid>-<hex>.jnl`` file nobody holds an ``flock`` on);
opening the root with ``durability="journal"`` applies a complete record and
discards a corrupt one with a ``JournalWarning``, and removes the file either
way. Records of the current format carry witnesses (a range's old bytes, a
replaced key's identity): replay leaves a key another writer changed since,
with a warning (``test_durability_journal_witnesses.py``); records of the
earlier format replay as they always did. Stray
temporary files of killed writers: removed when old and unlocked, kept
otherwise. Also: a commit whose undo fails keeps its record for replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
from zarr.storage import LocalStore

from tests._journal_records import (
    ABSENT,
    OLD_A,
    OLD_B,
    B,
    Op,
    crc,
    dead_journal,
    journal_root,
    open_journaled,
    record,
)
from tests._processes import child_env
from tests._threads import wait_until
from zarr_rangelock import (
    JournalWarning,
    PartialWriteError,
    RangeLockedStore,
    SelfDeadlockError,
)
from zarr_rangelock.store import _durable, _io, _journal, _record
from zarr_rangelock.store._journal import JOURNAL_DIR

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with keys "a" (100 bytes), "b/c" (50) and "d" (3), written directly."""
    return journal_root(tmp_path)


def test_the_hand_written_record_is_byte_for_byte_what_the_journal_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_record.time, "time_ns", lambda: 12345)
    big = b"L" * (_record.OLD_BYTES_MAX + 1)  # its old bytes are not carried
    ops = {
        "a": _journal._KeyOps(
            ranges=[(3, b"xyz"), (50, b"!"), (60, big)], olds=[b"old", b"?", bytes(len(big))]
        ),
        "b/c": _journal._KeyOps(value=bytearray(b"new"), was=(7, 8)),
        "d": _journal._KeyOps(delete=True, was=ABSENT),
        "e": _journal._KeyOps(file=f"e.{'ab' * 16}.partial", file_ino=99, was=(7, 9)),
    }
    mine = record(
        [
            (b"R", "a", 3, b"xyz"),
            (b"R", "a", 50, b"!"),
            (b"R", "a", 60, big),
            (b"S", "b/c", 0, b"new"),
            (b"D", "d", 0, b""),
            (b"F", "e", 99, f"e.{'ab' * 16}.partial".encode()),
        ],
        when=12345,
        witnesses=[b"old", b"?", None, (7, 8), ABSENT, (7, 9)],
    )
    assert _record._encode(ops) == mine
    when, decoded = _record._decode(mine) or (0, {})
    assert when == 12345 and decoded == ops | {
        "a": _journal._KeyOps(ranges=ops["a"].ranges, olds=[b"old", b"?", None])
    }


def test_a_record_of_the_earlier_format_decodes_without_witnesses() -> None:
    raw = record([(b"R", "a", 3, b"xyz"), (b"S", "b/c", 0, b"new"), (b"D", "d", 0, b"")])
    assert _record._decode(raw) == (
        1,
        {
            "a": _journal._KeyOps(ranges=[(3, b"xyz")]),
            "b/c": _journal._KeyOps(value=bytearray(b"new")),
            "d": _journal._KeyOps(delete=True),
        },
    )


def test_records_of_several_dead_processes_are_replayed_in_the_order_they_were_written(
    tmp_path: Path, no_journal_warning: None
) -> None:
    # Process "b" wrote first (t=1) and died; process "a" then took the same
    # bytes, wrote (t=2) and died too. Sorted by name "a" comes first, but its
    # write is the later one: it must win.
    root = tmp_path / "s"
    root.mkdir()
    (root / "k").write_bytes(b"0" * 8)
    dead_journal(root, record([(b"R", "k", 0, b"late")], when=2), "1-aaaaaaaaaaaaaaaa.jnl")
    dead_journal(root, record([(b"R", "k", 0, b"1st!")], when=1), "2-bbbbbbbbbbbbbbbb.jnl")
    open_journaled(root)
    assert (root / "k").read_bytes() == b"late0000"


# ------------------------------------------------------------------ complete records


def test_a_dead_processs_range_record_is_applied_and_its_file_removed(
    root: Path, no_journal_warning: None
) -> None:
    jnl = dead_journal(root, record([(b"R", "a", 10, b"XYZ")]))
    store = open_journaled(root)
    assert (root / "a").read_bytes() == OLD_A[:10] + b"XYZ" + OLD_A[13:]
    assert not jnl.exists()
    assert store.get_sync("a") is not None


def test_a_dead_processs_whole_value_records_replace_and_create_keys(
    root: Path, no_journal_warning: None
) -> None:
    dead_journal(root, record([(b"S", "b/c", 0, b"short")]), "1-aaaaaaaaaaaaaaaa.jnl")
    dead_journal(root, record([(b"S", "e/f/g", 0, b"made")]), "2-bbbbbbbbbbbbbbbb.jnl")
    store = open_journaled(root)
    assert (root / "b" / "c").read_bytes() == b"short"
    assert (root / "e" / "f" / "g").read_bytes() == b"made"
    assert list((root / JOURNAL_DIR).iterdir()) == []
    # no aside or temporary file left beside the keys
    assert sorted(p.name for p in (root / "b").iterdir()) == ["c"]
    assert store.get_sync("e/f/g") is not None


def test_a_dead_processs_delete_record_removes_the_key(
    root: Path, no_journal_warning: None
) -> None:
    jnl = dead_journal(root, record([(b"D", "d", 0, b"")]))
    open_journaled(root)
    assert not (root / "d").exists()
    assert not jnl.exists()
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["a", "b"]


def test_a_dead_processs_multi_key_record_is_applied_whole(
    root: Path, no_journal_warning: None
) -> None:
    ops: list[Op] = [
        (b"R", "a", 0, b"12"),
        (b"R", "a", 98, b"89"),
        (b"S", "b/c", 0, b"whole"),
        (b"D", "d", 0, b""),
    ]
    jnl = dead_journal(root, record(ops))
    open_journaled(root)
    assert (root / "a").read_bytes() == b"12" + OLD_A[2:98] + b"89"
    assert (root / "b" / "c").read_bytes() == b"whole"
    assert not (root / "d").exists()
    assert not jnl.exists()


def test_a_retired_record_is_removed_and_not_applied(root: Path, no_journal_warning: None) -> None:
    raw = bytearray(record([(b"R", "a", 0, b"NOPE"), (b"D", "d", 0, b"")]))
    raw[:8] = b"\0" * 8
    jnl = dead_journal(root, bytes(raw))
    empty = dead_journal(root, b"", "7-cccccccccccccccc.jnl")  # made, never written
    half_made = dead_journal(root, b"", "8-dddddddddddddddd.new")  # killed before the rename
    then = half_made.stat().st_mtime - _journal.STALE_NEW_S - 5
    os.utime(half_made, (then, then))
    # A fresh ".new" may be one a live process is about to lock and rename.
    being_made = dead_journal(root, b"", "9-eeeeeeeeeeeeeeee.new")
    open_journaled(root)
    assert (root / "a").read_bytes() == OLD_A
    assert (root / "d").read_bytes() == b"ddd"
    assert not jnl.exists() and not empty.exists() and not half_made.exists()
    assert being_made.exists()


def test_a_journal_file_whose_process_is_alive_is_left_alone(
    root: Path, no_journal_warning: None
) -> None:
    jnl = dead_journal(root, record([(b"R", "a", 0, b"LIVE")]))
    # The owner: an flock on another open file description of the file.
    owner = os.open(jnl, os.O_RDWR)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        open_journaled(root)
        assert (root / "a").read_bytes() == OLD_A
        assert jnl.exists()
    finally:
        os.close(owner)
    # Its owner gone, the next process to open the root replays it.
    script = textwrap.dedent(
        f"""
        from zarr.storage import LocalStore
        from zarr_rangelock import RangeLockedStore
        RangeLockedStore(LocalStore({str(root)!r}), durability="journal")
        """
    )
    env = child_env()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=50, env=env)
    assert (root / "a").read_bytes() == b"LIVE" + OLD_A[4:]
    assert not jnl.exists()


def test_a_journal_store_opened_after_an_fsync_store_of_its_root_still_replays(
    root: Path, no_journal_warning: None
) -> None:
    # A program opens the root with durability="fsync" (which has no journal
    # to replay) and then with "journal". The journal store must replay the
    # dead process's record before its first write: left for a later open, it
    # would be replayed over that write ("LIVE" over "mine").
    jnl = dead_journal(root, record([(b"R", "a", 0, b"DEAD")]))
    fsynced = RangeLockedStore(LocalStore(root), durability="fsync")
    assert jnl.exists()  # not its to replay
    journaled = open_journaled(root)
    assert (root / "a").read_bytes() == b"DEAD" + OLD_A[4:]
    assert not jnl.exists()
    journaled.set_range_sync("a", B(b"mine"), 0)
    fsynced.close()
    journaled.close()
    assert (root / "a").read_bytes() == b"mine" + OLD_A[4:]


def test_a_dead_journal_that_another_replay_takes_first_is_neither_replayed_again_nor_an_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replays of a root take turns (the journal directory's flock; the
    # processes' version of this is in test_processes_journal_replay.py),
    # but a replay without that turn (a process of an earlier version
    # opening the root at the same time) can still adopt the dead process's
    # file between our open of it and our flock of it: it replays it,
    # removes it and lets go. We then get the flock of a file no path names:
    # we must leave it, not remove it again (which raised FileNotFoundError
    # out of the store's constructor, and killed a multiprocessing worker
    # quietly, hanging its pool) nor warn about it. Our side runs the
    # replay's work without its turn (Journal._replay), so the other one,
    # a whole recover(), gets the turn inside it.
    store = open_journaled(root)
    journal = store._backend.journal
    assert journal is not None
    jnl = dead_journal(root, record([(b"R", "a", 0, b"DEAD")]))
    opened = _journal._open
    raced: list[int] = []

    def open_then_race(path: str, flags: int) -> int:
        fd = opened(path, flags)
        if path == str(jnl) and not raced:
            raced.append(-1)
            raced[0] = store.recover()  # the other replay
        return fd

    monkeypatch.setattr(_journal, "_open", open_then_race)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalWarning)
        assert journal._replay(lambda keys: contextlib.nullcontext(), []) == 0
    assert raced == [1]
    assert (root / "a").read_bytes() == b"DEAD" + OLD_A[4:]
    assert not jnl.exists()


def test_replay_waits_for_a_live_holder_of_the_records_keys(
    root: Path, no_journal_warning: None
) -> None:
    # A record is applied under whole-key locks on its keys: a writer of "a"
    # in this process, mid-way through its block, must not see it land.
    store = open_journaled(root)  # nothing to replay yet
    dead_journal(root, record([(b"R", "a", 10, b"XYZ")]))
    mgr = store.lock_manager
    replayed: list[int] = []
    replay = threading.Thread(target=lambda: replayed.append(store.recover()), daemon=True)
    with store.locked_sync("a", [(0, None)]):
        replay.start()
        wait_until(lambda: mgr.stats().waiters == 1, "the replay queues for key 'a'")
        assert (root / "a").read_bytes() == OLD_A
    replay.join(timeout=30)
    assert replayed == [1]
    assert (root / "a").read_bytes() == OLD_A[:10] + b"XYZ" + OLD_A[13:]
    assert mgr.stats().holders == mgr.stats().waiters == 0


@pytest.mark.parametrize(
    "held", ["a range of the key", "a prefix lock of the root", "a task on this thread"]
)
def test_recover_while_the_caller_holds_a_records_key_raises_self_deadlock_error(
    root: Path, held: str, no_journal_warning: None
) -> None:
    # The replay waits for a record's keys only a while, then lets go of all
    # and starts over (the hold-and-wait rule), so a caller holding one of
    # them in its own with block used to spin there for ever, retrying every
    # 50-100 ms, where a plain lock request without a timeout raises
    # SelfDeadlockError. Now the replay's requests refuse such a wait too.
    # (A prefix lock of the root also covers the replay's turn, whose
    # request has no timeout and was refused before.)
    store = open_journaled(root)  # nothing to replay yet
    dead_journal(root, record([(b"R", "a", 10, b"XYZ")], witnesses=[OLD_A[10:13]]))
    mgr = store.lock_manager
    if held == "a task on this thread":

        async def hold_and_recover() -> None:
            async with store.locked("a", [(0, 4)]):
                with pytest.raises(SelfDeadlockError, match="async with block of this task"):
                    store.recover()  # blocking, on the loop's thread

        asyncio.run(hold_and_recover())
    else:
        block = store.locked_sync("a", [(0, 4)]) if held.startswith("a range") else None
        with (
            block if block is not None else mgr.lock_prefix(""),
            pytest.raises(SelfDeadlockError, match="held by a with block of this thread"),
        ):
            store.recover()
    assert (root / "a").read_bytes() == OLD_A  # nothing applied
    assert store.recover() == 1  # the block ended: the record is applied
    assert (root / "a").read_bytes() == OLD_A[:10] + b"XYZ" + OLD_A[13:]
    assert mgr.stats().holders == mgr.stats().waiters == 0


def test_a_replay_and_a_prefix_lock_queued_between_its_turn_and_its_keys_both_finish(
    root: Path, monkeypatch: pytest.MonkeyPatch, no_journal_warning: None
) -> None:
    # A replay takes its turn (a lock of the journal directory's name, which
    # a prefix lock of the root covers, as clear() and delete_dir("") take),
    # reads the records, then waits for their keys. A prefix lock of the
    # root asked for in between queues behind the turn, and the replay's
    # request for key "a" then queues behind that prefix lock (FIFO): each
    # waited for the other, for ever (here until the prefix lock's timeout).
    # Now the replay lets go of its turn when a key's wait runs out and
    # starts over. (Only the lock is taken here, as clear() would, never
    # clear() itself.)
    store = open_journaled(root)  # nothing to replay yet
    dead_journal(root, record([(b"R", "a", 10, b"XYZ")], witnesses=[OLD_A[10:13]]))
    mgr = store.lock_manager
    in_turn, go_on = threading.Event(), threading.Event()
    real = _journal.Journal._adopt

    def adopt(self: _journal.Journal, name: str) -> object:
        in_turn.set()
        go_on.wait(30)
        return real(self, name)

    monkeypatch.setattr(_journal.Journal, "_adopt", adopt)
    replayed: list[int] = []
    replay = threading.Thread(target=lambda: replayed.append(store.recover()), daemon=True)
    replay.start()
    assert in_turn.wait(30)
    prefix: list[object] = []
    clearer = threading.Thread(
        target=lambda: prefix.append(mgr.acquire_prefix("", timeout=20)), daemon=True
    )
    clearer.start()
    wait_until(lambda: mgr.stats().waiters == 1, "the prefix lock queues behind the turn")
    go_on.set()
    clearer.join(timeout=20)
    for grant in prefix:
        mgr.release(grant)  # type: ignore[arg-type]
    replay.join(timeout=20)
    assert not replay.is_alive() and replayed == [1]
    assert (root / "a").read_bytes() == OLD_A[:10] + b"XYZ" + OLD_A[13:]
    assert len(prefix) == 1, "the prefix lock was never granted"
    assert mgr.stats().holders == mgr.stats().waiters == 0


def test_a_range_record_past_the_keys_end_is_skipped_with_a_warning(root: Path) -> None:
    jnl = dead_journal(root, record([(b"R", "d", 2, b"toolong"), (b"R", "a", 0, b"ok")]))
    with pytest.warns(JournalWarning, match=r"key .*/d is 3 bytes.*7 bytes at 2 was skipped"):
        open_journaled(root)
    assert (root / "d").read_bytes() == b"ddd"
    assert (root / "a").read_bytes() == b"ok" + OLD_A[2:]
    assert not jnl.exists()


# ------------------------------------------------------------------ corrupt records


def _good() -> bytes:
    return record([(b"R", "a", 0, b"CORRUPT"), (b"S", "b/c", 0, b"gone"), (b"D", "d", 0, b"")])


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


def _v2(kind: bytes, flags: int, key: str, n: int, payload: bytes) -> bytes:
    """A current-format record of one entry with these exact fields (what
    ``record`` would never write), its checksums right."""
    kb = key.encode()
    body = struct.pack("<cBHQQQQ", kind, flags, len(kb), 0, n, 0, 0) + kb + payload
    head = b"ZRLJNL02" + struct.pack("<QQI", len(body), 1, crc(body))
    return head + struct.pack("<I", crc(head)) + body


CORRUPT = {
    "unknown flags": (lambda: _v2(b"R", 0x10, "a", 2, b"XX"), "flags this version does not know"),
    "old bytes on a value": (
        lambda: _v2(b"S", 1, "a", 2, b"XX"),
        "of kind b'S' with a range's flags",
    ),
    "a write and a read": (lambda: _v2(b"R", 9, "a", 2, b"XXYY"), "both a write and a read"),
    "absent and a file": (lambda: _v2(b"D", 6, "d", 0, b""), "both absent and a file"),
    "a delete with bytes": (lambda: _v2(b"D", 0, "d", 3, b"xyz"), "a delete with 3 bytes"),
    "body checksum": (lambda: _flip(_good(), 38), "the body fails its checksum"),
    "header checksum": (lambda: _flip(_good(), 29), "the header fails its checksum"),
    "time in header": (lambda: _flip(_good(), 17), "the header fails its checksum"),
    "length in header": (lambda: _flip(_good(), 8), "the header fails its checksum"),
    "truncated body": (lambda: _good()[:-3], r"truncated: \d+ of \d+ body bytes"),
    "garbage": (lambda: b"this is not a journal record at all" * 3, "no record magic"),
    "shorter than a header": (lambda: b"ZRLJNL01\x05", "shorter than a record header"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_record_is_discarded_with_a_warning_and_never_applied(
    case: str, root: Path
) -> None:
    make, reason = CORRUPT[case]
    jnl = dead_journal(root, make())
    with pytest.warns(JournalWarning) as caught:
        open_journaled(root)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(jnl) in message
    assert "discarded, not applied" in message
    assert re.search(reason, message), message
    assert (root / "a").read_bytes() == OLD_A
    assert (root / "b" / "c").read_bytes() == OLD_B
    assert (root / "d").read_bytes() == b"ddd"
    assert not jnl.exists()


OUTSIDE: dict[str, tuple[Op, str]] = {
    "a value": ((b"S", "../outside", 0, b"written outside"), "key '../outside'"),
    "a delete": ((b"D", "../victim", 0, b""), "key '../victim'"),
    "a range": ((b"R", "../victim", 0, b"XX"), "key '../victim'"),
    "an absolute key": ((b"D", "/victim", 0, b""), "key '/victim'"),
    "the journal's own directory": ((b"D", f"{JOURNAL_DIR}/x", 0, b""), "key '.zarr"),
    "a prepared file": ((b"F", "d", 1, b"../victim"), "prepared file '../victim'"),
    "a prepared file of another key": ((b"F", "d", 1, f"a.{'ab' * 16}.partial".encode()), "a.ab"),
}


@pytest.mark.parametrize("case", list(OUTSIDE))
@pytest.mark.parametrize("v1", [False, True], ids=["current", "earlier format"])
def test_a_record_naming_a_path_that_is_no_key_is_discarded_and_never_applied(
    case: str, v1: bool, tmp_path: Path
) -> None:
    # Records are written by this library, of valid keys only; one naming
    # a path outside the root (written by hand into a shared root's journal
    # directory, or by a bug) must not make a store that opens the root
    # write, delete or move a file there: replay applied it, ".." and all.
    root = tmp_path / "s"
    root.mkdir()
    (root / "d").write_bytes(b"ddd")
    (root / f"a.{'ab' * 16}.partial").write_bytes(b"not d's")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    op, named = OUTSIDE[case]
    jnl = dead_journal(root, record([op], witnesses=None if v1 else [None]))
    with pytest.warns(JournalWarning, match="discarded, not applied") as caught:
        open_journaled(root)
    assert len(caught) == 1 and named in str(caught[0].message), str(caught[0].message)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "outside").exists()
    assert (root / "d").read_bytes() == b"ddd"
    assert not jnl.exists()


def test_a_record_whose_key_is_not_utf8_is_discarded_and_the_root_still_opens(
    root: Path,
) -> None:
    # Whole under its checksums, but no key: every open of the root raised
    # UnicodeDecodeError, and the file stayed for the next open to fail on.
    raw = record([(b"D", "??", 0, b"")])
    body = raw[32:].replace(b"??", b"\xff\xfe")
    head = b"ZRLJNL01" + struct.pack("<QQI", len(body), 1, crc(body))
    jnl = dead_journal(root, head + struct.pack("<I", crc(head)) + body)
    with pytest.warns(JournalWarning, match=r"discarded, not applied: a name is not UTF-8"):
        open_journaled(root)
    assert not jnl.exists()


def test_an_intact_record_beside_a_corrupt_one_is_still_applied(root: Path) -> None:
    bad = dead_journal(root, _flip(_good(), 30), "1-aaaaaaaaaaaaaaaa.jnl")
    good = dead_journal(root, record([(b"R", "a", 0, b"fine")]), "2-bbbbbbbbbbbbbbbb.jnl")
    with pytest.warns(JournalWarning, match="aaaaaaaaaaaaaaaa"):
        open_journaled(root)
    assert (root / "a").read_bytes() == b"fine" + OLD_A[4:]
    assert (root / "d").read_bytes() == b"ddd"
    assert not bad.exists() and not good.exists()


# ------------------------------------------------------------------ a failed undo


def test_a_commit_whose_undo_fails_raises_its_error_and_keeps_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_journaled(tmp_path)
    store.set_sync("a", B(OLD_A))
    store.set_range_sync("a", B(b"warm"), 0)  # the journal file exists now
    real = _journal.write_range
    data_fd = []

    def failing(fd: int, data: memoryview, start: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") != str((tmp_path / "a").resolve()):
            real(fd, data, start)  # the journal record
        elif not data_fd:
            data_fd.append(fd)  # the data: 5 bytes land, then EIO
            real(fd, data[:5], start)
            raise PartialWriteError(5, "Input/output error", "", start, len(data), 5)
        else:
            raise OSError(5, "Input/output error (undo)")

    monkeypatch.setattr(_journal, "write_range", failing)  # the record, the undo
    monkeypatch.setattr(_io, "write_range", failing)  # the data (write_keyed)
    with pytest.raises(PartialWriteError) as info:
        store.set_range_sync("a", B(b"N" * 20), 40)
    monkeypatch.undo()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "undoing the transaction failed too" in notes
    assert "applied when the store is next opened" in notes
    assert info.value.written == 5 and info.value.key == "a"
    # The record stays, complete, in a journal file this process still holds.
    records = []
    for path in (tmp_path / JOURNAL_DIR).iterdir():
        found = _record._decode(path.read_bytes())
        if found:
            records.append({k: v.ranges for k, v in found[1].items()})
    assert records == [{"a": [(40, b"N" * 20)]}]


# ------------------------------------------------------------------ stray temporary files

HEX = "0123456789abcdef" * 2


def _stray(root: Path, key: str, *, old: bool) -> Path:
    path = root / f"{key}.{HEX}.partial"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a value")
    if old:
        then = path.stat().st_mtime - _durable.STRAY_TEMP_AGE_S - 5
        os.utime(path, (then, then))
    return path


@pytest.mark.parametrize("mode", ["fsync", "journal", "journal-nosync"])
def test_an_old_stray_temporary_file_is_removed_when_a_durable_store_opens(
    mode: str, tmp_path: Path
) -> None:
    old = _stray(tmp_path, "c/0/0", old=True)
    old_top = _stray(tmp_path, "zarr.json", old=True)
    fresh = _stray(tmp_path, "c/0/1", old=False)
    (tmp_path / "c" / "0" / "0").write_bytes(b"the key itself")
    RangeLockedStore(LocalStore(tmp_path), durability=mode)  # type: ignore[arg-type]
    assert not old.exists() and not old_top.exists()
    assert fresh.exists()  # a writer may still be writing it
    assert (tmp_path / "c" / "0" / "0").read_bytes() == b"the key itself"


def test_durability_none_removes_no_stray_file_when_it_opens(tmp_path: Path) -> None:
    old = _stray(tmp_path, "c/0/0", old=True)
    store = RangeLockedStore(LocalStore(tmp_path))
    store.set_sync("c/0/1", B(b"x"))
    assert old.exists()


_HOLDER = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))  # "none": it cleans nothing
    with store.locked_sync(sys.argv[2], [(0, None)]):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


@pytest.mark.timeout(60)
def test_a_stray_file_whose_key_another_process_holds_is_kept(tmp_path: Path) -> None:
    old = _stray(tmp_path, "c/0/0", old=True)
    other = _stray(tmp_path, "c/0/1", old=True)
    env = child_env()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path), "c/0/0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "held\n"
        RangeLockedStore(LocalStore(tmp_path), durability="journal")
        assert old.exists()  # its key's writer may be writing it
        assert not other.exists()  # the control: same age, key free
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=50) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_writes_of_a_locked_block_are_a_transaction_each(
    root: Path, no_journal_warning: None
) -> None:
    # A locked() block holds its ranges; each write through its handle is a
    # call of its own, so a transaction of its own: a process killed between
    # two of them leaves the first made (it was retired: nothing to replay)
    # and the second not. (The stress runner's killed read-modify-writes
    # show this; its checker accepts a failed write seen in part.)
    script = textwrap.dedent(
        f"""
        import os, signal
        from zarr.core.buffer import cpu
        from zarr.storage import LocalStore
        from zarr_rangelock import RangeLockedStore
        store = RangeLockedStore(LocalStore({str(root)!r}), durability="journal")
        store.set_sync("k", cpu.Buffer.from_bytes(bytes(32)))
        with store.locked_sync("k", [(0, 8), (16, 24)]) as h:
            h.set_range(cpu.Buffer.from_bytes(b"first..."), 0)
            os.kill(os.getpid(), signal.SIGKILL)
            h.set_range(cpu.Buffer.from_bytes(b"second.."), 16)
        """
    )
    env = child_env()
    child = subprocess.run([sys.executable, "-c", script], timeout=50, env=env, check=False)
    assert child.returncode == -9
    store = open_journaled(root)  # replays what the killed process left: nothing
    value = store.get_sync("k")
    assert value is not None and value.to_bytes() == b"first..." + bytes(24)
