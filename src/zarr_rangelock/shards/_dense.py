"""Path 1 of :mod:`~._jobs`' design note: shards of fixed-size inner chunks
(``bytes``, optionally ``crc32c``) written in place, laid out densely first.

:class:`_DenseJob` is the pipeline's job for such a shard (in place under
range locks, or rewritten whole under the whole-key lock: kept compact,
laid out densely, deleted), and :func:`densified` the dense layout it and
``ShardWriter``'s fast paths (:mod:`~._fastpaths`) write. The jobs' common
part (locks, encoding, the index, compacted and appended shards) is in
:mod:`~._jobs`.

Design note
-----------
*Finding a chunk.* Offsets always come from the shard's own index, never from
an assumed chunk order. Path 1 must know the offsets before it can lock them,
so it first reads the size and the index without any lock (a guess), takes
the range locks the guess gives, then reads the size and index again and
starts over if they changed (after a few spoilt guesses it takes the whole
key instead). The second read needs no lock either: in path 1 the index and
the size change only under a whole-key lock, which cannot be granted while
this writer holds a range of the key. The decoded index is cached per key and
reused when the bytes read are identical, so a write re-reads the index but
does not re-decode or re-check it.

*Empty chunks.* The keys are stock zarr's: a shard is deleted when no chunk
is present in its index after a write, and a chunk is present unless the
last write of it was of fill values with ``write_empty_chunks`` False (zarr's
default; with it True a chunk of fill values is stored, and present). So a
write of fill values never creates a shard, and a shard left without chunks
is deleted. Compact shards drop fill chunks as zarr does. A dense shard
keeps a fill chunk's bytes in place (its layout needs every chunk) and says
which of its fill chunks stock zarr would not have in its *absent marks*
(``_layout``: written with the dense layout, one bit a chunk). An in-place
write cannot change them (its locks cover its chunks only), so a write that
dropped a chunk, or stored fill values into one with ``write_empty_chunks``
True, settles them under the whole-key lock once its own locks are gone
(``sweep``): it marks the chunks it dropped absent and those it stored
present, and deletes the shard if every chunk is then marked absent and
holds the fill chunk's bytes (a chunk marked absent but written with data
since is present: the bytes say so). Stock zarr reads the same values
either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import Buffer
from zarr.core.chunk_utils import fill_value_or_default

from ..locks._ki import protected
from ..store._rewrite import Span
from . import _layout as L
from ._jobs import _MAX_GUESSES, _WHOLE_KEY, _ShardJob, chunk_order, stays_compact
from ._known import (
    _VALID,
    _Peek,
    _read,
    current_valid,
    left_compact,
    peek_shard,
    remember_valid,
    valid,
)


def densified[T](
    codec: ShardingCodec,
    g: L.ShardGeometry,
    key: str,
    index: L.IndexArray | None,
    stored: int | None,
    new: Mapping[tuple[int, ...], T | None],
    fill: Buffer,
    marks: Sequence[bool] | None = None,
) -> tuple[list[tuple[int, T | Span | Buffer]], _Peek]:
    """A shard of fixed-size chunks laid out densely: the chunks of
    ``index`` that ``new`` does not replace, copied from the shard as stored
    (``stored`` bytes; None: no such chunk, nothing copied), ``new`` over
    them, ``fill`` (the encoded fill chunk) where no chunk is, in the codec's
    order, the absent marks of those if any (see ``_layout``; ``marks``, one
    bool a chunk in C order, instead where given), and the
    index. Returns the pieces of the new value (``g.dense_nbytes`` bytes,
    plus ``g.marks_nbytes`` with marks: the size is the peek's; a rewrite
    starts from zeros, so a fill chunk of zero bytes, zarr's default, is
    left out: on a LocalStore its slots stay holes until written) and its
    validated index.

    Raises
    ------
    ValueError
        If a chunk of ``index`` is not one chunk's size or lies past the
        stored bytes (checked when anything is copied).
    """
    assert g.chunk_nbytes is not None
    chunks: dict[tuple[int, ...], T | Span | None] = {}
    if index is not None and stored is not None:
        for coords, rng in L.present_chunks(index).items():
            if rng[1] - rng[0] != g.chunk_nbytes or rng[1] > stored:
                raise ValueError(
                    f"chunk {coords} of {key!r} is {rng[1] - rng[0]} bytes at "
                    f"{rng}, expected {g.chunk_nbytes}"
                )
            chunks[coords] = Span(*rng)
    chunks.update(new)
    dense = L.dense_index(g, chunk_order(codec, g))
    zeros = not bool(fill.as_numpy_array().any())
    parts: list[tuple[int, T | Span | Buffer]] = []
    absent: list[bool] = []
    # (C order, as np.ndindex, without its cost or a numpy lookup a chunk)
    every = itertools.product(*map(range, g.chunks_per_shard))
    for coords, offset in zip(every, dense[..., 0].ravel().tolist(), strict=True):
        c = chunks.get(coords)
        absent.append(c is None)
        if c is not None or not zeros:
            parts.append((offset, fill if c is None else c))
    size = g.dense_nbytes
    if marks is not None:
        absent = list(marks)
    if any(absent):  # fill chunks standing in for absent ones: say which
        parts.append((g.marks_start, L.encode_marks(g, absent)))
        size += g.marks_nbytes
    index_bytes = L.encode_index(codec, dense)
    parts.append((g.index_range(size)[0], index_bytes))
    peek = _Peek(
        size=size,
        index_bytes=index_bytes.to_bytes(),
        index=dense,
        writable=L.in_place_writable(dense, g, size),
    )
    return parts, peek


@dataclass(kw_only=True)
class _DenseJob(_ShardJob):
    """Fixed-size inner chunks: in place under range locks once the shard is
    dense; before that (few chunks live), appended as for compressed chunks."""

    marks: dict[tuple[int, ...], bool] = dataclasses.field(default_factory=dict)
    """The absent marks an in-place write must settle (see :meth:`sweep`):
    True for a chunk it stored as the fill chunk where zarr drops it (the
    shard may now have no chunk), False for one of fill values it stored
    with ``write_empty_chunks`` True (present, as stock zarr stores it)."""
    written_peek: _Peek | None = None
    """The dense index this write left the shard with (set when it laid the
    shard out densely), for :data:`_VALID` once the write has committed: the
    next chunk write needs no index read."""

    def remember_index(self, committed: bool) -> None:
        super().remember_index(committed)
        vk = (self.store._state.uid, self.key, self.geometry)
        if committed and self.written_peek is not None:
            remember_valid(
                self.store, vk, self.store._state.generation(self.key), self.written_peek
            )
        elif not committed:
            _VALID.pop(vk, None)

    async def prepare(self) -> None:
        spec = self.chunk_spec
        for p in self.projections:
            if p[3]:
                self.encoded[p[0]] = self._encode(None, p, spec)

    # Protected from KeyboardInterrupt (``locks/_ki``) while it runs (its
    # waits are the event loop's): an interrupt at the entry of
    # ``push_async_exit`` or ``aclose`` left the attempt's locks held.
    @protected
    async def acquire(
        self, held: contextlib.AsyncExitStack, timeout: float | None
    ) -> Callable[[], Awaitable[None]]:
        # A guess is re-read under the lock; after a few guesses spoilt by
        # concurrent whole-key writes, take the whole key (always correct).
        if not self.whole_shard:
            state = self.store._state
            valid_key = (state.uid, self.key, self.geometry)
            for _ in range(_MAX_GUESSES):
                known = valid(self.store, valid_key)
                if known is None and left_compact(self.store, self.key, self.geometry):
                    break  # as this process left it: no index to read for that
                peek = known[1] if known is not None else await self._peek()
                if peek is None or not peek.writable:
                    break
                ranges = self._chunk_ranges(peek.index)
                attempt = contextlib.AsyncExitStack()
                handle = await self._lock(attempt, ranges, timeout)
                try:
                    token = state.generation(self.key)
                    unchanged = (known is not None and known[0] == token) or (
                        await self._unchanged(handle, peek)
                    )
                except BaseException:
                    await attempt.aclose()
                    raise
                if unchanged:
                    remember_valid(self.store, valid_key, token, peek)
                    held.push_async_exit(attempt)
                    return functools.partial(self._write_in_place, handle, peek.index)
                _VALID.pop(valid_key, None)
                await attempt.aclose()  # a whole-key writer got in between: look again
        handle = await self._lock(held, _WHOLE_KEY, timeout)
        return functools.partial(self._rewrite, handle)

    def _chunk_ranges(self, index: L.IndexArray) -> list[tuple[int, int | None]]:
        ranges: list[tuple[int, int | None]] = []
        for coords, *_ in self.projections:
            rng = L.chunk_byte_range(index, coords)
            assert rng is not None  # in_place_writable: every chunk present
            ranges.append(rng)
        return ranges

    async def _peek(self) -> _Peek | None:
        """Read the size and the index without taking a lock: only a guess at
        which ranges to lock, checked again under the lock by :meth:`_unchanged`.
        A guess read across a concurrent whole-key write fails to decode (the
        whole-key path then takes over) or fails that check (we look again)."""
        return peek_shard(self.store, self.codec, self.geometry, self.key)

    async def _unchanged(self, handle: Any, peek: _Peek) -> bool:
        """With the range locks held: are the size and index still what ``peek`` saw?

        Reads the index without a lock, which is safe here: on this path the
        index and the size change only under a whole-key lock, which cannot be
        granted while we hold a range of the key.
        """
        try:
            size = await handle.getsize()
        except FileNotFoundError:
            return False
        if size != peek.size:
            return False
        buf = _read(self.store, self.key, *self.geometry.index_range(size))
        return buf is not None and buf.to_bytes() == peek.index_bytes

    async def _write_in_place(self, handle: Any, index: L.IndexArray) -> None:
        """Under the shard's lock(s): encode every chunk of the write (merging
        part-chunks into the chunks stored), then write them in place. All
        are encoded before any is written, so a chunk whose encode fails
        leaves the shard all old, as stock zarr's whole-shard encode does;
        the absent marks to settle are those of the chunks written."""
        spec = self.chunk_spec
        size = self.geometry.chunk_nbytes
        writes: list[tuple[tuple[int, ...], Buffer, int, bool | None]] = []
        for p in self.projections:
            rng = L.chunk_byte_range(index, p[0])
            assert rng is not None
            start, end = rng
            if p[0] in self.encoded:
                data = self.encoded[p[0]]
            else:
                data = self._encode(_read(self.store, self.key, start, end), p, spec)
            mark: bool | None = None
            if data is None:  # empty, and zarr would drop it: a dense shard keeps fill
                data, mark = self._fill_bytes, True
            elif spec.config.write_empty_chunks and self._is_fill(data):
                mark = False  # stored, as zarr stores it: present
            if len(data) != size:
                raise RuntimeError(
                    f"inner chunk {p[0]} of {self.key!r} encoded to {len(data)} bytes, "
                    f"expected {size}"
                )
            writes.append((p[0], data, start, mark))
        for coords, data, start, mark in writes:
            await handle.set_range(data, start)
            if mark is not None:
                self.marks[coords] = mark

    async def _rewrite(self, handle: Any) -> None:
        """Under the whole-key lock: write in place if the shard is dense; else
        keep it compact (append, as for compressed chunks) while
        :func:`stays_compact` (fewer than :data:`DENSE_MIN_LIVE_RATIO` of its
        chunks live, on a store without ``dense_shards``), else lay it out
        densely; delete it when no chunk is left."""
        g = self.geometry
        if not self.whole_shard:
            # Under the whole-key lock an unchanged token proves the validated
            # index current (see _VALID): no index to read and decode.
            known = current_valid(self.store, self.key, g)
            if known is not None:
                await self._write_in_place(handle, known.index)
                return
        size, index = await self._index(handle)
        if index is not None and L.in_place_writable(index, g, size):
            # A fill chunk written here is swept once the locks are gone
            # (sweep): a journaled write is not applied before then.
            await self._write_in_place(handle, index)
            return
        new = await self._new_chunks(index)
        data = sum(chunk is not None for chunk in new.values())
        live = L.live_after(index, [g.place(c) for c in new], data)
        if live == 0:
            if (index is not None or self.whole_shard) and await handle.exists():
                await handle.delete()
            return
        if stays_compact(self.store, g, live):
            await self._append(handle, size, index, new)
            return
        await self._to_dense(handle, index, new)

    async def _to_dense(
        self,
        handle: Any,
        index: L.IndexArray | None,
        new: dict[tuple[int, ...], Buffer | None],
    ) -> None:
        """Rewrite the shard whole in the dense layout, fill chunks included.

        Kept chunks are copied from the stored shard by ``handle.rewrite``
        (streamed on a LocalStore, see :meth:`_compact`)."""
        g = self.geometry
        kept = index is not None and any(c not in new for c in L.present_chunks(index))
        stored = await handle.getsize() if kept else None
        parts, self.written_peek = densified(
            self.codec, g, self.key, index, stored, new, self._fill_bytes
        )
        await handle.rewrite(self.written_peek.size, parts)

    async def sweep(self) -> None:
        """After the write's locks are gone: settle the absent marks of the
        chunks an in-place write stored as fill (:attr:`marks`), and delete
        the shard if no chunk is left present (stock zarr deletes such a
        shard). Takes the whole-key lock, so it sees a settled shard; a
        writer that got in first and stored data keeps the shard.

        A shard without marks has every chunk present: one whose chunk was
        dropped gets marks (rewritten whole, once: they need room); one
        whose chunks were stored as fill needs none."""
        marks, self.marks = self.marks, {}
        if not marks:
            return
        g = self.geometry
        async with self.store.locked(self.key, _WHOLE_KEY) as handle:
            size, index = await self._read_index(handle)
            if index is None or not L.in_place_writable(index, g, size):
                return
            rng = L.marks_range(g, index, size)
            raw = None if rng is None else _read(self.store, self.key, *rng)
            old = None if raw is None else L.decode_marks(g, raw.to_bytes())
            if old is None and not any(marks.values()):
                return  # every chunk present, as the index says
            absent = np.zeros(g.n_chunks, dtype=bool) if old is None else old.copy()
            for coords, mark in marks.items():
                absent[g.place(coords)] = mark
            if bool(absent.all()) and await self._all_fill(index):
                await handle.delete()
                return
            if old is not None and rng is not None:
                if not np.array_equal(absent, old):
                    await handle.set_range(L.encode_marks(g, absent), rng[0])
                return
            await self._add_marks(handle, size, index, absent)

    async def _add_marks(
        self, handle: Any, size: int, index: L.IndexArray, absent: npt.NDArray[np.bool_]
    ) -> None:
        """Under the whole-key lock: rewrite a dense shard without marks
        (every chunk present) in the dense layout, every chunk copied as it
        is stored now, with ``absent`` as its marks. The chunks marked absent
        held the fill chunk's bytes when this write let go of them; one
        written with data since keeps it (never fill written over it: that
        lost the later write), and its bytes say it is present (``sweep``)."""
        parts, peek = densified(
            self.codec, self.geometry, self.key, index, size, {}, self._fill_bytes,
            marks=absent.tolist(),
        )  # fmt: skip
        await handle.rewrite(peek.size, parts)

    async def _all_fill(self, index: L.IndexArray) -> bool:
        """Under the whole-key lock of a dense shard: whether every chunk
        holds the encoded fill chunk. Reads chunk by chunk and stops at the
        first that does not, so a shard with data costs little.

        Bytes, not values: every write into a dense shard stores a chunk
        that zarr drops (``chunk_is_empty`` of the value written) as the
        encoded fill chunk, so other bytes are a chunk stock zarr keeps, even
        where they decode to the fill value (a -0.0 that a ``scale_offset``
        codec decodes as 0.0: stock zarr keeps a chunk its write does not
        touch without decoding it)."""
        for coords in sorted(
            np.ndindex(self.geometry.chunks_per_shard), key=lambda c: int(index[c][0])
        ):
            rng = L.chunk_byte_range(index, coords)
            assert rng is not None
            data = _read(self.store, self.key, *rng)
            if data is None or not self._is_fill(data):
                return False
        return True

    def _is_fill(self, data: Buffer) -> bool:
        """Whether an encoded chunk is the fill chunk's bytes (one byte
        first: data seldom shares it)."""
        raw = data.as_numpy_array().view(np.uint8).reshape(-1)
        fill = self._fill_bytes.as_numpy_array().view(np.uint8).reshape(-1)
        return raw.size == fill.size and raw[-1] == fill[-1] and bool(np.array_equal(raw, fill))

    @functools.cached_property
    def _fill_bytes(self) -> Buffer:
        """One inner chunk of fill value, encoded."""
        spec = self.chunk_spec
        array = spec.prototype.nd_buffer.create(
            shape=spec.shape,
            dtype=spec.dtype.to_native_dtype(),
            order=spec.order,
            fill_value=fill_value_or_default(spec),
        )
        data = self.transform.encode_chunk(array, spec)
        assert data is not None
        return data  # type: ignore[no-any-return]
