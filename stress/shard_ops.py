"""The shard mode's op kinds: region writes and reads through zarr's Array API.

The load of ``python -m stress --shard``: worker threads call ``arr[sel] =
values`` and ``arr[sel]`` on one sharded :class:`zarr.Array`; asyncio tasks
call ``await async_arr.setitem(sel, values)`` and ``await
async_arr.getitem(sel)`` on its :class:`zarr.AsyncArray`. Every write puts
down a box of values that name the write and their position
(:class:`stress.shard_model.ValueCodec`); :mod:`stress.shard_check` checks the
history.

The kinds (``--mix`` names, registered in :data:`stress.ops.OP_KINDS` with
``mode="shard"``):

- ``shard_chunk``: exactly one inner chunk (aligned; clipped at the array edge);
- ``shard_partial``: part of one inner chunk (a read-merge-write of that chunk);
- ``shard_span``: a box of random size at a random place, usually straddling
  an inner-chunk or a shard edge;
- ``shard_whole``: one whole shard;
- ``shard_fill``: the fill value (0) over one inner chunk, a span or one
  whole shard: zarr drops inner chunks that become all fill and deletes
  shards that do, while other writers write values into them;
- ``shard_read``: a read of a random box (sometimes the whole array);
- ``writer_chunk``, ``writer_chunks``, ``writer_span``: the same writes
  through a :class:`zarr_rangelock.ShardWriter` of the array (one per
  process, shared by its workers): ``write_chunk`` of one inner chunk,
  ``write_chunks`` of two to six (each chunk checked as a write of its own,
  the least the call promises: it is atomic per shard, not across shards),
  ``writer[sel] = values`` of a span box; ``writer_fill``: the fill value
  through the writer (``write_chunk`` of one chunk, or ``writer[sel] =``
  of a span).
  They run in the worker's thread (an asyncio task hands them to a thread:
  the writer refuses a running event loop) and need the wrapper, so an
  ``--unlocked`` run leaves them out.

Each worker draws its boxes from its own seeded ``random.Random``, so the op
sequence of every worker is reproducible from the run's seed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr import Array, AsyncArray

from stress.ops import (
    OpKind,
    Timed,
    Worker,
    await_timed,
    call_timed,
    check_listing,
    register,
    register_async,
)
from stress.records import ERROR, OK
from stress.shard_model import (
    DTYPES,
    Box,
    BoxRead,
    BoxRecorder,
    BoxWrite,
    Geometry,
    ValueCodec,
    slices,
)
from stress.signature import CORRUPT, make_wid
from zarr_rangelock import ShardWriter

__all__ = ["COMPRESSORS", "INDEX_LOCATIONS", "ORDERS", "ShardConfig", "ShardWorker", "drain"]


#: ``--compressor`` choices: ``none`` gives fixed-size inner chunks, the others variable.
COMPRESSORS = ("none", "zstd", "gzip")
INDEX_LOCATIONS = ("end", "start")
#: zarr's ``subchunk_write_order`` choices (the physical order of chunks in a shard).
ORDERS = ("morton", "lexicographic", "colexicographic", "unordered")
#: At most this many elements in the array (the oracle keeps a few int64 per element).
MAX_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class ShardConfig:
    """The sharded array of a shard run.

    Attributes
    ----------
    shape, shards, chunks : tuple of int
        Array shape, shard shape and inner-chunk shape. Each shard dimension
        must be a multiple of the inner-chunk dimension (zarr's rule).
    dtype : str
        One of :data:`stress.shard_model.DTYPES`.
    compressor : str
        ``"none"`` (fixed-size inner chunks) or ``"zstd"``/``"gzip"`` (variable).
    crc32c : bool
        Add a ``crc32c`` checksum codec to the inner chunks (still fixed-size).
    index_location : str
        ``"end"`` or ``"start"``.
    order : str
        zarr's ``subchunk_write_order``.
    prefill : float
        Fraction of inner chunks written by stock zarr before the load, so that
        the run starts from shards in zarr's own compact layout.
    """

    shape: tuple[int, ...] = (60, 60)
    shards: tuple[int, ...] = (32, 32)
    chunks: tuple[int, ...] = (8, 8)
    dtype: str = "int32"
    compressor: str = "none"
    crc32c: bool = False
    index_location: str = "end"
    order: str = "morton"
    prefill: float = 0.25

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.shape, self.shards, self.chunks)

    @property
    def fixed_size(self) -> bool:
        """Whether inner chunks have a fixed encoded size (no compressor)."""
        return self.compressor == "none"

    def codecs_text(self) -> str:
        names = ["bytes"]
        if self.compressor != "none":
            names.append(self.compressor)
        if self.crc32c:
            names.append("crc32c")
        kind = "fixed-size" if self.fixed_size else "variable-size"
        return f"{'+'.join(names)} ({kind})"

    def describe(self) -> str:
        def x(t: tuple[int, ...]) -> str:
            return "x".join(map(str, t))

        return (
            f"{x(self.shape)} {self.dtype}, shards {x(self.shards)}, inner chunks "
            f"{x(self.chunks)}, {self.codecs_text()}, index at {self.index_location}, "
            f"{self.order} order"
        )

    def problem(self) -> str | None:
        """What is wrong with this configuration, or None."""
        n = len(self.shape)
        if n == 0 or len(self.shards) != n or len(self.chunks) != n:
            return "--shape, --shards and --chunks need the same number of dimensions (>= 1)"
        if min(self.shape + self.shards + self.chunks) < 1:
            return "--shape, --shards and --chunks must be >= 1 in every dimension"
        bad = [d for d in range(n) if self.shards[d] % self.chunks[d]]
        if bad:
            d = bad[0]
            return (
                f"--shards must be a multiple of --chunks in every dimension "
                f"(dimension {d}: {self.shards[d]} is not a multiple of {self.chunks[d]})"
            )
        if int(np.prod(self.shape)) > MAX_ELEMENTS:
            return f"--shape has more than {MAX_ELEMENTS:,} elements"
        if self.dtype not in DTYPES:
            return f"--dtype must be one of {', '.join(DTYPES)}"
        if self.compressor not in COMPRESSORS:
            return f"--compressor must be one of {', '.join(COMPRESSORS)}"
        if self.index_location not in INDEX_LOCATIONS:
            return f"--index-location must be one of {', '.join(INDEX_LOCATIONS)}"
        if self.order not in ORDERS:
            return f"--order must be one of {', '.join(ORDERS)}"
        if not 0.0 <= self.prefill <= 1.0:
            return "--prefill must be between 0 and 1"
        return None


class ShardWorker(Worker):
    """A thread's or task's state in a shard run: the array and what it records."""

    def __init__(
        self,
        writer: int,
        name: str,
        rng: random.Random,
        arr: Array[Any],
        codec: ValueCodec,
        geometry: Geometry,
        recorder: BoxRecorder,
        shard_writer: ShardWriter | None = None,
    ) -> None:
        super().__init__(writer, name, rng)
        self.arr = arr
        self.shard_writer = shard_writer  # None: an unlocked run
        self.aarr: AsyncArray[Any] = arr.async_array
        self.codec = codec
        self.g = geometry
        self.box_rec = recorder
        self.shard_key_set = geometry.shard_keys()

    # -- choosing ----------------------------------------------------------------------

    def _grid_box(self, unit: tuple[int, ...]) -> Box:
        return self.g.cell([self.rng.randrange(n) for n in self.g.grid(unit)], unit)

    def chunk_box(self) -> Box:
        """One inner chunk, exactly (clipped at the array's edge)."""
        return self._grid_box(self.g.chunks)

    def shard_box(self) -> Box:
        """One whole shard (clipped at the array's edge)."""
        return self._grid_box(self.g.shards)

    def partial_box(self) -> Box:
        """A part of one inner chunk: the whole chunk only if it is a single element."""
        lo, hi = self.chunk_box()
        sub_lo, sub_hi = [], []
        for a, b in zip(lo, hi, strict=True):
            x, y = sorted(self.rng.sample(range(a, b + 1), 2)) if b - a > 1 else (a, b)
            sub_lo.append(x)
            sub_hi.append(y)
        if tuple(sub_lo) == lo and tuple(sub_hi) == hi:
            dims = [d for d in range(len(lo)) if hi[d] - lo[d] > 1]
            if dims:  # shrink one dimension by one element, from a random side
                d = self.rng.choice(dims)
                if self.rng.random() < 0.5:
                    sub_lo[d] += 1
                else:
                    sub_hi[d] -= 1
        return tuple(sub_lo), tuple(sub_hi)

    def span_box(self) -> Box:
        """A box of random extent (up to a shard plus a chunk), usually across edges."""
        lo, hi = [], []
        for n, s, c in zip(self.g.shape, self.g.shards, self.g.chunks, strict=True):
            length = self.rng.randint(1, min(n, s + c))
            start = self.rng.randrange(n - length + 1)
            if length > 1 and self.rng.random() < 0.7:
                unit = s if self.rng.random() < 0.5 else c
                edges = list(range(unit, n, unit))
                if edges:  # straddle one edge: both sides get at least one element
                    e = self.rng.choice(edges)
                    first = max(0, e - length + 1)
                    last = min(e - 1, n - length)
                    if first <= last:
                        start = self.rng.randint(first, last)
            lo.append(start)
            hi.append(start + length)
        return tuple(lo), tuple(hi)

    def read_box(self) -> Box:
        if self.rng.random() < 0.1:
            return (0,) * self.g.ndim, self.g.shape
        return self.span_box()

    # -- recording ---------------------------------------------------------------------

    def new_wid(self) -> int:
        self.seq += 1
        if self.seq > self.codec.max_seq:
            raise OverflowError(
                f"worker {self.name} made more than {self.codec.max_seq:,} writes, "
                f"the most a {self.codec.dtype} value can name; use a wider --dtype"
            )
        return make_wid(self.writer, self.seq)

    def fill_box(self) -> Box:
        """What a write of the fill value covers: one inner chunk (half the
        time: zarr drops it), a span, or one whole shard (zarr deletes it)."""
        x = self.rng.random()
        if x < 0.5:
            return self.chunk_box()
        return self.span_box() if x < 0.85 else self.shard_box()

    def fill_values(self, box: Box) -> Any:
        """The fill value (0) over ``box``."""
        return np.zeros([b - a for a, b in zip(*box, strict=True)], dtype=self.codec.dtype)

    def intend(self, wid: int, kind: str, box: Box, fill: bool = False) -> None:
        """Announce a write before its call (only with kills: :mod:`stress.kills`)."""
        if self.intents is not None:
            lo, hi = box
            t0 = time.monotonic_ns()
            self.intents.intend(BoxWrite(wid, kind, lo, hi, t0, 0, ERROR, fill))

    def wrote_box(
        self,
        wid: int,
        kind: str,
        box: Box,
        t0: int,
        t1: int,
        exc: BaseException | None,
        fill: bool = False,
    ) -> None:
        lo, hi = box
        if exc is not None:
            self.error(kind, self.g.shard_key(lo), exc)
        else:
            n = int(np.prod([b - a for a, b in zip(lo, hi, strict=True)]))
            self.bytes_written += n * self.codec.dtype.itemsize
        status = OK if exc is None else ERROR
        rec = BoxWrite(wid, kind, lo, hi, t0, t1, status, fill)
        self.box_rec.writes.append(rec)
        if self.intents is not None:
            self.intents.wrote(rec)

    def record_read(self, rec: BoxRead) -> None:
        self.box_rec.reads.append(rec)
        if self.intents is not None:
            self.intents.read(rec)

    def read_box_values(self, kind: str, box: Box, values: Any, t0: int, t1: int) -> None:
        lo, hi = box
        arr = np.asarray(values)
        want = tuple(b - a for a, b in zip(lo, hi, strict=True))
        if arr.shape != want or arr.dtype != self.codec.dtype:
            msg = f"read of {want} {self.codec.dtype} returned {arr.shape} {arr.dtype}"
            self.error(kind, self.g.shard_key(lo), ValueError(msg))
            return
        self.record_read(BoxRead(lo, hi, t0, t1, arr, kind))
        if self.quick and bool((self.codec.decode(arr, lo) == CORRUPT).any()):
            self.quick_violations += 1


type Picker = Callable[[ShardWorker], Box]


def _register_write(name: str, weight: float, pick: Picker, help: str, fill: bool = False) -> None:
    """Register a kind that writes the box ``pick`` chooses: ``arr[sel] = values``
    (``fill``: the fill value)."""

    def plan(sw: ShardWorker) -> tuple[ShardWorker, Box, int, Any]:
        box = pick(sw)
        wid = sw.new_wid()
        sw.intend(wid, name, box, fill)
        return sw, box, wid, sw.fill_values(box) if fill else sw.codec.encode(wid, *box)

    def done(sw: ShardWorker, box: Box, wid: int, timed: Timed[None]) -> None:
        _, t0, t1, exc = timed
        sw.timed(name, t0, t1)
        sw.wrote_box(wid, name, box, t0, t1, exc, fill)

    def run_sync(w: ShardWorker) -> None:
        sw, box, wid, values = plan(w)

        def put() -> None:
            sw.arr[slices(*box)] = values

        done(sw, box, wid, call_timed(put))

    async def run_async(w: ShardWorker) -> None:
        sw, box, wid, values = plan(w)
        done(sw, box, wid, await await_timed(sw.aarr.setitem(slices(*box), values)))

    register(OpKind(name, weight, run_sync, run_async, help, "shard"))


_register_write(
    "shard_chunk", 30, ShardWorker.chunk_box, "arr[sel] = v of exactly one inner chunk (aligned)"
)
_register_write(
    "shard_partial",
    15,
    ShardWorker.partial_box,
    "arr[sel] = v of part of one inner chunk (read-merge-write of that chunk)",
)
_register_write(
    "shard_span",
    15,
    ShardWorker.span_box,
    "arr[sel] = v of an unaligned box, usually across inner-chunk or shard edges",
)
_register_write("shard_whole", 3, ShardWorker.shard_box, "arr[sel] = v of one whole shard")
_register_write(
    "shard_fill",
    6,
    ShardWorker.fill_box,
    "arr[sel] = the fill value over one inner chunk, a span or one whole shard "
    "(zarr drops all-fill chunks and deletes all-fill shards)",
    fill=True,
)


def _chunk_coords(sw: ShardWorker, box: Box) -> tuple[int, ...]:
    return tuple(lo // c for lo, c in zip(box[0], sw.g.chunks, strict=True))


def _writer_of(sw: ShardWorker) -> ShardWriter:
    if sw.shard_writer is None:  # pragma: no cover - the mix refuses it
        raise RuntimeError("a ShardWriter op in an unlocked run")
    return sw.shard_writer


type Planned = list[tuple[Box, int, Any]]
"""The boxes of one writer call, each with its write id and values."""


def _register_writer(
    name: str,
    weight: float,
    plan: Callable[[ShardWorker], Planned],
    call: Callable[[ShardWorker, Planned], None],
    help: str,
    fill: bool = False,
) -> None:
    """Register a kind that writes through the process's ``ShardWriter``:
    ``plan`` picks the boxes (each its own write id and values), ``call``
    makes the one writer call; each box is recorded as a write of its own,
    over the call's time."""

    def once(w: ShardWorker) -> tuple[Planned, Timed[None]]:
        writes = plan(w)
        for box, wid, _ in writes:
            w.intend(wid, name, box, fill)
        return writes, call_timed(lambda: call(w, writes))

    def done(sw: ShardWorker, writes: Planned, timed: Timed[None]) -> None:
        _, t0, t1, exc = timed
        sw.timed(name, t0, t1)
        for box, wid, _ in writes:
            sw.wrote_box(wid, name, box, t0, t1, exc, fill)

    def run_sync(w: ShardWorker) -> None:
        done(w, *once(w))

    async def run_async(w: ShardWorker) -> None:
        done(w, *await asyncio.to_thread(once, w))

    register(OpKind(name, weight, run_sync, run_async, help, "shard", locked_only=True))


def _one(pick: Picker) -> Callable[[ShardWorker], Planned]:
    def plan(sw: ShardWorker) -> Planned:
        box = pick(sw)
        wid = sw.new_wid()
        return [(box, wid, sw.codec.encode(wid, *box))]

    return plan


def _fill_of_writer(sw: ShardWorker) -> Planned:
    box = sw.chunk_box() if sw.rng.random() < 0.5 else sw.span_box()
    return [(box, sw.new_wid(), sw.fill_values(box))]


def _write_fill(sw: ShardWorker, ws: Planned) -> None:
    box, _, values = ws[0]
    chunk = _chunk_coords(sw, box)
    if sw.g.cell(list(chunk), sw.g.chunks) == box:
        _writer_of(sw).write_chunk(chunk, values)
    else:
        _writer_of(sw)[slices(*box)] = values


def _some_chunks(sw: ShardWorker) -> Planned:
    boxes: dict[Box, None] = {}
    for _ in range(sw.rng.randint(2, 6)):
        boxes[sw.chunk_box()] = None  # (a repeat is dropped: one write per chunk)
    out = []
    for box in boxes:
        wid = sw.new_wid()
        out.append((box, wid, sw.codec.encode(wid, *box)))
    return out


_register_writer(
    "writer_chunk",
    20,
    _one(ShardWorker.chunk_box),
    lambda sw, ws: _writer_of(sw).write_chunk(_chunk_coords(sw, ws[0][0]), ws[0][2]),
    "ShardWriter.write_chunk of one inner chunk",
)
_register_writer(
    "writer_chunks",
    10,
    _some_chunks,
    lambda sw, ws: _writer_of(sw).write_chunks([(_chunk_coords(sw, b), v) for b, _, v in ws]),
    "ShardWriter.write_chunks of two to six inner chunks (each checked on its own)",
)
_register_writer(
    "writer_span",
    10,
    _one(ShardWorker.span_box),
    lambda sw, ws: _writer_of(sw).__setitem__(slices(*ws[0][0]), ws[0][2]),
    "ShardWriter[sel] = v of an unaligned box, usually across edges",
)
_register_writer(
    "writer_fill",
    4,
    _fill_of_writer,
    _write_fill,
    "ShardWriter.write_chunk of the fill value over one inner chunk, or "
    "ShardWriter[sel] = the fill value over a span",
    fill=True,
)


async def _list_keys(sw: ShardWorker) -> None:
    """``list()`` or ``list_prefix("c/")`` of the run's store: the array's
    metadata and shard keys only, each once (never the lock file, the
    journal, or a temporary file of a shard being rewritten or compacted),
    and (recorded as a read of the whole array with the shard keys it
    listed) every shard that surely existed throughout the call."""
    store = sw.aarr.store_path.store
    how = sw.rng.choice(("list", "list_prefix"))
    names = store.list() if how == "list" else store.list_prefix("c/")
    listed, t0, t1, exc = await await_timed(drain(names))
    if exc is not None:
        sw.error("shard_list", how, exc)
        return
    assert listed is not None  # it returned, so with its list
    sw.timed("shard_list", t0, t1)
    valid = sw.shard_key_set | ({"zarr.json"} if how == "list" else set())
    call = "list()" if how == "list" else "list_prefix('c/')"
    check_listing(sw, "shard_list", call, listed, valid)
    keys = frozenset(listed) & sw.shard_key_set
    empty = np.empty((0,) * sw.g.ndim, dtype=sw.codec.dtype)
    sw.record_read(BoxRead((0,) * sw.g.ndim, sw.g.shape, t0, t1, empty, "shard_list", keys))


async def drain(names: AsyncIterator[str]) -> list[str]:
    """A listing's names, as they came."""
    return [name async for name in names]


register_async(
    "shard_list",
    2,
    _list_keys,
    "list() or list_prefix('c/') of the store: the array's metadata and shard keys "
    "only, each once (threads: via zarr's loop)",
    "shard",
    locked_only=True,
)


def _read_done(sw: ShardWorker, box: Box, timed: Timed[Any]) -> None:
    values, t0, t1, exc = timed
    if exc is not None:
        sw.error("shard_read", sw.g.shard_key(box[0]), exc)
        return
    sw.timed("shard_read", t0, t1)
    sw.read_box_values("shard_read", box, values, t0, t1)


def _read_sync(sw: ShardWorker) -> None:
    box = sw.read_box()
    _read_done(sw, box, call_timed(lambda: sw.arr[slices(*box)]))


async def _read_async(sw: ShardWorker) -> None:
    box = sw.read_box()
    _read_done(sw, box, await await_timed(sw.aarr.getitem(slices(*box))))


register(
    OpKind(
        "shard_read",
        15,
        _read_sync,
        _read_async,
        "arr[sel] of a random box (sometimes the whole array), checked element by element",
        "shard",
    )
)
