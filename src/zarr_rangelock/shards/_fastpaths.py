"""The fast paths of ``ShardWriter``: whole inner chunks written without the pipeline.

Design note
-----------
Two paths, chosen once per writer (:func:`make_paths`) from the array's
codecs and the store (the first with a third for shards it cannot yet use):

* *in place* (:class:`_Fast`): the sharding codec alone, inner chunks of a
  fixed encoded size. A shard laid out densely has every chunk at a fixed
  offset; its index, read and checked once under a lock (by the pipeline or
  :func:`validate`), is kept in ``_known._VALID`` under the key's change stamp.
  :func:`put_in_place` writes a group of chunks of one shard at those offsets
  under one multi-range lock, after checking, under the lock, that the stamp
  is unchanged (no whole-value write in between).
* *appended* (:class:`_Append`): compressed chunks, a store that does not
  journal. :func:`put_appended` takes the shard's whole-key lock, appends the
  (already compressed) chunks into the shard's free space and re-points the
  index once, from the index this process last wrote (``_known._INDEXES``,
  trusted while the stamp holds) or read under that lock, as the pipeline's
  append does. Chunks that do not fit compact the shard under the same lock
  (``_placement.compacted``, the pipeline's layout), with the compressed bytes in
  hand: no second encode, no event loop. Before compressing, a chunk whose
  first element's bytes differ from the fill's skips zarr's element-by-element
  empty check where that is sound (``_fill.fill_head``).

* *cold* (:func:`put_cold`): in-place chunks for a shard that is not laid
  out densely yet (missing, or compact as stock zarr writes it), in a store
  that does not journal: under the whole-key lock, what the pipeline's
  ``_DenseJob`` does there with whole chunks (made, appended, compacted, or
  laid out densely as :func:`~._jobs.stays_compact` says), through the same
  layout functions (``_placement.compacted``, ``_dense.densified``), so the shard's
  bytes are the pipeline's.

Each returns how many chunks it wrote (all or none); the writer sends the
rest through the pipeline. They write through the wrapper's backend under locks on the
key as given, so they are off where the wrapper's own ``set_range`` fast
path is (a read-only or ``confine=True`` wrapper).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs.sharding import ShardingCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, BufferPrototype, cpu
from zarr.core.chunk_utils import chunk_is_empty

from .._errors import PartialWriteError, WouldBlock
from ..locks._grant import AtOnce
from ..locks._ki import protected
from ..locks._own import one_call
from ..store._io import as_bytes_view
from ..store._store import RangeLockedStore
from . import _layout as L
from ._dense import densified
from ._fill import ends_may_be_fill, first_is_data, value_fill
from ._gate import Gate
from ._jobs import chunk_order, compact_most, stays_compact
from ._known import (
    _VALID,
    current_index,
    left_compact,
    peek_shard,
    remember_index,
    remember_valid,
    valid,
)
from ._pipeline import _facts
from ._placement import compacted, note_index_put_back, repointed

__all__ = [
    "BUSY",
    "GATE",
    "GATE_MAX_CHUNK",
    "encode",
    "make_paths",
    "put_all_in_place",
    "put_appended",
    "put_cold",
    "put_edge_in_place",
    "put_in_place",
    "validate",
]

GATE_MAX_CHUNK = 64 * 1024
"""Uncompressed inner chunks of at most this many bytes are written by one
thread of the process at a time (:data:`GATE`)."""

GATE = Gate()
"""One thread of the process at a time in the in-place fast path of small
chunks (at most :data:`GATE_MAX_CHUNK` bytes), while the GIL is on; handed
over in time slices (``_gate``).

Such a write is 5-20 us of Python around three system calls (the OS lock,
``pwrite``, the unlock), each of which lets the GIL go: with several
threads writing, each call hands the GIL to another thread and waits to
get it back, and four threads wrote at 0.5x the rate of one. Let in one at
a time, they do not contend (``benchmarks/throughput.py``: 1.4-1.5x from
four threads; measured 0.67x with 1 MiB chunks, whose copies into the page
cache then no longer overlap, hence the size limit). Nothing waits for a
lock while holding it: the chunks' lock is only taken if it is free at once
(``put_in_place(wait=False)``); else, and for anything that must read or lay
out a shard first, the writer lets the gate go and waits outside it, so a
writer held up by a reader or another process does not hold up the
process's other writers. ``write_chunks`` of a dict of numpy arrays holds it
from its first lookup to its last write: Python of another writer that ran
outside it (its lookups, about 1 us a chunk) took the GIL at each of this
writer's system calls and kept it while this writer waited (paired runs of
``write_chunks`` of 64 chunks from four threads: 1.05x and 1.11x the rate).
A thread keeps it for a turn of a few milliseconds (``_gate``): a plain
lock, handed over at almost every chunk, had 4 threads write ``write_chunk``
0.65-0.78x as fast as one. Opened in a forked child (a fork while another
thread holds it would leave it held)."""


def _open_gate_in_child() -> None:
    # The threads that held it or waited for it do not exist in the child
    # (no fork happens inside the gate: nothing there calls out of the package).
    GATE._reset()


os.register_at_fork(after_in_child=_open_gate_in_child)

BUSY = -1
"""``put_in_place(wait=False)``: not written, the lock was not free at once
or the shard is not validated yet; write again with ``wait=True``."""


def _gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (a free-threaded build may
    not; there the gate would only serialise writers)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def make_paths(
    array: Any, store: RangeLockedStore, spec: ArraySpec, prototype: BufferPrototype
) -> tuple[_Fast | None, _Append | None]:
    """The fast paths open to ``array`` (a sharded ``zarr.Array`` on ``store``,
    ``spec`` its shards' spec): the in-place one, the appending one, or
    neither (at most one of them)."""
    metadata = array.metadata
    codecs = metadata.codecs
    # The sharding codec alone (no codec around it), inner chunks that zarr
    # can encode synchronously; only where the wrapper's own set_range fast
    # path may write (a writable store, keys not confined: a confined key is
    # locked and written under its canonical spelling, which the pipeline
    # uses).
    if not (store._writable and len(codecs) == 1 and isinstance(codecs[0], ShardingCodec)):
        return None, None
    codec = codecs[0]
    shard_spec = ArraySpec(
        shape=spec.shape,
        dtype=metadata.data_type,
        fill_value=metadata.fill_value,
        config=array._async_array.config,
        prototype=prototype,
    )
    facts = _facts(codec, shard_spec)
    if facts is None:
        return None, None
    transform, geometry, chunk_spec, dtype = (
        facts.transform,
        facts.geometry,
        facts.chunk_spec,
        facts.dtype,
    )
    common: dict[str, Any] = {
        "codec": codec,
        "transform": transform,
        "geometry": geometry,
        "chunk_spec": chunk_spec,
        "chunk_shape": tuple(chunk_spec.shape),
        "dtype": dtype,
        "keep_empty": bool(shard_spec.config.write_empty_chunks),
    }
    if geometry.chunk_nbytes is None:
        # Compressed chunks: appended under the whole-key lock. A journaled
        # store takes the pipeline, whose transaction keeps chunk and index
        # together.
        if store.durability.startswith("journal"):
            return None, None
        return None, _Append(**common, fill_head=facts.head)
    fill = transform.encode_chunk(
        prototype.nd_buffer.from_numpy_array(
            np.full(chunk_spec.shape, metadata.fill_value, dtype=dtype)
        ),
        chunk_spec,
    )
    fill_bytes = as_bytes_view(fill, "write_chunk").tobytes()
    # (Empty chunks kept: every chunk is data, whatever its bytes.)
    keep_empty = common["keep_empty"]
    unsure, fill_item = (False, None) if keep_empty else value_fill(dtype, chunk_spec.fill_value)
    return (
        _Fast(
            **common,
            fill=fill_bytes,
            probe=min(dtype.itemsize, len(fill_bytes)) - 1,
            unsure=unsure,
            fill_item=fill_item,
            plain=facts.plain is not None,
            gated=geometry.chunk_nbytes <= GATE_MAX_CHUNK and _gil_enabled(),
        ),
        None,
    )


def encode(
    prototype: BufferPrototype, data: np.ndarray[Any, Any], path: _Path
) -> memoryview | None:
    """The encoded bytes of one whole chunk, or None for a chunk the
    pipeline must write (fill values that zarr would drop)."""
    if isinstance(path, _Fast):
        if path.plain:
            raw = memoryview(data).cast("B")
        else:
            nd = prototype.nd_buffer.from_numpy_array(data)
            encoded = path.transform.encode_chunk(nd, path.chunk_spec)
            if encoded is None or len(encoded) != path.geometry.chunk_nbytes:
                return None  # pragma: no cover - fixed-size codecs
            raw = as_bytes_view(encoded, "write_chunk")
        # (memoryview == compares element by element: 130 us for 64 KiB. One
        # byte first, the first element's last: its sign and exponent in a
        # little-endian float, which data rarely shares with the fill; then
        # its first, which small integers do not share with a zero fill: the
        # 64-byte compare costs about 1 us.)
        probe = path.probe
        if (
            raw[probe] == path.fill[probe]
            and raw[0] == path.fill[0]
            and raw[:64] == path.fill[:64]
            and raw.tobytes() == path.fill
        ):
            # zarr drops a chunk of fill values (and deletes a shard left
            # without chunks), or with write_empty_chunks stores it, present:
            # the pipeline does either and settles the shard's absent marks
            # (see _layout), which an in-place write cannot.
            return None
        if (
            path.unsure
            and ends_may_be_fill(data, path.fill_item)
            and chunk_is_empty(prototype.nd_buffer.from_numpy_array(data), path.chunk_spec)
        ):
            # Other bytes than the fill's that zarr counts as fill all the
            # same (another NaN; -0.0 in a complex or a record): dropped as
            # zarr drops them.
            return None
        return raw
    assert isinstance(path, _Append)
    nd = prototype.nd_buffer.from_numpy_array(data)
    if not (path.keep_empty or first_is_data(data, path.dtype, path.fill_head)) and chunk_is_empty(
        nd, path.chunk_spec
    ):
        return None  # zarr drops it: the pipeline does that
    encoded = path.transform.encode_chunk(nd, path.chunk_spec)
    if encoded is None:  # pragma: no cover - not empty, so encoded
        return None
    return as_bytes_view(encoded, "write_chunk")


def validate(store: RangeLockedStore, key: str, fast: _Fast) -> bool:
    """What the pipeline's first in-place write into a shard does first,
    without its write: read the shard's size and index under a shared
    whole-key lock (no whole-value write can run meanwhile), check that it
    is laid out densely and keep the index in ``_VALID``. False when the
    shard is missing or not dense (:func:`put_cold` lays it out). A shard
    this process left compact (its index in ``_INDEXES``, the stamp
    unchanged) is not read again: False at once (``put_cold`` checks again
    under its lock)."""
    g = fast.geometry
    state = store._state
    if left_compact(store, key, g):
        return False
    with store._mgr.lock(key, shared=True):
        peek = peek_shard(store, fast.codec, g, key)
        if peek is None or not peek.writable:
            return False
        remember_valid(store, (state.uid, key, g), state.generation(key), peek)
    return True


def put_in_place(
    store: RangeLockedStore,
    key: str,
    writes: list[tuple[int, memoryview]],
    fast: _Fast,
    wait: bool = True,
) -> int:
    """The in-place fast path: chunks of a dense shard written at their
    offsets in the shard's validated index, under one lock on all their
    ranges (adjacent ones merged): how many were written, all or none
    (0 when it does not apply). With ``wait`` False, :data:`BUSY` (nothing
    written) where the lock is not free at once or the shard not validated
    (see :data:`GATE`).

    One chunk whose range is free at once (the common case) is held as the
    store's own ``set_range`` holds a range (:func:`_put_one`)."""
    state = store._state
    vk = (state.uid, key, fast.geometry)
    known = valid(store, vk)
    if known is None:
        return 0 if wait else BUSY  # not validated yet: the pipeline's first write does it
    token, peek = known
    if not peek.writable:
        return 0  # pragma: no cover - only writable peeks are cached
    offsets = peek.offsets
    if len(writes) == 1:
        j, raw = writes[0]
        start = offsets[j]
        at = [(start, raw)]
        done = _put_one(store, key, at, token, vk)
        if done is not None:
            return done
        grant = store._mgr.lock(key, start, start + len(raw))
    else:
        # (Distinct chunks, distinct offsets: the sort never compares views.)
        at = sorted([(offsets[j], raw) for j, raw in writes])
        size = fast.geometry.chunk_nbytes
        assert size is not None  # in place: fixed-size chunks
        grant = store._mgr._lock_runs(key, _runs(at, size))
    if wait:
        with grant:
            return _write_at(store, key, at, token, vk)
    try:
        with AtOnce(grant):
            return _write_at(store, key, at, token, vk)
    except WouldBlock:
        return BUSY


@protected
def put_all_in_place(
    store: RangeLockedStore,
    groups: dict[str, list[tuple[int, memoryview]]],
    fast: _Fast,
) -> int:
    """Chunks of several dense validated shards (``{key: [(row in the
    shard's index, bytes)]}``) written in place as one: every shard's chunks
    locked first (in key order, as one call's locks, see ``one_call``; none
    waited for), every shard's change stamp checked, then all written and
    all let go. So another write of the same shards comes wholly before or
    after it, the plain API's atomicity (:func:`put_in_place` of each shard
    in turn would let one land between them). How many were written: all;
    0 (nothing written) where a shard is not validated or was rewritten
    whole since, or the store journals (the pipeline makes the chunks of
    all the shards one transaction); :data:`BUSY` (nothing held, nothing
    written) where a lock is not free at once: the pipeline then writes
    them, waiting as it does.

    Protected from KeyboardInterrupt (``_ki``) whole, as :func:`_put_one`
    is (it never waits; an interrupt is raised once all is let go): the
    grants go through ``contextlib.ExitStack``, whose ``enter_context``
    has a check between a grant's entry and the push of its exit (a SIGINT
    deferred in the entry was raised there, and the grant stayed held for
    good), and whose ``__exit__`` could be interrupted at its entry.
    """
    if store.durability.startswith("journal"):
        return 0
    size = fast.geometry.chunk_nbytes
    assert size is not None  # in place: fixed-size chunks
    plans = []
    for key in sorted(groups):
        vk = (store._state.uid, key, fast.geometry)
        known = valid(store, vk)
        if known is None or not known[1].writable:
            return 0
        token, peek = known
        at = sorted([(peek.offsets[j], raw) for j, raw in groups[key]])
        plans.append((key, vk, token, at))
    with contextlib.ExitStack() as held:
        try:
            with one_call():
                for key, _, _, at in plans:
                    held.enter_context(AtOnce(store._mgr._lock_runs(key, _runs(at, size))))
        except WouldBlock:
            return BUSY
        for key, vk, token, _ in plans:
            if store._state.generation(key) != token:
                _VALID.pop(vk, None)  # a whole-key write got in between
                return 0
        for key, _, token, at in plans:
            store._backend.set_ranges(key, at, stamp=token)
    return sum(len(at) for *_, at in plans)


def put_edge_in_place(
    store: RangeLockedStore,
    key: str,
    inner: int,
    data: np.ndarray[Any, Any],
    fast: _Fast,
    prototype: BufferPrototype,
) -> int:
    """An edge chunk (one the array's edge clips; ``data``, its values, of
    the clipped shape) of a dense validated shard, written in place as zarr
    writes one: under an exclusive lock on the chunk's range, the stored
    chunk is read and decoded, ``data`` put into its leading part (what lies
    beyond the array's edge is kept, as zarr keeps it), and the chunk
    encoded and written back. 1: written; 0: nothing written, the pipeline
    must write it (the shard not validated, or rewritten whole since; a
    merged chunk that zarr drops)."""
    state = store._state
    vk = (state.uid, key, fast.geometry)
    known = valid(store, vk)
    if known is None:
        return 0
    token, peek = known
    start = peek.offsets[inner]
    size = fast.geometry.chunk_nbytes
    assert size is not None  # in place: fixed-size chunks
    with store._mgr.lock(key, start, start + size):
        # (_write_at's check, made before the read: the offsets must be the
        # shard's to read the chunk; the lock keeps them so until the write.)
        if state.generation(key) != token:
            _VALID.pop(vk, None)  # a whole-key write got in between
            return 0
        stored = store._backend.read_range(key, start, start + size)
        if stored is None or len(stored) != size:  # pragma: no cover - validated, dense
            return 0
        chunk = fast.transform.decode_chunk(stored, fast.chunk_spec).as_numpy_array().copy()
        chunk[tuple(slice(0, n) for n in data.shape)] = data
        raw = encode(prototype, chunk, fast)
        if raw is None:
            return 0  # zarr drops the merged chunk: the pipeline does that
        store._backend.set_ranges(key, [(start, raw)], stamp=token)
        return 1


@protected
def _put_one(
    store: RangeLockedStore,
    key: str,
    at: list[tuple[int, memoryview]],
    token: tuple[int, int],
    vk: tuple[Any, ...],
) -> int | None:
    """One chunk ``at`` (``[(offset, bytes)]``) written under a token hold
    of its range (``locks/_tokens``: a tuple in the lock table, not a
    Grant) if the range is free at once: as :func:`_write_at`. None
    (nothing held, nothing written) if it is not. Protected from
    KeyboardInterrupt (``_ki``) from the hold to its release, as the
    store's own token writes are (the write is short)."""
    start, raw = at[0]
    mgr = store._mgr
    hold = mgr._hold_if_free(key, start, start + len(raw))
    if hold is None:
        return None
    try:
        return _write_at(store, key, at, token, vk)
    finally:
        mgr._let_go(key, hold)


def _write_at(
    store: RangeLockedStore,
    key: str,
    at: list[tuple[int, memoryview]],
    token: tuple[int, int],
    vk: tuple[Any, ...],
) -> int:
    """Under the chunks' locks: write them at their offsets if the shard's
    change stamp is still ``token`` (no whole-key write in between)."""
    stamp = store._state.generation(key)
    if stamp != token:
        _VALID.pop(vk, None)  # a whole-key write got in between
        return 0
    store._backend.set_ranges(key, at, stamp=stamp)
    return len(at)


def put_appended(
    store: RangeLockedStore, key: str, writes: list[tuple[int, memoryview]], ap: _Append
) -> int:
    """The compressed fast path: under the shard's whole-key lock, write
    (already compressed) chunks into dead or free space and re-point the
    index once, exactly as the pipeline's append does, but from the index this
    process last wrote (kept while the shard's change stamp says it is
    current): no event loop, no index read. Chunks that do not fit compact
    the shard with them, and a missing shard is made with them, as the
    pipeline would (:func:`_compact`). Returns how many of ``writes`` were
    written: all, or 0 when the shard is too short or unreadable (the
    pipeline then raises zarr's error)."""
    with store._mgr.lock(key):
        stored = _stored_index(store, key, ap)
        if stored is None:
            return 0
        size, index = stored
        if index is None:
            _compact(store, key, ap, None, writes)
        else:
            _append(store, key, ap, size, index, writes)
    return len(writes)


def put_cold(
    store: RangeLockedStore, key: str, writes: list[tuple[int, memoryview]], fast: _Fast
) -> int:
    """In-place chunks for a shard that is not laid out densely (missing, or
    compact as stock zarr writes it): under the whole-key lock, what the
    pipeline's write of whole chunks does there (``_DenseJob._rewrite``),
    with the encoded bytes in hand and no event loop. While
    :func:`~._jobs.stays_compact` (fewer than
    :data:`~._jobs.DENSE_MIN_LIVE_RATIO` of its chunks would be live, on a
    store without ``dense_shards``), the shard is made or kept compact
    (appended, or compacted); else it is laid
    out densely (``_dense.densified``) and its index validated, so the next
    writes go in place. Returns how many of ``writes`` were written: all, or
    0 where the pipeline must write them (a journaled store, whose chunk and
    index are one transaction; a shard too short or unreadable, for zarr's
    error). One another writer laid out densely meanwhile is written in
    place under the whole-key lock."""
    if store.durability.startswith("journal"):
        return 0
    g = fast.geometry
    state = store._state
    with store._mgr.lock(key):
        stored = _stored_index(store, key, fast)
        if stored is None:
            return 0
        size, index = stored
        if index is not None and L.in_place_writable(index, g, size):
            # Laid out densely (by another writer) since the caller found it
            # compact: in place, under this lock. (Returning 0 here made
            # write_chunks send the group's first chunk through the pipeline
            # alone, the rest after it: a reader saw them half written. A
            # bug hunt found it.)
            peek = peek_shard(store, fast.codec, g, key)
            if peek is None or not peek.writable:  # pragma: no cover - just read so
                return 0
            vk = (state.uid, key, g)
            token = state.generation(key)
            remember_valid(store, vk, token, peek)
            at = sorted([(peek.offsets[j], raw) for j, raw in writes])
            return _write_at(store, key, at, token, vk)
        live = L.live_after(index, [j for j, _ in writes], len(writes))
        if stays_compact(store, g, live):
            if index is None:
                _compact(store, key, fast, None, writes)
            else:
                _append(store, key, fast, size, index, writes)
            return len(writes)
        new = _by_coords(g, writes)
        kept = index is not None and live > len(writes)
        parts, peek = densified(
            fast.codec, g, key, index, size if kept else None, new, _buffer(fast.fill)
        )
        backend = store._backend
        try:
            backend.rewrite_value_sync(key, peek.size, parts)
        finally:
            backend.forget(key)  # the file was replaced (as LockedKey.rewrite)
        remember_valid(store, (state.uid, key, g), state.generation(key), peek)
    return len(writes)


def _stored_index(
    store: RangeLockedStore, key: str, path: _Path
) -> tuple[int, L.IndexArray | None] | None:
    """Under the whole-key lock: the shard's size and index (read-only), as
    this process last wrote them while the stamp says they are current
    (``_known._INDEXES``: no I/O, the common case), else read; ``(0, None)``
    when there is no shard, None when it is too short or unreadable."""
    known = current_index(store, key, path.geometry)
    if known is not None:
        return known
    peek = peek_shard(store, path.codec, path.geometry, key)
    if peek is not None:
        return peek.size, peek.index
    return (0, None) if store._backend.size(key) is None else None


def _append(
    store: RangeLockedStore,
    key: str,
    path: _Path,
    size: int,
    index: L.IndexArray,
    writes: list[tuple[int, memoryview]],
) -> None:
    """Under the whole-key lock: write ``writes`` into the dead or free space
    of the shard (``size`` bytes, ``index``, which is not changed; see
    ``_placement.repointed``) and re-point its index once, or compact it with them
    when they do not all fit (the pipeline's rule, ``_ShardJob._append``)."""
    g = path.geometry
    plan = repointed(g, size, index, writes)
    if plan is None:
        _compact(store, key, path, index, writes)
        return
    runs, new_index = plan
    backend = store._backend
    backend.set_ranges(  # one fdatasync for them all, before the index's (durability="fsync")
        key, [(at, data[0] if len(data) == 1 else memoryview(b"".join(data))) for at, data in runs]
    )
    index_bytes = L.encode_index(path.codec, new_index)
    # The index changes in place: tell every process, before it does. After,
    # a KeyboardInterrupt between the index's write and the stamp left the
    # index this process keeps looking current, and the next write
    # re-pointed the shard from it, undoing this one's chunks.
    backend.bump(key)
    at = g.index_range(size)[0]
    try:
        backend.set_range(key, as_bytes_view(index_bytes, "write_chunk"), at)
    except PartialWriteError as exc:
        # Half an index fails its checksum: every chunk of the shard lost.
        # The old one, written back, points at none of the new bytes.
        failure = None
        try:
            old = L.encode_index(path.codec, index)
            backend.set_range(key, as_bytes_view(old, "write_chunk"), at)
        except OSError as again:
            failure = again
        note_index_put_back(exc, key, failure)
        raise
    remember_index(store, key, g, size, new_index)


def _compact(
    store: RangeLockedStore,
    key: str,
    path: _Path,
    index: L.IndexArray | None,
    writes: list[tuple[int, memoryview]],
) -> None:
    """Under the whole-key lock: rewrite the shard whole (or make it: ``index``
    None) with ``writes`` over the live chunks of ``index``, as the
    pipeline's compaction does (``_placement.compacted``, the same bytes),
    without encoding the chunks again or a trip through the event loop."""
    g = path.geometry
    order = chunk_order(path.codec, g)
    layout = compacted(g, index, _by_coords(g, writes), order, compact_most(store, g))
    assert layout is not None  # pragma: no branch - writes is never empty
    total, parts, new_index = layout
    parts.append((g.index_range(total)[0], L.encode_index(path.codec, new_index)))
    backend = store._backend
    try:
        backend.rewrite_value_sync(key, total, parts)
    finally:
        backend.forget(key)  # the file was replaced (as LockedKey.rewrite)
    remember_index(store, key, g, total, new_index)


def _by_coords(
    g: L.ShardGeometry, writes: list[tuple[int, memoryview]]
) -> dict[tuple[int, ...], Buffer]:
    """``writes`` (place in the shard, bytes) by chunk coordinates in the shard."""
    shape = g.chunks_per_shard
    return {tuple(map(int, np.unravel_index(j, shape))): _buffer(raw) for j, raw in writes}


def _buffer(raw: bytes | memoryview) -> Buffer:
    return cpu.Buffer(np.frombuffer(raw, dtype=np.uint8))


def _runs(at: list[tuple[int, memoryview]], size: int) -> list[tuple[int, int]]:
    """The byte ranges of sorted writes of ``size`` bytes each (distinct
    chunks of one shard, at least one), adjacent ones merged: canonical
    ranges, as the lock table's ``_lock_runs`` takes them."""
    runs: list[tuple[int, int]] = []
    start = end = -1
    for offset, _ in at:
        if offset == end:
            end += size
        else:
            if end >= 0:
                runs.append((start, end))
            start, end = offset, offset + size
    runs.append((start, end))
    return runs


@dataclass(frozen=True, kw_only=True)
class _Path:
    """What a fast path needs, fixed for the writer."""

    codec: ShardingCodec
    """The sharding codec (it encodes and decodes the index)."""
    transform: Any
    geometry: L.ShardGeometry
    chunk_spec: ArraySpec
    chunk_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    keep_empty: bool


@dataclass(frozen=True, kw_only=True)
class _Append(_Path):
    """The compressed fast path."""

    fill_head: bytes | None
    """The bytes of one element of fill value, where a chunk whose first
    element has other bytes cannot be all fill by zarr's rule (see
    ``_fill.fill_head``); None: no such shortcut."""


@dataclass(frozen=True, kw_only=True)
class _Fast(_Path):
    """The in-place fast path of fixed-size chunks."""

    fill: bytes
    """One chunk of fill value, encoded."""
    probe: int
    """The byte of an encoded chunk compared with the fill's first: the first
    element's last byte."""
    unsure: bool
    """A chunk whose bytes differ from :attr:`fill`'s may still be one that
    zarr drops (``_fill.value_fill``; empty chunks not kept):
    :func:`encode` then asks zarr's rule."""
    fill_item: Any
    """The fill value as a Python value (:func:`~._fill.ends_may_be_fill`)."""
    plain: bool
    """The encoded chunk is the C-order bytes of the array (inner codecs: one
    ``bytes`` codec in native byte order): no need to call the codec."""
    gated: bool
    """Writes go through :data:`GATE` (small chunks, the GIL on)."""
