"""The empty-chunk shortcut of whole chunks agrees with zarr (issue 12).

``ShardWriter``'s compressed fast path and the pipeline's encoding of whole
chunks skip zarr's ``chunk_is_empty`` (a compare of every element with the
fill value) when the chunk's first element alone shows it holds data: its
bytes differ from the fill's (``_jobs.first_is_data``). That is sound only
where zarr's rule makes equal values have equal bytes (``fill_head`` says
where); a wrong shortcut would store a chunk that zarr drops. Checked here
against zarr's own rule on chunks built to sit on its edges: NaN payloads,
-0.0 against a zero fill, complex zeros, a first element of fill followed
by data. The in-place fast path's check for a complex dtype or a NaN fill
(``_jobs.ends_may_be_fill``) likewise.
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

from zarr_rangelock.shards._jobs import ends_may_be_fill, fill_head, first_is_data

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
    chunk = np.empty((4, 3), dtype=dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for i in np.ndindex(chunk.shape):
            chunk[i] = _value(data.draw, dtype, zfill)
        if data.draw(st.booleans()):  # all but the first as the first: often all fill
            chunk[...] = chunk.flat[0]
    head = fill_head(dtype, zfill)
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
    if first_is_data(chunk, dtype, head):
        assert not chunk_is_empty(nd, spec), (dtype, fill, chunk)


@pytest.mark.parametrize("name", [n for n in DTYPES if np.dtype(n).kind in "fc"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_chunk_whose_ends_are_not_fill_is_never_one_zarr_drops(
    name: str, data: st.DataObject
) -> None:
    # The in-place fast path's check for a complex dtype or a NaN fill
    # (``ends_may_be_fill``, before zarr's own rule): it may call a chunk
    # data only where zarr's chunk_is_empty does.
    dtype = np.dtype(name)
    fills = SPECIAL + (COMPLEX_SPECIAL if dtype.kind == "c" else [])
    spec = _spec(dtype, data.draw(st.sampled_from(fills)))
    zfill = spec.fill_value
    chunk = np.empty((4, 3), dtype=dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        for i in np.ndindex(chunk.shape):
            chunk[i] = _value(data.draw, dtype, zfill)
        if data.draw(st.booleans()):  # every element as the first: often all fill
            chunk[...] = chunk.flat[0]
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(chunk)
    fill_item = np.asarray(zfill, dtype=dtype.newbyteorder("=")).item()
    if not ends_may_be_fill(chunk.astype(dtype.newbyteorder("=")), fill_item):
        assert not chunk_is_empty(nd, spec), (dtype, zfill, chunk)


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
