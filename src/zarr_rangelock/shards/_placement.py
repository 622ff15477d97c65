"""Where the chunks of a compressed shard go: into dead space, after the
data, or a compaction (path 2 of :mod:`~._jobs`' design note).

Pure arithmetic on a shard's decoded index (:mod:`~._layout`), shared by the
pipeline's jobs (:mod:`~._jobs`) and ``ShardWriter``'s compressed fast path
(:mod:`~._fastpaths`), so both lay a shard out alike. Nothing here does I/O
or takes a lock: the callers hold the shard's whole-key lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence, Sized
from operator import itemgetter

from ..store._rewrite import Span
from . import _layout as L

__all__ = [
    "COMPACT_DEAD_RATIO",
    "MIN_SLACK_CHUNKS",
    "SLACK_RATIO",
    "compacted",
    "fits_in_place",
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


def compacted[T: Sized](
    g: L.ShardGeometry,
    index: L.IndexArray | None,
    new: Mapping[tuple[int, ...], T | None],
    order: Sequence[tuple[int, ...]],
) -> tuple[int, list[tuple[int, T | Span]], L.IndexArray] | None:
    """A compressed shard compacted (see the design note): its live chunks
    (``index``, None: no shard yet) with ``new`` over them (bytes, or None
    for a chunk dropped) packed in ``order``, then free space. Returns the
    new size, the pieces (new bytes, or a Span of the stored shard to copy)
    and the new index, whose encoding the caller adds; None when no chunk
    is left (the shard goes)."""
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
    return g.index_nbytes + live + slack, parts, new_index


def repointed[T: Sized](
    g: L.ShardGeometry, size: int, index: L.IndexArray, new: Sequence[tuple[int, T | None]]
) -> tuple[list[tuple[int, list[T]]], L.IndexArray] | None:
    """Where ``new`` goes in a compressed shard of ``size`` bytes with
    ``index`` (not changed): ``new`` holds each chunk's place in the shard (C
    order of its coordinates) and its encoded bytes (None: dropped, as zarr
    drops a chunk of fill values). Each chunk goes into the smallest gap of
    dead space that holds it (:func:`~._layout.extent_and_gaps`: bytes
    no chunk of the stored index points at, so never the chunks this write
    replaces), else after the last live chunk. Returns the writes (offset and
    the chunks written back to back from there, in byte order) and the
    re-pointed index; None when they do not fit before the index or the dead
    bytes would grow past :data:`COMPACT_DEAD_RATIO` of the live ones
    (:func:`fits_in_place`): the shard is compacted instead. Shared by the
    pipeline and ``ShardWriter``'s compressed fast path, so both lay a shard
    out alike."""
    new_index = index.copy()
    end, live, starts, lengths = L.extent_and_gaps(index, g)
    rows = new_index.reshape(-1, 2)  # a view: rows in C order of chunk coordinates
    replaced = 0
    for j, _ in new:
        offset, nbytes = rows[j].tolist()
        if not (offset == L.EMPTY and nbytes == L.EMPTY):
            replaced += nbytes
    kept = [(j, data) for j, data in new if data is not None]
    # The gaps by length (then offset): best fit by bisection, a microsecond a chunk.
    sizes: list[int] = []
    offsets: list[int] = []
    if kept and len(lengths):
        by_size = lengths.argsort(kind="stable")
        sizes, offsets = lengths[by_size].tolist(), starts[by_size].tolist()
    at = end
    placed: list[tuple[int, T]] = []
    for j, data in sorted(kept, key=lambda jd: -len(jd[1])):  # largest first
        n = len(data)
        k = bisect_left(sizes, n) if n else len(sizes)
        if k < len(sizes):  # the smallest gap that holds it
            gap, offset = sizes.pop(k), offsets.pop(k)
            if gap > n:
                k = bisect_left(sizes, gap - n)
                sizes.insert(k, gap - n)
                offsets.insert(k, offset + n)
        else:
            offset, at = at, at + n
        rows[j] = (offset, n)
        placed.append((offset, data))
        live += n
    for j, dropped in new:
        if dropped is None:
            rows[j] = (L.EMPTY, L.EMPTY)
    if not fits_in_place(g, size, at, live - replaced):
        return None
    writes: list[tuple[int, list[T]]] = []
    reach = -1
    for offset, data in sorted(placed, key=itemgetter(0)):
        if offset == reach:
            writes[-1][1].append(data)
        else:
            writes.append((offset, [data]))
        reach = offset + len(data)
    return writes, new_index


def fits_in_place(g: L.ShardGeometry, size: int, end: int, live: int) -> bool:
    """Whether a compressed shard of ``size`` bytes whose chunks would end at
    ``end`` with ``live`` bytes of them live needs no compaction: the chunks
    fit before the index, and dead bytes stay within
    :data:`COMPACT_DEAD_RATIO` of the live ones."""
    return end <= g.data_end(size) and (end - g.data_start) - live <= COMPACT_DEAD_RATIO * live
