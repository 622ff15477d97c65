"""``ShardWriter`` follows its array through ``resize`` and ``append``.

zarr's ``Array.resize`` and ``Array.append`` give the array new metadata in
place (a new shape; the shards wholly outside a smaller shape deleted). A
writer bound to that array then writes, checks bounds and places chunks as
the array itself does: before, it kept the shape it was made with, so after
a growth it refused selections the array takes (``BoundsCheckError`` naming
the old length), and after a shrink its ``write_chunk`` wrote chunks outside
the array, making again a shard that the resize had deleted.

Edge chunks (clipped by the array's edge): zarr merges one into the chunk
stored before, so what it held beyond the edge before a shrink shows again
after a growth. The writer padded them with the fill value; it now merges
them too (see ``shards/_writer``, *Edge chunks*).

Stock zarr is the reference: the same steps (resizes, appends and writes)
go through a ``ShardWriter`` of an array on our store and through a stock
array on a bare store; after every step both raise the same or nothing, and
hold the same values (bit for bit) and the same keys.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import assume, given
from hypothesis import strategies as st
from zarr.storage import MemoryStore

from tests._shard_helpers import STOCK, new_array, no_locks_left
from tests._writer_helpers import (
    COMPRESSORS,
    RandomArray,
    array_keys,
    array_options,
    assert_same,
    chunk_grid,
    chunk_region,
    draw_array,
    draw_value,
    inner_stores,
    locked_array,
    outcome,
    random_twin_test,
    stock_read,
    write_chunks_by,
)
from zarr_rangelock import ShardWriter

pytestmark = [pytest.mark.timeout(300)]


def _stock_twin(options: dict[str, Any]) -> zarr.Array[Any]:
    """A stock array (zarr's own pipeline, a bare MemoryStore) of ``options``."""
    options = dict(options)
    compressor = options.pop("compressor")
    empty = options.pop("empty")
    return new_array(
        MemoryStore(),
        pipeline=STOCK,
        compressors=COMPRESSORS[compressor],
        config={"write_empty_chunks": empty},
        **options,
    )


def test_a_writer_writes_where_its_array_grew_and_not_where_it_shrank(tmp_path: Path) -> None:
    # The case that failed: the writer kept the shape it was made with.
    options = {"shape": (8, 8), "chunks": (2, 2), "shards": (4, 4), "dtype": "i4"}
    inner = zarr.storage.LocalStore(tmp_path / "w")
    written = locked_array(inner, "a", **options)
    writer = ShardWriter(written)
    writer[...] = np.arange(64, dtype="i4").reshape(8, 8)

    written.resize((12, 4))  # rows grow, columns shrink: shards (0, 1), (1, 1) deleted
    writer[10, 0] = 5  # refused before: "out of bounds for dimension with length 8"
    writer.write_chunk((4, 1), np.full((2, 2), 9, dtype="i4"))  # rows 8-9, a new shard
    with pytest.raises(IndexError, match=r"\(0, 3\) are outside the grid of inner chunks \(6, 2\)"):
        writer.write_chunk((0, 3), np.ones((2, 2), dtype="i4"))  # written before
    with pytest.raises(IndexError, match="out of bounds for dimension with length 4"):
        writer[0, 6] = 1

    expected = np.zeros((12, 4), dtype="i4")
    expected[:8] = np.arange(64).reshape(8, 8)[:, :4]
    expected[8:10, 2:4] = 9
    expected[10, 0] = 5
    np.testing.assert_array_equal(stock_read(inner, "a"), expected)
    assert array_keys(written) == ["c/0/0", "c/1/0", "c/2/0"]  # no shard (0, 1) made again
    no_locks_left(written)


def test_a_writer_of_another_handle_keeps_that_handles_shape(tmp_path: Path) -> None:
    # A resize through another handle changes neither a stock array nor its
    # writer (zarr reads metadata when an array is opened): both still
    # refuse what the old shape refuses.
    options = {"shape": (4, 4), "chunks": (2, 2), "shards": (4, 4), "dtype": "i4"}
    written = locked_array(zarr.storage.LocalStore(tmp_path / "w"), "a", **options)
    writer = ShardWriter(written)
    zarr.open_array(written.store, path="a").resize((8, 4))
    expected = outcome(lambda: written.__setitem__((6, 0), 1))
    assert expected is not None and expected[0].__name__ == "BoundsCheckError"
    assert outcome(lambda: writer.__setitem__((6, 0), 1)) == expected
    writer[...] = 3
    np.testing.assert_array_equal(zarr.open_array(written.store, path="a")[:4], 3)


# ----------------------------------------------- random steps against stock


@st.composite
def _shape(
    draw: st.DrawFn, now: tuple[int, ...], chunks: tuple[int, ...], shards: tuple[int, ...]
) -> tuple[int, ...]:
    """A new shape: along each axis any size up to two shards and a bit, or
    one within a chunk of the size now (so edge chunks keep what they held
    beyond the new edge, and a growth shows it again)."""
    return tuple(
        draw(st.integers(1, 2 * s + 1) | st.integers(max(1, n - c), n + c), label="size")
        for n, c, s in zip(now, chunks, shards, strict=True)
    )


@st.composite
def _selection(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A basic selection of ``shape``, now and then past its end."""
    out: list[Any] = []
    for size in shape:
        if draw(st.booleans(), label="int"):
            out.append(draw(st.integers(0, size), label="index"))  # size: out of bounds
        else:
            start = draw(st.integers(0, size), label="start")
            out.append(slice(start, draw(st.integers(start, size + 2), label="stop")))
    return tuple(out)


def _writer_step(draw: st.DrawFn, writer: ShardWriter, stock: zarr.Array[Any], fill: Any) -> None:
    """One write drawn for the current shape, through the writer and through
    stock zarr: the same outcome."""
    shape = stock.shape
    chunks = writer.array.chunks
    grid = chunk_grid(shape, chunks)
    how = draw(st.sampled_from(["setitem", "write_chunk", "write_chunks"]), label="how")
    if how == "setitem":
        sel = draw(_selection(shape))
        try:
            target = np.empty(shape)[sel].shape
        except IndexError:
            target = ()
        value = draw_value(draw, target, fill)
        expected = outcome(lambda: stock.__setitem__(sel, value))
        assert outcome(lambda: writer.__setitem__(sel, value)) == expected
        return
    count = 1 if how == "write_chunk" else draw(st.integers(1, 4), label="count")
    todo = {}
    for _ in range(count):
        coords = tuple(  # the edge chunk often; g: outside
            draw(st.just(g - 1) | st.integers(0, g), label="coord") for g in grid
        )
        inside = all(c < g for c, g in zip(coords, grid, strict=True))
        region = chunk_region(coords, shape, chunks) if inside else ()
        todo[coords] = draw_value(draw, np.empty(shape)[region].shape if inside else (), fill)
    outside = [c for c in todo if any(i >= g for i, g in zip(c, grid, strict=True))]
    if outside:
        # Nothing written, the error naming the grid of the current shape.
        got = outcome(
            lambda: (
                writer.write_chunk(*next(iter(todo.items())))
                if how == "write_chunk"
                else writer.write_chunks(todo)
            )
        )
        assert got is not None and got[0] is IndexError, got
        assert f"outside the grid of inner chunks {grid}" in got[1], got
        return
    if how == "write_chunk":
        ((coords, value),) = todo.items()
        expected = outcome(lambda: stock.__setitem__(chunk_region(coords, shape, chunks), value))
        assert outcome(lambda: writer.write_chunk(coords, value)) == expected
        return
    for coords, value in todo.items():
        stock[chunk_region(coords, shape, chunks)] = value
    writer.write_chunks(todo)


def _append_step(
    draw: st.DrawFn, written: zarr.Array[Any], stock: zarr.Array[Any], array: RandomArray
) -> None:
    """``append`` along a drawn axis, through the writer's array (our
    pipeline) and the stock one: the same outcome."""
    axis = draw(st.integers(0, len(array.shape) - 1), label="axis")
    grown = list(stock.shape)
    grown[axis] = draw(st.integers(1, array.shards[axis] + 1), label="by")
    value = np.asarray(draw_value(draw, tuple(grown), array.fill), dtype=array.dtype)
    value = np.broadcast_to(value, grown)
    expected = outcome(lambda: stock.append(value, axis=axis))
    assert outcome(lambda: written.append(value, axis=axis)) == expected


@random_twin_test(examples=25)
@given(data=st.data())
def test_random_resizes_appends_and_writes_match_stock(
    kind: str, compressor: str, empty: bool, data: st.DataObject
) -> None:
    draw = data.draw
    array = draw_array(draw)
    options = array_options(array, compressor, empty)
    with inner_stores(kind) as (inner, _):
        written = locked_array(inner, array.path, **options)
        writer = ShardWriter(written)
        stock = _stock_twin(options)
        for _ in range(draw(st.integers(1, 8), label="steps")):
            how = draw(st.sampled_from(["resize", "append", "write", "write"]), label="step")
            if how == "resize":
                shape = draw(_shape(stock.shape, array.chunks, array.shards))
                stock.resize(shape)
                written.resize(shape)
            elif how == "append":
                _append_step(draw, written, stock, array)
            else:
                _writer_step(draw, writer, stock, array.fill)
            assert written.shape == stock.shape
            assert_same(written, stock)  # values bit for bit, and the same keys
        np.testing.assert_array_equal(stock_read(inner, array.path), stock[...])
        no_locks_left(written)


@random_twin_test(examples=10)
@given(data=st.data())
def test_edge_chunks_keep_what_they_held_beyond_a_shrunk_edge_as_in_stock(
    kind: str, compressor: str, empty: bool, data: st.DataObject
) -> None:
    # Data everywhere, a shrink that cuts chunks, every edge chunk written
    # through the writer, the old shape back: zarr merges an edge chunk into
    # the chunk stored before, so what lay beyond the edge shows again.
    # (The writer used to pad edge chunks with the fill value.)
    draw = data.draw
    array = draw_array(draw)
    options = array_options(array, compressor, empty)
    small = tuple(
        draw(st.integers(max(1, n - c + 1), n), label="size")
        for n, c in zip(array.shape, array.chunks, strict=True)
    )
    assume(any(n % c for n, c in zip(small, array.chunks, strict=True)))  # an edge chunk
    with inner_stores(kind) as (inner, _):
        written = locked_array(inner, array.path, **options)
        writer = ShardWriter(written)
        stock = _stock_twin(options)
        everywhere = (np.arange(np.prod(array.shape)).reshape(array.shape) % 97 + 1).astype(
            array.dtype
        )
        writer[...] = everywhere
        stock[...] = everywhere
        written.resize(small)
        stock.resize(small)
        grid = chunk_grid(small, array.chunks)
        edges = [
            c
            for c in itertools.product(*(range(g) for g in grid))
            if any((i + 1) * n > size for i, n, size in zip(c, array.chunks, small, strict=True))
        ]
        values = {
            c: draw_value(
                draw, np.empty(small)[chunk_region(c, small, array.chunks)].shape, array.fill
            )
            for c in edges
        }
        how = draw(st.sampled_from(["write_chunk", "write_chunks", "box"]), label="how")
        for c, value in values.items():
            stock[chunk_region(c, small, array.chunks)] = value
        write_chunks_by(writer, values, how, small, array.chunks)
        assert_same(written, stock)
        written.resize(array.shape)
        stock.resize(array.shape)
        assert_same(written, stock)  # what lay beyond the edge, as stock kept it
        no_locks_left(written)
