"""Shared by the tests of our shard readers (``shards/_reads``): random
sharded array shapes, random selections of every kind zarr has, reading
them through two arrays and comparing, and counting a reader's answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import strategies as st
from zarr.core.buffer import BufferPrototype, cpu
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK
from zarr_rangelock import RangeLockedStore


@st.composite
def grids(draw: st.DrawFn) -> dict[str, Any]:
    """A random array of 1-3 dimensions in shards of whole inner chunks,
    with edge chunks: ``shape``, ``chunks`` and ``shards``."""
    ndim = draw(st.integers(1, 3))
    chunks = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    per = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    shards = tuple(c * p for c, p in zip(chunks, per, strict=True))
    shape = tuple(draw(st.integers(1, 2 * s + 1)) for s in shards)
    return {"shape": shape, "chunks": chunks, "shards": shards}


def selection(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["basic", "orthogonal", "coordinate", "mask", "block"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if kind == "basic":
        sel = []
        for n in shape:
            if draw(st.booleans()):
                sel.append(int(draw(st.integers(-n, n - 1))))
            else:
                a, b = sorted(draw(st.integers(0, n)) for _ in range(2))
                sel.append(slice(a, b, draw(st.integers(1, 3))))
        return kind, tuple(sel)
    if kind == "orthogonal":
        sel = []
        for n in shape:
            how = draw(st.sampled_from(["integers", "mask", "slice", "int"]))
            if how == "integers":
                # In increasing order, or as drawn (out of order, repeats too):
                # zarr then places each shard's values out of order.
                size = draw(st.integers(1, n + 1))
                picked = rng.choice(n, size=size, replace=size > n or draw(st.booleans()))
                sel.append(np.sort(picked) if draw(st.booleans()) else picked)
            elif how == "mask":
                sel.append(rng.random(n) < 0.5)
            elif how == "slice":
                a, b = sorted(draw(st.integers(0, n)) for _ in range(2))
                sel.append(slice(a, b, draw(st.integers(1, 3))))
            else:
                sel.append(int(draw(st.integers(-n, n - 1))))
        return kind, tuple(sel)
    if kind == "coordinate":
        k = draw(st.integers(1, 6))
        return kind, tuple(rng.integers(0, n, size=k) for n in shape)
    if kind == "mask":
        return kind, rng.random(shape) < 0.3
    return kind, tuple(0 for _ in shape)


def read(arr: zarr.Array[Any], kind: str, sel: Any) -> Any:
    if kind == "basic":
        return arr[sel]
    if kind == "orthogonal":
        return arr.oindex[sel]
    if kind in ("coordinate", "mask"):
        return arr.vindex[sel]
    return arr.blocks[sel]


def create(
    store: Any, spec: dict[str, Any], pipeline: dict[str, str], **codecs: Any
) -> zarr.Array[Any]:
    """Array ``"a"`` of ``spec`` (a :func:`grids` draw with ``dtype`` and
    ``index_at_start``) in ``store``, fill value 0, with ``codecs``
    (``serializer=``, ``compressors=``), under ``pipeline``."""
    shards: Any = spec["shards"]
    if spec["index_at_start"]:
        shards = {"shape": shards, "index_location": "start"}
    with zarr.config.set(pipeline):
        return zarr.create_array(
            store,
            name="a",
            shape=spec["shape"],
            chunks=spec["chunks"],
            shards=shards,
            dtype=spec["dtype"],
            fill_value=0,
            **codecs,
        )


def stores(kind: str, root: Any) -> tuple[Any, RangeLockedStore]:
    """A bare store ("memory", or "local" at ``root``) and our wrapper of it."""
    inner: Any = MemoryStore() if kind == "memory" else LocalStore(root)
    return inner, RangeLockedStore(inner)


def opened(store: RangeLockedStore, inner: Any) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    """Array ``"a"``, opened to read through our pipeline on ``store`` and
    through stock zarr's on ``inner`` (the same files)."""
    with zarr.config.set(OURS):
        ours = zarr.open_array(store, path="a", mode="r")
    with zarr.config.set(STOCK):
        stock = zarr.open_array(inner, path="a", mode="r")
    return ours, stock


def reads_match(
    ours: zarr.Array[Any], stock: zarr.Array[Any], data: st.DataObject, times: int = 4
) -> list[Any]:
    """Draw ``times`` selections of ``ours``' shape; each must read the same
    values of the same dtype through ``ours`` (our pipeline) as through
    ``stock``, or raise an error of the same type. Returns what the basic
    selections read (for the caller to ask whether a reader was due)."""
    basic: list[Any] = []
    for _ in range(times):
        sel_kind, sel = data.draw(st.composite(lambda d: selection(d, ours.shape))())
        try:
            want: Any = read(stock, sel_kind, sel)
        except Exception as e:
            with pytest.raises(type(e)), zarr.config.set(OURS):
                read(ours, sel_kind, sel)
            continue
        with zarr.config.set(OURS):
            got = read(ours, sel_kind, sel)
        np.testing.assert_array_equal(got, want)
        assert np.asarray(got).dtype == np.asarray(want).dtype
        if sel_kind == "basic":
            basic.append(np.asarray(want))
    return basic


@contextlib.contextmanager
def answers(module: Any, name: str) -> Iterator[list[bool]]:
    """While in the block, one entry a call of the reader ``module.name`` (a
    coroutine function): True where it answered, False where it left the
    shard to zarr (returned None)."""
    answered: list[bool] = []
    real = getattr(module, name)

    async def counting(*args: Any) -> Any:
        got = await real(*args)
        answered.append(got is not None)
        return got

    setattr(module, name, counting)
    try:
        yield answered
    finally:
        setattr(module, name, real)


class _OtherBuffer(cpu.Buffer):
    """Stands for another kind of memory (a GPU's) in a buffer prototype."""


class _OtherNDBuffer(cpu.NDBuffer):
    """As :class:`_OtherBuffer`, the array kind."""


OTHER_MEMORY = BufferPrototype(buffer=_OtherBuffer, nd_buffer=_OtherNDBuffer)
"""A buffer prototype that is not the CPU's: our readers leave its reads to zarr."""


def read_into_other_memory(
    ours: zarr.Array[Any], stock: zarr.Array[Any], module: Any, name: str
) -> None:
    """A whole-array read into :data:`OTHER_MEMORY` through ``ours`` is
    zarr's (the reader ``module.name`` declines every shard) and does what
    it does through ``stock`` (the same files): zarr refuses other
    prototypes within shards."""
    with zarr.config.set(STOCK), pytest.raises(ValueError) as want:
        stock.get_basic_selection(..., prototype=OTHER_MEMORY)
    with (
        zarr.config.set(OURS),
        answers(module, name) as answered,
        pytest.raises(ValueError) as got,
    ):
        ours.get_basic_selection(..., prototype=OTHER_MEMORY)
    assert str(got.value) == str(want.value)
    assert not any(answered)  # (declined, or not even asked)
