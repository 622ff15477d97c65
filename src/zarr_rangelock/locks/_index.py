"""An overlap index for the ranges held or requested on one key.

Design note
-----------
The lock table needs one query fast: "which entries overlap ``[s, e)``?".
Entries may overlap each other (shared holders, and waiters queued over
holders), so a plain sorted list of disjoint ranges is not enough, and a
general augmented interval tree in pure Python costs tens of microseconds per
update. We use *length classes* instead:

- A finite range of length ``L`` goes in class ``c = floor(log2(L))``, so every
  range in class ``c`` is shorter than ``2 ** (c + 1)``. Each class keeps its
  ranges in a ``SortedList`` ordered by start.
- A range in class ``c`` that overlaps ``[s, e)`` must start in
  ``(s - 2 ** (c + 1), e)``: one ``bisect`` per class finds the window, and
  every range in it either overlaps or ends within ``2 ** (c + 1)`` bytes
  before ``s``. A query costs ``O(C log n + k)`` where ``C`` is the number of
  classes present (one or two in practice: one per chunk size in use, at
  most 64) and ``k`` the number of ranges reported plus the few same-class
  neighbours ending just before ``s``.
- Ranges with ``end=None`` ("to infinity") are kept in a short list: they
  overlap ``[s, e)`` iff they start before ``e``.
- While a key has at most :data:`SMALL` ranges (the common case: one writer
  per chunk) they stay in a plain list scanned linearly, which is faster than
  any tree at that size. The list turns into classes past that size, and back
  when the key empties.

Insert and remove cost ``O(log n)`` (``SortedList`` is a B-tree-like list of
lists). 65,536 disjoint holders on one key keep each acquire at ``O(log n)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]  # ships no stubs

from ._ranges import INF

__all__ = ["SMALL", "RangeIndex"]

#: Up to this many ranges a key's index is a plain list.
SMALL = 8

# An item is (start, seq, end, payload); (start, seq) is unique within one key
# because one request's ranges are disjoint and seq numbers are unique, so
# tuple comparison never reaches the payload.
type _Item = tuple[int, int, int, Any]


class RangeIndex:
    """Ranges of one key, each tagged with a unique sequence number and a payload."""

    __slots__ = ("_classes", "_n", "_unbounded", "small")

    def __init__(self) -> None:
        #: Every item, while there are at most :data:`SMALL`; else None. The
        #: lock queue appends to and removes from it directly while it stays
        #: small (as :meth:`add` and :meth:`remove` would: the fast path).
        self.small: list[_Item] | None = []
        self._classes: dict[int, Any] = {}
        self._unbounded: list[_Item] = []
        self._n = 0  # items, once not small

    def __len__(self) -> int:
        small = self.small
        return self._n if small is None else len(small)

    def add(self, start: int, end: int, seq: int, payload: Any) -> None:
        """Insert ``[start, end)`` (``end`` may be ``INF``). ``O(log n)``."""
        item = (start, seq, end, payload)
        small = self.small
        if small is not None:
            if len(small) < SMALL:
                small.append(item)
                return
            self.small = None
            self._n = len(small)
            for it in small:
                self._add_big(it)
        self._n += 1
        self._add_big(item)

    def _add_big(self, item: _Item) -> None:
        start, _, end, _ = item
        if end >= INF:
            self._unbounded.append(item)
            return
        c = (end - start).bit_length() - 1
        sl = self._classes.get(c)
        if sl is None:
            sl = self._classes[c] = SortedList()
        sl.add(item)

    def remove(self, start: int, end: int, seq: int, payload: Any) -> None:
        """Remove a range added earlier with the same arguments. ``O(log n)``."""
        small = self.small
        if small is not None:
            try:
                small.remove((start, seq, end, payload))  # (start, seq) is unique
            except ValueError:
                raise KeyError((start, end, seq)) from None
            return
        self._n -= 1
        if end >= INF:
            for i, it in enumerate(self._unbounded):
                if it[1] == seq and it[0] == start:
                    del self._unbounded[i]
                    break
            else:
                raise KeyError((start, end, seq))
        else:
            c = (end - start).bit_length() - 1
            sl = self._classes[c]
            sl.remove((start, seq, end, payload))
            if not sl:
                del self._classes[c]
        if self._n == 0:
            self.small = []

    def overlapping(self, s: int, e: int) -> Iterator[tuple[int, int, int, Any]]:
        """Yield ``(start, seq, end, payload)`` for every range overlapping ``[s, e)``."""
        small = self.small
        if small is not None:
            for it in small:
                if it[0] < e and s < it[2]:
                    yield it
            return
        for it in self._unbounded:
            if it[0] < e:
                yield it
        for c, sl in self._classes.items():
            lo = s - (2 << c) + 1
            i = sl.bisect_left((lo,)) if lo > 0 else 0
            j = sl.bisect_left((e,)) if e < INF else len(sl)
            if i >= j:
                continue
            for it in sl.islice(i, j):
                if s < it[2]:
                    yield it

    def overlaps_any(self, ranges: tuple[tuple[int, int], ...]) -> bool:
        """Whether any range overlaps one of ``ranges`` (the lock table's
        fast path: no generator while the index is small)."""
        small = self.small
        if small is None:
            for s, e in ranges:
                for _ in self.overlapping(s, e):
                    return True
            return False
        for s, e in ranges:
            for it in small:
                if it[0] < e and s < it[2]:
                    return True
        return False

    def items(self) -> Iterator[tuple[int, int, int, Any]]:
        """Every item, in no particular order (for invariant checks)."""
        if self.small is not None:
            yield from self.small
            return
        yield from self._unbounded
        for sl in self._classes.values():
            yield from sl
