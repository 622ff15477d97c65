"""The shard mode's checker: every read and the final array against the records.

Design note
-----------
The values are :mod:`stress.shard_model`'s (every element names the write
that put it down, or is the fill value 0).

*Writes of the fill value* (``BoxWrite.fill``: ``shard_fill``,
``writer_fill``) put down 0, which names no write: an element showing the
fill value is explained by the array's start or by any fill write over it
that no completed write of values surely followed. Per element the sweep
keeps the latest end of a fill write (completed or failed) and the latest
start of a completed write of values; the fill value is a violation where
the second is later than the first (for a read, fill writes still running
when it began count as never ended). Otherwise a fill write is a write like
any other: a value it surely followed is a **lost_update** expecting it.

*Order.* As in :mod:`stress.oracle`: every op is recorded with
``time.monotonic_ns()`` just before the call and just after it returned, so
``a.t_end < b.t_start`` means ``a`` took effect before ``b``; overlapping
intervals may have taken effect in either order. Violations are reported
only when no order can explain what was seen (sound; not a complete
linearizability search).

*The final state* (read after every worker stopped), element by element:

* fill value, but a completed write of values covering the element started
  after every write of the fill value over it had ended (or there was
  none): **lost_update**;
* a value whose write does not exist or does not cover the element:
  **corrupt**;
* the value of write ``v``, while a completed write ``x`` covering the element
  started after ``v`` ended (``x`` surely came later, so ``v`` should be gone):
  **lost_update**, expected ``x``, found ``v``.

So writes to disjoint regions must all survive exactly. Then across elements:
"overlapping writes behave as if applied one after the other" means there is
one serial order of the visible writes. Precedence edges ``u -> v``: ``u``
covers an element that shows ``v``; or ``u`` ended before some completed
write covering an element that shows ``v`` (or ``v`` itself) started. A cycle
means no serial order exists: **torn_write** (two concurrent writes of one
region each visible in part of their overlap, for instance). Time edges are
prefix-shaped (sorted by ``t_end``), so they go through a chain of auxiliary
nodes: the graph has ``O(V + cover edges)`` edges, not ``O(V^2)``.

*Reads during the run* (``arr[sel]``) are per-element checks only, because
zarr reads chunk by chunk and a multi-chunk read is no snapshot: a value of
a write that started after the read ended (**phantom_read**), of no write or
of a write that does not cover the element (**corrupt**), or a fill value or
value of ``v`` where a completed covering write that surely came after ``v``
(after every fill write that may show, for a fill value) had ended before
the read started (**stale_read**).

Failed writes (any exception) may or may not have taken effect, in part or
whole: their values are accepted wherever they cover, they never demand to
be seen, and they stay out of the order graph. One exception: a write killed
in its call (``--kill-every``) whose kind is one journal transaction
(:data:`WHOLE_IF_KILLED`) is all old or all new once its journal is
replayed (its ``t_end``), outside the shards other writes touched in
between (**torn_write**; :meth:`_Checker._check_killed`).

Cost: per element, the checker keeps the two latest starts of completed
covering writes, the latest start of one of values and the latest end of a
fill write (numpy arrays the shape of the array), updated with a few slice
operations per write; reads are checked in order of start, writes swept
in by completion. One view (a read, or the final array) costs O(elements)
numpy work plus a sort of its distinct write ids.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stress.oracle import find_cycle
from stress.records import ERROR, OK, CheckResult, Violation
from stress.shard_model import (
    FILL,
    I64,
    ArrayHistory,
    BoxRead,
    BoxWrite,
    Geometry,
    along,
    overlap,
    slices,
    slices_at,
)
from stress.signature import CORRUPT, fmt_wid

__all__ = ["WHOLE_IF_KILLED", "ArrayCarry", "check_array", "check_epoch", "check_keys"]

#: Kinds of write whose each record is written by one journal transaction,
#: so all old or all new once the journal a killed one left is replayed:
#: ``arr[sel] = v`` through the pipeline (every shard it spans),
#: ``write_chunk`` and ``writer[sel] = v`` (one shard under one lock;
#: several through the pipeline), and ``writer_chunks``, recorded chunk by
#: chunk (a record per chunk: the call is atomic per shard, its edge chunks
#: are written one by one, each whole). Not the writes of the fill value
#: (their elements name no write).
WHOLE_IF_KILLED = frozenset(
    {
        "shard_chunk",
        "shard_partial",
        "shard_span",
        "shard_whole",
        "writer_chunk",
        "writer_chunks",
        "writer_span",
    }
)


class _Latest:
    """Per element, the two latest ``t_start`` of completed covering writes, with
    wids (``s1``, ``w1``, ``s2``, ``w2``); the latest ``t_start`` of a completed
    covering write of values, not of the fill value, with its wid (``sv``,
    ``wv``); and the latest ``t_end`` of a covering write of the fill value,
    completed or failed (``fe``).

    Writes are added in order of completion; an add is a few slice operations.
    ``-1`` means none (for ``fe``: only the fill value the array started
    with, which every write follows).
    """

    _ARRAYS = ("s1", "w1", "s2", "w2", "sv", "wv", "fe")

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.s1 = np.full(shape, -1, dtype=np.int64)
        self.w1 = np.zeros(shape, dtype=np.int64)
        self.s2 = np.full(shape, -1, dtype=np.int64)
        self.w2 = np.zeros(shape, dtype=np.int64)
        self.sv = np.full(shape, -1, dtype=np.int64)
        self.wv = np.zeros(shape, dtype=np.int64)
        self.fe = np.full(shape, -1, dtype=np.int64)

    def copy(self) -> _Latest:
        new = _Latest.__new__(_Latest)
        for name in self._ARRAYS:
            setattr(new, name, getattr(self, name).copy())
        return new

    def named(self) -> set[int]:
        """The write ids it holds."""
        held = np.concatenate([self.w1.ravel(), self.w2.ravel(), self.wv.ravel()])
        return set(np.unique(held).tolist()) - {0}

    def add(self, w: BoxWrite) -> None:
        """A completed write."""
        sl = slices(w.lo, w.hi)
        s1, w1, s2, w2 = self.s1[sl], self.w1[sl], self.s2[sl], self.w2[sl]
        top = s1 < w.t_start
        second = ~top & (s2 < w.t_start)
        s2[top], w2[top] = s1[top], w1[top]
        s1[top], w1[top] = w.t_start, w.wid
        s2[second], w2[second] = w.t_start, w.wid
        if not w.fill:
            sv, wv = self.sv[sl], self.wv[sl]
            later = sv < w.t_start
            sv[later], wv[later] = w.t_start, w.wid

    def add_fill_end(self, w: BoxWrite) -> None:
        """A write of the fill value that ended (completed or failed)."""
        fe = self.fe[slices(w.lo, w.hi)]
        np.maximum(fe, w.t_end, out=fe)


class _Table:
    """Every recorded write, as sorted numpy columns for vectorised lookups.

    The columns end with a sentinel row (a wid no write has, an empty box) so
    that a lookup always lands on a row, even with no writes at all.
    """

    def __init__(self, writes: Sequence[BoxWrite], ndim: int) -> None:
        ws = sorted(writes, key=lambda w: w.wid)
        self.writes = ws
        self.by_wid = {w.wid: w for w in ws}
        end = np.iinfo(np.int64).max
        self.wid = np.array([*(w.wid for w in ws), end], dtype=np.int64)
        self.lo = np.array([*(w.lo for w in ws), (0,) * ndim], dtype=np.int64).reshape(-1, ndim)
        self.hi = np.array([*(w.hi for w in ws), (0,) * ndim], dtype=np.int64).reshape(-1, ndim)
        self.t_start = np.array([*(w.t_start for w in ws), end], dtype=np.int64)
        self.t_end = np.array([*(w.t_end for w in ws), -1], dtype=np.int64)
        self.ok = np.array([*(w.status == OK for w in ws), False], dtype=bool)

    def lookup(self, wids: I64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Row of each wid in the table, and whether it is there at all."""
        idx = np.minimum(np.searchsorted(self.wid, wids), len(self.wid) - 1)
        return idx, (self.wid[idx] == wids) & (idx < len(self.writes))


_NEVER = np.iinfo(np.int64).max
"""The end of a write still running: any write of values may come before it."""


class _Running:
    """The writes of the fill value running during a read: begun before it
    ended and not ended before it began (reads come in order of start)."""

    def __init__(self, fills: Sequence[BoxWrite]) -> None:
        self.by_start = sorted(fills, key=lambda w: w.t_start)
        self.starts = [w.t_start for w in self.by_start]
        self.begun = 0  # by_start[:begun] began before the last read began
        self.heap: list[tuple[int, int]] = []  # (t_end, index) of those, still running

    def at(self, t_start: int, t_end: int) -> list[BoxWrite]:
        by_start, heap = self.by_start, self.heap
        while self.begun < len(by_start) and by_start[self.begun].t_start < t_start:
            heapq.heappush(heap, (by_start[self.begun].t_end, self.begun))
            self.begun += 1
        while heap and heap[0][0] < t_start:
            heapq.heappop(heap)
        later = by_start[self.begun : bisect.bisect_left(self.starts, t_end)]
        return [by_start[k] for _, k in heap] + later


@dataclass
class _View:
    """What one view showed, element by element, after the per-element checks."""

    lo: tuple[int, ...]
    wids: I64  # decoded; FILL / CORRUPT
    good: npt.NDArray[np.bool_]  # shows a recorded write that covers the element
    idx: npt.NDArray[np.intp]  # table row of that write (meaningful where good)


class _Checker:
    def __init__(
        self, history: ArrayHistory, out: list[Violation], carry: ArrayCarry | None = None
    ) -> None:
        self.g = history.geometry
        self.codec = history.codec
        self.out = out
        self.carry = carry
        new = list(history.writes())
        self.n_new = len(new)
        self.table = _Table([*(carry.writes if carry else ()), *new], self.g.ndim)
        # Carried writes are swept already (in carry.latest): only this epoch's.
        self.ok_by_end = sorted((w for w in new if w.status == OK), key=lambda w: w.t_end)
        #: Writes of the fill value, completed or failed (either may show).
        self.fills_by_end = sorted((w for w in new if w.fill), key=lambda w: w.t_end)
        #: The sweep after every write of the epoch: the next epoch's start.
        self.latest_out: _Latest | None = None
        #: Writes of one transaction each, killed in their call (see _check_killed).
        self.killed = [w for w in new if w.killed and not w.fill and w.kind in WHOLE_IF_KILLED]
        self._touched: dict[int, set[tuple[int, ...]]] = {}

    def _latest(self) -> _Latest:
        """The sweep's start: the carry's (copied), or no write completed."""
        if self.carry is None:
            return _Latest(self.g.shape)
        return self.carry.latest.copy()

    def sweep_all(self) -> _Latest:
        """The sweep after every write of the epoch."""
        latest = self._latest()
        for w in self.ok_by_end:
            latest.add(w)
        for w in self.fills_by_end:
            latest.add_fill_end(w)
        return latest

    # -- reporting --------------------------------------------------------------------

    def _report(
        self,
        kind: str,
        mask: npt.NDArray[np.bool_],
        view: _View,
        expected: I64 | None,
        found: I64 | None,
        op: str,
        detail: str,
        *,
        per_chunk: bool,
    ) -> None:
        """One violation per inner chunk (``per_chunk``) or per view, for ``mask``'s elements."""
        where = np.argwhere(mask)
        if len(where) == 0:
            return
        coords = where + np.asarray(view.lo, dtype=np.int64)
        chunk = coords // np.asarray(self.g.chunks, dtype=np.int64)
        if per_chunk:
            _, first, counts = np.unique(chunk, axis=0, return_index=True, return_counts=True)
            picks = list(zip(first.tolist(), counts.tolist(), strict=True))
        else:
            picks = [(0, len(where))]  # one finding for the whole view
        for i, n in picks:
            at = tuple(int(c) for c in coords[i])
            rel = tuple(int(c) for c in where[i])
            exp = None if expected is None else int(expected[rel]) or None
            fnd = None if found is None else int(found[rel])
            if fnd == FILL:
                fnd = None
            scope = "in this chunk" if per_chunk else "in this read"
            place = (
                f"chunk={self.g.chunk_of(at)} elem={at} "
                f"({n:,} element{'s' if n != 1 else ''} {scope})"
            )
            self.out.append(
                Violation(kind, self.g.shard_key(at), 0, 0, exp, fnd, detail, op, where=place)
            )

    # -- per element ------------------------------------------------------------------

    def check_view(
        self,
        lo: tuple[int, ...],
        values: npt.NDArray[np.generic],
        t_start: int | None,
        t_end: int | None,
        latest: _Latest,
        op: str,
        fill_end: I64 | None = None,
    ) -> tuple[_View, I64]:
        """Per-element checks of one view; ``t_start``/``t_end`` None for the final state.

        ``fill_end`` (the view's shape): per element, the latest end of a
        write of the fill value that may show there (``latest.fe``, and for a
        read the ones still running when it began, as never ended); None:
        ``latest.fe``.

        Returns the view and, per element showing a good write, the latest start of
        another completed write covering it (-1 elsewhere), for the order check.
        """
        final = t_start is None
        wids = self.codec.decode(values, lo)
        shape = wids.shape
        hi = tuple(a + n for a, n in zip(lo, shape, strict=True))
        t = self.table
        idx, known = t.lookup(wids)
        written = wids > 0
        inbox = np.ones(shape, dtype=bool)
        for d in range(len(shape)):
            c = along(np.arange(lo[d], hi[d], dtype=np.int64), d, len(shape))
            inbox &= (t.lo[idx, d] <= c) & (c < t.hi[idx, d])
        good = written & known & inbox
        view = _View(lo, wids, good, idx)

        def report(kind: str, mask: npt.NDArray[np.bool_], exp: I64 | None, detail: str) -> None:
            self._report(kind, mask, view, exp, wids, op, detail, per_chunk=final)

        report(
            "corrupt",
            wids == CORRUPT,
            None,
            "elements that decode to no write (wrong bytes, or bytes at the wrong place)",
        )
        report("corrupt", written & ~known, None, "the value names a write that was never made")
        report(
            "corrupt",
            written & known & ~inbox,
            None,
            "the value belongs to a write that did not cover this element (misplaced)",
        )
        if t_end is not None:
            report(
                "phantom_read",
                good & (t.t_start[idx] > t_end),
                None,
                "shows a write that started after the read returned",
            )
        sl = slices(lo, hi)
        s1, w1, s2, w2 = latest.s1[sl], latest.w1[sl], latest.s2[sl], latest.w2[sl]
        mine = w1 == wids
        other_start = np.where(mine, s2, s1)
        kind = "lost_update" if final else "stale_read"
        report(
            kind,
            good & (other_start > t.t_end[idx]),
            np.where(mine, w2, w1),
            "a completed write covering these elements started after the shown one ended"
            + ("" if final else ", and ended before the read started"),
        )
        if fill_end is None:
            fill_end = latest.fe[sl]
        report(
            kind,
            (wids == FILL) & (latest.sv[sl] > fill_end),
            latest.wv[sl],
            "fill value where a completed write of values "
            + ("covers the element" if final else "had covered it before the read started")
            + ", started after every write of the fill value over it had ended",
        )
        return view, np.where(good, other_start, -1)

    # -- the run ----------------------------------------------------------------------

    def check_reads(self, reads: Sequence[BoxRead]) -> None:
        latest = self._latest()
        fills = self.fills_by_end
        during = _Running(fills)
        i = j = 0
        for r in sorted(reads, key=lambda r: r.t_start):
            while i < len(self.ok_by_end) and self.ok_by_end[i].t_end < r.t_start:
                latest.add(self.ok_by_end[i])
                i += 1
            while j < len(fills) and fills[j].t_end < r.t_start:
                latest.add_fill_end(fills[j])
                j += 1
            fill_end = latest.fe[slices(r.lo, r.hi)]
            running = during.at(r.t_start, r.t_end)
            if running:
                fill_end = fill_end.copy()
                for f in running:  # may land at any time during the read
                    box = overlap((f.lo, f.hi), (r.lo, r.hi))
                    if box is not None:
                        fill_end[slices_at(box, r.lo)] = _NEVER
            if r.keys is not None:
                self._check_listing(r, r.keys, latest, fill_end)
                continue
            view, _ = self.check_view(r.lo, r.values, r.t_start, r.t_end, latest, r.kind, fill_end)
            self._check_killed(view, r.t_start, r.kind)

    def _check_listing(
        self, r: BoxRead, keys: frozenset[str], latest: _Latest, fill_end: I64
    ) -> None:
        """A listing shows every shard that surely existed throughout it: one
        with an element that a completed write of values covered before the
        listing began, after every write of the fill value over it had ended
        (``fill_end``: those running during the listing never end), so that
        the shard held a value all along and nothing could delete it. Else
        **missing_key**. (Which shards may be absent is not checked here: a
        failed write may have made one; ``check_keys`` checks the final
        state.)"""
        held = latest.sv > fill_end
        for key, (lo, hi) in self.g.shard_cells():
            if key in keys:
                continue
            where = np.argwhere(held[slices(lo, hi)])
            if len(where) == 0:
                continue
            at = tuple(int(a + b) for a, b in zip(lo, where[0], strict=True))
            wid = int(latest.wv[at])
            detail = (
                f"the listing shows no {key}, whose elements held values throughout it "
                f"({fmt_wid(wid)} wrote one before it began, after every write of the fill "
                "value over it had ended)"
            )
            place = f"chunk={self.g.chunk_of(at)} elem={at}"
            self.out.append(Violation("missing_key", key, 0, 0, wid, None, detail, r.kind, place))

    def check_final(self, values: npt.NDArray[np.generic], op: str) -> set[int]:
        """Check a final view; returns the write ids it shows."""
        latest = self.sweep_all()
        self.latest_out = latest
        zero = (0,) * self.g.ndim
        view, other_start = self.check_view(zero, values, None, None, latest, op)
        self._check_killed(view, None, op)
        self._check_order(view, other_start, op)
        return set(np.unique(view.wids[view.good]).tolist())

    # -- killed writes -----------------------------------------------------------------

    def _check_killed(self, view: _View, t_start: int | None, op: str) -> None:
        """A view after a killed write's replay shows it whole or not at all.

        The write is one journal transaction, however many shards it spans:
        its elements showing it and, elsewhere in its box, elements showing a
        write that ended before it began are a **torn_write**. Except in
        shards another write touched between its start and its replay's end
        (``t_end``): a replay leaves alone a key another writer changed
        since and applies the record's other keys (README, the journal's
        limits), so there an old value may stay beside the dead write's.
        ``t_start`` None: the final state.
        """
        t = self.table
        vhi = tuple(a + n for a, n in zip(view.lo, view.wids.shape, strict=True))
        for w in self.killed:
            if t_start is not None and not t_start > w.t_end:
                continue
            box = overlap((w.lo, w.hi), (view.lo, vhi))
            if box is None:
                continue
            lo, hi = box
            rel = slices_at(box, view.lo)
            wids, good, idx = view.wids[rel], view.good[rel], view.idx[rel]
            if not (wids == w.wid).any():
                continue
            older = good & (wids != w.wid) & (t.t_end[idx] < w.t_start)
            if older.any():
                older &= self._untouched(w, lo, hi)
            where = np.argwhere(older)
            if len(where) == 0:
                continue
            at = tuple(int(a + b) for a, b in zip(lo, where[0], strict=True))
            x = t.writes[int(idx[tuple(where[0])])]
            detail = (
                f"{fmt_wid(w.wid)} ({w.kind}), killed in its call, shows on some elements "
                f"of its box and {fmt_wid(x.wid)} ({x.kind}), which ended before it began, "
                f"on {len(where):,} others, after its journal's replay, in shards no other "
                "write touched in between"
            )
            place = f"chunk={self.g.chunk_of(at)} elem={at}"
            self.out.append(
                Violation("torn_write", self.g.shard_key(at), 0, 0, w.wid, x.wid, detail, op, place)
            )

    def _untouched(
        self, w: BoxWrite, lo: tuple[int, ...], hi: tuple[int, ...]
    ) -> npt.NDArray[np.bool_]:
        """Over the box ``[lo, hi)`` (inside ``w``'s), the elements of shards that
        no other write touched between ``w``'s start and its end."""
        g = self.g
        touched = self._touched.get(w.wid)
        if touched is None:
            mine = g.shards_of(w.lo, w.hi)
            touched = set()
            for x in self.table.writes:
                if x.wid != w.wid and x.t_start < w.t_end and x.t_end > w.t_start:
                    touched |= mine & g.shards_of(x.lo, x.hi)
            self._touched[w.wid] = touched
        mask = np.zeros(tuple(b - a for a, b in zip(lo, hi, strict=True)), dtype=bool)
        for shard in g.shards_of(lo, hi) - touched:
            box = overlap(g.cell(shard, g.shards), (lo, hi))
            assert box is not None  # (a shard the box touches)
            mask[slices_at(box, lo)] = True
        return mask

    # -- one serial order --------------------------------------------------------------

    def _check_order(self, view: _View, other_start: I64, op: str) -> None:
        """Find a cycle among the visible, completed writes (see the design note)."""
        t = self.table
        shown = view.good & t.ok[view.idx]
        if not shown.any():
            return
        vis_rows = np.unique(view.idx[shown])
        vis = [t.writes[int(r)] for r in vis_rows]
        # newest[v]: latest start of v itself or of a completed write covering
        # an element that shows v; everything that ended before it precedes v.
        newest = {w.wid: w.t_start for w in vis}
        order = np.argsort(view.idx[shown], kind="stable")
        rows_sorted = view.idx[shown][order]
        starts_sorted = other_start[shown][order]
        bounds = np.searchsorted(rows_sorted, vis_rows, side="right")
        begin = 0
        for w, end in zip(vis, bounds.tolist(), strict=True):
            if end > begin:
                newest[w.wid] = max(newest[w.wid], int(starts_sorted[begin:end].max()))
            begin = end
        # Cover edges: u covers an element that shows v (u, v visible and completed).
        cover: dict[int, dict[int, tuple[int, ...]]] = {}
        wids_ok = np.where(shown, view.wids, 0)
        for u in vis:
            sl = slices(u.lo, u.hi)
            region = wids_ok[sl]
            found, first = np.unique(region.ravel(), return_index=True)
            for v, f in zip(found.tolist(), first.tolist(), strict=True):
                if v not in (0, u.wid):
                    rel = np.unravel_index(f, region.shape)
                    pos = tuple(int(a + b) for a, b in zip(u.lo, rel, strict=True))
                    cover.setdefault(u.wid, {})[v] = pos
        # Time edges through a chain of prefix nodes: by_end[k] -> P(k), P(k-1) -> P(k),
        # P(k) -> v where v needs every write of by_end[0..k] before it.
        by_end = sorted(vis, key=lambda w: w.t_end)
        ends = [w.t_end for w in by_end]
        rank = {w.wid: k for k, w in enumerate(by_end)}
        n = len(by_end)
        adj: dict[object, list[object]] = {}
        for k, w in enumerate(by_end):
            adj.setdefault(w.wid, []).append(("P", k))
            if k:
                adj.setdefault(("P", k - 1), []).append(("P", k))
        for w in vis:
            adj.setdefault(w.wid, []).extend(cover.get(w.wid, {}))
            # Those that ended before newest[w]; never w itself (that is a lost
            # update, reported per element already).
            k = min(bisect.bisect_left(ends, newest[w.wid]), rank[w.wid])
            if k:
                adj.setdefault(("P", k - 1), []).append(w.wid)
        cycle = find_cycle(adj, [w.wid for w in vis] + [("P", k) for k in range(n)])
        if cycle is None:
            return
        real = [c for c in cycle if isinstance(c, int)]
        names = " < ".join(fmt_wid(w) for w in [*real, real[0]])
        # Locate it at a cover edge of the cycle, if it has one.
        at: tuple[int, ...] | None = None
        u_v: tuple[int, int] = (real[0], real[-1])
        for a, b in itertools.pairwise([*real, real[0]]):
            if b in cover.get(a, {}):
                at, u_v = cover[a][b], (a, b)
                break
        if at is None:
            at = t.by_wid[real[0]].lo
        detail = (
            f"no serial order of the writes explains the final array: {names} "
            f"({fmt_wid(u_v[0])} covers elements that show {fmt_wid(u_v[1])}, "
            "and the rest of the cycle by cover or completion times)"
        )
        place = f"chunk={self.g.chunk_of(at)} elem={at}"
        self.out.append(
            Violation("torn_write", self.g.shard_key(at), 0, 0, u_v[0], u_v[1], detail, op, place)
        )


def check_array(history: ArrayHistory) -> CheckResult:
    """Check every read, the final array (stock read) and that both final reads agree.

    Returns
    -------
    CheckResult
        Violations (reads first, then the final state), counts, and the op
        kind of every write for the report. ``keys`` counts the array's shards.
    """
    return check_epoch(history)[0]


@dataclass
class ArrayCarry:
    """What a shard checkpoint keeps for the next epoch, bounded by the array's size.

    ``latest`` is the sweep of every completed write so far (per element, the
    two latest starts of covering writes with their wids, the latest start of
    a write of values with its wid, the latest end of a write of the fill
    value: seven int64 per element), exactly what
    a check of the whole history would hold when the next epoch's first read
    starts, since every earlier write ended before the checkpoint. ``writes``
    are the writes a later view can name: those the checkpoint's arrays show
    and those ``latest`` holds (at most three per element, in practice a few
    per inner chunk). ``reported`` are the signatures of the findings about
    the checkpoint's state, so a lost chunk that stays lost is reported once,
    not at every checkpoint.
    """

    latest: _Latest
    writes: list[BoxWrite]
    reported: frozenset[tuple[object, ...]]

    def size(self) -> int:
        """Records held (for :class:`stress.runner.Memory`)."""
        return len(self.writes)


def _signature(v: Violation) -> tuple[object, ...]:
    return (v.kind, v.key, v.expected, v.found, v.where, v.op, v.detail)


def check_epoch(
    history: ArrayHistory, carry: ArrayCarry | None = None
) -> tuple[CheckResult, ArrayCarry]:
    """:func:`check_array` of the records since the last checkpoint (or of a whole run).

    ``carry`` is what the last checkpoint kept (None for the first epoch);
    ``history.finals`` are the arrays read at this checkpoint (or at the end),
    with every worker parked. Returns the verdict on this epoch (counts of
    this epoch's records; kinds of this epoch's and the carried writes) and
    the carry for the next one.
    """
    t0 = time.perf_counter()
    out: list[Violation] = []
    c = _Checker(history, out, carry)
    reads = list(history.reads())
    c.check_reads(reads)
    n_read_findings = len(out)
    shown: set[int] = set()
    finals = history.finals
    main_label = "stock" if "stock" in finals else next(iter(finals), None)
    latest_out: _Latest | None = None
    if main_label is not None:
        shown |= c.check_final(finals[main_label], f"final ({main_label})")
        if history.keys is not None:
            out.extend(check_keys(history.geometry, finals[main_label], history.keys))
        latest_out = c.latest_out
        for label, values in finals.items():
            if label == main_label:
                continue
            shown |= _compare(c, finals[main_label], main_label, values, label, out)
    if latest_out is None:  # no final view: sweep the epoch's writes anyway
        latest_out = c.sweep_all()
    for w in c.table.writes:
        if w.status not in (OK, ERROR):
            raise ValueError(f"unknown write status {w.status!r}")
    # Findings about the state: each once, while it lasts.
    state = out[n_read_findings:]
    before = carry.reported if carry is not None else frozenset()
    out[n_read_findings:] = [v for v in state if _signature(v) not in before]
    keep = shown | latest_out.named()
    carry_out = ArrayCarry(
        latest_out,
        [w for w in c.table.writes if w.wid in keep],
        frozenset(_signature(v) for v in state),
    )
    kinds = {w.wid: w.kind for w in c.table.writes}
    n_shards = history.geometry.n_shards()
    result = CheckResult(out, len(reads), c.n_new, n_shards, time.perf_counter() - t0, kinds)
    return result, carry_out


def check_keys(
    g: Geometry, final: npt.NDArray[np.generic], keys: frozenset[str]
) -> list[Violation]:
    """The store keeps a shard key exactly where the final array has an
    element that is not the fill value, as stock zarr keeps them: it deletes
    a shard that becomes all fill (``write_empty_chunks`` false, zarr's
    default). ``keys``: the shard keys the bare store lists."""
    out: list[Violation] = []
    for key, (lo, hi) in g.shard_cells():
        values = bool((final[slices(lo, hi)] != 0).any())  # the array's fill value is 0
        if key in keys and not values:
            detail = (
                f"the store keeps shard {key} while every element of it reads as the "
                "fill value (stock zarr deletes a shard that becomes all fill)"
            )
            out.append(Violation.note("stray_key", detail, "final", key))
        elif values and key not in keys:
            detail = f"the store lists no shard {key}, yet elements of it read as values"
            out.append(Violation.note("missing_key", detail, "final", key))
    return out


def _compare(
    c: _Checker,
    ref: npt.NDArray[np.generic],
    ref_label: str,
    other: npt.NDArray[np.generic],
    label: str,
    out: list[Violation],
) -> set[int]:
    """The two final reads must agree element for element; if not, check both.
    Returns the write ids ``other`` shows where it differs (none if it agrees)."""
    if ref.shape == other.shape and np.array_equal(ref, other, equal_nan=ref.dtype.kind == "f"):
        return set()
    if ref.shape != other.shape:
        detail = f"{label} read has shape {other.shape}, {ref_label} read {ref.shape}"
        out.append(Violation.note("stock_mismatch", detail, "final"))
        return set()
    zero = (0,) * ref.ndim
    a, b = c.codec.decode(ref, zero), c.codec.decode(other, zero)
    view = _View(zero, b, b > 0, np.zeros(b.shape, dtype=np.intp))
    c._report(
        "stock_mismatch",
        a != b,
        view,
        a,
        b,
        f"final ({label})",
        f"the {label} read differs from the {ref_label} read (expected: {ref_label}'s value)",
        per_chunk=True,
    )
    latest = c.latest_out
    shown = c.check_final(other, f"final ({label})")
    c.latest_out = latest  # the main view's sweep (the same writes, so the same arrays)
    return shown
