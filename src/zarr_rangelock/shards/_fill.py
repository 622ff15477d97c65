"""When zarr drops a chunk as all fill, told cheaply from a chunk's bytes or ends.

zarr's rule (``zarr.core.chunk_utils.chunk_is_empty``: a chunk equal to the
fill value is not stored, unless ``write_empty_chunks``) compares every
element by value: 20-50 us for 64 KiB. The write paths ask cheaper
questions first and zarr's rule only where those cannot answer:

* compressed chunks (the pipeline's encodes and the shard writer's appends):
  a chunk whose first element's bytes differ from the fill's cannot be all
  fill where equal values have equal bytes (:func:`fill_head`,
  :func:`first_is_data`);
* in place (``_fastpaths.encode``): a chunk whose bytes are the encoded fill
  chunk's is dropped; where values zarr calls equal can have other bytes
  (:func:`value_fill`: complex numbers, NaN fills, records with float
  fields), a chunk whose first and last elements equal the fill
  (:func:`ends_may_be_fill`) goes to zarr's rule.

``tests/test_fastpath_encode.py`` holds each question against zarr's rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["UNCOMPARED", "ends_may_be_fill", "fill_head", "first_is_data", "value_fill"]


def fill_head(dtype: np.dtype[Any], fill: Any) -> bytes | None:
    """The bytes of one fill element in ``dtype``, if a chunk whose first
    element's bytes differ is never one that zarr's ``chunk_is_empty`` drops;
    else None (no shortcut).

    Sound for integers, booleans and floats other than a NaN fill: there,
    equal values have equal bytes, and zarr compares a zero fill bit by bit
    (-0.0 is data). A NaN fill (any NaN counts as equal) and every other
    kind (complex: -0.0+0j equals 0j) get None.
    """
    if dtype.kind not in "biuf":
        return None
    one = np.asarray(fill, dtype=dtype)
    if dtype.kind == "f" and bool(np.isnan(one)):
        return None
    return one.tobytes()


def first_is_data(data: Any, dtype: np.dtype[Any], head: bytes | None) -> bool:
    """Whether a chunk's first element alone shows that it is not all fill:
    ``data`` is of ``dtype`` and the bytes of its first element are not
    ``head`` (``fill_head(dtype, fill)``). 1 us, where zarr's
    ``chunk_is_empty`` compares every element (20 us for 64 KiB). False when
    unsure (no head, not a numpy array, another dtype, an empty chunk)."""
    if head is None or type(data) is not np.ndarray or data.dtype != dtype or not data.size:
        return False
    return bool(data[(slice(0, 1),) * data.ndim].tobytes() != head)


def _leaves(dtype: np.dtype[Any]) -> list[np.dtype[Any]]:
    """The scalar dtypes a record dtype is made of (itself if not a record;
    the element dtype of an array field)."""
    if dtype.subdtype is not None:
        return _leaves(dtype.subdtype[0])
    if dtype.names is None:
        return [dtype]
    return [leaf for name in dtype.names for leaf in _leaves(dtype.fields[name][0])]  # type: ignore[index]  # names imply fields


def value_fill(dtype: np.dtype[Any], fill: Any) -> tuple[bool, Any]:
    """For the in-place fast path, which compares a chunk's bytes with the
    fill's: ``(unsure, item)``. ``unsure``: a chunk of ``dtype`` whose bytes
    differ may still be one that zarr's ``chunk_is_empty`` drops, because
    zarr compares values there (a complex dtype: signed zeros, a NaN in one
    part; a NaN fill, where :func:`fill_head` has no head: any NaN; a record
    with a float or complex field: fields compared by value, so -0.0 equals
    0.0).
    ``item``: ``fill`` as a Python value for :func:`ends_may_be_fill`, or
    :data:`UNCOMPARED` for a record with an array field (every chunk of it
    then goes to zarr's rule)."""
    if dtype.kind in "fc":
        unsure = dtype.kind == "c" or fill_head(dtype, fill) is None
    else:
        unsure = dtype.names is not None and any(leaf.kind in "fc" for leaf in _leaves(dtype))
    if not unsure:
        return False, None
    if _has_array_field(dtype):
        return True, UNCOMPARED
    return True, np.asarray(fill, dtype=dtype).item()


def _has_array_field(dtype: np.dtype[Any]) -> bool:
    """Whether a record dtype has an array field, at any depth (``item()``
    then holds numpy arrays, which do not compare as one value). zarr 3.4
    refuses such dtypes; a zarr that takes them gets zarr's rule for every
    chunk rather than an error from a comparison."""
    if dtype.subdtype is not None:
        return True
    return dtype.names is not None and any(
        _has_array_field(dtype.fields[name][0])  # type: ignore[index]  # names imply fields
        for name in dtype.names
    )


#: :func:`value_fill`'s item for a record with an array field.
UNCOMPARED = object()


def ends_may_be_fill(data: np.ndarray[Any, Any], fill: Any) -> bool:
    """Whether the first and the last element of ``data`` (a chunk, at least
    one element, of a dtype :func:`value_fill` is unsure of) both equal
    ``fill`` (its item) by zarr's rule (``NDBuffer.all_equal``: values
    compared; any NaN equal to any NaN, a complex value NaN where either part
    is, but in records, which zarr compares without ``equal_nan``). If not,
    zarr's ``chunk_is_empty`` cannot drop the chunk: about 0.2 us, where that
    compares every element (50 us for 64 KiB)."""
    if fill is UNCOMPARED:
        return True
    nan = fill != fill  # (False for a record: a tuple equals itself)
    for i in (0, -1):
        x = data.item(i)
        if not (x == fill or (nan and x != x)):
            return False
    return True
