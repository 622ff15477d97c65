"""Open-file-description locks: the ``fcntl`` call, its probe, and the pace of polling.

``_oslock`` takes every OS range lock of a root through these (its design
note says why OFD locks, and what it does where they are missing): the
``struct flock`` as Linux lays it out (``_FLOCK``); the ``F_OFD_*``
commands (None where the ``fcntl`` module has none); :func:`ofd_supported`,
probed once per process with ``F_OFD_GETLK`` (a kernel before 3.15 refuses
it with ``EINVAL``); and, for the waits that poll (``_oslock``, *Waiting*),
the pauses between tries: from :data:`POLL_MIN_S` doubling to
:data:`POLL_MAX_S`, never past the wait's deadline, each one interruptible
by Ctrl-C (``_ki``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from collections.abc import Iterator

from ._ki import unprotected

__all__ = ["POLL_MAX_S", "POLL_MIN_S", "ofd_supported"]

POLL_MIN_S = 50e-6
POLL_MAX_S = 0.005

_F_RDLCK, _F_WRLCK, _F_UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
_FLOCK = struct.Struct("hhqqi")  # struct flock on Linux: type, whence, start, len, pid
_UNLOCK_ALL = _FLOCK.pack(_F_UNLCK, os.SEEK_SET, 0, 0, 0)
_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
_GETLK = getattr(fcntl, "F_OFD_GETLK", None)
_BUSY = (errno.EAGAIN, errno.EACCES)


_probe_result: bool | None = None


def ofd_supported(fd: int) -> bool:
    """Whether the kernel takes OFD locks on ``fd`` (probed once, with ``F_OFD_GETLK``)."""
    global _probe_result
    if _probe_result is None:
        if _GETLK is None:
            _probe_result = False
        else:
            try:
                fcntl.fcntl(fd, _GETLK, _FLOCK.pack(_F_WRLCK, os.SEEK_SET, 0, 1, 0))
                _probe_result = True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                _probe_result = False
    return _probe_result


def _pauses(deadline: float | None) -> Iterator[float | None]:
    """How long to sleep between polls: from POLL_MIN_S doubling to POLL_MAX_S,
    never past ``deadline`` (monotonic); ``None`` once it has passed (one last
    try, then give up). Endless without a deadline."""
    pause = POLL_MIN_S
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                yield None
                return
            pause = min(pause, left)
        yield pause
        pause = min(pause * 2, POLL_MAX_S)


@unprotected
def _pause(seconds: float) -> None:
    """Sleep between polls of another process's lock; Ctrl-C interrupts it."""
    time.sleep(seconds)
