"""The oracle: a recorded history of writes and reads, and a sound checker for it.

Design note
-----------
Workers record every operation with ``time.monotonic_ns()`` taken just before
the store call and just after it returns. An operation took effect somewhere
inside its interval, so if ``a.t_end < b.t_start`` then ``a`` took effect
before ``b`` (*real-time order*); operations whose intervals overlap may have
taken effect in either order. Every comparison below is strict, so clock
ties never create an order.

The store promises that each write (``set``, ``set_range``, ``delete``, the
write half of a ``locked(...)`` read-modify-write) is atomic and that each read
sees one instant. The checker asks whether the observations are consistent
with *some* serial order of the writes that respects real-time order, and
reports a violation only when none can exist, so it has no false positives.
(It is not complete: it stops short of a full linearizability search.)

*Failed writes* (status ``error``: the call raised, or its process was
killed under ``--kill-every``) may have taken effect not at all, whole, or
on some of their words only (a read-modify-write killed between its two
range writes, which are two transactions; a killed journaled write that
stays torn where another writer changed its key before the replay). Their
bytes are accepted wherever they cover, they are never demanded (they are
not *applied*), they imply no order by what they cover, and a failed delete
explains a key's absence up to its end as a completed one does. A
``set_if_not_exists`` that returned (status ``if_absent``) is checked as a
failed write, and more: it wrote if and only if the key was absent at its
instant, so its bytes shown anywhere while a completed write shows the key
existed throughout its call (that write ended before the call started, and
no delete can come between) are a **phantom_read**: it wrote over a value.
A range write killed in its call (one journal transaction: ``set_range``,
not a read-modify-write's two) is all old or all new once the journal it
left is replayed, the end its record is given: a later read showing it on
some words of its range and, on others, a write that ended before it
began is a **torn_write**, unless another write or a delete of its range
ran between its start and that end (the replay then leaves it alone, and
it may stay torn: the README's journal limits).

What a read of byte range R, returned at instant t inside its interval,
implies, word by word (every write covers whole 8-byte words, and every word
names the write that put it there, see :mod:`stress.signature`):

* the write ``v`` shown at word ``a`` must exist, cover ``a`` and have started
  before the read ended, else **phantom_read**;
* a write ``u`` shown anywhere in the read had been applied by t; so did any
  write that ended before the read started, or before a shown write started.
  Call those *applied*. Every applied write covering ``a`` precedes ``v``: if
  one of them, ``x``, started after ``v`` ended, ``v``'s bytes at ``a`` should
  be gone: **stale_read** (a lost update, seen by a reader);
* those "precedes" facts form a graph on the shown writes: ``u -> v`` if ``u``
  covers a word that shows ``v``, or if ``u`` ended before some applied write
  covering a word that shows ``v`` started. A cycle means no serial order and
  no single instant explain the read: **torn_read** (for instance two writes
  that both cover the range, each visible in part of it).

The final state, read after every worker has stopped, is such a read at an
instant after everything; there a failure is a **lost_update** (a completed
write whose bytes are gone although no write that could have come later
covers them). Also checked: a read finding the key absent, or a ``set_range``
failing for a missing key, while the key surely existed (**missing_key**); two
read-modify-writes that read the same version of the same bytes and both wrote
them (**lost_rmw**: one of the two updates is lost, whatever the order); words
that decode to nobody (**corrupt**, e.g. a write torn inside a word).

*Checking as the run goes.* A long run checks at checkpoints: the runner
parks every worker between two ops, reads every key (a final state, checked
as the end's is) and calls :func:`check` with the :class:`KeyCarry` of each
key from the previous checkpoint, then drops the records. What a checkpoint
keeps of a key is bounded by the value size, whatever the run's length: the
per-word "latest start of an applied write" arrays, the writes those arrays
and the checkpoint's state name, the latest-starting completed creator and
the latest end of a completed or failed delete (for **missing_key**), and the
read-modify-writes that read a write still visible then (for **lost_rmw**).
Every write of an earlier epoch ended before the checkpoint, and every read
after it starts after it, so these are exactly the facts the whole-history
check would use; a later read showing an earlier write that the checkpoint
did not keep (overwritten in every word by then) is a **phantom_read**.

Cost: per key, writes are swept in order of completion into a per-word
"latest start of an applied write" array (numpy), and reads are checked in
order of the instant after which their applied set is known. One read costs
O(words read + shown writes^2); the whole check O(n log n) plus numpy work
proportional to the bytes moved.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stress.records import (
    ERROR,
    IF_ABSENT,
    MISSING,
    OK,
    VIOLATION_KINDS,
    CheckResult,
    History,
    ReadRecord,
    Recorder,
    Violation,
    WriteRecord,
)
from stress.signature import CORRUPT, WORD, fmt_wid

__all__ = [
    "VIOLATION_KINDS",
    "CheckResult",
    "History",
    "ReadRecord",
    "Recorder",
    "Violation",
    "WriteRecord",
    "check",
    "find_cycle",
]

#: Kinds of write that are one journal transaction each (a read-modify-write
#: is two: its ranges may stay apart when its process is killed between).
WHOLE_IF_KILLED = frozenset({"set_range", "set_range_chunk"})

# --------------------------------------------------------------------------------------


class _Write:
    """A write in word units, as the checker needs it."""

    __slots__ = ("hi", "is_delete", "killed", "kind", "lo", "status", "t_end", "t_start", "wid")

    def __init__(self, rec: WriteRecord, n_words: int) -> None:
        self.wid = rec.wid
        self.kind = rec.kind
        self.t_start = rec.t_start
        self.t_end = rec.t_end
        self.status = rec.status
        self.is_delete = rec.is_delete
        self.killed = rec.killed
        spans = ((0, n_words * WORD),) if rec.is_delete else rec.spans
        # Merge touching spans, so a run crossing from one into the next is covered.
        self.lo: list[int] = []
        self.hi: list[int] = []
        for s, e in sorted(spans):
            lo, hi = s // WORD, -(-e // WORD)
            if self.hi and lo <= self.hi[-1]:
                self.hi[-1] = max(self.hi[-1], hi)
            else:
                self.lo.append(lo)
                self.hi.append(hi)

    def covers(self, lo: int, hi: int) -> bool:
        if len(self.lo) == 1:
            return self.lo[0] <= lo and hi <= self.hi[0]
        return any(a <= lo and hi <= b for a, b in zip(self.lo, self.hi, strict=True))

    def overlaps(self, lo: int, hi: int) -> bool:
        return any(a < hi and lo < b for a, b in zip(self.lo, self.hi, strict=True))


class _Applied:
    """Per word, the latest ``t_start`` of an applied write covering it, and its wid.

    Writes are added in order of completion; an add is one numpy slice update.
    """

    def __init__(self, n_words: int) -> None:
        self.start = np.full(n_words, -1, dtype=np.int64)
        self.wid = np.zeros(n_words, dtype=np.int64)

    def copy(self) -> _Applied:
        out = _Applied.__new__(_Applied)
        out.start, out.wid = self.start.copy(), self.wid.copy()
        return out

    def add(self, w: _Write) -> None:
        for lo, hi in zip(w.lo, w.hi, strict=True):
            seg = self.start[lo:hi]
            newer = seg < w.t_start
            seg[newer] = w.t_start
            self.wid[lo:hi][newer] = w.wid


@dataclass
class KeyCarry:
    """What a checkpoint keeps of one key for the next epoch (see the design note).

    Bounded by the value size: two arrays of ``n_words``, at most two writes
    per word, one creator, one number, and the read-modify-write items of
    writes still visible.
    """

    applied: _Applied
    writes: dict[int, _Write]
    creator: _Write | None
    delete_end: int
    rmw_items: dict[int, list[tuple[int, int, int]]]

    def size(self) -> int:
        """Records kept: writes, plus read-modify-write items."""
        return len(self.writes) + sum(len(v) for v in self.rmw_items.values())


class _KeyChecker:
    def __init__(
        self,
        key: str,
        n_words: int,
        writes: Sequence[WriteRecord],
        out: list[Violation],
        carry: KeyCarry | None = None,
    ) -> None:
        self.key = key
        self.n_words = n_words
        self.out = out
        self.carry = carry
        self.by_wid: dict[int, _Write] = dict(carry.writes) if carry is not None else {}
        new: list[_Write] = []
        for rec in writes:
            self.by_wid[rec.wid] = w = _Write(rec, n_words)
            new.append(w)
        self.new = new
        # This epoch's writes: the creators and deletes below are this
        # epoch's (a carry stands in for the earlier ones as "before all of
        # them"), so only a write of this epoch is checked against them.
        self.new_set = set(new)
        # Range writes of one transaction each, killed in their call: all old
        # or all new once the journal they left is replayed (their t_end).
        self.killed_whole = [w for w in new if w.killed and w.kind in WHOLE_IF_KILLED]
        # Carried writes are swept already (in carry.applied): only this epoch's.
        self.ok = sorted((w for w in new if w.status == OK), key=lambda w: w.t_end)
        # For missing_key: creating/extending writes by completion, with the
        # running maximum of their start; deletes by start, with running max end.
        # A carry is a prefix of both (everything in it ended before this epoch).
        creators = [w for w in self.ok if not w.is_delete]
        self.cr_end = [w.t_end for w in creators]
        self.cr_best: list[_Write] = []
        if carry is not None and carry.creator is not None:
            self.cr_end.insert(0, -1)
            self.cr_best.append(carry.creator)
        for w in creators:
            best = self.cr_best[-1] if self.cr_best else None
            self.cr_best.append(w if best is None or w.t_start > best.t_start else best)
        # A failed delete (it raised, or its process was killed: --kill-every)
        # may have taken effect, up to its end: it explains an absent key too.
        deletes = sorted(
            (w for w in new if w.is_delete and w.status in (OK, ERROR)), key=lambda w: w.t_start
        )
        self.del_start = [w.t_start for w in deletes]
        ends = [w.t_end for w in deletes]
        if carry is not None and carry.delete_end >= 0:
            self.del_start.insert(0, -1)
            ends.insert(0, carry.delete_end)
        self.del_maxend = list(itertools.accumulate(ends, max))

    def _applied(self) -> _Applied:
        """The sweep's start: the carry's arrays (copied), or nothing applied."""
        if self.carry is None:
            return _Applied(self.n_words)
        return self.carry.applied.copy()

    def carry_out(
        self, final: ReadRecord | None, rmw_items: dict[int, list[tuple[int, int, int]]]
    ) -> KeyCarry:
        """What the next epoch needs of this key (call after :meth:`check_final`)."""
        applied = self._applied()
        for w in self.ok:
            applied.add(w)
        keep = {int(x) for x in np.unique(applied.wid)}
        if final is not None and final.runs is not None:
            keep.update(int(x) for x in np.unique(final.runs.wid))
        writes = {wid: self.by_wid[wid] for wid in keep if wid in self.by_wid}
        return KeyCarry(
            applied,
            writes,
            self.cr_best[-1] if self.cr_best else None,
            self.del_maxend[-1] if self.del_maxend else -1,
            {prev: items for prev, items in rmw_items.items() if prev in writes},
        )

    # -- helpers ---------------------------------------------------------------------

    def _violation(
        self,
        kind: str,
        lo: int,
        hi: int,
        expected: int | None,
        found: int | None,
        detail: str,
        op: str,
    ) -> None:
        self.out.append(
            Violation(kind, self.key, lo * WORD, hi * WORD, expected, found, detail, op)
        )

    # -- checks ----------------------------------------------------------------------

    def check_reads(self, reads: Sequence[ReadRecord]) -> None:
        present: list[tuple[int, ReadRecord, list[tuple[int, int, _Write]]]] = []
        for r in reads:
            if r.runs is None:
                continue
            shown = self._validate(r)
            self._check_killed(r, shown)
            horizon = max([r.t_start, *(w.t_start for _, _, w in shown)])
            present.append((horizon, r, shown))
        present.sort(key=lambda item: item[0])
        applied = self._applied()
        i = 0
        for horizon, r, shown in present:
            while i < len(self.ok) and self.ok[i].t_end < horizon:
                applied.add(self.ok[i])
                i += 1
            self._snapshot(r, shown, applied)

    def check_final(self, final: ReadRecord | None) -> None:
        if final is None:
            return
        if final.runs is None:
            self.check_missing(final, final_state=True)
            return
        shown = self._validate(final)
        self._check_killed(final, shown)
        applied = self._applied()
        for w in self.ok:
            applied.add(w)
        self._snapshot(final, shown, applied)

    def _check_killed(self, r: ReadRecord, shown: list[tuple[int, int, _Write]]) -> None:
        """A read after a killed write's replay shows it whole or not at all
        (the journal's promise): its bytes on some words of its range and, on
        others, bytes of a write that ended before it began are a
        **torn_write**. Unless another write of its range ran between its
        start and its replay's end: a replay leaves a record alone whose key
        another writer changed since, and what the dead write had applied
        then stays torn (README, the journal's limits)."""
        for w in self.killed_whole:
            if not r.t_start > w.t_end or not any(x is w for _, _, x in shown):
                continue
            older = [
                (lo, hi, x)
                for lo, hi, x in shown
                if x is not w and x.t_end < w.t_start and w.overlaps(lo, hi)
            ]
            if not older or self._touched_meanwhile(w):
                continue
            lo, hi, x = older[0]
            self._violation(
                "torn_write",
                lo,
                hi,
                w.wid,
                x.wid,
                f"{fmt_wid(w.wid)} ({w.kind}), killed in its call, shows on some of its "
                f"words and {fmt_wid(x.wid)} ({x.kind}), which ended before it began, on "
                "others, after its journal's replay, and no other write of its range ran "
                "in between",
                r.kind,
            )

    def _touched_meanwhile(self, w: _Write) -> bool:
        """Whether another write or a delete of ``w``'s words ran between ``w``'s
        start and its end (for a killed write: its replay's end)."""
        return any(
            x is not w
            and x.t_start < w.t_end
            and x.t_end > w.t_start
            and any(x.overlaps(lo, hi) for lo, hi in zip(w.lo, w.hi, strict=True))
            for x in self.by_wid.values()
        )

    def _validate(self, r: ReadRecord) -> list[tuple[int, int, _Write]]:
        """Check each run's write exists, covers it and could be visible; return the good."""
        assert r.runs is not None
        shown: list[tuple[int, int, _Write]] = []
        want = -(-(r.end - r.start) // WORD)
        got = int(r.runs.hi[-1] - r.runs.lo[0]) if len(r.runs) else 0
        if got != want and r.kind != "final":
            self._violation(
                "corrupt",
                r.start // WORD,
                r.start // WORD + got,
                None,
                None,
                f"read returned {got * WORD} bytes, asked for {r.end - r.start}",
                r.kind,
            )
        if r.kind == "final" and got != self.n_words:
            self._violation(
                "corrupt",
                0,
                got,
                None,
                None,
                f"final value is {got * WORD} bytes, expected {self.n_words * WORD}",
                r.kind,
            )
        reported: set[str] = set()
        for lo, hi, wid in zip(
            r.runs.lo.tolist(), r.runs.hi.tolist(), r.runs.wid.tolist(), strict=True
        ):
            if wid == CORRUPT:
                if "corrupt" not in reported:
                    reported.add("corrupt")
                    self._violation(
                        "corrupt", lo, hi, None, CORRUPT, "bytes that no write put there", r.kind
                    )
                continue
            w = self.by_wid.get(wid)
            if w is None or w.is_delete:
                why = "no write with this id was made to this key"
                if self.carry is not None:
                    why += " (or it was overwritten everywhere by the last checkpoint)"
            elif w.status == MISSING:
                why = "the write failed (key missing), yet its bytes are here"
            elif (
                w.status == IF_ABSENT
                and w in self.new_set
                and (present := self.surely_present(w)) is not None
            ):
                why = (
                    f"set_if_not_exists wrote, yet the key surely existed throughout its "
                    f"call ({fmt_wid(present.wid)} ({present.kind}) completed before, and "
                    "no delete could come between)"
                )
            elif not w.covers(lo, hi):
                why = "the write did not cover these bytes"
            elif w.t_start > r.t_end:
                why = "the write started after the read returned"
            elif r.rmw and wid == r.rmw:
                why = "a read-modify-write read its own write (did the buffer change later?)"
            else:
                shown.append((lo, hi, w))
                continue
            if "phantom_read" not in reported:
                reported.add("phantom_read")
                self._violation("phantom_read", lo, hi, None, wid, why, r.kind)
        return shown

    def _snapshot(
        self, r: ReadRecord, shown: list[tuple[int, int, _Write]], applied: _Applied
    ) -> None:
        final = r.kind == "final"
        if not shown:
            return
        los = np.fromiter((lo for lo, _, _ in shown), dtype=np.int64, count=len(shown))
        his = np.fromiter((hi for _, hi, _ in shown), dtype=np.int64, count=len(shown))
        # Latest start of an applied write over each run, by one reduceat over the
        # concatenated runs (runs of one read are disjoint but may have gaps
        # where phantom/corrupt runs were dropped).
        if np.array_equal(his[:-1], los[1:]):
            run_max = np.maximum.reduceat(applied.start[los[0] : his[-1]], los - los[0])
        else:
            idx = np.concatenate([np.arange(a, b) for a, b in zip(los, his, strict=True)])
            offsets = np.concatenate(([0], np.cumsum(his - los)[:-1]))
            run_max = np.maximum.reduceat(applied.start[idx], offsets)
        # Stale / lost: an applied write covering the run started after its writer ended.
        newest: dict[int, int] = {}  # wid -> max over its runs of run_max
        stale: set[int] = set()
        for (lo, hi, w), m in zip(shown, run_max.tolist(), strict=True):
            if m > newest.get(w.wid, -1):
                newest[w.wid] = m
            if m > w.t_end and w.wid not in stale:
                stale.add(w.wid)
                # Report the first stretch of words where one later write is lost.
                newer = applied.start[lo:hi] > w.t_end
                first = int(np.argmax(newer))
                x = int(applied.wid[lo + first])
                same = newer[first:] & (applied.wid[lo + first : hi] == x)
                stop = first + (int(np.argmin(same)) if not same.all() else len(same))
                lo, hi = lo + first, lo + stop
                xw = self.by_wid[x]
                self._violation(
                    "lost_update" if final else "stale_read",
                    lo,
                    hi,
                    x,
                    w.wid,
                    f"{fmt_wid(x)} ({xw.kind}) started after {fmt_wid(w.wid)} ({w.kind}) "
                    "ended and "
                    + ("completed" if final else "was applied before this read")
                    + ", but these bytes still show the older write",
                    r.kind,
                )
                if not final:
                    break  # one stale_read per read; in the final state, one per lost write
        if stale:
            return  # a cycle now would mostly restate the same loss
        writes = {w.wid: w for _, _, w in shown}
        if len(writes) < 2:
            return
        cycle = self._find_cycle(shown, writes, newest)
        if cycle is None:
            return
        u, v, why, lo, hi = cycle
        self._violation(
            "lost_update" if final else "torn_read",
            lo,
            hi,
            u,
            v,
            f"no order of the writes explains this {'final state' if final else 'read'}: " + why,
            r.kind,
        )

    def _find_cycle(
        self,
        shown: list[tuple[int, int, _Write]],
        writes: dict[int, _Write],
        newest: dict[int, int],
    ) -> tuple[int, int, str, int, int] | None:
        """Find a cycle among the shown writes; return one edge of it, explained."""
        wids = list(writes)
        # cover[u] = {v: (lo, hi)}: u covers the words [lo, hi) that show v, so u < v.
        cover: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
        los = [lo for lo, _, _ in shown]
        for u in wids:
            uw = writes[u]
            if uw.status != OK:
                # A failed write may have taken effect in part (a killed
                # read-modify-write between its two range writes; a killed
                # journaled write torn where another writer changed the key
                # before the replay): covering a word does not mean it was
                # applied there.
                continue
            for a, b in zip(uw.lo, uw.hi, strict=True):
                k = max(bisect.bisect_right(los, a) - 1, 0)
                while k < len(shown) and shown[k][0] < b:
                    lo, hi, vw = shown[k]
                    if vw.wid != u and hi > a:
                        cover[u].setdefault(vw.wid, (max(lo, a), min(hi, b)))
                    k += 1
        # u -> v also when u ended before an applied write over v's words started.
        by_end = sorted(wids, key=lambda w: writes[w].t_end)
        ends = [writes[w].t_end for w in by_end]

        def pred_by_time(v: int) -> list[int]:
            n = bisect.bisect_left(ends, newest.get(v, -1))
            return [u for u in by_end[:n] if u != v]

        adj: dict[int, set[int]] = {u: set(cover[u]) for u in wids}
        for v in wids:
            for u in pred_by_time(v):
                adj[u].add(v)
        cycle = find_cycle(adj, wids)
        if cycle is None:
            return None
        return self._explain_cycle(cycle, writes, cover, shown)

    def _explain_cycle(
        self,
        path: list[int],
        writes: dict[int, _Write],
        cover: dict[int, dict[int, tuple[int, int]]],
        shown: list[tuple[int, int, _Write]],
    ) -> tuple[int, int, str, int, int]:
        head = path[0]  # the cycle is head -> ... -> path[-1] -> head
        edges = list(itertools.pairwise([*path, head]))
        names = " < ".join(f"{fmt_wid(w)}({writes[w].kind})" for w in [*path, head])
        for u, v in edges:
            if v in cover[u]:
                lo, hi = cover[u][v]
                return (
                    u,
                    v,
                    f"{names}; {fmt_wid(u)} covers these bytes and is visible elsewhere, "
                    f"yet they show {fmt_wid(v)}",
                    lo,
                    hi,
                )
        u, v = edges[0]
        lo, hi = next((lo, hi) for lo, hi, w in shown if w.wid == v)
        return (u, v, f"{names} (by completion times)", lo, hi)

    def surely_present(self, r: ReadRecord | _Write) -> _Write | None:
        """A completed write that shows the key existed throughout ``r``'s
        interval (it ended before ``r`` started, and no delete can come
        between it and ``r``'s end), or None if the key may have been absent.

        ``r`` must be of this epoch: the carry's creator and deletes count as
        ending before anything of it. (A write carried from an earlier
        epoch was checked there, wherever its bytes showed at that epoch's
        end.)"""
        n = bisect.bisect_left(self.cr_end, r.t_start)
        if n == 0:
            return None  # no write surely completed before: the key may never have existed
        w = self.cr_best[n - 1]
        # A delete that may come after w and before the observation explains it.
        k = bisect.bisect_left(self.del_start, r.t_end)
        if k and self.del_maxend[k - 1] > w.t_start:
            return None
        return w

    def check_missing(self, r: ReadRecord | _Write, *, final_state: bool = False) -> None:
        """The key was found absent in ``r``'s interval: was it surely present throughout?"""
        w = self.surely_present(r)
        if w is None:
            return
        op = "final" if final_state else r.kind
        self._violation(
            "lost_update" if final_state else "missing_key",
            0,
            self.n_words,
            w.wid,
            None,
            f"{fmt_wid(w.wid)} ({w.kind}) completed before, and no delete could come between",
            op,
        )


def _check_rmw(
    key: str,
    reads: Sequence[ReadRecord],
    by_wid: dict[int, _Write],
    out: list[Violation],
    carried: Mapping[int, list[tuple[int, int, int]]] | None = None,
) -> dict[int, list[tuple[int, int, int]]]:
    """Two read-modify-writes that read the same version of a word and both wrote it.

    ``carried``: items of earlier epochs (pairs among them were reported then).
    Returns every item, by the write read, for the next checkpoint's carry.
    """
    groups: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    old: set[tuple[int, int, int]] = set()
    for prev, items in (carried or {}).items():
        groups[prev].extend(items)
        old.update(items)
    for r in reads:
        if not r.rmw or r.runs is None:
            continue
        w = by_wid.get(r.rmw)
        if w is None or w.status != OK:
            continue
        for lo, hi, prev in zip(
            r.runs.lo.tolist(), r.runs.hi.tolist(), r.runs.wid.tolist(), strict=True
        ):
            if prev in (CORRUPT, r.rmw):
                continue  # its own write: a phantom_read, reported by the read check
            for a, b in zip(w.lo, w.hi, strict=True):  # only words the rmw also wrote
                if max(lo, a) < min(hi, b):
                    groups[prev].append((max(lo, a), min(hi, b), r.rmw))
    for prev, items in groups.items():
        items.sort()
        reach_hi, reach_rmw, reach_item = -1, 0, (0, 0, 0)
        for item in items:
            lo, hi, rmw = item
            if lo < reach_hi and rmw != reach_rmw and not (item in old and reach_item in old):
                out.append(
                    Violation(
                        "lost_rmw",
                        key,
                        lo * WORD,
                        min(hi, reach_hi) * WORD,
                        reach_rmw,
                        rmw,
                        f"{fmt_wid(reach_rmw)} and {fmt_wid(rmw)} both read {fmt_wid(prev)} "
                        "here and both wrote these bytes: one update is lost",
                        "rmw",
                    )
                )
            if hi > reach_hi:
                reach_hi, reach_rmw, reach_item = hi, rmw, item
    return groups


def find_cycle[N: Hashable](adj: Mapping[N, Iterable[N]], nodes: Iterable[N]) -> list[N] | None:
    """Iterative DFS; the nodes of one cycle in edge order (``[a, b, c]``: a->b->c->a), or None.

    ``adj`` maps a node to its successors (a node missing from it has none).
    O(nodes + edges).
    """
    color: dict[N, int] = {}  # 1: on the DFS stack, 2: done
    parent: dict[N, N] = {}
    for root in nodes:
        if color.get(root):
            continue
        color[root] = 1
        stack: list[tuple[N, Iterator[N]]] = [(root, iter(adj.get(root, ())))]
        while stack:
            node, it = stack[-1]
            for nxt in it:
                c = color.get(nxt, 0)
                if c == 0:
                    color[nxt] = 1
                    parent[nxt] = node
                    stack.append((nxt, iter(adj.get(nxt, ()))))
                    break
                if c == 1:  # back edge node -> nxt: the cycle is nxt ... node
                    path = [node]
                    while path[-1] != nxt:
                        path.append(parent[path[-1]])
                    path.reverse()
                    return path
            else:
                color[node] = 2
                stack.pop()
    return None


def check(history: History, carry: dict[str, KeyCarry] | None = None) -> CheckResult:
    """Check every read, every failed-for-missing write and the final state.

    Parameters
    ----------
    history : History
        The records since the last checkpoint (or of the whole run), and the
        state read at its end.
    carry : dict, optional
        What the last checkpoint kept of each key (:attr:`CheckResult.carry`
        of its check); ``None`` for the first epoch (or a whole run).

    Returns
    -------
    CheckResult
        Violations in the order found (grouped by key), and counts; the
        kind of every write seen (this epoch's and the carried), and
        ``carry`` for the next epoch.
    """
    t0 = time.perf_counter()
    n_words = history.value_size // WORD
    writes: dict[str, list[WriteRecord]] = defaultdict(list)
    reads: dict[str, list[ReadRecord]] = defaultdict(list)
    for w in history.writes():
        writes[w.key].append(w)
    for r in history.reads():
        reads[r.key].append(r)
    out: list[Violation] = []
    kinds: dict[int, str] = {}
    carry = carry or {}
    keys = sorted(set(writes) | set(reads) | set(history.final) | set(carry))
    n_reads = n_writes = 0
    carry_out: dict[str, KeyCarry] = {}
    for key in keys:
        kc = _KeyChecker(key, n_words, writes[key], out, carry.get(key))
        n_writes += len(writes[key])
        n_reads += len(reads[key])
        kc.check_reads(reads[key])
        for r in reads[key]:
            if r.runs is None:
                kc.check_missing(r)
        for kw in kc.new:
            if kw.status == MISSING:
                kc.check_missing(kw)
        k = carry.get(key)
        items = _check_rmw(key, reads[key], kc.by_wid, out, k.rmw_items if k else None)
        final = history.final.get(key)
        kc.check_final(final)
        carry_out[key] = kc.carry_out(final, items)
        kinds.update((wid, w.kind) for wid, w in kc.by_wid.items())
    result = CheckResult(out, n_reads, n_writes, len(keys), time.perf_counter() - t0, kinds)
    result.carry = carry_out
    return result
