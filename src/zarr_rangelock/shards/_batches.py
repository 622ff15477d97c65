"""Batches of ``ShardWriter``: ``write_chunks`` and ``writer[sel]`` over several whole chunks.

A mixin of :class:`~zarr_rangelock.ShardWriter` (``shards/_writer``), split
off along the seam its design note names (*``writer.write_chunks``*): every
chunk of a batch is checked and encoded first, outside any lock
(:meth:`BatchWrites._prepare`), the chunks are grouped by shard, and each
group is written with one lock for the group, inside :data:`~._fastpaths.GATE`
where its lock is free at once, else outside it, waiting; what the fast paths
cannot take goes through the pipeline chunk by chunk (``write_chunks``), or
the whole selection does (a ``writer[sel]``, :meth:`BatchWrites._write_box`,
one write, atomic as the plain API's). The mixin only uses what the writer
sets up in ``_bind`` and the writer's one-chunk paths.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from ._fastpaths import GATE, _Append, _Fast, _Path, encode, put_all_in_place
from ._known import _VALID
from ._places import Place, Places, all_ints

if TYPE_CHECKING:
    from zarr.core.buffer import BufferPrototype
    from zarr.core.metadata.v3 import ArrayV3Metadata

    from ..store._store import RangeLockedStore

__all__ = ["BatchWrites", "Group", "Left", "Todo", "as_array", "zarr_keeps"]


class BatchWrites:
    """The batch paths of :class:`~zarr_rangelock.ShardWriter` (a mixin)."""

    # Set up by ShardWriter._bind (and __init__).
    _where: Places
    _fast: _Fast | None
    _append: _Append | None
    _store: RangeLockedStore
    _metadata: ArrayV3Metadata
    _prototype: BufferPrototype

    if TYPE_CHECKING:  # ShardWriter's own (its one-chunk paths)

        def _put(
            self, key: str, writes: list[tuple[int, memoryview]], path: _Path, wait: bool = True
        ) -> int: ...

        def _write_slow(self, region: tuple[slice, ...], value: Any) -> None: ...

        def _write_fast(self, place: Place, value: Any) -> bool: ...

        def _write_edge(self, place: Place, value: Any) -> bool: ...

        def _validate(self, key: str, fast: _Fast) -> bool: ...

        def _chunk_array(
            self, place: Place, value: Any, dtype: np.dtype[Any]
        ) -> np.ndarray[Any, Any] | None: ...

    def _arrays_todo(self, chunks: dict[Any, Any]) -> Todo | None:
        """Inside :data:`GATE`: ``chunks`` as :meth:`_write_todo` takes them,
        or None (nothing done) unless every key is a tuple of ints and every
        value a numpy array. Such a dict is read without calling any code of
        the caller's (no ``__iter__``, ``__index__``, ``__array__``, lazy
        array or ``__repr__``: one might write through this writer from
        another thread, which would wait for the gate)."""
        todo: Todo = {}
        places = self._where.memo
        for coords, value in chunks.items():
            if type(value) is not np.ndarray or type(coords) is not tuple or not all_ints(coords):
                return None
            place = places.get(coords)
            if place is None:
                place = self._where.place(coords)  # IndexError: its message names only ints
            todo[coords] = (place, value)
        return todo

    def _write_todo(self, todo: Todo) -> None:
        """Write whole inner chunks ``{coords: (region, value)}`` (see
        :meth:`write_chunks`)."""
        path: _Path | None = self._fast or self._append
        if isinstance(path, _Fast) and path.gated:
            # Values converted before the gate (see as_array).
            checked = {c: (p, as_array(v, path.dtype)) for c, (p, v) in todo.items()}
            with GATE:
                left = self._write_gated(checked, path)
            self._write_left(todo, left, path, path)
        else:
            self._write_left(todo, self._prepare(todo, path), path, None)

    def _write_gated(self, checked: Todo, fast: _Fast) -> Left:
        """Inside :data:`GATE`: check and encode ``checked`` (values already
        arrays, see :func:`as_array`) and, unless a value needs zarr's checks
        first, write the groups whose locks are free at once. What is left to
        write (:meth:`_write_left`)."""
        odd, slow, groups = self._prepare(checked, fast)
        if not odd:
            groups = self._put_at_once(groups, fast)
        return odd, slow, groups

    def _write_left(self, todo: Todo, left: Left, path: _Path | None, gated: _Fast | None) -> None:
        """What :meth:`_prepare` or :meth:`_write_gated` left of ``todo``:
        values zarr must check (first), groups to write waiting for their
        locks (inside the gate again, at once, where values went to zarr
        first), and the chunks the pipeline writes."""
        odd, slow, groups = left
        for coords in odd:  # zarr's checks, before the rest is written
            self._write_todo_slow(todo, coords)
        if gated and odd and groups:
            with GATE:
                groups = self._put_at_once(groups, gated)
        for key, group in groups.items():
            assert path is not None  # no groups without a fast path
            slow.extend(self._put_group(key, group, path, todo))
        for coords in slow:
            self._write_todo_slow(todo, coords)

    def _put_at_once(self, groups: dict[str, Group], fast: _Fast) -> dict[str, Group]:
        """Inside :data:`GATE`: write the groups whose shards are validated and
        whose chunks' lock is free at once; the groups left (their writers
        wait outside the gate)."""
        left: dict[str, Group] = {}
        for key, group in groups.items():
            writes = [(inner, raw) for inner, raw, _ in group]
            if self._put(key, writes, fast, wait=False) != len(group):
                left[key] = group
        return left

    def _write_todo_slow(self, todo: Todo, coords: tuple[int, ...]) -> None:
        place, value = todo[coords]
        if place.whole or not self._write_edge(place, value):
            self._write_slow(place.region, value)

    def _write_box(self, box: list[range], value: Any) -> bool:
        """``writer[sel] = value`` where ``sel`` covers the whole inner chunks
        of ``box`` (see ``Places.chunks_of``) through the fast paths; False
        (nothing written) where the pipeline should write it instead.

        One chunk: :meth:`write_chunk`'s paths. Several: only in place
        (dense uncompressed shards, every one of them; one this process has
        not validated yet has its index read and checked first), as one
        write, the plain API's atomicity: one shard's chunks under one lock,
        as :meth:`write_chunks` writes them; chunks of several shards with
        every shard's lock held at once (:func:`put_all_in_place`; written
        shard by shard, as they were until 2026-12-05, another process's
        write of the same shards could land between them, a torn write the
        stress runner found). Where that cannot write them all (a lock of
        several shards not free at once, a shard rewritten whole since, a
        journaled store), nothing is written and the pipeline writes the
        selection. Left to the pipeline too: a value that is neither a
        scalar nor of the selection's shape (zarr's broadcasting, its
        errors), a compressed array (the pipeline appends or compacts a
        shard's chunks in one go) and a selection with a chunk of fill
        values that zarr drops (the pipeline drops them and lays the shard
        out anew in one go)."""
        if all(len(r) == 1 for r in box):
            return self._write_fast(self._where.place(tuple(r[0] for r in box)), value)
        fast = self._fast
        if fast is None:
            return False
        shape, inner = self._where.shape, self._where.inner
        origin = tuple(r[0] * n for r, n in zip(box, inner, strict=True))
        if type(value) is not np.ndarray and zarr_keeps(value):
            return False  # zarr's checks (see zarr_keeps)
        data = np.asarray(value, dtype=fast.dtype)
        if data.ndim and data.shape != tuple(
            min((r[-1] + 1) * n, size) - o
            for r, n, size, o in zip(box, inner, shape, origin, strict=True)
        ):
            return False
        # Every shard dense and validated (one this process has not met yet
        # is read and checked now, as write_chunks does); else the pipeline,
        # which lays missing or compact shards out in one go.
        uid, g = self._store._state.uid, fast.geometry
        corners = itertools.product(  # a chunk of each shard the box meets
            *(
                [max(r[0], k * n) for k in range(r[0] // n, r[-1] // n + 1)]
                for r, n in zip(box, g.chunks_per_shard, strict=True)
            )
        )
        for c in corners:
            key = self._where.place(c).key  # (remembered for the loop below)
            if (uid, key, g) not in _VALID and not self._validate(key, fast):
                return False
        todo: Todo = {}
        for coords in itertools.product(*box):
            place = self._where.place(coords)
            region = place.region
            if data.ndim:
                part = data[
                    tuple(
                        slice(s.start - o, s.stop - o) for s, o in zip(region, origin, strict=True)
                    )
                ]
            else:
                part = data
            todo[coords] = (place, part)
        odd, slow, groups = self._prepare(todo, fast)
        if odd or slow:
            # Chunks of fill values: the pipeline drops them (and deletes or
            # compacts the shard), for the whole selection in one go.
            return False
        # All or none, each way below; if none, the pipeline writes them all.
        writes = {key: [(inner, raw) for inner, raw, _ in group] for key, group in groups.items()}
        if len(writes) > 1:
            with GATE if fast.gated else contextlib.nullcontext():
                return put_all_in_place(self._store, writes, fast) == len(todo)
        ((key, one),) = writes.items()
        if fast.gated:
            with GATE:
                if self._put(key, one, fast, wait=False) == len(one):
                    return True
        return self._put(key, one, fast) == len(one)

    def _prepare(self, todo: Todo, path: _Path | None) -> Left:
        """Every chunk of a batch checked and encoded (outside any lock):
        ``(odd, slow, groups)``: chunks whose value is not of the region's
        shape (zarr broadcasts them, or refuses them), chunks the pipeline
        must write (fill values zarr drops; every chunk when there is no fast
        path, its value still converted first: a bad one raises before
        anything is written), and the rest by shard key."""
        odd: list[tuple[int, ...]] = []
        slow: list[tuple[int, ...]] = []
        groups: dict[str, Group] = {}
        dtype = self._metadata.dtype.to_native_dtype() if path is None else path.dtype
        for coords, (place, value) in todo.items():
            data = self._chunk_array(place, value, dtype)
            if data is None:
                odd.append(coords)
                continue
            if path is None or not place.whole:  # (an edge chunk: see the module)
                slow.append(coords)
                continue
            raw = encode(self._prototype, data, path)
            if raw is None:
                slow.append(coords)
                continue
            group = groups.get(place.key)
            if group is None:
                group = groups[place.key] = []
            group.append((place.inner, raw, coords))
        return odd, slow, groups

    def _put_group(
        self,
        key: str,
        group: Group,
        path: _Path,
        todo: Todo,
    ) -> list[tuple[int, ...]]:
        """Write one shard's chunks of a batch through the fast path; the
        coordinates of those it could not write. Where the fast path stops
        (a shard not laid out densely yet, a compressed shard out of free
        space), the next chunk goes through the pipeline, which makes, lays
        out or compacts the shard, and the rest try the fast path once more."""
        writes = [(inner, raw) for inner, raw, _ in group]
        done = self._put(key, writes, path)
        if done == len(group):
            return []
        self._write_todo_slow(todo, group[done][2])
        done += 1
        if done < len(group):
            done += self._put(key, writes[done:], path)
        return [coords for _, _, coords in group[done:]]


def as_array(value: Any, dtype: np.dtype[Any]) -> Any:
    """``value`` as ``_chunk_array`` converts it (``np.asarray`` with the
    array's dtype, the same errors), done before :data:`GATE` is taken: a
    lazy array (dask, xarray) computes there, and its compute might write
    through this writer from other threads, which would wait for the gate.
    A subclass of ``ndarray`` is left as it is (see :func:`zarr_keeps`)."""
    if type(value) is np.ndarray or isinstance(value, np.ndarray):
        return value
    return np.asarray(value, dtype=dtype)


def zarr_keeps(value: Any) -> bool:
    """Whether ``value`` is a subclass of ``ndarray`` that the fast paths
    leave to zarr: zarr's ``_set_selection`` writes a value with a shape as
    it is, subclass and all, and a masked array or an ``np.matrix`` then
    fails in zarr's own reshaping (``ValueError``: "cannot reshape array of
    size 6 into shape (12,)", "array_like: only 1-dim allowed"), where
    ``np.asarray`` would drop the mask or the matrix and write the data.
    ``np.memmap`` stays on the fast paths: its values and shape are its
    ``ndarray``'s, which zarr writes the same (a memory-mapped file is a
    likely source of whole chunks). Called only where the value is not
    exactly an ``ndarray``: the common case pays nothing."""
    return isinstance(value, np.ndarray) and type(value) is not np.memmap


type Todo = dict[tuple[int, ...], tuple[Place, Any]]
"""Whole inner chunks to write: ``{coords: (place, value)}``."""

type Group = list[tuple[int, memoryview, tuple[int, ...]]]
"""One shard's chunks of a batch: (row in the shard's index, see
``Place.inner``; encoded bytes; coordinates in the array)."""

type Left = tuple[list[tuple[int, ...]], list[tuple[int, ...]], dict[str, Group]]
"""What is left of a batch to write: ``(odd, slow, groups)`` (see ``_prepare``)."""
