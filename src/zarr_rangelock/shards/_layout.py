"""Shard layout arithmetic: pure functions over a sharding codec and a shard index.

A zarr v3 shard is one store value holding encoded inner chunks and an index
of ``(offset, nbytes)`` pairs, one per inner chunk, ``(2**64-1, 2**64-1)`` for
an absent chunk. Offsets are absolute within the value. The index sits at the
start or at the end of the value; the chunks may sit anywhere else, in any
order, with gaps. Readers follow the index and nothing else, and so does
everything here: a chunk's bytes are wherever *the shard's own index* says,
never where some ordering would put them (an earlier in-place writer upstream
was removed after assuming an order).

The index is encoded and decoded with the codec's own ``index_codecs``
(through zarr's ``ShardingCodec`` helpers), so a checksum codec such as
``crc32c`` is computed and verified by zarr itself.

*Absent marks.* A dense shard (every chunk present in its index, so that the
index never changes and chunks are written in place) stores a chunk that
stock zarr would not have, one of fill values (never written, or dropped by
a write with ``write_empty_chunks`` False), as the encoded fill chunk. Stock
zarr deletes a shard when no chunk is present in its index, and a chunk of
fill values stored by a write with ``write_empty_chunks`` True is present:
from the bytes alone the two are the same. So a dense shard with such
stand-ins carries *absent marks* (:func:`encode_marks`): one bit a chunk
("absent unless its bytes differ from the fill chunk's"), a magic and a
CRC-32C, right after the chunks (:attr:`ShardGeometry.marks_start`), where
no chunk and no index is, so readers never see them. A dense shard without
marks has every chunk present, as its index says (one stock zarr wrote).
In-place writes never touch the marks; they change under the whole-key
lock only (``_dense._DenseJob.sweep``).

Nothing here performs I/O; :mod:`zarr_rangelock.shards._jobs` does that.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import google_crc32c
import numpy as np
import numpy.typing as npt
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.codecs.sharding import MAX_UINT_64, ShardingCodec, _ShardIndex
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.codec_pipeline import BatchedCodecPipeline

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec

__all__ = [
    "EMPTY",
    "ShardGeometry",
    "assemble_shard",
    "chunk_byte_range",
    "dead_space",
    "decode_index",
    "decode_index_async",
    "decode_marks",
    "dense_index",
    "empty_index",
    "encode_index",
    "encode_index_async",
    "encode_marks",
    "fixed_chunk_nbytes",
    "in_place_writable",
    "live_after",
    "marks_range",
    "present",
    "present_chunks",
    "shard_geometry",
]

EMPTY = MAX_UINT_64
"""Offset and length marking an absent inner chunk in a shard index."""

IndexArray = npt.NDArray[np.uint64]
"""A decoded shard index: shape ``chunks_per_shard + (2,)``, ``[..., 0]`` the
offsets and ``[..., 1]`` the lengths, both in bytes."""

Int64s = npt.NDArray[np.int64]
"""Byte offsets or lengths, one dimension."""


@dataclass(frozen=True, slots=True)
class ShardGeometry:
    """Where things go in one shard of a sharded array.

    Attributes
    ----------
    chunks_per_shard : tuple of int
        Inner chunks per shard along each axis.
    index_location : {"start", "end"}
        Where the encoded index sits in the shard value.
    index_nbytes : int
        Size of the encoded index (fixed: the spec forbids variable-size index codecs).
    chunk_nbytes : int or None
        Encoded size of every inner chunk when the inner codecs have a fixed encoded
        size (no compression), else None.
    """

    chunks_per_shard: tuple[int, ...]
    index_location: Literal["start", "end"]
    index_nbytes: int
    chunk_nbytes: int | None
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Hashed once: a geometry is part of the key of every in-place write's
        # lookup of its shard's index (``_known._VALID``), and the generated
        # __hash__ hashes the four fields anew each time (about 0.3 us of a
        # write_chunk).
        fields = (self.chunks_per_shard, self.index_location, self.index_nbytes, self.chunk_nbytes)
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @property
    def n_chunks(self) -> int:
        """Number of inner chunks in a shard."""
        return math.prod(self.chunks_per_shard)

    def place(self, coords: tuple[int, ...]) -> int:
        """The row of inner chunk ``coords`` (its coordinates in the shard) in
        the flattened index: C order of the coordinates."""
        j = 0
        for c, n in zip(coords, self.chunks_per_shard, strict=True):
            j = j * n + c
        return j

    @property
    def data_start(self) -> int:
        """First byte (inclusive) that chunk data may occupy."""
        return self.index_nbytes if self.index_location == "start" else 0

    @property
    def dense_nbytes(self) -> int:
        """Size of a dense shard: the index and every chunk, no gaps.

        Raises
        ------
        ValueError
            If the inner chunks do not have a fixed encoded size.
        """
        if self.chunk_nbytes is None:
            raise ValueError("a dense layout needs inner chunks of fixed encoded size")
        return self.index_nbytes + self.n_chunks * self.chunk_nbytes

    @property
    def marks_start(self) -> int:
        """Where a dense shard's absent marks start (see the module): the
        first byte after its chunks."""
        if self.chunk_nbytes is None:
            raise ValueError("a dense layout needs inner chunks of fixed encoded size")
        return self.data_start + self.n_chunks * self.chunk_nbytes

    @property
    def marks_nbytes(self) -> int:
        """Size of the absent marks of a shard: magic, one bit a chunk, CRC-32C."""
        return len(_MARKS_MAGIC) + (self.n_chunks + 7) // 8 + 4

    def index_range(self, shard_nbytes: int) -> tuple[int, int]:
        """Byte range ``[start (inclusive), end (exclusive))`` of the index in a
        shard value of ``shard_nbytes`` bytes."""
        if self.index_location == "start":
            return 0, self.index_nbytes
        return shard_nbytes - self.index_nbytes, shard_nbytes

    def data_end(self, shard_nbytes: int) -> int:
        """Last byte (exclusive) that chunk data may occupy in a shard value of
        ``shard_nbytes`` bytes."""
        if self.index_location == "start":
            return shard_nbytes
        return shard_nbytes - self.index_nbytes


def fixed_chunk_nbytes(codec: ShardingCodec, chunk_spec: ArraySpec) -> int | None:
    """Encoded size of one inner chunk, or None when it is not fixed.

    Fixed means every inner codec declares ``is_fixed_size`` (e.g. ``bytes``
    optionally followed by ``crc32c``; no compressor, no nested sharding) and
    the data type has a fixed item size.

    Parameters
    ----------
    codec : ShardingCodec
        The (evolved) sharding codec of the array.
    chunk_spec : ArraySpec
        The spec of one inner chunk.
    """
    if not all(c.is_fixed_size for c in codec.codecs):
        return None
    item_size = getattr(chunk_spec.dtype, "item_size", None)
    if not isinstance(item_size, int):
        return None
    raw = item_size * int(np.prod(chunk_spec.shape, dtype=np.int64))
    # zarr's own size arithmetic (each codec's compute_encoded_size, with the spec
    # threaded through); a plain BatchedCodecPipeline so this does not depend on
    # which pipeline class is configured.
    return BatchedCodecPipeline.from_codecs(codec.codecs).compute_encoded_size(raw, chunk_spec)


def plain_bytes(codec: ShardingCodec, dtype: np.dtype[Any], chunk_spec: ArraySpec) -> bool:
    """Whether ``codec``'s inner chunks are just the array's native C-order
    bytes (``bytes`` alone, native or one-byte items, a numeric dtype): a
    chunk is then its bytes viewed as ``dtype``, no codec needed."""
    inner = codec.codecs
    if len(inner) != 1 or not isinstance(inner[0], BytesCodec) or chunk_spec.order != "C":
        return False
    if dtype.kind not in "biufc" or dtype.hasobject:
        return False
    endian = getattr(inner[0].endian, "value", inner[0].endian)  # an enum or its value
    return dtype.itemsize == 1 or (dtype.isnative and endian in (None, sys.byteorder))


def shard_geometry(codec: ShardingCodec, shard_spec: ArraySpec) -> ShardGeometry:
    """The :class:`ShardGeometry` of a shard with spec ``shard_spec``."""
    chunks_per_shard = codec._get_chunks_per_shard(shard_spec)
    return ShardGeometry(
        chunks_per_shard=chunks_per_shard,
        index_location=codec.index_location,
        index_nbytes=codec._shard_index_size(chunks_per_shard),
        chunk_nbytes=fixed_chunk_nbytes(codec, codec._get_chunk_spec(shard_spec)),
    )


def empty_index(chunks_per_shard: tuple[int, ...]) -> IndexArray:
    """A fresh index with every chunk absent."""
    return np.full((*chunks_per_shard, 2), EMPTY, dtype=np.uint64)


def decode_index(
    codec: ShardingCodec, index_bytes: Buffer, chunks_per_shard: tuple[int, ...]
) -> IndexArray:
    """Decode an encoded index with the codec's ``index_codecs`` (checksum verified).

    Raises
    ------
    ValueError
        If ``index_bytes`` is shorter than the encoded index, or a checksum fails.
    """
    index = codec._decode_shard_index_sync(index_bytes, chunks_per_shard)
    return np.array(index.offsets_and_lengths, dtype=np.uint64, copy=True)


async def decode_index_async(
    codec: ShardingCodec, index_bytes: Buffer, chunks_per_shard: tuple[int, ...]
) -> IndexArray:
    """Like :func:`decode_index`, also for index codecs that are async-only."""
    index = await codec._decode_shard_index(index_bytes, chunks_per_shard)
    return np.array(index.offsets_and_lengths, dtype=np.uint64, copy=True)


def _plain_index_codecs(codec: ShardingCodec) -> bool | None:
    """Whether ``codec``'s index codecs are zarr's default, little-endian
    ``bytes`` then ``crc32c`` (True), ``bytes`` alone (False), or anything
    else (None)."""
    codecs = codec.index_codecs
    if not codecs or type(codecs[0]) is not BytesCodec:
        return None
    if getattr(codecs[0].endian, "value", codecs[0].endian) != "little":
        return None
    if len(codecs) == 1:
        return False
    return True if len(codecs) == 2 and type(codecs[1]) is Crc32cCodec else None


def _encode_plain_index(index: IndexArray, crc: bool) -> Buffer:
    """The bytes zarr's default index codecs give for ``index``: the offsets
    and lengths as little-endian uint64, then (``crc``) the CRC-32C of those
    as a native uint32, as ``Crc32cCodec`` appends it. About 1.5 us where
    zarr's codec chain costs 13 (every compressed write re-points an index)."""
    raw = index.astype("<u8", copy=False).tobytes()
    if crc:
        raw += np.array([google_crc32c.value(raw)], dtype=np.uint32).tobytes()
    return cpu.Buffer(np.frombuffer(raw, dtype=np.uint8))  # (the prototype lookup: 5 us)


def encode_index(codec: ShardingCodec, index: IndexArray) -> Buffer:
    """Encode an index with the codec's ``index_codecs`` (checksum appended)."""
    crc = _plain_index_codecs(codec)
    if crc is not None:
        return _encode_plain_index(index, crc)
    chunks_per_shard = tuple(int(s) for s in index.shape[:-1])
    return codec._encode_shard_index_sync(_ShardIndex(chunks_per_shard, index))


async def encode_index_async(codec: ShardingCodec, index: IndexArray) -> Buffer:
    """Like :func:`encode_index`, also for index codecs that are async-only."""
    crc = _plain_index_codecs(codec)
    if crc is not None:
        return _encode_plain_index(index, crc)
    chunks_per_shard = tuple(int(s) for s in index.shape[:-1])
    return await codec._encode_shard_index(_ShardIndex(chunks_per_shard, index))


def chunk_byte_range(index: IndexArray, coords: tuple[int, ...]) -> tuple[int, int] | None:
    """Byte range ``[start (inclusive), end (exclusive))`` of an inner chunk, as
    the index says, or None if the chunk is absent.

    ``coords`` are the chunk's coordinates within the shard.
    """
    offset, nbytes = (int(x) for x in index[coords])
    if offset == EMPTY and nbytes == EMPTY:
        return None
    return offset, offset + nbytes


def present(index: IndexArray) -> npt.NDArray[np.bool_]:
    """Which chunks of the shard are present, by their coordinates in the
    shard: every chunk but the absent ones (offset and length both
    :data:`EMPTY`, zarr's rule; a row with only one of them empty is
    corrupt, and counts as present, as zarr would try to read it)."""
    mask: npt.NDArray[np.bool_] = (index[..., 0] != EMPTY) | (index[..., 1] != EMPTY)
    return mask


def live_after(index: IndexArray | None, rows: Iterable[int], data: int) -> int:
    """How many chunks of a shard hold data after a write of the chunks at
    ``rows`` (their places, :meth:`ShardGeometry.place`, each once), ``data``
    of them with data and the rest dropped: ``data`` and the chunks of the
    stored ``index`` (None: no shard yet) that are :func:`present` and not
    written."""
    if index is None:
        return data
    mask = present(index).reshape(-1)
    return data + int(np.count_nonzero(mask)) - sum(bool(mask[j]) for j in rows)


def present_chunks(index: IndexArray) -> dict[tuple[int, ...], tuple[int, int]]:
    """Every present chunk's byte range ``[start (inclusive), end
    (exclusive))`` by its coordinates in the shard, in C order of the
    coordinates: :func:`chunk_byte_range` of each :func:`present` chunk.
    A few array operations and a loop over the present chunks only, where
    :func:`chunk_byte_range` of every chunk costs about 3 us a chunk (0.7 ms
    for 256, in a compaction of a fresh shard as it fills)."""
    shape = index.shape[:-1]
    pairs = index.reshape(-1, 2)
    rows = np.flatnonzero(present(index))
    starts = pairs[rows, 0].tolist()
    lengths = pairs[rows, 1].tolist()
    where: Iterable[tuple[int, ...]] = (
        zip(*(axis.tolist() for axis in np.unravel_index(rows, shape)), strict=True)
        if shape
        else [()] * len(starts)  # a 0-d shard: its one chunk
    )
    return {c: (s, s + n) for c, s, n in zip(where, starts, lengths, strict=True)}


def dense_index(
    geometry: ShardGeometry, order: Iterable[tuple[int, ...]] | None = None
) -> IndexArray:
    """The index of a dense shard: every chunk present, packed without gaps in
    ``order`` (default lexicographic), starting at the data section.

    Any order gives a valid shard because readers follow the index; the order
    only decides locality. ``order`` must list every chunk exactly once.

    Raises
    ------
    ValueError
        If chunks are not of fixed size, or ``order`` is not a permutation.
    """
    if geometry.chunk_nbytes is None:
        raise ValueError("a dense layout needs inner chunks of fixed encoded size")
    cps = geometry.chunks_per_shard
    n = geometry.n_chunks
    if order is None or not cps:  # a 0-d shard has one chunk: any order is that one
        rank = np.arange(n, dtype=np.uint64)
    else:
        coords = np.array(list(order), dtype=np.int64).reshape(-1, len(cps))
        if coords.shape[0] != n:
            raise ValueError(f"order lists {coords.shape[0]} chunks, the shard has {n}")
        flat = np.ravel_multi_index(tuple(coords.T), cps)
        rank = np.empty(n, dtype=np.uint64)
        rank[flat] = np.arange(n, dtype=np.uint64)
        if np.unique(flat).size != n:
            raise ValueError("order lists some chunk more than once")
    index = np.empty((n, 2), dtype=np.uint64)
    index[:, 0] = np.uint64(geometry.data_start) + rank * np.uint64(geometry.chunk_nbytes)
    index[:, 1] = geometry.chunk_nbytes
    return index.reshape((*cps, 2))


def in_place_writable(index: IndexArray, geometry: ShardGeometry, shard_nbytes: int) -> bool:
    """Whether every chunk can be overwritten in place at the offsets ``index`` gives.

    True when the inner chunks have a fixed size, every chunk is present with
    exactly that length, lies inside the data section of a value of
    ``shard_nbytes`` bytes, and no two chunks overlap. Their order and any gaps do
    not matter: a compact shard written by stock zarr whose chunks are all present
    qualifies, whatever its ``subchunk_write_order``. ``O(n log n)`` in chunks.
    """
    size = geometry.chunk_nbytes
    if size is None:
        return False
    pairs = index.reshape(-1, 2)
    offsets, lengths = pairs[:, 0], pairs[:, 1]
    if bool(np.any(offsets == EMPTY)) or not bool(np.all(lengths == size)):
        return False
    lo = geometry.data_start
    hi = geometry.data_end(shard_nbytes)
    if offsets.size == 0:
        return True
    ordered = np.sort(offsets)
    if int(ordered[0]) < lo or int(ordered[-1]) + size > hi:
        return False
    return bool(np.all(np.diff(ordered) >= size))


_MARKS_MAGIC = b"zrl:absent:1"


def encode_marks(geometry: ShardGeometry, absent: npt.ArrayLike) -> Buffer:
    """The absent marks (see the module) of a dense shard: ``absent`` one
    bool a chunk, in C order of the coordinates (:meth:`ShardGeometry.place`)."""
    bits = np.packbits(np.asarray(absent, dtype=bool).reshape(-1), bitorder="little")
    body = _MARKS_MAGIC + bits.tobytes()
    raw = body + np.array([google_crc32c.value(body)], dtype="<u4").tobytes()
    assert len(raw) == geometry.marks_nbytes
    return cpu.Buffer(np.frombuffer(raw, dtype=np.uint8))


def decode_marks(geometry: ShardGeometry, raw: bytes) -> npt.NDArray[np.bool_] | None:
    """The absent bits that :func:`encode_marks` wrote, in C order of the
    coordinates, or None when ``raw`` is not such marks (wrong size, magic
    or checksum)."""
    body = raw[:-4]
    if (
        len(raw) != geometry.marks_nbytes
        or not body.startswith(_MARKS_MAGIC)
        or google_crc32c.value(body) != int.from_bytes(raw[-4:], "little")
    ):
        return None
    bits = np.frombuffer(body, dtype=np.uint8, offset=len(_MARKS_MAGIC))
    out: npt.NDArray[np.bool_] = np.unpackbits(
        bits, count=geometry.n_chunks, bitorder="little"
    ).astype(bool)
    return out


def marks_range(
    geometry: ShardGeometry, index: IndexArray, shard_nbytes: int
) -> tuple[int, int] | None:
    """Where the absent marks of an in-place writable shard of
    ``shard_nbytes`` bytes would be (``[start (inclusive), end
    (exclusive))``), or None when it has no room for them: a shard laid out
    densely with marks is exactly ``dense_nbytes + marks_nbytes`` bytes and
    no chunk reaches past :attr:`ShardGeometry.marks_start`. (Whether marks
    are there is for :func:`decode_marks` to say.)"""
    if geometry.chunk_nbytes is None:
        return None
    start = geometry.marks_start
    if shard_nbytes != geometry.dense_nbytes + geometry.marks_nbytes:
        return None
    ends = index[..., 0].astype(np.int64) + index[..., 1].astype(np.int64)
    if index.size and int(ends.max()) > start:
        return None
    return start, start + geometry.marks_nbytes


def dead_space(index: IndexArray, geometry: ShardGeometry) -> tuple[int, int, Int64s, Int64s, bool]:
    """``(end, live, starts, lengths, plain)``: the first byte after the last
    present chunk (the data section start if none is present), the total
    bytes of present chunks, the start and the length of every gap of dead
    space (bytes in ``[data_start, end)`` that no present chunk covers), in
    byte order, and whether the index is *plain*. Chunks that overlap (a
    shard written by another tool) are fine: a byte covered by any chunk is
    not dead (a chunk of no bytes may split a gap in two). Plain: every row
    either empty or a chunk of at least one byte, inside the data section
    and apart from every other (as this package writes them), no offset or
    length past ``2**62``; a chunk below the data section, or two that
    overlap, cover fewer bytes than ``live``. A dozen array operations,
    about 25 us for 256 chunks whatever the number of gaps
    (``shards/_placement`` keeps what it works out).

    numpy's ``argsort`` and ``searchsorted`` let the GIL go even for a few
    elements, so on zarr's loop thread each is a chance for another thread
    to take it. Sorting in Python instead (one int a chunk: offset, then
    place) measured 1.04x and 0.98x (plain zstd writes, default size and
    the issue's workload, paired runs): not taken."""
    pairs = index.reshape(-1, 2).view(np.int64)  # an absent chunk reads -1, -1
    order = pairs[:, 0].argsort()
    offsets, lengths = pairs[:, 0][order], pairs[:, 1][order]
    lo = geometry.data_start
    absent = int(offsets.searchsorted(0))  # they sort first
    plain = True
    if absent:  # (all -1 if the least is: -1 is the greatest negative)
        plain = int(offsets[0]) == -1 and bool((lengths[:absent] == -1).all())
        offsets, lengths = offsets[absent:], lengths[absent:]
    if not len(offsets):
        return lo, 0, offsets, lengths, plain
    reached = np.maximum.accumulate(offsets + lengths)
    before = np.empty_like(reached)  # where each chunk's gap starts
    before[0] = lo
    before[1:] = reached[:-1]
    np.maximum(before, lo, out=before)
    gap = offsets - before
    found = gap > 0
    end, live = max(lo, int(reached[-1])), int(lengths.sum())
    starts, gaps = before[found], gap[found]
    plain = (
        plain
        and int(offsets[-1]) < 1 << 62
        and 0 < int(lengths.min()) <= int(lengths.max()) < 1 << 62
        and end - lo - int(gaps.sum()) == live
    )
    return end, live, starts, gaps, plain


def assemble_shard(
    geometry: ShardGeometry,
    index_bytes: Buffer,
    chunks: Iterable[tuple[int, Buffer | bytes]],
    shard_nbytes: int,
) -> Buffer:
    """Build a whole shard value: zeros, each ``(offset, bytes)`` chunk copied to
    its offset, the encoded index at its location.

    Raises
    ------
    ValueError
        If the index has the wrong size or a chunk falls outside the data section.
    """
    if len(index_bytes) != geometry.index_nbytes:
        raise ValueError(
            f"encoded index is {len(index_bytes)} bytes, the geometry says {geometry.index_nbytes}"
        )
    out = np.zeros(shard_nbytes, dtype=np.uint8)
    lo, hi = geometry.data_start, geometry.data_end(shard_nbytes)
    for offset, data in chunks:
        raw = (
            np.frombuffer(data, dtype=np.uint8)
            if isinstance(data, bytes)
            else data.as_numpy_array().view(np.uint8).reshape(-1)
        )
        if offset < lo or offset + raw.size > hi:
            raise ValueError(
                f"chunk at [{offset}, {offset + raw.size}) lies outside the data "
                f"section [{lo}, {hi})"
            )
        out[offset : offset + raw.size] = raw
    start, end = geometry.index_range(shard_nbytes)
    out[start:end] = index_bytes.as_numpy_array().view(np.uint8).reshape(-1)
    return default_buffer_prototype().buffer.from_array_like(out)
