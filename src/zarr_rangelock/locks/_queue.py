"""One key's requests, held and queued: segments cut by whole-key writers.

Design note
-----------
The lock table's fairness rule (see ``_table``) is: a request waits for every
earlier live request it conflicts with. Listing all of them costs ``O(n)`` per
request when ``n`` earlier requests on the key all conflict with it (whole-key
writers: a shard that every writer compacts), so ``O(n^2)`` time and memory
for the queue. Most of that list is redundant.

An exclusive whole-key request, a *barrier*, conflicts with every request on
its key. A later request ``g`` that conflicts with a barrier ``B`` needs to
wait only for ``B`` and for the requests after ``B`` that it conflicts with:
every request before ``B`` that conflicts with ``g`` overlaps ``g``'s ranges,
so it conflicts with ``B`` too, and ``B`` is granted only once all of those
are gone (the same rule, one request earlier). So the key's requests are cut,
in arrival order, into *segments*: the head (what came before the first live
barrier), then one segment per live barrier (the barrier and the requests
that came after it, up to the next barrier). Each segment keeps its other
requests, its *members*, in two :class:`~zarr_rangelock.locks._index.RangeIndex`
(exclusive and shared, so a shared request looks only at exclusive ones). The
table's blocker lists (``Grant._nblockers`` and ``Grant._blocks``) follow one
rule, which ``check`` asserts:

- a member of a segment waits for the segment's barrier (if any) and for the
  earlier members of the segment it conflicts with;
- a barrier waits for the previous segment's barrier (if any) and for every
  member of the previous segment.

(The table adds the earlier prefix locks covering the key, listed directly.)
So only the head's members and the first barrier can be held; every other
request is queued.

Costs, ``n`` requests on the key, ``k`` of the last segment's conflicting:
a new request looks only at the last segment, ``O(log n + k)``: a whole-key
writer queued behind another one is ``O(1)``, and so is a shared request
behind a writer with no other writers after it. Removing a member is
``O(log n)``. Removing a barrier merges its segment into the previous one,
the smaller into the larger (``O(m log n)`` for ``m`` the smaller's
members); in FIFO order the previous one is the empty head and nothing moves.
A barrier that leaves while still queued (a timeout, a cancellation) hands
on what it waited for: each request that waited for it (its segment's
members, the next barrier) now waits, in its place, for the previous
segment's barrier and the previous segment's members it conflicts with,
``O(log n + k)`` each. A barrier that leaves after it was granted hands on
nothing: the previous segment was then the head, and empty.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._grant import _HELD, _WAITING, Grant, _conflict
from ._index import SMALL, RangeIndex
from ._owners import HeldBy
from ._ranges import INF

__all__ = ["KeyQueue", "Segment", "is_barrier"]


def is_barrier(g: Grant) -> bool:
    """True if ``g`` is an exclusive whole-key request: a *barrier*, it
    conflicts with every request on its key."""
    return not g._shared and not g._prefix and g._ranges[0][0] == 0 and g._ranges[0][1] >= INF


class Segment:
    """A barrier (None for the head) and the members that came after it, in two indexes."""

    __slots__ = ("barrier", "ex", "n", "next", "prev", "sh")

    def __init__(self, barrier: Grant | None, prev: Segment | None) -> None:
        self.barrier = barrier
        self.ex: RangeIndex | None = None  # exclusive members, made when first needed
        self.sh: RangeIndex | None = None  # shared members, made when first needed
        self.n = 0  # members (requests, not ranges)
        self.prev = prev
        self.next: Segment | None = None

    def members(self) -> Iterator[Grant]:
        """Every member once, in no particular order."""
        for idx in (self.ex, self.sh):
            if idx is not None:
                for s, _, _, g in idx.items():
                    if s == g._ranges[0][0]:  # one item per range: report the first
                        yield g

    def conflicting(self, g: Grant) -> list[Grant]:
        """The members that conflict with ``g``, each once. ``O(log n + k)``."""
        ex, sh = self.ex, None if g._shared else self.sh
        hits = [] if ex is None else [it[3] for s, e in g._ranges for it in ex.overlapping(s, e)]
        if sh is not None:
            hits += [it[3] for s, e in g._ranges for it in sh.overlapping(s, e)]
        if len(hits) > 1:  # a member with several ranges may be hit more than once
            hits = list({id(h): h for h in hits}.values())
        return hits


class KeyQueue:
    """The held and queued requests of one key, as a list of :class:`Segment`.

    The table (``_table``) owns the counts and the blocker lists; this class
    keeps the segments and, when a queued barrier leaves, re-points the
    blocker lists of those that waited for it (see the module note).
    """

    __slots__ = ("head", "held_by", "n", "nwaiting", "tail")

    def __init__(self) -> None:
        self.head = self.tail = Segment(None, None)
        self.n = 0  # requests
        #: Bookkeeping slot for the lock table: requests queued on this key.
        self.nwaiting = 0
        #: The head's held members by holder, for the self-wait check, made
        #: when first needed while a barrier is queued (see ``_owners``).
        self.held_by: HeldBy | None = None

    def blockers(self, g: Grant) -> list[Grant]:
        """What a new request ``g`` on this key waits for: the last segment's
        barrier and its members that conflict with ``g``. ``O(log n + k)``."""
        tail = self.tail
        hits = tail.conflicting(g)
        if tail.barrier is not None:
            hits.append(tail.barrier)
        return hits

    def held_ahead(self, who: list[object]) -> list[Grant]:
        """Held requests of ``who`` (:func:`~zarr_rangelock.locks._owners.requester`)
        that a new request on this key would wait for through a queued barrier,
        and perhaps more held ones (for the self-wait check, which looks at
        each): with a barrier queued, a new request waits for the last one,
        which waits (through any others) for every request of the head, so
        for all of them whether they overlap the request or not (``_owners``).
        ``O(1)`` plus ``who``'s own grants, after an ``O(n)`` scan of the
        head the first time a barrier is queued (:class:`HeldBy`)."""
        head = self.head
        if head is self.tail:
            return []  # no barrier: blockers() listed what it waits for
        held_by = self.held_by
        if held_by is None:
            held_by = self.held_by = HeldBy(m for m in head.members() if m._state == _HELD)
        hits = held_by.of(who)
        first = head.next
        assert first is not None and first.barrier is not None
        if first.barrier._state == _HELD:
            hits.append(first.barrier)
        return hits

    def hold_if_free(self, g: Grant, seq: int) -> bool:
        """Add the new request ``g`` as a held member, numbered ``seq``, if the
        key has one segment (no barrier) and no member conflicts with ``g``
        (then ``g`` is no barrier either); else return False and change
        nothing. The lock table's fast path: a few comparisons per member
        while the indexes are small, ``O(log n)`` past that."""
        seg = self.head
        if seg is not self.tail:
            return False
        ranges = g._ranges
        ex = seg.ex
        if ex is not None and ex.overlaps_any(ranges):
            return False
        if not g._shared:  # the same for the shared members
            sh = seg.sh
            if sh is not None and sh.overlaps_any(ranges):
                return False
        g._seq = seq
        idx = seg.sh if g._shared else ex
        if idx is not None and (small := idx.small) is not None and len(small) < SMALL:
            # insert() and RangeIndex.add, inlined for the common case (a
            # short list): about a tenth of an uncontended grant
            if len(ranges) == 1:
                s, e = ranges[0]
                small.append((s, seq, e, g))
            else:
                for s, e in ranges:
                    idx.add(s, e, seq, g)
            self.n += 1
            seg.n += 1
            g._seg = seg
        else:
            self.insert(g)
        return True

    def note_holder(self, g: Grant) -> None:
        """``g``, a request of this key, was just granted or given a holder."""
        held_by = self.held_by
        if held_by is not None and g._seg is self.head:
            held_by.add(g)

    def insert(self, g: Grant) -> None:
        """Add the new request ``g`` (the latest on the key). ``O(log n)``."""
        self.n += 1
        tail = self.tail
        shared = g._shared
        s0, e0 = g._ranges[0]
        if not shared and s0 == 0 and e0 >= INF and not g._prefix:  # is_barrier(g), inlined
            seg = tail.next = self.tail = Segment(g, tail)
            g._seg = seg
            return
        idx = tail.sh if shared else tail.ex
        if idx is None:
            idx = RangeIndex()
            if shared:
                tail.sh = idx
            else:
                tail.ex = idx
        seq = g._seq
        for s, e in g._ranges:
            idx.add(s, e, seq, g)
        tail.n += 1
        g._seg = tail

    def remove(self, g: Grant, was_waiting: bool) -> None:
        """Take ``g`` out. If ``g`` is a barrier still queued, first make those
        that waited for it wait for what it waited for (see the module note):
        the caller then counts ``g`` off their blockers as usual."""
        self.n -= 1
        seg = g._seg
        assert seg is not None
        g._seg = None
        if seg.barrier is not g:
            idx = seg.sh if g._shared else seg.ex
            assert idx is not None
            seq = g._seq
            ranges = g._ranges
            if len(ranges) == 1 and (small := idx.small) is not None:
                s, e = ranges[0]
                small.remove((s, seq, e, g))  # RangeIndex.remove, inlined
            else:
                for s, e in ranges:
                    idx.remove(s, e, seq, g)
            seg.n -= 1
            return
        prev = seg.prev
        assert prev is not None  # the head has no barrier
        if was_waiting:
            _hand_on(seg, prev)
        else:  # granted: nothing before it was left
            assert prev.barrier is None and prev.n == 0, "a barrier was granted too early"
        self._merge(seg, prev)

    def _merge(self, seg: Segment, prev: Segment) -> None:
        """Join ``seg`` (whose barrier left) to ``prev``: the smaller moves."""
        if prev is self.head:
            self.held_by = None  # the head changes: filed again when next needed
        if seg.n > prev.n:  # seg takes prev's place, with prev's barrier
            _move(prev, seg)
            seg.barrier = prev.barrier
            if seg.barrier is not None:
                seg.barrier._seg = seg
            before = seg.prev = prev.prev
            if before is None:
                self.head = seg
            else:
                before.next = seg
        else:
            _move(seg, prev)
            after = prev.next = seg.next
            if after is None:
                self.tail = prev
            else:
                after.prev = prev

    def segments(self) -> Iterator[Segment]:
        """Every segment, head first."""
        seg: Segment | None = self.head
        while seg is not None:
            yield seg
            seg = seg.next

    def entries(self) -> Iterator[Grant]:
        """Every request once (barriers and members), in no particular order."""
        for seg in self.segments():
            if seg.barrier is not None:
                yield seg.barrier
            yield from seg.members()

    def check(self, key: str) -> list[Grant]:
        """Assert the structure's invariants; return every request, oldest first.
        ``O(n^2)`` (brute-force overlap queries), for tests."""
        assert self.head.prev is None and self.head.barrier is None
        out: list[Grant] = []
        last: Segment | None = None
        for seg in self.segments():
            assert seg.prev is last, "broken segment links"
            b = seg.barrier
            if b is not None:
                assert b._key == key and is_barrier(b) and b._seg is seg, b
                assert not out or out[-1]._seq < b._seq, f"{b!r} not after its segment"
                out.append(b)
            members = sorted(seg.members(), key=lambda m: m._seq)
            assert len(members) == seg.n, (seg.n, members)
            for m in members:
                assert m._key == key and m._seg is seg, m
                assert not out or out[-1]._seq < m._seq, f"{m!r} out of order"
                assert b is None or m._state == _WAITING, f"{m!r} held behind {b!r}"
                out.append(m)
            for idx, shared in ((seg.ex, False), (seg.sh, True)):
                if idx is None:
                    continue
                items = list(idx.items())
                assert len(items) == sum(len(m._ranges) for m in members if m._shared is shared)
                for s, seq, e, m in items:
                    assert m._seq == seq and (s, e) in m._ranges and m._shared is shared
                    # overlap queries agree with brute force
                    fast = {it[1] for it in idx.overlapping(s, e)}
                    slow = {it[1] for it in items if it[0] < e and s < it[2]}
                    assert fast == slow, (m, s, e)
            last = seg
        assert self.tail is last
        assert len(out) == self.n, (len(out), self.n)
        if self.held_by is not None:
            assert self.head is not self.tail, "held_by kept without a queued barrier"
            self.held_by.check([m for m in self.head.members() if m._state == _HELD])
        assert self.nwaiting == sum(g._state == _WAITING for g in out)
        return out


def expected_blockers(g: Grant) -> list[Grant]:
    """What the queued key request ``g`` waits for by the segment rule (module
    note), without prefix locks. For ``check``."""
    seg = g._seg
    assert seg is not None
    if seg.barrier is g:
        seg = seg.prev
        assert seg is not None
        found = list(seg.members())
    else:
        found = [m for m in seg.members() if m._seq < g._seq and _conflict(m, g)]
    if seg.barrier is not None:
        found.append(seg.barrier)
    return found


def _hand_on(seg: Segment, prev: Segment) -> None:
    """``seg``'s barrier leaves while queued: those that waited for it (the
    members of ``seg`` and the next barrier) now wait also for ``prev``'s
    barrier and ``prev``'s members they conflict with (what it waited for)."""
    pb = prev.barrier
    waiters = list(seg.members())
    if seg.next is not None:
        waiters.append(seg.next.barrier)  # type: ignore[arg-type]  # only the head has none
    everyone: list[Grant] | None = None
    for w in waiters:
        if is_barrier(w):
            if everyone is None:
                everyone = list(prev.members())
            new = list(everyone)
        else:
            new = prev.conflicting(w)
        if pb is not None:
            new.append(pb)
        for b in new:
            if b._blocks is None:
                b._blocks = [w]
            else:
                b._blocks.append(w)
        w._nblockers += len(new)


def _move(src: Segment, dst: Segment) -> None:
    """Move every member of ``src`` into ``dst``."""
    for name in ("ex", "sh"):
        idx: RangeIndex | None = getattr(src, name)
        if idx is None or not len(idx):
            continue
        into: RangeIndex | None = getattr(dst, name)
        if into is None or not len(into):
            setattr(dst, name, idx)  # take the whole index
            for it in idx.items():
                it[3]._seg = dst
        else:
            for s, seq, e, m in idx.items():
                into.add(s, e, seq, m)
                m._seg = dst
        setattr(src, name, None)
    dst.n += src.n
    src.n = 0
