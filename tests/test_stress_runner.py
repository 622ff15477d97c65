"""The stress runner end to end: clean on the locked store, violations on the bare one.

Runs are short (1-2 s each). Every run prints its seed; a failure names it, and
``python -m stress --seed N`` with the same options repeats the load.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from stress import report
from stress.cli import main
from stress.ops import OP_KINDS, OpKind, Worker, default_mix
from stress.runner import RunConfig, RunResult, run
from tests._stress_helpers import cli, summary, usage_error

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
        (["--store", "s3"], "invalid choice"),
        (["--keys", "0"], "--keys must be >= 1"),
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
