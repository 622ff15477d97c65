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

import pytest

from stress import report
from stress.runner import RunConfig, RunResult, run
from tests._stress_helpers import summary

pytestmark = pytest.mark.timeout(300)

N = 1_500
EVERY = 300


def ops_run(ops: int, *, checkpoint: int = EVERY, **kw: object) -> RunResult:
    cfg = RunConfig(store="memory", duration=None, ops=ops, seed=11, checkpoint=checkpoint, **kw)  # type: ignore[arg-type]
    print(f"seed {cfg.seed}")
    return run(cfg)


def test_the_records_the_oracle_holds_do_not_grow_with_the_length_of_the_run() -> None:
    short, long = ops_run(N), ops_run(4 * N)
    assert short.violations == [] and long.violations == [], summary(long)
    assert long.checked.reads + long.checked.writes > 3 * (
        short.checked.reads + short.checked.writes
    )
    assert long.memory.checkpoints > 3 * max(short.memory.checkpoints, 1)
    # The peak is a checkpoint's worth of records (plus what the workers did
    # while the watchdog was polling) and the carry: the same at N and 4N.
    assert long.memory.retained_peak < 1.5 * short.memory.retained_peak
    assert long.memory.retained_peak < N


def test_without_checkpoints_the_history_grows_with_the_run() -> None:
    # --checkpoint 0 keeps the whole history, as every run did before: the
    # same measure sees it grow, so the test above can tell.
    short, long = ops_run(N, checkpoint=0), ops_run(4 * N, checkpoint=0)
    assert long.memory.checkpoints == short.memory.checkpoints == 0
    assert long.memory.retained_peak > 3 * short.memory.retained_peak


def test_the_unlocked_control_still_finds_violations_across_checkpoints() -> None:
    result = ops_run(4 * N, unlocked=True, checkpoint=EVERY)
    assert result.memory.checkpoints > 3
    kinds = {v.kind for v in result.violations}
    assert kinds & {"lost_rmw", "lost_update", "stale_read", "torn_read"}, summary(result)


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
