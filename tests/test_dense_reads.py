"""Reads of dense shards (``shards/_reads.py``) return exactly what stock zarr does.

Random arrays (1-3 dimensions, edge chunks, both index locations, with and
without crc32c, big-endian too) are written densely through our pipeline, then
read back with random selections of every kind zarr has (basic with steps and
negative indices; orthogonal with integer arrays in and out of order, masks,
slices and integers; coordinate, mask, block) through our pipeline and
through stock zarr on the same files; the values and the errors must be the
same. A counter shows the dense reader is really used, so the test checks it
rather than zarr's path. For some examples every run is read in a worker
thread (``RUN_INLINE_MAX_BYTES`` 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.chunk_utils import ChunkTransform
from zarr.storage import LocalStore

from tests._read_helpers import (
    answers,
    create,
    grids,
    opened,
    read_into_other_memory,
    reads_match,
    stores,
)
from tests._shard_helpers import OURS, STOCK
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.shards import _reads

pytestmark = pytest.mark.timeout(120)


@st.composite
def arrays(draw: st.DrawFn) -> dict[str, Any]:
    return {
        **draw(grids()),
        "dtype": draw(st.sampled_from(["i4", ">f8", "u1"])),
        "crc": draw(st.booleans()),
        "index_at_start": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
        "off_loop": draw(st.booleans()),  # every run read in a worker thread
    }


def _make(store: Any, spec: dict[str, Any], pipeline: dict[str, str]) -> zarr.Array[Any]:
    if spec["crc"]:
        return create(store, spec, pipeline, compressors=[Crc32cCodec()])
    return create(store, spec, pipeline, serializer=BytesCodec(), compressors=None)


@pytest.mark.parametrize("kind", ["memory", "local"])
@settings(
    max_examples=int(os.environ.get("DENSE_READ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=arrays(), data=st.data())
def test_dense_reads_return_what_stock_zarr_reads(
    kind: str,
    spec: dict[str, Any],
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner, store = stores(kind, tmp_path_factory.mktemp("s"))
    arr = _make(store, spec, OURS)
    values = np.random.default_rng(spec["seed"]).integers(1, 100, size=spec["shape"])
    with zarr.config.set(OURS):
        arr[...] = values.astype(spec["dtype"])
    ours, stock = opened(store, inner)
    with monkeypatch.context() as m, answers(_reads, "read_dense") as used:
        if spec["off_loop"]:
            m.setattr(_reads, "RUN_INLINE_MAX_BYTES", 0)
        basic = reads_match(ours, stock, data)
    asked = any(want.size > 0 for want in basic)
    full = all(n % s == 0 for n, s in zip(spec["shape"], spec["shards"], strict=True))
    if asked and full:  # every chunk of every shard written: dense, the reader answered
        assert any(used)


def _written(root: Path, crc: bool) -> zarr.Array[Any]:
    """A 40 x 40 i4 array of dense 16 x 16 shards at ``root``, every element written."""
    spec = {"shape": (40, 40), "chunks": (4, 4), "shards": (16, 16), "dtype": "i4",
            "crc": crc, "index_at_start": False}  # fmt: skip
    arr = _make(RangeLockedStore(LocalStore(root)), spec, OURS)
    with zarr.config.set(OURS):
        arr[...] = np.arange(1600).reshape(40, 40)
    return arr


def test_the_dense_reader_answers_for_dense_shards(tmp_path: Path) -> None:
    arr = _written(tmp_path, crc=False)
    with zarr.config.set(OURS), answers(_reads, "read_dense") as answered:
        np.testing.assert_array_equal(arr[3:37, 5:33], np.arange(1600).reshape(40, 40)[3:37, 5:33])
    assert answered and all(answered)  # every shard of the read, from the dense reader


def test_a_read_into_another_kind_of_memory_is_left_to_zarr(tmp_path: Path) -> None:
    arr = _written(tmp_path, crc=True)
    with zarr.config.set(STOCK):
        stock = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
    read_into_other_memory(arr, stock, _reads, "read_dense")


@pytest.mark.parametrize(
    ("dtype", "crc", "plain"),
    [("i4", False, True), ("u1", False, True), (">f8", False, False), ("i4", True, False)],
)
def test_chunks_of_native_bytes_are_read_as_views_without_zarrs_codecs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str, crc: bool, plain: bool
) -> None:
    # Inner chunks that are the array's native bytes (`bytes` alone, native or
    # one-byte items) are copied into the output straight from the shard's
    # bytes; big-endian items on this machine, or a crc32c, still go through
    # zarr's transform. The values are stock zarr's either way.
    store = RangeLockedStore(LocalStore(tmp_path))
    spec = {"shape": (40, 40), "chunks": (4, 4), "shards": (16, 16), "dtype": dtype,
            "crc": crc, "index_at_start": False}  # fmt: skip
    arr = _make(store, spec, OURS)
    want = (np.arange(1600).reshape(40, 40) % 200).astype(dtype)
    with zarr.config.set(OURS):
        arr[...] = want
    decodes: list[int] = []
    real = ChunkTransform.decode_chunk

    def counted(self: Any, *a: Any, **k: Any) -> Any:
        decodes.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(ChunkTransform, "decode_chunk", counted)
    with zarr.config.set(OURS):
        np.testing.assert_array_equal(arr[3:37, 5:33], want[3:37, 5:33])
        np.testing.assert_array_equal(arr[...], want)
        np.testing.assert_array_equal(arr[7, :], want[7, :])
    assert (decodes == []) is plain
    with zarr.config.set(STOCK):
        stock = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
        np.testing.assert_array_equal(stock[...], want)


@pytest.mark.parametrize("crc", [False, True])  # a view copied, or zarr's transform
@pytest.mark.parametrize("kind", ["memory", "local"])
def test_reads_that_place_a_shards_values_out_of_order_return_stocks_values(
    kind: str, crc: bool, tmp_path: Path
) -> None:
    # An orthogonal selection with integers out of order gives each shard an
    # integer array as its place in the output; out[that] is a copy, and the
    # dense reader once wrote the chunks into it: the read returned whatever
    # the output held before (uninitialised memory). It now leaves such
    # shards to zarr, and still answers for the same selection in increasing
    # order and for one element (an output of no dimensions, where out[()]
    # is a scalar unless a view is asked for).
    inner, store = stores(kind, tmp_path)
    spec = {"shape": (8, 8), "chunks": (2, 2), "shards": (4, 4), "dtype": "i4",
            "crc": crc, "index_at_start": False}  # fmt: skip
    arr = _make(store, spec, OURS)
    want = np.arange(64, dtype="i4").reshape(8, 8) + 1
    with zarr.config.set(OURS):
        arr[...] = want
    ours, stock = opened(store, inner)
    with answers(_reads, "read_dense") as answered:
        for how, sel, expected, dense in [
            ("oindex", ([3, 1], slice(None)), want[[3, 1], :], False),
            ("oindex", (slice(None), [6, 2, 2]), want[:, [6, 2, 2]], False),
            ("oindex", ([5, 0, 4], slice(1, 7)), want[[5, 0, 4], 1:7], False),
            ("oindex", ([1, 3], slice(None)), want[[1, 3], :], True),
            ("basic", (5, 6), want[5, 6], True),
        ]:
            answered.clear()
            with zarr.config.set(OURS):
                got = ours.oindex[sel] if how == "oindex" else ours[sel]
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(
                stock.oindex[sel] if how == "oindex" else stock[sel], expected
            )
            # (out of order: declined, or not even asked: read_batch checks)
            assert (answered != [] and all(answered)) is dense, (sel, answered)
