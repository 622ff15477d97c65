"""Holding several keys at once without deadlock: the hold-and-wait rule.

Design note
-----------
A call that needs many keys at once (a write over several shards, a block of
consistent reads, a journal's replay) takes them one by one in key order, so
two such calls never wait for each other in a cycle. That alone is not
enough: a prefix lock (``delete_dir``, ``clear``) covers several keys at once
and may queue between two of them, behind the keys the call holds, ahead of
the key it waits for. So only the first key is waited for without a limit;
while holding some, the wait for the next is bounded (:data:`HOLD_AND_WAIT_S`),
and when it runs out the call lets go of everything, pauses for a random
time up to as long (so that two callers do not time out in step) and starts
over, in key order again. (Starting over with the busy key first breaks the
order: two writers of the same two shards then each took one and timed out
on the other, over and over, a livelock the stress runner found.)

The keys are taken as one call's (``_own.one_call``): across processes
they share one lock-file description rather than one per key, which is safe
exactly because of this rule (a member waits for a further key only for a
bounded time and then lets go of all), and keeps a call over thousands of
shards within the process's file descriptors.

:func:`hold_all` and :func:`hold_all_async` are the rule, once for threads
and once for tasks; what "take" and "let go" mean is the caller's.

Complexity: an attempt takes each item once; attempts repeat only while
another caller holds a later key for longer than the bound.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from .._errors import LockTimeout
from ._own import one_call

__all__ = ["HOLD_AND_WAIT_S", "hold_all", "hold_all_async"]

#: While holding some keys, how long to wait for the next one before letting
#: go of all and starting over, after a random pause up to this long.
HOLD_AND_WAIT_S = 0.05


def hold_all[T, H](
    items: Sequence[T],
    take: Callable[[T, float | None], H],
    let_go: Callable[[list[H]], None],
    limit: float = HOLD_AND_WAIT_S,
) -> list[H]:
    """Take every item of ``items`` in order by the hold-and-wait rule (see
    the module): what ``take`` returned for each, in order.

    Parameters
    ----------
    items : sequence
        What to take, in the order every caller takes them (key order).
    take : callable
        ``take(item, timeout)`` takes one item, waiting for it at most
        ``timeout`` seconds (None: without limit), and returns what to let
        go of; raises ``LockTimeout`` when the wait runs out, holding
        nothing of that item then.
    let_go : callable
        ``let_go(taken)`` lets go of what ``take`` returned, in the order
        taken (undo it in reverse).
    limit : float
        The bound on each wait but the first, and on the pause before an
        attempt starts over.

    Concurrency
    -----------
    The first item is waited for without limit, holding nothing; the others
    for at most ``limit`` each. On a timeout everything taken is let go and
    the attempt starts over after a random pause. Any other exception
    (``KeyboardInterrupt`` included) lets go of everything taken and is
    raised. The takes run inside one ``one_call`` block per attempt.
    """
    while True:
        taken: list[H] = []
        try:
            with one_call():
                for item in items:
                    taken.append(take(item, limit if taken else None))
            return taken
        except LockTimeout:
            let_go(taken)
        except BaseException:
            let_go(taken)
            raise
        time.sleep(random.uniform(0, limit))


async def hold_all_async[T, H](
    items: Sequence[T],
    take: Callable[[T, float | None], Awaitable[H]],
    let_go: Callable[[list[H]], Awaitable[None]],
    limit: float = HOLD_AND_WAIT_S,
) -> list[H]:
    """:func:`hold_all` for a task: ``take`` and ``let_go`` are awaited, and so
    is the pause.

    Concurrency
    -----------
    As :func:`hold_all`; a cancellation while waiting for an item lets go
    of everything taken and is raised (in the pause nothing is held). Tasks
    started inside a ``take`` join the attempt's ``one_call``.
    """
    while True:
        taken: list[H] = []
        try:
            with one_call():
                for item in items:
                    taken.append(await take(item, limit if taken else None))
            return taken
        except LockTimeout:
            await let_go(taken)
        except BaseException:
            await let_go(taken)
            raise
        await asyncio.sleep(random.uniform(0, limit))
