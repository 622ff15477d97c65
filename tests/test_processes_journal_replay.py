"""Processes that open one root at once replay each dead process's journal
once, in the order the records were written, and none of them fails or
writes before the replay is done (README, "Crash safety", *Recovery*).

The stores are unpickled in spawned workers, as a pool's workers unpickle
the store they are handed; the dead journals are written by hand, as
``tests/_journal_records.py`` writes them. The first test forces the
interleaving in which two openers split two dead records on the same bytes
between them and applied the older last: one worker's replay is held
between its two files (``_journal._open`` patched in that worker only)
while the other opens the root; replays now take turns, so the other waits
for it (seen through ``_durable._replay_turn``, patched in that worker to
report a wait). The second lets workers open the root together, unordered,
over several dead journals.

The last test runs the writers as subprocesses: one killed by the testing
hook after applying its write (its record complete), this process writing
on, another opening the root, whose replay must leave this process's write.

Worker functions live in this module, top level, so spawn can pickle them by
reference (see ``tests/test_processes.py``). Nothing sleeps: a spawn-context
``Barrier`` orders the workers, and a worker that fails aborts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._journal_records import dead_journal, record
from tests._processes import BARRIER_TIMEOUT, SPAWN, run_workers
from zarr_rangelock import JournalWarning, RangeLockedStore, WouldBlock
from zarr_rangelock.locks._grant import AtOnce
from zarr_rangelock.store import _durable, _journal
from zarr_rangelock.store._faults import FAULT_ENV

B = cpu.Buffer.from_bytes
OLD = bytes(range(100))


def _count_replays() -> list[int]:
    """From now on in this process, what each ``Journal.recover`` returns
    (the records it replayed); the replays still happen."""
    counts: list[int] = []
    real = _journal.Journal.recover

    def recover(
        self: _journal.Journal,
        lock_keys: Callable[[list[str]], AbstractContextManager[object]],
        turn: AbstractContextManager[object],
    ) -> int:
        n = real(self, lock_keys, turn)
        counts.append(n)
        return n

    _journal.Journal.recover = recover  # type: ignore[method-assign]  # a spawned worker's own copy
    return counts


LATE, FIRST = "1-aaaaaaaaaaaaaaaa.jnl", "2-bbbbbbbbbbbbbbbb.jnl"  # by name: the later record first


def _report_a_wait_for_the_turn(reached: Callable[[], None]) -> None:
    """From now on in this process, a replay that would wait for its turn
    at the root (``_durable._replay_turn``, held by another's replay) calls
    ``reached`` first, then waits."""
    real = _durable._replay_turn

    @contextlib.contextmanager
    def turn(mgr: Any) -> Iterator[None]:
        at_once = AtOnce(real(mgr))
        try:
            at_once.__enter__()
        except WouldBlock:
            reached()
            with real(mgr):
                yield
            return
        try:
            yield
        finally:
            at_once.__exit__(None, None, None)

    _durable._replay_turn = turn  # type: ignore[assignment]  # a spawned worker's own copy


def _open_while_another_replays(worker: int, pickled: bytes, turns: Barrier) -> int:
    """Worker 0 opens the root and, in its replay, is held at its open of
    FIRST (it has adopted LATE, the other file) until worker 1, opening the
    root too, either waits for its turn (now) or has adopted FIRST and is
    about to apply it (before replays took turns; then it is held there
    until worker 0's store is open). Each unpickles the store, so its
    constructor replays; returns the records that replay replayed."""
    warnings.simplefilter("error", JournalWarning)
    counts = _count_replays()
    if worker == 0:
        opened = _journal._open

        def open_then_wait(path: str, flags: int) -> int:
            fd = opened(path, flags)
            if os.path.basename(path) == FIRST:
                turns.wait(BARRIER_TIMEOUT)  # 1: worker 1, open the root
                turns.wait(BARRIER_TIMEOUT)  # 2: worker 1 waits for its turn, or holds FIRST
            return fd

        _journal._open = open_then_wait
        store = pickle.loads(pickled)
        turns.wait(BARRIER_TIMEOUT)  # 3: worker 0's store is open
    else:
        passed: list[int] = []

        def reach_2_and_3() -> None:
            turns.wait(BARRIER_TIMEOUT)  # 2
            passed.append(3)
            turns.wait(BARRIER_TIMEOUT)  # 3 (before the turn's wait, that would deadlock)

        def reach_2() -> None:
            turns.wait(BARRIER_TIMEOUT)  # 2: found worker 0's replay under way

        _report_a_wait_for_the_turn(reach_2)
        whole_keys = _durable._whole_keys

        def held_before_applying(*args: Any) -> Any:
            if not passed:  # (a replay of a file worker 0 did not take)
                reach_2_and_3()
            return whole_keys(*args)

        _durable._whole_keys = held_before_applying
        turns.wait(BARRIER_TIMEOUT)  # 1
        store = pickle.loads(pickled)
        if not passed:
            turns.wait(BARRIER_TIMEOUT)  # 3
    store.close()
    assert len(counts) == 1, counts
    return counts[0]


@pytest.mark.timeout(60)
def test_a_process_opening_the_root_during_a_replay_waits_for_it_and_later_records_win(
    tmp_path: Path,
) -> None:
    # Two processes open the root at once, as a pool's workers unpickling
    # one journal store do, over two dead processes' records on the same
    # bytes: FIRST wrote "1st!" (time 1), LATE wrote "late" over it (time
    # 2). Worker 0's replay adopts LATE and is held before FIRST while
    # worker 1 opens the root. Replays take turns: worker 1 waits for
    # worker 0's, which applies both records in the order they were
    # written, and then finds nothing left. Before they took turns, worker
    # 1 adopted FIRST (not yet worker 0's) and applied it after worker 0
    # had applied LATE: "1st!" won, the older record.
    root = tmp_path / "root"
    root.mkdir()
    (root / "k").write_bytes(OLD)
    made = RangeLockedStore(LocalStore(str(root)), durability="journal")
    pickled = pickle.dumps(made)  # made before the dead journals: it replays nothing
    made.close()
    late = dead_journal(root, record([(b"R", "k", 0, b"late")], when=2), LATE)
    first = dead_journal(root, record([(b"R", "k", 0, b"1st!")], when=1), FIRST)
    replayed = run_workers(_open_while_another_replays, 2, pickled, SPAWN.Barrier(2))
    assert (root / "k").read_bytes() == b"late" + OLD[4:]
    assert replayed == [2, 0]  # worker 0 replayed both, worker 1 waited and found none
    assert not late.exists() and not first.exists()


def _open_together(worker: int, pickled: bytes, start: Barrier) -> int:
    """Unpickle the store when every worker is ready; the records replayed."""
    warnings.simplefilter("error", JournalWarning)
    counts = _count_replays()
    start.wait(BARRIER_TIMEOUT)
    store = pickle.loads(pickled)
    store.close()
    assert len(counts) == 1, counts
    return counts[0]


@pytest.mark.timeout(60)
def test_workers_opening_a_root_together_replay_every_dead_journal_exactly_once(
    tmp_path: Path,
) -> None:
    # Four workers unpickle one journal store at the same moment over eight
    # dead processes' journals (one key each). Unordered: whichever adopts a
    # file first replays it; the others find it held or gone. Together they
    # replay each record once, and none raises or warns.
    root = tmp_path / "root"
    root.mkdir()
    n_dead, n_workers = 8, 4
    for d in range(n_dead):
        (root / f"k{d}").write_bytes(OLD)
    made = RangeLockedStore(LocalStore(str(root)), durability="journal")
    pickled = pickle.dumps(made)
    made.close()
    journals = [
        dead_journal(root, record([(b"R", f"k{d}", d, b"DEAD")]), f"{4194000 + d}-{d:016x}.jnl")
        for d in range(n_dead)
    ]
    replayed = run_workers(_open_together, n_workers, pickled, SPAWN.Barrier(n_workers))
    print("records replayed by each worker:", replayed)
    assert sum(replayed) == n_dead
    for d in range(n_dead):
        assert (root / f"k{d}").read_bytes() == OLD[:d] + b"DEAD" + OLD[d + 4 :]
    assert not any(j.exists() for j in journals)


# ----------------------------------------------------- a dead record, live writers since


_WRITER = textwrap.dedent(
    """
    import json, sys, warnings
    import zarr
    from zarr.storage import LocalStore
    from zarr_rangelock import JournalWarning, RangeLockedStore
    zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", JournalWarning)
        store = RangeLockedStore(LocalStore(sys.argv[1]), durability="journal")
        a = zarr.open_array(store, mode="r+")
    if sys.argv[2] == "write":
        a[4:8] = 11
    print(json.dumps({"read": a[:].tolist(), "warnings": [str(w.message) for w in seen]}))
    """
)


def _writer(root: Path, what: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault is not None:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-c", _WRITER, str(root), what],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("compressors", "later"),
    [
        ("zstd", slice(8, 12)),  # another chunk: appended, the index re-pointed
        (None, slice(4, 8)),  # dense: the same chunk, written over in place
    ],
    ids=["zstd-another-chunk", "dense-the-same-chunk"],
)
def test_a_dead_writers_record_is_not_replayed_over_what_a_live_writer_wrote_since(
    tmp_path: Path, compressors: str | None, later: slice
) -> None:
    # Process A writes chunk [4:8] of a one-shard array and is killed after
    # applying it, before retiring its record (the hook's before-retire).
    # This process, a live writer, goes on writing the shard. Process C then
    # opens the root (as a restarted dask worker does) and replays A's
    # record. It used to write A's bytes back over the live writer's: with
    # zstd A's index, which does not point at the chunk written since (lost,
    # silently); dense, A's chunk over the one written since. Now C's replay
    # finds the shard changed since A's transaction (its witnesses, the old
    # and new bytes of each range, both fail), leaves it, and says so.
    root = tmp_path / "root"
    kw: dict[str, Any] = {} if compressors else {"compressors": None}  # zarr's default: zstd
    with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
        store = RangeLockedStore(LocalStore(str(root)), durability="journal")
        a = zarr.create_array(store, shape=(16,), shards=(16,), chunks=(4,), dtype="i4", **kw)
        a[0:4] = 1
        journals = root / _journal.JOURNAL_DIR
        ours = set(journals.iterdir()) if journals.exists() else set()
        died = _writer(root, "write", fault="before-retire")
        assert died.returncode == -signal.SIGKILL, died.stderr
        (left,) = set(journals.iterdir()) - ours  # A's record
        a[later] = 22  # the live writer, after A died
        expected = a[:]
        assert expected[4] == (11 if later.start != 4 else 22)
        opened = _writer(root, "read")
        assert opened.returncode == 0, opened.stderr
        out = json.loads(opened.stdout)
        assert out["read"] == expected.tolist()
        (warning,) = out["warnings"]
        assert "'c/0'" in warning and "another writer changed it since" in warning
        assert repr(str(left)) in warning  # the record
        np.testing.assert_array_equal(a[:], expected)
        store.close()
    stock = zarr.open_array(LocalStore(str(root)), mode="r")  # zarr's own pipeline
    np.testing.assert_array_equal(stock[:], expected)
    assert not left.exists()
