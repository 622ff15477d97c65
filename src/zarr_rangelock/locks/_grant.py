"""A request for byte ranges of one key, its states, and when two requests conflict.

:class:`Grant` is the lock table's entry and the caller's receipt; the table
(``_table``) owns all its state changes. Kept apart so that the table and its
token fast path (``_tokens``) share one definition.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ._ki import protected
from ._ranges import RangeSpec, overlaps, public_ranges

if TYPE_CHECKING:
    from ._queue import Segment

__all__ = ["TOKENS_MAX", "Grant", "LockStats"]


class _Owner(Protocol):
    """What a Grant needs of the manager that made it."""

    def _acquire(self, g: Grant, timeout: float | None, scoped: bool = False) -> Grant: ...
    async def _acquire_async(
        self, g: Grant, timeout: float | None, scoped: bool = False
    ) -> Grant: ...
    def _release(self, g: Grant) -> None: ...
    def _acquire_nowait(self, g: Grant) -> Grant: ...


_WAITING, _HELD, _GONE, _NEW = 0, 1, 2, 3
_STATE_NAMES = ("waiting", "held", "released", "not yet requested")

#: An exclusive holder of a key, as ``(start, end, seq)``: see
#: :meth:`RangeLockManager._run_if_free`. Unique by its sequence number.
type _Token = tuple[int, int, int]

#: Who holds a grant: see ``Grant._holder``.
type _Holder = int | object | None

#: Most token holders one key keeps before requests take the general path.
TOKENS_MAX = 8


@dataclass(frozen=True, slots=True)
class LockStats:
    """A snapshot of a :class:`RangeLockManager`'s counters.

    Attributes
    ----------
    grants : int
        Requests granted since the manager was created.
    waits : int
        Requests that could not be granted at once and had to queue.
    timeouts : int
        Queued requests that gave up on their timeout.
    cancellations : int
        Queued or just-granted requests abandoned by cancellation or an exception.
    total_wait_s : float
        Time spent queued by requests that were eventually granted, summed.
    max_wait_s : float
        Longest time one granted request spent queued.
    holders : int
        Requests holding their ranges now.
    waiters : int
        Requests queued now.
    keys : int
        Keys (and prefixes) with any holder or waiter now.
    max_queue_depth : int
        Most requests queued at once on a single key (or prefix) so far.
    os_waits : int
        Requests that, once granted here, had to wait at the OS level
        (cross-process locks of a LocalStore root; 0 without them): for
        another process's locks, or for a shared lock of this process on
        the same bytes, which an exclusive request waits for as for another
        process's (one of a key sharing its lock slot; one a call keeps
        locked while it holds others: see ``_own``).
    os_wait_s : float
        Time those requests spent waiting at the OS level, summed.
    """

    grants: int
    waits: int
    timeouts: int
    cancellations: int
    total_wait_s: float
    max_wait_s: float
    holders: int
    waiters: int
    keys: int
    max_queue_depth: int
    os_waits: int = 0
    os_wait_s: float = 0.0


class Grant:
    """A request for ranges of one key (or for a whole prefix): queued, held or released.

    Returned by :meth:`RangeLockManager.acquire` and friends; pass it to
    :meth:`RangeLockManager.release`. :meth:`RangeLockManager.lock` and its
    twins return one not yet requested: it is a context manager (sync and
    async) that requests on entry and releases on exit, once. The attributes
    are read-only by convention.
    """

    __slots__ = (
        "_blocks",
        "_cover",
        "_holder",
        "_key",
        "_nblockers",
        "_os",
        "_owner",
        "_prefix",
        "_ranges",
        "_seg",
        "_seq",
        "_shared",
        "_state",
        "_t0",
        "_timeout",
        "_waker",
    )

    def __init__(
        self,
        owner: _Owner,
        key: str,
        ranges: tuple[tuple[int, int], ...],
        shared: bool,
        prefix: bool = False,
        timeout: float | None = None,
        *,
        cover: bool = False,
    ) -> None:
        self._owner = owner
        self._key = key
        self._ranges = ranges
        self._shared = shared
        self._prefix = prefix
        self._timeout = timeout
        self._seq = 0
        self._state = _NEW
        self._nblockers = 0
        self._blocks: list[Grant] | None = None  # made when first needed
        self._seg: Segment | None = None  # its segment of its key's queue (``_queue``)
        self._waker: Any = None
        self._os: int | None = None  # the OS lock held with it (an _oslock handle), if any
        self._cover = cover  # try one OS span over all its ranges first (_oslock)
        self._t0 = 0.0
        # Who took the grant (set when the acquiring call hands it over):
        # None: not handed over (waiting, or lost between grant and hand-over);
        # 0: a caller that may pass it on (acquire(), a token); a thread ident:
        # that thread's ``with`` block; a task: that task's ``async with``
        # block. See ``_owners``.
        self._holder: _Holder = None

    @property
    def key(self) -> str:
        """The key, or for a prefix lock the prefix."""
        return self._key

    @property
    def ranges(self) -> tuple[RangeSpec, ...]:
        """The ranges, sorted and merged, with ``None`` for "to the end"."""
        return public_ranges(self._ranges)

    @property
    def shared(self) -> bool:
        """True for a shared (read) lock, False for an exclusive one."""
        return self._shared

    @property
    def is_prefix(self) -> bool:
        """True for a prefix lock (every key starting with :attr:`key`)."""
        return self._prefix

    @property
    def held(self) -> bool:
        """True while the ranges are held."""
        return self._state == _HELD

    # Entering and leaving are protected from KeyboardInterrupt (see _ki): the
    # grant is either never made or owned by the caller's ``with``.

    @protected
    def _exit(self) -> None:
        self._owner._release(self)

    @protected
    def __enter__(self) -> Grant:
        return self._owner._acquire(self, self._timeout, True)

    @protected
    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._owner._release(self)

    @protected
    async def __aenter__(self) -> Grant:
        return await self._owner._acquire_async(self, self._timeout, True)

    @protected
    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._owner._release(self)

    def __repr__(self) -> str:
        kind = "prefix" if self._prefix else "key"
        mode = "shared" if self._shared else "exclusive"
        return (
            f"<Grant {kind}={self._key!r} ranges={list(self.ranges)} {mode} "
            f"{_STATE_NAMES[self._state]}>"
        )


def _conflict(a: Grant, b: Grant) -> bool:
    """True if ``a`` and ``b`` exclude each other (ignoring queue order)."""
    if a._prefix or b._prefix:
        if a._prefix and b._prefix:
            return a._key.startswith(b._key) or b._key.startswith(a._key)
        p, k = (a, b) if a._prefix else (b, a)
        return k._key.startswith(p._key)
    if a._key != b._key or (a._shared and b._shared):
        return False
    return overlaps(a._ranges, b._ranges)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AtOnce:
    """``with AtOnce(grant):`` holds ``grant`` (made by a manager's ``lock``,
    ``lock_ranges`` or ``_lock_runs``) for the block if that needs no
    waiting, else raises :class:`~zarr_rangelock.WouldBlock` (nothing held).
    Entry and exit are protected from KeyboardInterrupt as a grant's own
    ``with`` is (``_ki``): a Ctrl-C lands in the block, whose exit releases
    the grant, or outside it; ``acquire_nowait`` followed by a ``try`` has a
    gap in between where it would leave the grant held."""

    __slots__ = ("_grant",)

    def __init__(self, grant: Grant) -> None:
        self._grant = grant

    @protected
    def __enter__(self) -> Grant:
        return self._grant._owner._acquire_nowait(self._grant)

    @protected
    def __exit__(self, *exc: object) -> None:
        self._grant._owner._release(self._grant)
