"""Where the chunks of a compressed shard go: into dead space, after the
data, or a compaction (path 2 of :mod:`~._jobs`' design note).

Pure arithmetic on a shard's decoded index (:mod:`~._layout`), shared by the
pipeline's jobs (:mod:`~._jobs`) and ``ShardWriter``'s compressed fast path
(:mod:`~._fastpaths`), so both lay a shard out alike. Nothing here does I/O
or takes a lock: the callers hold the shard's whole-key lock.

*Gaps kept.* Where a write's chunks go depends on the stored index's dead
space (:func:`~._layout.dead_space`: a dozen array operations over every
chunk of the shard, 25 us for 256, about 100 us a write on zarr's busy loop
thread, the largest part of a compressed write's placement). A process that
writes a shard again mostly finds there the index it wrote last time. So
:func:`repointed` works out the dead space of the index it returns from the
one it was given (the gaps it used shrunk, the bytes of the chunks it
replaced freed and merged with their neighbours: ``O(gaps)`` list
operations) and keeps it in :data:`_GAPS`, by the new index's bytes; the
next write of that index takes it out instead of going over every chunk.
Keyed by content, an entry holds for any index equal to it (a copy, another
writer's, a child's after a fork), whoever made it, and a stale one can
never be found. Only for a *plain* index (chunks of at least one byte,
within the data section and apart, as this package writes them; other
tools' may overlap) is the successor worked out; any other goes over every
chunk each time. Cost: an index that is not found (another process wrote
the shard since) takes somewhat longer than with nothing kept (the lists the
successor needs: ``git log``); one found, about a third of the time of one
not found (``benchmarks/placement.py``). ``tests/test_placement_gaps.py`` checks
kept against fresh gaps on random write sequences.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence, Sized
from operator import itemgetter
from typing import NamedTuple

from ..locks._ki import protected
from ..store._rewrite import Span
from . import _layout as L

__all__ = [
    "COMPACT_DEAD_RATIO",
    "GAPS_BYTES_MAX",
    "MIN_SLACK_CHUNKS",
    "SLACK_RATIO",
    "Gaps",
    "compacted",
    "fits_in_place",
    "gaps_of",
    "repointed",
]

SLACK_RATIO = 0.5
"""Free space reserved when a compressed shard is (re)written whole, as a
fraction of its live chunk bytes."""

MIN_SLACK_CHUNKS = 4
"""Free space reserved is at least this many times the largest live chunk."""

COMPACT_DEAD_RATIO = 0.5
"""A compressed shard is compacted when its dead bytes would exceed this
fraction of its live bytes."""

GAPS_BYTES_MAX = 8 << 20
"""Bytes of indexes (the keys of :data:`_GAPS`) kept at most; the oldest go
first. 16 bytes a chunk: 2,048 shards of 256 chunks."""


class Gaps(NamedTuple):
    """A shard index's dead space, as :func:`repointed` uses it (its lists
    never changed once made: the next index's are copies).

    Attributes
    ----------
    end : int
        The first byte after the last present chunk (the data section's
        start if none).
    live : int
        Bytes of present chunks.
    sizes, offsets : list of int
        Each gap's length and start, ordered by length, then start.
    starts, ends : list of int or None
        Each gap's start and end, ascending, where the index is plain
        (``_layout.dead_space``: what working out the next index's gaps
        assumes); else None.
    """

    end: int
    live: int
    sizes: list[int]
    offsets: list[int]
    starts: list[int] | None
    ends: list[int] | None


#: Gaps of indexes this process made, by ``(geometry, index bytes)`` (see
#: the design note); taken out when used.
_GAPS: dict[tuple[L.ShardGeometry, bytes], Gaps] = {}
_gaps_lock = threading.Lock()  # for adding (and evicting); get and pop are atomic
_gaps_bytes = [0]


def _after_fork() -> None:
    # A thread of the parent may have held the lock; the entries stay true.
    global _gaps_lock
    _gaps_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def gaps_of(index: L.IndexArray, g: L.ShardGeometry) -> Gaps:
    """``index``'s gaps worked out from every chunk (``_layout.dead_space``)."""
    end, live, at, n, plain = L.dead_space(index, g)
    by_size = n.argsort(kind="stable")  # (at ascends: ties by start)
    sizes, offsets = n[by_size].tolist(), at[by_size].tolist()
    if not plain:
        return Gaps(end, live, sizes, offsets, None, None)
    return Gaps(end, live, sizes, offsets, at.tolist(), (at + n).tolist())


# _keep and _take change _GAPS and _gaps_bytes together: protected from
# KeyboardInterrupt (``locks/_ki``; they never wait), else one in between
# left the count wrong for the rest of the process.


@protected
def _keep(g: L.ShardGeometry, index: L.IndexArray, gaps: Gaps) -> None:
    """Keep ``gaps`` as ``index``'s in :data:`_GAPS`, the oldest going past
    :data:`GAPS_BYTES_MAX`."""
    key = (g, index.tobytes())
    with _gaps_lock:
        if _GAPS.pop(key, None) is None:
            _gaps_bytes[0] += len(key[1])
        _GAPS[key] = gaps
        while _gaps_bytes[0] > GAPS_BYTES_MAX:
            oldest = next(iter(_GAPS))
            del _GAPS[oldest]
            _gaps_bytes[0] -= len(oldest[1])


@protected
def _take(g: L.ShardGeometry, index: L.IndexArray) -> Gaps:
    """``index``'s gaps: from :data:`_GAPS` (taken out: the index is about
    to be replaced), else :func:`gaps_of`."""
    key = (g, index.tobytes())
    if key in _GAPS:
        with _gaps_lock:
            gaps = _GAPS.pop(key, None)
            if gaps is not None:
                _gaps_bytes[0] -= len(key[1])
                return gaps
    return gaps_of(index, g)


def _add(sizes: list[int], offsets: list[int], size: int, start: int) -> None:
    """Put the gap ``(size, start)`` in its place by length, then start."""
    k = bisect_left(sizes, size)
    while k < len(sizes) and sizes[k] == size and offsets[k] < start:
        k += 1
    sizes.insert(k, size)
    offsets.insert(k, start)


def _remove(sizes: list[int], offsets: list[int], size: int, start: int) -> None:
    """Take the gap ``(size, start)`` (there) out."""
    k = bisect_left(sizes, size)
    while offsets[k] != start:
        k += 1
    del sizes[k], offsets[k]


def repointed[T: Sized](
    g: L.ShardGeometry, size: int, index: L.IndexArray, new: Sequence[tuple[int, T | None]]
) -> tuple[list[tuple[int, list[T]]], L.IndexArray] | None:
    """Where ``new`` goes in a compressed shard of ``size`` bytes with
    ``index`` (not changed): ``new`` holds each chunk's place in the shard (C
    order of its coordinates) and its encoded bytes (None: dropped, as zarr
    drops a chunk of fill values). Each chunk goes into the smallest gap of
    dead space that holds it (the lowest of equal ones: :class:`Gaps`,
    bytes no chunk of the stored index points at, so never the chunks this
    write replaces), else after the last live chunk. Returns the writes
    (offset and the chunks written back to back from there, in byte order)
    and the re-pointed index; None when they do not fit before the index or
    the dead bytes would grow past :data:`COMPACT_DEAD_RATIO` of the live
    ones (:func:`fits_in_place`): the shard is compacted instead. Shared by
    the pipeline and ``ShardWriter``'s compressed fast path, so both lay a
    shard out alike. The new index's gaps are kept (see the design note)."""
    new_index = index.copy()
    gaps = _take(g, index)
    live = gaps.live
    keep = gaps.starts is not None and len({j for j, _ in new}) == len(new)  # (each once)
    starts = list(gaps.starts) if keep and gaps.starts is not None else []
    ends = list(gaps.ends) if keep and gaps.ends is not None else []
    rows = new_index.reshape(-1, 2)  # a view: rows in C order of chunk coordinates
    replaced = 0
    freed: list[tuple[int, int]] = []
    for j, _ in new:
        offset, nbytes = rows[j].tolist()
        if not (offset == L.EMPTY and nbytes == L.EMPTY):
            replaced += nbytes
            freed.append((offset, nbytes))
    kept = [(j, data) for j, data in new if data is not None]
    # The gaps by length, then start: best fit by bisection, a microsecond a chunk.
    sizes, offsets = list(gaps.sizes), list(gaps.offsets)
    at = gaps.end
    placed: list[tuple[int, T]] = []
    for j, data in sorted(kept, key=lambda jd: -len(jd[1])):  # largest first
        n = len(data)
        k = bisect_left(sizes, n) if n else len(sizes)
        if k < len(sizes):  # the smallest gap that holds it
            gap, offset = sizes.pop(k), offsets.pop(k)
            if gap > n:
                _add(sizes, offsets, gap - n, offset + n)
            if keep:  # (the gap's start moves, or the gap goes)
                i = bisect_left(starts, offset)
                if gap > n:
                    starts[i] = offset + n
                else:
                    del starts[i], ends[i]
        else:
            offset, at = at, at + n
            keep = keep and n > 0
        rows[j] = (offset, n)
        placed.append((offset, data))
        live += n
    for j, dropped in new:
        if dropped is None:
            rows[j] = (L.EMPTY, L.EMPTY)
    if not fits_in_place(g, size, at, live - replaced):
        return None
    if keep:
        gaps = Gaps(at, live - replaced, sizes, offsets, starts, ends)
        _keep(g, new_index, _next_gaps(gaps, freed))
    writes: list[tuple[int, list[T]]] = []
    reach = -1
    for offset, data in sorted(placed, key=itemgetter(0)):
        if offset == reach:
            writes[-1][1].append(data)
        else:
            writes.append((offset, [data]))
        reach = offset + len(data)
    return writes, new_index


def _next_gaps(gaps: Gaps, freed: list[tuple[int, int]]) -> Gaps:
    """The gaps of the index :func:`repointed` made from a plain one: in
    ``gaps``, what is left of the old gaps once the new chunks took their
    places, and the end and live bytes after the write (its lists are
    repointed's own, changed here); ``freed`` the bytes of the chunks it
    replaced or dropped (each at least a byte, apart from every live chunk).
    Those join the gaps, merged with the gaps they touch; and a gap that
    reaches the end is no gap (the end moves back to its start)."""
    end, live, sizes, offsets, starts, ends = gaps
    assert starts is not None and ends is not None  # (a plain index's)
    for at, n in freed:
        s, e = at, at + n
        i = bisect_left(starts, s)  # (no gap starts inside [s, e): it was live)
        if i < len(starts) and starts[i] == e:  # a gap right after: merge
            _remove(sizes, offsets, ends[i] - e, e)
            e = ends[i]
            del starts[i], ends[i]
        if i and ends[i - 1] == s:  # a gap right before
            i -= 1
            _remove(sizes, offsets, s - starts[i], starts[i])
            s = starts[i]
            del starts[i], ends[i]
        starts.insert(i, s)
        ends.insert(i, e)
        _add(sizes, offsets, e - s, s)
    if ends and ends[-1] == end:
        s = starts.pop()
        ends.pop()
        _remove(sizes, offsets, end - s, s)
        end = s
    return Gaps(end, live, sizes, offsets, starts, ends)


def compacted[T: Sized](
    g: L.ShardGeometry,
    index: L.IndexArray | None,
    new: Mapping[tuple[int, ...], T | None],
    order: Sequence[tuple[int, ...]],
    most: int | None = None,
) -> tuple[int, list[tuple[int, T | Span]], L.IndexArray] | None:
    """A compressed shard compacted (see the design note): its live chunks
    (``index``, None: no shard yet) with ``new`` over them (bytes, or None
    for a chunk dropped) packed in ``order``, then free space. Returns the
    new size, the pieces (new bytes, or a Span of the stored shard to copy)
    and the new index, whose encoding the caller adds; None when no chunk
    is left (the shard goes).

    The free space is :data:`SLACK_RATIO` of the live bytes, at least
    :data:`MIN_SLACK_CHUNKS` times the largest chunk. ``most``
    (``_jobs.compact_most``): the most chunks the shard holds while compact
    (every chunk, compressed; a quarter of them less one for chunks of fixed
    size, laid out densely past it); the free space then also holds
    :data:`MIN_SLACK_CHUNKS` times as many chunks as are live, at their mean
    size, up to ``most`` chunks in all. A shard of 256 chunks filled one
    chunk at a time is rewritten whole four times where the ratio alone
    rewrites it ten times (compressed: made with room for 5 chunks,
    compacted at 6 (30), 31 (155) and 156 (256), with chunks of about one
    size) or eight (fixed size: made, compacted at 6 (30) and 31 (63), laid
    out densely at 64); its free space is still at most four times its live
    bytes, as a shard of one chunk's is by the ratio alone.
    """
    chunks: dict[tuple[int, ...], T | Span] = {}
    if index is not None:
        chunks.update((c, Span(*rng)) for c, rng in L.present_chunks(index).items())
    for coords, data in new.items():
        if data is None:
            chunks.pop(coords, None)
        else:
            chunks[coords] = data
    if not chunks:
        return None
    new_index = L.empty_index(g.chunks_per_shard)
    parts: list[tuple[int, T | Span]] = []
    offset = g.data_start
    largest = 0
    for coords in order:
        if (chunk := chunks.get(coords)) is None:
            continue
        n = chunk.end - chunk.start if isinstance(chunk, Span) else len(chunk)
        new_index[coords] = (offset, n)
        parts.append((offset, chunk))
        offset += n
        largest = max(largest, n)
    live = offset - g.data_start
    slack = max(int(live * SLACK_RATIO), MIN_SLACK_CHUNKS * largest)
    if most is not None:
        room = min(MIN_SLACK_CHUNKS * len(parts), most - len(parts))
        slack = max(slack, room * (live // len(parts)))
    return g.index_nbytes + live + slack, parts, new_index


def fits_in_place(g: L.ShardGeometry, size: int, end: int, live: int) -> bool:
    """Whether a compressed shard of ``size`` bytes whose chunks would end at
    ``end`` with ``live`` bytes of them live needs no compaction: the chunks
    fit before the index, and dead bytes stay within
    :data:`COMPACT_DEAD_RATIO` of the live ones."""
    return end <= g.data_end(size) and (end - g.data_start) - live <= COMPACT_DEAD_RATIO * live


def note_index_put_back(exc: BaseException, key: str, failure: BaseException | None) -> None:
    """Add to ``exc`` (a ``PartialWriteError`` of a re-pointed index written
    in place, part way) a note saying whether the old index was written
    back (``failure`` None: the shard reads as before the write, whose
    chunks went into space no chunk of it points at) or not."""
    if failure is None:
        exc.add_note(
            f"the index of {key!r} was written back as it was: the shard reads as before this write"
        )
    else:
        exc.add_note(
            f"writing the old index of {key!r} back failed too "
            f"({type(failure).__name__}: {failure}): the shard's index is torn "
            "and it cannot be read until the write is done again"
        )
