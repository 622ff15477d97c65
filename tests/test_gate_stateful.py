"""The shard writer's gate (``shards/_gate``) against a model, every interleaving chosen.

The gate's waits are where the threads meet, so the test takes them over:
``_gate._wait`` is replaced by a wait that returns only when the test
*delivers* it (a wake the gate gave, by setting the waiter's event, or the
candidate's poll, a wait that timed out) or interrupts it, and records the
timeout it was given; the clock (``_gate._monotonic``) is the test's. Each
rule moves one real thread one step (arrive, leave, leave and come back at
once, a delivery, an interrupt) or the clock, waits until that thread has
come to rest (inside, outside, or parked in a wait) and compares the gate
with the model: who is inside, who waits in which order, who is the
candidate, for whom the gate is reserved, which waiters have a wake
pending, and how long each waits. No step waits for time to pass.

The model is the design note's rules, written once more, plainly: a thread
enters at once if nobody is inside and the gate is not reserved for another
(or it is reserved for this thread); leaving with waiters either hands the
gate to the longest waiter (the turn, :data:`~._gate.SLICE_S`, is up) or
makes the longest waiter the candidate if there is none; the candidate
enters at a wake or poll that finds the gate free and unreserved, and
otherwise sleeps :data:`~._gate.POLL_S` (the others wait with no timeout:
the timeout each waiter waits with is compared); an interrupted waiter
leaves the queue and passes on what it was given.
Invariants over the model: nobody inside while others wait unless one of
the waiters will look again (a wake pending, or the candidate); whoever
enters from the queue is its longest waiter.
``test_the_machine_finds_a_gate_that_hands_over_to_the_newest_waiter``
shows the machine fails on a gate that breaks first-come first-served, and
``test_the_machine_finds_a_candidate_that_never_polls`` on one whose
candidate waits with no timeout (it would hang a process whose holder left
for good).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests._threads import wait_until
from zarr_rangelock.shards import _gate
from zarr_rangelock.shards._gate import POLL_S, SLICE_S, Gate

WORKERS = 3
REST = ("in", "out", "waiting")


class Worker:
    """A real thread that runs the gate's ``acquire``/``release`` on command
    and reports where it came to rest (``state``, ``moves`` counts rests)."""

    def __init__(self, gate: Gate, errors: list[BaseException]) -> None:
        self.gate = gate
        self.errors = errors
        self.commands: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.state = "out"
        self.moves = 0
        self.go = threading.Event()  # a delivery to its parked wait
        self.timeout: float | None = None  # that its parked wait was given
        self.interrupt = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ident = self.thread.ident

    def rest(self, state: str) -> None:
        self.state = state
        self.moves += 1

    def _run(self) -> None:
        while (command := self.commands.get()) is not None:
            try:
                if command != "acquire":
                    self.gate.release()
                    if command == "release":
                        self.rest("out")
                        continue
                self.gate.acquire()
                self.rest("in")
            except KeyboardInterrupt:
                self.rest("out")
            except BaseException as e:  # surfaced by the machine's checks
                self.errors.append(e)
                self.rest("broken")

    def do(self, command: str) -> None:
        """Run ``command`` and wait until this thread is at rest again."""
        before = self.moves
        self.commands.put(command)
        self.settle(before)

    def deliver(self, interrupt: bool = False) -> None:
        """Let the parked wait return (raising KeyboardInterrupt if
        ``interrupt``) and wait until this thread is at rest again."""
        before = self.moves
        self.interrupt = interrupt
        self.go.set()
        self.settle(before)

    def settle(self, before: int) -> None:
        wait_until(
            lambda: (self.moves > before and self.state in REST) or bool(self.errors),
            "the thread comes to rest",
        )
        assert not self.errors, self.errors


class Model:
    """What the gate should be, by the design note's rules."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.holder: int | None = None
        self.owner: int | None = None  # whose turn (since turn_start)
        self.turn_start = 0.0
        self.reserved = False  # for owner, who has yet to enter
        self.queue: list[int] = []  # waiters, longest first
        self.candidate: int | None = None
        self.pending: set[int] = set()  # waiters with a wake given, not yet delivered
        self.timeouts: dict[int, float | None] = {}  # each waiter's, in its wait
        self.entered_from_queue: list[tuple[int, int]] = []  # (who, the head then)

    def enter(self, k: int) -> None:
        if self.owner != k:
            self.owner, self.turn_start = k, self.now
        self.reserved = False
        self.holder = k

    def arrive(self, k: int) -> None:
        if self.holder is None and (not self.reserved or self.owner == k):
            self.enter(k)
        else:
            self.queue.append(k)
            self.timeouts[k] = None  # (a wake, if it is made the candidate)

    def leave(self) -> None:
        self.holder = None
        if self.queue:
            self.wake()

    def wake(self) -> None:
        if not self.queue or self.reserved:
            return
        head = self.queue[0]
        if self.now - self.turn_start > SLICE_S:
            event("wake: hand-over")
            if self.candidate == head:
                self.candidate = None
            self.owner, self.turn_start, self.reserved = head, self.now, True
            self.pending.add(head)
        elif self.candidate is None:
            event("wake: a candidate")
            self.candidate = head
            self.pending.add(head)

    def role(self, k: int) -> str:
        """A waiter's role (as hypothesis's statistics name it)."""
        if self.reserved and self.owner == k:
            return "handed"
        return "candidate" if k == self.candidate else "sleeper"

    def deliver(self, k: int) -> None:
        self.pending.discard(k)
        handed = self.reserved and self.owner == k
        free = self.holder is None and not self.reserved
        event(f"deliver to the {self.role(k)}: {'enters' if handed or free else 'waits on'}")
        if handed or free:
            self.entered_from_queue.append((k, self.queue[0]))
            self.queue.remove(k)
            if self.candidate == k:
                self.candidate = None
            self.enter(k)
        else:
            self.timeouts[k] = POLL_S if k == self.candidate else None

    def interrupt(self, k: int) -> None:
        event(f"interrupt the {self.role(k)}")
        self.pending.discard(k)
        self.queue.remove(k)
        if self.candidate == k:
            self.candidate = None
        if self.reserved and self.owner == k:
            self.reserved, self.owner = False, None
        if self.holder is None:
            self.wake()


class GateMachine(RuleBasedStateMachine):
    make_gate: Callable[[], Gate] = Gate

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.gate = self.make_gate()
        self.errors: list[BaseException] = []
        self.workers = [Worker(self.gate, self.errors) for _ in range(WORKERS)]
        self.by_ident = {w.ident: w for w in self.workers}
        self.closing = False
        self.saved = (_gate._wait, _gate._monotonic)
        _gate._wait = self.wait
        _gate._monotonic = lambda: self.model.now

    def wait(self, event: threading.Event, timeout: float | None) -> None:
        """The gate's wait, in a worker: parked until the test delivers it."""
        w = self.by_ident[threading.get_ident()]
        w.timeout = timeout
        w.rest("waiting")
        assert w.go.wait(30), "a delivery never came"
        w.go.clear()
        w.state = "moving"
        if w.interrupt or self.closing:
            w.interrupt = False
            raise KeyboardInterrupt

    # ------------------------------------------------------------ helpers

    def index(self, ident: int) -> int | None:
        return next((i for i, w in enumerate(self.workers) if w.ident == ident), None)

    def waiter(self, k: int) -> Any:
        return next(w for w in self.gate._waiters if w.ident == self.workers[k].ident)

    def in_state(self, state: str) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.state == state]

    # -------------------------------------------------------------- rules

    @precondition(lambda self: self.in_state("out"))
    @rule(data=st.data())
    def arrive(self, data: st.DataObject) -> None:
        k = data.draw(st.sampled_from(self.in_state("out")))
        self.model.arrive(k)
        self.workers[k].do("acquire")

    @precondition(lambda self: self.model.holder is not None)
    @rule()
    def leave(self) -> None:
        k = self.model.holder
        assert k is not None
        self.model.leave()
        self.workers[k].do("release")

    @precondition(lambda self: self.model.holder is not None)
    @rule()
    def leave_and_come_back_at_once(self) -> None:
        k = self.model.holder
        assert k is not None
        self.model.leave()
        self.model.arrive(k)
        self.workers[k].do("release+acquire")

    @rule(dt=st.sampled_from([SLICE_S / 4, SLICE_S / 2, SLICE_S * 1.5]))
    def tick(self, dt: float) -> None:
        self.model.now += dt

    @precondition(lambda self: self.model.pending or self.model.candidate is not None)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        # A wake given, or the candidate's poll (its wait timed out).
        m = self.model
        k = data.draw(st.sampled_from(sorted(m.pending | {m.candidate} - {None})))
        m.deliver(k)
        self.workers[k].deliver()

    @precondition(lambda self: self.model.queue)
    @rule(data=st.data())
    def interrupt(self, data: st.DataObject) -> None:
        k = data.draw(st.sampled_from(self.model.queue))
        self.model.interrupt(k)
        self.workers[k].deliver(interrupt=True)

    # ---------------------------------------------------------- invariants

    @invariant()
    def the_gate_is_the_models(self) -> None:
        m, g = self.model, self.gate
        assert not self.errors, self.errors
        states = [
            "in" if k == m.holder else "waiting" if k in m.queue else "out" for k in range(WORKERS)
        ]
        assert [w.state for w in self.workers] == states
        assert self.index(g._holder) == m.holder
        assert [self.index(w.ident) for w in g._waiters] == m.queue
        cand = g._candidate
        assert (None if cand is None else self.index(cand.ident)) == m.candidate
        assert g._reserved == m.reserved
        if m.reserved:
            assert self.index(g._owner) == m.owner
        assert {k for k in m.queue if self.waiter(k).event.is_set()} == m.pending
        assert {k: self.workers[k].timeout for k in m.queue} == {k: m.timeouts[k] for k in m.queue}

    @invariant()
    def nobody_waits_for_nothing(self) -> None:
        m = self.model
        if m.holder is None and m.queue:
            assert m.pending or m.candidate is not None, "waiters left with no one to look again"

    @invariant()
    def first_come_first_served(self) -> None:
        assert all(k == head for k, head in self.model.entered_from_queue)

    def teardown(self) -> None:
        # From where the threads really are (after a failed check the model
        # may not say): interrupt the waiters, then the holder leaves.
        try:
            if not self.errors:
                for w in self.workers:
                    if w.state == "waiting":
                        w.deliver(interrupt=True)
                for w in self.workers:
                    if w.state == "in":
                        w.do("release")
                g = self.gate
                assert not g.locked() and not g._waiters and g._candidate is None
                assert not g._reserved
        finally:
            self.closing = True
            for w in self.workers:
                w.commands.put(None)
                w.go.set()
            for w in self.workers:
                w.thread.join(10)
            _gate._wait, _gate._monotonic = self.saved


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGate = GateMachine.TestCase
TestGate.settings = SETTINGS
pytest.mark.timeout(300)(TestGate)


def _assert_the_machine_fails(machine: type[GateMachine]) -> None:
    """Up to 300 examples of ``machine`` (a broken gate, or a model the gate
    does not follow) end in a failed check. Not shrunk: that it fails is
    the point (shrinking the candidate's failure took 45 of its 46 s)."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine,
            settings=settings(
                SETTINGS,
                max_examples=300,
                print_blob=False,
                report_multiple_bugs=False,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
            ),
        )


class _NewestFirst(Gate):
    """A gate whose hand-over goes to the newest waiter, not the longest."""

    def _wake(self) -> None:
        self._waiters.rotate(1)
        try:
            super()._wake()
        finally:
            self._waiters.rotate(-1)


@pytest.mark.timeout(300)
def test_the_machine_finds_a_gate_that_hands_over_to_the_newest_waiter() -> None:
    class Broken(GateMachine):
        make_gate = _NewestFirst

    _assert_the_machine_fails(Broken)


@pytest.mark.timeout(300)
def test_the_machine_finds_a_candidate_that_never_polls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The gate's candidate waits with no timeout; the model's polls.
    monkeypatch.setattr(_gate, "POLL_S", None)
    _assert_the_machine_fails(GateMachine)
