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

Only direct waits are seen: a request queued behind another thread's *queued*
request that itself waits for the requester's block (shared, then a writer
queues, then shared again) still waits, as a non-reentrant reader-writer lock
does. Other processes' OS locks are taken after the in-process grant and only
wait for other processes, so checking here, in process, suffices.
"""

from __future__ import annotations

import asyncio
import threading
from _thread import get_ident
from typing import TYPE_CHECKING

from .._errors import SelfDeadlockError
from ._grant import _HELD

if TYPE_CHECKING:
    from ._grant import Grant

__all__ = ["refuse_self_wait"]


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


def refuse_self_wait(g: Grant, blockers: list[Grant], awaiting: bool) -> None:
    """Raise SelfDeadlockError if ``g`` would wait for a grant its own
    requester holds (see the module note). Called only when ``g`` must wait."""
    found = _self_holder(g, blockers, awaiting)
    if found is None:
        return
    b, holder = found
    raise SelfDeadlockError(g._key, g.ranges, g._shared, b._key, b.ranges, b._shared, holder)
