"""Reads of dense shards: one read per shard, chunks decoded from views of it;
and of any other shard: one read per run of chunks, decoded over the CPUs.

Design note
-----------
zarr reads a shard through its sharding codec: the index, then the chunks,
each decoded through the inner codec pipeline's batched async machinery,
which for uncompressed 64 KiB chunks costs far more than the bytes. A shard
that :mod:`zarr_rangelock.shards._dense` keeps dense (fixed-size inner chunks,
every chunk at the offset its index gives) is read here instead: the index
(not even read while the write path's validated copy of it is current, by
the store's change stamp; else decoded once per distinct index bytes),
then one positional read of the span the selected chunks cover (in a
worker thread when it is long: *Long reads*, below), and each
chunk decoded synchronously with zarr's inner transform from a view of that
read, straight into the output. Where the inner chunks are the array's
native bytes (``bytes`` alone, native or one-byte items:
:func:`~._layout.plain_bytes`) there is nothing to decode: each chunk's view,
seen as the dtype, is copied into the output (a codec call per chunk cost
more than the copy). The caller (``ShardWritePipeline.read_batch``)
holds the shard shared for the whole read, so the index and the chunks it
points to cannot change in between.

Any other shard (compressed, variable-size chunks; or fixed-size chunks
in a compact layout, as stock zarr writes a shard with absent chunks, an
edge shard among them, and as this package's writes leave a shard until it
is laid out densely) is read by :func:`read_packed`: its index (the one
this process's last write left, while the key's change stamp says it is
current; else read and decoded through ``_PEEKS``), the
selected chunks' bytes in runs as zarr's sharding codec coalesces them
(``sharding_coalesce_max_gap_bytes`` and ``..._max_bytes`` of the array's
config), one positional read a run, then each chunk decoded with zarr's
inner transform from a view of its run, straight into the output: on the
loop's thread when that is measured cheap, else in worker threads, split
over the idle CPUs (``store._io.map_unless_cheap``; zstd, gzip and blosc
let the GIL go); chunks of the array's native bytes copied from their
views, as above. A chunk the index says is absent is the fill value, as
zarr reads it. zarr instead reads the chunks and then decodes each through
its batched async pipeline, one worker-thread hop a chunk.

*Long reads.* zarr runs every sync call of every thread on its one loop
thread, so a read done there holds up every other read and write of the
process until the disk answers. A run longer than
:data:`RUN_INLINE_MAX_BYTES` (1 MiB) is read in a worker thread
(:func:`_read_run`), so the shards of one call, and of several threads'
calls, wait on the disk at once while the loop decodes and copies; a
shorter one (a chunk, an index) stays on the loop, where the hop would cost
more than the read. Dense shards, 2 CPUs, three runs of
``benchmarks/cold_reads.py``: 1.46-1.57x the MB/s of reading on the loop
with the files evicted from the page cache (four threads a shard a call),
1.13-1.34x (the whole array in one call), 1.12-1.42x warm; one thread a
shard a call the same; zstd shards the same within the noise (their
decodes are the time).

A read into a buffer prototype other than the CPU's (which zarr refuses
within shards), or whose integer arrays place a shard's values out of
order, is not ours to read (:func:`answerable`, asked by the caller before
either reader). Anything else (a missing shard, codecs around the sharding
codec, selections zarr reshapes, a shard whose index does not decode or
that ends before a chunk it points to) returns ``None`` and is read by
zarr, as before. Dropped axes (an integer in a basic selection) need nothing: zarr's
projections of the shard leave the integer's axis out of the output's
selection, and the chunk's selection takes it out of the chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import NDBuffer, cpu
from zarr.core.chunk_utils import fill_value_or_default

from ..store._io import in_thread, map_unless_cheap
from . import _layout as L
from ._known import _Peek, _read, current_index, current_valid, peek_shard

if TYPE_CHECKING:
    from zarr.abc.codec import GetResult
    from zarr.core.buffer import Buffer

    from ..store._store import RangeLockedStore
    from ._jobs import SpecFacts

__all__ = ["RUN_INLINE_MAX_BYTES", "answerable", "read_dense", "read_packed"]

RUN_INLINE_MAX_BYTES = 1 << 20
"""A run of chunks of at most this many bytes is read on the event loop's
thread; a longer one in a worker thread (:func:`_read_run`)."""


def answerable(item: tuple[Any, ...], out: NDBuffer) -> bool:
    """Whether our readers may read ``item`` (a shard of zarr's read) into
    ``out``: its values in order (an integer array in an orthogonal
    selection not in increasing order places them out of order: ``out[that]``
    is a copy, so writing into it would write nothing; zarr assigns there),
    into CPU memory (another kind, a GPU's, zarr refuses within shards)."""
    _, shard_spec, _, out_selection, _ = item
    return (
        type(out_selection) is tuple
        and all(type(s) is slice for s in out_selection)
        and shard_spec.prototype.buffer is cpu.Buffer
        and type(out) is cpu.NDBuffer
    )


def _index(
    store: RangeLockedStore, codec: ShardingCodec, geometry: L.ShardGeometry, key: str
) -> tuple[L.IndexArray, _Peek | None] | None:
    """The shard's index, as this process's last write left it while the
    key's change stamp says it is current (``current_index``: no I/O, no
    peek; such a shard is compact), else read and decoded with its peek
    (``peek_shard``); None where there is none to read (zarr's then)."""
    known = current_index(store, key, geometry)
    if known is not None:
        return known[1], None
    peek = peek_shard(store, codec, geometry, key)
    return None if peek is None else (peek.index, peek)


async def read_dense(
    codec: ShardingCodec,
    facts: SpecFacts,
    store: RangeLockedStore,
    item: tuple[Any, ...],
    projections: list[Any],
    out: NDBuffer,
) -> GetResult | None:
    """Read one shard of fixed-size chunks' part of a zarr read into ``out``
    (one of :func:`answerable`); a shard that is not dense by
    :func:`read_packed`, given the index just looked up; None (nothing
    done) to leave it to zarr. Call with the shard held shared.

    ``projections`` are zarr's inner chunk projections of the shard's
    selection (basic or orthogonal); ``facts``, the array's
    (``_jobs.SpecFacts``). Where the inner chunks are the native bytes of
    ``facts.plain`` (``bytes`` alone), each chunk is a view of the bytes
    read, copied once into ``out`` (no codec call: the whole-array read's
    hot loop); else it goes through zarr's transform."""
    byte_getter, shard_spec, _, out_selection, _ = item
    geometry, plain, transform = facts.geometry, facts.plain, facts.transform
    key = byte_getter.path
    # The validated index, while current: no size, no index read.
    peek = current_valid(store, key, geometry)
    if peek is None:
        found = _index(store, codec, geometry, key)
        if found is None:
            return None
        index, peek = found
        if peek is None or not peek.writable:  # not dense: by the index found
            return await read_packed(codec, facts, store, item, projections, out, index)
    offsets = peek.offsets  # dense: every chunk present, each chunk_nbytes long
    size = geometry.chunk_nbytes
    assert size is not None  # the caller checked
    starts = [offsets[geometry.place(p[0])] for p in projections]
    lo = min(starts)
    hi = max(starts) + size
    data = await _read_run(store, key, lo, hi)
    if data is None or len(data) != hi - lo:
        return None
    raw = data.as_numpy_array()
    # A view of ``out``, which the chunks are written into. (The Ellipsis
    # makes a view where numpy would return a scalar: an ``out`` of no
    # dimensions, a read of one element; zarr's ``NDBuffer`` adds it itself
    # only since 3.4.1.)
    target = out[(*out_selection, Ellipsis)]
    if plain is not None:
        into = target.as_numpy_array()
        shape = codec.chunk_shape
        for (_, chunk_sel, inner_out, _), start in zip(projections, starts, strict=True):
            chunk = raw[start - lo : start - lo + size].view(plain).reshape(shape)
            into[inner_out] = chunk[chunk_sel]
        return {"status": "present"}
    chunk_spec = codec._get_chunk_spec(shard_spec)
    for (_, chunk_sel, inner_out, _), start in zip(projections, starts, strict=True):
        buf = cpu.Buffer(raw[start - lo : start - lo + size])
        target[inner_out] = transform.decode_chunk(buf, chunk_spec)[chunk_sel]
    return {"status": "present"}


async def read_packed(
    codec: ShardingCodec,
    facts: SpecFacts,
    store: RangeLockedStore,
    item: tuple[Any, ...],
    projections: list[Any],
    out: NDBuffer,
    index: L.IndexArray | None = None,
) -> GetResult | None:
    """Read one shard's part of a zarr read into ``out`` (one of
    :func:`answerable`) by its index, whatever its layout (compressed
    chunks, or fixed-size ones that are not dense: see the module); None
    (``out`` untouched) to leave it to zarr. Call with the shard held
    shared, whole.

    ``projections`` are zarr's inner chunk projections of the shard's
    selection; ``facts``, the array's (``_jobs.SpecFacts``: its
    ``decode_cost`` measures a chunk's decode); ``index``, the shard's as
    the caller found it under the hold (else looked up here). Chunks of
    ``facts.plain``'s native bytes are copied from views of the bytes read,
    as :func:`read_dense` does."""
    byte_getter, shard_spec, _, out_selection, _ = item
    geometry, plain, transform = facts.geometry, facts.plain, facts.transform
    key = byte_getter.path
    if index is None:
        found = _index(store, codec, geometry, key)
        if found is None:
            return None
        index = found[0]
    spans = [L.chunk_byte_range(index, p[0]) for p in projections]
    present = sorted((s[0], s[1], i) for i, s in enumerate(spans) if s is not None)
    config = shard_spec.config
    views: dict[int, np.ndarray[Any, Any]] = {}
    for run in _runs(
        present, config.sharding_coalesce_max_gap_bytes, config.sharding_coalesce_max_bytes
    ):
        lo = run[0][0]
        hi = max(end for _, end, _ in run)
        data = await _read_run(store, key, lo, hi)
        if data is None or len(data) != hi - lo:
            return None  # a shard shorter than its index says: zarr's error
        raw = data.as_numpy_array()
        for start, end, i in run:
            views[i] = raw[start - lo : end - lo]
    chunk_spec = codec._get_chunk_spec(shard_spec)
    target = out[(*out_selection, Ellipsis)]  # (a view: see read_dense)
    fill = fill_value_or_default(chunk_spec)
    for i, span in enumerate(spans):
        if span is None:
            target[projections[i][2]] = fill

    into = target.as_numpy_array()
    shape, nbytes = codec.chunk_shape, geometry.chunk_nbytes

    def decode(i: int) -> None:
        _, chunk_sel, inner_out, _ = projections[i]
        view = views[i]
        if plain is not None and len(view) == nbytes:
            into[inner_out] = view.view(plain).reshape(shape)[chunk_sel]
        else:  # (zarr's codec; for a plain chunk of another length, its error)
            target[inner_out] = transform.decode_chunk(cpu.Buffer(view), chunk_spec)[chunk_sel]

    await map_unless_cheap(decode, [i for _, _, i in present], facts.decode_cost)
    return {"status": "present"}


async def _read_run(store: RangeLockedStore, key: str, lo: int, hi: int) -> Buffer | None:
    """Bytes ``[lo, hi)`` of ``key`` (``_known._read``): on this thread up to
    :data:`RUN_INLINE_MAX_BYTES`, else in a worker thread (:func:`in_thread`,
    which lets the read end before a cancellation goes on, so the caller's
    hold outlasts it). zarr's loop runs every sync call of every thread, so a
    long read there held up every other read and write until the disk
    answered. A 64 KiB chunk stays on the loop, where the hop would cost
    more than the read. Measured: ``benchmarks/cold_reads.py``."""
    if hi - lo <= RUN_INLINE_MAX_BYTES:
        return _read(store, key, lo, hi)
    return await in_thread(lambda: _read(store, key, lo, hi))


type _Span = tuple[int, int, int]
"""A chunk's bytes ``[start, end)`` in the shard and its projection's number."""


def _runs(spans: list[_Span], max_gap: int, max_bytes: int) -> list[list[_Span]]:
    """``spans`` (by start) grouped into runs read at once, as zarr's sharding
    codec coalesces them: the next joins a run if it starts at most
    ``max_gap`` bytes after the run's end and the run stays within
    ``max_bytes`` bytes."""
    runs: list[list[_Span]] = []
    lo = end = 0
    for span in spans:
        start, stop, _ = span
        if runs and start - end <= max_gap and max(end, stop) - lo <= max_bytes:
            runs[-1].append(span)
            end = max(end, stop)
        else:
            runs.append([span])
            lo, end = start, stop
    return runs
