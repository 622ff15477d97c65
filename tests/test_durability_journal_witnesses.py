"""Journal replay leaves what live writers wrote after a writer died: the witnesses.

A record of the current format carries, for each range write of up to
OLD_BYTES_MAX bytes, the bytes it covered before the transaction, and for
each value, prepared file and delete, the identity of the key's file
before it (or that there was none). Replay applies a key's ops only while
the key holds what the transaction found or left there: a dead writer's
record is never replayed over what live writers wrote since it died.

Records are written by hand (``tests/_journal_records.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._journal_records import (
    ABSENT,
    OLD_A,
    OLD_B,
    Op,
    Witness,
    dead_journal,
    identity,
    journal_root,
    open_journaled,
    record,
)
from zarr_rangelock import JournalWarning

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with keys "a" (100 bytes), "b/c" (50) and "d" (3), written directly."""
    return journal_root(tmp_path)


NEW = b"N" * 20
AT = 30
BEFORE = OLD_A[AT : AT + len(NEW)]
STATES = {
    "not applied": BEFORE,
    "torn": bytes(NEW[i] if i % 3 else BEFORE[i] for i in range(len(NEW))),  # any byte mix
    "applied": NEW,
}


@pytest.mark.parametrize("state", list(STATES))
def test_a_witnessed_range_record_is_replayed_to_all_new_from_any_state_its_write_left(
    state: str, root: Path, no_journal_warning: None
) -> None:
    with open(root / "a", "r+b") as f:
        f.seek(AT)
        f.write(STATES[state])
    ops: list[Op] = [(b"R", "a", AT, NEW), (b"R", "b/c", 0, b"xy")]
    jnl = dead_journal(root, record(ops, witnesses=[BEFORE, OLD_B[:2]]))
    open_journaled(root)
    assert (root / "a").read_bytes() == OLD_A[:AT] + NEW + OLD_A[AT + len(NEW) :]
    assert (root / "b" / "c").read_bytes() == b"xy" + OLD_B[2:]
    assert not jnl.exists()


def test_a_key_another_writer_changed_since_is_skipped_with_a_warning_and_the_rest_applied(
    root: Path,
) -> None:
    # The record writes "a" twice: a witnessed range, and one past
    # OLD_BYTES_MAX's reach (no old bytes: the data of a large chunk, say),
    # then "b/c" and "d". Another writer changed one byte of "a"'s witnessed
    # range since: all of "a"'s writes are left out, the unwitnessed one too
    # (it may land where that writer now keeps something), and the others
    # applied.
    (root / "a").write_bytes(OLD_A[: AT + 5] + b"?" + OLD_A[AT + 6 :])
    ops: list[Op] = [
        (b"R", "a", AT, NEW),
        (b"R", "a", 80, b"unwitnessed"),
        (b"R", "b/c", 0, b"xy"),
        (b"S", "d", 0, b"a new d"),
    ]
    jnl = dead_journal(root, record(ops, witnesses=[BEFORE, None, OLD_B[:2], identity(root / "d")]))
    with pytest.warns(JournalWarning) as caught:
        open_journaled(root)
    assert (root / "a").read_bytes() == OLD_A[: AT + 5] + b"?" + OLD_A[AT + 6 :]
    assert (root / "b" / "c").read_bytes() == b"xy" + OLD_B[2:]
    assert (root / "d").read_bytes() == b"a new d"
    assert not jnl.exists()
    (message,) = (str(w.message) for w in caught)
    assert str(jnl) in message
    assert "key 'a' holds at bytes 35-36 neither what the transaction found" in message
    assert "another writer changed it since" in message
    assert "applied only in part: replay applied its writes to 'b/c', 'd'" in message


def test_a_range_without_old_bytes_is_applied_as_before_when_nothing_shows_its_key_changed(
    root: Path, no_journal_warning: None
) -> None:
    # A write too large to carry its old bytes, over bytes another writer
    # changed since: nothing tells, and it is applied (as every write was).
    (root / "a").write_bytes(b"?" * 100)
    ops: list[Op] = [(b"R", "a", 10, b"big"), (b"R", "a", 90, b"witnessed")]
    dead_journal(root, record(ops, witnesses=[None, b"?" * 9]))
    open_journaled(root)
    assert (root / "a").read_bytes() == b"?" * 10 + b"big" + b"?" * 77 + b"witnessed" + b"?"


def test_overlapping_ranges_of_one_record_are_witnessed_by_what_the_earlier_left(
    root: Path, no_journal_warning: None
) -> None:
    # The record writes "AAAA" at 0, then "BBBB" at 2; both carry the bytes
    # before the transaction. Its process died between them: bytes 2-3 hold
    # the first's "AA", which is neither the second's old nor its new, but
    # the transaction's all the same.
    (root / "a").write_bytes(b"AAAA" + OLD_A[4:])
    ops: list[Op] = [(b"R", "a", 0, b"AAAA"), (b"R", "a", 2, b"BBBB")]
    dead_journal(root, record(ops, witnesses=[OLD_A[:4], OLD_A[2:6]]))
    open_journaled(root)
    assert (root / "a").read_bytes() == b"AABBBB" + OLD_A[6:]


def test_a_record_of_the_earlier_format_is_replayed_over_later_writes_as_before(
    root: Path, no_journal_warning: None
) -> None:
    # A process of the earlier version left it: no witnesses, every op
    # applied (over what was written since, which nothing can tell).
    (root / "a").write_bytes(b"?" * 100)
    _replace(root / "b" / "c", b"replaced since")
    ops: list[Op] = [(b"R", "a", 10, b"XYZ"), (b"S", "b/c", 0, b"v1"), (b"D", "d", 0, b"")]
    dead_journal(root, record(ops))
    open_journaled(root)
    assert (root / "a").read_bytes() == b"?" * 10 + b"XYZ" + b"?" * 87
    assert (root / "b" / "c").read_bytes() == b"v1"
    assert not (root / "d").exists()


def _replace(path: Path, value: bytes) -> None:
    """Replace the file at ``path`` by another (a new inode), as a writer's
    ``set`` does; the old one stays linked aside, so its inode is not reused."""
    if path.exists():
        os.link(path, path.with_name(path.name + ".kept"))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(value)
    os.replace(tmp, path)


def _prepared(root: Path, key: str, value: bytes) -> tuple[str, int]:
    """A prepared file of ``key`` (as a rewrite leaves one): its name and inode."""
    name = f"{key}.{'ab' * 16}.partial"
    (root / name).write_bytes(value)
    return name, (root / name).stat().st_ino


def test_whole_value_ops_are_applied_while_their_keys_are_the_files_they_found(
    root: Path, no_journal_warning: None
) -> None:
    prepared, ino = _prepared(root, "a", b"prepared")
    ops: list[Op] = [
        (b"S", "b/c", 0, b"new c"),
        (b"D", "d", 0, b""),
        (b"S", "e", 0, b"made"),
        (b"F", "a", ino, prepared.encode()),
    ]
    was: list[Witness] = [identity(root / "b" / "c"), identity(root / "d"), ABSENT]
    dead_journal(root, record(ops, witnesses=[*was, identity(root / "a")]))
    open_journaled(root)
    assert (root / "b" / "c").read_bytes() == b"new c"
    assert not (root / "d").exists()
    assert (root / "e").read_bytes() == b"made"
    assert (root / "a").read_bytes() == b"prepared"
    assert (root / "a").stat().st_ino == ino


def test_a_file_is_known_by_its_inode_number_alone_whatever_its_device_number_was(
    root: Path, no_journal_warning: None
) -> None:
    # btrfs numbers a subvolume's device at mount: after a reboot (a power
    # loss) the same files can have another st_dev. Their records must
    # still be replayed, not skipped as if another writer had replaced them.
    prepared, ino = _prepared(root, "a", b"prepared")
    ops: list[Op] = [
        (b"S", "b/c", 0, b"new c"),
        (b"D", "d", 0, b""),
        (b"F", "a", ino, prepared.encode()),
    ]
    was: list[Witness] = []
    for path in (root / "b" / "c", root / "d", root / "a"):
        dev, file_ino = identity(path)
        was.append((dev + 1, file_ino))
    dead_journal(root, record(ops, witnesses=was))
    open_journaled(root)
    assert (root / "b" / "c").read_bytes() == b"new c"
    assert not (root / "d").exists()
    assert (root / "a").stat().st_ino == ino


def test_whole_value_ops_whose_keys_another_writer_replaced_since_are_skipped_with_a_warning(
    root: Path,
) -> None:
    prepared, ino = _prepared(root, "a", b"prepared")
    was: list[Witness] = [
        identity(root / "b" / "c"),
        identity(root / "d"),
        ABSENT,
        identity(root / "a"),
    ]
    _replace(root / "b" / "c", b"later c")
    _replace(root / "d", b"later d")
    (root / "e").write_bytes(b"later e")
    _replace(root / "a", b"later a")
    ops: list[Op] = [
        (b"S", "b/c", 0, b"new c"),
        (b"D", "d", 0, b""),
        (b"S", "e", 0, b"made"),
        (b"F", "a", ino, prepared.encode()),
    ]
    jnl = dead_journal(root, record(ops, witnesses=was))
    with pytest.warns(JournalWarning) as caught:
        open_journaled(root)
    for key, value in [
        ("b/c", b"later c"),
        ("d", b"later d"),
        ("e", b"later e"),
        ("a", b"later a"),
    ]:
        assert (root / key).read_bytes() == value
    assert not (root / prepared).exists()  # never to be renamed now
    (message,) = (str(w.message) for w in caught)
    assert str(jnl) in message and "left 4 of its 4 keys as they are" in message
    assert "key 'b/c' was replaced by another writer since the transaction" in message
    assert "key 'd' was replaced by another writer" in message
    assert "key 'e' was created by another writer" in message
    assert "key 'a' was replaced by another writer" in message
    assert "replay applied none of its writes" in message


def test_whole_value_ops_already_done_are_left_without_a_warning(
    root: Path, no_journal_warning: None
) -> None:
    # Applied before the process died: the value renamed over its key, the
    # prepared file too, the delete done. Replay sees the key is not the file
    # the transaction found and that it holds what it wrote: nothing to do.
    was: list[Witness] = [identity(root / "b" / "c"), identity(root / "d"), identity(root / "a")]
    prepared, ino = _prepared(root, "a", b"prepared")
    _replace(root / "b" / "c", b"new c")
    (root / "d").unlink()
    os.link(root / "a", root / "a.kept")
    os.replace(root / prepared, root / "a")
    ops: list[Op] = [
        (b"S", "b/c", 0, b"new c"),
        (b"D", "d", 0, b""),
        (b"F", "a", ino, prepared.encode()),
    ]
    dead_journal(root, record(ops, witnesses=was))
    open_journaled(root)
    assert (root / "b" / "c").read_bytes() == b"new c"
    assert not (root / "d").exists()
    assert (root / "a").read_bytes() == b"prepared"


# What witnesses cannot see (README, "Limits"): pinned, so a change shows.


def test_a_later_write_that_left_the_bytes_the_transaction_found_is_replayed_over(
    root: Path, no_journal_warning: None
) -> None:
    # Another writer wrote the range back to what it held before the dead
    # transaction (a chunk written again with the bytes it had): a witness
    # is what the key holds, not who wrote it, so this looks not applied.
    for since in (NEW, BEFORE):  # the dead transaction's write, then the later one
        with open(root / "a", "r+b") as f:
            f.seek(AT)
            f.write(since)
    ops: list[Op] = [(b"R", "a", AT, NEW)]
    dead_journal(root, record(ops, witnesses=[BEFORE]))
    open_journaled(root)
    assert (root / "a").read_bytes() == OLD_A[:AT] + NEW + OLD_A[AT + len(NEW) :]


def test_a_torn_write_whose_key_another_writer_changed_since_stays_torn_elsewhere(
    root: Path,
) -> None:
    # Killed half way through writing NEW; another writer then wrote two
    # bytes in its range. The key is left as that writer left it: the rest
    # of the range stays half old, half new.
    torn = STATES["torn"]
    later = torn[:4] + b"!!" + torn[6:]
    with open(root / "a", "r+b") as f:
        f.seek(AT)
        f.write(later)
    dead_journal(root, record([(b"R", "a", AT, NEW)], witnesses=[BEFORE]))
    with pytest.warns(JournalWarning, match="key 'a' holds at bytes 34-36"):
        open_journaled(root)
    assert (root / "a").read_bytes() == OLD_A[:AT] + later + OLD_A[AT + len(NEW) :]


def test_range_writes_into_the_file_a_value_was_to_replace_are_replayed_over(
    root: Path, no_journal_warning: None
) -> None:
    # The key is still the file the transaction found, patched in place by
    # another writer since: its identity is the same, and the value replaces it.
    was = identity(root / "b" / "c")
    with open(root / "b" / "c", "r+b") as f:
        f.write(b"patched since")
    dead_journal(root, record([(b"S", "b/c", 0, b"new c")], witnesses=[was]))
    open_journaled(root)
    assert (root / "b" / "c").read_bytes() == b"new c"
