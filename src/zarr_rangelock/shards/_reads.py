"""Reads of dense shards: one read per shard, chunks decoded from views of it.

Design note
-----------
zarr reads a shard through its sharding codec: the index, then the chunks,
each decoded through the inner codec pipeline's batched async machinery,
which for uncompressed 64 KiB chunks costs far more than the bytes. A shard
that :mod:`zarr_rangelock.shards._jobs` keeps dense (fixed-size inner chunks,
every chunk at the offset its index gives) is read here instead: the index
(not even read while the write path's validated copy of it is current, by
the store's change stamp; else decoded once per distinct index bytes),
then one positional read of the span the selected chunks cover, and each
chunk decoded synchronously with zarr's inner transform from a view of that
read, straight into the output. The caller (``ShardWritePipeline.read_batch``)
holds the shard shared for the whole read, so the index and the chunks it
points to cannot change in between.

Anything else (a missing or compact shard, compressed chunks, codecs around
the sharding codec, selections zarr reshapes, dropped axes) returns ``None``
and is read by zarr, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import NDBuffer, cpu
from zarr.core.indexing import BasicIndexer, OrthogonalIndexer, get_indexer

from . import _layout as L
from ._known import _read, current_valid, peek_shard

if TYPE_CHECKING:
    from zarr.abc.codec import GetResult

    from ..store._store import RangeLockedStore

__all__ = ["read_dense"]


def read_dense(
    codec: ShardingCodec,
    transform: Any,
    geometry: L.ShardGeometry,
    grid: Any,
    store: RangeLockedStore,
    item: tuple[Any, ...],
    out: NDBuffer,
) -> GetResult | None:
    """Read one shard's part of a zarr read into ``out`` if the shard is dense;
    None (nothing done) to leave it to zarr. Call with the shard held shared."""
    byte_getter, shard_spec, chunk_selection, out_selection, _ = item
    key = byte_getter.path
    # The validated index, while current: no size, no index read.
    peek = current_valid(store, key, geometry) or peek_shard(store, codec, geometry, key)
    if peek is None or not peek.writable:
        return None
    indexer = get_indexer(chunk_selection, shape=shard_spec.shape, chunk_grid=grid)
    if not isinstance(indexer, BasicIndexer | OrthogonalIndexer):
        return None  # coordinate and mask selections: zarr reshapes the values
    projections = list(indexer)
    if not projections:
        return None
    ranges = []
    for coords, *_ in projections:
        rng = L.chunk_byte_range(peek.index, coords)
        if rng is None:  # pragma: no cover - dense: every chunk present
            return None
        ranges.append(rng)
    lo = min(r[0] for r in ranges)
    hi = max(r[1] for r in ranges)
    data = _read(store, key, lo, hi)
    if data is None or len(data) != hi - lo:
        return None
    raw = data.as_numpy_array()
    chunk_spec = codec._get_chunk_spec(shard_spec)
    target = out[out_selection]
    for (_, chunk_sel, inner_out, _), (start, end) in zip(projections, ranges, strict=True):
        chunk = transform.decode_chunk(cpu.Buffer(raw[start - lo : end - lo]), chunk_spec)
        target[inner_out] = chunk[chunk_sel]
    return {"status": "present"}
