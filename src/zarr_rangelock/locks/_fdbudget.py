"""The process's descriptor budget, and what the store does when descriptors run out.

Design note
-----------
*Budgets.* Two kinds of descriptor outlive the call that opened them: data
files cached for ``set_range`` (``store/_fdcache``) and idle lock-file
descriptions kept for reuse (``_oslock``). Each kind is capped per process,
across every root, by a fraction of the soft ``RLIMIT_NOFILE`` read when the
cap is consulted (so a limit the program lowers later is honoured):
:func:`cache_budget` is an eighth of it, between 8 and 1,024, and
:func:`idle_budget` a sixteenth, between 4 and 256. With the usual soft
limit of 1,024 that is 128 + 64 descriptors, and whatever the number of
roots the store keeps at most 3/16 of the limit beyond those in use (one per
running write or read, one per held cross-process lock). The per-root caps
(``_fdcache.FD_CACHE_SIZE``, 1,024, the cache budget's own cap; ``_oslock``'s
``IDLE_MAX``, 64) apply below these.

*Running out anyway.* The user's own files, or other libraries, can use up
the rest. Wherever the store opens a file (a ``set_range`` cache miss, the
store's own ``set``/``get``, a lock-file description) an ``EMFILE`` or
``ENFILE`` makes it close every cached and idle descriptor of the process
(:func:`shed`: every root, through a registry of holders) and try once more;
if that fails too, :class:`~zarr_rangelock.DescriptorLimitError` names the
key, the limit and how many descriptors the store still holds. Retrying is
safe because each retried step is idempotent and failed before it did
anything (an open that failed created nothing; zarr's ``set`` writes a
temporary file and renames it).
"""

from __future__ import annotations

import errno
import resource
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Protocol

from .._errors import DescriptorLimitError

__all__ = [
    "EXHAUSTED",
    "Permits",
    "cache_budget",
    "held",
    "idle_budget",
    "register",
    "retrying",
    "retrying_async",
    "shed",
    "soft_limit",
]

#: The errors that mean "out of descriptors": this process's limit, the system's.
EXHAUSTED = (errno.EMFILE, errno.ENFILE)


def soft_limit() -> int:
    """The process's soft ``RLIMIT_NOFILE`` (a large number if unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY or soft < 0 else soft


def cache_budget(soft: int | None = None) -> int:
    """Cached data-file descriptors allowed per process: ``soft // 8`` in ``[8, 1024]``."""
    return min(max((soft_limit() if soft is None else soft) // 8, 8), 1024)


def idle_budget(soft: int | None = None) -> int:
    """Idle lock-file descriptions allowed per process: ``soft // 16`` in ``[4, 256]``."""
    return min(max((soft_limit() if soft is None else soft) // 16, 4), 256)


class Permits:
    """A lock-free counter of up to ``budget()`` permits, for a hot path.

    ``take`` and ``give`` are one ``list.pop`` / ``list.append`` each (atomic
    in CPython), so the OS lock pool can count its idle descriptions across
    roots without taking a lock per request. The budget is read once, on
    first use.
    """

    __slots__ = ("_budget", "_free", "_init_lock")

    def __init__(self, budget: Callable[[], int]) -> None:
        self._budget = budget
        self._free: list[None] | None = None
        self._init_lock = threading.Lock()

    def take(self) -> bool:
        """Take a permit if one is free."""
        free = self._free
        if free is None:
            with self._init_lock:
                if self._free is None:
                    self._free = [None] * self._budget()
                free = self._free
        try:
            free.pop()
        except IndexError:
            return False
        return True

    def give(self) -> None:
        """Return a permit taken earlier."""
        self._free.append(None)  # type: ignore[union-attr]  # taken before: created

    def give_many(self, n: int) -> None:
        """Return ``n`` permits taken earlier."""
        self._free.extend([None] * n)  # type: ignore[union-attr]  # taken before: created


class Holder(Protocol):
    """Something that keeps descriptors open between calls."""

    def shed(self) -> int:
        """Close every descriptor not in use; return how many were closed."""

    def held(self) -> int:
        """Descriptors open now (in use or not)."""


_holders: weakref.WeakSet[Holder] = weakref.WeakSet()
_holders_lock = threading.Lock()


def register(holder: Holder) -> None:
    """Let :func:`shed` close ``holder``'s idle descriptors (held weakly)."""
    with _holders_lock:
        _holders.add(holder)


def _all_holders() -> list[Holder]:
    with _holders_lock:
        return list(_holders)


def shed() -> int:
    """Close every cached and idle descriptor of the process; return how many."""
    return sum(h.shed() for h in _all_holders())


def held() -> int:
    """Descriptors the store's holders keep open now, in use or not."""
    return sum(h.held() for h in _all_holders())


def _exhausted(e: OSError) -> bool:
    return e.errno in EXHAUSTED


def _give_up(e: OSError, key: str, operation: str) -> DescriptorLimitError:
    return DescriptorLimitError(key, operation, e.errno or errno.EMFILE, soft_limit(), held())


def retrying[T](call: Callable[[], T], key: str, operation: str) -> T:
    """``call()``; on ``EMFILE``/``ENFILE``, :func:`shed` and call once more.

    A second exhaustion raises :class:`~zarr_rangelock.DescriptorLimitError`;
    every other error passes through unchanged.
    """
    try:
        return call()
    except OSError as e:
        if not _exhausted(e):
            raise
    shed()
    try:
        return call()
    except OSError as e:
        if not _exhausted(e):
            raise
        raise _give_up(e, key, operation) from e


async def retrying_async[T](make: Callable[[], Awaitable[T]], key: str, operation: str) -> T:
    """:func:`retrying` for a coroutine factory (``make()`` is awaited, twice at most)."""
    try:
        return await make()
    except OSError as e:
        if not _exhausted(e):
            raise
    shed()
    try:
        return await make()
    except OSError as e:
        if not _exhausted(e):
            raise
        raise _give_up(e, key, operation) from e
