"""The stress runner checks as it goes, so its memory stays flat (issue 10, item 8).

Every ``checkpoint`` ops the runner parks its workers, checks the records so
far against the state it reads then and drops them, carrying per key only
what the oracle needs (bounded by the value size). These tests count the
records the oracle holds (not wall clock, not RSS): the most it held at once
must not grow with the length of the run, while the oracle keeps finding the
violations of the ``--unlocked`` control and a run stays reproducible from
its seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from stress import report
from stress.ops import default_mix
from stress.runner import RunConfig, RunResult, run
from stress.shard_check import ArrayCarry, check_epoch
from stress.shard_model import (
    ArrayHistory,
    Box,
    BoxRead,
    BoxWrite,
    Geometry,
    ValueCodec,
    slices,
)
from stress.shard_ops import ShardConfig
from stress.signature import make_wid
from tests._stress_helpers import caught, summary

pytestmark = pytest.mark.timeout(300)

N = 1_500
EVERY = 300

#: What a control without locks must find some of
RACES = {"lost_rmw", "lost_update", "stale_read", "torn_read"}


def ops_run(ops: int, *, checkpoint: int = EVERY, seed: int = 11, **kw: object) -> RunResult:
    cfg = RunConfig(store="memory", duration=None, ops=ops, seed=seed, checkpoint=checkpoint, **kw)  # type: ignore[arg-type]
    print(f"seed {cfg.seed}")
    return run(cfg)


def test_the_records_the_oracle_holds_do_not_grow_with_the_length_of_the_run() -> None:
    short, long = ops_run(N), ops_run(4 * N)
    assert short.violations == [] and long.violations == [], summary(long)
    assert long.checked.reads + long.checked.writes > 3 * (
        short.checked.reads + short.checked.writes
    )
    # Checkpoints land where the run parks (timing), so their count is not
    # compared with the short run's: under load 4x the records gave 8
    # against 3 once, and 4 against 2 on Python 3.13 beside two test runs.
    # Two show records dropped and checking going on; the bound on the peak
    # below is the property.
    assert long.memory.checkpoints >= 2
    # The peak is a checkpoint's worth of records (plus what the workers did
    # while the watchdog was polling) and the carry. Bounded against the run's
    # own records, not against the short run's peak (a max over fewer
    # intervals: the shard twin of this test failed once so in CI), and not
    # against N either: with the machine loaded, CI saw 1,753 against N =
    # 1,500 (the processes twin dropped its PROC_N bound for the same cause).
    total = long.checked.reads + long.checked.writes
    assert long.memory.retained_peak < total / 3, (long.memory.retained_peak, total)


def test_without_checkpoints_the_history_grows_with_the_run() -> None:
    # --checkpoint 0 keeps the whole history, as every run did before: the
    # same measure sees it grow, so the test above can tell.
    short, long = ops_run(N, checkpoint=0), ops_run(4 * N, checkpoint=0)
    assert long.memory.checkpoints == short.memory.checkpoints == 0
    assert long.memory.retained_peak > 3 * short.memory.retained_peak


def test_the_unlocked_control_still_finds_violations_across_checkpoints() -> None:
    result = caught(
        lambda seed: ops_run(4 * N, unlocked=True, checkpoint=EVERY, seed=seed), (11, 12, 13), RACES
    )
    # Checkpoints land where the run parks (timing): CI with the machine
    # loaded saw 3 in this run of 20 intervals; two show records dropped and
    # checking going on.
    assert result.memory.checkpoints >= 2


def test_the_report_shows_the_memory_figures_and_the_seed_reproduces_the_checkpoints() -> None:
    result = ops_run(N)
    rep = report.build(result)
    mem = rep["memory"]
    assert {"start_mib", "middle_mib", "end_mib", "peak_mib"} <= set(mem)
    assert mem["peak_mib"] >= max(mem["start_mib"], mem["end_mib"]) > 0
    assert rep["oracle"]["retained_peak"] == result.memory.retained_peak
    text = report.render(rep)
    assert "memory         RSS" in text and "records" in text
    assert f"--checkpoint {EVERY}" in rep["reproduce"] and "--seed 11" in rep["reproduce"]


# --------------------------------------------------------------------------------------
# Shard mode: the same checkpoints (the array read through the run's array and
# with stock zarr, the epoch checked and dropped; carried: the sweep of every
# completed write, four int64 per element, and the writes a later view can name).

GEOM = Geometry((4, 8), (4, 8), (2, 4))
A, B, C = make_wid(2, 1), make_wid(3, 1), make_wid(4, 1)
TOP, BOTTOM = ((0, 0), (2, 8)), ((2, 0), (4, 8))
SMALL = ShardConfig(shape=(32, 32), shards=(16, 16), chunks=(8, 8))
SHARD_N = 400
SHARD_EVERY = 100


class Epochs:
    """Hand-made epochs of one shard run: writes, reads, and the array at each checkpoint."""

    def __init__(self) -> None:
        self.codec = ValueCodec("int32", GEOM.shape)
        self.array = np.zeros(GEOM.shape, dtype=self.codec.dtype)
        self.carry: ArrayCarry | None = None
        self.h = ArrayHistory(GEOM, self.codec)
        self.rec = self.h.recorder()

    def write(self, wid: int, box: Box, t0: int, t1: int, *, lands: bool = True) -> None:
        self.rec.writes.append(BoxWrite(wid, "hand", *box, t0, t1))
        if lands:
            self.array[slices(*box)] = self.codec.encode(wid, *box)

    def read(self, box: Box, t0: int, t1: int) -> None:
        self.rec.reads.append(BoxRead(*box, t0, t1, self.array[slices(*box)].copy()))

    def checkpoint(self) -> list[str]:
        """Check the epoch against the array now; start the next one."""
        self.h.finals["stock"] = self.array.copy()
        result, self.carry = check_epoch(self.h, self.carry)
        self.h = ArrayHistory(GEOM, self.codec)
        self.rec = self.h.recorder()
        for v in result.violations:
            print(v.describe(result.write_kinds))
        return [v.kind for v in result.violations]


@pytest.mark.timeout(30)
def test_a_read_after_a_checkpoint_that_misses_a_write_of_an_earlier_epoch_is_stale() -> None:
    e = Epochs()
    e.write(A, TOP, 10, 20)
    assert e.checkpoint() == []
    e.array[...] = 0  # A's rows went back to the fill value after the checkpoint
    e.read(TOP, 30, 40)
    assert e.checkpoint() == ["stale_read", "lost_update", "lost_update"]


@pytest.mark.timeout(30)
def test_a_later_epoch_may_show_the_writes_the_checkpoint_showed_and_overwrite_them() -> None:
    e = Epochs()
    e.write(A, TOP, 10, 20)
    e.write(B, BOTTOM, 11, 21)
    assert e.checkpoint() == []
    e.read(((0, 0), (4, 4)), 30, 31)  # A and B, written before the checkpoint
    e.write(C, ((1, 2), (3, 6)), 40, 50)  # over both
    e.read(((0, 0), (4, 8)), 60, 61)
    assert e.checkpoint() == []
    assert e.carry is not None and {w.wid for w in e.carry.writes} >= {A, B, C}


@pytest.mark.timeout(30)
def test_a_chunk_that_stays_lost_is_reported_once_not_at_every_checkpoint() -> None:
    e = Epochs()
    e.write(A, TOP, 10, 20, lands=False)
    assert e.checkpoint() == ["lost_update", "lost_update"]  # one per inner chunk
    assert e.checkpoint() == []
    e.write(B, TOP, 30, 40)  # rewritten: nothing lost any more
    assert e.checkpoint() == []
    e.array[0:2, 0:4] = 0  # and lost again: a new finding
    assert e.checkpoint() == ["lost_update"]


def shard_run(
    ops: int, *, checkpoint: int = SHARD_EVERY, seed: int = 12, **kw: object
) -> RunResult:
    kw.setdefault("mix", default_mix("shard"))
    kw.setdefault("shard", SMALL)
    cfg = RunConfig(
        store="memory",
        mode="shard",
        duration=None,
        ops=ops,
        seed=seed,
        checkpoint=checkpoint,
        hang_after=20.0,
        **kw,  # type: ignore[arg-type]
    )
    print(f"seed {cfg.seed}")
    return run(cfg)


@pytest.mark.timeout(300)
def test_the_records_the_shard_oracle_holds_do_not_grow_with_the_length_of_the_run() -> None:
    short, long = shard_run(SHARD_N), shard_run(4 * SHARD_N)
    assert short.violations == [] and long.violations == [], summary(long)
    assert long.checked.reads + long.checked.writes > 3 * (
        short.checked.reads + short.checked.writes
    )
    # Checkpoints land where the run parks (timing), so their count is not
    # compared with the short run's: under load 4x the records gave 8
    # against 3 once, and 4 against 2 on Python 3.13 beside two test runs.
    # Two show records dropped and checking going on; the bound on the peak
    # below is the property.
    assert long.memory.checkpoints >= 2
    # The peak is a checkpoint's worth of records plus what the workers did
    # while parking. Not compared with the short run's peak: that is the max
    # of 3-4 intervals against 13-16, and where they end is timing (251
    # against 1.5 x 167 failed once in CI). The whole run's records held at
    # once would be several times this.
    # Bounded against the run's own records only, as the ops twin is: CI
    # with the machine loaded saw 424 against SHARD_N = 400.
    total = long.checked.reads + long.checked.writes
    assert long.memory.retained_peak < total / 3, (long.memory.retained_peak, total)


@pytest.mark.timeout(300)
def test_without_checkpoints_the_shard_history_grows_with_the_run() -> None:
    short, long = shard_run(SHARD_N, checkpoint=0), shard_run(4 * SHARD_N, checkpoint=0)
    assert long.memory.checkpoints == short.memory.checkpoints == 0
    assert long.memory.retained_peak > 3 * short.memory.retained_peak


@pytest.mark.timeout(300)
def test_the_shard_control_still_loses_chunks_across_checkpoints() -> None:
    # tests/test_stress_shard.py's control: one shard of 16 inner chunks, every
    # write one chunk, stock zarr rewriting the whole shard for each.
    sc = ShardConfig(shape=(32, 32), shards=(32, 32), chunks=(8, 8), prefill=0.0)
    # One state shows at most two findings per inner chunk (fill, or an older
    # write): more than 32 were found at several checkpoints, not only at the end.
    result = caught(
        lambda seed: shard_run(
            4 * SHARD_N, unlocked=True, mix={"shard_chunk": 1}, shard=sc, seed=seed
        ),
        (12, 13, 14),
        {"lost_update"},
        at_least=33,
    )
    assert result.memory.checkpoints > 3


# --------------------------------------------------------------------------------------
# --processes: the coordinator asks every process to park and hand its records
# over, reads the state, checks and drops; nobody keeps the whole history.

PROC_N = 2_000
PROC_EVERY = 400


#: The default mix without the ops that empty every key at once. Their
#: prefix lock waits at the OS level until no other process holds a key
#: under it (between processes there is no FIFO), and the rest of its own
#: process queues behind it: one process then runs at a third of the
#: other's rate (seen: 1,411 ops against 3,977 at 1.9 s), the fast one
#: finishes its budget first, and checkpoints, which need every process
#: running, stop while the slow one piles up its last records (2,161 of
#: 4,000 ops once in CI, past the bound below; 655-862 without these ops).
#: Not what these tests measure.
PROC_MIX = {k: w for k, w in default_mix().items() if k not in ("delete_dir", "clear")}


def proc_run(ops: int, *, checkpoint: int = PROC_EVERY, seed: int = 13, **kw: object) -> RunResult:
    kw.setdefault("mix", PROC_MIX)
    cfg = RunConfig(
        store="local",
        processes=2,
        duration=None,
        ops=ops,
        seed=seed,
        checkpoint=checkpoint,
        hang_after=20.0,
        **kw,  # type: ignore[arg-type]
    )
    print(f"seed {cfg.seed}")
    return run(cfg)


def worker_peak(result: RunResult) -> int:
    return max(p.retained_peak for p in result.processes)


@pytest.mark.timeout(300)
def test_neither_the_coordinator_nor_the_worker_processes_hold_more_records_as_the_run_grows() -> (
    None
):
    short, long = proc_run(PROC_N), proc_run(4 * PROC_N)
    assert short.violations == [] and long.violations == [], summary(long)
    # Checkpoints land where the run parks (timing), so their count is not
    # compared with the short run's: under load 4x the records gave 8
    # against 3 once, and 4 against 2 on Python 3.13 beside two test runs.
    # Two show records dropped and checking going on; the bound on the peak
    # below is the property.
    assert long.memory.checkpoints >= 2
    assert all(p.checkpoints == long.memory.checkpoints for p in long.processes)
    # 4x the ops, not 4x the records. The peak is what piles up between two
    # checkpoints, so it grows with how late one lands on a loaded machine:
    # bounded against the run's own records (each worker's against its own
    # ops), not against the short run's peak (a max over fewer intervals:
    # CI saw 2040 against 1128 once, and the twins of this test above
    # failed so). Without checkpoints it is all of them (the test below).
    # Here: the coordinator 1,782 of 10,197 records, each worker 815-920
    # for its 4,000 ops; without checkpoints 10,185 and 5,033-5,148.
    total = long.checked.reads + long.checked.writes
    assert long.memory.retained_peak < total / 3, (long.memory.retained_peak, total)
    for p in long.processes:
        assert p.ops is not None and p.retained_peak < p.ops / 2, (p.retained_peak, p.ops)


@pytest.mark.timeout(300)
def test_without_checkpoints_the_coordinator_and_the_workers_hold_the_whole_history() -> None:
    short, long = proc_run(PROC_N, checkpoint=0), proc_run(4 * PROC_N, checkpoint=0)
    assert long.memory.checkpoints == 0
    assert long.memory.retained_peak > 3 * short.memory.retained_peak
    assert worker_peak(long) > 3 * worker_peak(short)
    # the bounds of the test above fail here
    total = long.checked.reads + long.checked.writes
    assert long.memory.retained_peak >= total / 3, (long.memory.retained_peak, total)
    assert all(p.ops is not None and p.retained_peak >= p.ops / 2 for p in long.processes)


@pytest.mark.timeout(300)
def test_the_unlocked_control_in_processes_still_finds_violations_across_checkpoints() -> None:
    # Up to three seeds: two spawned processes must overlap.
    result = caught(
        lambda seed: proc_run(4 * PROC_N, unlocked=True, seed=seed), (13, 14, 15), RACES
    )
    # At least one checkpoint ran (violations may end the run early, so not
    # how many: CI once saw 3 where a local run sees about 20).
    assert result.memory.checkpoints >= 1


@pytest.mark.timeout(300)
def test_shard_mode_in_processes_checks_as_it_goes_and_reports_every_process_memory() -> None:
    result = proc_run(
        4 * SHARD_N, mode="shard", mix=default_mix("shard"), shard=SMALL, checkpoint=SHARD_EVERY
    )
    assert result.violations == [], summary(result)
    assert result.memory.checkpoints > 3
    # well under the run's 4 * SHARD_N records; checkpoints across processes
    # land late by however long parking takes (CI once saw 413 at 4x SHARD_EVERY)
    assert result.memory.retained_peak < 2 * SHARD_N and worker_peak(result) < 2 * SHARD_N
    rep = report.build(result)
    assert all(p["peak_rss_mib"] > 0 for p in rep["processes"])
    text = report.render(rep)
    assert "coordinator RSS" in text and "worker processes: peak RSS" in text
