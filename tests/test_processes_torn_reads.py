"""Torn reads across processes: a reader in another process never sees a
write half applied (a ``set_range`` of the whole value or of a half, a
whole-value ``set``), also when it arrives while the writer's process is
alone (holding no OS locks), and again and again while it is.

Split from ``test_processes.py`` (see its docstring: spawn workers live at
the top level of this module, which a spawned child imports by name; no test
orders events by sleeping).
"""

from __future__ import annotations

import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._processes import BARRIER_TIMEOUT, SPAWN, locked_local_store, run_workers

# ----------------------------------------------------------- torn reads
#
# One key of 1 MiB, seen as uint64 words in two halves A and B. Every write
# fills what it writes with one tag word, slot << 40 | kind << 32 | seq:
# a whole-value ``set`` (slot 1), and ``set_range`` of the whole value, of
# half A or of half B (slots 2 and 3, kinds cycling). Any serial order of
# these writes leaves each half uniform, half A holding a whole write or an
# A write (B likewise), and, when both halves hold whole writes, the same one;
# and a reader that sees one writer's seq in a half never sees an earlier seq
# of that writer there afterwards. A reader process checks every read; the
# writers keep writing until it has made READS reads, so the load does not
# depend on how fast each kind of write is.

VALUE = "value"
WORDS = 128 * 1024
HALF = WORDS // 2
INITIAL, SET, WHOLE, HALF_A, HALF_B = range(5)
KIND_NAMES = ["initial", "set", "whole set_range", "half-A set_range", "half-B set_range"]
READS = 2000
READER, SETTER = 0, 1  # worker 0 reads, worker 1 sets, the others set ranges
MAX_PROBLEMS = 20


def _tag_words(slot: int, kind: int, seq: int, n: int) -> cpu.Buffer:
    tag = slot << 40 | kind << 32 | seq
    return cpu.Buffer(np.full(n, tag, dtype="<u8").view("B"))


def _split(tag: int) -> tuple[int, int, int]:
    return tag >> 40, tag >> 32 & 0xFF, tag & 0xFFFF_FFFF


def _read_problems(raw: bytes, seen: dict[tuple[str, int], int]) -> list[str]:
    """What makes one read of the value impossible in any serial order of the
    writes; ``seen`` maps (half, slot) to the latest seq read there and is updated."""
    if len(raw) != WORDS * 8:
        return [f"read {len(raw)} bytes, not {WORDS * 8}"]
    words = np.frombuffer(raw, dtype="<u8")
    problems: list[str] = []
    halves: list[tuple[int, int, int]] = []
    for name, allowed, part in (
        ("A", {INITIAL, SET, WHOLE, HALF_A}, words[:HALF]),
        ("B", {INITIAL, SET, WHOLE, HALF_B}, words[HALF:]),
    ):
        if not (part == part[0]).all():
            tags = np.unique(part)
            writes = ", ".join(
                f"{KIND_NAMES[k]} #{q} of slot {sl}" for sl, k, q in map(_split, tags[:4].tolist())
            )
            problems.append(f"half {name} is torn: {len(tags)} writes in it ({writes})")
            halves.append((-1, -1, -1))
            continue
        slot, kind, seq = _split(int(part[0]))
        if kind not in allowed:
            problems.append(f"half {name} holds a {KIND_NAMES[kind]} (slot {slot}, #{seq})")
        last = seen.get((name, slot), -1)
        if seq < last:
            problems.append(f"half {name} went back from slot {slot}'s #{last} to #{seq}")
        seen[(name, slot)] = max(seq, last)
        halves.append((slot, kind, seq))
    (sa, ka, qa), (sb, kb, qb) = halves
    whole = {INITIAL, SET, WHOLE}
    if ka in whole and kb in whole and (sa, ka, qa) != (sb, kb, qb):
        problems.append(
            f"the halves hold two different whole writes: {KIND_NAMES[ka]} #{qa} of slot {sa}"
            f" and {KIND_NAMES[kb]} #{qb} of slot {sb}"
        )
    return problems


def _set_or_read(
    worker: int, root: str, start: Barrier, enough: Any, writers_done: Any, n_writers: int
) -> tuple[int, list[str]]:
    """Worker: the reader makes ``READS`` reads, sets ``enough``, and reads on
    until every writer is done (then once more); it returns (reads, problems).
    The setter replaces the whole value and the others write ranges, each
    until ``enough`` is set; writers return (writes, [])."""
    store = locked_local_store(root)
    start.wait(BARRIER_TIMEOUT)
    if worker == READER:
        seen: dict[tuple[str, int], int] = {}
        problems: list[str] = []
        reads = 0
        try:
            while True:
                last = writers_done.value == n_writers  # every write is in: the last read
                value = store.get_sync(VALUE)
                assert value is not None
                reads += 1
                problems += [f"read {reads}: {p}" for p in _read_problems(value.to_bytes(), seen)]
                if reads == READS or len(problems) >= MAX_PROBLEMS:
                    enough.set()
                if last or len(problems) >= MAX_PROBLEMS:
                    return reads, problems
        finally:
            enough.set()  # also when this raised: the writers stop instead of hanging
    seq = 0
    try:
        while not enough.is_set():
            if worker == SETTER:
                store.set_sync(VALUE, _tag_words(worker, SET, seq, WORDS))
            else:
                kind = (WHOLE, HALF_A, HALF_B)[(seq + worker) % 3]
                n, at = (WORDS, 0) if kind == WHOLE else (HALF, 0 if kind == HALF_A else HALF)
                store.set_range_sync(VALUE, _tag_words(worker, kind, seq, n), at * 8)
            seq += 1
    finally:
        with writers_done.get_lock():  # also when this raised: the reader stops
            writers_done.value += 1
    return seq, []


@pytest.mark.timeout(150)  # about 25 s alone on 2 cores; it timed out at 60 s under load
def test_reads_in_another_process_never_see_a_set_range_half_applied(tmp_path: Path) -> None:
    """A reader process racing a process that replaces the whole value and two
    that ``set_range`` all or half of it only ever reads values some serial
    order of those writes produces; so does a read after they all finish."""
    root = tmp_path / "data"
    locked_local_store(root).set_sync(VALUE, _tag_words(0, INITIAL, 0, WORDS))
    n_workers = 4
    results = run_workers(
        _set_or_read,
        n_workers,
        str(root),
        SPAWN.Barrier(n_workers),
        SPAWN.Event(),
        SPAWN.Value("i", 0),
        n_workers - 1,
    )
    reads, problems = results[READER]
    writes = sum(n for w, (n, _) in enumerate(results) if w != READER)
    final = LocalStore(root).get_sync(VALUE)
    assert final is not None
    problems += [f"final read: {p}" for p in _read_problems(final.to_bytes(), {})]
    assert not problems, (
        f"{len(problems)} impossible reads among {reads} reads racing {writes} writes:\n"
        + "\n".join(problems)
    )


def _alone_then_joined(
    worker: int, root: str, alone_seen: Any, enough: Any, reported: Any
) -> tuple[int, list[str], tuple[bool, bool] | None]:
    """Worker 0 writes the value (all or half of it, by ``set_range``) by itself until
    ``enough``; once its process is alone in the root (its token holds then
    take no OS lock) it sets ``alone_seen``, and worker 1 arrives and reads
    ``READS`` times. Worker 0 returns (writes, [], (was alone, alone at the
    end, with the reader still there)); worker 1 (reads, problems, None)."""
    store = locked_local_store(root)
    os_locks = store._state.os_locks
    assert os_locks is not None
    if worker == 0:
        seq, was_alone = 0, False
        try:
            while not enough.is_set():
                kind = (WHOLE, HALF_A, HALF_B)[seq % 3]
                n, at = (WORDS, 0) if kind == WHOLE else (HALF, 0 if kind == HALF_A else HALF)
                store.set_range_sync(VALUE, _tag_words(0, kind, seq, n), at * 8)
                seq += 1
                if not was_alone and (os_locks.alone() or seq > 20 * READS):
                    was_alone = os_locks.alone()
                    alone_seen.set()  # (or never: the reader must not wait for ever)
            return seq, [], (was_alone, os_locks.alone())
        finally:
            alone_seen.set()
            reported.set()
    seen: dict[tuple[str, int], int] = {}
    problems: list[str] = []
    assert alone_seen.wait(BARRIER_TIMEOUT)
    try:
        for reads in range(1, READS + 1):
            value = store.get_sync(VALUE)
            assert value is not None
            problems += [f"read {reads}: {p}" for p in _read_problems(value.to_bytes(), seen)]
            if len(problems) >= MAX_PROBLEMS:
                break
    finally:
        enough.set()
    assert reported.wait(BARRIER_TIMEOUT)  # still present while the writer looks
    return reads, problems, None


@pytest.mark.timeout(150)
def test_a_process_that_arrives_while_another_is_alone_never_reads_a_set_range_half_applied(
    tmp_path: Path,
) -> None:
    """A process alone in a root takes no OS lock for its ``set_range``
    (``locks/_oslock``: "Alone"); a reader process that arrives meanwhile
    makes it stop (it knocks, and waits until the writes in flight are done)
    and from then on the writer's ranges are locked as usual: every read is
    of some serial order of the writes, and the writer is not alone while
    the reader is there."""
    root = tmp_path / "data"
    locked_local_store(root).set_sync(VALUE, _tag_words(0, INITIAL, 0, WORDS))
    results = run_workers(
        _alone_then_joined, 2, str(root), SPAWN.Event(), SPAWN.Event(), SPAWN.Event()
    )
    (writes, _, alone), (reads, problems, _) = results
    assert alone == (True, False), f"(was alone, alone with the reader there): {alone}"
    assert not problems, (
        f"{len(problems)} impossible reads among {reads} reads racing {writes} writes:\n"
        + "\n".join(problems)
    )


ARRIVALS = 12
BIG = "big"
BIG_WORDS = 4 << 20  # 32 MiB: each write several milliseconds long


def _alone_again_and_again(
    worker: int, root: str, spells: Any, enough: Any
) -> tuple[int, list[str], int]:
    """Worker 0 writes all of ``BIG`` (``set_range``, one tag in every word)
    without pause until ``enough``, counting in ``spells`` the times its
    process becomes alone. Worker 1 arrives ``ARRIVALS`` times, each time
    once worker 0 is alone again: a store of its own (so a presence of its
    own), reads without a timeout (so it waits in the kernel and is let in
    the moment worker 0 stops being alone), then drops the store (and the
    presence). Returns (writes or reads, problems, spells seen)."""
    import gc

    if worker == 0:
        store = locked_local_store(root)
        os_locks = store._state.os_locks
        assert os_locks is not None
        tags = [_tag_words(0, WHOLE, seq, BIG_WORDS) for seq in range(2)]
        seq, was = 0, False
        while not enough.is_set():
            store.set_range_sync(BIG, tags[seq % 2], 0)
            seq += 1
            now = os_locks.alone()
            if now and not was:
                with spells.get_lock():
                    spells.value += 1
            was = now
        return seq, [], spells.value
    problems: list[str] = []
    reads = 0
    try:
        for arrival in range(ARRIVALS):
            deadline = time.monotonic() + BARRIER_TIMEOUT
            while spells.value <= arrival:  # worker 0 alone again (a spell per arrival)
                assert time.monotonic() < deadline, "the writer was not alone again"
                enough.wait(0.001)
            store = locked_local_store(root)
            for _ in range(5):
                value = store.get_sync(BIG)
                assert value is not None
                reads += 1
                words = np.frombuffer(value.to_bytes(), dtype="<u8")
                if not (words == words[0]).all():
                    problems.append(f"read {reads} (arrival {arrival}): torn between writes")
            del store, value, words
            gc.collect()  # the store's state and its presence go
    finally:
        enough.set()
    return reads, problems, spells.value


@pytest.mark.timeout(150)
def test_a_process_arriving_again_and_again_while_a_writer_is_alone_never_reads_a_half_write(
    tmp_path: Path,
) -> None:
    """Each arrival stops the writer's being alone while it writes without
    pause, several milliseconds a write, and the writer is alone again
    after each: every read is of one write whole. An end-to-end check of
    the comings and goings; it does not catch a reader let in during the
    write in flight (checked by hand, with the wait for it taken out of
    ``_oslock``: the reader, starting behind the writer, never overtook it),
    which the paused-write tests of ``test_oslock`` and
    ``test_shard_writer_gate`` do."""
    root = tmp_path / "data"
    locked_local_store(root).set_sync(BIG, _tag_words(0, INITIAL, 0, BIG_WORDS))
    results = run_workers(_alone_again_and_again, 2, str(root), SPAWN.Value("i", 0), SPAWN.Event())
    (writes, _, spells), (reads, problems, _) = results
    assert spells >= ARRIVALS, f"the writer was alone {spells} times for {ARRIVALS} arrivals"
    assert not problems, f"{len(problems)} torn reads among {reads} racing {writes} writes"
