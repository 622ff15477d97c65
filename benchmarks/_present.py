"""Another process present in a store's root, for the benchmarks that measure
the cross-process locks' cost: alone, a process takes no OS lock for a
``set_range`` (``zarr_rangelock.locks._oslock``, "Alone"), so the cost of
the locks is measured with another process there."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_CHILD = """
import sys
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore
with RangeLockedStore(LocalStore(sys.argv[1])).locked_sync("present", [(0, 1)]):
    print("present", flush=True)
    sys.stdin.readline()
"""


@contextlib.contextmanager
def another_process_present(root: Path) -> Iterator[None]:
    """While inside, another process holds a lock of its own in ``root``."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline() != "present\n":
            raise RuntimeError("the process meant to be present did not start")
        yield
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(30)
