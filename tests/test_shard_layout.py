"""The shard layout arithmetic, checked against shards that stock zarr writes."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import event, given, settings
from hypothesis import strategies as st
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from tests._shard_helpers import new_array
from zarr_rangelock.shards import _layout as L
from zarr_rangelock.shards import _placement as P
from zarr_rangelock.store._rewrite import Span

ORDERS = ["morton", "lexicographic", "colexicographic", "unordered"]


def _one_shard_array(store: MemoryStore, codec: ShardingCodec) -> zarr.Array[Any]:
    """An 8x12 int32 array of one shard (fill value 0) in ``store``, sharded by ``codec``."""
    return new_array(store, shape=(8, 12), chunks=(8, 12), serializer=codec)


def _stock_shard(
    *,
    index_location: str,
    order: str = "morton",
    compressed: bool = False,
    crc: bool = False,
    fill: bool = True,
) -> tuple[ShardingCodec, ArraySpec, Buffer, np.ndarray]:
    """Write one 8x12 shard of 2x3 int32 inner chunks with stock zarr and
    return its codec, shard spec, stored bytes and the written values."""
    inner: list[Any] = [BytesCodec()]
    if compressed:
        inner.append(ZstdCodec())
    if crc:
        inner.append(Crc32cCodec())
    codec = ShardingCodec(
        chunk_shape=(2, 3),
        codecs=inner,
        index_location=index_location,  # type: ignore[arg-type]
        subchunk_write_order=order,  # type: ignore[arg-type]
    )
    store = MemoryStore()
    arr = _one_shard_array(store, codec)
    values = np.arange(96, dtype="i4").reshape(8, 12) + 1
    if not fill:
        values[0:2, 3:6] = 0  # one inner chunk equal to the fill value: stock elides it
    arr[:] = values
    evolved = arr.async_array.codec_pipeline.array_bytes_codec
    assert isinstance(evolved, ShardingCodec)
    spec = ArraySpec(
        shape=(8, 12),
        dtype=arr.metadata.data_type,
        fill_value=0,
        config=ArrayConfig.from_dict({}),
        prototype=default_buffer_prototype(),
    )
    buf = sync(store.get("c/0/0", default_buffer_prototype()))
    assert buf is not None
    return evolved, spec, buf, values


def _index_of(codec: ShardingCodec, geometry: L.ShardGeometry, buf: Buffer) -> np.ndarray:
    start, end = geometry.index_range(len(buf))
    return L.decode_index(codec, buf[start:end], geometry.chunks_per_shard)


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("crc", [False, True])
def test_geometry_of_a_fixed_size_shard(index_location: str, crc: bool) -> None:
    codec, spec, buf, _ = _stock_shard(index_location=index_location, crc=crc)
    g = L.shard_geometry(codec, spec)
    assert g.chunks_per_shard == (4, 4)
    assert g.n_chunks == 16
    assert g.index_nbytes == 16 * 16 + 4  # bytes + crc32c index codecs
    assert g.chunk_nbytes == 2 * 3 * 4 + (4 if crc else 0)
    assert g.data_start == (g.index_nbytes if index_location == "start" else 0)
    # every chunk present and packed: stock zarr's blob is exactly dense-sized
    assert len(buf) == g.dense_nbytes


def test_compressed_inner_chunks_have_no_fixed_size() -> None:
    codec, spec, _, _ = _stock_shard(index_location="end", compressed=True)
    assert L.shard_geometry(codec, spec).chunk_nbytes is None


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("order", ORDERS)
def test_chunk_ranges_come_from_the_shards_own_index(index_location: str, order: str) -> None:
    """Whatever physical order stock zarr chose, decoding each chunk from the byte
    range the index gives returns that chunk's values."""
    codec, spec, buf, values = _stock_shard(index_location=index_location, order=order)
    g = L.shard_geometry(codec, spec)
    index = _index_of(codec, g, buf)
    raw = buf.as_numpy_array()
    for coords in np.ndindex(g.chunks_per_shard):
        rng = L.chunk_byte_range(index, coords)
        assert rng is not None
        chunk = np.frombuffer(raw[rng[0] : rng[1]].tobytes(), dtype="<i4").reshape(2, 3)
        i, j = coords
        np.testing.assert_array_equal(chunk, values[2 * i : 2 * i + 2, 3 * j : 3 * j + 3])


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_index_round_trips_through_the_codecs_own_index_codecs(index_location: str) -> None:
    codec, spec, buf, _ = _stock_shard(index_location=index_location)
    g = L.shard_geometry(codec, spec)
    start, end = g.index_range(len(buf))
    index = L.decode_index(codec, buf[start:end], g.chunks_per_shard)
    assert L.encode_index(codec, index).to_bytes() == buf[start:end].to_bytes()
    again = sync(L.encode_index_async(codec, index))
    assert again.to_bytes() == buf[start:end].to_bytes()
    np.testing.assert_array_equal(
        sync(L.decode_index_async(codec, again, g.chunks_per_shard)), index
    )


def test_a_corrupted_index_fails_its_checksum() -> None:
    codec, spec, buf, _ = _stock_shard(index_location="end")
    g = L.shard_geometry(codec, spec)
    start, end = g.index_range(len(buf))
    raw = bytearray(buf[start:end].to_bytes())
    raw[3] ^= 0xFF
    bad = default_buffer_prototype().buffer.from_bytes(bytes(raw))
    with pytest.raises(ValueError):
        L.decode_index(codec, bad, g.chunks_per_shard)


def test_absent_chunks_are_marked_with_max_uint64() -> None:
    codec, spec, buf, _ = _stock_shard(index_location="end", fill=False)
    g = L.shard_geometry(codec, spec)
    index = _index_of(codec, g, buf)
    assert L.chunk_byte_range(index, (0, 1)) is None
    assert tuple(int(x) for x in index[0, 1]) == (L.EMPTY, L.EMPTY)
    # a shard with an absent chunk cannot be written in place
    assert not L.in_place_writable(index, g, len(buf))
    assert np.all(L.empty_index((2, 3)) == L.EMPTY)


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("order", ORDERS)
def test_a_full_stock_shard_is_writable_in_place_in_any_order(
    index_location: str, order: str
) -> None:
    codec, spec, buf, _ = _stock_shard(index_location=index_location, order=order)
    g = L.shard_geometry(codec, spec)
    assert L.in_place_writable(_index_of(codec, g, buf), g, len(buf))


def test_in_place_writable_rejects_overlap_wrong_length_and_the_index_region() -> None:
    g = L.ShardGeometry((2,), "end", 36, 8)
    ok = np.array([[0, 8], [8, 8]], dtype=np.uint64)
    assert L.in_place_writable(ok, g, 16 + 36)
    assert L.in_place_writable(np.array([[24, 8], [0, 8]], dtype=np.uint64), g, 32 + 36)
    assert not L.in_place_writable(np.array([[0, 8], [4, 8]], dtype=np.uint64), g, 52)
    assert not L.in_place_writable(np.array([[0, 8], [8, 7]], dtype=np.uint64), g, 52)
    # the second chunk would run into the index at the end
    assert not L.in_place_writable(ok, g, 15 + 36)
    g_start = L.ShardGeometry((2,), "start", 36, 8)
    # offsets inside the index at the start
    assert not L.in_place_writable(ok, g_start, 16 + 36)
    assert not L.in_place_writable(ok, L.ShardGeometry((2,), "end", 36, None), 52)


def test_in_place_writable_rejects_chunks_overlapping_by_one_byte_but_takes_touching_ones() -> None:
    # The overlap check's boundary: a chunk that ends one byte into the next
    # one (another tool's index may say so) is refused, as a write of it in
    # place would change that byte of the other chunk; touching chunks (the
    # dense layout) are taken, in either order.
    g = L.ShardGeometry((2,), "end", 36, 8)
    assert L.in_place_writable(np.array([[8, 8], [0, 8]], dtype=np.uint64), g, 52)
    assert not L.in_place_writable(np.array([[0, 8], [7, 8]], dtype=np.uint64), g, 52)
    assert not L.in_place_writable(np.array([[9, 8], [2, 8]], dtype=np.uint64), g, 53)


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_dense_index_respects_the_index_location(index_location: str) -> None:
    g = L.ShardGeometry((2, 3), index_location, 100, 24)  # type: ignore[arg-type]
    index = L.dense_index(g)
    base = 100 if index_location == "start" else 0
    assert index[0, 0].tolist() == [base, 24]
    assert index[1, 2].tolist() == [base + 5 * 24, 24]
    assert L.in_place_writable(index, g, g.dense_nbytes)
    assert L.dead_space(index, g)[:2] == (base + 6 * 24, 6 * 24)


@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.data(),
    location=st.sampled_from(["start", "end"]),
)
def test_dense_index_in_any_order_is_a_gapless_permutation(
    shape: list[int], data: st.DataObject, location: str
) -> None:
    cps = tuple(shape)
    coords = list(np.ndindex(cps))
    order = data.draw(st.permutations(coords))
    g = L.ShardGeometry(cps, location, 16 * len(coords) + 4, 12)  # type: ignore[arg-type]
    index = L.dense_index(g, order)
    assert L.in_place_writable(index, g, g.dense_nbytes)
    for rank, c in enumerate(order):
        assert L.chunk_byte_range(index, c) == (
            g.data_start + 12 * rank,
            g.data_start + 12 * rank + 12,
        )


def test_dense_index_refuses_an_order_that_is_not_a_permutation() -> None:
    g = L.ShardGeometry((2,), "end", 36, 8)
    with pytest.raises(ValueError):
        L.dense_index(g, [(0,), (0,)])
    with pytest.raises(ValueError):
        L.dense_index(g, [(0,)])
    with pytest.raises(ValueError):
        L.dense_index(L.ShardGeometry((2,), "end", 36, None))


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_an_assembled_dense_shard_reads_back_with_stock_zarr(index_location: str) -> None:
    """Build a dense shard in reversed order by hand; stock zarr must read it."""
    codec, spec, buf, values = _stock_shard(index_location=index_location)
    g = L.shard_geometry(codec, spec)
    old = _index_of(codec, g, buf)
    order = list(reversed(list(np.ndindex(g.chunks_per_shard))))
    new = L.dense_index(g, order)
    raw = buf.as_numpy_array()
    chunks = []
    for c in np.ndindex(g.chunks_per_shard):
        src, dst = L.chunk_byte_range(old, c), L.chunk_byte_range(new, c)
        assert src is not None and dst is not None
        chunks.append((dst[0], raw[src[0] : src[1]].tobytes()))
    blob = L.assemble_shard(g, L.encode_index(codec, new), chunks, g.dense_nbytes)
    assert blob.to_bytes() != buf.to_bytes()  # really another layout than stock's
    store = MemoryStore()
    _one_shard_array(store, codec)  # the array's metadata
    sync(store.set("c/0/0", blob))
    np.testing.assert_array_equal(zarr.open_array(store)[:], values)


@pytest.mark.parametrize("n", [1, 8, 9, 64])
def test_absent_marks_round_trip_and_refuse_other_bytes(n: int) -> None:
    g = L.ShardGeometry((n,), "end", 16 * n + 4, 8)
    absent = np.arange(n) % 3 == 1
    raw = L.encode_marks(g, absent).to_bytes()
    assert len(raw) == g.marks_nbytes == 12 + (n + 7) // 8 + 4
    decoded = L.decode_marks(g, raw)
    assert decoded is not None and decoded.tolist() == absent.tolist()
    flipped = bytearray(raw)
    flipped[12] ^= 1  # a bit of the marks, not matching the checksum any more
    assert L.decode_marks(g, bytes(flipped)) is None
    assert L.decode_marks(g, raw[:-1]) is None
    assert L.decode_marks(g, bytes(len(raw))) is None  # zeros: no magic


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_a_dense_shard_with_absent_marks_reads_back_with_stock_zarr(index_location: str) -> None:
    """The marks sit after the chunks, where no index entry points: stock
    zarr reads the shard as the same shard without them."""
    codec, spec, buf, values = _stock_shard(index_location=index_location)
    g = L.shard_geometry(codec, spec)
    old = _index_of(codec, g, buf)
    new = L.dense_index(g)
    raw = buf.as_numpy_array()
    chunks = []
    for c in np.ndindex(g.chunks_per_shard):
        src, dst = L.chunk_byte_range(old, c), L.chunk_byte_range(new, c)
        assert src is not None and dst is not None
        chunks.append((dst[0], raw[src[0] : src[1]].tobytes()))
    size = g.dense_nbytes + g.marks_nbytes
    chunks.append((g.marks_start, L.encode_marks(g, np.ones(g.n_chunks, bool)).to_bytes()))
    blob = L.assemble_shard(g, L.encode_index(codec, new), chunks, size)
    assert L.in_place_writable(new, g, size)
    assert L.marks_range(g, new, size) == (g.marks_start, g.marks_start + g.marks_nbytes)
    assert L.marks_range(g, new, g.dense_nbytes) is None  # no room: no marks
    store = MemoryStore()
    _one_shard_array(store, codec)  # the array's metadata
    sync(store.set("c/0/0", blob))
    np.testing.assert_array_equal(zarr.open_array(store)[:], values)


def test_assemble_shard_refuses_chunks_outside_the_data_section() -> None:
    g = L.ShardGeometry((1,), "start", 20, 8)
    index = default_buffer_prototype().buffer.from_bytes(b"\0" * 20)
    with pytest.raises(ValueError):
        L.assemble_shard(g, index, [(10, b"\1" * 8)], 28)
    with pytest.raises(ValueError):
        L.assemble_shard(g, index[:10], [], 28)


def test_the_extent_counts_gaps_as_dead_space() -> None:
    g = L.ShardGeometry((3,), "end", 52, None)
    index = np.array([[0, 10], [L.EMPTY, L.EMPTY], [30, 5]], dtype=np.uint64)
    assert L.dead_space(index, g)[:2] == (35, 15)
    assert L.dead_space(L.empty_index((3,)), g)[:2] == (0, 0)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(
        st.one_of(st.none(), st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 20))),
        min_size=1,
        max_size=40,
    ),
    location=st.sampled_from(["start", "end"]),
)
def test_the_extent_is_the_end_and_sum_of_the_present_chunks(
    entries: list[tuple[int, int] | None], location: str
) -> None:
    """Against a plain model: every chunk present, some, none (``None``: absent)."""
    index = L.empty_index((len(entries),))
    for i, e in enumerate(entries):
        if e is not None:
            index[i] = e
    present = [e for e in entries if e is not None]
    g = L.ShardGeometry((len(entries),), location, 16 * len(entries) + 4, None)  # type: ignore[arg-type]
    end = max([g.data_start, *(o + n for o, n in present)])
    assert L.dead_space(index, g)[:2] == (end, sum(n for _, n in present))


def _index_codec(index_codecs: list[Any], location: str) -> ShardingCodec:
    return ShardingCodec(
        chunk_shape=(2,), codecs=[BytesCodec()], index_codecs=index_codecs, index_location=location
    )


INDEX_CODECS = {
    "bytes+crc32c": ([BytesCodec(), Crc32cCodec()], True),  # zarr's default
    "bytes": ([BytesCodec()], False),
    "bytes(big)+crc32c": ([BytesCodec(endian="big"), Crc32cCodec()], None),
    "bytes+crc32c+crc32c": ([BytesCodec(), Crc32cCodec(), Crc32cCodec()], None),
}


@pytest.mark.parametrize("name", sorted(INDEX_CODECS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_index_bytes_are_the_index_codecs_own_whichever_way_they_are_made(
    name: str, data: st.DataObject
) -> None:
    """``encode_index`` writes zarr's default index codecs directly (1.5 us
    where the codec chain costs 13); the bytes must be the chain's, and any
    other index codecs must go through the chain."""
    index_codecs, plain = INDEX_CODECS[name]
    codec = _index_codec(index_codecs, data.draw(st.sampled_from(["start", "end"])))
    assert L._plain_index_codecs(codec) is plain
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    index = L.empty_index(shape)
    for coords in np.ndindex(shape):
        if data.draw(st.booleans()):
            index[coords] = data.draw(st.tuples(st.integers(0, 1 << 62), st.integers(0, 1 << 62)))
    want = codec._encode_shard_index_sync(L._ShardIndex(shape, index)).to_bytes()
    assert L.encode_index(codec, index).to_bytes() == want
    assert sync(L.encode_index_async(codec, index)).to_bytes() == want
    np.testing.assert_array_equal(L.decode_index(codec, L.encode_index(codec, index), shape), index)


def _dead_bytes_model(entries: list[tuple[int, int] | None], start: int) -> set[int]:
    """Dead space, byte by byte: bytes in ``[start, end)`` no chunk covers."""
    present = [e for e in entries if e is not None]
    end = max([start, *(o + n for o, n in present)])
    covered = set()
    for o, n in present:
        covered.update(range(o, o + n))
    return set(range(start, end)) - covered


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.one_of(st.none(), st.tuples(st.integers(0, 300), st.integers(0, 60))),
        min_size=1,
        max_size=12,
    ),
    location=st.sampled_from(["start", "end"]),
)
def test_dead_space_is_the_extent_and_the_bytes_no_chunk_covers(
    entries: list[tuple[int, int] | None], location: str
) -> None:
    """Against a byte map: overlapping chunks, chunks before the data section
    (an index that starts the shard), absent ones, chunks of no bytes."""
    index = L.empty_index((len(entries),))
    for i, e in enumerate(entries):
        if e is not None:
            index[i] = e
    g = L.ShardGeometry((len(entries),), location, 16 * len(entries) + 4, None)  # type: ignore[arg-type]
    end, live, starts, lengths, plain = L.dead_space(index, g)
    present = [e for e in entries if e is not None]
    assert end == max([g.data_start, *(o + n for o, n in present)])
    assert live == sum(n for _, n in present)
    gaps = [(int(a), int(n)) for a, n in zip(starts, lengths, strict=True)]
    assert all(n > 0 for _, n in gaps)
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(gaps))  # in order, apart
    assert {b for a, n in gaps for b in range(a, a + n)} == _dead_bytes_model(entries, g.data_start)
    # Plain (what keeping gaps from one write to the next assumes): chunks of
    # a byte or more, none below the data section, no byte in two chunks.
    spans = [range(o, o + n) for o, n in present]
    apart = sum(map(len, spans)) == len({b for r in spans for b in r})
    expected = apart and all(n > 0 and o >= g.data_start for o, n in present)
    assert plain == expected


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    chunks=st.lists(
        st.tuples(
            st.booleans() | st.just(True),
            st.integers(1, 40),
            st.sampled_from([0, 0, 0, 2, 5, 9]),  # dead bytes before the chunk
        ),
        min_size=1,
        max_size=10,
    ),
    free=st.integers(0, 120),
    location=st.sampled_from(["start", "end"]),
)
def test_repointed_writes_new_chunks_into_dead_gaps_or_after_the_data(
    data: st.DataObject,
    chunks: list[tuple[bool, int, int]],
    free: int,
    location: str,
) -> None:
    """Against a model of the shard's bytes: a compressed shard with gaps of
    dead space and free space after its data, a write of some of its chunks
    (new bytes, or dropped). The stored index stays valid until it is
    rewritten (no byte it points at is written), the new index finds every
    chunk's bytes, no two chunks overlap, the bounds hold, and a chunk goes
    after the data only when no gap left holds it."""
    n = len(chunks)
    g = L.ShardGeometry((n,), location, 16 * n + 4, None)  # type: ignore[arg-type]
    index = L.empty_index((n,))
    image: dict[int, int] = {}  # byte offset -> value, for the bytes chunks hold
    content: dict[int, bytes] = {}
    at = g.data_start
    for j in data.draw(st.permutations(range(n))):
        present, nbytes, gap = chunks[j]
        at += gap
        if present:
            content[j] = bytes((j * 7 + k) % 251 for k in range(nbytes))
            index[j] = (at, nbytes)
            image.update(zip(range(at, at + nbytes), content[j], strict=True))
            at += nbytes
    end, live = L.dead_space(index, g)[:2]
    size = end + free + (g.index_nbytes if location == "end" else 0)
    assert g.data_end(size) == end + free
    places = data.draw(st.lists(st.integers(0, n - 1), unique=True, min_size=1))
    new: list[tuple[int, bytes | None]] = [
        (j, data.draw(st.one_of(st.none(), st.binary(min_size=0, max_size=50)))) for j in places
    ]
    plan = P.repointed(g, size, index, new)
    added = sum(len(b) for _, b in new if b is not None)
    replaced = sum(int(index[j, 1]) for j, _ in new if index[j, 0] != L.EMPTY)
    event("compacted" if plan is None else "re-pointed")
    if plan is None:  # the rule before dead gaps were reused would not fit either
        assert not P.fits_in_place(g, size, end + added, live - replaced + added)
        return
    writes, new_index = plan
    old = [(int(o), int(o + m)) for o, m in index.reshape(-1, 2) if o != L.EMPTY]
    reach = -1
    for offset, pieces in writes:
        stop = offset + sum(len(p) for p in pieces)
        assert offset > reach  # in byte order, adjacent runs merged
        assert g.data_start <= offset and stop <= g.data_end(size)
        assert all(stop <= a or offset >= b for a, b in old if b > a)
        image.update(zip(range(offset, stop), b"".join(pieces), strict=True))
        reach = stop
    content.update(new)
    spans = []
    for j in range(n):
        want = content.get(j)
        if want is None:
            assert tuple(new_index[j]) == (L.EMPTY, L.EMPTY)
            continue
        o, m = (int(v) for v in new_index[j])
        assert m == len(want) and bytes(image[b] for b in range(o, o + m)) == want
        spans.append((o, o + m))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    new_end, new_live = L.dead_space(new_index, g)[:2]
    assert P.fits_in_place(g, size, new_end, new_live)
    both = np.concatenate([index, new_index])  # gaps that neither index's chunks cover
    both_g = L.ShardGeometry((2 * n,), location, g.index_nbytes, None)  # type: ignore[arg-type]
    left_gaps = list(zip(*(a.tolist() for a in L.dead_space(both, both_g)[2:4]), strict=True))
    for j, b in new:
        if b is not None and b and new_index[j, 0] >= end:  # went after the data
            assert all(at >= end or m < len(b) for at, m in left_gaps)


def test_repointed_takes_the_smallest_gap_that_holds_a_chunk_and_never_a_replaced_one() -> None:
    # Data from the index's end: chunk 0 [0, 40), a gap of 30, chunk 1
    # [70, 110), a gap of 10, chunk 2 [120, 160), chunk 3 [160, 200); free
    # space to 300.
    g = L.ShardGeometry((5,), "start", 84, None)
    base = g.data_start
    index = L.empty_index((5,))
    for j, o in enumerate([0, 70, 120, 160]):
        index[j] = (base + o, 40)
    size = base + 300
    plan = P.repointed(g, size, index, [(4, b"a" * 8)])
    assert plan is not None
    writes, new = plan
    assert writes == [(base + 110, [b"a" * 8])]  # the gap of 10, not the one of 30
    # Chunk 2 replaced: its own bytes are not dead yet. The 12-byte chunk
    # goes into the gap of 30, the 9-byte one into the gap of 10.
    plan = P.repointed(g, size, index, [(2, b"b" * 12), (4, b"c" * 9)])
    assert plan is not None
    writes, new = plan
    assert writes == [(base + 40, [b"b" * 12]), (base + 110, [b"c" * 9])]
    assert new[2].tolist() == [base + 40, 12] and new[4].tolist() == [base + 110, 9]
    # Too large for any gap: after the data.
    plan = P.repointed(g, size, index, [(4, b"d" * 31)])
    assert plan is not None and plan[0] == [(base + 200, [b"d" * 31])]


def test_repointed_compacts_a_shard_whose_dead_bytes_would_pass_the_ratio_though_it_fits() -> None:
    # Chunk 0 [0, 10), chunk 1 [10, 50) from the index's end, free space to
    # 1,000. Chunk 1 written again with 40 bytes: they fit after the data,
    # but its old 40 bytes would be dead beside 50 live (more than half):
    # the shard is compacted instead. At exactly half, it is re-pointed.
    g = L.ShardGeometry((3,), "start", 52, None)
    base = g.data_start
    index = L.empty_index((3,))
    index[0] = (base, 10)
    index[1] = (base + 10, 40)
    size = base + 1000
    assert P.repointed(g, size, index, [(1, b"x" * 40)]) is None
    assert not P.fits_in_place(g, size, base + 90, 50)
    assert P.fits_in_place(g, size, base + 75, 50)  # dead 25: half the live bytes
    plan = P.repointed(g, size, index, [(2, b"y" * 5)])  # nothing dead: after the data
    assert plan is not None and plan[0] == [(base + 50, [b"y" * 5])]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
)
def test_compacted_packs_the_live_chunks_and_the_new_ones_in_the_given_order(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    """Against a model that reads the stored index chunk by chunk
    (``chunk_byte_range``): whatever the shard's rank (0-d included), an
    index with present, absent and half-empty rows (an empty offset and a
    length: present, as only a row whose offset and length are both empty
    is absent), new chunks and
    dropped ones over it, and any order of the chunks. Every live chunk is
    one piece, in ``order``, back to back from the data section's start, the
    stored ones as Spans of their stored bytes, and the new index points at
    each; the size leaves the slack the rule gives, with or without
    ``most`` (room for up to four times the live chunks at their mean size,
    not past ``most`` chunks; never more than four times the live bytes)."""
    coords = list(np.ndindex(shape))
    g = L.ShardGeometry(shape, "end", 16 * len(coords) + 4, None)
    stored = data.draw(st.booleans())
    index = L.empty_index(shape) if stored else None
    if index is not None:
        rows = index.reshape(-1, 2)
        for j in range(len(coords)):
            kind = data.draw(st.sampled_from(["absent", "present", "no offset"]))
            offset, nbytes = data.draw(st.integers(0, 1 << 40)), data.draw(st.integers(0, 1 << 20))
            if kind == "present":
                rows[j] = (offset, nbytes)
            elif kind == "no offset":
                rows[j] = (L.EMPTY, nbytes)
    changed = data.draw(st.lists(st.sampled_from(coords), unique=True, max_size=len(coords)))
    new = {c: data.draw(st.none() | st.binary(min_size=1, max_size=9)) for c in changed}
    order = data.draw(st.permutations(coords))
    model: dict[tuple[int, ...], object] = {}
    if index is not None:
        for c in coords:
            rng = L.chunk_byte_range(index, c)
            if rng is not None:
                model[c] = Span(*rng)
    for c, b in new.items():
        if b is None:
            model.pop(c, None)
        else:
            model[c] = b
    most = data.draw(st.none() | st.integers(0, len(coords) + 2))
    layout = P.compacted(g, index, new, order, most)
    if not model:
        assert layout is None
        return
    assert layout is not None
    total, parts, new_index = layout
    want = [c for c in order if c in model]
    assert [piece for _, piece in parts] == [model[c] for c in want]
    offset = g.data_start
    sizes = []
    for c, (at, piece) in zip(want, parts, strict=True):
        n = piece.end - piece.start if isinstance(piece, Span) else len(piece)  # type: ignore[arg-type]
        assert at == offset and new_index[c].tolist() == [offset, n]
        offset += n
        sizes.append(n)
    spans = [piece for _, piece in parts if isinstance(piece, Span)]
    assert all(type(s.start) is int and type(s.end) is int for s in spans)
    for c in coords:
        if c not in model:
            assert new_index[c].tolist() == [L.EMPTY, L.EMPTY]
    live = offset - g.data_start
    slack = max(int(live * P.SLACK_RATIO), P.MIN_SLACK_CHUNKS * max(sizes))
    if most is not None:
        room = min(P.MIN_SLACK_CHUNKS * len(sizes), most - len(sizes))
        slack = max(slack, room * (live // len(sizes)))
    assert total == g.index_nbytes + live + slack
    assert slack <= P.MIN_SLACK_CHUNKS * live


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple))
def test_present_chunks_are_the_byte_ranges_of_every_chunk_not_absent(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    """Against ``chunk_byte_range`` of each chunk, in C order: shards of rank
    0-3, rows present, absent, or with only the offset empty (present)."""
    index = L.empty_index(shape)
    rows = index.reshape(-1, 2)
    for j in range(rows.shape[0]):
        kind = data.draw(st.sampled_from(["absent", "present", "no offset"]))
        if kind != "absent":
            nbytes = data.draw(st.integers(0, 1 << 20))
            rows[j] = (data.draw(st.integers(0, 1 << 40)) if kind == "present" else L.EMPTY, nbytes)
    found = L.present_chunks(index)
    model = {c: L.chunk_byte_range(index, c) for c in np.ndindex(shape)}
    assert list(found.items()) == [(c, r) for c, r in model.items() if r is not None]
    assert all(type(v) is int for c, r in found.items() for v in (*c, *r))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple))
def test_a_chunk_is_present_unless_zarr_reads_it_as_absent(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    """``present`` against zarr's own ``_ShardIndex.get_chunk_slice`` (absent:
    offset and length both empty), with corrupt rows (only one of the two
    empty) among them: one rule for every count of a shard's chunks."""
    from zarr.codecs.sharding import _ShardIndex

    index = L.empty_index(shape)
    rows = index.reshape(-1, 2)
    for j in range(rows.shape[0]):
        kind = data.draw(st.sampled_from(["absent", "present", "no offset", "no length"]))
        offset, nbytes = data.draw(st.integers(0, 1 << 40)), data.draw(st.integers(0, 1 << 20))
        if kind != "absent":
            rows[j] = (L.EMPTY if kind == "no offset" else offset, nbytes)
            if kind == "no length":
                rows[j] = (offset, L.EMPTY)
    zarrs = _ShardIndex(shape, index)
    with np.errstate(over="ignore"):  # (zarr adds offset and length of a corrupt row)
        model = {c: zarrs.get_chunk_slice(c) is not None for c in np.ndindex(shape)}
    mask = L.present(index)
    assert mask.shape == shape
    assert {c: bool(mask[c]) for c in np.ndindex(shape)} == model


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple))
def test_live_after_counts_the_written_chunks_with_data_and_the_stored_ones_left_alone(
    data: st.DataObject, shape: tuple[int, ...]
) -> None:
    """Against a set model: a shard (or none) with chunks present, absent or
    corrupt (one half empty: present), a write of some chunks with data
    and some dropped."""
    g = L.ShardGeometry(shape, "end", 16, 64)
    coords = list(np.ndindex(shape))
    stored = data.draw(st.booleans())
    index = L.empty_index(shape) if stored else None
    alive = set()
    if index is not None:
        for c in coords:
            kind = data.draw(st.sampled_from(["absent", "present", "no offset"]))
            if kind != "absent":
                index[c] = (L.EMPTY if kind == "no offset" else 16 * g.place(c), 64)
                alive.add(c)
    written = data.draw(st.dictionaries(st.sampled_from(coords), st.booleans()))
    for c, has_data in written.items():
        alive.discard(c)
        if has_data:
            alive.add(c)
    rows = [g.place(c) for c in written]
    assert L.live_after(index, rows, sum(written.values())) == len(alive)
