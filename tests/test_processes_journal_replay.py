"""Processes that open one root at once replay each dead process's journal
once, and none of them fails for a file another removed first (README,
"Crash safety", *Recovery*).

The stores are unpickled in spawned workers, as a pool's workers unpickle
the store they are handed; the dead journals are written by hand, as
``tests/test_durability_journal.py`` writes them. The first test forces the
interleaving that made the second opener raise ``FileNotFoundError`` out of
the store's constructor (commit 2b0b1b1): one worker opens the dead file and
is held there (``_journal._open`` patched in that worker only) while the
other replays it, removes it and writes over the record's bytes. The second
lets workers open the root together, unordered, over several dead journals.

Worker functions live in this module, top level, so spawn can pickle them by
reference (see ``tests/test_processes.py``). Nothing sleeps: a spawn-context
``Barrier`` orders the workers, and a worker that fails aborts it.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._processes import BARRIER_TIMEOUT, SPAWN, run_workers
from tests.test_durability_journal import dead_journal, record
from zarr_rangelock import JournalWarning, RangeLockedStore
from zarr_rangelock.store import _journal

B = cpu.Buffer.from_bytes
OLD = bytes(range(100))


def _count_replays() -> list[int]:
    """From now on in this process, what each ``Journal.recover`` returns
    (the records it replayed); the replays still happen."""
    counts: list[int] = []
    real = _journal.Journal.recover

    def recover(
        self: _journal.Journal, lock_keys: Callable[[list[str]], AbstractContextManager[object]]
    ) -> int:
        n = real(self, lock_keys)
        counts.append(n)
        return n

    _journal.Journal.recover = recover  # type: ignore[method-assign]  # a spawned worker's own copy
    return counts


def _open_while_another_replays(worker: int, pickled: bytes, dead: str, turns: Barrier) -> int:
    """Worker 0 opens the dead journal ``dead`` and waits there while worker
    1 opens the root (replaying and removing it) and writes "LIVE" over the
    record's bytes; then worker 0 goes on. Each unpickles the store, so its
    constructor replays; returns the records that replay replayed."""
    warnings.simplefilter("error", JournalWarning)
    counts = _count_replays()
    if worker == 0:
        opened = _journal._open

        def open_then_wait(path: str, flags: int) -> int:
            fd = opened(path, flags)
            if os.path.basename(path) == dead:
                turns.wait(BARRIER_TIMEOUT)  # 1: the file is open; worker 1, replay it
                turns.wait(BARRIER_TIMEOUT)  # 2: worker 1 has replayed, removed and written
            return fd

        _journal._open = open_then_wait
        store = pickle.loads(pickled)
        assert store.get_sync("a") is not None  # opened, and usable
    else:
        turns.wait(BARRIER_TIMEOUT)  # 1
        store = pickle.loads(pickled)
        # Over the record's bytes: replayed again, "DEAD" would come back.
        store.set_range_sync("a", B(b"LIVE"), 0)
        turns.wait(BARRIER_TIMEOUT)  # 2
    store.close()
    assert len(counts) == 1, counts
    return counts[0]


@pytest.mark.timeout(60)
def test_a_dead_journal_another_process_took_first_is_neither_replayed_again_nor_an_error(
    tmp_path: Path,
) -> None:
    # Two processes open the root at once, as a pool's workers unpickling
    # one journal store do, and both find the dead process's journal file.
    # Worker 0 opens it; before it takes the file's flock, worker 1 adopts
    # it, replays it, removes it, lets go of it and writes "LIVE" over the
    # record's bytes. Worker 0 then gets the flock of a file no path names:
    # it must leave it (replay nothing, warn of nothing) and open the store,
    # not raise FileNotFoundError removing the file again.
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(OLD)
    made = RangeLockedStore(LocalStore(str(root)), durability="journal")
    pickled = pickle.dumps(made)  # made before the dead journal: it replays nothing
    made.close()
    jnl = dead_journal(root, record([(b"R", "a", 0, b"DEAD")]))
    turns = SPAWN.Barrier(2)
    replayed = run_workers(_open_while_another_replays, 2, pickled, jnl.name, turns)
    assert replayed == [0, 1]  # worker 1 replayed it, worker 0 left it
    assert (root / "a").read_bytes() == b"LIVE" + OLD[4:]
    assert not jnl.exists()


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
