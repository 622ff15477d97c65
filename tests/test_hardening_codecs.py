"""Every inner codec zarr can write through its default pipeline works through ours.

Issue 10, item 1: sharded arrays whose inner codecs included Blosc or a
numcodecs wrapper could not be written at all (``TypeError: unhashable type``),
because the pipeline cached shard geometry in an ``lru_cache`` keyed on the
``ShardingCodec``, and those codecs hold sets and dicts. Each cell here builds
the same sharded array twice, ours (``ShardWritePipeline`` on a
``RangeLockedStore``) and stock (zarr's default pipeline on a bare
``MemoryStore``), applies the same writes to both, and requires the same
values, read through our pipeline and through stock zarr from our store.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs as zc
import zarr.codecs.numcodecs as nc
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore

# zarr marks its numcodecs wrappers experimental; the warning is not the subject here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# (id, dtype, fill value, create_array keyword arguments): every codec class
# zarr ships in ``zarr.codecs`` and ``zarr.codecs.numcodecs`` that can sit inside
# a shard for a numeric dtype, each in the place zarr's create_array puts it
# (filters: array-to-array, serializer: array-to-bytes, compressors: bytes-to-bytes).
CELLS: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("bytes-little", "i4", 0, {"serializer": zc.BytesCodec(endian="little")}),
    ("bytes-big", "i4", 7, {"serializer": zc.BytesCodec(endian="big")}),
    ("crc32c", "i4", 0, {"compressors": [zc.Crc32cCodec()]}),
    ("transpose", "i4", 0, {"filters": [zc.TransposeCodec(order=(1, 0))]}),
    ("blosc", "i4", 0, {"compressors": [zc.BloscCodec()]}),
    (
        "blosc-lz4-bitshuffle",
        "f8",
        np.nan,
        {"compressors": [zc.BloscCodec(cname="lz4", shuffle="bitshuffle", clevel=3)]},
    ),
    ("gzip", "i4", 0, {"compressors": [zc.GzipCodec(level=1)]}),
    ("zstd", "u2", 3, {"compressors": [zc.ZstdCodec(level=1, checksum=True)]}),
    ("scale-offset", "f4", 0.0, {"filters": [zc.ScaleOffset(offset=1.0, scale=2.0)]}),
    ("nc-blosc", "i4", 0, {"compressors": [nc.Blosc()]}),
    ("nc-lz4", "i4", 0, {"compressors": [nc.LZ4()]}),
    ("nc-zlib", "i4", 0, {"compressors": [nc.Zlib()]}),
    ("nc-gzip", "i4", 0, {"compressors": [nc.GZip()]}),
    ("nc-bz2", "i4", 0, {"compressors": [nc.BZ2()]}),
    ("nc-lzma", "i4", 0, {"compressors": [nc.LZMA()]}),
    ("nc-zstd", "i4", 0, {"compressors": [nc.Zstd()]}),
    ("nc-shuffle+zstd", "i4", 0, {"compressors": [nc.Shuffle(elementsize=4), nc.Zstd()]}),
    ("nc-crc32", "i4", 0, {"compressors": [nc.CRC32()]}),
    ("nc-crc32c", "i4", 0, {"compressors": [nc.CRC32C()]}),
    ("nc-adler32", "i4", 0, {"compressors": [nc.Adler32()]}),
    ("nc-fletcher32", "i4", 0, {"compressors": [nc.Fletcher32()]}),
    ("nc-jenkins", "i4", 0, {"compressors": [nc.JenkinsLookup3()]}),
    ("nc-delta", "i4", 0, {"filters": [nc.Delta(dtype="<i4")]}),
    ("nc-astype", "f8", 0.0, {"filters": [nc.AsType(encode_dtype="f4", decode_dtype="f8")]}),
    ("nc-bitround", "f4", 0.0, {"filters": [nc.BitRound(keepbits=8)]}),
    ("nc-quantize", "f8", 0.0, {"filters": [nc.Quantize(digits=3, dtype="<f8")]}),
    (
        "nc-fixedscaleoffset",
        "f8",
        0.0,
        {"filters": [nc.FixedScaleOffset(offset=1, scale=100, dtype="<f8", astype="<i4")]},
    ),
    ("nc-packbits", "bool", False, {"filters": [nc.PackBits()]}),
]
if _have("pcodec"):  # pragma: no cover - optional numcodecs dependency
    CELLS.append(("nc-pcodec", "f8", 0.0, {"serializer": nc.PCodec()}))
if _have("zfpy"):  # pragma: no cover - optional numcodecs dependency
    CELLS.append(("nc-zfpy", "f8", 0.0, {"serializer": nc.ZFPY(mode=4, tolerance=-1)}))

SHAPE = (12, 10)
CHUNKS = (3, 5)  # inner chunks
SHARDS = (6, 10)


def _values(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.dtype(dtype).kind == "f":
        return np.round(rng.uniform(-50, 50, size=shape), 2).astype(dtype)
    return rng.integers(0, 100, size=shape).astype(dtype)


def _apply_writes(arr: zarr.Array[Any], dtype: str, fill: Any) -> None:
    """Partial chunks across shards, a whole inner chunk, a whole shard, a
    scalar, and fill values over data (an all-fill chunk and shard)."""
    arr[1:8, 2:9] = _values(dtype, (7, 7), 1)
    arr[3:6, 5:10] = _values(dtype, (3, 5), 2)  # exactly one inner chunk
    arr[6:12, :] = _values(dtype, (6, 10), 3)  # exactly one shard
    arr[0, 0] = _values(dtype, (1,), 4)[0]
    arr[3:6, 0:5] = fill  # one inner chunk back to fill
    arr[6:12, :] = fill  # the whole second shard back to fill


def over_every_cell[F](test: F) -> F:
    """Parametrize ``test`` over every cell, both stores (``kind``) and both
    index locations (with :func:`cell_options`): this module's test and the
    writer's (``test_shard_writer_codecs``)."""
    test = pytest.mark.parametrize("index_location", ["start", "end"])(test)
    test = pytest.mark.parametrize(
        ("cell", "dtype", "fill", "kwargs"), CELLS, ids=[c[0] for c in CELLS]
    )(test)
    return pytest.mark.parametrize("kind", ["memory", "local"])(test)


def cell_options(
    dtype: str, fill: Any, kwargs: dict[str, Any], index_location: str, shards: tuple[int, ...]
) -> dict[str, Any]:
    """``create_array``'s keyword arguments for a cell of :data:`CELLS`."""
    return {
        "dtype": dtype,
        "fill_value": fill,
        "shards": {"shape": shards, "index_location": index_location},
        "compressors": None,
        **kwargs,
    }


def _store(kind: str, tmp_path: Any) -> RangeLockedStore[Any]:
    return RangeLockedStore(LocalStore(tmp_path) if kind == "local" else MemoryStore())


@pytest.mark.timeout(60)
@over_every_cell
def test_every_inner_codec_writes_what_stock_zarr_writes(
    kind: str,
    cell: str,
    dtype: str,
    fill: Any,
    kwargs: dict[str, Any],
    index_location: str,
    tmp_path: Any,
) -> None:
    options = cell_options(dtype, fill, kwargs, index_location, SHARDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = new_array(
            _store(kind, tmp_path), shape=SHAPE, chunks=CHUNKS, pipeline=OURS, **options
        )
        stock = new_array(MemoryStore(), shape=SHAPE, chunks=CHUNKS, pipeline=STOCK, **options)
    _apply_writes(ours, dtype, fill)
    _apply_writes(stock, dtype, fill)
    expected = stock[...]
    np.testing.assert_array_equal(ours[...], expected)
    with zarr.config.set(STOCK):
        reread = zarr.open_array(ours.store, mode="r")
        np.testing.assert_array_equal(reread[...], expected)


def test_the_pipeline_never_hashes_a_codec() -> None:
    """The regression itself, without zarr in between: a codec whose hash raises
    still gets its shard geometry (cached by identity, not by hash)."""
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.dtype import Int32

    from zarr_rangelock.shards import _pipeline

    codec = zc.ShardingCodec(chunk_shape=(2,), codecs=[zc.BytesCodec(), nc.Zlib()])
    with pytest.raises(TypeError, match="unhashable"):
        hash(codec)
    spec = ArraySpec(
        shape=(8,),
        dtype=Int32(),
        fill_value=0,
        config=ArrayConfig.from_dict({}),
        prototype=default_buffer_prototype(),
    )
    first = _pipeline._facts(codec, spec)
    assert first is not None
    assert first.geometry.chunks_per_shard == (4,)
    assert _pipeline._facts(codec, spec) is first  # cached
    assert _pipeline._grid((8,), codec) is _pipeline._grid((8,), codec)
