"""``OsLocks``' own holds against a model (hypothesis stateful).

One process's ``OsLocks`` (``mine``) takes and releases holds of spans in
two key slots of the lock file, in random order; another ``OsLocks`` of the
same file (``other``, another process's view: descriptions and own holds
of its own) probes spans between steps. Some holds are taken inside
``one_call`` blocks, where ``mine``'s requests of one mode share one
description: there a hold let go keeps its spans locked until the block's
last hold of that mode lets go. The model is the set of holds ``mine`` has
not released, and what each of the block's descriptions keeps locked. After
every step:

- another process never takes a span that a live hold of ``mine`` needs
  kept from it (any overlap for an exclusive probe, an exclusive hold's
  overlap for a shared one), however holds were relied on and released;
- ``mine`` takes a span at once, whatever its own exclusive holds (they
  cover it: it relies on them instead of waiting for itself), unless it is
  exclusive and a shared hold of its own overlaps it (shared holds cover
  nothing), live or kept locked by a block's description;
- once ``mine`` holds nothing, nothing is locked any more, and nothing is
  left in its bookkeeping.
"""

from __future__ import annotations

import contextvars
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from zarr_rangelock.locks._lockfile import SLOT_BYTES, Span
from zarr_rangelock.locks._oslock import OsLocks
from zarr_rangelock.locks._own import CALL

pytestmark = pytest.mark.timeout(120)

# Spans of two slots: small ranges that overlap in several ways, and whole slots.
_SPANS: list[Span] = [
    (slot * SLOT_BYTES + start, length)
    for slot in (3, 4)
    for start, length in ((0, 10), (5, 10), (10, 10), (8, 20), (40, 5))
] + [(3 * SLOT_BYTES, SLOT_BYTES), (4 * SLOT_BYTES, SLOT_BYTES)]
_PROBES: list[Span] = [(s + d, 1) for s, _ in _SPANS[:10] for d in (0, 4)] + [
    (4 * SLOT_BYTES + 41, 1)
]


def _overlap(a: Span, b: Span) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


class OwnHolds(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="own-holds-")
        self.mine = OsLocks(self.tmp.name, writable=True)
        self.other = OsLocks(self.tmp.name, writable=True)
        assert self.mine.ready() and self.other.ready()
        self.live: dict[int, tuple[int, list[Span], bool]] = {}  # id -> (handle, spans, shared)
        self.ids = 0
        self.call: contextvars.Token[object] | None = None  # inside one_call
        # Per block: the shared spans its requests asked for, which its
        # shared description may keep locked (against exclusive requests of
        # mine too) while any hold taken in the block lives; and those holds.
        self.blocks: list[tuple[list[Span], set[int]]] = []

    def _locked(self) -> list[tuple[list[Span], bool]]:
        """What ``mine`` may hold locked: each live hold, and the shared spans
        of each block with a live hold."""
        live = [(spans, shared) for _, spans, shared in self.live.values()]
        return live + [(spans, True) for spans, ids in self.blocks if ids & self.live.keys()]

    def _own_shared_overlaps(self, spans: list[Span]) -> bool:
        return any(
            shared and _overlap(a, b)
            for held, shared in self._locked()
            for a in held
            for b in spans
        )

    @precondition(lambda self: self.call is None)
    @rule()
    def begin_call(self) -> None:
        self.call = CALL.set({})
        self.blocks.append(([], set()))

    @precondition(lambda self: self.call is not None)
    @rule()
    def end_call(self) -> None:  # its holds live on, as an array write's until it ends
        assert self.call is not None
        CALL.reset(self.call)
        self.call = None

    @rule(
        target=holds,
        spans=st.lists(st.sampled_from(_SPANS), min_size=1, max_size=3, unique=True),
        shared=st.booleans(),
    )
    def hold(self, spans: list[Span], shared: bool) -> int:
        spans = sorted(spans)
        handle = self.mine.try_hold(spans, shared)
        if handle is None:
            # only a shared hold of its own may stand in its way (it covers
            # nothing); its exclusive holds never do
            assert not shared and self._own_shared_overlaps(spans), (
                f"{spans} (shared={shared}) waited for its own process: {self.live}"
            )
            return -1
        self.ids += 1
        if self.call is not None:
            kept, ids = self.blocks[-1]
            ids.add(self.ids)
            if shared:
                kept.extend(spans)
        self.live[self.ids] = (handle, spans, shared)
        return self.ids

    @rule(hold=consumes(holds))
    def release(self, hold: int) -> None:
        if hold == -1:
            return
        handle, _, _ = self.live.pop(hold)
        self.mine.release(handle)

    @invariant()
    def another_process_is_kept_out(self) -> None:
        for probe in _PROBES:
            for shared in (False, True):
                needed = any(
                    _overlap(probe, a) and not (shared and held_shared)
                    for _, held, held_shared in self.live.values()
                    for a in held
                )
                # (outside the block: another process's requests are its own)
                got = contextvars.Context().run(self.other.try_hold, [probe], shared)
                if got is not None:
                    self.other.release(got)
                assert not (needed and got is not None), (
                    f"another process took {probe} (shared={shared}) that {self.live} needs"
                )

    @invariant()
    def nothing_is_left_once_all_are_released(self) -> None:
        if self.live:
            return
        for span in ((3 * SLOT_BYTES, SLOT_BYTES), (4 * SLOT_BYTES, SLOT_BYTES)):
            got = self.other.try_hold([span], False)
            assert got is not None, f"{span} still locked with nothing held"
            self.other.release(got)
        own = self.mine._own
        assert own.empty(), (own.excl, own.relying, own.members)

    def teardown(self) -> None:
        if self.call is not None:
            CALL.reset(self.call)
        for handle, _, _ in list(self.live.values()):
            self.mine.release(handle)
        self.mine.close()
        self.other.close()
        self.tmp.cleanup()


def test_own_holds_keep_other_processes_out_and_never_wait_for_their_own() -> None:
    run_state_machine_as_test(
        OwnHolds, settings=settings(max_examples=100, stateful_step_count=30, deadline=None)
    )
