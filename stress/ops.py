"""Operation kinds, and the worker context they run in.

Every op kind is registered in :data:`OP_KINDS` with a default weight, a sync
body (run by worker threads) and an async body (run by asyncio tasks). A new
load (the shard mode of issue 5, say) adds kinds with :func:`register` and the
runner, ``--mix`` parsing, ``--list-ops`` and the report pick them up; nothing
else needs to change. Each kind belongs to one mode: the shard mode's kinds
(:mod:`stress.shard_ops`, ``mode="shard"``) run on a :class:`Worker` subclass
that holds the array.

An op picks its key and ranges from its worker's seeded ``random.Random``
(so each worker's op sequence is reproducible from the run's seed), makes its
store calls between two ``time.monotonic_ns()`` readings, and records what it
wrote and read in the worker's :class:`~stress.oracle.Recorder`. Payloads are
encoded before the first reading and reads decoded after the last, so
latencies are store time only.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Coroutine, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer
from zarr.core.sync import sync as zarr_sync

from stress.kills import IntentFile
from stress.records import ERROR, MISSING, OK, ReadRecord, Recorder, Violation, WriteRecord
from stress.signature import CORRUPT, WORD, encode, make_wid
from stress.targets import PROTO, Target
from zarr_rangelock.locks._ranges import overlaps

__all__ = [
    "KEY_DIR",
    "MISSING_ERRORS",
    "OP_KINDS",
    "ByteWorker",
    "OpKind",
    "Sample",
    "Timed",
    "Worker",
    "await_timed",
    "call_timed",
    "check_listing",
    "default_mix",
    "quick_check",
    "register",
    "register_async",
]

now = time.monotonic_ns

#: Where the byte mode's keys live (``stress/k0``, ...).
KEY_DIR = "stress"

#: Exceptions that mean "the key does not exist" (set_range on a deleted key).
MISSING_ERRORS: tuple[type[BaseException], ...] = (KeyError, FileNotFoundError)


#: Latencies kept per worker and op kind; past it, a uniform sample (reservoir).
LATENCY_SAMPLE = 4096


class Sample(list[int]):
    """A uniform sample of at most :data:`LATENCY_SAMPLE` latencies (ns), with
    the exact count (``total``) and maximum (``peak``) of all of them, so a run
    of hours keeps latency figures in constant memory."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.peak = 0
        self._rng = random.Random(0)  # never the worker's: its op sequence stays the seed's

    def add(self, value: int) -> None:
        self.total += 1
        self.peak = max(self.peak, value)
        if len(self) < LATENCY_SAMPLE:
            self.append(value)
        else:
            i = self._rng.randrange(self.total)
            if i < LATENCY_SAMPLE:
                self[i] = value

    def merge(self, other: Sample) -> None:
        """Take in another worker's sample (each keeps its own share)."""
        self.extend(other)
        self.total += other.total
        self.peak = max(self.peak, other.peak)


@dataclass(frozen=True, slots=True)
class OpKind[W: Worker]:
    """One kind of operation.

    Attributes
    ----------
    name : str
        Its name in ``--mix`` and the report.
    weight : float
        Default weight in the mix (0: only when named in ``--mix``).
    run_sync : callable
        ``run_sync(worker)``: one op from a worker thread.
    run_async : callable
        ``await run_async(worker)``: one op from an asyncio task.
    help : str
        One line for ``--list-ops``.
    mode : str
        The load it belongs to: ``"bytes"`` (store calls, the default) or
        ``"shard"`` (Array API on a sharded array, :mod:`stress.shard_ops`).
        A run draws only from the kinds of its own mode.
    locked_only : bool
        Needs the wrapper (``ShardWriter`` does): left out of an
        ``--unlocked`` run's default mix, and refused in its ``--mix``.
    """

    name: str
    weight: float
    run_sync: Callable[[W], None]
    run_async: Callable[[W], Awaitable[None]]
    help: str
    mode: str = "bytes"
    locked_only: bool = False


#: The registry: name -> kind, in registration (and report) order.
OP_KINDS: dict[str, OpKind[Any]] = {}


def register[W: Worker](kind: OpKind[W]) -> OpKind[W]:
    """Add an op kind to :data:`OP_KINDS` (names are unique)."""
    if kind.name in OP_KINDS:
        raise ValueError(f"op kind {kind.name!r} is already registered")
    OP_KINDS[kind.name] = kind
    return kind


class Worker:
    """One thread's or task's state: its writer number, rng and counters.

    Only its own thread or task touches it while the run is on; the runner
    reads the counters (plain ints, so a torn read is impossible) for the
    progress line. :class:`ByteWorker` and the shard mode's worker add what
    their op kinds choose and record.
    """

    def __init__(self, writer: int, name: str, rng: random.Random) -> None:
        self.writer = writer
        self.name = name
        self.rng = rng
        self.seq = 0
        self.done = 0
        self.bytes_written = 0
        self.quick_violations = 0
        self.quick = False  # run quick_check on reads (only the progress line needs it)
        self.latency: dict[str, Sample] = defaultdict(Sample)
        self.errors: list[Violation] = []
        #: With ``--kill-every``: the process's file of intents and records
        #: (:mod:`stress.kills`), so that a kill loses none of its writes.
        self.intents: IntentFile | None = None

    def error(self, kind: str, key: str, exc: BaseException) -> None:
        self.errors.append(Violation.note("op_error", f"{type(exc).__name__}: {exc}", kind, key))

    def timed(self, kind: str, t0: int, t1: int) -> None:
        self.latency[kind].add(t1 - t0)
        self.done += 1

    def cancel(self, wid: int) -> None:
        """The op that announced write ``wid`` ended without making it."""
        if self.intents is not None:
            self.intents.cancel(wid)


class ByteWorker(Worker):
    """A worker of the byte mode: store calls on ``keys`` of ``value_size`` bytes."""

    def __init__(
        self,
        writer: int,
        name: str,
        rng: random.Random,
        target: Target,
        keys: Sequence[str],
        value_size: int,
        recorder: Recorder[WriteRecord, ReadRecord],
        spans: MutableMapping[int, tuple[tuple[int, int], ...]],
    ) -> None:
        super().__init__(writer, name, rng)
        self.target = target
        self.keys = keys
        self.value_size = value_size
        self.n_words = value_size // WORD
        self.rec = recorder
        self.spans = spans  # wid -> spans, shared by all workers, for quick_check
        self.key_set = frozenset(keys)

    # -- choosing ----------------------------------------------------------------------

    def key(self) -> str:
        return self.rng.choice(self.keys)

    def span(self) -> tuple[int, int]:
        """A random word-aligned byte range: mostly small, sometimes up to half the value."""
        n = self.n_words
        if self.rng.random() < 0.75:
            length = self.rng.randint(1, min(16, n))
        else:
            length = self.rng.randint(1, max(1, n // 2))
        start = self.rng.randrange(0, n - length + 1)
        return start * WORD, (start + length) * WORD

    def chunk(self) -> tuple[int, int]:
        """One of 16 equal, disjoint slots (like inner chunks of a shard)."""
        slots = min(16, self.n_words)
        per = self.n_words // slots
        i = self.rng.randrange(slots)
        end = self.n_words if i == slots - 1 else (i + 1) * per
        return i * per * WORD, end * WORD

    def spans_for_rmw(self) -> list[tuple[int, int]]:
        """One range, or two disjoint ones (taken atomically by ``locked``)."""
        a = self.span()
        if self.rng.random() < 0.7:
            return [a]
        b = self.span()
        if overlaps([a], [b]):
            return [a]
        return sorted([a, b])

    def read_request(self) -> tuple[ByteRequest, int, int]:
        """A byte request of any of zarr's three kinds, and the range it resolves to."""
        lo, hi = self.span()
        r = self.rng.random()
        if r < 0.7:
            return RangeByteRequest(lo, hi), lo, hi
        if r < 0.85:
            return OffsetByteRequest(lo), lo, self.value_size
        n = hi - lo
        return SuffixByteRequest(n), self.value_size - n, self.value_size

    # -- writing -----------------------------------------------------------------------

    def new_write(self, spans: Sequence[tuple[int, int]]) -> int:
        self.seq += 1
        wid = make_wid(self.writer, self.seq)
        self.spans[wid] = tuple(spans)
        return wid

    def intend(
        self, key: str, wid: int, kind: str, spans: Sequence[tuple[int, int]], delete: bool = False
    ) -> None:
        """Announce a write before its call (only with kills: :mod:`stress.kills`)."""
        if self.intents is not None:
            rec = WriteRecord(key, wid, kind, tuple(spans), now(), 0, ERROR, is_delete=delete)
            self.intents.intend(rec)

    def payload(self, wid: int, start: int, end: int) -> Buffer:
        return PROTO.buffer.from_bytes(encode(wid, start, end - start))

    def wrote(
        self,
        key: str,
        wid: int,
        kind: str,
        spans: Sequence[tuple[int, int]],
        t0: int,
        t1: int,
        exc: BaseException | None = None,
        *,
        delete: bool = False,
        returned: str = OK,
        noted: bool = False,
    ) -> None:
        """Record a write whose call ended (``exc``: it raised, an op error
        unless ``noted`` already; ``returned``: the status of a call that
        returned, ``IF_ABSENT`` for a ``set_if_not_exists``)."""
        status = returned
        if exc is not None:
            # A delete needs no key: one that raised may have removed some.
            missing = isinstance(exc, MISSING_ERRORS) and not delete
            status = MISSING if missing else ERROR
            if status == ERROR and not noted:
                self.error(kind, key, exc)
        elif not delete and status == OK:
            self.bytes_written += sum(e - s for s, e in spans)
        rec = WriteRecord(key, wid, kind, tuple(spans), t0, t1, status, is_delete=delete)
        self.rec.writes.append(rec)
        if self.intents is not None:
            self.intents.wrote(rec)

    # -- reading -----------------------------------------------------------------------

    def read(
        self,
        key: str,
        start: int,
        end: int,
        buf: Buffer | bytes | None,
        t0: int,
        t1: int,
        kind: str,
        rmw: int = 0,
    ) -> None:
        data = buf.to_bytes() if isinstance(buf, Buffer) else buf
        r = ReadRecord.from_bytes(key, start, data, t0, t1, end=end, kind=kind, rmw=rmw)
        self.rec.reads.append(r)
        if self.intents is not None:
            self.intents.read(r)
        if self.quick and r.runs is not None and quick_check(r, self.spans):
            self.quick_violations += 1


def quick_check(r: ReadRecord, spans: MutableMapping[int, tuple[tuple[int, int], ...]]) -> bool:
    """A cheap online subset of :func:`stress.oracle.check`, for the progress line.

    True if the read has corrupt words, words of a write nobody announced, or
    two writes each covering bytes that show the other (a torn read). Sound:
    everything it flags, the full check flags too.
    """
    runs = r.runs
    if runs is None or len(runs) < 2:
        return runs is not None and len(runs) == 1 and int(runs.wid[0]) == CORRUPT
    items = runs.as_list()
    if any(w == CORRUPT or w not in spans for _, _, w in items):
        return True
    if len(items) > 8:
        return False  # pairwise check only on small reads: the full check sees the rest

    for i, (alo, ahi, u) in enumerate(items):
        for blo, bhi, v in items[i + 1 :]:
            if u != v and overlaps(spans[u], [(blo, bhi)]) and overlaps(spans[v], [(alo, ahi)]):
                return True
    return False


# ---------------------------------------------------------------------------------------
# The op kinds. Each has a sync and an async body; they differ only in how they call,
# so what comes before the call (choosing) and after it (recording) is shared.

type Timed[T] = tuple[T | None, int, int, BaseException | None]


def call_timed[T](fn: Callable[[], T]) -> Timed[T]:
    """``fn()`` between two clock readings: ``(result, t0, t1, exc)``.

    ``exc`` is the ``Exception`` it raised (``result`` is then None), else None.
    """
    t0 = now()
    try:
        result = fn()
    except Exception as e:
        return None, t0, now(), e
    return result, t0, now(), None


async def await_timed[T](aw: Awaitable[T]) -> Timed[T]:
    """The async twin of :func:`call_timed`: ``await aw`` between two clock readings."""
    t0 = now()
    try:
        result = await aw
    except Exception as e:
        return None, t0, now(), e
    return result, t0, now(), None


def _whole(w: ByteWorker) -> tuple[int, int]:
    return 0, w.value_size


def _register_put(
    name: str,
    weight: float,
    pick: Callable[[ByteWorker], tuple[int, int]],
    put_sync: Callable[[Target, str, Buffer, int], None],
    put_async: Callable[[Target, str, Buffer, int], Awaitable[None]],
    help: str,
) -> None:
    """Register a kind that writes one span: ``put(target, key, buf, span start)``."""

    def plan(w: ByteWorker) -> tuple[str, tuple[int, int], int, Buffer]:
        span = pick(w)  # before the key: the order the rng was always drawn in
        key = w.key()
        wid = w.new_write([span])
        w.intend(key, wid, name, [span])
        return key, span, wid, w.payload(wid, *span)

    def done(w: ByteWorker, key: str, span: tuple[int, int], wid: int, timed: Timed[None]) -> None:
        _, t0, t1, exc = timed
        w.timed(name, t0, t1)
        w.wrote(key, wid, name, [span], t0, t1, exc)

    def run_sync(w: ByteWorker) -> None:
        key, span, wid, buf = plan(w)
        done(w, key, span, wid, call_timed(lambda: put_sync(w.target, key, buf, span[0])))

    async def run_async(w: ByteWorker) -> None:
        key, span, wid, buf = plan(w)
        done(w, key, span, wid, await await_timed(put_async(w.target, key, buf, span[0])))

    register(OpKind(name, weight, run_sync, run_async, help))


def _put_range_sync(t: Target, key: str, buf: Buffer, start: int) -> None:
    t.set_range_sync(key, buf, start)


async def _put_range(t: Target, key: str, buf: Buffer, start: int) -> None:
    await t.set_range(key, buf, start)


_register_put(
    "set_range",
    30,
    ByteWorker.span,
    _put_range_sync,
    _put_range,
    "set_range of a random range (small or large; overlaps other writers)",
)
_register_put(
    "set_range_chunk",
    20,
    ByteWorker.chunk,
    _put_range_sync,
    _put_range,
    "set_range of one of 16 disjoint slots (like writing one inner chunk of a shard)",
)
_register_put(
    "set",
    3,
    _whole,
    lambda t, key, buf, _start: t.set_sync(key, buf),
    lambda t, key, buf, _start: t.set(key, buf),
    "set of a whole new value",
)


def _delete_recreate_plan(w: ByteWorker) -> tuple[str, int, int, Buffer]:
    key = w.key()
    d_wid = w.new_write([_whole(w)])
    s_wid = w.new_write([_whole(w)])
    w.intend(key, d_wid, "delete", [_whole(w)], delete=True)
    w.intend(key, s_wid, "set", [_whole(w)])
    return key, d_wid, s_wid, w.payload(s_wid, *_whole(w))


def _delete_recreate_done(
    w: ByteWorker,
    key: str,
    d_wid: int,
    s_wid: int,
    deleted: Timed[None],
    recreated: Timed[None] | None,
) -> None:
    _, t0, t1, exc = deleted
    if recreated is None:  # the delete failed, so no set was tried
        w.wrote(key, d_wid, "delete", [_whole(w)], t0, t1, exc, delete=True)
        w.cancel(s_wid)
        return
    _, _, t2, exc = recreated  # the set is recorded from t1: it started after the delete
    w.timed("delete_recreate", t0, t2)
    w.wrote(key, d_wid, "delete", [_whole(w)], t0, t1, delete=True)
    w.wrote(key, s_wid, "set", [_whole(w)], t1, t2, exc)


def _delete_recreate_sync(w: ByteWorker) -> None:
    key, d_wid, s_wid, buf = _delete_recreate_plan(w)
    deleted = call_timed(lambda: w.target.delete_sync(key))
    recreated = None
    if deleted[3] is None:
        recreated = call_timed(lambda: w.target.set_sync(key, buf))
    _delete_recreate_done(w, key, d_wid, s_wid, deleted, recreated)


async def _delete_recreate_async(w: ByteWorker) -> None:
    key, d_wid, s_wid, buf = _delete_recreate_plan(w)
    deleted = await await_timed(w.target.delete(key))
    recreated = None
    if deleted[3] is None:
        recreated = await await_timed(w.target.set(key, buf))
    _delete_recreate_done(w, key, d_wid, s_wid, deleted, recreated)


register(
    OpKind(
        "delete_recreate",
        1,
        _delete_recreate_sync,
        _delete_recreate_async,
        "delete a key, then set it again (others see it absent meanwhile)",
    )
)


def _register_get(
    name: str,
    weight: float,
    request: Callable[[ByteWorker], tuple[ByteRequest | None, int, int]],
    help: str,
) -> None:
    """Register a kind that reads one key: ``request(w)`` gives the request and its range."""

    def done(w: ByteWorker, key: str, lo: int, hi: int, timed: Timed[Buffer | None]) -> None:
        buf, t0, t1, exc = timed
        if exc is not None:
            w.error(name, key, exc)
            return
        w.timed(name, t0, t1)
        w.read(key, lo, hi, buf, t0, t1, name)

    def run_sync(w: ByteWorker) -> None:
        key = w.key()
        req, lo, hi = request(w)
        done(w, key, lo, hi, call_timed(lambda: w.target.get_sync(key, req)))

    async def run_async(w: ByteWorker) -> None:
        key = w.key()
        req, lo, hi = request(w)
        done(w, key, lo, hi, await await_timed(w.target.get(key, req)))

    register(OpKind(name, weight, run_sync, run_async, help))


_register_get("get", 12, lambda w: (None, 0, w.value_size), "get of a whole value")
_register_get(
    "get_range",
    16,
    ByteWorker.read_request,
    "get of a byte range (Range, Offset or Suffix request)",
)


def _gpv_requests(w: ByteWorker) -> list[tuple[str, ByteRequest, int, int]]:
    out = []
    for _ in range(w.rng.randint(2, 4)):
        req, lo, hi = w.read_request()
        out.append((w.key(), req, lo, hi))
    return out


async def _gpv(w: ByteWorker, reqs: list[tuple[str, ByteRequest, int, int]]) -> None:
    requests: list[tuple[str, ByteRequest | None]] = [(k, r) for k, r, _, _ in reqs]
    bufs, t0, t1, exc = await await_timed(w.target.get_partial_values(requests))
    if exc is not None:
        w.error("get_partial_values", reqs[0][0], exc)
        return
    assert bufs is not None  # it returned, so with its list
    w.timed("get_partial_values", t0, t1)
    for (key, _, lo, hi), buf in zip(reqs, bufs, strict=True):
        w.read(key, lo, hi, buf, t0, t1, "get_partial_values")


def _gpv_sync(w: ByteWorker) -> None:
    # A thread calling an async-only API the way zarr's sync front end does:
    # on zarr's own event-loop thread, while other threads call sync methods.
    zarr_sync(_gpv(w, _gpv_requests(w)))


async def _gpv_async(w: ByteWorker) -> None:
    await _gpv(w, _gpv_requests(w))


register(
    OpKind(
        "get_partial_values",
        6,
        _gpv_sync,
        _gpv_async,
        "get_partial_values of 2-4 ranges over random keys (threads: via zarr's loop)",
    )
)


def _copy(buf: Buffer | None) -> bytes | None:
    return None if buf is None else buf.to_bytes()


def _rmw_plan(w: ByteWorker) -> tuple[str, list[tuple[int, int]], int, list[Buffer]]:
    key = w.key()
    spans = w.spans_for_rmw()
    wid = w.new_write(spans)
    w.intend(key, wid, "rmw", spans)
    return key, spans, wid, [w.payload(wid, s, e) for s, e in spans]


def _rmw_record(
    w: ByteWorker,
    key: str,
    spans: list[tuple[int, int]],
    wid: int,
    got: list[bytes | None],
    wrote: bool,
    t0: int,
    t1: int,
    exc: BaseException | None,
) -> None:
    w.timed("rmw", t0, t1)
    for (s, e), buf in zip(spans, got, strict=False):
        w.read(key, s, e, buf, t0, t1, "rmw", rmw=wid if wrote else 0)
    if wrote or exc is not None:
        w.wrote(key, wid, "rmw", spans, t0, t1, exc)
    else:
        w.cancel(wid)


def _rmw_sync(w: ByteWorker) -> None:
    key, spans, wid, bufs = _rmw_plan(w)
    got: list[bytes | None] = []
    wrote = False
    exc: BaseException | None = None
    t0 = now()
    try:
        with w.target.region_sync(key, spans) as h:
            # Copy at once: what the read saw, not what the buffer holds later.
            got = [_copy(h.get(PROTO, RangeByteRequest(s, e))) for s, e in spans]
            if all(g is not None for g in got):
                # "think": stands for the decode-merge-encode work done while the
                # region is held, and lets others run meanwhile; it orders nothing.
                time.sleep(0)
                wrote = True
                for (s, _), buf in zip(spans, bufs, strict=True):
                    h.set_range(buf, s)
    except Exception as e:
        exc = e
    _rmw_record(w, key, spans, wid, got, wrote, t0, now(), exc)


async def _rmw_async(w: ByteWorker) -> None:
    key, spans, wid, bufs = _rmw_plan(w)
    got: list[bytes | None] = []
    wrote = False
    exc: BaseException | None = None
    t0 = now()
    try:
        async with w.target.region(key, spans) as h:
            # Copy at once: what the read saw, not what the buffer holds later.
            got = [_copy(await h.get(PROTO, RangeByteRequest(s, e))) for s, e in spans]
            if all(g is not None for g in got):
                await asyncio.sleep(0)  # "think", as in the sync flavour (orders nothing)
                wrote = True
                for (s, _), buf in zip(spans, bufs, strict=True):
                    await h.set_range(buf, s)
    except Exception as e:
        exc = e
    _rmw_record(w, key, spans, wid, got, wrote, t0, now(), exc)


register(
    OpKind(
        "rmw",
        12,
        _rmw_sync,
        _rmw_async,
        "read-modify-write of 1-2 ranges held with locked(...), with a think step between",
    )
)


def register_async[W: Worker](
    name: str,
    weight: float,
    call: Callable[[W], Coroutine[Any, Any, None]],
    help: str,
    mode: str = "bytes",
    locked_only: bool = False,
) -> None:
    """Register a kind written only as a coroutine (store calls that zarr
    has only async, such as the listings): threads run it on zarr's loop,
    as zarr's sync front end does."""
    register(OpKind(name, weight, lambda w: zarr_sync(call(w)), call, help, mode, locked_only))


def check_listing(
    w: Worker, op: str, call: str, listed: Sequence[str], valid: Collection[str]
) -> Counter[str]:
    """A ``corrupt`` finding for every name of a listing that is not in
    ``valid`` or came more than once (``call`` says which listing, for the
    finding); returns how often each name came."""
    counts = Counter(listed)
    for name, n in counts.items():
        if name not in valid or n > 1:
            what = "which no op of the load made" if n == 1 else f"{n} times"
            detail = f"{call} listed {name!r} {what}"
            w.errors.append(Violation("corrupt", name, 0, 0, None, None, detail, op))
    return counts


def default_mix(mode: str = "bytes", unlocked: bool = False) -> dict[str, float]:
    """Every registered kind of ``mode`` at its default weight (weight 0 left
    out; ``unlocked``: the kinds that need the wrapper too)."""
    return {
        k.name: k.weight
        for k in OP_KINDS.values()
        if k.weight > 0 and k.mode == mode and not (unlocked and k.locked_only)
    }
