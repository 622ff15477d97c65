"""Running a child process on a small tmpfs of its own (a full disk, safely).

The tmpfs is mounted in a new mount namespace (``unshare``), which ends
with the child, so nothing is left mounted; where the machine allows no
such namespace or mount, the calling test is skipped.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def run_on_a_small_tmpfs(
    tmp_path: Path, script: str, *args: str, size: str = "1M", timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python source) as ``python script MOUNT *args`` with a
    tmpfs of ``size`` mounted at MOUNT; skip the test where that cannot be had."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    mount = tmp_path / "tmpfs"
    mount.mkdir(exist_ok=True)
    path = tmp_path / "child.py"
    path.write_text(script)
    quoted = " ".join(f'"{a}"' for a in args)
    shell = (
        f"mount -t tmpfs -o size={size} tmpfs {mount} || exit 97; "
        f'exec "{sys.executable}" {path} {mount} {quoted}'
    )
    done = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode == 97 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs in a namespace here: {done.stderr.strip()}")
    return done


def killed_by_sigbus(done: subprocess.CompletedProcess[str]) -> bool:
    """Whether the child (exec'd by the shell: its own status) died of SIGBUS."""
    return done.returncode == -signal.SIGBUS
