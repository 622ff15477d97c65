"""Helpers for tests that ask another process about a lock."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
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


def python_output(code: str, timeout: float = 50) -> str:
    """What ``code`` prints, run by a fresh interpreter of this Python (it
    must exit cleanly within ``timeout`` seconds)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    ).stdout


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


_PRESENT_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))
    with store.locked_sync("another process's key", [(0, 1)]):
        print("present", flush=True)
        sys.stdin.readline()
    """
)


@contextlib.contextmanager
def present_in_another_process(root: Path) -> Iterator[None]:
    """While inside: another process locks in ``root`` (holds a range of a
    key of its own), so no process there is alone (``locks/_oslock``: a
    process alone takes no OS lock for a token hold)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRESENT_CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "present\n"
        yield
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
