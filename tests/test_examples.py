"""The README's many-processes example runs as shipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_the_many_processes_example_writes_every_chunk(tmp_path: Path) -> None:
    target = tmp_path / "data.zarr"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "many_processes.py"), str(target)],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"ok: {target}"
