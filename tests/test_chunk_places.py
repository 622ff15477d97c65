"""Where a ShardWriter finds an inner chunk (``shards._places``), against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zarr_rangelock.shards import _places as P
from zarr_rangelock.shards._layout import ShardGeometry


@st.composite
def grids(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """An array shape, its inner chunk shape and inner chunks per shard."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=ndim, max_size=ndim)))
    inner = tuple(draw(st.integers(1, s)) for s in shape)
    per_shard = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    return shape, inner, per_shard


def _places(shape: tuple[int, ...], inner: tuple[int, ...], per: tuple[int, ...]) -> P.Places:
    g = ShardGeometry(per, "end", 16 * int(np.prod(per)) + 4, 8)
    return P.Places(shape, inner, g, lambda s: "c/" + "/".join(map(str, s)), "'arr'")


@given(grids(), st.data())
def test_a_place_is_the_chunks_region_shard_and_row_in_c_order(
    grid: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], data: st.DataObject
) -> None:
    shape, inner, per = grid
    places = _places(shape, inner, per)
    counts = tuple(-(-s // n) for s, n in zip(shape, inner, strict=True))
    coords = tuple(data.draw(st.integers(0, c - 1)) for c in counts)
    place = places.place(coords)
    # The model: along each axis, the elements whose index // chunk size is
    # the chunk's coordinate (clipped at the edge by construction).
    for r, c, n, s in zip(place.region, coords, inner, shape, strict=True):
        mine = np.flatnonzero(np.arange(s) // n == c)
        assert (r.start, r.stop, r.step) == (mine[0], mine[-1] + 1, None)
    ends = [(c + 1) * n for c, n in zip(coords, inner, strict=True)]
    assert place.whole == all(e <= s for e, s in zip(ends, shape, strict=True))
    shard = tuple(c // p for c, p in zip(coords, per, strict=True))
    assert place.key == "c/" + "/".join(map(str, shard))
    assert place.inner == np.ravel_multi_index(
        tuple(c % p for c, p in zip(coords, per, strict=True)), per
    )
    # Numpy integers and lists give the same place (not remembered by them),
    # its coordinates ints.
    assert places.place([np.int64(c) for c in coords]) == place
    fresh = _places(shape, inner, per)
    assert all(type(c) is int for c in fresh.place(tuple(map(np.int64, coords))).coords)
    assert places.memo == {coords: place}
    # A writer without fast paths: the same region, no shard.
    bare = P.Places(shape, inner, None, lambda s: "unused", "'arr'")
    assert bare.place(coords) == (coords, place.region, place.whole, "", 0)


@given(grids(), st.data())
def test_chunks_of_names_exactly_the_whole_chunks_a_box_of_slices_covers(
    grid: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], data: st.DataObject
) -> None:
    shape, inner, per = grid
    places = _places(shape, inner, per)
    sel = []
    for s in shape:
        start = data.draw(st.integers(0, s - 1))
        sel.append(slice(start, data.draw(st.integers(start + 1, s + 2))))
    box = places.chunks_of(tuple(sel))
    # The model: the selection is a union of whole (edge-clipped) chunks.
    covered = np.zeros(shape, dtype=bool)
    covered[tuple(sel)] = True
    aligned = all(
        s.start % n == 0 and (min(s.stop, size) == size or s.stop % n == 0) and s.stop <= size
        for s, n, size in zip(sel, inner, shape, strict=True)
    )
    if not aligned:
        assert box is None
        return
    assert box is not None
    chunks = np.zeros(shape, dtype=bool)
    assert all(r.step == 1 for r in box)
    for coords in np.ndindex(*(len(r) for r in box)):
        at = tuple(r[i] for r, i in zip(box, coords, strict=True))
        chunks[places.place(at).region] = True
    assert (chunks == covered).all()


@pytest.mark.parametrize(
    "coords, why",
    [
        ((3, 0), r"\(3, 0\) are outside the grid of inner chunks \(3, 3\)"),
        ((0, -1), r"\(0, -1\) are outside the grid of inner chunks \(3, 3\)"),
        ((0,), r"\(0,\) have 1 dimension where the grid of inner chunks \(3, 3\) has 2"),
        ((0, 0, 0), r"\(0, 0, 0\) have 3 dimensions where the grid of inner chunks \(3, 3\) has 2"),
        ((1.0, 0), r"\(1.0, 0\) hold 1.0, not an integer, for the grid of inner chunks \(3, 3\)"),
        (("0", 0), r"\('0', 0\) hold '0', not an integer, for the grid of inner chunks \(3, 3\)"),
        # (zarr's block indexing refuses a bool too: arr.blocks[True, 0])
        (
            (True, 0),
            r"\(True, 0\) hold True, not an integer, for the grid of inner chunks \(3, 3\)",
        ),
        (
            (0, np.False_),
            r"\(0, np.False_\) hold np.False_, not an integer, for the grid of inner "
            r"chunks \(3, 3\)",
        ),
        (
            (9, None),
            r"\(9, None\) hold None, not an integer, for the grid of inner chunks \(3, 3\)",
        ),
    ],
)
def test_coordinates_outside_the_grid_or_not_integers_raise_an_index_error_saying_why(
    coords: tuple[object, ...], why: str
) -> None:
    places = _places((10, 10), (4, 4), (2, 2))
    with pytest.raises(IndexError, match=f"^chunk coordinates {why} of 'arr'$"):
        places.place(coords)  # type: ignore[arg-type]
    assert places.memo == {}


def test_coordinates_that_are_not_a_sequence_raise_a_type_error_saying_so() -> None:
    places = _places((10,), (4,), (2,))
    with pytest.raises(
        TypeError,
        match=r"^chunk coordinates 1 are not a sequence: give one int per dimension "
        r"of the grid of inner chunks \(3,\) of 'arr'$",
    ):
        places.place(1)  # type: ignore[arg-type]
    assert places.place((1,)).region == (slice(4, 8),)


def test_selections_that_are_not_boxes_of_slices_cover_no_chunks() -> None:
    places = _places((10, 10), (4, 4), (2, 2))
    for sel in [
        0,
        (slice(0, 4),),
        (slice(0, 4), slice(0, 4, 2)),
        (slice(0, 4), 1),
        (slice(0, 4), slice(np.int64(0), 4)),
        (slice(0, 4), slice(-4, None)),
        (Ellipsis,),
    ]:
        assert places.chunks_of(sel) is None, sel
    assert places.chunks_of((slice(None), slice(8, None))) == [range(0, 3), range(2, 3)]
