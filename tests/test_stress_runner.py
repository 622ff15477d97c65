"""The stress runner end to end: clean on the locked store, violations on the bare one.

Runs are short (1-2 s each). Every run prints its seed; a failure names it, and
``python -m stress --seed N`` with the same options repeats the load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stress import processes, report
from stress.cli import main
from stress.ops import OP_KINDS, OpKind, Worker, default_mix
from stress.processes import child_main, run_processes
from stress.runner import RunConfig, RunResult, run
from stress.signature import wid_writer
from tests._processes import child_env
from tests._stress_helpers import caught, cli, summary, usage_error

# The control load: one key, so every worker hits the same bytes, and mostly
# read-modify-writes. Each rmw has a "think" step (time.sleep(0) in threads,
# asyncio.sleep(0) in tasks) between its read and its write, as a real
# decode-merge-encode would; without locks another worker's rmw of the same
# bytes lands in that window in practically every run, and the oracle's
# lost_rmw check catches two rmws that read the same version and both wrote.
CONTROL_MIX = {"rmw": 3, "set_range": 1, "get": 1}


def brief(store: str, seed: int, **kw: object) -> RunResult:
    print(f"seed {seed}")
    kw.setdefault("duration", 2.0)
    kw.setdefault("hang_after", 10.0)  # a deadlock fails the test fast, with stacks
    cfg = RunConfig(store=store, seed=seed, **kw)  # type: ignore[arg-type]
    return run(cfg)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["memory", "local"])
def test_a_brief_run_on_the_locked_store_is_clean(store: str) -> None:
    result = brief(store, seed=20240601)
    assert result.violations == [], summary(result)
    assert result.ops > 100
    assert set(result.latency) == set(default_mix()), "every op kind of the mix ran"
    assert result.lock_stats is not None
    assert result.lock_stats["grants"] > 0
    assert result.lock_stats["holders"] == result.lock_stats["waiters"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["fsync", "journal"])
def test_a_brief_run_on_a_durable_store_is_clean(durability: str) -> None:
    # Every op kind on a LocalStore wrapped with durability fsync (writes
    # synced in place) or journal (each write call one transaction; the
    # whole-value sets, deletes and read-modify-writes beside range writes).
    result = brief("local", seed=20261207, durability=durability, duration=1.5)
    assert result.violations == [], summary(result)
    assert set(result.latency) == set(default_mix()), "every op kind of the mix ran"
    assert f"durability={durability!r}" in result.target
    assert f"--durability {durability}" in report.build(result)["reproduce"]


@pytest.mark.timeout(60)
def test_a_run_in_a_named_directory_leaves_its_keys_there(tmp_path: Path) -> None:
    result = brief("local", seed=7, path=str(tmp_path / "data"), keys=2, duration=1.0)
    assert result.violations == [], summary(result)
    assert sorted(p.name for p in (tmp_path / "data" / "stress").iterdir()) == ["k0", "k1"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["memory", "local"])
def test_the_unlocked_control_with_overlapping_writes_finds_violations(store: str) -> None:
    result = brief(store, seed=11, unlocked=True, keys=1, mix=CONTROL_MIX)
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    assert result.lock_stats is None
    assert found["lost_rmw"] > 0, summary(result)


@pytest.mark.timeout(60)
def test_the_same_control_load_with_locks_is_clean() -> None:
    result = brief("memory", seed=11, keys=1, mix=CONTROL_MIX)
    assert result.violations == [], summary(result)


@pytest.mark.timeout(60)
def test_an_op_budget_stops_the_run_after_that_many_ops() -> None:
    result = run(RunConfig(duration=None, ops=300, seed=3))
    assert result.ops == 300
    assert result.violations == [], summary(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("threads", "tasks"), [(3, 0), (0, 3)])
def test_threads_only_and_tasks_only_runs_are_clean(threads: int, tasks: int) -> None:
    result = brief("memory", seed=5, threads=threads, tasks=tasks, duration=1.0)
    assert result.violations == [], summary(result)


@pytest.mark.timeout(60)
def test_a_stuck_op_is_reported_as_a_hang() -> None:
    # A registered op kind that blocks until released: the watchdog must
    # notice that no op completes, report a hang, and return.
    release = threading.Event()

    def stuck(w: Worker) -> None:
        release.wait(30)

    async def never(w: Worker) -> None:
        raise AssertionError("no tasks in this run")

    OP_KINDS["test_stuck"] = OpKind("test_stuck", 0, stuck, never, "blocks")
    try:
        cfg = RunConfig(threads=1, tasks=0, mix={"test_stuck": 1}, duration=5, hang_after=0.5)
        with open(os.devnull, "w") as devnull:
            result = run(cfg, out=devnull)
    finally:
        release.set()
        del OP_KINDS["test_stuck"]
    assert [v.kind for v in result.violations] == ["hang"]
    assert report.build(result)["exit_code"] == 1


_STUCK_IN_AN_EXECUTOR = """
import asyncio, sys, threading
from stress.cli import main
from stress.ops import OP_KINDS, OpKind

never = threading.Event()


def sync(w):
    raise AssertionError("no threads in this run")


async def stuck(w):
    await asyncio.to_thread(never.wait)  # a worker of the loop's executor, for good


OP_KINDS["test_stuck"] = OpKind("test_stuck", 0, sync, stuck, "blocks in an executor")
sys.exit(main(["--store", sys.argv[1], "--threads", "0", "--tasks", "1",
               "--mix", "test_stuck=1", "--duration", "5", "--hang-after", "0.5"]))
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("store", ["memory", "local"])
def test_the_cli_exits_after_reporting_a_hang_whatever_stays_stuck(
    store: str, tmp_path: Path
) -> None:
    # A hang leaves workers stuck for good, here a worker thread of the
    # stress loop's executor, which a normal exit waits for (the executor's
    # threads are joined at exit): the stress run of seed 9917 printed its
    # FAIL verdict and its process stayed, for ever. The CLI exits at once
    # after the report, with the report's code; a LocalStore's temporary
    # root is gone by then (the run removed it before the report).
    env = child_env(TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_IN_AN_EXECUTOR, store],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "VERDICT: FAIL" in done.stdout and "hang" in done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_the_report_has_every_section() -> None:
    result = brief("memory", seed=9, duration=1.0)
    rep = report.build(result)
    assert rep["verdict"] == "clean" and rep["exit_code"] == 0
    assert set(rep["ops_by_kind"]) == set(default_mix())
    for stats in rep["ops_by_kind"].values():
        assert 0 <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert rep["locks"]["waits"] <= rep["locks"]["grants"]
    assert rep["bytes_written"] > 0
    text = report.render(rep)
    for needle in ("p50 ms", "p99 ms", "lock waits", "bytes written", "VERDICT: PASS", "seed 9"):
        assert needle in text
    json.dumps(rep)


@pytest.mark.timeout(90)
def test_the_cli_exits_0_on_a_clean_run_and_prints_json() -> None:
    p = cli("--duration", "1", "--seed", "1", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["verdict"] == "clean" and rep["seed"] == 1
    assert "seed 1" in p.stderr
    assert "\r" not in p.stderr, "no progress line when stderr is not a terminal"


@pytest.mark.timeout(90)
def test_the_cli_exits_1_when_the_control_finds_violations() -> None:
    p = cli(
        "--unlocked",
        "--keys",
        "1",
        "--mix",
        "rmw=3,set_range=1,get=1",
        "--duration",
        "1.5",
        "--seed",
        "11",
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "VERDICT: FAIL" in p.stdout
    assert "lost_rmw" in p.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "0", "--tasks", "0"], "at least one worker"),
        (["--threads", "-1"], "--threads and --tasks must be >= 0"),
        (["--mix", "nope=1"], "unknown op kind 'nope'"),
        (["--mix", "get=0"], "at least one op kind"),
        (["--mix", "get=x"], "not a number"),
        (["--value-size", "100"], "multiple of 8"),
        (["--value-size", "lots"], "not a size"),
        (["--duration", "0"], "--duration must be > 0"),
        (["--duration", "1", "--ops", "5"], "not allowed with argument"),
        (["--path", "somewhere"], "--path only applies to --store local"),
        (["--map-writes"], "--map-writes only applies to --store local, without --unlocked"),
        (["--map-writes", "--store", "local", "--unlocked"], "--map-writes only applies"),
        (["--durability", "journal"], "--durability only applies to --store local"),
        (["--durability", "fsync", "--store", "local", "--unlocked"], "without --unlocked"),
        (["--durability", "sync", "--store", "local"], "invalid choice: 'sync'"),
        (
            ["--durability", "journal", "--store", "local", "--map-writes"],
            "--map-writes needs --durability none, got journal",
        ),
        (["--store", "s3"], "invalid choice"),
        (["--keys", "0"], "--keys must be >= 1"),
        (["--processes", "2"], "--processes needs --store local"),
        (["--processes", "2", "--store", "memory"], "--processes needs --store local"),
        (["--store", "local", "--processes", "0"], "--processes must be between 1 and 64"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in usage_error(args, capsys)


@pytest.mark.timeout(60)
def test_a_non_empty_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "precious").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main(["--store", "local", "--path", str(tmp_path)])
    assert exc.value.code == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "precious").read_text() == "keep me"


@pytest.mark.timeout(60)
def test_the_cli_process_exits_2_on_bad_arguments() -> None:
    p = cli("--threads", "-1")
    assert p.returncode == 2
    assert "--threads and --tasks must be >= 0" in p.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["memory", "local"])
def test_a_locked_block_that_holds_nothing_is_caught(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mutant of the locked store: set_range, get, set and delete still lock,
    # but locked(...) holds nothing. The oracle must see the lost updates of
    # its read-modify-writes, not only those of a wholly unlocked store.
    from stress import targets

    monkeypatch.setattr(targets.LockedTarget, "region_sync", targets.BareTarget.region_sync)
    monkeypatch.setattr(targets.LockedTarget, "region", targets.BareTarget.region)
    result = brief(store, seed=13, keys=1, mix=CONTROL_MIX, duration=1.5)
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    assert result.lock_stats is not None and result.lock_stats["grants"] > 0
    assert found["lost_rmw"] > 0, summary(result)


# --------------------------------------------------------------------------------------
# --processes: the same load from worker processes (spawned) on one LocalStore root.
#
# The child wrappers below are top-level functions of this module, so that spawn
# pickles them by reference: a spawned child gets this process's sys.path, in
# which pytest (import mode "prepend") put tests/, and imports this file as
# test_stress_runner. Each takes child_main's arguments:
# (proc, cfg, root, conn, done, go, start_at).


def _in_process_locks_only(*args: object) -> None:
    """A worker process whose RangeLockedStore takes no cross-process locks."""
    from stress import runner
    from zarr_rangelock import RangeLockedStore

    runner.RangeLockedStore = functools.partial(  # type: ignore[misc]  # this child only
        RangeLockedStore, cross_process=False
    )
    child_main(*args)


def _cannot_build_its_load(proc: int, cfg: RunConfig, *args: object) -> None:
    """Process 1 is given a mode no load has: building its part of the load raises."""
    if proc == 1:
        cfg = dataclasses.replace(cfg, mode="no-such-mode")
    child_main(proc, cfg, *args)


def _do_once_running(proc: int, done: Any, go: Any, action: Callable[[], object]) -> None:
    """``action()`` once process ``proc`` has finished an op of the load (its
    start came, and the coordinator counts it as running)."""
    go.wait()
    tick = threading.Event()
    deadline = time.monotonic() + 30
    while done[proc] < 1 and time.monotonic() < deadline:
        tick.wait(0.001)
    action()


def _dies_once_released(proc: int, *args: Any) -> None:
    """Process 1 exits with code 3 once its load runs, without a word."""
    if proc == 1:
        done, go = args[3], args[4]
        action = functools.partial(os._exit, 3)
        threading.Thread(
            target=_do_once_running, args=(proc, done, go, action), daemon=True
        ).start()
    child_main(proc, *args)


def _stops_once_released(proc: int, *args: Any) -> None:
    """Process 1 stops itself (SIGSTOP) once its load runs: it neither
    finishes an op nor reports, and its own watchdog is frozen too."""
    if proc == 1:
        done, go = args[3], args[4]
        stop = functools.partial(os.kill, os.getpid(), signal.SIGSTOP)
        threading.Thread(target=_do_once_running, args=(proc, done, go, stop), daemon=True).start()
    child_main(proc, *args)


def _spin() -> None:
    """Hold the GIL for good: ``sum`` of a long range is one C loop that never
    lets another thread run (nor the interpreter handle a signal)."""
    sum(range(10**15))


def _spins_once_released(proc: int, *args: Any) -> None:
    """Process 1 holds its GIL once its load runs: no op finishes, and its own
    watchdog (a Python thread) never runs to say so."""
    if proc == 1:
        done, go = args[3], args[4]
        threading.Thread(target=_do_once_running, args=(proc, done, go, _spin), daemon=True).start()
    child_main(proc, *args)


def _writers_by_process(result: RunResult) -> list[set[int]]:
    """The writer numbers seen in the checked history, grouped by worker process."""
    cfg = result.config
    n = cfg.threads + cfg.tasks
    writers = {wid_writer(w) for w in result.checked.write_kinds}
    return [{w for w in writers if 2 + p * n <= w < 2 + (p + 1) * n} for p in range(cfg.processes)]


@pytest.mark.timeout(120)
def test_two_processes_on_the_locked_store_are_clean_and_both_are_checked() -> None:
    result = brief("local", seed=20240611, processes=2)
    assert result.violations == [], summary(result)
    assert [p.proc for p in result.processes] == [0, 1]
    assert all(p.ops and p.ops > 100 and p.exitcode == 0 for p in result.processes)
    assert sum(p.ops or 0 for p in result.processes) == result.ops
    # Writer numbers are unique across processes, and every worker's writes were checked.
    assert [len(ws) for ws in _writers_by_process(result)] == [8, 8]
    assert result.lock_stats is not None and result.lock_stats["grants"] > 0
    assert result.lock_stats["holders"] == result.lock_stats["waiters"] == 0
    rep = report.build(result)
    assert [p["process"] for p in rep["processes"]] == [0, 1]
    assert "--processes 2" in rep["reproduce"]
    text = report.render(rep)
    assert "2 processes x (4 threads + 4 asyncio tasks)" in text and "  process 1" in text


# The cross-process control: one worker per process, so every race is between
# processes; the load is CONTROL_MIX on one key, as in the one-process control.
CROSS = {"threads": 1, "tasks": 0, "keys": 1, "mix": CONTROL_MIX, "processes": 2}


@pytest.mark.timeout(120)
def test_the_unlocked_control_in_two_processes_finds_lost_updates_between_them() -> None:
    # Up to three seeds (tests._stress_helpers.caught): two spawned processes
    # must overlap within the run's one second.
    result = caught(
        lambda seed: brief("local", seed, unlocked=True, duration=1.0, **CROSS),
        (11, 12, 13),
        {"lost_rmw"},
    )
    assert result.lock_stats is None
    lost = next(v for v in result.violations if v.kind == "lost_rmw")
    assert {wid_writer(lost.expected or 0), wid_writer(lost.found or 0)} == {2, 3}


@pytest.mark.timeout(120)
def test_the_same_cross_process_load_with_locks_is_clean() -> None:
    result = brief("local", seed=11, **CROSS)
    assert result.violations == [], summary(result)
    assert result.ops > 500


@pytest.mark.timeout(120)
def test_in_process_locks_alone_do_not_exclude_other_processes() -> None:
    # The locked store with cross_process=False in every worker process: what
    # the cross-process locks add is exactly what this run lacks.
    cfg = RunConfig(store="local", seed=11, duration=1.0, hang_after=10.0, **CROSS)  # type: ignore[arg-type]
    print(f"seed {cfg.seed}")
    result = run_processes(cfg, child=_in_process_locks_only)
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    assert result.lock_stats is not None and result.lock_stats["grants"] > 0
    assert found["lost_rmw"] > 0, summary(result)


@pytest.mark.timeout(60)
def test_a_worker_process_that_fails_to_start_fails_the_run_at_once() -> None:
    cfg = RunConfig(store="local", seed=1, duration=30.0, processes=2)
    print(f"seed {cfg.seed}")
    with open(os.devnull, "w") as devnull:
        result = run_processes(cfg, devnull, child=_cannot_build_its_load)
    assert [v.kind for v in result.violations] == ["op_error"]
    detail = result.violations[0].detail
    assert "worker process 1" in detail and "before it was ready" in detail, detail
    assert "KeyError: 'no-such-mode'" in detail
    assert result.ops == 0 and result.elapsed_s < 30


@pytest.mark.timeout(90)
def test_a_worker_process_that_dies_mid_run_is_reported_not_waited_for() -> None:
    cfg = RunConfig(store="local", seed=2, duration=1.0, hang_after=10.0, processes=2)
    print(f"seed {cfg.seed}")
    result = run_processes(cfg, child=_dies_once_released)
    died = [v for v in result.violations if "worker process 1" in v.detail]
    assert [v.kind for v in died] == ["op_error"], summary(result)
    assert "exited before it sent its history (exit code 3)" in died[0].detail
    assert [p.ops is None for p in result.processes] == [False, True]
    assert report.build(result)["exit_code"] == 1


@pytest.mark.timeout(90)
def test_a_worker_process_that_stops_is_killed_and_reported_as_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stopped process cannot run its own watchdog; the parent's kills it
    # after hang_after + HANG_GRACE_S seconds without a finished op (the
    # grace shortened from 5 s: nobody else needs to speak first here).
    monkeypatch.setattr(processes, "HANG_GRACE_S", 1.0)
    cfg = RunConfig(store="local", seed=3, duration=1.0, hang_after=1.0, processes=2)
    print(f"seed {cfg.seed}")
    with open(os.devnull, "w") as devnull:
        result = run_processes(cfg, devnull, child=_stops_once_released)
    stopped = [v for v in result.violations if "worker process 1" in v.detail]
    assert [v.kind for v in stopped] == ["hang"], summary(result)
    assert "killed it" in stopped[0].detail
    assert result.processes[1].exitcode == -signal.SIGKILL


@pytest.mark.timeout(90)
def test_a_worker_process_killed_as_hung_writes_its_stacks_first(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # Process 1 holds its GIL: its own watchdog cannot report. Before the
    # parent kills it, it sends the stacks signal, and faulthandler (C code,
    # no GIL needed) writes every thread's stack to the process's stderr.
    monkeypatch.setattr(processes, "HANG_GRACE_S", 1.0)
    cfg = RunConfig(store="local", seed=4, duration=1.0, hang_after=1.0, processes=2)
    print(f"seed {cfg.seed}")
    result = run_processes(cfg, sys.stderr, child=_spins_once_released)
    hung = [v for v in result.violations if "worker process 1" in v.detail]
    assert [v.kind for v in hung] == ["hang"], summary(result)
    err = capfd.readouterr().err
    assert "worker process 1 (pid" in err and "its stacks:" in err, err[-2000:]
    # The spinning thread's frame, as faulthandler writes it (only the stacks
    # of process 1 hold it: process 0 may report its own hang, waiting for a
    # lock the frozen process holds, but it does not spin).
    assert re.search(r"line \d+ in _spin$", err, re.MULTILINE), err[-2000:]
    assert result.processes[1].exitcode == -signal.SIGKILL


@pytest.mark.timeout(90)
def test_the_cli_runs_two_processes_and_splits_the_op_budget_between_them() -> None:
    p = cli("--store", "local", "--processes", "2", "--ops", "301", "--seed", "1", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["verdict"] == "clean" and rep["config"]["processes"] == 2
    assert rep["ops_total"] == 301
    assert [q["ops"] for q in rep["processes"]] == [151, 150]
    assert "2 processes x" in p.stderr


# --------------------------------------------------------------------------------------
# --dump-history: the records behind a failing verdict, for a closer look.


@pytest.mark.timeout(60)
def test_a_failing_run_dumps_its_history_and_a_clean_one_does_not(tmp_path: Path) -> None:
    path = tmp_path / "history.pkl"
    result = brief(
        "memory", seed=13, keys=1, mix=CONTROL_MIX, duration=1.0, unlocked=True,
        checkpoint=0, dump_history=str(path),
    )  # fmt: skip
    assert result.violations and result.history_file == str(path)
    with open(path, "rb") as f:
        data = pickle.load(f)
    assert data["violations"] == result.violations
    assert data["config"] == result.config
    wids = {w.wid for w in data["log"].writes()}
    found = {v.found for v in result.violations if v.kind == "lost_rmw"}
    assert found and found <= wids, "the writes the violations name are in the dump"
    assert "history.pkl (pickle)" in report.render(report.build(result))
    clean_path = tmp_path / "clean.pkl"
    clean = brief("memory", seed=13, duration=0.5, dump_history=str(clean_path))
    assert clean.violations == [] and clean.history_file == ""
    assert not clean_path.exists()


@pytest.mark.timeout(120)
def test_a_failing_run_of_processes_dumps_the_merged_history(tmp_path: Path) -> None:
    path = tmp_path / "history.pkl"
    result = brief(
        "local", seed=11, unlocked=True, duration=1.0, checkpoint=0, dump_history=str(path),
        **CROSS,
    )  # fmt: skip
    assert result.violations and result.history_file == str(path)
    with open(path, "rb") as f:
        data = pickle.load(f)
    assert [p.proc for p in data["processes"]] == [0, 1]
    writers = {wid_writer(w.wid) for w in data["log"].writes()}
    assert {2, 3} <= writers, "both processes' writes are in the dump"
