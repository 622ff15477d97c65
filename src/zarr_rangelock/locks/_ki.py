"""KeyboardInterrupt protection: no grant is lost to a Ctrl-C at an unlucky moment.

Design note
-----------
Python raises ``KeyboardInterrupt`` from its SIGINT handler, which runs in the
main thread at the next "check" of the interpreter (a call, a backward jump),
wherever that is. Landing between "the table granted the ranges" and "the
caller's ``with`` owns the grant" (or in the middle of the table's
bookkeeping, or between taking and releasing the table's mutex) it leaves a
grant that nobody will ever release, and every later request on those ranges
hangs.

We follow trio (``trio/_core/_ki.py``): functions are *marked* protected or
unprotected by their code object (:func:`protected`, :func:`unprotected`; the
mark costs nothing at call time), and a SIGINT handler looks at the frame the
signal interrupted and its callers. If the innermost marked frame is
protected, the interrupt is deferred: the handler re-arms the signal
(a helper thread sends it again) and returns, so the handler runs again a
moment later, and the ``KeyboardInterrupt`` is raised at the first delivery
that finds the main thread outside protected code: in the body of the
caller's ``with`` (whose exit then releases the grant), or after the
release. Otherwise it raises at once, as Python's default handler does.

Protected code never blocks for long. The waits themselves (for a grant, for
another process's lock) are marked unprotected, so Ctrl-C still interrupts a
wait; the protected code around them then abandons the request (hands a grant
that raced the interrupt on) before the exception propagates, as for a
cancellation.

The handler is installed by :func:`install` (called when a lock table is
created) only on the main thread and only while SIGINT has Python's default
handler (or an ``asyncio.Runner``'s, below): a program (or framework) that
installed its own SIGINT handler keeps it, and then gets no deferral.
Exceptions injected by ``PyThreadState_SetAsyncExc`` do not go through a
signal handler and are not deferred.

*Under ``asyncio.run``* (an ``asyncio.Runner``): the runner installs its own
handler (the first Ctrl-C cancels the main task, ``KeyboardInterrupt`` is
raised once it has ended, a second Ctrl-C raises at once) only over the
default one, so once this handler is in place it does not. A
``KeyboardInterrupt`` raised in the running code instead can land inside
asyncio's own machinery and lose a task's wake-up, and the runner's cleanup
then waits for that task for ever. So this handler does what the runner's
would have done: it finds the ``Runner.run`` running in the main thread's
stack and calls the runner's own handler (``_on_sigint``, private to
asyncio; 3.12 and 3.13 have it): the first interrupt cancels the main task
(``task.cancel()`` from the handler, as asyncio does: a request the task
sees at its next step, never lost if the task is about to end), a later
one raises. (The first lock table made on the main thread while a
runner's own handler is in place replaces it with this one, which the
runner then leaves in place.) Once the main task has ended, the loop's
stop callback is queued, and a ``KeyboardInterrupt`` raised before it
runs leaves it queued: the runner's cleanup then stops at once and fails
with ``RuntimeError`` (as with asyncio's own handler, if the cleanup has
anything to wait for). There the interrupt is raised from a callback
queued after it: queued in the next loop turn (the handler may have
interrupted the scheduling of the task's callbacks, stop callback and
all), so run after the stop callback, in the runner's cleanup.
Without a runner (or that method) the interrupt is raised as before.

*A write on the main thread's own event loop* (a ``ShardWriter`` runs the
pipeline on a loop of the calling thread) is another matter: a
``KeyboardInterrupt`` raised inside asyncio's own machinery (a future's
callbacks being scheduled, a task group adding a task) can lose a task's
wake-up, and the write then waits for ever. While such a write runs
(:func:`sigint_cancels`), an interrupt outside protected code cancels the
write's task instead, through its loop (``call_soon_threadsafe``), as
``asyncio.Runner`` does on Ctrl-C; the writer raises ``KeyboardInterrupt``
once the write has let go of everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

__all__ = [
    "install",
    "installed",
    "protected",
    "protection_enabled",
    "sigint_cancels",
    "unprotected",
]

#: Code object -> True (interrupts deferred inside) or False (raised at once).
_MARKS: dict[CodeType, bool] = {}


def protected[F: Callable[..., Any]](fn: F) -> F:
    """Mark ``fn`` (a function, generator or coroutine function): a
    KeyboardInterrupt is deferred while it runs, unless an unprotected function
    it calls is running. Returns ``fn`` itself: no wrapper, no cost per call."""
    _MARKS[fn.__code__] = True
    return fn


def unprotected[F: Callable[..., Any]](fn: F) -> F:
    """Mark ``fn`` as a place where a KeyboardInterrupt is raised at once (a
    blocking wait inside protected code)."""
    _MARKS[fn.__code__] = False
    return fn


def protection_enabled(frame: FrameType | None) -> bool:
    """True if the innermost marked frame at or above ``frame`` is protected."""
    marks = _MARKS
    while frame is not None:
        mark = marks.get(frame.f_code)
        if mark is not None:
            return mark
        frame = frame.f_back
    return False


#: Signals to send the main thread again (see ``_redeliver``); made when first needed.
_again: queue.SimpleQueue[int] | None = None


def _redeliver(again: queue.SimpleQueue[int], main: int) -> None:
    """Thread: send the main thread each signal put in ``again``.

    The handler cannot re-arm the signal itself: the interpreter checks for
    signals right after the call that re-arms it, still inside the handler,
    and would recurse. A real signal (not ``_thread.interrupt_main``) also
    interrupts a blocking call the main thread may have entered meanwhile,
    as the first one did.
    """
    while True:
        signal.pthread_kill(main, again.get())


#: Signals deferred and not yet delivered again (for tests: wait until 0).
deferred = 0


def _handler(signum: int, frame: FrameType | None) -> None:
    global _again, deferred
    if deferred:
        deferred -= 1  # this may be one delivered again
    if protection_enabled(frame):
        # Deliver it again in a moment; the first delivery that finds the
        # main thread outside protected code raises.
        deferred += 1
        if _again is None:
            _again = queue.SimpleQueue()
            threading.Thread(
                target=_redeliver,
                args=(_again, threading.get_ident()),
                name="zarr-rangelock-sigint",
                daemon=True,
            ).start()
        _again.put(signum)
        return
    target = _target
    if target is not None and target[1]:  # a write on this thread's loop: cancel it there
        loop, (task,), hits = target
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop is closed: nothing to cancel
            pass
        else:
            hits[0] += 1
            return
    runner = _runner_at(frame)
    if runner is not None:  # under asyncio.run: what its own handler does
        on_sigint, task = runner
        if not task.done():
            on_sigint(signum, frame, task)  # the first cancels the task, a later one raises
            return
        loop = task.get_loop()
        try:  # raised in a callback after the loop's stop callback
            loop.call_soon_threadsafe(loop.call_soon, _raise_interrupt)
        except RuntimeError:  # the loop is closed: raise here
            pass
        else:
            return
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


_RUNNER_RUN = asyncio.Runner.run.__code__


def _runner_at(frame: FrameType | None) -> tuple[Callable[..., None], asyncio.Task[Any]] | None:
    """The SIGINT handler of the ``asyncio.Runner`` running in the stack at
    ``frame`` and its main task (see the design note); None if there is
    none, or its task is not made yet, or asyncio is not the one we know."""
    while frame is not None and frame.f_code is not _RUNNER_RUN:
        frame = frame.f_back
    if frame is None:
        return None
    runner, task = frame.f_locals.get("self"), frame.f_locals.get("task")
    on_sigint = getattr(runner, "_on_sigint", None)
    if not isinstance(task, asyncio.Task) or on_sigint is None:
        return None
    return on_sigint, task


#: The write a SIGINT cancels instead of raising (see :func:`sigint_cancels`).
_target: tuple[asyncio.AbstractEventLoop, list[asyncio.Task[Any]], list[int]] | None = None


@contextlib.contextmanager
def sigint_cancels(
    loop: asyncio.AbstractEventLoop, started: list[asyncio.Task[Any]]
) -> Iterator[list[int]]:
    """While the block runs the task it puts in ``started`` (a list, empty
    until then) on ``loop`` in the main thread, with this module's handler
    in place, a SIGINT outside protected code cancels that task (in the
    loop's next turn) instead of raising ``KeyboardInterrupt`` wherever the
    loop is (see the design note); one before the task is there raises as
    elsewhere. The caller makes the task and puts it there in one protected
    step, so that no SIGINT lands between the two: one there left a task
    that no one ran to its end or cancelled: the thread's next write
    through the loop started it (a stale write) and left it part way when
    its own ended, or it was dropped, its coroutine never awaited. Yields
    a one-item list: how many SIGINTs did so; the caller raises
    ``KeyboardInterrupt`` after the block if it is not 0. Elsewhere (another
    thread, a program's own handler, a block already in force) it does
    nothing and yields ``[0]``."""
    global _target
    if (
        _target is not None
        or threading.current_thread() is not threading.main_thread()
        or not installed()
    ):
        yield [0]
        return
    hits = [0]
    _target = (loop, started, hits)
    try:
        yield hits
    finally:
        _target = None


_installed = False


def installed() -> bool:
    """True if SIGINT's handler is this module's (protection is in force)."""
    return signal.getsignal(signal.SIGINT) is _handler


def install() -> None:
    """Install the deferring SIGINT handler if SIGINT has Python's default
    handler, or the one an ``asyncio.Runner`` puts in place for the length
    of its run (this handler does what that one does, see the design note;
    the runner then leaves this one in place). Decided once per process, by
    the first call from the main thread (calls from other threads do nothing
    and decide nothing): a program's own handler in place then is kept for
    good."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    current = signal.getsignal(signal.SIGINT)
    if current is signal.default_int_handler or _is_a_runners(current):
        with contextlib.suppress(ValueError):  # not the main interpreter
            signal.signal(signal.SIGINT, _handler)


def _is_a_runners(handler: object) -> bool:
    """Whether ``handler`` is an ``asyncio.Runner``'s (its ``_on_sigint``
    bound to its main task, ``functools.partial``)."""
    on_sigint = getattr(asyncio.Runner, "_on_sigint", None)
    return (
        on_sigint is not None
        and isinstance(handler, functools.partial)
        and getattr(handler.func, "__func__", None) is on_sigint
    )
