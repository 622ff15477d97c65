"""Where the inner chunks of a ``ShardWriter``'s array are.

A :class:`Places` is made once per writer from the array's shape, its inner
chunk shape and, where the writer has a fast path, the shards' geometry. For
an inner chunk's grid coordinates it gives the chunk's region in the array,
whether that is the whole chunk shape (not clipped at the array's edge), the
store key of its shard and its row in the shard's index (:class:`Place`),
and remembers the answer for coordinates given as a tuple of ints (0.3 us
found against 2.6 us worked out, a scratch run of 2026-12-05; 7-8 us
before :meth:`Places._locate` took one loop); for a selection, the inner
chunks it covers exactly (:meth:`Places.chunks_of`). Both memories are
bounded. A chunk written once is never found: a single pass of
``write_chunk`` over every chunk in random order pays the working out for
each (issue 12's workload: 43,492 and 43,876 chunks/s from one thread in
two scratch runs, against 32,133 and 33,206 before; a second pass, found,
54,405 and 55,226).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._layout import ShardGeometry

__all__ = ["Place", "Places", "all_ints"]

_new = tuple.__new__

KEYS_MAX = 4096
"""Shard keys remembered per writer (by shard grid coordinates)."""

PLACES_MAX = 1 << 14
"""Places remembered per writer: about 4 MiB at most."""


class Place(NamedTuple):
    """Where an inner chunk is: its grid coordinates (ints), its array region
    (clipped at the edge), whether that is the whole chunk shape, and the
    key of its shard with its row in the shard's index
    (:meth:`ShardGeometry.place` of its coordinates in the shard; ``""`` and
    0 for a writer without fast paths)."""

    coords: tuple[int, ...]
    region: tuple[slice, ...]
    whole: bool
    key: str
    inner: int


class Places:
    """The places of one array's inner chunks (see the module).

    Parameters
    ----------
    shape, inner : tuple of int
        The array's shape and its inner chunk shape.
    geometry : ShardGeometry or None
        The shards' geometry; None for a writer without fast paths (its
        places then name no shard).
    shard_key : callable
        The store key of a shard from its grid coordinates (the array's
        path and zarr's chunk key encoding).
    name : str
        The array, as errors name it.

    Concurrency
    -----------
    Shared by the threads of one writer without a lock: a place is worked
    out from fixed facts, so two threads that both miss the memory store
    equal answers, and a memory that is full is emptied, never left torn
    (dict operations are atomic under the GIL).
    """

    __slots__ = (
        "_dims",
        "_geometry",
        "_key_of",
        "_keys",
        "_name",
        "grid",
        "inner",
        "memo",
        "shape",
    )

    def __init__(
        self,
        shape: tuple[int, ...],
        inner: tuple[int, ...],
        geometry: ShardGeometry | None,
        shard_key: Callable[[tuple[int, ...]], str],
        name: str,
    ) -> None:
        self.shape = shape
        self.inner = inner
        self.grid = tuple(-(-s // c) for s, c in zip(shape, inner, strict=True))
        self.memo: dict[tuple[int, ...], Place] = {}
        """Places by coordinates (tuples of ints only), for lookups in a hot loop."""
        self._geometry = geometry
        # (per dimension, for _locate's one loop: chunk size, array size, grid
        # size, chunks per shard; ones without a geometry)
        per = geometry.chunks_per_shard if geometry is not None else (1,) * len(shape)
        self._dims = tuple(zip(inner, shape, self.grid, per, strict=True))
        self._keys: dict[tuple[int, ...], str] = {}
        self._key_of = shard_key
        self._name = name

    def place(self, coords: Sequence[int]) -> Place:
        """Where inner chunk ``coords`` is.

        Raises
        ------
        IndexError
            For coordinates outside the grid, of another number of
            dimensions, or not integers (naming them, what is wrong, the
            grid and the array).
        TypeError
            For coordinates that are not a sequence (a bare int).
        """
        if type(coords) is tuple and all_ints(coords):
            # (The type check keeps out 3.0 and the like, which hash as 3
            # but are refused below.)
            place = self.memo.get(coords)
            if place is not None:
                return place
            c = ints = coords
        else:
            try:
                c = tuple(coords)
            except TypeError:
                raise TypeError(
                    f"chunk coordinates {coords!r} are not a sequence: give one int per "
                    f"dimension of the grid of inner chunks {self.grid!r} of {self._name}"
                ) from None
            for i in c:
                if not _integer(i):
                    raise IndexError(f"chunk coordinates {c!r} {self._why(c)} of {self._name}")
            ints = tuple(map(int, c))  # (numpy integers)
        if len(c) == len(self.grid):
            place = self._locate(ints)
            if place is not None:
                memo = self.memo
                if len(memo) >= PLACES_MAX:
                    memo.clear()
                memo[place.coords] = place
                return place
        raise IndexError(f"chunk coordinates {c!r} {self._why(c)} of {self._name}")

    def _locate(self, c: tuple[int, ...]) -> Place | None:
        """The place of ``c`` (ints, one per dimension), or None outside the
        grid. One loop over the dimensions (a chunk written once, as most
        are, is never found in the memory: this is its cost, a third of what
        separate passes for the region, the edge and the shard took)."""
        region = []
        whole = True
        shard = []
        row = 0  # (ShardGeometry.place of the coordinates in the shard, inlined)
        for i, (n, s, g, k) in zip(c, self._dims):  # noqa: B905
            if i < 0 or i >= g:
                return None
            start = i * n
            stop = start + n
            if stop > s:
                stop = s
                whole = False
            region.append(slice(start, stop))
            shard.append(i // k)
            row = row * k + i % k
        # (tuple.__new__ as NamedTuple's own __new__ calls it, without that
        # Python-level call: 0.6 us of a place's 2.2, a scratch run)
        if self._geometry is None:
            return _new(Place, (c, tuple(region), whole, "", 0))
        return _new(Place, (c, tuple(region), whole, self._key(tuple(shard)), row))

    def _why(self, c: tuple[Any, ...]) -> str:
        """What is wrong with coordinates ``c`` that have no place, for the error."""
        grid = self.grid
        if len(c) != len(grid):
            return (
                f"have {len(c)} dimension{'s' if len(c) != 1 else ''} where the grid of "
                f"inner chunks {grid!r} has {len(grid)}"
            )
        odd = [i for i in c if not _integer(i)]
        if odd:
            return (
                f"hold {', '.join(map(repr, odd))}, not an integer, for the grid of inner "
                f"chunks {grid!r}"
            )
        return f"are outside the grid of inner chunks {grid!r}"

    def _key(self, shard: tuple[int, ...]) -> str:
        """The store key of the shard at ``shard`` in the shard grid (remembered)."""
        keys = self._keys
        key = keys.get(shard)
        if key is None:
            if len(keys) >= KEYS_MAX:
                keys.clear()
            key = keys[shard] = self._key_of(shard)
        return key

    def chunks_of(self, selection: Any) -> list[range] | None:
        """The grid coordinates of the inner chunks ``selection`` covers
        exactly, a range per dimension (a tuple of step-1 slices starting on
        chunk boundaries and ending on one or at the array's edge, one per
        dimension), else None."""
        if type(selection) is not tuple:
            selection = (selection,)
        shape = self.shape
        if len(selection) != len(shape) or not shape:
            return None
        box = []
        for sel, n, size in zip(selection, self.inner, shape, strict=True):
            if type(sel) is not slice or sel.step not in (None, 1):
                return None
            start = 0 if sel.start is None else sel.start
            stop = size if sel.stop is None else sel.stop
            if type(start) is not int or type(stop) is not int:
                return None
            if start < 0 or start >= size or start % n or stop <= start:
                return None
            if stop != size and (stop > size or stop % n):
                return None
            box.append(range(start // n, -(-stop // n)))
        return box


def _integer(i: Any) -> bool:
    """Whether ``i`` is a coordinate: an ``int`` or a numpy integer, not a
    ``bool`` (zarr's block indexing, ``arr.blocks[True, 0]``, refuses one with
    an ``IndexError``; taken as 1 it wrote chunk ``(1, 0)``)."""
    return isinstance(i, (int, np.integer)) and not isinstance(i, bool)


def all_ints(coords: tuple[Any, ...]) -> bool:
    """Whether every coordinate is an ``int`` (not a subclass, a numpy integer
    or a float): a loop, 4x faster than ``tuple(map(type, coords)) == ...``."""
    for i in coords:  # noqa: SIM110 - all() over a generator is 3x slower
        if type(i) is not int:
            return False
    return True
