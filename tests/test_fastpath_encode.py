"""The empty-chunk shortcut of whole chunks agrees with zarr (issue 12).

``ShardWriter``'s compressed fast path and the pipeline's encoding of whole
chunks skip zarr's ``chunk_is_empty`` (a compare of every element with the
fill value) when the chunk's first element alone shows it holds data: its
bytes differ from the fill's (``_fill.first_is_data``). That is sound only
where zarr's rule makes equal values have equal bytes (``fill_head`` says
where); a wrong shortcut would store a chunk that zarr drops. Checked here
against zarr's own rule on chunks built to sit on its edges: NaN payloads,
-0.0 against a zero fill, complex zeros, a first element of fill followed
by data. The in-place fast path's check for a complex dtype or a NaN fill
(``_fill.ends_may_be_fill``) likewise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_utils import chunk_is_empty
from zarr.core.dtype import parse_dtype

from zarr_rangelock.shards._fill import (
    UNCOMPARED,
    ends_may_be_fill,
    fill_head,
    first_is_data,
    value_fill,
)

pytestmark = pytest.mark.timeout(120)

DTYPES = ["i1", "u2", "i4", "i8", "f2", "f4", "f8", "bool", "c8", "c16", ">i4", ">f8"]
SPECIAL = [0.0, -0.0, 1.0, -2.5, float("nan"), float("inf"), 7]
NAN = float("nan")
COMPLEX_SPECIAL = [complex(-0.0, 0.0), complex(0.0, -0.0), complex(NAN, 0.0), complex(0.0, NAN)]
NAN_BITS = {"f2": 0x7E01, "f4": 0x7FC00001, "f8": 0x7FF8000000000001}  # not numpy's NaN


def _spec(dtype: np.dtype[Any], fill: Any) -> ArraySpec:
    zdtype = parse_dtype(dtype, zarr_format=3)
    return ArraySpec(
        shape=(4, 3),
        dtype=zdtype,
        fill_value=zdtype.cast_scalar(fill),
        config=ArrayConfig(order="C", write_empty_chunks=False, read_missing_chunks=True),
        prototype=default_buffer_prototype(),
    )


def _value(draw: Any, dtype: np.dtype[Any], fill: Any) -> Any:
    if dtype.kind == "b":
        return draw(st.booleans())
    kinds = ["fill", "int"] + (["special"] if dtype.kind in "fc" else [])
    if dtype.kind == "c":
        kinds.append("complex-special")
    if dtype.kind == "f" and dtype.str[1:] in NAN_BITS:
        kinds.append("nan-payload")
    kind = draw(st.sampled_from(kinds))
    if kind == "fill":
        return fill
    if kind == "special":
        return draw(st.sampled_from(SPECIAL))
    if kind == "complex-special":
        return draw(st.sampled_from(COMPLEX_SPECIAL))
    if kind == "nan-payload":
        bits = NAN_BITS[dtype.str[1:]]
        return np.array(bits, dtype=f"u{dtype.itemsize}").view(dtype.newbyteorder("="))[()]
    return draw(st.integers(0 if dtype.kind == "u" else -3, 3))


def _draw_chunk(data: st.DataObject, dtype: np.dtype[Any], fill: Any) -> np.ndarray:
    """A 4 x 3 chunk of ``_value``'s values, half the time every element the
    first's (often all fill)."""
    chunk = np.empty((4, 3), dtype=dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for i in np.ndindex(chunk.shape):
            chunk[i] = _value(data.draw, dtype, fill)
        if data.draw(st.booleans()):
            chunk[...] = chunk.flat[0]
    return chunk


@pytest.mark.parametrize("name", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_chunk_the_shortcut_calls_data_is_never_one_zarr_drops(
    name: str, data: st.DataObject
) -> None:
    dtype = np.dtype(name)
    fill = data.draw(st.sampled_from(SPECIAL if dtype.kind in "fc" else [0, 1, 7]))
    if dtype.kind == "b":
        fill = bool(fill)
    spec = _spec(dtype, fill)
    zfill = spec.fill_value
    chunk = _draw_chunk(data, dtype, zfill)
    head = fill_head(dtype, zfill)
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
    if first_is_data(chunk, dtype, head):
        assert not chunk_is_empty(nd, spec), (dtype, fill, chunk)


@pytest.mark.parametrize("name", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_in_place_path_drops_exactly_the_chunks_zarr_drops(
    name: str, data: st.DataObject
) -> None:
    # The in-place fast path's rule (``_fastpaths.encode``): a chunk whose
    # bytes are the fill's is dropped; else, where ``value_fill`` is unsure
    # of the dtype and fill, one whose ends may be fill goes to zarr's
    # chunk_is_empty; else it is data.
    dtype = np.dtype(name)
    native = dtype.newbyteorder("=")
    fills = SPECIAL + COMPLEX_SPECIAL if dtype.kind == "c" else SPECIAL
    fill = data.draw(st.sampled_from(fills if dtype.kind in "fc" else [0, 1, 7]))
    spec = _spec(dtype, bool(fill) if dtype.kind == "b" else fill)
    zfill = spec.fill_value
    chunk = _draw_chunk(data, dtype, zfill).astype(native)
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
    zarr_drops = chunk_is_empty(nd, spec)
    unsure, item = value_fill(native, zfill)
    if chunk.tobytes() == np.full_like(chunk, zfill).tobytes():
        drops = True
    else:
        drops = unsure and ends_may_be_fill(chunk, item) and zarr_drops
    assert drops is zarr_drops, (dtype, zfill, chunk)


@pytest.mark.parametrize(
    ("dtype", "fill", "shortcut"),
    [
        ("i4", 0, True),
        ("bool", False, True),
        ("f4", 0.0, True),
        ("f4", -0.0, True),
        ("f8", 1.5, True),
        ("f4", float("nan"), False),  # any NaN counts as the fill
        ("c8", 0, False),  # -0.0+0j equals 0j with other bytes
        ("c16", float("nan"), False),
    ],
)
def test_where_the_shortcut_applies(dtype: str, fill: Any, shortcut: bool) -> None:
    """Where it applies, a chunk of data takes it; the fill's own chunk never does."""
    dt = np.dtype(dtype)
    spec = _spec(dt, fill)
    head = fill_head(dt, spec.fill_value)
    assert (head is not None) is shortcut
    full = np.full((4, 3), spec.fill_value, dtype=dt)
    assert not first_is_data(full, dt, head)
    other = full.copy()
    other.flat[0] = 1 if dt.kind != "b" else not fill
    assert first_is_data(other, dt, head) is shortcut
    if dt.itemsize > 1:  # another dtype (the other byte order) never takes it
        assert not first_is_data(other.astype(dt.newbyteorder("S")), dt, head)


@pytest.mark.parametrize(
    ("dtype", "fill", "first"),
    [
        ("f4", float("nan"), "nan-payload"),  # zarr: NaN equals NaN, whatever the bits
        ("f8", float("nan"), "nan-payload"),
        ("f4", 0.0, -0.0),  # zarr compares a zero fill bit by bit: data
        ("f4", -0.0, 0.0),
        ("c8", 0, complex(-0.0, 0.0)),  # equal to 0j with other bytes: dropped
    ],
)
def test_the_edges_of_zarrs_rule(dtype: str, fill: Any, first: Any) -> None:
    """A chunk of one repeated value on an edge of zarr's rule: the shortcut
    calls it data only where zarr stores it."""
    dt = np.dtype(dtype)
    spec = _spec(dt, fill)
    if first == "nan-payload":
        first = np.array(NAN_BITS[dtype], dtype=f"u{dt.itemsize}").view(dt)[()]
    chunk = np.full((4, 3), first, dtype=dt)
    assert chunk.tobytes() != np.full((4, 3), spec.fill_value, dtype=dt).tobytes()
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
    empty = chunk_is_empty(nd, spec)
    assert first_is_data(chunk, dt, fill_head(dt, spec.fill_value)) is not empty


@pytest.mark.parametrize(
    ("dtype", "fill", "unsure"),
    [
        ("i4", 0, False),
        ("f4", 0.0, False),  # zarr compares a zero fill bit by bit
        ("f8", 1.5, False),  # equal values, equal bytes
        ("f4", float("nan"), True),  # any NaN equals a NaN fill
        ("c8", 0, True),  # -0.0+0j equals 0j
        ("U4", "", False),
        ([("a", "i2"), ("b", "i4")], (0, 0), False),
        ([("a", "i2"), ("b", "f4")], (0, 0.0), True),  # fields by value: -0.0 == 0.0
        ([("a", "i2"), ("r", [("x", "c8")])], (0, (0j,)), True),  # a nested record
        ([("a", "i2"), ("v", "f4", (2,))], (0, (0.0, 0.0)), True),  # an array field
    ],
)
def test_where_the_in_place_path_asks_zarrs_rule(dtype: Any, fill: Any, unsure: bool) -> None:
    """``value_fill``: unsure exactly where zarr compares values whose bytes
    can differ; a chunk of the fill itself always may be fill."""
    dt = np.dtype(dtype)
    fill_value = np.array(fill, dtype=dt)[()]
    got, item = value_fill(dt, fill_value)
    assert got is unsure
    if unsure:
        assert ends_may_be_fill(np.full((4, 3), fill_value, dtype=dt), item)


RECORD = np.dtype([("a", "i2"), ("b", "f4")])


@pytest.mark.parametrize(
    ("last", "dropped"),
    [((0, -0.0), True), ((0, 0.0), True), ((1, 0.0), False), ((0, float("nan")), False)],
)
def test_records_ends_are_compared_as_zarr_compares_records(last: Any, dropped: bool) -> None:
    """A record's fields by value, NaN unequal to NaN (zarr compares records
    without ``equal_nan``): ``ends_may_be_fill`` of a chunk whose elements
    are (0, -0.0) but the last is zarr's answer for the whole chunk."""
    fill = np.array((0, 0.0), dtype=RECORD)[()]
    chunk = np.full((4, 3), np.array((0, -0.0), dtype=RECORD))
    chunk[-1, -1] = last
    _, item = value_fill(RECORD, fill)
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
    assert chunk_is_empty(nd, _spec(RECORD, fill)) is dropped
    assert ends_may_be_fill(chunk, item) is dropped


def test_a_record_with_an_array_field_always_goes_to_zarrs_rule() -> None:
    dt = np.dtype([("a", "i2"), ("v", "f4", (2,))])
    _, item = value_fill(dt, np.zeros((), dtype=dt)[()])
    assert item is UNCOMPARED
    assert ends_may_be_fill(np.ones((4, 3), dtype=dt), item)  # data: zarr's rule says so
