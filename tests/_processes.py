"""Helpers for tests that ask another process about a lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_TRY_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import LockTimeout, RangeLockedStore
    root, key, start, end = sys.argv[1:5]
    store = RangeLockedStore(LocalStore(root))
    try:
        with store.locked_sync(key, [(int(start), int(end))], timeout=0.05):
            print("granted")
    except LockTimeout:
        print("busy")
    """
)


def try_in_another_process(root: Path, key: str, start: int, end: int) -> str:
    """Whether another process, through its own store of ``root``, gets
    ``[start, end)`` of ``key`` within 50 ms: ``"granted"`` or ``"busy"``."""
    out = subprocess.run(
        [sys.executable, "-c", _TRY_CHILD, str(root), key, str(start), str(end)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()
