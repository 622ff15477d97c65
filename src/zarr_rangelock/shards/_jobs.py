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
   killed before that leaves it as it was. In a journal transaction the
   places the new index stops pointing at are its read witnesses
   (:func:`_witness_freed`: a replay of its record leaves the shard to a
   writer that wrote there since; a compaction or a write of the whole
   shard witnesses the stored index instead,
   :meth:`_ShardJob._witness_stored_index`: a chunk appended to the shard
   since re-points it). The superseded bytes become dead space; rewrites
   of chunks with values of about the same size reuse it,
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

*Finding a chunk* and *empty chunks* (path 1, the absent marks): in
:mod:`~._dense`, with its job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import Buffer, NDBuffer, cpu
from zarr.core.chunk_utils import merge_and_encode_chunk
from zarr.core.codec_pipeline import BatchedCodecPipeline

from .._errors import PartialWriteError
from ..locks._ki import protected
from ..store._io import Cost, codecs_apart, map_unless_cheap
from ..store._store import RangeLockedStore
from . import _layout as L
from ._fill import first_is_data
from ._known import (
    _read,
    current_index,
    forget_index,
    remember_index,
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

    # Protected from KeyboardInterrupt (``locks/_ki``): enter_async_context
    # has a check between the block's entry and the push of its exit, where
    # an interrupt deferred in the entry was raised, and the lock stayed held.
    @protected
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
            with codecs_apart():  # (its codecs' blocking work, under the lock)
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
            if self.store.durability.startswith("journal"):
                await self._witness_stored_index(handle, None if index is None else size)
            await self._compact(handle, index, new)
            return
        writes, new_index = plan
        assert index is not None  # (plan is None without one)
        if self.store.durability.startswith("journal"):
            _witness_freed(handle, index, new, size)
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

    async def _witness_stored_index(self, handle: Any, size: int | None) -> None:
        """In a journal transaction: the stored shard's index (``size``
        bytes, or looked up when None: a write of the whole shard reads no
        index) is a read witness of the compaction or whole write that
        replaces the shard. A writer that appended to the shard after this
        one died with its record complete re-pointed that index in place (the
        same file), and a replay must then not rename this write's file over
        it."""
        if size is None:
            try:
                size = await handle.getsize()
            except FileNotFoundError:
                return  # no shard: nothing to witness
        at, end = self.geometry.index_range(size)
        if 0 <= at < end <= size:
            handle.witness(at, end - at)

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


def _witness_freed(
    handle: Any, index: L.IndexArray, chunks: Iterable[tuple[int, ...]], size: int
) -> None:
    """In a journal transaction: the places that the re-pointed index stops
    pointing at (each chunk of ``chunks`` the stored ``index`` holds, as it
    says, clipped to the shard's ``size``) are read witnesses of it
    (``handle.witness``). Another writer may put a chunk there after this
    one died with its record complete, and leave the index byte for byte as
    this write found it (a chunk of the same size written where it was): the
    index's old bytes then pass as a witness, and only the place shows the
    change. This write never writes a place it frees (``repointed`` fills
    only dead space of the stored index), so in every state a crash leaves
    it in (not applied, torn, applied) the places hold what it found."""
    for coords in chunks:
        rng = L.chunk_byte_range(index, coords)
        if rng is not None and rng[0] < size:
            handle.witness(rng[0], min(rng[1], size) - rng[0])


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
