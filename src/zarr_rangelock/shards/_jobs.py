"""The write of one shard under its locks: the jobs of the shard write pipeline.

:class:`~zarr_rangelock.ShardWritePipeline` (:mod:`zarr_rangelock.shards._pipeline`)
plans one job per shard that a zarr ``write`` touches, lets each encode what
needs no lock (``prepare``), takes every job's locks in key order
(``acquire``) and then runs the writes those return. How the locks of several
shards are taken together, and how reads stay consistent, is in the
pipeline's design note; this module knows one shard at a time and never
imports the pipeline.

Design note
-----------
*Which path a shard takes* (one job per shard):

1. Inner codecs of fixed encoded size (``bytes``, optionally ``crc32c``): once
   at least :data:`DENSE_MIN_LIVE_RATIO` of its chunks hold data (from its
   first write on a store made with ``dense_shards=True``), the shard is
   kept *in-place writable*: every chunk present, at the offset and with the
   length the shard's own index gives, no overlaps. A shard that is not
   (missing, or compact with absent chunks, as stock zarr writes it) is
   rewritten once, densely, under an exclusive whole-key lock (a fill chunk
   of zero bytes is not written: the new value starts as zeros, and a
   LocalStore file keeps holes there until those chunks are written;
   :func:`densified`). After that a
   write takes exclusive range locks on exactly the chunks it touches: a
   whole chunk is one ``set_range``; a part of a chunk reads, merges and
   rewrites that chunk's range only. The index is never rewritten, so
   writers of different chunks run in parallel. A sparser shard stays
   compact and takes path 2 (a dense shard costs its full size on disk).
2. Variable-size inner chunks (compression): under the whole-key lock, read
   the index, write each new chunk into the smallest gap of dead space that
   holds it (bytes no chunk of the stored index points at: chunks superseded
   by earlier writes), else append it into free space between the data and
   the index (``end``) or after the data (``start``), then rewrite the index in
   place: ``O(chunk + index)`` bytes, not ``O(shard)`` (:func:`repointed`;
   this path's arithmetic is in :mod:`~._placement`).
   The bytes the stored index points at are never written, so until the
   index is rewritten the shard reads as before, and a write that fails or is
   killed before that leaves it as it was. The superseded bytes become dead
   space; rewrites of chunks with values of about the same size reuse it,
   and seldom compact. When the new chunks fit neither a gap nor the free
   space, or dead space would exceed :data:`COMPACT_DEAD_RATIO` of the live
   bytes, the shard is compacted: rewritten whole with its live chunks
   packed in the codec's ``subchunk_write_order`` and :data:`SLACK_RATIO`
   of the live bytes (at least :data:`MIN_SLACK_CHUNKS` chunks) reserved as
   free space, or room for four times as many chunks as are live where that
   is more, short of the most the shard holds compact
   (:func:`compact_most`; so a shard filling up is rewritten whole four
   times, not eight or ten: ``compacted``). The reserve makes compaction
   amortised ``O(chunk)`` per write. The rewrite names the new shard as
   pieces (``handle.rewrite``, ``store/_rewrite``): the kept chunks
   as ranges of the stored shard, which a LocalStore copies into a temporary
   file in the kernel and renames over the key, so a compaction holds the
   new chunks and the index, never the shard (a MemoryStore assembles the
   shard in memory, where it is anyway). The dense conversion of path 1
   rewrites the same way. All writers of the shard
   serialise on the whole-key lock, which is held for ``O(chunk + index)``
   I/O only; compression of whole chunks happens before it is taken (on
   the event loop's thread where the array's encodes are measured cheap,
   else in worker threads, split over the CPUs when there is enough of it:
   ``store._io.map_unless_cheap``).
3. Anything else with a sharding codec on a locked store (array-to-array or
   bytes-to-bytes codecs around the sharding codec, inner codecs that cannot
   run synchronously): zarr's own write of that shard, under the whole-key
   lock. Correct, not faster.

*Finding a chunk.* Offsets always come from the shard's own index, never from
an assumed chunk order. Path 1 must know the offsets before it can lock them,
so it first reads the size and the index without any lock (a guess), takes
the range locks the guess gives, then reads the size and index again and
starts over if they changed (after a few spoilt guesses it takes the whole
key instead). The second read needs no lock either: in path 1 the index and
the size change only under a whole-key lock, which cannot be granted while
this writer holds a range of the key. The decoded index is cached per key and
reused when the bytes read are identical, so a write re-reads the index but
does not re-decode or re-check it.

*Empty chunks.* The keys are stock zarr's: a shard is deleted when no chunk
is present in its index after a write, and a chunk is present unless the
last write of it was of fill values with ``write_empty_chunks`` False (zarr's
default; with it True a chunk of fill values is stored, and present). So a
write of fill values never creates a shard, and a shard left without chunks
is deleted. Compact shards drop fill chunks as zarr does. A dense shard
keeps a fill chunk's bytes in place (its layout needs every chunk) and says
which of its fill chunks stock zarr would not have in its *absent marks*
(``_layout``: written with the dense layout, one bit a chunk). An in-place
write cannot change them (its locks cover its chunks only), so a write that
dropped a chunk, or stored fill values into one with ``write_empty_chunks``
True, settles them under the whole-key lock once its own locks are gone
(``sweep``): it marks the chunks it dropped absent and those it stored
present, and deletes the shard if every chunk is then marked absent and
holds the fill chunk's bytes (a chunk marked absent but written with data
since is present: the bytes say so). Stock zarr reads the same values
either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import Buffer, NDBuffer, cpu
from zarr.core.chunk_utils import fill_value_or_default, merge_and_encode_chunk
from zarr.core.codec_pipeline import BatchedCodecPipeline

from .._errors import PartialWriteError
from ..store._io import Cost, map_unless_cheap
from ..store._rewrite import Span
from ..store._store import RangeLockedStore
from . import _layout as L
from ._fill import first_is_data
from ._known import (
    _VALID,
    _Peek,
    _read,
    current_index,
    current_valid,
    forget_index,
    left_compact,
    peek_shard,
    remember_index,
    remember_valid,
)
from ._placement import (
    COMPACT_DEAD_RATIO,
    MIN_SLACK_CHUNKS,
    SLACK_RATIO,
    compacted,
    note_index_put_back,
    repointed,
)

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest, ByteSetter
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import BufferPrototype
    from zarr.core.indexing import ChunkProjection, SelectorTuple

__all__ = [
    "COMPACT_DEAD_RATIO",
    "DENSE_MIN_LIVE_RATIO",
    "MIN_SLACK_CHUNKS",
    "SLACK_RATIO",
    "compact_most",
    "stays_compact",
]

DENSE_MIN_LIVE_RATIO = 0.25
"""A shard of fixed-size inner chunks is laid out densely (every chunk at a
fixed offset, written in place under range locks) once at least this fraction
of its chunks hold data; below it, it stays compact, as stock zarr writes it,
and takes the append path of compressed chunks. A dense shard costs its full
size on disk, so one written chunk in a shard of 256 does not make it dense
(unless the store was made with ``dense_shards=True``: :func:`stays_compact`)."""


def stays_compact(store: RangeLockedStore, g: L.ShardGeometry, live: int) -> bool:
    """Whether a shard of fixed-size chunks with ``live`` chunks holding data
    is kept compact rather than laid out densely: while fewer than
    :data:`DENSE_MIN_LIVE_RATIO` of its chunks are live, but never on a store
    made with ``dense_shards=True`` (there its first write lays it out)."""
    return not store.dense_shards and live < DENSE_MIN_LIVE_RATIO * g.n_chunks


def compact_most(store: RangeLockedStore, g: L.ShardGeometry) -> int | None:
    """The most chunks a shard holds while compact (``compacted``'s
    ``most``: the free space a compaction reserves): every chunk for chunks
    of variable size, which have no dense layout; for fixed-size chunks,
    as many as :func:`stays_compact` keeps compact (None on a store made
    with ``dense_shards``, where such a shard is never compact)."""
    if g.chunk_nbytes is None:
        return g.n_chunks
    if store.dense_shards:
        return None
    return math.ceil(DENSE_MIN_LIVE_RATIO * g.n_chunks) - 1


_WHOLE_KEY: list[tuple[int, int | None]] = [(0, None)]
_MAX_GUESSES = 4

WriteItem = tuple["ByteSetter", "ArraySpec", "SelectorTuple", "SelectorTuple", bool]


@dataclass(frozen=True, slots=True)
class SpecFacts:
    """What writes and reads of shards need of a sharding codec and a shard
    spec, worked out once per array (``_pipeline._facts`` caches them): zarr
    rebuilds the spec for every write, and deriving these from it (hashing
    it, among others) cost a tenth of a chunk write."""

    transform: Any
    """zarr's synchronous transform of the inner codec chain."""
    chunk_spec: ArraySpec
    """The inner chunks' spec."""
    geometry: L.ShardGeometry
    plain: np.dtype[Any] | None
    """The dtype whose native C-order bytes the inner chunks are
    (:func:`~._layout.plain_bytes`), or None."""
    dtype: np.dtype[Any]
    """The inner chunks' native dtype."""
    head: bytes | None
    """:func:`~._fill.fill_head` of the chunks, None where empty chunks are kept
    (``write_empty_chunks``) or there is no shortcut."""
    encode_cost: Cost = dataclasses.field(default_factory=Cost)
    """What encoding one chunk takes: cheap ones are encoded on the event
    loop's thread, not in a worker (:func:`~..store._io.map_unless_cheap`)."""
    decode_cost: Cost = dataclasses.field(default_factory=Cost)
    """What decoding one chunk takes (:func:`~._reads.read_packed`), alike."""


@dataclass(kw_only=True)
class _Job:
    """The write of one shard: plan, lock, then run."""

    # The ShardWritePipeline, typed by its base: this module must not import the
    # pipeline (it imports the jobs), and only zarr's own write is called on it.
    pipeline: BatchedCodecPipeline
    store: RangeLockedStore
    key: str
    spec: ArraySpec

    async def prepare(self) -> None:
        """Work that needs no lock (encoding whole chunks)."""

    async def acquire(
        self, held: contextlib.AsyncExitStack, timeout: float | None
    ) -> Callable[[], Awaitable[None]]:
        """Take this shard's locks (pushed on ``held``) and return the write to run
        under them; :class:`LockTimeout` after ``timeout`` seconds of waiting."""
        raise NotImplementedError

    async def _lock(
        self,
        held: contextlib.AsyncExitStack,
        ranges: Sequence[tuple[int, int | None]],
        timeout: float | None,
    ) -> Any:
        return await held.enter_async_context(
            self.store.locked(self.key, list(ranges), timeout=timeout)
        )


@dataclass(kw_only=True)
class _StockJob(_Job):
    """zarr's own write of one shard (or, in an array that is not sharded, of
    one chunk), under the whole-key lock."""

    item: WriteItem
    value: NDBuffer
    drop_axes: tuple[int, ...]

    async def acquire(
        self, held: contextlib.AsyncExitStack, timeout: float | None
    ) -> Callable[[], Awaitable[None]]:
        handle = await self._lock(held, _WHOLE_KEY, timeout)
        _, spec, chunk_sel, out_sel, is_complete = self.item
        item = (_HeldByteSetter(handle), spec, chunk_sel, out_sel, is_complete)
        pipeline = self.pipeline

        async def run() -> None:
            await BatchedCodecPipeline.write_batch(pipeline, [item], self.value, self.drop_axes)

        return run


@dataclass(kw_only=True)
class _ShardJob(_Job):
    """Common state of the two shard-aware paths."""

    codec: ShardingCodec
    facts: SpecFacts
    """What the write needs of the codec and the spec (cached by the pipeline)."""
    projections: list[ChunkProjection]
    value: NDBuffer
    encoded: dict[tuple[int, ...], Buffer | None] = dataclasses.field(default_factory=dict)
    written_index: tuple[int, L.IndexArray] | None = None
    """The size and index this write left the shard with (set when it
    re-pointed or compacted it), for :data:`_INDEXES` once the write has
    committed."""

    def remember_index(self, committed: bool) -> None:
        """After the call's writes, its locks still held: keep the index this
        write left (if it committed), under the key's change stamp as the
        commit left it (a journaled write stamps the key when it applies), or
        forget any kept index of the shard (if it failed)."""
        if committed and self.written_index is not None:
            remember_index(self.store, self.key, self.geometry, *self.written_index)
        elif not committed:
            forget_index(self.store, self.key, self.geometry)

    @property
    def geometry(self) -> L.ShardGeometry:
        return self.facts.geometry

    @property
    def transform(self) -> Any:
        return self.facts.transform

    @property
    def chunk_spec(self) -> ArraySpec:
        """The inner chunks' spec (fixed for the job)."""
        return self.facts.chunk_spec

    @property
    def whole_shard(self) -> bool:
        """Whether the write replaces every chunk of the shard completely."""
        return len(self.projections) == self.geometry.n_chunks and all(
            p[3] for p in self.projections
        )

    def _encode(
        self, existing: Buffer | None, projection: ChunkProjection, spec: ArraySpec
    ) -> Buffer | None:
        """Merge this write's part of one chunk into ``existing`` (None: fill) and
        encode it; None when the chunk is empty and empty chunks are dropped.

        zarr's ``merge_and_encode_chunk``, except that a whole chunk whose
        first element shows it holds data (:func:`~._fill.first_is_data`) is encoded
        without zarr's element-by-element empty check: the bytes zarr gives."""
        _, chunk_sel, out_sel, is_complete = projection
        if is_complete and existing is None and self.value.shape != ():
            selected = self.value[out_sel]
            facts = self.facts
            if (
                facts.head is not None
                and selected.shape == spec.shape
                and first_is_data(selected.as_ndarray_like(), facts.dtype, facts.head)
            ):
                encoded: Buffer | None = self.transform.encode_chunk(selected, spec)
                return encoded
        return merge_and_encode_chunk(
            existing,
            self.value,
            chunk_spec=spec,
            chunk_selection=chunk_sel,
            out_selection=out_sel,
            is_complete=is_complete,
            drop_axes=(),
            decode=self.transform.decode_chunk,
            encode=self.transform.encode_chunk,
        )

    async def _index(self, handle: Any) -> tuple[int, L.IndexArray | None]:
        """Under the whole-key lock: :meth:`_read_index`, or the index this
        process last wrote to the shard if its change stamp says it is still
        the shard's (see :data:`_INDEXES`); a copy the caller may change."""
        if self.whole_shard:
            return 0, None
        known = current_index(self.store, self.key, self.geometry)
        if known is not None:
            return known[0], known[1].copy()
        return await self._read_index(handle)

    async def _read_index(self, handle: Any) -> tuple[int, L.IndexArray | None]:
        """Under the whole-key lock: the shard's size and decoded index
        (``(0, None)`` when there is no shard yet).

        A shard too short for its index, or whose index fails its checksum,
        raises ``ValueError``, as stock zarr's partial write does: nothing is
        written over data that cannot be read.
        """
        g = self.geometry
        try:
            size = await handle.getsize()
        except FileNotFoundError:
            return 0, None
        ibuf = _read(self.store, self.key, *g.index_range(size))
        if ibuf is None or len(ibuf) != g.index_nbytes:
            raise ValueError(
                f"the shard {self.key!r} is {size} bytes, too short for its "
                f"{g.index_nbytes}-byte index"
            )
        return size, await L.decode_index_async(self.codec, ibuf, g.chunks_per_shard)

    async def _new_chunks(self, index: L.IndexArray | None) -> dict[tuple[int, ...], Buffer | None]:
        """Under the whole-key lock: encoded bytes for every chunk this write
        touches (None: the chunk is empty and dropped)."""
        new = dict(self.encoded)
        partial = [p for p in self.projections if p[0] not in new]
        if not partial:
            return new
        existing: list[Buffer | None] = []
        for p in partial:
            rng = None if index is None else L.chunk_byte_range(index, p[0])
            existing.append(None if rng is None else _read(self.store, self.key, *rng))
        spec = self.chunk_spec
        encoded = await map_unless_cheap(
            lambda ep: self._encode(*ep, spec),
            list(zip(existing, partial, strict=True)),
            self.facts.encode_cost,
        )
        new.update((p[0], e) for p, e in zip(partial, encoded, strict=True))
        return new

    async def _append(
        self,
        handle: Any,
        size: int,
        index: L.IndexArray | None,
        new: dict[tuple[int, ...], Buffer | None],
    ) -> None:
        """Under the whole-key lock: write ``new`` into dead space or the free
        space and re-point the index (:func:`repointed`), or compact the shard
        when they do not fit."""
        g = self.geometry
        plan = (
            None
            if index is None
            else repointed(g, size, index, [(g.place(c), d) for c, d in new.items()])
        )
        if plan is None:
            await self._compact(handle, index, new)
            return
        writes, new_index = plan
        assert index is not None  # (plan is None without one)
        await handle._set_ranges([(_joined(pieces), at) for at, pieces in writes])
        if any(d is None for d in new.values()) and not bool(L.present(new_index).any()):
            await handle.delete()  # every chunk of the shard dropped
            return
        index_bytes = await L.encode_index_async(self.codec, new_index)
        # The index changes without a whole-value write: a new change stamp
        # tells every process (and lets the next writer reuse the index),
        # given before the write, so no index kept under the old stamp looks
        # current once it is done, however the call ends (_fastpaths._append).
        self.store._backend.bump(self.key)
        at = g.index_range(size)[0]
        try:
            await handle.set_range(index_bytes, at)
        except PartialWriteError as exc:  # half an index: write the old one back
            failure = None
            try:
                await handle.set_range(await L.encode_index_async(self.codec, index), at)
            except OSError as again:
                failure = again
            note_index_put_back(exc, self.key, failure)
            raise
        self.written_index = (size, new_index)

    async def _compact(
        self,
        handle: Any,
        index: L.IndexArray | None,
        new: dict[tuple[int, ...], Buffer | None],
    ) -> None:
        """Rewrite the shard whole: live chunks packed, then free space.

        The kept chunks are copied from the stored shard by ``handle.rewrite``
        (a LocalStore streams them through a temporary file: memory stays
        bounded by the new chunks and the index, whatever the shard's size;
        a MemoryStore assembles the shard in memory). The bytes are those
        :func:`~._layout.assemble_shard` gives for the same chunks.
        """
        g = self.geometry
        layout = compacted(g, index, new, chunk_order(self.codec, g), compact_most(self.store, g))
        if layout is None:
            if await handle.exists():
                await handle.delete()
            return
        total, parts, new_index = layout
        index_bytes = await L.encode_index_async(self.codec, new_index)
        parts.append((g.index_range(total)[0], index_bytes))
        await handle.rewrite(total, parts)
        self.written_index = (total, new_index.copy())


def densified[T](
    codec: ShardingCodec,
    g: L.ShardGeometry,
    key: str,
    index: L.IndexArray | None,
    stored: int | None,
    new: Mapping[tuple[int, ...], T | None],
    fill: Buffer,
    marks: Sequence[bool] | None = None,
) -> tuple[list[tuple[int, T | Span | Buffer]], _Peek]:
    """A shard of fixed-size chunks laid out densely: the chunks of
    ``index`` that ``new`` does not replace, copied from the shard as stored
    (``stored`` bytes; None: no such chunk, nothing copied), ``new`` over
    them, ``fill`` (the encoded fill chunk) where no chunk is, in the codec's
    order, the absent marks of those if any (see ``_layout``; ``marks``, one
    bool a chunk in C order, instead where given), and the
    index. Returns the pieces of the new value (``g.dense_nbytes`` bytes,
    plus ``g.marks_nbytes`` with marks: the size is the peek's; a rewrite
    starts from zeros, so a fill chunk of zero bytes, zarr's default, is
    left out: on a LocalStore its slots stay holes until written) and its
    validated index.

    Raises
    ------
    ValueError
        If a chunk of ``index`` is not one chunk's size or lies past the
        stored bytes (checked when anything is copied).
    """
    assert g.chunk_nbytes is not None
    chunks: dict[tuple[int, ...], T | Span | None] = {}
    if index is not None and stored is not None:
        for coords, rng in L.present_chunks(index).items():
            if rng[1] - rng[0] != g.chunk_nbytes or rng[1] > stored:
                raise ValueError(
                    f"chunk {coords} of {key!r} is {rng[1] - rng[0]} bytes at "
                    f"{rng}, expected {g.chunk_nbytes}"
                )
            chunks[coords] = Span(*rng)
    chunks.update(new)
    dense = L.dense_index(g, chunk_order(codec, g))
    zeros = not bool(fill.as_numpy_array().any())
    parts: list[tuple[int, T | Span | Buffer]] = []
    absent: list[bool] = []
    # (C order, as np.ndindex, without its cost or a numpy lookup a chunk)
    every = itertools.product(*map(range, g.chunks_per_shard))
    for coords, offset in zip(every, dense[..., 0].ravel().tolist(), strict=True):
        c = chunks.get(coords)
        absent.append(c is None)
        if c is not None or not zeros:
            parts.append((offset, fill if c is None else c))
    size = g.dense_nbytes
    if marks is not None:
        absent = list(marks)
    if any(absent):  # fill chunks standing in for absent ones: say which
        parts.append((g.marks_start, L.encode_marks(g, absent)))
        size += g.marks_nbytes
    index_bytes = L.encode_index(codec, dense)
    parts.append((g.index_range(size)[0], index_bytes))
    peek = _Peek(
        size=size,
        index_bytes=index_bytes.to_bytes(),
        index=dense,
        writable=L.in_place_writable(dense, g, size),
    )
    return parts, peek


def chunk_order(codec: ShardingCodec, g: L.ShardGeometry) -> list[tuple[int, ...]]:
    """The codec's physical chunk order (any order is valid: readers follow
    the index; this only keeps zarr's locality choice)."""
    order = getattr(codec, "_subchunk_order_iter", None)
    if order is None:  # pragma: no cover - older zarr
        return list(np.ndindex(g.chunks_per_shard))
    return [tuple(c) for c in order(g.chunks_per_shard, codec.subchunk_write_order)]


def _joined(pieces: Sequence[Buffer]) -> Buffer:
    """Chunks to write back to back, as one Buffer."""
    if len(pieces) == 1:
        return pieces[0]
    return cpu.Buffer(np.frombuffer(b"".join(p.as_buffer_like() for p in pieces), dtype=np.uint8))


@dataclass(kw_only=True)
class _DenseJob(_ShardJob):
    """Fixed-size inner chunks: in place under range locks once the shard is
    dense; before that (few chunks live), appended as for compressed chunks."""

    marks: dict[tuple[int, ...], bool] = dataclasses.field(default_factory=dict)
    """The absent marks an in-place write must settle (see :meth:`sweep`):
    True for a chunk it stored as the fill chunk where zarr drops it (the
    shard may now have no chunk), False for one of fill values it stored
    with ``write_empty_chunks`` True (present, as stock zarr stores it)."""
    written_peek: _Peek | None = None
    """The dense index this write left the shard with (set when it laid the
    shard out densely), for :data:`_VALID` once the write has committed: the
    next chunk write needs no index read."""

    def remember_index(self, committed: bool) -> None:
        super().remember_index(committed)
        vk = (self.store._state.uid, self.key, self.geometry)
        if committed and self.written_peek is not None:
            remember_valid(vk, self.store._state.generation(self.key), self.written_peek)
        elif not committed:
            _VALID.pop(vk, None)

    async def prepare(self) -> None:
        spec = self.chunk_spec
        for p in self.projections:
            if p[3]:
                self.encoded[p[0]] = self._encode(None, p, spec)

    async def acquire(
        self, held: contextlib.AsyncExitStack, timeout: float | None
    ) -> Callable[[], Awaitable[None]]:
        # A guess is re-read under the lock; after a few guesses spoilt by
        # concurrent whole-key writes, take the whole key (always correct).
        if not self.whole_shard:
            state = self.store._state
            valid_key = (state.uid, self.key, self.geometry)
            for _ in range(_MAX_GUESSES):
                known = _VALID.get(valid_key)
                if known is None and left_compact(self.store, self.key, self.geometry):
                    break  # as this process left it: no index to read for that
                peek = known[1] if known is not None else await self._peek()
                if peek is None or not peek.writable:
                    break
                ranges = self._chunk_ranges(peek.index)
                attempt = contextlib.AsyncExitStack()
                handle = await self._lock(attempt, ranges, timeout)
                try:
                    token = state.generation(self.key)
                    unchanged = (known is not None and known[0] == token) or (
                        await self._unchanged(handle, peek)
                    )
                except BaseException:
                    await attempt.aclose()
                    raise
                if unchanged:
                    remember_valid(valid_key, token, peek)
                    held.push_async_exit(attempt)
                    return functools.partial(self._write_in_place, handle, peek.index)
                _VALID.pop(valid_key, None)
                await attempt.aclose()  # a whole-key writer got in between: look again
        handle = await self._lock(held, _WHOLE_KEY, timeout)
        return functools.partial(self._rewrite, handle)

    def _chunk_ranges(self, index: L.IndexArray) -> list[tuple[int, int | None]]:
        ranges: list[tuple[int, int | None]] = []
        for coords, *_ in self.projections:
            rng = L.chunk_byte_range(index, coords)
            assert rng is not None  # in_place_writable: every chunk present
            ranges.append(rng)
        return ranges

    async def _peek(self) -> _Peek | None:
        """Read the size and the index without taking a lock: only a guess at
        which ranges to lock, checked again under the lock by :meth:`_unchanged`.
        A guess read across a concurrent whole-key write fails to decode (the
        whole-key path then takes over) or fails that check (we look again)."""
        return peek_shard(self.store, self.codec, self.geometry, self.key)

    async def _unchanged(self, handle: Any, peek: _Peek) -> bool:
        """With the range locks held: are the size and index still what ``peek`` saw?

        Reads the index without a lock, which is safe here: on this path the
        index and the size change only under a whole-key lock, which cannot be
        granted while we hold a range of the key.
        """
        try:
            size = await handle.getsize()
        except FileNotFoundError:
            return False
        if size != peek.size:
            return False
        buf = _read(self.store, self.key, *self.geometry.index_range(size))
        return buf is not None and buf.to_bytes() == peek.index_bytes

    async def _write_in_place(self, handle: Any, index: L.IndexArray) -> None:
        """Under the shard's lock(s): encode every chunk of the write (merging
        part-chunks into the chunks stored), then write them in place. All
        are encoded before any is written, so a chunk whose encode fails
        leaves the shard all old, as stock zarr's whole-shard encode does;
        the absent marks to settle are those of the chunks written."""
        spec = self.chunk_spec
        size = self.geometry.chunk_nbytes
        writes: list[tuple[tuple[int, ...], Buffer, int, bool | None]] = []
        for p in self.projections:
            rng = L.chunk_byte_range(index, p[0])
            assert rng is not None
            start, end = rng
            if p[0] in self.encoded:
                data = self.encoded[p[0]]
            else:
                data = self._encode(_read(self.store, self.key, start, end), p, spec)
            mark: bool | None = None
            if data is None:  # empty, and zarr would drop it: a dense shard keeps fill
                data, mark = self._fill_bytes, True
            elif spec.config.write_empty_chunks and self._is_fill(data):
                mark = False  # stored, as zarr stores it: present
            if len(data) != size:
                raise RuntimeError(
                    f"inner chunk {p[0]} of {self.key!r} encoded to {len(data)} bytes, "
                    f"expected {size}"
                )
            writes.append((p[0], data, start, mark))
        for coords, data, start, mark in writes:
            await handle.set_range(data, start)
            if mark is not None:
                self.marks[coords] = mark

    async def _rewrite(self, handle: Any) -> None:
        """Under the whole-key lock: write in place if the shard is dense; else
        keep it compact (append, as for compressed chunks) while
        :func:`stays_compact` (fewer than :data:`DENSE_MIN_LIVE_RATIO` of its
        chunks live, on a store without ``dense_shards``), else lay it out
        densely; delete it when no chunk is left."""
        g = self.geometry
        if not self.whole_shard:
            # Under the whole-key lock an unchanged token proves the validated
            # index current (see _VALID): no index to read and decode.
            known = current_valid(self.store, self.key, g)
            if known is not None:
                await self._write_in_place(handle, known.index)
                return
        size, index = await self._index(handle)
        if index is not None and L.in_place_writable(index, g, size):
            # A fill chunk written here is swept once the locks are gone
            # (sweep): a journaled write is not applied before then.
            await self._write_in_place(handle, index)
            return
        new = await self._new_chunks(index)
        data = sum(chunk is not None for chunk in new.values())
        live = L.live_after(index, [g.place(c) for c in new], data)
        if live == 0:
            if (index is not None or self.whole_shard) and await handle.exists():
                await handle.delete()
            return
        if stays_compact(self.store, g, live):
            await self._append(handle, size, index, new)
            return
        await self._to_dense(handle, index, new)

    async def _to_dense(
        self,
        handle: Any,
        index: L.IndexArray | None,
        new: dict[tuple[int, ...], Buffer | None],
    ) -> None:
        """Rewrite the shard whole in the dense layout, fill chunks included.

        Kept chunks are copied from the stored shard by ``handle.rewrite``
        (streamed on a LocalStore, see :meth:`_compact`)."""
        g = self.geometry
        kept = index is not None and any(c not in new for c in L.present_chunks(index))
        stored = await handle.getsize() if kept else None
        parts, self.written_peek = densified(
            self.codec, g, self.key, index, stored, new, self._fill_bytes
        )
        await handle.rewrite(self.written_peek.size, parts)

    async def sweep(self) -> None:
        """After the write's locks are gone: settle the absent marks of the
        chunks an in-place write stored as fill (:attr:`marks`), and delete
        the shard if no chunk is left present (stock zarr deletes such a
        shard). Takes the whole-key lock, so it sees a settled shard; a
        writer that got in first and stored data keeps the shard.

        A shard without marks has every chunk present: one whose chunk was
        dropped gets marks (rewritten whole, once: they need room); one
        whose chunks were stored as fill needs none."""
        marks, self.marks = self.marks, {}
        if not marks:
            return
        g = self.geometry
        async with self.store.locked(self.key, _WHOLE_KEY) as handle:
            size, index = await self._read_index(handle)
            if index is None or not L.in_place_writable(index, g, size):
                return
            rng = L.marks_range(g, index, size)
            raw = None if rng is None else _read(self.store, self.key, *rng)
            old = None if raw is None else L.decode_marks(g, raw.to_bytes())
            if old is None and not any(marks.values()):
                return  # every chunk present, as the index says
            absent = np.zeros(g.n_chunks, dtype=bool) if old is None else old.copy()
            for coords, mark in marks.items():
                absent[g.place(coords)] = mark
            if bool(absent.all()) and await self._all_fill(index):
                await handle.delete()
                return
            if old is not None and rng is not None:
                if not np.array_equal(absent, old):
                    await handle.set_range(L.encode_marks(g, absent), rng[0])
                return
            await self._add_marks(handle, size, index, absent)

    async def _add_marks(
        self, handle: Any, size: int, index: L.IndexArray, absent: npt.NDArray[np.bool_]
    ) -> None:
        """Under the whole-key lock: rewrite a dense shard without marks
        (every chunk present) in the dense layout, every chunk copied as it
        is stored now, with ``absent`` as its marks. The chunks marked absent
        held the fill chunk's bytes when this write let go of them; one
        written with data since keeps it (never fill written over it: that
        lost the later write), and its bytes say it is present (``sweep``)."""
        parts, peek = densified(
            self.codec, self.geometry, self.key, index, size, {}, self._fill_bytes,
            marks=absent.tolist(),
        )  # fmt: skip
        await handle.rewrite(peek.size, parts)

    async def _all_fill(self, index: L.IndexArray) -> bool:
        """Under the whole-key lock of a dense shard: whether every chunk
        holds the encoded fill chunk. Reads chunk by chunk and stops at the
        first that does not, so a shard with data costs little.

        Bytes, not values: every write into a dense shard stores a chunk
        that zarr drops (``chunk_is_empty`` of the value written) as the
        encoded fill chunk, so other bytes are a chunk stock zarr keeps, even
        where they decode to the fill value (a -0.0 that a ``scale_offset``
        codec decodes as 0.0: stock zarr keeps a chunk its write does not
        touch without decoding it)."""
        for coords in sorted(
            np.ndindex(self.geometry.chunks_per_shard), key=lambda c: int(index[c][0])
        ):
            rng = L.chunk_byte_range(index, coords)
            assert rng is not None
            data = _read(self.store, self.key, *rng)
            if data is None or not self._is_fill(data):
                return False
        return True

    def _is_fill(self, data: Buffer) -> bool:
        """Whether an encoded chunk is the fill chunk's bytes (one byte
        first: data seldom shares it)."""
        raw = data.as_numpy_array().view(np.uint8).reshape(-1)
        fill = self._fill_bytes.as_numpy_array().view(np.uint8).reshape(-1)
        return raw.size == fill.size and raw[-1] == fill[-1] and bool(np.array_equal(raw, fill))

    @functools.cached_property
    def _fill_bytes(self) -> Buffer:
        """One inner chunk of fill value, encoded."""
        spec = self.chunk_spec
        array = spec.prototype.nd_buffer.create(
            shape=spec.shape,
            dtype=spec.dtype.to_native_dtype(),
            order=spec.order,
            fill_value=fill_value_or_default(spec),
        )
        data = self.transform.encode_chunk(array, spec)
        assert data is not None
        return data  # type: ignore[no-any-return]


@dataclass(kw_only=True)
class _AppendJob(_ShardJob):
    """Variable-size inner chunks: append and re-point the index, or compact."""

    async def prepare(self) -> None:
        spec = self.chunk_spec
        complete = [p for p in self.projections if p[3]]
        if complete:
            encoded = await map_unless_cheap(
                lambda p: self._encode(None, p, spec),
                complete,
                self.facts.encode_cost,
            )
            self.encoded.update((p[0], e) for p, e in zip(complete, encoded, strict=True))

    async def acquire(
        self, held: contextlib.AsyncExitStack, timeout: float | None
    ) -> Callable[[], Awaitable[None]]:
        handle = await self._lock(held, _WHOLE_KEY, timeout)
        return functools.partial(self._write, handle)

    async def _write(self, handle: Any) -> None:
        size, index = await self._index(handle)
        await self._append(handle, size, index, await self._new_chunks(index))


@dataclass(frozen=True)
class _HeldByteSetter:
    """A zarr ByteSetter that goes through a held ``locked()`` handle, so zarr's
    own shard write runs under our whole-key lock without re-locking."""

    handle: Any

    async def get(
        self, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        result: Buffer | None = await self.handle.get(prototype=prototype, byte_range=byte_range)
        return result

    async def set(self, value: Buffer) -> None:
        await self.handle.set(value)

    async def delete(self) -> None:
        await self.handle.delete()

    async def set_if_not_exists(self, default: Buffer) -> None:
        if not await self.handle.exists():
            await self.handle.set(default)
