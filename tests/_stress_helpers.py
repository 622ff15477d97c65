"""Helpers shared by the stress runner's tests (plain and shard mode)."""

from __future__ import annotations

import subprocess
import sys
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
