"""The interrupt harness's cases: each call it interrupts, in a fresh array or root.

A :class:`Case` is one call with what stock zarr reads before it and after
it, and the inner chunks that may each read all old or all new after an
interrupt; :data:`CASES` makes one by name, for a root and store options
(:data:`STORES`). The harness itself is ``tests/_interrupts.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import ZstdCodec
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.storage import LocalStore

from tests._journal_records import record
from tests._shard_helpers import OURS, new_array
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.store._journal import JOURNAL_DIR


@dataclass
class Case:
    """One write, in a fresh array: ``before`` is what stock zarr reads
    before it, ``after`` what it writes; ``chunks``, the regions (inner
    chunks) that may each read all old or all new after an interrupt."""

    root: Path
    store: RangeLockedStore
    arr: zarr.Array[Any]
    writer: ShardWriter
    call: Callable[[], object]
    before: np.ndarray
    after: np.ndarray
    chunks: list[tuple[slice, ...]]
    keys: list[str]
    again: tuple[int, int] = (0, 0)  # a chunk the follow-ups write again
    extra: dict[str, Any] = field(default_factory=dict)


CHUNK = (4, 4)


def region(coords: tuple[int, int]) -> tuple[slice, slice]:
    return tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, CHUNK, strict=True))  # type: ignore[return-value]


def full(v: int) -> np.ndarray:
    return np.full(CHUNK, v, dtype="i4")


def _array(root: Path, options: dict[str, Any], **kw: Any) -> zarr.Array[Any]:
    store = RangeLockedStore(LocalStore(root), **options)
    return new_array(store, name="a", pipeline=OURS, **kw)


def _chunk_case(root: Path, options: dict[str, Any], *, compressed: bool, fill: str) -> Case:
    """``write_chunk((0, 0), 2)`` into a shard of 2 x 2 chunks (shape 8 x 16,
    two shards): ``fill`` "dense" (the writer has written it whole and a
    chunk since: validated), "compact" (one chunk: still compact) or
    "none" (no shard yet)."""
    arr = _array(
        root, options, shape=(8, 16), chunks=CHUNK, shards=(8, 8),
        compressors=ZstdCodec(level=1) if compressed else None,
    )  # fmt: skip
    writer = ShardWriter(arr)
    if fill == "dense":
        writer[...] = 1
        writer.write_chunk((1, 1), full(1))  # validated, index known
    elif fill == "compact":
        writer.write_chunk((1, 1), full(1))
        writer.write_chunk((0, 0), full(1))  # index known, room left or not
    before = np.asarray(arr[...])
    after = before.copy()
    after[region((0, 0))] = 2
    value = full(2)
    return Case(
        root, arr.store, arr, writer, lambda: writer.write_chunk((0, 0), value),
        before, after, [region((0, 0))], ["a/c/0/0"],
    )  # fmt: skip


def _chunks_case(root: Path, options: dict[str, Any]) -> Case:
    """``write_chunks`` of two chunks of one dense shard (one lock on both)."""
    case = _chunk_case(root, options, compressed=False, fill="dense")
    writer = case.writer
    todo = {(0, 0): full(2), (1, 1): full(2)}
    case.call = lambda: writer.write_chunks(todo)
    case.after[region((1, 1))] = 2
    case.chunks.append(region((1, 1)))
    return case


def _two_shards_case(root: Path, options: dict[str, Any], *, whole: bool) -> Case:
    """``writer[sel] = 2`` over both dense shards: whole chunks (``whole``:
    in place, both shards' locks at once) or parts of chunks (the
    pipeline, on the writer's event loop)."""
    case = _chunk_case(root, options, compressed=False, fill="dense")
    writer = case.writer
    sel = np.s_[0:4, 4:12] if whole else np.s_[2:6, 6:10]
    case.call = lambda: writer.__setitem__(sel, 2)
    case.after = case.before.copy()
    case.after[sel] = 2
    case.chunks = [region((i, j)) for i in (0, 1) for j in (1, 2)]
    case.keys = ["a/c/0/0", "a/c/0/1"]
    case.again = (0, 1)
    return case


def _set_range_case(root: Path, options: dict[str, Any]) -> Case:
    """``store.set_range_sync`` of 64 bytes into a 256-byte value."""
    case = _chunk_case(root, options, compressed=False, fill="dense")
    store = case.store
    store.set_sync("k", cpu.Buffer.from_bytes(bytes(256)))
    data = cpu.Buffer.from_bytes(b"\x07" * 64)
    case.call = lambda: store.set_range_sync("k", data, 64)
    case.extra["k"] = (bytes(256), bytes(64) + b"\x07" * 64 + bytes(128))
    case.keys = ["k"]
    case.chunks = []
    case.after = case.before
    return case


def _read_case(root: Path, options: dict[str, Any], read: str) -> Case:
    """A read of a dense shard (``read``: how), which writes nothing; what
    it returns, when it completes, is checked (``extra["want"]``)."""
    case = _chunk_case(root, options, compressed=read == "getitem zstd", fill="dense")
    store, arr = case.store, case.arr
    proto = default_buffer_prototype()
    whole = store.get_sync("a/c/0/0", prototype=proto)
    assert whole is not None
    raw = whole.to_bytes()
    out = case.extra
    call: Callable[[], object]
    if read == "get_sync":
        want: object = raw
        call = lambda: store.get_sync("a/c/0/0", prototype=proto).to_bytes()  # type: ignore[union-attr]  # noqa: E731
    elif read == "get_sync range":
        want = raw[16:80]
        rng = RangeByteRequest(16, 80)
        call = lambda: store.get_sync("a/c/0/0", prototype=proto, byte_range=rng).to_bytes()  # type: ignore[union-attr]  # noqa: E731

    elif read == "locked_sync":

        def call() -> object:
            with store.locked_sync("a/c/0/0", [(0, 128)], shared=True) as h:
                got = h.get(proto, RangeByteRequest(0, 64))
                return None if got is None else got.to_bytes()

        want = raw[:64]
    elif read == "consistent_reads":
        # The block (async only) in this thread, as asyncio.run runs it:
        # the get of one key, the sync get of the other, partial values.
        other = store.get_sync("a/c/0/1", prototype=proto)
        assert other is not None
        want = (raw, other.to_bytes(), [raw[:8], other.to_bytes()[-8:]])

        async def block() -> object:
            async with store.consistent_reads(["a/c/0/0", "a/c/0/1"]):
                a = await store.get("a/c/0/0", proto)
                b = store.get_sync("a/c/0/1", prototype=proto)
                parts = await store.get_partial_values(
                    proto,
                    [("a/c/0/0", RangeByteRequest(0, 8)), ("a/c/0/1", SuffixByteRequest(8))],
                )
            return (
                a.to_bytes(),  # type: ignore[union-attr]
                b.to_bytes(),  # type: ignore[union-attr]
                [p.to_bytes() for p in parts],  # type: ignore[union-attr]
            )

        call = lambda: asyncio.run(block())  # noqa: E731
    else:  # "getitem ...": the pipeline's dense or packed reader, under asyncio.run
        want = case.before[2:6, 0:12]
        call = lambda: asyncio.run(arr._async_array.getitem(np.s_[2:6, 0:12]))  # noqa: E731
    case.call = lambda: out.__setitem__("got", call())
    out["want"] = want
    case.after, case.chunks = case.before, []
    return case


def _whole_key_case(root: Path, options: dict[str, Any], op: str) -> Case:
    """A whole-key write of the store: ``set_sync`` of a chunk key (the
    shard replaced by one of a chunk of 2s), ``delete_sync`` of it, or
    ``delete_sync`` of the directory ``a/c/0`` (both shards of row 0: a
    prefix lock)."""
    case = _chunk_case(root, options, compressed=False, fill="dense")
    store = case.store
    proto = default_buffer_prototype()
    if op == "set_sync":
        # The shard of a writer that wrote chunk (0, 0) = 2 into an empty one.
        with scratch() as other:
            arr = _array(other / "root", {}, shape=(8, 16), chunks=CHUNK, shards=(8, 8))
            arr[region((0, 0))] = 2
            value = arr.store.get_sync("a/c/0/0", prototype=proto)
        assert value is not None
        case.call = lambda: store.set_sync("a/c/0/0", value)
        case.after = np.zeros_like(case.before)
        case.after[:, 8:] = case.before[:, 8:]
        case.after[region((0, 0))] = 2
        case.chunks = [(slice(0, 8), slice(0, 8))]  # the whole shard, old or new
    elif op == "delete_sync":
        case.call = lambda: store.delete_sync("a/c/0/0")
        case.after = case.before.copy()
        case.after[:, 0:8] = 0
        case.chunks = [(slice(0, 8), slice(0, 8))]
    else:  # "delete_sync dir"
        case.call = lambda: store.delete_sync("a/c/0")
        case.after = np.zeros_like(case.before)
        case.chunks = [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(8, 16))]
        case.keys = ["a/c/0/0", "a/c/0/1"]
    return case


def _recover_case(root: Path, options: dict[str, Any]) -> Case:
    """``store.recover()`` replaying a dead process's complete record:
    chunk (0, 0) of a dense shard, 1s -> 2s, with its witness."""
    case = _chunk_case(root, options, compressed=False, fill="dense")
    store = case.store
    raw = store.get_sync("a/c/0/0", prototype=default_buffer_prototype())
    assert raw is not None
    start = int.from_bytes(raw.to_bytes()[-68:-60], "little")  # the index's first entry
    old, new = full(1).tobytes(), full(2).tobytes()
    assert raw.to_bytes()[start : start + len(old)] == old
    ops = [(b"R", "a/c/0/0", start, new)]
    journal = root / JOURNAL_DIR
    journal.mkdir(parents=True, exist_ok=True)
    (journal / "4194999-0123456789abcdef.jnl").write_bytes(record(ops, witnesses=[old]))
    case.after = case.before.copy()
    case.after[region((0, 0))] = 2
    # Once interrupted, the record is either replayed (and gone) or left
    # for the next recover(), which must then replay it.
    case.extra["settle"] = store.recover
    case.call = store.recover
    return case


CASES: dict[str, Callable[[Path, dict[str, Any]], Case]] = {
    "write_chunk in place": lambda r, o: _chunk_case(r, o, compressed=False, fill="dense"),
    "write_chunk zstd": lambda r, o: _chunk_case(r, o, compressed=True, fill="compact"),
    "write_chunk new shard": lambda r, o: _chunk_case(r, o, compressed=False, fill="none"),
    "write_chunk zstd new shard": lambda r, o: _chunk_case(r, o, compressed=True, fill="none"),
    "write_chunks": _chunks_case,
    "setitem two shards in place": lambda r, o: _two_shards_case(r, o, whole=True),
    "setitem two shards pipeline": lambda r, o: _two_shards_case(r, o, whole=False),
    "set_range_sync": _set_range_case,
    # reads (nothing written)
    "get_sync": lambda r, o: _read_case(r, o, "get_sync"),
    "get_sync range": lambda r, o: _read_case(r, o, "get_sync range"),
    "locked_sync read": lambda r, o: _read_case(r, o, "locked_sync"),
    "consistent_reads": lambda r, o: _read_case(r, o, "consistent_reads"),
    "getitem dense": lambda r, o: _read_case(r, o, "getitem dense"),
    "getitem zstd": lambda r, o: _read_case(r, o, "getitem zstd"),
    # whole-key and prefix writes, replay
    "set_sync": lambda r, o: _whole_key_case(r, o, "set_sync"),
    "delete_sync": lambda r, o: _whole_key_case(r, o, "delete_sync"),
    "delete_sync dir": lambda r, o: _whole_key_case(r, o, "delete_sync dir"),
    "recover": _recover_case,
}
WRITES = list(CASES)[:8]
READS = list(CASES)[8:14]
#: Writes of durable stores (each with "journal" and "fsync", but recover).
DURABLE = [
    "write_chunk in place",
    "write_chunk zstd",
    "write_chunk new shard",
    "write_chunks",
    "setitem two shards pipeline",
    "set_range_sync",
    "set_sync",
    "delete_sync",
    "delete_sync dir",
]

STORES: dict[str, dict[str, Any]] = {
    "default": {},
    "in-process locks": {"cross_process": False},
    "journal": {"durability": "journal"},
    "fsync": {"durability": "fsync"},
}


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="sigint-"))
    try:
        yield tmp
    finally:
        assert tmp.name.startswith("sigint-") and tmp.parent == Path(tempfile.gettempdir())
        shutil.rmtree(tmp, ignore_errors=True)
