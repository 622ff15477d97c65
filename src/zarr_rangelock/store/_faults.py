"""The testing hook ``ZARR_RANGELOCK_FAULT``: the process kills itself mid-commit.

Set :data:`FAULT_ENV` to one of :data:`FAULT_POINTS` and the process kills
itself with ``SIGKILL`` at that point of its next journaled commit
(``_journal``; ``mid-apply`` halfway through the range bytes it applies,
``_apply``), right after a lone whole-value write or delete, its own commit
point (``_durable``), or, with ``durability="none"`` and ``mid-apply`` set
when the store was made, halfway through its next range write
(``_durable.FaultyLocalBackend``: the crash tests' control).
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "FAULT_POINTS"]

#: The testing hook: set to one of :data:`FAULT_POINTS`, the process kills
#: itself with SIGKILL at that point of its next journaled commit.
FAULT_ENV = "ZARR_RANGELOCK_FAULT"
FAULT_POINTS = ("after-journal", "mid-apply", "before-retire")

_ENV = getattr(os.environ, "_data", None)  # os.environ's own dict (bytes keys on POSIX)
_FAULT_KEY = os.fsencode(FAULT_ENV)


def _fault() -> str | None:
    """The testing hook's point, read at each commit (as cheaply as a dict
    lookup: ``os.environ.get`` encodes the name every time)."""
    if _ENV is None:  # pragma: no cover - not CPython's os.environ
        return os.environ.get(FAULT_ENV)
    raw = _ENV.get(_FAULT_KEY)
    return None if raw is None else os.fsdecode(raw)


def _die(point: str) -> None:
    """The testing hook: kill this process now (``ZARR_RANGELOCK_FAULT``)."""
    os.environ.pop(FAULT_ENV, None)  # unreachable afterwards; tidy for in-process tests
    os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(f"{FAULT_ENV}={point}: SIGKILL did not stop the process")  # pragma: no cover
