"""``ShardWriter``: writes into a sharded array from the calling thread, never zarr's loop.

Design note
-----------
*Why.* Every sync zarr call (``arr[sel] = value``) runs as a coroutine on
zarr's one event-loop thread, so threads that write one array take turns on
that thread, whatever the number of cores. A :class:`ShardWriter` runs the
same work in the thread that calls it.

*``writer[sel] = value``* is zarr's own ``_set_selection`` (value checks,
dtype conversion, the basic indexer's bounds checks and errors: stock zarr's)
with :class:`~zarr_rangelock.ShardWritePipeline`, awaited on an event loop
owned by the calling thread (one per thread, made on first use and kept),
not on zarr's. Locks, atomicity per call, journaling and every layout rule
are the pipeline's.

*``writer.write_chunk(coords, value)``*, the fast path: one whole inner chunk
of a shard of fixed-size inner chunks that is already dense (every chunk at
its offset). It encodes the chunk with zarr's synchronous inner transform,
looks the chunk's range up in the shard's validated index (the pipeline's
cache, keyed on the store's change stamps), takes an exclusive range lock on
it and writes it with the store's ``set_range``: no coroutine, no event
loop. A compressed chunk (a store that does not journal) is compressed in
the calling thread, outside any lock (zstd and blosc release the GIL, so
threads compress in parallel), then appended into the shard's free space and
the index re-pointed under the shard's whole-key lock, from the index this
process last wrote to it (``_known._INDEXES``, trusted while the shard's
change stamp is unchanged; each append stamps it anew) or, failing that,
read under that lock. A dense shard this process does not know yet has its
index read and checked under a shared lock first. Anything else (a missing
or compact dense-type shard, a compaction, a chunk of fill values that zarr
would drop, a journaled, read-only or ``confine=True`` store) goes through
``writer[region] = value``.

*``writer.write_chunks({coords: value})``* checks and encodes every chunk
first (outside any lock), groups them by shard, and writes each group as
``write_chunk`` would, with one lock for the group: one multi-range lock on
the chunks' ranges (adjacent ones merged) and one descriptor checkout, or one
whole-key lock, one append of all the compressed chunks that fit and one
index re-point. Where a group stops (a shard not laid out densely yet, or
out of free space), its next chunk goes through the pipeline, which lays out
or compacts the shard, and the rest try the fast path again. A
``writer[sel]`` covering several whole chunks of dense uncompressed shards
takes the same path (a shard this process has not met is read and checked
first, as for ``write_chunk``).

*Edge chunks* (an inner chunk the array's edge clips): zarr writes one by
merging the value into the chunk stored before, so what that chunk held
beyond the edge (written before the array shrank, or through a handle of a
larger shape) is kept, and a later ``resize`` to a larger shape shows it
again (``tests/test_shard_writer_resize.py``). So an edge chunk is never
padded and written whole: into a dense uncompressed shard it is merged in
place, the stored chunk read, merged and written back under the chunk's
lock (:func:`~._fastpaths.put_edge_in_place`, outside the gate: it waits
for the lock); anywhere else (compressed or compact shards, missing ones)
it goes through the pipeline, which merges as zarr does. A
``write_chunks`` batch writes its edge chunks after its other chunks, each
by itself; a ``writer[sel]`` of several chunks with an edge chunk among
them goes through the pipeline whole (one write, atomic as the plain API's).

The fast paths themselves are in ``_fastpaths``; the batch paths
(``write_chunks``, a ``writer[sel]`` over several whole chunks) in the
mixin ``_batches``.

*Costs.* Per chunk, the fast paths are Python under the GIL around a
``pwrite`` (about 10 us for 64 KiB, GIL released). Where a chunk is (its
coordinates checked, its region, its shard key and place in the shard) is
worked out once and remembered (``_places.Places``, bounded, per writer); a
value that is already a C-contiguous array of the chunk's shape and dtype
is written as it is. ``benchmarks/chunk_layers.py`` takes a lone
``write_chunk`` of 64 KiB apart, layer by layer: about 25 us, of which about
12 us Python (the write stubbed out): the lock token about 3 us (a
lock-table request and its release, plus an ``fcntl`` each while another
process locks in the root: ``locks/_oslock``, "Alone"), the backend's
descriptor checkout, bounds and stamp check about 2, the chunk's place and
bytes about 2, the rest the calls between them and the gate.
``write_chunks`` takes the lock and the descriptor once for a shard's
group. Each ``pwrite`` is a GIL hand-over when other threads wait for it
(hence :data:`~._fastpaths.GATE`), so threads add little: see the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import reprlib
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs.sharding import ShardingCodec
from zarr.core.array import _set_selection
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.common import product
from zarr.core.indexing import BasicIndexer
from zarr.core.metadata.v3 import ArrayV3Metadata, RegularChunkGridMetadata

from ..locks._ki import protected, sigint_cancels
from ..store._io import INLINE
from ..store._store import RangeLockedStore
from ._batches import BatchWrites, as_array, zarr_keeps
from ._fastpaths import (
    BUSY,
    GATE,
    _Append,
    _Fast,
    _Path,
    encode,
    make_paths,
    put_appended,
    put_cold,
    put_edge_in_place,
    put_in_place,
    validate,
)
from ._known import _VALID
from ._pipeline import ShardWritePipeline
from ._places import Place, Places

if TYPE_CHECKING:
    from zarr.core.indexing import BasicSelection

__all__ = ["ShardWriter"]

SETTLE_TRIES = 64
"""How often :meth:`ShardWriter._put_settled` looks at a shard again after
losing a race to another writer's whole-key write of it (each lost race is
another writer's finished write)."""


class ShardWriter(BatchWrites):
    """Write into a sharded ``zarr.Array`` from the calling thread.

    ``writer[selection] = value`` has the semantics of ``array[selection] =
    value`` for basic selections (the same values afterwards, the same errors,
    the same atomicity per call as :class:`~zarr_rangelock.ShardWritePipeline`)
    but runs in the calling thread, so threads writing one array run in
    parallel instead of taking turns on zarr's event-loop thread.
    :meth:`write_chunk` writes one whole inner chunk by its coordinates, the
    fastest path. The writer follows its array: after ``array.resize`` or
    ``array.append`` it writes the array's new shape.

    Parameters
    ----------
    array : zarr.Array
        A Zarr v3 array with a sharding codec whose store is a
        :class:`~zarr_rangelock.RangeLockedStore`. Its configured codec
        pipeline does not matter: the writer always uses
        :class:`~zarr_rangelock.ShardWritePipeline`.

    Raises
    ------
    TypeError
        If ``array`` is not a ``zarr.Array``, its store is not a
        ``RangeLockedStore``, or it is not a sharded Zarr v3 array with a
        regular grid of shards (zarr's experimental rectilinear grids are
        written through ``array[...] = value``).

    Concurrency
    -----------
    Thread-safe: any number of threads may share one writer, and write beside
    plain ``array[...] = ...`` calls, other writers and other processes (the
    store's locks order them all). Each thread runs its writes on an event
    loop of its own. Its calls block: from a thread running an event loop
    (a coroutine) they raise ``RuntimeError`` before doing anything, whatever
    path the write would take; use ``AsyncArray`` there, or
    ``asyncio.to_thread``. A writer pickles as its array, so a task sent to
    another process (dask's worker processes, a process pool) may take one.

    Notes
    -----
    Into a new array, uncompressed chunks are written in place only once a
    quarter of a shard's chunks hold data; until then each write appends to
    the compact shard under its whole-key lock. A program that will fill
    the array can make its store with ``dense_shards=True``
    (:class:`~zarr_rangelock.RangeLockedStore`): each shard is then laid
    out densely by its first write, and ``write_chunk`` writes a new array
    3-4x as fast.
    """

    def __init__(self, array: zarr.Array[Any]) -> None:
        if not isinstance(array, zarr.Array):
            raise TypeError(f"ShardWriter needs a zarr.Array, got {type(array).__name__}")
        store = array.store_path.store
        if not isinstance(store, RangeLockedStore):
            raise TypeError(
                f"ShardWriter needs an array whose store is a RangeLockedStore; "
                f"{array.store_path!r} is on a {type(store).__name__}"
            )
        metadata = array.metadata
        if not isinstance(metadata, ArrayV3Metadata) or not any(
            isinstance(c, ShardingCodec) for c in metadata.codecs
        ):
            raise TypeError(
                f"ShardWriter needs a sharded Zarr v3 array; {array.store_path!r} has "
                f"codecs {getattr(metadata, 'codecs', None)!r}"
            )
        if not isinstance(metadata.chunk_grid, RegularChunkGridMetadata):
            # zarr's experimental rectilinear grids (shards of several shapes):
            # the writer places chunks by one shard shape (the plain API and
            # the pipeline write such arrays).
            raise TypeError(
                f"ShardWriter needs a regular grid of shards; {array.store_path!r} has "
                f"{metadata.chunk_grid!r} (write it with array[...] = value)"
            )
        self._array = array
        self._async = array._async_array
        self._store = store
        self._prototype = default_buffer_prototype()
        self._local = threading.local()
        self._binding = threading.Lock()
        self._bind(metadata)

    def _bind(self, metadata: ArrayV3Metadata) -> None:
        """Everything the writer works out from its array's metadata: the
        pipeline, the fast paths, where each chunk is. Done again when the
        array's metadata changes (:meth:`_follow`)."""
        array = self._array
        spec = ArraySpec(
            shape=metadata.chunk_grid.chunk_shape,  # type: ignore[union-attr]  # regular: sharding needs it
            dtype=metadata.data_type,
            fill_value=metadata.fill_value,
            config=ArrayConfig.from_dict({}),
            prototype=self._prototype,
        )
        self._pipeline = ShardWritePipeline.from_codecs(metadata.codecs).evolve_from_array_spec(
            spec
        )
        inner = array.chunks  # the inner chunk shape (zarr's read chunks)
        self._fast, self._append = make_paths(array, self._store, spec, self._prototype)
        path = self._fast or self._append
        prefix = f"{array.store_path.path}/" if array.store_path.path else ""
        self._where = Places(
            metadata.shape,
            inner,
            None if path is None else path.geometry,
            lambda shard: prefix + metadata.encode_chunk_key(shard),
            repr(array.store_path),
        )
        self._full = path.chunk_shape if path is not None else tuple(inner)
        fast = self._fast
        # write_chunk's hot path: gated chunks whose encoding is their bytes.
        self._plain = fast if fast is not None and fast.gated and fast.plain else None
        self._metadata = metadata  # last: what _follow compares

    def _follow(self) -> None:
        """Bind the writer to its array's metadata again if it is not the one
        it was bound to: ``array.resize`` and ``array.append`` replace it in
        place (a new shape), and the writer then writes, checks bounds and
        places chunks as the array itself does (a resize through another
        handle of the array changes neither)."""
        with self._binding:
            metadata = self._async.metadata
            if metadata is not self._metadata:
                assert isinstance(metadata, ArrayV3Metadata)  # a resize keeps the format
                self._bind(metadata)

    def __reduce__(self) -> tuple[type[ShardWriter], tuple[zarr.Array[Any]]]:
        """A writer pickles as its array (which pickles with its store and
        pipeline): unpickled, in a dask worker or a process pool, it is a
        new writer of the unpickled array, writing the same array with no
        knowledge carried over (it looks its shards up again)."""
        return (ShardWriter, (self._array,))

    @property
    def array(self) -> zarr.Array[Any]:
        """The array this writer writes."""
        return self._array

    def _loop(self) -> asyncio.AbstractEventLoop:
        owned: _ThreadLoop | None = getattr(self._local, "owned", None)
        if owned is None or owned.loop.is_closed():
            owned = self._local.owned = _ThreadLoop()
        return owned.loop

    def _refuse_in_a_running_loop(self, what: str) -> None:
        # Checked before any coroutine is made (one refused by
        # run_until_complete would warn "never awaited") and before the fast
        # path, which needs no loop but blocks on a range lock: a task of the
        # running loop may hold it, and the loop could not run that task.
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                f"ShardWriter.{what} blocks its thread, and this thread runs an event "
                f"loop; from a coroutine use the AsyncArray "
                f"(await array.async_array.setitem(...)) or asyncio.to_thread"
            )

    def __setitem__(self, selection: BasicSelection, value: Any) -> None:
        """``array[selection] = value``, run in the calling thread (see the class).

        Raises
        ------
        RuntimeError
            If the calling thread runs an event loop (see the class).
        """
        self._refuse_in_a_running_loop("__setitem__")
        if self._async.metadata is not self._metadata:
            self._follow()
        # Whole inner chunks: write_chunk's fast paths (unless write_chunk or
        # write_chunks falls back here, having tried them).
        tried = getattr(self._local, "tried", False)  # by write_chunk(s), repaired
        if not tried and self._fast_setitem(selection, value):
            return
        a = self._async
        indexer = BasicIndexer(selection, shape=self._metadata.shape, chunk_grid=a._chunk_grid)
        if not tried and product(indexer.shape) > 0:
            self._store_repair()
        # In a copy of the caller's context, INLINE set (encode and fsync
        # here: this thread waits anyway). Not set and reset in the caller's
        # own: a Ctrl-C between the set and the try left it set there, and
        # every event-loop task made from that context later (zarr's own
        # writes copy the caller's) encoded on its loop's thread.
        contextvars.copy_context().run(self._run_inline, a, indexer, value)

    def _run_inline(self, a: Any, indexer: BasicIndexer, value: Any) -> None:
        INLINE.set(True)
        self._run(a, indexer, value)

    def _run(self, a: Any, indexer: BasicIndexer, value: Any) -> None:
        _run_to_the_end(
            self._loop(),
            lambda: _set_selection(
                a.store_path,
                a.metadata,
                self._pipeline,
                a.config,
                a._chunk_grid,
                indexer,
                value,
                prototype=self._prototype,
            ),
        )

    def write_chunk(self, coords: Sequence[int], value: Any) -> None:
        """Write one whole inner chunk, by its coordinates in the array's grid
        of inner chunks (the ``read_chunk_sizes`` grid, not the shard grid).

        Parameters
        ----------
        coords : sequence of int
            The inner chunk's grid coordinates.
        value : array_like
            Its values: the chunk's shape, clipped at the array's edge (what
            ``array[region of the chunk]`` takes); broadcast as zarr does.

        Raises
        ------
        IndexError
            For coordinates outside the grid, of another number of
            dimensions, or not integers (naming them, what is wrong and the
            grid).
        TypeError
            For coordinates that are not a sequence (``write_chunk(5, v)``
            for ``(5,)``).
        ValueError, TypeError
            As ``array[region] = value`` raises them for ``value``.
        RuntimeError
            If the calling thread runs an event loop (see the class).

        Concurrency
        -----------
        As ``writer[region] = value``: an exclusive lock on the chunk's bytes
        while writing (on the whole shard when the fast path does not apply).
        """
        if asyncio._get_running_loop() is not None:
            self._refuse_in_a_running_loop("write_chunk")
        if self._async.metadata is not self._metadata:  # resized (see _follow)
            self._follow()
        place = self._where.place(coords)
        plain = self._plain
        if (
            plain is not None
            and place.whole
            and type(value) is np.ndarray
            and value.shape == self._full
            and (value.dtype is plain.dtype or value.dtype == plain.dtype)
            and value.flags.c_contiguous
            and not self._repair_pending()
        ):
            # The common case, with what _write_fast does for it inlined
            # (seven calls, about a tenth of write_chunk's Python with its
            # pwrite stubbed: git log): a whole chunk, as it is, its bytes
            # its encoding.
            raw = encode(self._prototype, value, plain)
            if raw is not None:
                writes = [(place.inner, raw)]
                with GATE:
                    done = self._put_in_place(place.key, writes, plain, False)
                if done == 1 or self._put(place.key, writes, plain) == 1:
                    return
            self._write_slow(place.region, value)
            return
        self._store_repair()
        if not self._write_fast(place, value):
            self._write_slow(place.region, value)

    def write_chunks[C: Sequence[int]](
        self,
        chunks: Mapping[C, Any] | Iterable[tuple[C, Any]],
    ) -> None:
        """Write many whole inner chunks: :meth:`write_chunk` for each, with the
        locks taken once per shard instead of once per chunk.

        Parameters
        ----------
        chunks : mapping or iterable of pairs
            ``{coords: value}`` or ``(coords, value)`` pairs, as
            :meth:`write_chunk` takes them, in any order and over any shards.
            A chunk named twice gets its last value. The fastest form: a
            ``dict`` of numpy arrays by tuples of ints (its chunks are found
            and written in one pass, see ``_fastpaths.GATE``).

        Raises
        ------
        IndexError, TypeError
            For coordinates as :meth:`write_chunk` refuses them, before
            anything is written.
        ValueError, TypeError
            As :meth:`write_chunk` raises them for a value. A value the
            fast paths cannot take as it is (another shape, for zarr to
            broadcast) is written first, through ``writer[region] = value``,
            so a value zarr refuses raises before the others are written
            (values written before it in the call stay written).
        RuntimeError
            If the calling thread runs an event loop (see the class).

        Concurrency
        -----------
        The chunks of one shard that take a fast path are written under one
        exclusive lock on all of their ranges at once (the whole shard when
        they are appended): a reader sees all of them or none. A chunk that
        goes through ``writer[region] = value`` (a shard not laid out
        densely yet; a compaction; fill values zarr drops; a value zarr
        broadcasts; a store without the fast paths) is written by itself, under the pipeline's
        locks. Shards are written one after another, each lock let go before
        the next is taken; the call is not atomic across shards.
        """
        self._refuse_in_a_running_loop("write_chunks")
        if self._async.metadata is not self._metadata:
            self._follow()
        fast = self._fast
        if (
            type(chunks) is dict
            and fast is not None
            and fast.gated
            and not self._repair_pending()  # a store write, not done inside the gate
        ):
            # The common case whole inside GATE, from the first lookup to the
            # last write: no thread of this process runs Python meanwhile, so
            # none takes the GIL while this one is in a system call and then
            # keeps it while this one waits (see GATE).
            with GATE:
                todo = self._arrays_todo(chunks)
                if todo is not None:
                    left = self._write_gated(todo, fast)
            if todo is not None:
                self._write_left(todo, left, fast, fast)
                return
        todo = {}
        for coords, value in _pairs(chunks):
            place = self._where.place(coords)
            todo[place.coords] = (place, value)
        if todo:
            self._store_repair()
        self._write_todo(todo)

    def _store_repair(self) -> None:
        """Before chunks are written: what zarr's ``AsyncArray._set_selection``
        does first, store the repair of a stored metadata document whose
        repair moves chunks (zarr versions that repair such documents mark
        the metadata; it is unmarked once stored, so this costs nothing
        after the first write)."""
        if self._repair_pending():
            _run_to_the_end(self._loop(), self._async._store_repaired_document)

    def _repair_pending(self) -> bool:
        return getattr(self._metadata, "_stored_document", None) is not None

    def _write_slow(self, region: tuple[slice, ...], value: Any) -> None:
        """``writer[region] = value`` without trying the fast paths again."""
        self._local.tried = True
        try:
            self[region] = value
        finally:
            self._local.tried = False

    def _fast_setitem(self, selection: Any, value: Any) -> bool:
        """``writer[selection] = value`` through the fast paths where
        ``selection`` covers whole inner chunks (exactly one: ``write_chunk``
        of it, whose semantics are this call's for that region); False
        (nothing written) where the pipeline should write it."""
        box = self._where.chunks_of(selection)
        if box is None:
            return False
        coords = []
        for r in box:
            if len(r) != 1:
                break
            coords.append(r.start)
        else:
            self.write_chunk(tuple(coords), value)
            return True
        self._store_repair()
        return self._write_box(box, value)

    def _write_fast(self, place: Place, value: Any) -> bool:
        """One whole inner chunk through the fast path that applies; False
        (nothing written) when none does. Small uncompressed chunks are
        encoded and written inside :data:`GATE` when their lock is free at
        once, else written outside it."""
        if not place.whole:
            return self._write_edge(place, value)
        path: _Path | None = self._fast or self._append
        if path is None:
            return False
        if isinstance(path, _Fast) and path.gated:
            value = as_array(value, path.dtype)
            with GATE:
                done, raw = self._in_gate(place, value, path)
            if done != BUSY or raw is None:
                return done == 1
        else:
            raw = self._encoded(place, value, path)
            if raw is None:
                return False
        return self._put(place.key, [(place.inner, raw)], path) == 1

    def _write_edge(self, place: Place, value: Any) -> bool:
        """An edge chunk (see the module's *Edge chunks*) merged in place into
        a dense uncompressed shard (one this process has not met yet is read
        and checked first); False (nothing written) where the pipeline must
        write it: a compressed shard, one not laid out densely, a value
        zarr broadcasts, a merged chunk zarr drops."""
        fast = self._fast
        if fast is None:
            return False
        data = self._chunk_array(place, value, fast.dtype)
        if data is None:
            return False
        store, key = self._store, place.key
        if put_edge_in_place(store, key, place.inner, data, fast, self._prototype):
            return True
        if (store._state.uid, key, fast.geometry) in _VALID or not self._validate(key, fast):
            return False
        return put_edge_in_place(store, key, place.inner, data, fast, self._prototype) == 1

    def _in_gate(self, place: Place, value: Any, fast: _Fast) -> tuple[int, memoryview | None]:
        """Inside :data:`GATE`: encode a whole chunk and write it if its lock
        is free at once. ``(1, raw)``: written; ``(0, None)``: the pipeline
        must write it; ``(BUSY, raw)``: write ``raw`` again outside the gate,
        waiting."""
        raw = self._encoded(place, value, fast)
        if raw is None:
            return 0, None
        # (_put's wait=False branch, without the call layer: write_chunk's hot path)
        return self._put_in_place(place.key, [(place.inner, raw)], fast, False) or BUSY, raw

    def _encoded(self, place: Place, value: Any, path: _Path) -> memoryview | None:
        """The encoded bytes of a whole chunk's ``value``, None where the
        pipeline must write it (see :func:`encode`; an edge chunk: see the
        module's *Edge chunks*)."""
        if not place.whole:
            return None
        data = self._chunk_array(place, value, path.dtype)
        return None if data is None else encode(self._prototype, data, path)

    def _chunk_array(
        self, place: Place, value: Any, dtype: np.dtype[Any]
    ) -> np.ndarray[Any, Any] | None:
        """``value`` as a C-contiguous array of the inner chunk's region at
        ``place`` (a scalar broadcast), or None when its shape is not the
        region's: zarr's own broadcast rules and errors then apply (the
        general path)."""
        full = self._full
        if (
            place.whole
            and type(value) is np.ndarray
            and value.shape == full
            and (value.dtype is dtype or value.dtype == dtype)
            and value.flags.c_contiguous
        ):
            return value  # the common case, as it is (what the rest returns for it)
        if type(value) is not np.ndarray and zarr_keeps(value):
            return None  # a masked array, an np.matrix: zarr's checks (see zarr_keeps)
        region = place.region
        data = np.asarray(value, dtype=dtype)
        clipped = tuple(s.stop - s.start for s in region)
        if data.shape != clipped:
            if data.ndim:
                return None
            data = np.broadcast_to(data, clipped)
        return np.ascontiguousarray(data)

    def _validate(self, key: str, fast: _Fast) -> bool:
        return validate(self._store, key, fast)

    def _put(
        self, key: str, writes: list[tuple[int, memoryview]], path: _Path, wait: bool = True
    ) -> int:
        """The fast path of ``path`` for ``writes`` into shard ``key``: how many
        it wrote (all or none). An in-place shard this process does not know
        yet has its index read and checked first (:func:`validate`); one that
        is not laid out densely (missing, compact) is written as the pipeline
        would write it, under its whole-key lock (:func:`put_cold`). With
        ``wait`` False (inside :data:`GATE`): only an in-place write whose
        lock is free at once, else :data:`BUSY`."""
        if isinstance(path, _Fast):
            done = self._put_in_place(key, writes, path, wait)
            if not wait:
                return done or BUSY
            return done or self._put_settled(key, writes, path)
        assert isinstance(path, _Append)
        return self._put_appended(key, writes, path)

    def _put_settled(self, key: str, writes: list[tuple[int, memoryview]], fast: _Fast) -> int:
        """``writes`` into shard ``key`` once the validated index was not
        current: in place if the shard is dense (read and checked first),
        else by :func:`put_cold` (which writes in place, under its whole-key
        lock, a shard laid out densely since); all or none. An in-place 0 is
        a race lost to another writer's whole-key write between the look
        and the lock (the stamp moved): look again and retry, up to
        :data:`SETTLE_TRIES` times. Returning that 0 sent the first chunk of
        a ``write_chunks`` group through the pipeline alone and the rest
        through the fast path after it, so a reader could see the group's
        chunks half written (found by a bug hunt). A 0 from ``put_cold`` is
        the pipeline's to write (a journaled store; a shard too short or
        unreadable)."""
        for _ in range(SETTLE_TRIES):
            if not self._validate(key, fast):
                return self._put_cold(key, writes, fast)
            done = self._put_in_place(key, writes, fast)
            if done:
                return done
        return 0  # pragma: no cover - lost every race

    def _put_in_place(
        self, key: str, writes: list[tuple[int, memoryview]], fast: _Fast, wait: bool = True
    ) -> int:
        return put_in_place(self._store, key, writes, fast, wait)

    def _put_cold(self, key: str, writes: list[tuple[int, memoryview]], fast: _Fast) -> int:
        return put_cold(self._store, key, writes, fast)

    def _put_appended(self, key: str, writes: list[tuple[int, memoryview]], ap: _Append) -> int:
        return put_appended(self._store, key, writes, ap)


@protected
def _start(
    loop: asyncio.AbstractEventLoop,
    make: Callable[[], Coroutine[Any, Any, None]],
    started: list[asyncio.Task[Any]],
) -> None:
    # The coroutine, its task and the task's place in ``started`` in one
    # protected step (``locks/_ki``): a Ctrl-C between them left a task
    # that no one cancelled or ran to its end (the thread's next write
    # through the loop started it, stale, and left it part way), or a
    # coroutine never awaited (Python's RuntimeWarning).
    started.append(loop.create_task(make()))


def _run_to_the_end(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """``loop.run_until_complete(make())``. On the main thread, with ``_ki``'s
    handler in place, a Ctrl-C cancels the write (``_ki.sigint_cancels``)
    and ``KeyboardInterrupt`` is raised once it has let go. Otherwise (a
    program's own SIGINT handler), if an exception escapes the loop while
    the write is still pending (a ``KeyboardInterrupt`` raised in the
    loop's own code), the write is cancelled and run until it has let go
    of everything before that exception goes on. Left pending, the write
    kept its locks for good (nothing runs this thread's loop until its
    next write, which then waited for them) and finished inside that next
    write, over newer data."""
    started: list[asyncio.Task[None]] = []
    # On the main thread a Ctrl-C cancels the write rather than raising in
    # the loop's machinery, where it could lose a task's wake-up (``_ki``)
    with sigint_cancels(loop, started) as interrupts:
        try:
            _start(loop, make, started)
            loop.run_until_complete(started[0])
        except BaseException:
            for task in started:  # (none: the exception came before the write)
                while not task.done():  # (done: the exception was the write's own)
                    task.cancel()
                    with contextlib.suppress(BaseException):  # a second Ctrl-C: go on
                        loop.run_until_complete(task)
                if not task.cancelled():
                    task.exception()  # retrieved: the exception raised is the loop's
            if interrupts[0]:
                raise KeyboardInterrupt from None
            raise
    if interrupts[0]:  # the write ended before the cancellation reached it
        raise KeyboardInterrupt


class _ThreadLoop:
    """The event loop of one thread's writes, closed when the thread ends
    (its slot of the writer's ``threading.local`` is freed then) or the
    writer goes: not left to the garbage collector, since a loop holds three
    descriptors (a selector and a self-pipe) and may sit in a reference cycle
    (a pool that starts threads anew would run out of descriptors)."""

    __slots__ = ("loop",)

    # Protected from KeyboardInterrupt (``locks/_ki``): one before the loop
    # was set left a holder without it, whose ``__del__`` then failed
    # ("Exception ignored"), or a loop made and not held (closed only by
    # the collector, with a ResourceWarning).
    @protected
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        # Never running here: a running write holds the writer, whose
        # thread-local slot holds this. No loop: its making failed (out of
        # descriptors), and the error went to the caller.
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_running():
            loop.close()


def _pairs(chunks: object) -> Iterable[tuple[Any, Any]]:
    """``write_chunks``' ``(coords, value)`` pairs, with a ``TypeError`` naming
    what was passed instead of Python's "not iterable" or "cannot unpack"."""
    if isinstance(chunks, Mapping):
        return chunks.items()
    if isinstance(chunks, (str, bytes)) or not isinstance(chunks, Iterable):
        raise TypeError(
            "write_chunks takes a mapping of chunk coordinates to values or an "
            f"iterable of (coords, value) pairs, got {type(chunks).__name__}: "
            f"{reprlib.repr(chunks)}"
        )
    return (_pair(item) for item in chunks)


def _pair(item: Any) -> tuple[Any, Any]:
    try:
        coords, value = item
    except (TypeError, ValueError):
        raise TypeError(
            "write_chunks: each item of an iterable must be a (coords, value) pair, "
            f"got {type(item).__name__}: {reprlib.repr(item)}"
        ) from None
    return coords, value
