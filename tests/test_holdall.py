"""The hold-and-wait rule (``locks/_holdall``): every multi-key taker's loop.

First the rule against scripted takes (what each wait is bounded by, what is
let go and when, where an attempt starts over, which exceptions end it,
the ``one_call`` block of each attempt), sync and async alike; then the
deadlock it exists for, on a real lock table: a prefix lock queued between
two keys of one taker. Its control takes the same keys without the rule and
waits for itself (caught by a timeout); the rule lets go, the prefix lock
gets its turn, and the second attempt holds both.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests._threads import run_within, wait_until
from zarr_rangelock import Grant, LockTimeout, RangeLockManager
from zarr_rangelock.locks import _holdall, _own
from zarr_rangelock.locks._holdall import hold_all, hold_all_async

pytestmark = pytest.mark.timeout(60)

WHOLE: list[tuple[int, int | None]] = [(0, None)]


class Script:
    """Takes that follow a script: ``fail[(attempt, item)]`` is raised by the
    take of ``item`` in that attempt (counted from 0); every take and every
    let-go is logged, with the ``one_call`` block it ran in."""

    def __init__(self, fail: dict[tuple[int, str], BaseException] | None = None) -> None:
        self.fail = fail or {}
        self.attempt = 0
        self.log: list[tuple[Any, ...]] = []
        self.calls: list[object] = []

    def take(self, item: str, timeout: float | None) -> str:
        call = _own.CALL.get()
        assert call is not None, "a take outside one_call"
        if not self.calls or self.calls[-1] is not call:
            self.calls.append(call)
        self.log.append(("take", self.attempt, item, timeout))
        exc = self.fail.get((self.attempt, item))
        if exc is not None:
            raise exc
        return f"held {item}"

    def let_go(self, taken: list[str]) -> None:
        self.log.append(("let go", self.attempt, list(taken)))
        self.attempt += 1

    async def take_async(self, item: str, timeout: float | None) -> str:
        await asyncio.sleep(0)
        return self.take(item, timeout)

    async def let_go_async(self, taken: list[str]) -> None:
        await asyncio.sleep(0)
        self.let_go(taken)


def timed_out(key: str) -> LockTimeout:
    return LockTimeout(key, WHOLE, 0.25)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """The random pauses drawn (as ``(low, high)``), each made zero."""
    drawn: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        drawn.append((a, b))
        return 0.0

    monkeypatch.setattr(_holdall.random, "uniform", uniform)
    return drawn


def run(kind: str, script: Script, items: list[str], limit: float = 0.25) -> list[str]:
    if kind == "sync":
        return hold_all(items, script.take, script.let_go, limit)
    return asyncio.run(hold_all_async(items, script.take_async, script.let_go_async, limit))


KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_first_item_is_waited_for_without_limit_and_the_rest_within_the_limit(
    kind: str, pauses: list[tuple[float, float]]
) -> None:
    script = Script()
    assert run(kind, script, ["a", "b", "c"]) == ["held a", "held b", "held c"]
    assert script.log == [
        ("take", 0, "a", None),
        ("take", 0, "b", 0.25),
        ("take", 0, "c", 0.25),
    ]
    assert pauses == []
    assert _own.CALL.get() is None  # the block ended with the call


@pytest.mark.parametrize("kind", KINDS)
def test_a_timeout_lets_go_of_all_taken_pauses_and_starts_over_in_the_same_order(
    kind: str, pauses: list[tuple[float, float]]
) -> None:
    # "c" times out in the first attempt and "b" in the second; the third
    # takes all three, each attempt from "a" on (a busy key first would
    # break the key order every taker keeps).
    script = Script({(0, "c"): timed_out("c"), (1, "b"): timed_out("b")})
    assert run(kind, script, ["a", "b", "c"]) == ["held a", "held b", "held c"]
    assert script.log == [
        ("take", 0, "a", None),
        ("take", 0, "b", 0.25),
        ("take", 0, "c", 0.25),
        ("let go", 0, ["held a", "held b"]),
        ("take", 1, "a", None),
        ("take", 1, "b", 0.25),
        ("let go", 1, ["held a"]),
        ("take", 2, "a", None),
        ("take", 2, "b", 0.25),
        ("take", 2, "c", 0.25),
    ]
    assert pauses == [(0, 0.25), (0, 0.25)]  # a random pause before each new attempt
    assert len(script.calls) == 3  # one one_call block an attempt
    assert len({id(c) for c in script.calls}) == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exc", [KeyError("b"), KeyboardInterrupt()])
def test_another_exception_lets_go_of_all_taken_and_is_raised_without_a_new_attempt(
    kind: str, exc: BaseException, pauses: list[tuple[float, float]]
) -> None:
    script = Script({(0, "c"): exc})
    with pytest.raises(type(exc)):
        run(kind, script, ["a", "b", "c"])
    assert script.log[-1] == ("let go", 0, ["held a", "held b"])
    assert pauses == []


def test_a_first_item_that_times_out_is_let_go_of_empty_handed_and_taken_again(
    pauses: list[tuple[float, float]],
) -> None:
    # (A caller that gives the first take a timeout of its own gets the rule
    # too: nothing held, so nothing let go, and a new attempt.)
    script = Script({(0, "a"): timed_out("a")})
    assert run("sync", script, ["a"]) == ["held a"]
    assert script.log == [("take", 0, "a", None), ("let go", 0, []), ("take", 1, "a", None)]


def test_a_task_cancelled_while_it_waits_for_an_item_lets_go_of_all_taken() -> None:
    async def scenario() -> None:
        waiting = asyncio.Event()
        let_go: list[list[str]] = []

        async def take(item: str, timeout: float | None) -> str:
            if item == "b":
                waiting.set()
                await asyncio.Event().wait()  # never granted
            return f"held {item}"

        async def release(taken: list[str]) -> None:
            let_go.append(list(taken))

        task = asyncio.create_task(hold_all_async(["a", "b"], take, release))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert let_go == [["held a"]]

    asyncio.run(scenario())


# ----------------------------------------------------- on a real lock table


class PrefixBetween:
    """One taker of ``p/a`` and ``p/b`` on a real table, stopped after its
    first ``p/a`` until ``delete_dir("p")``'s prefix lock (another thread)
    has queued behind it."""

    def __init__(self) -> None:
        self.mgr = RangeLockManager()
        self.took_a = threading.Event()
        self.prefix_queued = threading.Event()
        self.prefix_held = threading.Event()
        self.firsts = 0

    def take(self, key: str, timeout: float | None) -> Grant:
        g = self.mgr.acquire(key, WHOLE, timeout=timeout)
        if key == "p/a" and not self.took_a.is_set():
            self.took_a.set()
            assert self.prefix_queued.wait(10)
        return g

    def let_go(self, grants: list[Grant]) -> None:
        for g in reversed(grants):
            self.mgr.release(g)

    def prefix_locker(self) -> None:
        assert self.took_a.wait(10)
        g = self.mgr.acquire_prefix("p")  # queues behind the taker's "p/a"
        self.prefix_held.set()
        self.mgr.release(g)

    def coordinator(self) -> None:
        assert self.took_a.wait(10)
        wait_until(lambda: self.mgr.stats().waiters == 1, "the prefix lock has queued")
        self.prefix_queued.set()

    def start(self) -> threading.Thread:
        """Start the prefix locker and its coordinator; the prefix locker's
        thread, to join."""
        threading.Thread(target=self.coordinator, daemon=True).start()
        t = threading.Thread(target=self.prefix_locker, daemon=True)
        t.start()
        return t


def test_control_without_the_rule_a_taker_waits_for_a_prefix_lock_that_waits_for_it() -> None:
    # Interleaving: the taker holds "p/a"; delete_dir("p")'s prefix lock
    # queues behind it; the taker asks for "p/b", which is behind the queued
    # prefix lock. Holding on to "p/a" while it waits, it waits for itself:
    # here its wait is given a deadline (the "forever" of a real wait).
    case = PrefixBetween()

    def naive() -> None:
        a = case.take("p/a", None)
        try:
            with pytest.raises(LockTimeout):
                case.take("p/b", 1.0)
            assert not case.prefix_held.is_set()
        finally:
            case.mgr.release(a)

    t = case.start()
    run_within(naive, 30, "the control's taker")
    t.join(10)
    assert case.prefix_held.is_set()  # once "p/a" was let go


def test_the_rule_lets_a_prefix_lock_queued_between_two_keys_go_first() -> None:
    case = PrefixBetween()
    held: list[Grant] = []

    def taker() -> None:
        held.extend(hold_all(["p/a", "p/b"], case.take, case.let_go, limit=0.05))
        # the second attempt: the prefix lock had its turn in between
        assert case.prefix_held.is_set()
        case.let_go(held)

    t = case.start()
    run_within(taker, 30, "the taker", case.mgr.stats)
    t.join(10)
    assert [g.key for g in held] == ["p/a", "p/b"]
    assert case.mgr.stats().holders == 0
