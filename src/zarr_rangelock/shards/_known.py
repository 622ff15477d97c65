"""What this process knows of shards: their indexes as read and as written.

Design note
-----------
Every fast path and the pipeline's jobs need a shard's size and decoded
index before they write. Reading and decoding it costs more than writing a
64 KiB chunk, so three caches keep what was learnt, each trusted only as far
as it can be proved (plain dicts: their operations are atomic, so threads and
event loops may race on them harmlessly; a lost race costs a re-read):

* :data:`_PEEKS`: the last decoded index per shard key, reused only for the
  same size and index bytes (it saves the decode and the checks, not the read);
* :data:`_VALID`: a dense shard's validated index under the key's change stamp
  (``SharedState.generation``) from when that was established under a lock;
* :data:`_INDEXES`: a compact shard's index as this process's last append,
  compaction or layout left it, under the stamp that write left.

An unchanged stamp, read under a lock on the key, proves that no whole-value
write through a wrapper happened since, in any process; appends stamp the key
anew. A write that bypasses the wrappers (the bare store, stock zarr in this
or another process) changes no stamp, so each entry also keeps the value's
identity (``Backend.value_id``: the MemoryStore value object, the file's
device and inode) and is trusted only while the key still holds that value;
else it is dropped and the index read again (it was trusted before, and
reads gave other chunks' bytes, and writes put chunks at the old offsets of
the new shard: ``tests/test_shard_index_cache.py``). Split out
of ``_jobs`` (which writes shards) so that the fast paths and the reads share
these without the jobs.

*Bounds.* Each cache keeps entries worth about :data:`CACHE_BYTES` of
memory, whatever the number of shards, an entry for a shard of ``n`` chunks
costing :func:`entry_bytes` ``(n)`` (about 850 bytes and 70 a chunk: a
peek's index decoded, its bytes and its offsets as a list of ints, which the
in-place path indexes once a chunk and reads faster than an ``array``, plus
the entry; measured with tracemalloc, 925 bytes for a shard of one chunk,
18,140 for one of 256). Past that the entries made longest ago go first
(first in, first out: :func:`_make_room`): about 73,000 shards of one
chunk, 3,575 of 256 (every shard of an array of 56 GiB in 16 MiB shards of
64 KiB chunks) or 233 of 4,096. ``_INDEXES``' entries (an index alone, 16
bytes a chunk) are counted the same, so it keeps less memory than that
(``tests/test_shard_index_cache.py`` checks the estimate). A bound of
1,024 entries instead (emptied when full, until 2026-12-05) made a writer of
an array of more shards than that read and decode a shard's index again
before most chunk writes in random order (``ShardWriter.write_chunk``,
shards of four 4 KiB chunks, paired scratch runs: 4,999 and 4,860 chunks/s
over 4,096 shards, 16,052 and 13,722 with a first bound by chunks; 5,223
against 21,172 in a later pair, with this bound and ``_places``' one loop;
22,000-35,000 over 256 shards either way), and let 1,024 shards of 4,096
chunks keep about 285 MB.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _layout as L

if TYPE_CHECKING:
    from zarr.codecs.sharding import ShardingCodec
    from zarr.core.buffer import Buffer

    from ..store._store import RangeLockedStore

__all__ = [
    "current_index",
    "current_valid",
    "decode_peek",
    "forget_index",
    "left_compact",
    "peek_shard",
    "remember_index",
    "remember_valid",
    "valid",
]


def _read(store: RangeLockedStore, key: str, start: int, end: int) -> Buffer | None:
    """Read ``[start, end)`` of ``key`` with no lock and on the calling thread.

    For reads done while the caller holds the locks that make them safe, or
    as a guess: small ones (an index, one chunk) on the caller's thread,
    where a worker thread (as zarr's LocalStore ``get`` uses) would cost more
    than the read; the readers send long runs to a worker themselves
    (``_reads._read_run``). The Buffer never changes afterwards (the store's
    backend copies out of values it may change).
    """
    return store._backend.read_range(key, start, end)


@dataclass(frozen=True, kw_only=True)
class _Peek:
    """A shard's size and index as read once, decoded, and whether the shard is
    in-place writable. Shared read-only through :data:`_PEEKS`."""

    size: int
    index_bytes: bytes
    index: L.IndexArray
    writable: bool

    @functools.cached_property
    def offsets(self) -> list[int]:
        """Each chunk's offset, in C order of its coordinates in the shard (the
        index's first column, flattened; computed once, on first use)."""
        return self.index[..., 0].ravel().tolist()


_PEEKS: dict[tuple[str, L.ShardGeometry], _Peek] = {}
"""Last decoded index per shard key: a hit needs the same size and the same
index bytes, so an entry is never trusted without reading the index (it only
saves decoding and checking it, which for a 4096-chunk shard costs more than
writing a chunk). Plain dict operations are atomic, so threads and event loops
may race on it harmlessly."""

#: The memory each cache's entries may take, about (see the module's *Bounds*).
CACHE_BYTES = 64 << 20


def entry_bytes(chunks: int) -> int:
    """What an entry for a shard of ``chunks`` chunks costs, about (measured
    with tracemalloc, see the module's *Bounds*)."""
    return 850 + 70 * chunks


_evicting = threading.Lock()


def _make_room(cache: dict[Any, Any], key: object, chunks: int) -> None:
    """Before ``cache[key] = ...`` of an entry for a shard of ``chunks``
    chunks: if ``key`` is new and ``cache`` holds :data:`CACHE_BYTES` //
    :func:`entry_bytes` ``(chunks)`` entries or more, drop the entries made
    longest ago (a dict keeps the order entries were made in; setting a key
    again keeps its place) down to seven eighths of that (so a run of new
    shards drops entries an eighth at a time, not one each). Entries for
    smaller shards may have let the cache grow past what this entry's size
    allows, so about twice :data:`CACHE_BYTES` at most are kept over entries
    of mixed sizes. The drop holds a lock (two threads dropping at once
    would drop twice); gets and the caches' other sets and pops do not, and
    ``list(cache)`` is one atomic step."""
    cap = max(1, CACHE_BYTES // entry_bytes(chunks))
    if len(cache) < cap or key in cache:
        return
    with _evicting:
        excess = len(cache) - cap + max(1, cap // 8)
        if excess > 0:
            for old in list(cache)[:excess]:
                cache.pop(old, None)


def decode_peek(
    codec: ShardingCodec, g: L.ShardGeometry, key: str, size: int, buf: Buffer
) -> _Peek | None:
    """The shard ``key``'s index ``buf`` (read from a shard of ``size`` bytes),
    decoded and checked, through :data:`_PEEKS`; None if it does not decode
    (wrong length, a checksum that fails: the whole-key path will tell)."""
    if len(buf) != g.index_nbytes or size < g.index_nbytes:
        return None
    raw = buf.to_bytes()
    cache_key = (key, g)
    cached = _PEEKS.get(cache_key)
    if cached is not None and cached.size == size and cached.index_bytes == raw:
        return cached
    try:
        index = L.decode_index(codec, buf, g.chunks_per_shard)
    except ValueError:
        return None
    peek = _Peek(
        size=size, index_bytes=raw, index=index, writable=L.in_place_writable(index, g, size)
    )
    _make_room(_PEEKS, cache_key, g.n_chunks)
    _PEEKS[cache_key] = peek
    return peek


_INDEXES: dict[
    tuple[int, str, L.ShardGeometry], tuple[tuple[int, int], object, int, L.IndexArray]
] = {}
"""Per (store state, shard key, geometry) of a compact shard: the change stamp,
value's identity (``Backend.value_id``), size and index the last append or
compaction of this process left it with.
Appends stamp the key anew (they change the index in place, which stamps do
not otherwise track), so under the whole-key lock an equal stamp proves the
index current: the next append neither reads nor decodes it. Entries are set
only after the write committed (a journaled write may still be rolled back)."""

_VALID: dict[tuple[int, str, L.ShardGeometry], tuple[tuple[int, int], _Peek, object]] = {}
"""Per (store state, shard key, geometry): a peek known to be the shard's
current index, the store's change token for the key when that was
established under a lock, and the value's identity then (read it through
:func:`valid`, which checks that). Under a lock on the key, an unchanged token proves
that no whole-value write happened since (see ``SharedState.generation``), so
the index need not be read again: a chunk write then costs one lock and one
``set_range``. Plain dict operations are atomic; races only cost a re-read."""


def peek_shard(
    store: RangeLockedStore, codec: ShardingCodec, g: L.ShardGeometry, key: str
) -> _Peek | None:
    """The shard ``key``'s size and index, read (with no lock of its own: the
    caller's, or a guess it checks) and decoded through :func:`decode_peek`;
    None when there is no shard, it is too short, or its index does not decode."""
    size = store._backend.size(key)
    if size is None or size < g.index_nbytes:
        return None
    buf = _read(store, key, *g.index_range(size))
    return None if buf is None else decode_peek(codec, g, key, size, buf)


def valid(
    store: RangeLockedStore, vk: tuple[int, str, L.ShardGeometry]
) -> tuple[tuple[int, int], _Peek] | None:
    """The change token and peek :data:`_VALID` keeps for ``vk`` (``(store
    state's uid, key, geometry)``) while the key still holds the value it was
    validated on (``Backend.same_value``), else None: an entry whose value
    was replaced behind the wrappers' backs is dropped. The caller still
    compares the token with the key's stamp (a wrapper's whole-key write)."""
    known = _VALID.get(vk)
    if known is None:
        return None
    if not store._backend.same_value(vk[1], known[2]):
        _VALID.pop(vk, None)
        return None
    return known[0], known[1]


def current_valid(store: RangeLockedStore, key: str, g: L.ShardGeometry) -> _Peek | None:
    """The validated index of ``key`` in :data:`_VALID` if the key's change
    stamp still is the one it was validated under (and its value the one,
    see :func:`valid`), else None."""
    state = store._state
    known = valid(store, (state.uid, key, g))
    return known[1] if known is not None and known[0] == state.generation(key) else None


def current_index(
    store: RangeLockedStore, key: str, g: L.ShardGeometry
) -> tuple[int, L.IndexArray] | None:
    """The size and index this process's last append or compaction left
    ``key`` with (:data:`_INDEXES`), while its change stamp says they are
    still the shard's; else None. Read-only (copy it to change it). Without
    a lock on the key only a guess, for a writer that then takes the
    whole-key lock and looks again."""
    state = store._state
    cache_key = (state.uid, key, g)
    hit = _INDEXES.get(cache_key)
    if hit is None or hit[0] != state.generation(key):
        return None
    if not store._backend.same_value(key, hit[1]):
        _INDEXES.pop(cache_key, None)  # replaced behind the wrappers' backs
        return None
    return hit[2], hit[3]


def left_compact(store: RangeLockedStore, key: str, g: L.ShardGeometry) -> bool:
    """Whether this process's last write of ``key`` left it compact (only
    compact layouts are kept in :data:`_INDEXES`) and its change stamp still
    says so: no index to read to know that it cannot be written in place."""
    return current_index(store, key, g) is not None


def remember_index(
    store: RangeLockedStore, key: str, g: L.ShardGeometry, size: int, index: L.IndexArray
) -> None:
    """Keep ``size`` and ``index`` in :data:`_INDEXES` as what this process's
    write left ``key`` with, under its change stamp now (call with the
    whole-key lock held, after the write); the oldest go when it is full."""
    state = store._state
    cache_key = (state.uid, key, g)
    _make_room(_INDEXES, cache_key, g.n_chunks)
    _INDEXES[cache_key] = (state.generation(key), store._backend.value_id(key), size, index)


def forget_index(store: RangeLockedStore, key: str, g: L.ShardGeometry) -> None:
    """Drop what :func:`remember_index` kept of ``key`` (a write that failed)."""
    _INDEXES.pop((store._state.uid, key, g), None)


def remember_valid(
    store: RangeLockedStore,
    vk: tuple[int, str, L.ShardGeometry],
    token: tuple[int, int],
    peek: _Peek,
) -> None:
    """Keep ``peek`` in :data:`_VALID` as the shard's index under stamp ``token``
    and the key's value now (established under a lock on the key); the
    oldest go when it is full."""
    _make_room(_VALID, vk, vk[2].n_chunks)
    _VALID[vk] = (token, peek, store._backend.value_id(vk[1]))
