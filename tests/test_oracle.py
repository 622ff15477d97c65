"""The stress oracle's verdicts, on hand-made histories and on simulated ones.

Each hand-made history is a small timeline (times in ns, chosen by hand) over a
64-byte value (8 signature words). Reads and final states are real bytes built
with the signature encoder, so decoding is exercised too.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stress.oracle import History, ReadRecord, Violation, WriteRecord, check
from stress.records import ERROR, IF_ABSENT
from stress.signature import WORD, decode, encode, make_wid

pytestmark = pytest.mark.timeout(60)

SIZE = 64  # bytes: 8 words
KEY = "k"

W1, W2, W3, W4, W5 = (make_wid(w, 1) for w in range(1, 6))


def content(*spans: tuple[int, int, int]) -> bytes:
    """Bytes showing write ``wid`` at ``[start, end)`` for each ``(start, end, wid)``."""
    out = bytearray()
    for start, end, wid in spans:
        assert start == len(out), "spans must be contiguous from 0 (or from the read start)"
        out += encode(wid, start, end - start)
    return bytes(out)


def read_at(start: int, end: int, t0: int, t1: int, *spans: tuple[int, int, int]) -> ReadRecord:
    data = bytearray()
    for s, e, wid in spans:
        data += encode(wid, s, e - s)
    assert len(data) == end - start
    return ReadRecord.from_bytes(KEY, start, bytes(data), t0, t1, kind="get")


def write(
    wid: int, t0: int, t1: int, start: int = 0, end: int = SIZE, *, kind: str = "set_range"
) -> WriteRecord:
    return WriteRecord(KEY, wid, kind, ((start, end),), t0, t1)


def full_set(wid: int, t0: int, t1: int) -> WriteRecord:
    return write(wid, t0, t1, kind="set")


def rmw(
    wid: int, t0: int, t1: int, start: int, end: int, *, saw: int
) -> tuple[WriteRecord, ReadRecord]:
    """A read-modify-write of ``[start, end)`` during ``[t0, t1]``: its write, and
    its read, which showed write ``saw`` there."""
    seen = encode(saw, start, end - start)
    return (
        write(wid, t0, t1, start, end, kind="rmw"),
        ReadRecord.from_bytes(KEY, start, seen, t0, t1, kind="rmw", rmw=wid),
    )


def delete(wid: int, t0: int, t1: int) -> WriteRecord:
    return WriteRecord(KEY, wid, "delete", ((0, SIZE),), t0, t1, is_delete=True)


def run(
    writes: list[WriteRecord],
    reads: list[ReadRecord] = (),  # type: ignore[assignment]
    final: bytes | str | None = "skip",
    t_final: int = 10_000,
) -> list[Violation]:
    h = History(SIZE)
    rec = h.recorder()
    rec.writes.extend(writes)
    rec.reads.extend(reads)
    if final != "skip":
        assert not isinstance(final, str)
        h.set_final(KEY, final, t_final)
    return check(h).violations


def kinds(violations: list[Violation]) -> list[str]:
    return [v.kind for v in violations]


# --- clean histories -------------------------------------------------------------------


def test_a_serial_history_is_clean() -> None:
    writes = [full_set(W1, 0, 10), write(W2, 20, 30, 16, 32)]
    reads = [
        read_at(0, SIZE, 40, 50, (0, 16, W1), (16, 32, W2), (32, 64, W1)),
        read_at(16, 24, 40, 50, (16, 24, W2)),
        read_at(0, SIZE, 12, 18, (0, 64, W1)),
    ]
    final = content((0, 16, W1), (16, 32, W2), (32, 64, W1))
    assert run(writes, reads, final) == []


@pytest.mark.parametrize("w2_first", [True, False])
def test_writes_that_overlap_in_time_may_land_in_either_order(w2_first: bool) -> None:
    # W2 writes [0, 32) during [10, 40]; W3 writes [16, 48) during [20, 50].
    # Their byte ranges overlap on [16, 32), and so do their intervals: either
    # order is a legal outcome, and a read during both may see either state.
    writes = [full_set(W1, 0, 5), write(W2, 10, 40, 0, 32), write(W3, 20, 50, 16, 48)]
    if w2_first:  # W3 landed last
        final = content((0, 16, W2), (16, 48, W3), (48, 64, W1))
    else:
        final = content((0, 32, W2), (32, 48, W3), (48, 64, W1))
    reads = [read_at(16, 32, 15, 45, (16, 32, W1)), read_at(16, 32, 15, 45, (16, 32, W3))]
    assert run(writes, reads, final) == []


def test_a_read_during_a_write_may_see_it_or_not() -> None:
    writes = [full_set(W1, 0, 5), write(W2, 10, 20, 0, 32)]
    before = read_at(0, SIZE, 12, 15, (0, 64, W1))
    after = read_at(0, SIZE, 12, 15, (0, 32, W2), (32, 64, W1))
    assert run(writes, [before, after]) == []


def test_delete_and_recreate_is_clean() -> None:
    writes = [
        full_set(W1, 0, 10),
        delete(W2, 20, 30),
        WriteRecord(KEY, W4, "set_range", ((0, 8),), 40, 50, status="missing"),
        full_set(W3, 60, 70),
    ]
    reads = [
        ReadRecord.from_bytes(KEY, 0, None, 35, 38, end=SIZE),  # absent between
        ReadRecord.from_bytes(KEY, 0, None, 25, 65, end=SIZE),  # overlaps delete and set
        read_at(0, SIZE, 25, 65, (0, 64, W1)),  # before the delete landed
        read_at(0, SIZE, 80, 90, (0, 64, W3)),
    ]
    assert run(writes, reads, content((0, 64, W3))) == []


def test_a_key_deleted_last_is_absent_at_the_end() -> None:
    assert run([full_set(W1, 0, 10), delete(W2, 20, 30)], [], None) == []


def test_a_key_that_was_never_created_may_be_absent() -> None:
    assert run([], [ReadRecord.from_bytes(KEY, 0, None, 0, 1, end=SIZE)], None) == []


def test_sequential_read_modify_writes_are_clean() -> None:
    r1, r2 = make_wid(2, 1), make_wid(3, 1)
    w1, read1 = rmw(r1, 10, 20, 0, 16, saw=W1)
    w2, read2 = rmw(r2, 30, 40, 0, 16, saw=r1)  # the second saw the first
    writes, reads = [full_set(W1, 0, 5), w1, w2], [read1, read2]
    assert run(writes, reads, content((0, 16, r2), (16, 64, W1))) == []


# --- lost updates ----------------------------------------------------------------------


def test_a_completed_write_missing_from_the_final_state_is_a_lost_update() -> None:
    writes = [full_set(W1, 0, 10), write(W2, 20, 30, 16, 32)]
    [v] = run(writes, [], content((0, 64, W1)))
    assert (v.kind, v.start, v.end, v.expected, v.found) == ("lost_update", 16, 32, W2, W1)


def test_an_earlier_write_cannot_win_over_a_later_one() -> None:
    # W2 ended before W3 started, both cover [16, 32): W3 must be on top.
    writes = [full_set(W1, 0, 5), write(W2, 10, 20, 0, 32), write(W3, 30, 40, 16, 48)]
    final = content((0, 32, W2), (32, 48, W3), (48, 64, W1))
    [v] = run(writes, [], final)
    assert (v.kind, v.expected, v.found) == ("lost_update", W3, W2)


def test_a_write_partly_overwritten_by_its_rival_and_vice_versa_is_a_lost_update() -> None:
    # Concurrent W2 and W3 both cover the whole value; a final state that keeps
    # half of each matches no serial order (a torn write).
    writes = [full_set(W1, 0, 5), write(W2, 10, 40), write(W3, 20, 50)]
    [v] = run(writes, [], content((0, 32, W2), (32, 64, W3)))
    assert v.kind == "lost_update"
    assert {v.expected, v.found} == {W2, W3}


def test_a_write_after_a_delete_must_survive_it() -> None:
    writes = [full_set(W1, 0, 10), delete(W2, 20, 30), full_set(W3, 40, 50)]
    [v] = run(writes, [], None)
    assert (v.kind, v.expected, v.found) == ("lost_update", W3, None)


def test_a_delete_after_a_write_must_remove_it() -> None:
    writes = [full_set(W1, 0, 10), delete(W2, 20, 30)]
    [v] = run(writes, [], content((0, 64, W1)))
    assert (v.kind, v.expected, v.found) == ("lost_update", W2, W1)


def test_two_read_modify_writes_of_the_same_version_lose_one_update() -> None:
    r1, r2 = make_wid(2, 1), make_wid(3, 1)
    w1, read1 = rmw(r1, 10, 20, 0, 16, saw=W1)
    w2, read2 = rmw(r2, 12, 40, 8, 24, saw=W1)  # both saw W1 on [8, 16)
    writes, reads = [full_set(W1, 0, 5), w1, w2], [read1, read2]
    found = run(writes, reads, content((0, 8, r1), (8, 24, r2), (24, 64, W1)))
    assert kinds(found) == ["lost_rmw"]
    assert (found[0].start, found[0].end) == (8, 16)


# --- torn, stale, phantom reads ----------------------------------------------------------


def test_a_read_mixing_two_writes_that_both_cover_it_is_torn() -> None:
    writes = [full_set(W1, 0, 5), write(W2, 10, 40, 0, 32), write(W3, 20, 50, 0, 32)]
    torn = read_at(0, 32, 30, 60, (0, 16, W2), (16, 32, W3))
    [v] = run(writes, [torn])
    assert v.kind == "torn_read"
    assert {v.expected, v.found} == {W2, W3}


def test_a_read_showing_part_of_a_write_over_older_bytes_in_its_range_is_torn() -> None:
    # W2 rewrites [0, 32) while the read runs; the read shows W2 on [0, 16) but
    # the old W1 on [16, 32), which W2 also covers: half-applied.
    writes = [full_set(W1, 0, 5), write(W2, 10, 20, 0, 32)]
    [v] = run(writes, [read_at(0, 32, 12, 18, (0, 16, W2), (16, 32, W1))])
    assert (v.kind, v.expected, v.found) == ("torn_read", W2, W1)
    assert (v.start, v.end) == (16, 32)


def test_a_read_that_misses_a_write_finished_before_it_started_is_stale() -> None:
    writes = [full_set(W1, 0, 5), write(W2, 10, 20, 0, 32)]
    [v] = run(writes, [read_at(0, 32, 30, 40, (0, 32, W1))])
    assert (v.kind, v.expected, v.found) == ("stale_read", W2, W1)


def test_a_cycle_through_completion_times_is_torn() -> None:
    # S (a slow whole-value write) covers word 0, where the read shows A, so
    # S < A. A ended before B started, and B (word 1) was applied before the
    # read, where the read shows S, so A < B <= S. No order satisfies both.
    s, a, b = W2, W3, W4
    writes = [write(s, 0, 100), write(a, 10, 20, 0, 8), write(b, 30, 40, 8, 16)]
    [v] = run(writes, [read_at(0, 16, 200, 210, (0, 8, a), (8, 16, s))])
    assert v.kind == "torn_read"


def test_bytes_from_a_write_that_started_after_the_read_returned_are_phantom() -> None:
    writes = [full_set(W1, 0, 5), write(W2, 30, 40, 0, 8)]
    [v] = run(writes, [read_at(0, 8, 10, 20, (0, 8, W2))])
    assert (v.kind, v.found) == ("phantom_read", W2)


def test_bytes_from_a_write_that_never_happened_are_phantom() -> None:
    [v] = run([full_set(W1, 0, 5)], [read_at(0, 8, 10, 20, (0, 8, W5))])
    assert (v.kind, v.found) == ("phantom_read", W5)


def test_bytes_outside_their_write_range_are_phantom() -> None:
    writes = [full_set(W1, 0, 5), write(W2, 10, 20, 0, 8)]
    [v] = run(writes, [read_at(0, 16, 30, 40, (0, 16, W2))])
    assert v.kind == "phantom_read"


def test_garbled_bytes_are_corrupt() -> None:
    data = bytearray(content((0, 64, W1)))
    data[20] ^= 0xFF
    r = ReadRecord.from_bytes(KEY, 0, bytes(data), 10, 20)
    [v] = run([full_set(W1, 0, 5)], [r])
    assert (v.kind, v.start, v.end) == ("corrupt", 16, 24)


def test_a_key_absent_while_it_surely_existed_is_missing() -> None:
    writes = [full_set(W1, 0, 10), delete(W2, 20, 30), full_set(W3, 40, 50)]
    absent = ReadRecord.from_bytes(KEY, 0, None, 60, 70, end=SIZE)
    failed = WriteRecord(KEY, W4, "set_range", ((0, 8),), 15, 18, status="missing")
    found = run([*writes, failed], [absent])
    assert kinds(found) == ["missing_key", "missing_key"]


def if_absent(wid: int, t0: int, t1: int) -> WriteRecord:
    """A ``set_if_not_exists`` of a whole value that returned during ``[t0, t1]``."""
    return WriteRecord(KEY, wid, "set_if_not_exists", ((0, SIZE),), t0, t1, IF_ABSENT)


def test_set_if_not_exists_after_a_delete_writes_or_finds_the_key_made_again() -> None:
    # W3 set the key again while W4 ran: W4 wrote (before W3) or did not.
    writes = [full_set(W1, 0, 10), delete(W2, 20, 30), full_set(W3, 40, 60), if_absent(W4, 35, 50)]
    assert run(writes, [], content((0, 64, W3))) == []
    assert run([*writes[:2], if_absent(W4, 35, 50)], [], content((0, 64, W4))) == []


def test_set_if_not_exists_shown_where_the_key_surely_existed_is_phantom() -> None:
    # W1 completed before W2 started and nothing deleted the key: W2 must not write.
    writes = [full_set(W1, 0, 10), if_absent(W2, 20, 30)]
    assert run(writes, [], content((0, 64, W1))) == []  # it did not: never demanded
    found = run(writes, [read_at(0, SIZE, 40, 50, (0, 64, W2))], content((0, 64, W2)))
    assert kinds(found) == ["phantom_read", "phantom_read"]
    assert "set_if_not_exists wrote, yet the key surely existed" in found[0].detail


def test_set_if_not_exists_may_write_where_a_delete_may_come_between() -> None:
    # W3's delete overlaps W1's end and W2's start: it may come after W1.
    writes = [full_set(W1, 0, 10), delete(W3, 5, 25), if_absent(W2, 20, 30)]
    assert run(writes, [], content((0, 64, W2))) == []
    failed_delete = WriteRecord(KEY, W3, "delete", ((0, SIZE),), 12, 18, ERROR, is_delete=True)
    assert run([writes[0], failed_delete, writes[2]], [], content((0, 64, W2))) == []


def test_a_set_if_not_exists_carried_past_a_checkpoint_is_judged_in_its_own_epoch() -> None:
    # Epoch 1: W1 deleted the key, W2 set it (absent: it wrote), W3 then
    # wrote word 0. Epoch 2 reads W2's bytes still there. The checkpoint's
    # creator (W3) stands for "completed before this epoch", which is not
    # before W2: W2 must not be judged against it (it was, and W2 flagged).
    h1 = History(SIZE)
    rec = h1.recorder()
    rec.writes.extend([delete(W1, 0, 10), if_absent(W2, 20, 30), write(W3, 40, 50, 0, 8)])
    h1.set_final(KEY, content((0, 8, W3), (8, 64, W2)), 60)
    first = check(h1)
    assert first.violations == []
    h2 = History(SIZE)
    h2.recorder().reads.append(read_at(8, SIZE, 70, 80, (8, 64, W2)))
    h2.set_final(KEY, content((0, 8, W3), (8, 64, W2)), 90)
    assert check(h2, first.carry).violations == []
    # Where W2 ran after W3 in epoch 1, it is flagged there.
    h1 = History(SIZE)
    h1.recorder().writes.extend([write(W3, 0, 10, 0, 8), if_absent(W2, 20, 30)])
    h1.set_final(KEY, content((0, 8, W3), (8, 64, W2)), 60)
    assert kinds(check(h1).violations) == ["phantom_read"]


def killed(
    wid: int, t0: int, replayed: int, start: int, end: int, kind: str = "set_range"
) -> WriteRecord:
    """A range write killed in its call at ``t0``, its journal replayed by ``replayed``."""
    return WriteRecord(KEY, wid, kind, ((start, end),), t0, replayed, ERROR, killed=True)


def test_a_killed_range_write_torn_after_its_replay_is_caught() -> None:
    # W2, killed, shows on word 0 but W1 (before it) on word 1 of its range:
    # the replay (done by 30) should have made it all new.
    writes = [full_set(W1, 0, 10), killed(W2, 20, 30, 0, 16)]
    found = run(writes, [read_at(0, 16, 40, 50, (0, 8, W2), (8, 16, W1))])
    assert kinds(found) == ["torn_write"], found
    assert "killed in its call" in found[0].detail
    final = content((0, 8, W2), (8, 64, W1))
    assert kinds(run(writes, [], final)) == ["torn_write"]


def test_a_killed_range_write_all_old_or_all_new_after_its_replay_is_clean() -> None:
    writes = [full_set(W1, 0, 10), killed(W2, 20, 30, 0, 16)]
    assert run(writes, [], content((0, 16, W2), (16, 64, W1))) == []
    assert run(writes, [], content((0, 64, W1))) == []


def test_a_killed_range_write_may_be_torn_before_its_replay_or_beside_another_write() -> None:
    writes = [full_set(W1, 0, 10), killed(W2, 20, 30, 0, 16)]
    # Read before the replay was done: a live reader may see it half applied.
    assert run(writes, [read_at(0, 16, 25, 35, (0, 8, W2), (8, 16, W1))]) == []
    # W3 wrote word 2 (in W2's range) before the replay: the replay left W2
    # alone, and what it had applied stays torn (the journal's limits).
    beside = [full_set(W1, 0, 10), killed(W2, 20, 30, 0, 24), write(W3, 22, 28, 16, 24)]
    final = content((0, 8, W2), (8, 16, W1), (16, 24, W3), (24, 64, W1))
    assert run(beside, [], final) == []
    assert kinds(run([*beside[:2], write(W3, 32, 38, 16, 24)], [], final)) == ["torn_write"]
    # A read-modify-write is two transactions: not held to all or nothing.
    two = [full_set(W1, 0, 10), killed(W2, 20, 30, 0, 16, kind="rmw")]
    assert run(two, [], content((0, 8, W2), (8, 64, W1))) == []
    # A write that raised (not killed) is not replayed before someone recovers.
    raised = WriteRecord(KEY, W2, "set_range", ((0, 16),), 20, 30, ERROR)
    assert run([full_set(W1, 0, 10), raised], [], content((0, 8, W2), (8, 64, W1))) == []


# --- no false positives on simulated linearizable histories --------------------------------


def simulate(
    seed: int,
    n_ops: int = 60,
    n_words: int = 8,
    failing: float = 0.0,
    if_absent: float = 0.0,
    broken: bool = False,
) -> History:
    """A random history produced by an atomic store: every op takes effect at one
    instant inside its interval; reads return the state at their instant.

    ``failing``: the share of writes that fail (``ERROR``: raised, or their
    process was killed), each taking effect not at all, whole, or on some of
    its words only (a killed read-modify-write between its range writes, a
    killed journaled write torn where another writer changed the key before
    the replay); a failed read-modify-write's read is not recorded (a killed
    process's reads are lost). ``if_absent``: the weight of
    ``set_if_not_exists`` calls (of 18 for the rest), which write a whole
    value if and only if the key is absent at their instant (``broken``:
    whether or not).
    """
    rng = random.Random(seed)
    size = n_words * WORD
    ops = []
    for i in range(n_ops):
        t0 = rng.randrange(0, 1000) * 10
        t1 = t0 + rng.randrange(1, 300) * 10
        effect = rng.randrange(t0, t1 + 1)
        kind = rng.choices(
            ["set", "set_range", "delete", "get", "rmw", "set_if_not_exists"],
            weights=[2, 6, 1, 6, 3, if_absent],
        )[0]
        a = rng.randrange(n_words)
        b = rng.randrange(a + 1, n_words + 1)
        spans = [(a, b)]
        if kind == "rmw" and b < n_words and rng.random() < 0.5:
            c = rng.randrange(b, n_words)  # a second range, touching the first or not
            spans.append((c, rng.randrange(c + 1, n_words + 1)))
        ops.append((effect, i, kind, t0, t1, spans))
    h = History(size)
    rec = h.recorder()
    state: np.ndarray | None = None
    seq = 0
    for effect, i, kind, t0, t1, spans in sorted(ops):
        del effect, i
        a, b = spans[0]
        byte_spans = tuple((lo * WORD, hi * WORD) for lo, hi in spans)
        status = "ok"
        if kind in ("set", "set_range", "rmw", "delete", "set_if_not_exists"):
            seq += 1
            wid = make_wid(1 + seq % 7, seq)
            if rng.random() < failing:
                status = "error"
                if kind in ("set_range", "rmw") and rng.random() < 0.3:
                    spans = _some_words(rng, spans)  # in part: on these words only
                elif rng.random() < 0.5:  # it failed before taking effect
                    rec.writes.append(
                        WriteRecord(KEY, wid, kind, byte_spans, t0, t1, status, kind == "delete")
                    )
                    continue
        if kind == "get":
            data = None if state is None else _bytes(state[a:b], a)
            rec.reads.append(ReadRecord.from_bytes(KEY, a * WORD, data, t0, t1, end=b * WORD))
        elif kind == "set":
            state = np.full(n_words, wid, dtype=np.int64)
            rec.writes.append(WriteRecord(KEY, wid, "set", ((0, size),), t0, t1, status))
        elif kind == "set_if_not_exists":
            if state is None or broken:
                state = np.full(n_words, wid, dtype=np.int64)
            status = IF_ABSENT if status == "ok" else status
            rec.writes.append(WriteRecord(KEY, wid, kind, ((0, size),), t0, t1, status))
        elif kind == "delete":
            state = None
            rec.writes.append(WriteRecord(KEY, wid, "delete", ((0, size),), t0, t1, status, True))
        elif state is None:
            rec.writes.append(WriteRecord(KEY, wid, kind, byte_spans, t0, t1, "missing"))
        else:
            for lo, hi in spans:
                if kind == "rmw" and status == "ok":
                    data = _bytes(state[lo:hi], lo)
                    rec.reads.append(
                        ReadRecord.from_bytes(KEY, lo * WORD, data, t0, t1, kind="rmw", rmw=wid)
                    )
                state[lo:hi] = wid
            rec.writes.append(WriteRecord(KEY, wid, kind, byte_spans, t0, t1, status))
    h.set_final(KEY, None if state is None else _bytes(state, 0), 100_000)
    return h


def _some_words(rng: random.Random, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A random subset of the words of ``spans``, as spans of one word each."""
    return [(a, a + 1) for lo, hi in spans for a in range(lo, hi) if rng.random() < 0.5]


def _bytes(wids: np.ndarray, first_word: int) -> bytes:
    return b"".join(
        encode(int(w), (first_word + i) * WORD, WORD) for i, w in enumerate(wids.tolist())
    )


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32))
def test_histories_from_an_atomic_store_are_always_clean(seed: int) -> None:
    result = check(simulate(seed))
    assert result.violations == [], [v.describe() for v in result.violations]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32))
def test_histories_with_failed_writes_that_did_or_did_not_take_effect_are_clean(
    seed: int,
) -> None:
    # A failed write may have taken effect not at all, whole or in part: a
    # failed delete that did explains the key's absence as a completed one
    # does, and a failed write shown on some of its words only is no torn
    # read (the stress runner's --kill-every makes writes fail these ways).
    result = check(simulate(seed, failing=0.2))
    assert result.violations == [], [v.describe() for v in result.violations]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0.0, 0.2]))
def test_histories_with_set_if_not_exists_are_clean(seed: int, failing: float) -> None:
    # Conditional whole values beside deletes, sets and range writes: each
    # wrote exactly when the key was absent, which the oracle never doubts.
    result = check(simulate(seed, failing=failing, if_absent=3))
    assert result.violations == [], [v.describe() for v in result.violations]


def test_a_set_if_not_exists_that_writes_over_a_value_is_caught_in_simulated_histories() -> None:
    # The control: the same histories from a store whose set_if_not_exists
    # writes whether or not the key exists. Whenever one wrote over a value
    # that a write completed before it had made, with no delete that could
    # come between, and its bytes show, it is flagged.
    caught = 0
    for seed in range(60):
        found = check(simulate(seed, if_absent=3, broken=True)).violations
        assert {v.kind for v in found} <= {"phantom_read", "stale_read", "lost_update"}, found
        caught += any("set_if_not_exists wrote" in v.detail for v in found)
    assert caught >= 10, caught


def test_a_dropped_write_in_a_simulated_history_is_caught() -> None:
    caught = tried = 0
    for seed in range(60):
        h = simulate(seed, n_ops=30)
        final = h.final[KEY]
        if final.runs is None:
            continue
        writes = [w for w in h.writes() if w.status == "ok" and not w.is_delete]
        last = max(writes, key=lambda w: w.t_end)
        # Replace the last-completing write's bytes in the final state with the
        # bytes of the write that preceded it in real time on the same words.
        earlier = [w for w in writes if w.t_end < last.t_start]
        if not earlier:
            continue
        prev = max(earlier, key=lambda w: w.t_end)
        runs = final.runs.as_list()
        if not any(wid == last.wid for _, _, wid in runs):
            continue
        tried += 1
        data = b"".join(
            encode(prev.wid if wid == last.wid else wid, s, e - s) for s, e, wid in runs
        )
        h.set_final(KEY, data, 100_000)
        if check(h).violations:
            caught += 1
    assert tried >= 10
    assert caught == tried


def test_decode_attributes_every_word() -> None:
    data = content((0, 16, W1), (16, 40, W2), (40, 64, W1))
    assert decode(data, 0).as_list() == [(0, 16, W1), (16, 40, W2), (40, 64, W1)]


def test_a_run_across_two_touching_spans_of_one_write_is_covered() -> None:
    # A read-modify-write of [0, 16) and [16, 32) under one write id shows as a
    # single run [0, 32): that is its own bytes, not a phantom.
    rmw = make_wid(2, 1)
    writes = [full_set(W1, 0, 5)]
    writes.append(WriteRecord(KEY, rmw, "rmw", ((16, 32), (0, 16)), 10, 20))
    assert run(writes, [read_at(0, 32, 30, 40, (0, 32, rmw))]) == []
