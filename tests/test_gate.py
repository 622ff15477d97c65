"""The shard writer's gate (``shards/_gate``): one thread at a time, in time slices.

What is tested: a waiter waits while another thread is inside and gets in
soon after that thread leaves for good (the candidate's poll); a thread
that keeps coming back keeps its turn for a slice and then hands the gate to
the waiter (no starvation); an interrupted waiter leaves nothing behind;
many threads never find another inside and all finish. The speed (one
hand-over a slice instead of one a chunk) is in ``benchmarks/throughput.py``.
"""

from __future__ import annotations

import signal
import threading

import pytest

from tests._threads import wait_until
from zarr_rangelock.shards import _gate
from zarr_rangelock.shards._gate import Gate

pytestmark = pytest.mark.timeout(60)


def _inside_until(gate: Gate, entered: threading.Event, leave: threading.Event) -> None:
    with gate:
        entered.set()
        assert leave.wait(30)


def _holder_inside(gate: Gate) -> tuple[threading.Thread, threading.Event]:
    """A thread inside ``gate`` until the returned event is set."""
    entered, leave = threading.Event(), threading.Event()
    a = threading.Thread(target=_inside_until, args=(gate, entered, leave))
    a.start()
    assert entered.wait(10)
    return a, leave


def test_a_waiter_waits_while_another_is_inside_and_gets_in_when_it_leaves() -> None:
    gate = Gate()
    a, leave = _holder_inside(gate)
    got_in = threading.Event()
    b_leave = threading.Event()
    b = threading.Thread(target=_inside_until, args=(gate, got_in, b_leave))
    b.start()
    wait_until(lambda: len(gate._waiters) == 1, "the second thread waits")
    assert not got_in.is_set() and gate.locked()
    leave.set()  # A leaves within its turn and never comes back
    a.join(10)
    assert got_in.wait(10), "the waiter was not let in after the holder left"
    b_leave.set()
    b.join(10)
    assert not gate.locked() and not gate._waiters and gate._candidate is None


def test_a_thread_that_keeps_coming_back_keeps_its_turn_then_hands_it_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Turns of 0.3 s, so that A's turn outlasts B's start. A is inside when
    # B queues; A then leaves and comes back many times within its turn,
    # and hands B the gate when its turn is up (or B, the candidate, finds
    # it between two of A's entries): B does not starve.
    monkeypatch.setattr(_gate, "SLICE_S", 0.3)
    gate = Gate()
    a_in, b_queued, b_in, stop = (threading.Event() for _ in range(4))
    entries_while_b_waited: list[int] = []

    def a() -> None:
        with gate:
            a_in.set()
            assert b_queued.wait(10)
        n = 0
        while not stop.is_set():
            with gate:
                if not b_in.is_set():
                    n += 1
        entries_while_b_waited.append(n)

    def b() -> None:
        with gate:
            b_in.set()

    ta = threading.Thread(target=a)
    ta.start()
    assert a_in.wait(10)
    tb = threading.Thread(target=b)
    tb.start()
    try:
        wait_until(lambda: len(gate._waiters) == 1, "B waits")
        b_queued.set()
        assert b_in.wait(10), "the waiter starved"
    finally:
        stop.set()
        ta.join(10)
        tb.join(10)
    assert entries_while_b_waited[0] > 1
    assert not gate.locked() and not gate._waiters and gate._candidate is None


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals go to the main thread",
)
def test_an_interrupted_waiter_leaves_nothing_behind() -> None:
    gate = Gate()
    a, leave = _holder_inside(gate)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_when_waiting() -> None:
        wait_until(lambda: len(gate._waiters) == 1, "the main thread waits")
        signal.pthread_kill(main, signal.SIGINT)

    k = threading.Thread(target=interrupt_when_waiting)
    k.start()
    try:
        with pytest.raises(KeyboardInterrupt), gate:
            pass
    finally:
        k.join(10)
        leave.set()
        a.join(10)
    assert not gate._waiters and gate._candidate is None and not gate._reserved
    assert not gate.locked()
    with gate:  # free at once
        assert gate.locked()


def test_many_threads_never_find_another_inside_and_all_finish() -> None:
    gate = Gate()
    inside: list[int] = []
    overlaps: list[int] = []
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        for _ in range(3000):
            with gate:
                inside.append(1)
                if len(inside) != 1:
                    overlaps.append(len(inside))
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads), "a thread never got in"
    assert overlaps == []
    assert not gate.locked() and not gate._waiters and gate._candidate is None
