"""Child processes forked from a server that imported their code once.

The modules that kill a child process at a point of a write start a short
child per case; a fresh interpreter for each spent most of their time
importing numpy, zarr and the library. :data:`FORKS` forks them from a
``forkserver`` that imported the children's modules (and so those) once,
and :func:`run` runs one child's function there and tells how it ended.
The children are real processes as before: their own pid, their own
descriptors and locks, killed by a real SIGKILL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zarr_rangelock.store._faults import FAULT_ENV

#: Where the children are forked from: a server that imported their modules
#: once, and this one (whose :func:`_call` each child runs: imported by each,
#: pytest with it, it cost a 64-case module half its time). One server per
#: process, its modules fixed when it starts: every test module that forks
#: from it goes through this one.
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["tests._forked", "tests._die_after", "tests._kill_children"])


@dataclass(frozen=True)
class Ended:
    """How a child ended: its exit code (negative: the signal that killed
    it), what its function returned (if it did) or the traceback of what
    it raised (then the code is 1)."""

    exitcode: int
    value: Any = None
    error: str | None = None

    @property
    def killed(self) -> bool:
        """Whether a SIGKILL ended it (its own, at the point it was told)."""
        return self.exitcode == -signal.SIGKILL

    def __str__(self) -> str:
        return f"exit code {self.exitcode}" + (f":\n{self.error[-2000:]}" if self.error else "")


def _call(target: Callable[..., Any], args: tuple[Any, ...], out: str) -> None:
    """The child: run ``target(*args)``, write what it returned (or its
    traceback, then exit 1) as JSON to ``out``. It starts without the
    library's testing hook set, whatever the environment the server was
    started in (``tests._kill_children.journal_op`` sets it itself)."""
    os.environ.pop(FAULT_ENV, None)
    try:
        told = {"value": target(*args)}
    except BaseException:
        told = {"error": traceback.format_exc()}
    Path(out).write_text(json.dumps(told))
    if "error" in told:
        os._exit(1)


def run(target: Callable[..., Any], *args: Any, timeout: float = 50) -> Ended:
    """Run ``target(*args)`` (a function of a module the server imported;
    its value JSON) in a child forked from :data:`FORKS`: how it ended. A
    child still running after ``timeout`` seconds is killed and fails the
    test (a hang, not a wait for ever)."""
    with tempfile.TemporaryDirectory(prefix="forked-") as tmp:
        out = os.path.join(tmp, "told.json")
        child = FORKS.Process(target=_call, args=(target, args, out))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()  # our own child, by its Process object
            child.join()
            pytest.fail(f"{target.__name__}: the child hung ({timeout} s)")
        told = json.loads(Path(out).read_text()) if os.path.exists(out) else {}
    return Ended(child.exitcode, told.get("value"), told.get("error"))
