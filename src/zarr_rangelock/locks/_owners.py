"""Who holds a grant, and refusing a request that would wait for its own caller.

Design note
-----------
A grant taken by a ``with``/``async with`` block is released only when that
block ends, so its holder is known: the thread (sync block) or the task
(async block) that runs it. The acquiring call records it on the grant
(``Grant._holder``) when it hands the grant over: a thread ident, or the
task (whose loop tells, when needed, which thread it runs on). A grant handed to a caller that may
pass it on (``acquire()``, ``acquire_async()``, ``acquire_nowait()``, a token
of the store's write path) records ``0``: any thread may release it, so
nobody can be said to wait for themselves on it.

A request that must wait (and only then: the uncontended path never looks)
is refused with :class:`~zarr_rangelock.SelfDeadlockError` if a conflicting
*held* grant belongs to

- the requesting thread, for a blocking request (the block cannot end while
  its own thread is blocked);
- the requesting task, for an awaiting request;
- any task of the event loop running on the requesting thread, for a blocking
  request (the loop cannot run that task while its thread is blocked); a
  task of a loop that is not running on this thread is not suspected.

Beyond those direct waits, one indirect wait is seen: behind a queued
whole-key writer (next). Others are not: a request queued behind another
thread's queued range request that itself waits for the requester's block
(shared, then a writer of an overlapping range queues, then shared again)
still waits, as a non-reentrant reader-writer lock does. Other processes' OS
locks are taken after the in-process grant and only wait for other
processes, so checking here, in process, suffices.

*Behind a queued whole-key writer.* A request queued after a key's first
queued exclusive whole-key request (see ``_queue``) does not list the held
requests ahead of that writer among its blockers, but it waits for them all
the same (through the writer, which waits for every one of them), whether
it overlaps them or not. So the check must see every one the requester
holds: a block holding ``[0, 16)`` that reads ``[100, 200)`` of its key
while another thread's ``set`` of the key is queued would wait for the
``set``, which waits for the block (the request is refused, naming the
writer it would wait behind; with no writer queued the read is granted at
once). Scanning them for every such request costs ``O(n)`` each, ``O(n * m)``
for ``m`` whole-key requests queued behind ``n`` held ranges. Instead the
key's queue keeps them once in a :class:`HeldBy`, filed by holder (a thread
ident; a task, and also its loop), so a check looks only at the requester's
own grants: ``O(n)`` once, when the first check needs it, then ``O(1)`` plus
the requester's own grants. Holders are set when a grant is handed over,
outside the table's mutex, so a grant seen before its hand-over is kept
aside (``pending``) and filed at the next check that finds it handed over:
the requester's own grants were all handed over before it asked again, so a
grant still pending then is someone else's. A holder changes from ``0`` to
a task only through ``RangeLockManager._hand_to``, which files the grant
anew, and from a thread or task only to ``0`` (the check then skips it).
"""

from __future__ import annotations

import asyncio
import threading
from _thread import get_ident
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .._errors import SelfDeadlockError
from ._grant import _GONE, _HELD

if TYPE_CHECKING:
    from ._grant import Grant

__all__ = ["HeldBy", "refuse_self_wait", "requester"]


def _thread_name(ident: int) -> str:
    for t in threading.enumerate():
        if t.ident == ident:
            return repr(t.name)
    return f"ident {ident}"


def _task_where(task: object) -> str:
    """``'<name>'`` plus where the task's coroutine is suspended, if it is."""
    name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
    where = ""
    if isinstance(task, asyncio.Task) and task is not _current_task():
        frames = task.get_stack(limit=1)
        if frames:
            code = frames[-1].f_code
            where = f", suspended in {code.co_qualname} at {code.co_filename}:{frames[-1].f_lineno}"
    return f"{name!r}{where}"


def _self_holder(g: Grant, blockers: list[Grant], awaiting: bool) -> tuple[Grant, str] | None:
    """The first of ``blockers`` held by the requester of ``g``, with who that is."""
    tid = get_ident()
    task = asyncio.current_task() if awaiting else None
    loop = None if awaiting else _running_loop()  # the loop a blocking request would block
    for b in blockers:
        htask = b._holder
        if not htask or b._state != _HELD:
            continue
        if type(htask) is int:
            if not awaiting and htask == tid:
                return b, f"a with block of this thread ({_thread_name(tid)})"
            continue
        assert isinstance(htask, asyncio.Task)
        if awaiting:
            if htask is task:
                return b, f"an async with block of this task ({_task_where(task)})"
        elif loop is not None and htask.get_loop() is loop:
            if htask is _current_task():
                return b, f"an async with block of this task ({_task_where(htask)})"
            return b, (
                f"task {_task_where(htask)} of the event loop running on this thread "
                f"({_thread_name(tid)}), which cannot run while this thread is blocked"
            )
    return None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # none on this thread
        return None


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop on this thread
        return None


def refuse_self_wait(
    g: Grant, blockers: list[Grant], awaiting: bool, behind: Grant | None = None
) -> None:
    """Raise SelfDeadlockError if ``g`` would wait for a grant its own
    requester holds (see the module note), among ``blockers``: what ``g``
    waits for, or (``behind`` given) what the queued barrier ``behind`` that
    ``g`` waits for waits for. Called only when ``g`` must wait."""
    found = _self_holder(g, blockers, awaiting)
    if found is None:
        return
    b, holder = found
    raise SelfDeadlockError(
        g._key,
        g.ranges,
        g._shared,
        b._key,
        b.ranges,
        b._shared,
        holder,
        None if behind is None else behind.ranges,
    )


def requester(awaiting: bool) -> list[object]:
    """Who is asking, as :class:`HeldBy` files holders: the current task (an
    awaiting request); else this thread's ident and the loop running on it,
    if any (a blocking request would block every task of that loop)."""
    if awaiting:
        return [asyncio.current_task()]
    loop = _running_loop()
    return [get_ident()] if loop is None else [get_ident(), loop]


class HeldBy:
    """Held grants filed by holder (see the module note): a thread ident, or
    a task and its loop. Grants not yet handed over wait in ``pending``.

    The lock queue keeps one for the held requests ahead of its first queued
    whole-key writer and adds every request granted there later
    (:meth:`add`); it drops it when that part of the queue changes otherwise.
    """

    __slots__ = ("by", "pending")

    def __init__(self, grants: Iterable[Grant]) -> None:
        self.by: dict[object, list[Grant]] = {}
        self.pending: list[Grant] = []
        for g in grants:
            self.add(g)

    def add(self, g: Grant) -> None:
        """File the held (or just granted) grant ``g`` under its holder."""
        h = g._holder
        if h is None:  # not handed over yet
            self.pending.append(g)
        elif h:  # 0: anyone may release it, nobody waits for themselves on it
            self.by.setdefault(h, []).append(g)
            if type(h) is not int:
                self.by.setdefault(h.get_loop(), []).append(g)  # type: ignore[attr-defined]  # a task

    def of(self, who: list[object]) -> list[Grant]:
        """The live grants filed under any of ``who`` (:func:`requester`);
        superset of those that ``who`` holds. ``O(1)`` plus the grants
        returned, released ones dropped, and the grants still pending."""
        if self.pending:
            pending, self.pending = self.pending, []
            for g in pending:
                if g._state != _GONE:
                    self.add(g)
        out: list[Grant] = []
        for w in who:
            mine = self.by.get(w)
            if mine:
                live = [g for g in mine if g._state != _GONE]
                if len(live) < len(mine):
                    self.by[w] = live
                out += live
        return out

    def check(self, held: list[Grant]) -> None:
        """Assert that every grant of ``held`` is filed (for tests)."""
        for g in held:
            h = g._holder
            assert g in self.pending or not h or g in self.by.get(h, ()), (
                f"{g!r} (holder {h!r}) is not filed under its holder"
            )
