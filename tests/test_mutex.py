"""``wait_for``: taking a briefly held lock after a failed non-blocking try."""

from __future__ import annotations

import threading

import pytest

from tests._threads import run_threads
from zarr_rangelock.locks import _mutex
from zarr_rangelock.locks._mutex import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("spins", [_mutex.SPINS, 0], ids=["yield-then-block", "block-at-once"])
def test_wait_for_returns_holding_the_lock_once_its_holder_releases(
    spins: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mutex, "SPINS", spins)
    lock = threading.Lock()
    lock.acquire()
    trying = threading.Event()
    got = threading.Event()

    def waiter() -> None:
        assert not lock.acquire(False)  # the caller's own first try fails
        trying.set()
        wait_for(lock)
        got.set()
        assert lock.locked()
        lock.release()

    def holder() -> None:
        assert trying.wait(10)
        assert not got.is_set()  # it cannot get past a held lock
        lock.release()

    run_threads(waiter, holder)
    assert got.is_set() and not lock.locked()
