"""Helpers shared by the stress runner's tests (plain and shard mode)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from stress.cli import main
from stress.runner import RunResult

REPO = Path(__file__).resolve().parent.parent


def summary(result: RunResult) -> str:
    """The seed, the number of violations and the first ten, for a failing assert."""
    lines = [f"seed {result.config.seed}: {len(result.violations)} violations"]
    kinds = result.checked.write_kinds
    lines += [v.describe(kinds) for v in result.violations[:10]]
    return "\n".join(lines)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m stress *args`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "stress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process with bad ``args``: assert it exits 2 with nothing
    on stdout, and return what it wrote to stderr."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


def first_run(
    run: Callable[[int], RunResult],
    seeds: Sequence[int],
    seen: Callable[[RunResult], bool],
    what: str,
) -> RunResult:
    """``run(seed)`` once per seed in turn until ``seen`` says yes of its
    result: that result. Fails the test, naming ``what`` was not seen, if
    no run shows it.

    For what a brief run shows only if its timing lets it: a loaded
    machine can keep a control's writers apart for one run (a control of
    one seed went red in CI so), or end a run before its first checkpoint,
    while a race that cannot happen fails every seed.
    """
    for seed in seeds:
        result = run(seed)
        if seen(result):
            return result
    pytest.fail(f"{what} in none of {len(seeds)} runs: {summary(result)}")


def caught(
    run: Callable[[int], RunResult], seeds: Sequence[int], kinds: set[str], at_least: int = 1
) -> RunResult:
    """A control's run (:func:`first_run`) that finds at least ``at_least``
    violations of ``kinds``."""

    def seen(result: RunResult) -> bool:
        found = Counter(v.kind for v in result.violations)
        print(f"seed {result.config.seed}: {dict(found)}")
        return sum(found[kind] for kind in kinds) >= at_least

    return first_run(run, seeds, seen, f"at least {at_least} of {sorted(kinds)}")


def cli_caught(*args: str, seeds: Sequence[int]) -> subprocess.CompletedProcess[str]:
    """``python -m stress *args --seed N`` for each of ``seeds`` in turn until
    one exits 1 (violations found: :func:`caught`, for the CLI): that run.
    Fails the test if none does."""
    for seed in seeds:
        p = cli(*args, "--seed", str(seed))
        if p.returncode == 1:
            return p
        print(f"seed {seed}: exit code {p.returncode}")
    pytest.fail(f"no run of {len(seeds)} seeds exited 1; the last:\n{p.stdout}{p.stderr}")
