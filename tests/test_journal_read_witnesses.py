"""Read witnesses of journal transactions (``store/_record``'s flag 8).

A transaction can depend on bytes it does not write: a compressed shard's
write re-points the index away from a chunk's place, and another writer
may put a chunk there after the writer died, leaving the index byte for
byte as the dead write found it (``tests/test_processes_journal_kills.py``,
``test_a_zstd_chunk_written_again_into_its_old_place_is_not_replayed_over``).
``Transaction.add_witness`` names such a range; the commit reads it with
the old bytes of the range writes and puts it in the record as an ``R``
entry of flag 8 carrying only those bytes; a replay applies the key's
writes only while the range still holds them, and never writes it.
Records are written here by hand, in the format of ``_record``'s design
note, into the journal file of a "dead" process (``_journal_records``), as in
``test_durability_journal.py``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from zarr_rangelock import JournalWarning, RangeLockedStore
from zarr_rangelock.store import _apply, _journal, _record
from zarr_rangelock.store._journal import JOURNAL_DIR

pytestmark = pytest.mark.timeout(60)

OLD = bytes(range(100))
NEW = b"N" * 10
AT, PLACE = 20, 60  # the range written; the place read (witnessed), not written


def _entry(flags: int, key: str, start: int, data: bytes, old: bytes = b"") -> bytes:
    kb = key.encode()
    return struct.pack("<cBHQQQQ", b"R", flags, len(kb), start, len(data), 0, 0) + kb + data + old


def _record_of(*entries: bytes, when: int = 1) -> bytes:
    body = b"".join(entries)
    head = b"ZRLJNL02" + struct.pack("<QQI", len(body), when, google_crc32c.value(body))
    return head + struct.pack("<I", google_crc32c.value(head)) + body


def _dead_journal(root: Path, raw: bytes) -> Path:
    d = root / JOURNAL_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / "4194999-0123456789abcdef.jnl"
    path.write_bytes(raw)
    return path


def _write_at(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with keys "a" (100 bytes) and "b" (10), written directly."""
    (tmp_path / "a").write_bytes(OLD)
    (tmp_path / "b").write_bytes(b"b" * 10)
    return tmp_path


def _the_record() -> bytes:
    """Key "a": NEW at AT (its old bytes carried), the place [PLACE, PLACE + 8)
    read; key "b": "xy" at 0."""
    return _record_of(
        _entry(1, "a", AT, NEW, OLD[AT : AT + len(NEW)]),
        _entry(8, "a", PLACE, OLD[PLACE : PLACE + 8]),
        _entry(1, "b", 0, b"xy", b"bb"),
    )


def test_a_read_witness_is_an_r_entry_of_flag_8_carrying_only_the_bytes_it_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_record.time, "time_ns", lambda: 1)
    ops = {
        "a": _journal._KeyOps(
            ranges=[(AT, NEW)],
            olds=[OLD[AT : AT + len(NEW)]],
            reads=[(PLACE, 8)],
            read_olds=[OLD[PLACE : PLACE + 8]],
        ),
        "b": _journal._KeyOps(ranges=[(0, b"xy")], olds=[b"bb"]),
    }
    assert _record._encode(ops) == _the_record()
    assert _record._decode(_the_record()) == (1, ops)


@pytest.mark.parametrize("state", ["not applied", "torn", "applied"])
def test_a_record_whose_read_witness_holds_is_replayed_to_all_new_from_any_state(
    root: Path, state: str, no_journal_warning: None
) -> None:
    if state != "not applied":
        _write_at(root / "a", AT, NEW[:4] if state == "torn" else NEW)
    jnl = _dead_journal(root, _the_record())
    RangeLockedStore(LocalStore(root), durability="journal")
    assert (root / "a").read_bytes() == OLD[:AT] + NEW + OLD[AT + len(NEW) :]  # the place unwritten
    assert (root / "b").read_bytes() == b"xy" + b"b" * 8
    assert not jnl.exists()


def test_a_key_whose_read_witness_changed_is_left_with_a_warning_and_the_rest_applied(
    root: Path,
) -> None:
    # Another writer changed one byte of the place since the transaction:
    # the key's range write, whose witness holds, is left out all the same.
    _write_at(root / "a", PLACE + 3, b"\xff")
    jnl = _dead_journal(root, _the_record())
    with pytest.warns(JournalWarning) as caught:
        RangeLockedStore(LocalStore(root), durability="journal")
    assert (root / "a").read_bytes() == OLD[: PLACE + 3] + b"\xff" + OLD[PLACE + 4 :]
    assert (root / "b").read_bytes() == b"xy" + b"b" * 8
    (message,) = (str(w.message) for w in caught)
    assert str(jnl) in message
    assert f"key 'a' holds at bytes {PLACE + 3}-{PLACE + 4}, which the transaction read" in message
    assert "replay applied its writes to 'b'" in message


def test_a_read_witness_under_a_write_of_its_own_record_may_hold_what_that_write_wrote(
    root: Path, no_journal_warning: None
) -> None:
    # (The shard pipeline never writes a place it frees; a record that does
    # is still the transaction's own in every state.)
    raw = _record_of(
        _entry(8, "a", PLACE, OLD[PLACE : PLACE + 8]),
        _entry(1, "a", PLACE + 2, b"ZZ", OLD[PLACE + 2 : PLACE + 4]),
    )
    _write_at(root / "a", PLACE + 2, b"ZZ")
    _dead_journal(root, raw)
    RangeLockedStore(LocalStore(root), durability="journal")
    assert (root / "a").read_bytes() == OLD[: PLACE + 2] + b"ZZ" + OLD[PLACE + 4 :]


def test_read_witnesses_are_read_clipped_to_the_file_and_to_old_bytes_max_per_key(
    tmp_path: Path,
) -> None:
    big = 200_000
    (tmp_path / "a").write_bytes(bytes(big))
    (tmp_path / "v").write_bytes(b"v")
    txn = _journal.Transaction(_journal.Journal(str(tmp_path)))
    txn.add_range("a", b"x", 0, big)
    txn.add_witness("a", 10, 40_000)
    txn.add_witness("a", 50_000, 40_000)  # past OLD_BYTES_MAX in all: cut
    txn.add_witness("a", big - 10, 100)  # nothing left for it
    txn.add_witness("a", 5, 0)  # empty: ignored
    txn.add_set("v", b"new")
    txn.add_witness("v", 0, 1)  # a key the transaction replaces: of the file it replaces
    apply = _apply._Apply(str(tmp_path), False)
    try:
        apply.prepare(txn.ops)
    finally:
        apply.close()
    a = txn.ops["a"]
    assert a.reads == [(10, 40_000), (50_000, _record.OLD_BYTES_MAX - 40_000)]
    assert [len(b) for b in a.read_olds] == [n for _, n in a.reads]
    assert txn.ops["v"].reads == [(0, 1)] and txn.ops["v"].read_olds == [b"v"]


def test_read_witnesses_past_the_end_of_the_file_are_clipped_to_it(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(OLD)
    txn = _journal.Transaction(_journal.Journal(str(tmp_path)))
    txn.add_witness("a", 90, 20)
    txn.add_witness("a", 100, 5)
    apply = _apply._Apply(str(tmp_path), False)
    try:
        apply.prepare(txn.ops)
    finally:
        apply.close()
    assert txn.ops["a"].reads == [(90, 10)]
    assert txn.ops["a"].read_olds == [OLD[90:]]


# ------------------------------------------------------------------ the shard pipeline's

_CHUNKS = 16  # chunks of a shard: its index is 16 rows of 16 bytes and a CRC-32C


def _places(raw: bytes, index_location: str) -> set[int]:
    """Every byte a chunk of the shard ``raw`` points at, as its index says."""
    n = 16 * _CHUNKS + 4
    index = raw[-n:] if index_location == "end" else raw[:n]
    rows = (struct.unpack_from("<QQ", index, 16 * i) for i in range(_CHUNKS))
    return {b for at, length in rows if at != 2**64 - 1 for b in range(at, at + length)}


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_compressed_shard_write_witnesses_every_place_it_frees_and_writes_none(
    tmp_path: Path, index_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``shards/_jobs._witness_freed``: each write below re-points the
    # shard's index (path 2: a chunk replaced by one of another size or of
    # the same, a chunk dropped as fill values, a chunk written in part,
    # two chunks at once); the record's read witnesses of the shard must be
    # exactly the bytes the old index pointed at and the new one does not
    # (clipped to the file: the index at either end), and none of them a
    # byte its own range writes write (a crash-only replay would see its
    # own bytes there).
    seen: list[tuple[dict[str, _journal._KeyOps], bytes, bytes]] = []
    commit = _journal.Journal.commit

    def spy(self: _journal.Journal, txn: _journal.Transaction, *, sync: bool) -> None:
        shard = tmp_path / "c" / "0"
        before = shard.read_bytes() if shard.exists() else b""
        commit(self, txn, sync=sync)  # (prepare fills in the read witnesses)
        seen.append((txn.ops, before, shard.read_bytes()))

    monkeypatch.setattr(_journal.Journal, "commit", spy)
    with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
        store = RangeLockedStore(LocalStore(tmp_path), durability="journal")
        a = zarr.create_array(
            store,
            shape=(64,),
            shards={"shape": (64,), "index_location": index_location},
            chunks=(4,),
            dtype="i4",
            fill_value=0,
        )
        rng = np.random.default_rng(0)
        a[:] = rng.integers(0, 1000, 64)  # a new shard, with free space: no witness
        for sel, value in [
            (slice(4, 8), rng.integers(0, 1000, 4)),  # replaced
            (slice(4, 8), 2),  # replaced: by a smaller chunk
            (slice(4, 8), 3),  # replaced: by one of the same size
            (slice(8, 12), 0),  # dropped
            (slice(13, 14), 5),  # written in part
            (slice(16, 24), 6),  # two chunks
        ]:
            a[sel] = value
    witnessed = 0
    for ops, before, after in seen:
        k = ops["c/0"]
        if k.replaces:
            continue
        freed = _places(before, index_location) - _places(after, index_location)
        reads = {b for s, n in k.reads for b in range(s, s + n)}
        written = {b for s, data in k.ranges for b in range(s, s + len(data))}
        assert reads == {b for b in freed if b < len(before)}
        assert not reads & written
        witnessed += bool(reads)
    assert witnessed == 6
