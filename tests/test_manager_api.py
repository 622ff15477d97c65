"""The lock manager's contract, one request at a time (no threads needed)."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest

import zarr_rangelock
from zarr_rangelock import Grant, LockTimeout, RangeLockManager, WouldBlock
from zarr_rangelock.locks._grant import TOKENS_MAX


def test_public_exports_are_exactly_the_documented_names() -> None:
    for name in zarr_rangelock.__all__:
        assert hasattr(zarr_rangelock, name), name
    assert sorted(zarr_rangelock.__all__) == [
        "CrossProcessLockError",
        "CrossProcessWarning",
        "DescriptorLimitError",
        "Grant",
        "InvalidKeyError",
        "JournalWarning",
        "KeyNotFoundError",
        "KeyOutsideRootError",
        "LockStats",
        "LockTimeout",
        "PartialWriteError",
        "RangeLockManager",
        "RangeLockedStore",
        "RangeNotHeldError",
        "RangeOutOfBoundsError",
        "SelfDeadlockError",
        "ShardWritePipeline",
        "ShardWriter",
        "Span",
        "SupportsSetRange",
        "UnsupportedStoreError",
        "WouldBlock",
    ]


@pytest.mark.parametrize("kind", [np.int64, np.uint32, np.int8])
def test_numpy_integer_offsets_are_taken_as_ints(kind: type) -> None:
    # As a list index takes them (__index__): offsets computed with numpy
    # used to be refused with TypeError.
    mgr = RangeLockManager()
    g = mgr.acquire("k", [(kind(2), kind(9))])
    assert g.ranges == ((2, 9),) and all(type(x) is int for x in g.ranges[0])
    with mgr.lock("k", kind(9), None) as h:
        assert h.ranges == ((9, None),)
    mgr.release(g)
    assert mgr.stats().keys == 0


@pytest.mark.parametrize(
    ("args", "exc", "words"),
    [
        (("k", -1, 5), ValueError, "start for key 'k' must be >= 0, got -1"),
        (("k", 5, 5), ValueError, "[5, 5)"),
        (("k", 6, 5), ValueError, "[6, 5)"),
        (("k", 0, -3), ValueError, "end for key 'k' must be >= 0"),
        (("k", 1.5, 4), TypeError, "start for key 'k' must be an int, got float"),
        (("k", 0, "9"), TypeError, "end for key 'k' must be an int, got str"),
        (("k", True, 4), TypeError, "got bool"),
        (("k", np.True_, 4), TypeError, "got bool"),
        ((b"k", 0, 4), TypeError, "key must be a str, got bytes"),
        (("k", 0, 1 << 70), ValueError, "beyond the largest offset"),
    ],
)
def test_bad_single_range_is_refused_naming_argument_and_value(
    args: tuple[object, object, object], exc: type[Exception], words: str
) -> None:
    mgr = RangeLockManager()
    with pytest.raises(exc) as info:
        mgr.lock(*args)  # type: ignore[arg-type]
    assert words in str(info.value)
    with pytest.raises(exc):
        mgr.lock_async(*args)  # type: ignore[arg-type]
    assert mgr.stats().keys == 0


@pytest.mark.parametrize(
    ("ranges", "exc", "words"),
    [
        ([], ValueError, "empty list of ranges for key 'k'"),
        ([(0, 4), (3,)], TypeError, "(start, end) pair, got (3,)"),
        ("ab", TypeError, "sequence of (start, end) pairs"),
        (5, TypeError, "sequence of (start, end) pairs"),
        ([(0, 4), (9, 2)], ValueError, "[9, 2)"),
    ],
)
def test_bad_range_lists_are_refused(ranges: object, exc: type[Exception], words: str) -> None:
    mgr = RangeLockManager()
    with pytest.raises(exc) as info:
        mgr.acquire("k", ranges)  # type: ignore[arg-type]
    assert words in str(info.value)
    with pytest.raises(exc):
        mgr.acquire_nowait("k", ranges)  # type: ignore[arg-type]
    assert mgr.stats().keys == 0


def test_negative_timeout_is_refused() -> None:
    mgr = RangeLockManager()
    with pytest.raises(ValueError, match="timeout must be >= 0"), mgr.lock("k", timeout=-1):
        pass


def test_disjoint_ranges_are_held_at_once() -> None:
    mgr = RangeLockManager()
    a = mgr.acquire_nowait("k", [(0, 10)])
    b = mgr.acquire_nowait("k", [(10, 20)])
    c = mgr.acquire_nowait("other", [(0, 10)])
    assert a.held and b.held and c.held
    assert mgr.stats().holders == 3
    for g in (a, b, c):
        mgr.release(g)
    assert mgr.stats().keys == 0 and mgr.stats().holders == 0
    mgr._check()


def test_overlapping_exclusive_requests_conflict_but_shared_ones_do_not() -> None:
    mgr = RangeLockManager()
    r1 = mgr.acquire_nowait("k", [(0, 10)], shared=True)
    r2 = mgr.acquire_nowait("k", [(5, 15)], shared=True)
    with pytest.raises(WouldBlock, match=r"key 'k' ranges \[9, 12\)"):
        mgr.acquire_nowait("k", [(9, 12)])
    mgr.release(r1)
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(9, 12)])
    w = mgr.acquire_nowait("k", [(0, 5)])  # r2 starts at 5: half-open ranges touch
    assert (r2.shared, w.shared) == (True, False)
    mgr.release(r2)
    mgr.release(w)
    mgr._check()
    assert mgr.stats().keys == 0


def test_end_none_means_the_whole_rest_of_the_key() -> None:
    mgr = RangeLockManager()
    g = mgr.acquire_nowait("k", [(100, None)])
    assert g.ranges == ((100, None),)
    mgr.acquire_nowait("k", [(0, 100)])
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(1 << 40, (1 << 40) + 1)])


def test_multi_range_request_is_all_or_nothing() -> None:
    mgr = RangeLockManager()
    held = mgr.acquire_nowait("k", [(50, 60)])
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(0, 10), (55, 56)])
    # the refused request took nothing: [0, 10) is still free
    free = mgr.acquire_nowait("k", [(0, 10)])
    mgr.release(free)
    mgr.release(held)
    g = mgr.acquire_nowait("k", [(0, 10), (55, 56), (5, 12)])
    assert g.ranges == ((0, 12), (55, 56))  # sorted and merged
    mgr.release(g)
    assert mgr.stats().keys == 0


def test_a_queued_whole_key_request_blocks_later_overlapping_requests() -> None:
    # FIFO: the whole-key request queued behind a holder is ahead of any later
    # request that overlaps it, so small writers cannot starve it.
    mgr = RangeLockManager()
    small = mgr.acquire_nowait("k", [(0, 10)])
    whole = _queue(mgr, "k", [(0, None)])
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(100, 110)])
    mgr.release(small)
    assert whole.held
    mgr.release(whole)
    mgr._check()


def test_a_request_that_conflicts_with_nothing_proceeds_while_others_wait() -> None:
    mgr = RangeLockManager()
    a = mgr.acquire_nowait("k", [(0, 10)])
    waiter = _queue(mgr, "k", [(5, 20)])
    b = mgr.acquire_nowait("k", [(20, 30)])  # touches the waiter's end: no conflict
    assert b.held and not waiter.held
    mgr.release(a)
    assert waiter.held
    for g in (b, waiter):
        mgr.release(g)
    assert mgr.stats().keys == 0


def test_a_writer_is_not_starved_by_a_stream_of_readers() -> None:
    mgr = RangeLockManager()
    r1 = mgr.acquire_nowait("k", [(0, 10)], shared=True)
    writer = _queue(mgr, "k", [(0, 10)])
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(0, 10)], shared=True)
    mgr.release(r1)
    assert writer.held


def test_prefix_lock_excludes_keys_under_it_including_new_ones() -> None:
    mgr = RangeLockManager()
    inside = mgr.acquire_nowait("a/b/c", [(0, 4)])
    outside = mgr.acquire_nowait("a/x", [(0, 4)])
    p = _queue_prefix(mgr, "a/b/")
    assert (p.key, p.is_prefix, inside.is_prefix) == ("a/b/", True, False)
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("a/b/new", [(0, 4)])
    mgr.acquire_nowait("a/bz", [(0, 4)])  # not under "a/b/"
    mgr.release(inside)
    assert p.held
    mgr.release(p)
    mgr.release(outside)
    mgr._check()


def test_releasing_twice_or_on_another_manager_is_an_error() -> None:
    mgr, other = RangeLockManager(), RangeLockManager()
    g = mgr.acquire_nowait("k", [(0, 1)])
    with pytest.raises(RuntimeError, match="not held by this manager"):
        other.release(g)
    mgr.release(g)
    with pytest.raises(RuntimeError, match="not held"):
        mgr.release(g)


def test_timeout_raises_lock_timeout_naming_key_and_range_and_leaves_nothing() -> None:
    mgr = RangeLockManager()
    with mgr.lock("k", 0, 10):
        with pytest.raises(TimeoutError) as info, mgr.lock("k", 5, 6, timeout=0):
            pass
        assert isinstance(info.value, LockTimeout)
        assert "'k'" in str(info.value) and "[5, 6)" in str(info.value)
        assert mgr.stats().waiters == 0
    assert mgr.stats().timeouts == 1 and mgr.stats().keys == 0


def test_errors_pickle_with_their_fields() -> None:
    for err in (LockTimeout("k", [(0, None)], 1.5), WouldBlock("k", [(1, 2)])):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.key == "k"


def test_stats_count_grants_waits_and_queue_depth() -> None:
    mgr = RangeLockManager()
    g = mgr.acquire_nowait("k", [(0, 10)])
    w1 = _queue(mgr, "k", [(0, 5)])
    w2 = _queue(mgr, "k", [(5, 10)])
    s = mgr.stats()
    assert (s.grants, s.waits, s.holders, s.waiters, s.max_queue_depth) == (1, 2, 1, 2, 2)
    mgr.release(g)
    s = mgr.stats()
    assert (s.grants, s.holders, s.waiters) == (3, 2, 0)
    mgr.release(w1)
    mgr.release(w2)


def test_a_lock_context_cannot_be_entered_twice() -> None:
    mgr = RangeLockManager()
    cm = mgr.lock("k", 0, 1)
    with cm, pytest.raises(RuntimeError, match="requested already"), cm:
        pass


# Helpers: queue a request without blocking, through the same admission code
# the public methods use (deterministic, no threads).
def _queue(mgr: RangeLockManager, key: str, ranges: list[tuple[int, int | None]]):  # type: ignore[no-untyped-def]
    g = mgr._request(key, ranges, False)
    with mgr._mutex:
        mgr._admit(g, False)
    mgr._check()
    return g


def _queue_prefix(mgr: RangeLockManager, prefix: str):  # type: ignore[no-untyped-def]
    g = mgr._request_prefix(prefix, None)
    with mgr._mutex:
        mgr._admit(g, False)
    mgr._check()
    return g


def test_a_multi_range_holder_counts_once_as_a_blocker() -> None:
    # Regression (found by the stateful test): a holder of [0, 1) and [2, end)
    # overlaps a whole-key request twice; the waiter must count it once, or it
    # would never reach zero blockers and never be granted.
    mgr = RangeLockManager()
    g = mgr.acquire_nowait("k", [(2, None), (0, 1)])
    whole = _queue(mgr, "k", [(0, None)])
    assert whole._nblockers == 1
    mgr.release(g)
    assert whole.held
    mgr.release(whole)
    assert mgr.stats().keys == 0


def test_disjoint_writers_on_a_busy_key_are_granted_at_once_and_leave_nothing() -> None:
    # The table's fast path for a key with a few entries (two threads writing
    # disjoint chunks of one shard): granted without queueing, index kept
    # consistent, and the key's state gone when the last holder leaves.
    mgr = RangeLockManager()
    grants = [mgr.acquire_nowait("k", [(10 * i, 10 * i + 10)]) for i in range(5)]
    readers = [mgr.acquire_nowait("k", [(100, 120)], shared=True) for _ in range(2)]
    mgr._check()
    assert mgr.stats().waits == 0 and mgr.stats().holders == 7
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(45, 101)])  # overlaps a writer and the readers
    for g in grants[::2] + readers + grants[1::2]:
        mgr.release(g)
        mgr._check()
    assert mgr.stats().keys == 0 and mgr._keys == {}


def test_a_request_overlapping_only_a_queued_waiter_on_a_busy_key_queues_behind_it() -> None:
    # FIFO holds on the fast path too: the queued exclusive request is an
    # entry of the key's index, so a later overlapping one (even a reader
    # next to other readers) is not granted past it.
    mgr = RangeLockManager()
    r = mgr.acquire_nowait("k", [(0, 10)], shared=True)
    other = mgr.acquire_nowait("k", [(50, 60)])
    writer = _queue(mgr, "k", [(5, 30)])
    with pytest.raises(WouldBlock):
        mgr.acquire_nowait("k", [(20, 25)], shared=True)
    late = mgr.acquire_nowait("k", [(30, 40)])  # touches the waiter's end only
    mgr.release(r)
    assert writer.held
    for g in (other, writer, late):
        mgr.release(g)
    mgr._check()
    assert mgr.stats().keys == 0


# The store's hot path holds a free key with a token, not a Grant, while it
# writes (``_run_if_free``). These run requests from inside the write, so the
# token is held at each step: deterministic, no threads.


def _run_holding(
    mgr: RangeLockManager, key: str, start: int, end: int, body: Callable[[], object]
) -> bool:
    def fn(k: str, data: memoryview, s: int) -> None:
        assert (k, bytes(data), s) == (key, b"x", start)
        mgr._check()
        body()
        mgr._check()

    return mgr._run_if_free(key, start, end, fn, memoryview(b"x"))


def test_the_token_fast_path_holds_its_range_and_leaves_nothing() -> None:
    mgr = RangeLockManager()

    def body() -> None:
        assert mgr.stats().holders == 1
        assert mgr._dump() == ["#1 key='k' range=[0, 10) exclusive held (token)"]
        with pytest.raises(WouldBlock):
            mgr.acquire_nowait("k", [(5, 6)], shared=True)

    assert _run_holding(mgr, "k", 0, 10, body)
    assert mgr.stats().keys == 0 and mgr.stats().holders == 0 and mgr._promoted == {}


def test_a_request_arriving_during_a_token_hold_queues_behind_it_and_is_woken() -> None:
    mgr = RangeLockManager()
    seen: list[Grant] = []

    def body() -> None:
        seen.append(_queue(mgr, "k", [(5, 20)]))  # turns the token into a Grant
        seen.append(mgr.acquire_nowait("k", [(20, 30)]))  # disjoint from both: at once
        assert not seen[0].held and seen[1].held

    assert _run_holding(mgr, "k", 0, 10, body)
    assert seen[0].held  # the release of the promoted token woke it
    for g in seen:
        mgr.release(g)
    mgr._check()
    assert mgr.stats().keys == 0 and mgr._promoted == {}


def test_a_prefix_lock_arriving_during_a_token_hold_waits_for_it() -> None:
    mgr = RangeLockManager()
    box: list[Grant] = []

    def body() -> None:
        box.append(_queue_prefix(mgr, "arr/"))
        assert not box[0].held
        # While any prefix lock is live the token path is off (the general
        # path decides), for keys under the prefix and elsewhere alike.
        assert not _run_holding(mgr, "arr/c/1", 0, 1, lambda: None)
        assert not _run_holding(mgr, "other/k", 0, 1, lambda: None)
        mgr.release(mgr.acquire_nowait("other/k", [(0, 1)]))

    assert _run_holding(mgr, "arr/c/0", 0, 10, body)
    assert box[0].held
    mgr.release(box[0])
    assert mgr.stats().keys == 0


def test_a_key_request_meets_a_token_on_its_key_while_a_prefix_lock_is_elsewhere() -> None:
    # A token on a key outside the prefix stays a token; a later request on
    # that key takes the general path (prefixes exist) and must still see it.
    mgr = RangeLockManager()
    box: list[Grant] = []

    def body() -> None:
        box.append(mgr.acquire_prefix("elsewhere/"))
        with pytest.raises(WouldBlock):
            mgr.acquire_nowait("k", [(0, 1)])
        box.append(mgr.acquire_nowait("k", [(10, 11)]))

    assert _run_holding(mgr, "k", 0, 10, body)
    for g in box:
        mgr.release(g)
    assert mgr.stats().keys == 0 and mgr._promoted == {}


def test_an_error_in_the_token_holders_work_releases_the_key() -> None:
    mgr = RangeLockManager()

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _run_holding(mgr, "k", 0, 10, fail)
    assert mgr.stats().keys == 0 and mgr.stats().holders == 0
    mgr.acquire_nowait("k", [(0, 10)])  # free again


def test_disjoint_token_holders_share_a_key_and_a_conflict_or_a_full_list_refuses() -> None:
    # Two threads writing disjoint chunks of one shard both stay on the token
    # path. Nested calls stand in for the threads: each runs while the outer
    # tokens are held.
    mgr = RangeLockManager()
    depth: list[int] = []

    def nest(i: int) -> None:
        depth.append(i)
        if i + 1 < TOKENS_MAX:
            assert _run_holding(mgr, "k", 10 * (i + 1), 10 * (i + 2), lambda: nest(i + 1))
        else:  # the list is full: the general path takes over
            assert not _run_holding(mgr, "k", 1000, 1001, lambda: None)
            assert len(mgr._dump()) == TOKENS_MAX
        assert not _run_holding(mgr, "k", 5, 15, lambda: None)  # overlaps a token

    assert _run_holding(mgr, "k", 0, 10, lambda: nest(0))
    assert depth == list(range(TOKENS_MAX))
    assert mgr.stats().keys == 0 and mgr.stats().holders == 0


def test_a_waiter_over_several_tokens_waits_for_all_of_them() -> None:
    mgr = RangeLockManager()
    box: list[Grant] = []

    def inner() -> None:
        box.append(_queue(mgr, "k", [(5, 25)]))  # overlaps both tokens
        assert box[0]._nblockers == 2 and not box[0].held
        assert mgr._promoted and mgr.stats().holders == 2

    def outer() -> None:
        assert _run_holding(mgr, "k", 20, 30, inner)
        assert not box[0].held  # one of its two blockers is still held

    assert _run_holding(mgr, "k", 0, 10, outer)
    assert box[0].held
    mgr.release(box[0])
    mgr._check()
    assert mgr.stats().keys == 0 and mgr._promoted == {}


def test_stats_count_a_prefix_lock_as_a_key() -> None:
    mgr = RangeLockManager()
    p = mgr.acquire_prefix("a/")
    assert mgr.stats().keys == 1
    g = mgr.acquire("b", [(0, 4)])
    assert mgr.stats().keys == 2
    mgr.release(p)
    mgr.release(g)
    assert mgr.stats().keys == 0


def test_check_fails_on_a_waiter_whose_blocker_count_is_off() -> None:
    # _check is what every stateful and random test of the table relies on:
    # a waiter counted as blocked by more (or fewer) requests than the
    # queue's rule names must make it fail.
    import asyncio

    from zarr_rangelock.locks._grant import _WAITING

    async def scenario() -> None:
        mgr = RangeLockManager()
        first = mgr.acquire("k", [(0, 10)])
        task = asyncio.ensure_future(mgr.acquire_async("k", [(5, 15)]))
        while mgr.stats().waiters == 0:
            await asyncio.sleep(0)
        queue = mgr._keys["k"]
        (waiter,) = [g for g in queue.entries() if g._state == _WAITING]  # type: ignore[union-attr]
        mgr._check()
        for off in (1, -1):
            waiter._nblockers += off
            with pytest.raises(AssertionError, match=rf", {1 + off}, \["):
                mgr._check()
            waiter._nblockers -= off
        mgr._check()
        mgr.release(first)
        mgr.release(await asyncio.wait_for(task, 10))
        assert mgr.stats().keys == 0

    asyncio.run(scenario())
