"""Reads of shards by their index (``shards/_reads.read_packed``) return what stock zarr does.

Random arrays (1-3 dimensions, edge chunks, both index locations, zstd or
gzip, with crc32c or not, or uncompressed: fixed-size chunks) get a random
history of region writes through our pipeline, stock zarr's or both in turn
(values that compress, and regions of the fill value, whose chunks are
dropped: shards with absent chunks, gaps, chunks out of order and
compactions; stock's compact shards, in its chunk order), then random
selections of every kind zarr has are read through our pipeline and
through stock zarr on the same files: the values and the errors must be
the same. A counter shows our readers are really used, so the test checks
them rather than zarr's path. Decodes are forced into split pieces in
worker threads, and every run's read into a worker, for some examples.
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
from zarr.codecs import Crc32cCodec, GzipCodec, ZstdCodec
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
from zarr_rangelock.store import _io

pytestmark = pytest.mark.timeout(120)


@st.composite
def arrays(draw: st.DrawFn) -> dict[str, Any]:
    return {
        **draw(grids()),
        "dtype": draw(st.sampled_from(["i4", ">f8", "u1"])),
        # (none: fixed-size chunks, read here where a shard is not dense)
        "compressor": draw(st.sampled_from(["zstd", "gzip", "zstd+crc32c", "none", "crc32c"])),
        # whose pipeline writes: ours, stock zarr's (compact shards), or
        # either, drawn for each write
        "writer": draw(st.sampled_from(["ours", "stock", "mixed"])),
        "index_at_start": draw(st.booleans()),
        "writes": draw(st.integers(1, 6)),
        "split": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
    }


def _make(store: Any, spec: dict[str, Any], pipeline: dict[str, str]) -> zarr.Array[Any]:
    compressors = {
        "zstd": [ZstdCodec(level=1)],
        "gzip": [GzipCodec(level=1)],
        "zstd+crc32c": [ZstdCodec(level=1), Crc32cCodec()],
        "none": None,
        "crc32c": [Crc32cCodec()],
    }[spec["compressor"]]
    return create(store, spec, pipeline, compressors=compressors)


def _history(arr: zarr.Array[Any], spec: dict[str, Any]) -> None:
    """Random region writes: random small values (some regions all fill,
    whose chunks are dropped), the first over the whole array; through
    ``arr``, or, where ``spec["writer"]`` is "stock" or "mixed", through
    stock zarr's pipeline on the same store (always, or for a random half
    of the writes)."""
    rng = np.random.default_rng(spec["seed"])
    with zarr.config.set(STOCK):
        stock = zarr.open_array(arr.store, path=arr.path, mode="r+")
    writer = spec.get("writer", "ours")
    shape = spec["shape"]
    for k in range(spec["writes"]):
        region = tuple(
            slice(0, n) if k == 0 else slice(*sorted(rng.integers(0, n + 1, 2))) for n in shape
        )
        size = tuple(s.stop - s.start for s in region)
        fill_only = k > 0 and rng.random() < 0.3
        values = np.zeros(size) if fill_only else rng.integers(0, 4, size=size)
        by_stock = writer == "stock" or (writer == "mixed" and rng.random() < 0.5)
        (stock if by_stock else arr)[region] = values.astype(spec["dtype"])


def _written(store: RangeLockedStore, writes: int, seed: int) -> zarr.Array[Any]:
    """A 40 x 40 zstd array of four shards in ``store`` after ``writes``
    random writes (:func:`_history`), opened to read through our pipeline."""
    spec = {"shape": (40, 40), "chunks": (5, 5), "shards": (20, 20), "dtype": "i4",
            "compressor": "zstd", "index_at_start": False, "writes": writes,
            "seed": seed}  # fmt: skip
    _history(_make(store, spec, OURS), spec)
    with zarr.config.set(OURS):
        return zarr.open_array(store, path="a", mode="r")


@pytest.mark.parametrize("kind", ["memory", "local"])
@settings(
    max_examples=int(os.environ.get("PACKED_READ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=arrays(), data=st.data())
def test_packed_reads_return_what_stock_zarr_reads(
    kind: str,
    spec: dict[str, Any],
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner, store = stores(kind, tmp_path_factory.mktemp("s"))
    _history(_make(store, spec, OURS), spec)
    ours, stock = opened(store, inner)
    with (
        monkeypatch.context() as m,
        answers(_reads, "read_packed") as used,
        answers(_reads, "read_dense") as dense,
    ):
        if spec["split"]:  # every read and decode in workers, in pieces of one chunk
            m.setattr(_io, "INLINE_MAX_S", 0.0)
            m.setattr(_io, "CPUS", 4)
            m.setattr(_reads, "RUN_INLINE_MAX_BYTES", 0)
        basic = reads_match(ours, stock, data)
        with zarr.config.set(OURS):
            whole = ours[...]
    # (a value not the fill: its shard exists, the reader must answer)
    asked = any(bool(np.any(want != 0)) for want in basic)
    np.testing.assert_array_equal(whole, stock[...])
    if asked:
        assert any(used) or any(dense)  # (a dense shard is read_dense's)


def test_a_whole_array_read_of_compressed_shards_goes_through_the_packed_reader(
    tmp_path: Path,
) -> None:
    """Every shard of a compressed array, some with absent chunks, is read by
    the packed reader (none left to zarr) and reads as stock zarr reads it."""
    inner = LocalStore(tmp_path / "root")
    ours = _written(RangeLockedStore(inner), writes=5, seed=7)
    with answers(_reads, "read_packed") as used, zarr.config.set(OURS):
        got = ours[...]
    assert used == [True] * 4
    with zarr.config.set(STOCK):
        np.testing.assert_array_equal(got, zarr.open_array(inner, path="a", mode="r")[...])


def test_a_read_into_another_kind_of_memory_is_left_to_zarr(tmp_path: Path) -> None:
    ours = _written(RangeLockedStore(LocalStore(tmp_path)), writes=5, seed=3)
    with zarr.config.set(STOCK):
        stock = zarr.open_array(LocalStore(tmp_path), path="a", mode="r")
    read_into_other_memory(ours, stock, _reads, "read_packed")


def test_uncompressed_shards_stock_zarr_wrote_with_absent_chunks_are_read_by_their_index(
    tmp_path: Path,
) -> None:
    """An uncompressed array stock zarr wrote, with chunks of the fill value
    (absent) and edge shards: every shard that is not dense is read by the
    packed reader (each present chunk copied from a view of its run), the
    full ones by the dense reader, and the values are stock zarr's."""
    inner = LocalStore(tmp_path)
    with zarr.config.set(STOCK):
        arr = zarr.create_array(
            inner, name="a", shape=(50, 45), chunks=(5, 5), shards=(20, 20), dtype="i4",
            fill_value=0, compressors=None,
        )  # fmt: skip
        values = np.arange(1, 50 * 45 + 1, dtype="i4").reshape(50, 45)
        values[:, 5:15] = 0  # the chunks of columns 5-15: absent
        arr[...] = values
    with zarr.config.set(OURS):
        ours = zarr.open_array(RangeLockedStore(inner), path="a", mode="r")
    with (
        zarr.config.set(OURS),
        answers(_reads, "read_packed") as packed,
        answers(_reads, "read_dense") as dense,
    ):
        np.testing.assert_array_equal(ours[...], values)
        np.testing.assert_array_equal(ours[3:47, 2:44:3], values[3:47, 2:44:3])
    # Of the 9 shards, (0, 1) and (1, 1) are full (dense); the others have
    # absent chunks, of the fill or past the array's edge: the dense reader
    # hands them to the packed one with the index it looked up.
    assert dense == [True] * 9 * 2 and packed == [True] * 7 * 2


def test_a_shard_shorter_than_its_index_says_is_left_to_zarr(tmp_path: Path) -> None:
    """A shard whose last chunk lacks its last bytes (stock zarr's layout:
    the index first, then the chunks packed): the packed reader leaves it to
    zarr, which raises the error stock zarr raises reading the same file."""
    inner = LocalStore(tmp_path / "root")
    with zarr.config.set(STOCK):
        arr = zarr.create_array(
            inner, name="a", shape=(8,), chunks=(2,), dtype="i4", fill_value=0,
            shards={"shape": (8,), "index_location": "start"}, compressors=[ZstdCodec()],
        )  # fmt: skip
        arr[...] = np.arange(8, dtype="i4")
    path = tmp_path / "root" / "a" / "c" / "0"
    path.write_bytes(path.read_bytes()[:-3])
    with zarr.config.set(STOCK):
        stock = zarr.open_array(inner, path="a", mode="r")
        with pytest.raises(RuntimeError) as want:
            stock[...]
    with answers(_reads, "read_packed") as used, zarr.config.set(OURS):
        ours = zarr.open_array(RangeLockedStore(inner), path="a", mode="r")
        with pytest.raises(RuntimeError) as got:
            ours[...]
    assert str(got.value) == str(want.value)
    assert used == [False]


def test_the_shards_of_one_read_share_the_idle_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of four shards decodes each shard's chunks as one of four
    (``SHARING``: they share the idle CPUs); a read of one shard, alone."""
    ours = _written(RangeLockedStore(LocalStore(tmp_path / "root")), writes=1, seed=3)
    sharing: list[int] = []
    real = _reads.map_unless_cheap

    async def spy(*args: Any, **kwargs: Any) -> Any:
        sharing.append(_io.SHARING.get())
        return await real(*args, **kwargs)

    monkeypatch.setattr(_reads, "map_unless_cheap", spy)
    with zarr.config.set(OURS):
        ours[...]
        assert sharing == [4] * 4
        sharing.clear()
        ours[0:20, 20:40]
        assert sharing == [1]


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    gaps=st.lists(st.integers(0, 40), min_size=12, max_size=12),
    max_gap=st.integers(0, 40),
    max_bytes=st.integers(1, 200),
)
def test_chunks_are_read_in_the_runs_zarrs_sharding_codec_coalesces_them(
    sizes: list[int], gaps: list[int], max_gap: int, max_bytes: int
) -> None:
    # Chunks back to back or apart by random gaps; a gap equal to max_gap
    # and a run of exactly max_bytes are drawn often (small numbers).
    # zarr's plan (zarr.core._coalesce) is the reference: one more gap byte
    # or run byte read than it would is a read of bytes nobody asked for
    # (a run without a bound read a whole shard for its first and last chunks).
    coalesce = pytest.importorskip("zarr.core._coalesce")
    from zarr.abc.store import RangeByteRequest

    spans, at = [], 0
    for i, n in enumerate(sizes):
        at += gaps[i]
        spans.append((at, at + n, i))
        at += n
    ours = [[i for _, _, i in run] for run in _reads._runs(spans, max_gap, max_bytes)]
    groups, _ = coalesce.coalesce_ranges(
        [RangeByteRequest(s, e) for s, e, _ in spans],
        max_gap_bytes=max_gap,
        max_coalesced_bytes=max_bytes,
    )
    assert ours == [[i for i, _ in group] for group in groups]
