"""Running test code in threads, with every thread's error surfaced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_threads(*targets: Callable[[], object]) -> None:
    """Run each target in a thread of its own, wait for all of them, then
    re-raise the first error any of them raised."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_together(n: int, work: Callable[[int], object]) -> None:
    """``work(0)`` ... ``work(n - 1)`` in ``n`` threads released at once by a
    barrier; re-raises the first error."""
    start_line = threading.Barrier(n)

    def target(i: int) -> Callable[[], None]:
        def run() -> None:
            start_line.wait()
            work(i)

        return run

    run_threads(*(target(i) for i in range(n)))


def run_within(
    fn: Callable[[], object], timeout: float, what: str, state: Callable[[], object] = str
) -> None:
    """Run ``fn`` in a daemon thread; re-raise its error, or fail naming
    ``what`` and ``state()`` (as it is then) if it has not ended after
    ``timeout`` seconds (a thread caught in a hang is left behind, not
    joined)."""
    ended = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)
        finally:
            ended.set()

    threading.Thread(target=run, daemon=True).start()
    if not ended.wait(timeout):
        raise AssertionError(f"{what} has not ended after {timeout} s; {state()}")
    if errors:
        raise errors[0]


def wait_until(
    cond: Callable[[], bool], what: str = "the condition", timeout: float = 10.0
) -> None:
    """Poll ``cond`` until it holds; between polls an event wait, not a sleep.
    The deadline only catches hangs."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        tick.wait(0.0005)
