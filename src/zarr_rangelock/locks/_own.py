"""What one process holds in a root's lock file: its own holds, and its calls' descriptions.

Design note
-----------
Bookkeeping only: this module makes no system call. ``_oslock`` takes and
lets go of the OS locks and asks here what a request may rely on, which
description a call's request joins, and which descriptions may be unlocked.

*Own holds.* OFD locks of two descriptions exclude each other inside one
process too, and the spans of different keys overlap where the keys share a
slot (CRC-32 of structured names such as ``c/3/17`` collides far more often
than chance: 12 pairs among the 1,024 shard keys of a 32 x 32 grid), as a
shard writer's covering span overlaps the gaps between its chunks
(``_oslock``, "One span"). The lock table orders a process's own requests;
its OS locks need only keep other processes out. So a request whose span is
busy looks at this process's exclusive holds (:attr:`OwnHolds.excl`: each
exclusive description's spans, recorded at no more than a dict store) and
*relies* on those that cover the busy parts: it locks only the rest, and
each hold it relies on stays locked (kept, past its own release) until every
request relying on it has let go. Without this, one array write holding two
colliding shards waited for itself at the OS level, gave up after
``HOLD_AND_WAIT_S``, started over and did so forever. A request relies on
holds only when it takes the rest at once (never while it waits: a hold kept
for a waiting request could close a cycle with another process waiting for
that hold's spans), and a wait whose spans an exclusive hold of this process
overlaps polls rather than waiting in the kernel (which would wait for that
hold too). A shared hold covers nothing (an exclusive request must still
keep other processes' readers out), so an exclusive request waits for the
process's own overlapping shared holds as for another process's. Letting go
decides under the lock only while some request relies on another
(:attr:`OwnHolds.relying`); otherwise it is a dict pop, and the exclusive
holds are searched only for a busy span.

*One description per call.* A call that holds many keys at once (an array
write holds every shard it writes until all are written; ``consistent_reads``
every key it reads; a journal replay every key it replays) would hold as many
descriptions, and a process may open only so many files: ``arr[:] = x`` over
1,000 shards raised ``DescriptorLimitError`` under the usual soft limit of
1,024. Such a call takes its locks inside :func:`one_call`, and there its
requests of one mode on one lock file share one description (*the call's*):
the first takes a description as any request does, the next ones *join* it
(lock their spans through it too) and count on it (:attr:`OwnHolds.members`);
letting go of a member only counts down, and the last is the description's
release as any hold's (``F_UNLCK`` of everything it holds). So a member let
go before the call's last keeps its spans locked against other processes
until then: more exclusion, never less, and never long (such calls let go of
all their holds together, after their writes or when they start over).
Within the process, the call's exclusive spans are among the exclusive holds
like any hold's, so a request of another thread that the table lets at a
member's range after its release relies on them instead of waiting; the
call's shared spans cover nothing, as any shared hold's. A joining request
never relies and never waits through the call's description: if a span is
busy, the spans it took before stay locked (recorded if exclusive) until the
call's last release, and the request is made again as a request of its own,
with a description of its own (which may rely, wait, or fail as usual). That
is safe because the callers of ``one_call`` wait for a further hold, while
they hold some, only for a bounded time (the hold-and-wait rule of
``_holdall``), and then let go of every hold (the call's description too)
and start over: whatever the call's description keeps, it keeps no longer
than the holds do.

Complexity: recording and letting go are O(1) while nothing relies on
anything; relying on holds is O(h * s) for ``h`` spans held exclusive and
``s`` spans asked for (only for a busy span).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

from ._ki import protected
from ._lockfile import SLOT_BYTES, Span

if TYPE_CHECKING:
    from ._oslock import OsLocks

__all__ = ["CALL", "Call", "Members", "OwnHolds", "one_call"]

type Mode = tuple[OsLocks, bool]  # a lock file and whether shared
type Call = dict[Mode, int]  # a call's descriptions, by mode

#: Inside :func:`one_call`: the call's description by lock file and mode
#: (``(locks, shared)``), once its first request has one.
CALL: ContextVar[Call | None] = ContextVar("zarr_rangelock_one_call", default=None)


class one_call:  # (lower case: used as the function it was, ``with one_call():``)
    """Requests made inside the block (by this thread or task) share one
    description per lock file and mode: the locks of one call that holds
    many keys at once (see *One description per call* in the design note).

    Entry and exit are protected from KeyboardInterrupt (``_ki``): as a
    ``contextlib.contextmanager`` (until 2026-12), an interrupt between
    the variable's ``set`` and the generator's ``try``, or at the entry of
    the context manager's ``__exit__``, left :data:`CALL` set in the
    caller's context, so the thread's later requests joined a call that
    had ended.

    Concurrency
    -----------
    Only for callers that, while holding some of the block's locks, wait for
    another for a bounded time and then let go of all of them (the
    hold-and-wait rule, ``_holdall.hold_all``; or never wait, as the
    writer's fast path over several shards): a member's spans stay locked
    until the last member lets go. Tasks started inside
    the block (and functions run in a copy of its context) join the same
    call; a nested block is a call of its own.
    """

    __slots__ = ("_token",)

    _token: Token[Call | None]

    @protected
    def __enter__(self) -> None:
        self._token = CALL.set({})

    @protected
    def __exit__(self, *exc: object) -> None:
        CALL.reset(self._token)


class Members:
    """The requests counting on a call's description (:func:`one_call`)."""

    __slots__ = ("call", "count", "mode", "recorded")

    def __init__(self, call: Call, mode: Mode, spans: list[Span]) -> None:
        self.call = call  # the call's descriptions, by mode
        self.mode = mode  # this one's key in ``call``
        self.count = 1  # members holding it
        self.recorded = set(spans)  # its spans among the exclusive holds (exclusive only)


class OwnHolds:
    """One lock file's holds of this process, by description (see the design note).

    Concurrency
    -----------
    Thread-safe. ``excl`` is added to and popped from without the lock (dict
    operations are atomic); everything that decides whether a description
    may be unlocked, and every search of ``excl``, is under it. Nothing here
    waits.
    """

    __slots__ = ("_dependents", "_kept", "_lock", "_relies_on", "excl", "members", "relying")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.excl: dict[int, list[Span]] = {}  # exclusive spans by description
        self.relying = 0  # requests that rely on others now
        self._relies_on: dict[int, list[int]] = {}  # by description: whose spans
        self._dependents: dict[int, int] = {}  # by description: requests relying on it
        self._kept: set[int] = set()  # let go by their requests, kept for dependents
        self.members: dict[int, Members] = {}  # by the description of a call (one_call)

    def empty(self) -> bool:
        """Whether nothing is held, relied on, kept or counted on (for tests)."""
        return not (
            self.excl
            or self._relies_on
            or self._dependents
            or self._kept
            or self.relying
            or self.members
        )

    def took(self, fd: int, spans: list[Span], shared: bool, call: Call | None, mode: Mode) -> None:
        """Record the spans held through ``fd`` (exclusive ones only). Inside
        :func:`one_call` (``call``), ``fd`` becomes the call's description of
        ``mode`` if it has none yet."""
        if call is None or mode in call:
            if not shared:
                self.excl[fd] = spans
            return
        spans = list(spans)  # (grows as requests join: record)
        if not shared:
            self.excl[fd] = spans
        with self._lock:
            self.members[fd] = Members(call, mode, spans)
        call[mode] = fd

    def join(self, call: Call, mode: Mode) -> tuple[int, Members] | None:
        """Count one more member on the call's description of ``mode``; None
        if it has none (or none any more)."""
        fd = call.get(mode)
        if fd is None:
            return None
        with self._lock:
            members = self.members.get(fd)
            if members is None or members.call is not call:
                return None  # let go since: no description of the call's now
            members.count += 1
        return fd, members

    def record(self, fd: int, spans: list[Span], recorded: set[Span]) -> None:
        """Add ``spans`` to the exclusive spans of the call's description ``fd``."""
        with self._lock:
            held = self.excl.get(fd)
            if held is None:  # (never: the member counted keeps the entry)
                return
            for span in spans:
                if span not in recorded:
                    recorded.add(span)
                    held.append(span)  # (read only under the lock, see rely)

    def rely(self, fd: int, spans: list[Span]) -> list[Span] | None:
        """Make ``fd`` rely on the exclusive holds (other than its own) that
        cover parts of ``spans``; return the spans none covers, for ``fd`` to
        take at once (if it cannot, :meth:`unrely`). None, relying on
        nothing, if none covers any part. Prefix spans (the whole space) are
        not covered."""
        with self._lock:
            # Counted before the look: a let_go that saw no request relying
            # looks again after taking its spans out of excl.
            self.relying += 1
            pieces = [(s, s + n) for s, n in spans]
            relied: list[int] = []
            for other, held in list(self.excl.items()):  # (others add and pop unlocked)
                if other == fd:
                    continue
                for hs, hn in held:
                    pieces, covered = _uncovered(pieces, hs, hs + hn)
                    if covered and other not in relied:
                        relied.append(other)
            if not relied:
                self.relying -= 1
                return None
            self._relies_on[fd] = relied
            for other in relied:
                self._dependents[other] = self._dependents.get(other, 0) + 1
        return [(a, b - a) for a, b in pieces]

    def overlaps(self, spans: list[Span]) -> bool:
        """Whether an exclusive hold overlaps ``spans``: a wait for them then
        polls (a try relies on such holds) instead of waiting in the kernel,
        which would wait for them too."""
        with self._lock:
            return any(
                hs < s + n and s < hs + hn
                for held in list(self.excl.values())  # (others add and pop unlocked)
                for hs, hn in held
                for s, n in spans
            )

    def unrely(self, fd: int, unlock: Callable[[int], None]) -> None:
        """``fd`` relies on nobody any more; ``unlock`` the holds kept only for it."""
        if not self.relying:
            return
        with self._lock:
            relied = self._relies_on.pop(fd, None)
            if relied is None:
                return
            self.relying -= 1
            for other in relied:
                left = self._dependents[other] - 1
                if left:
                    self._dependents[other] = left
                    continue
                del self._dependents[other]
                if other in self._kept:
                    self._kept.discard(other)
                    del self.excl[other]
                    unlock(other)

    def let_go(self, fd: int, unlock: Callable[[int], None]) -> None:
        """The request holding ``fd`` lets go: ``unlock`` it, unless other
        members of its call still count on it or requests rely on it (kept
        until they let go), and the holds kept only for it."""
        if self.members and fd in self.members and self._stays(fd):
            return
        if not self.relying:
            spans = self.excl.pop(fd, None)
            if not self.relying:  # (again: a request may have come to rely on it)
                unlock(fd)
                return
            if spans is not None:
                self.excl[fd] = spans  # decided below, under the lock
        self.unrely(fd, unlock)
        with self._lock:
            if fd in self._dependents:
                self._kept.add(fd)  # until its dependents let go (unrely)
                return
            self.excl.pop(fd, None)
        unlock(fd)

    def _stays(self, fd: int) -> bool:
        """One member of the call whose description is ``fd`` lets go: True
        while others still count on it (it stays as it is), False for the
        last (the description is then let go as any hold's)."""
        with self._lock:
            members = self.members.get(fd)
            if members is None:  # (the last let go in between: fd is no member's now)
                return False
            members.count -= 1
            if members.count:
                return True
            del self.members[fd]
            if members.call.get(members.mode) == fd:
                del members.call[members.mode]
            return False


def _uncovered(
    pieces: list[tuple[int, int]], start: int, end: int
) -> tuple[list[tuple[int, int]], bool]:
    """``pieces`` (``(start, end)`` each) less ``[start, end)``, and whether
    that covered any part of them. A prefix's piece (longer than a slot) is
    never covered."""
    left: list[tuple[int, int]] = []
    covered = False
    for a, b in pieces:
        if b <= start or a >= end or b - a > SLOT_BYTES:
            left.append((a, b))
            continue
        covered = True
        if a < start:
            left.append((a, start))
        if b > end:
            left.append((end, b))
    return left, covered
