"""Raw byte I/O helpers shared by the backends, the handles and the store.

Nothing here takes a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr.core.sync as zarr_sync
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, cpu
from zarr.storage import LocalStore

from .._errors import PartialWriteError, RangeOutOfBoundsError
from ..locks._ki import protected
from ..locks._ranges import MAX_OFFSET, as_int, check_offset, check_range

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest

__all__ = [
    "CPUS",
    "INLINE_MAX_S",
    "SHARING",
    "Cost",
    "as_bytes_view",
    "check_fits",
    "check_start",
    "codecs_apart",
    "contiguous",
    "in_thread",
    "is_local_dir",
    "map_unless_cheap",
    "open_fd",
    "read_span",
    "run_to_completion",
    "workers",
    "write_range",
]


def write_range(target: int | memoryview, data: memoryview, start: int) -> None:
    """Copy ``data`` into ``target`` (a file descriptor or a byte view) at ``start``.

    Every write of value bytes, locked or not, goes through this one function
    (tests patch it to split writes and pause between the halves).
    """
    if isinstance(target, int):
        view, offset = data, start
        while True:
            try:
                n = os.pwrite(target, view, offset)
            except OSError as exc:
                if offset == start:
                    raise  # nothing written: the range is as it was
                raise PartialWriteError(
                    exc.errno, exc.strerror or str(exc), "", start, len(data), offset - start
                ) from exc
            if n == len(view):
                return  # at once, for a regular file
            if n <= 0:  # a regular file never does this, but never spin
                raise PartialWriteError(
                    None, f"pwrite wrote {n} bytes", "", start, len(data), offset - start
                )
            view, offset = view[n:], offset + n
    else:
        target[start : start + len(data)] = data


def with_key(exc: PartialWriteError, key: str) -> PartialWriteError:
    """``exc`` (from :func:`write_range`, which knows only a descriptor)
    naming ``key``, with its cause and notes."""
    out = PartialWriteError(exc.errno, exc.strerror or "", key, exc.start, exc.length, exc.written)
    out.__cause__ = exc.__cause__
    for note in getattr(exc, "__notes__", ()):
        out.add_note(note)
    return out


def write_keyed(target: int, data: memoryview, start: int, key: str) -> None:
    """:func:`write_range` into ``key``'s file: a partial write names the key."""
    try:
        write_range(target, data, start)
    except PartialWriteError as exc:
        raise with_key(exc, key) from exc.__cause__


def as_bytes_view(value: object, operation: str) -> memoryview:
    """``value`` (a zarr ``Buffer``) as a flat unsigned-byte ``memoryview``."""
    if type(value) is cpu.Buffer:  # fast path: a 1-d uint8 numpy array inside
        data: Any = value._data
        if data.flags.c_contiguous:
            return memoryview(data)
    if not isinstance(value, Buffer):
        raise TypeError(
            f"{operation}(): `value` must be a zarr Buffer instance, "
            f"got an instance of {type(value).__name__}"
        )
    view = memoryview(value.as_buffer_like())
    if not view.c_contiguous:
        # A strided Buffer is valid, but os.pwrite and cast() need contiguous
        # memory: copy it (only then), so both stores take it alike.
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def contiguous(value: Buffer) -> Buffer:
    """``value``, or a contiguous copy of it if its memory is strided.

    zarr's LocalStore writes a Buffer's memory with ``file.write``, which
    raises a bare ``BufferError`` for strided memory that a MemoryStore takes;
    the wrapper hands either store a contiguous Buffer. Anything but a Buffer
    is returned as is (the store's own type check then refuses it).
    """
    if type(value) is cpu.Buffer:
        data: Any = value._data
        if data.flags.c_contiguous:
            return value
        return cpu.Buffer(np.ascontiguousarray(data))
    if isinstance(value, Buffer) and not memoryview(value.as_buffer_like()).c_contiguous:
        return type(value).from_bytes(memoryview(value.as_buffer_like()).tobytes())
    return value


def check_start(key: str, start: object, length: int) -> int:
    """Validate ``start`` of a write of ``length`` bytes (type and sign only)."""
    if type(start) is not int:
        as_index = as_int(start)
        if as_index is None:
            raise TypeError(
                f"set_range on key {key!r}: start must be an int, "
                f"got {type(start).__name__}: {start!r}"
            )
        start = as_index
    if start < 0:
        raise RangeOutOfBoundsError(key, start, length, None)
    if start + length > MAX_OFFSET - 1:
        raise RangeOutOfBoundsError(key, start, length, None)
    return start


def check_fits(key: str, start: int, length: int, size: int) -> None:
    if start + length > size:
        raise RangeOutOfBoundsError(key, start, length, size)


#: True while our coroutines run on an event loop owned by the thread that
#: waits for them (``ShardWriter``): blocking work (encoding, an fsync) is then
#: done inline, where a worker thread would only add a hop.
INLINE: ContextVar[bool] = ContextVar("zarr_rangelock_inline", default=False)


_workers: ThreadPoolExecutor | None = None
_workers_lock = threading.Lock()


def workers() -> ThreadPoolExecutor:
    """The library's own worker threads, made at first use: as many as
    asyncio's default executor has (``min(32, CPUs + 4)``).

    Blocking work done while a lock is held (file I/O, encoding) runs here,
    never in the event loop's default executor. A program's blocking calls
    sent there (``asyncio.to_thread`` of a ``ShardWriter`` or a sync store
    call, as inside a coroutine one must) may all be waiting for that very
    lock: the work queued behind them, the write holding the lock never
    finished, and nothing moved again (``tests/test_executor_starvation.py``;
    found by the stress runner). Nothing run here waits for a lock, so these
    threads are never all blocked by the locks' waiters."""
    global _workers
    pool = _workers
    if pool is None:
        with _workers_lock:
            pool = _workers
            if pool is None:
                pool = _workers = ThreadPoolExecutor(
                    max_workers=min(32, (os.cpu_count() or 1) + 4),
                    thread_name_prefix="zarr-rangelock",
                )
    return pool


def _workers_in_child() -> None:
    # A forked child has none of the parent's threads: a pool that thinks it
    # has them would queue work that never runs. The child makes its own.
    global _workers, _workers_lock
    _workers, _workers_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_workers_in_child)


async def in_thread[T](fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread of :func:`workers`, finished even if the
    caller is cancelled (as :func:`run_to_completion`); inline while
    :data:`INLINE` is set. ``fn`` must not wait for a lock (see
    :func:`workers`).

    What ``asyncio.to_thread`` does (in the caller's context) but in the
    library's own workers, and the executor's future is awaited itself: no
    coroutine and no task around it, which cost a trip round the event loop
    before the work was even handed over."""
    if INLINE.get():
        return fn()
    loop = asyncio.get_running_loop()
    return await _through_cancellation(
        loop.run_in_executor(workers(), contextvars.copy_context().run, fn)
    )


#: Set while zarr's own code runs under one of our locks (:func:`codecs_apart`).
_APART: ContextVar[bool] = ContextVar("zarr_rangelock_apart", default=False)


class _Routing(ThreadPoolExecutor):
    """A program's event loop's default executor, as :func:`codecs_apart`
    leaves it: calls submitted while zarr's own code runs under one of our
    locks go to :func:`workers`, every other call to the executor the loop
    had (or would have made), which this shuts down with the loop."""

    def __init__(self, inner: ThreadPoolExecutor) -> None:
        super().__init__(max_workers=1)  # (never starts a thread: submit is below)
        self.inner = inner

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        pool = workers() if _APART.get() else None
        # (None, as run_in_executor takes it: the loop's own executor)
        return (pool or self.inner).submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def codecs_apart() -> Iterator[None]:
    """Around zarr's own code run while one of our locks is held (the
    pipeline's write of a chunk zarr writes itself, zarr's read of a shard
    our readers leave to it): the blocking work it sends to the running
    loop's default executor (``asyncio.to_thread``: zstd, gzip, blosc) goes
    to :func:`workers` instead, never behind the lock's waiters there (see
    :func:`workers`); zarr's code stays on the caller's loop.

    On a program's loop (zarr's async API) the loop's default executor is
    made a :class:`_Routing` one the first time, wrapping the one it had,
    and again whenever the program has set another since.
    Not on zarr's own loop (its sync API) or on a loop owned by the thread
    that waits for it (:data:`INLINE`, a ``ShardWriter``'s): no program
    sends its blocking calls to those loops' executors."""
    loop = asyncio.get_running_loop()
    if not (INLINE.get() or loop is zarr_sync.loop[0]):
        inner = getattr(loop, "_default_executor", None)  # (asyncio's own attribute)
        if not isinstance(inner, _Routing):
            if inner is None:  # (what run_in_executor would make)
                inner = ThreadPoolExecutor(thread_name_prefix="asyncio")
            loop.set_default_executor(_Routing(inner))
    token = _APART.set(True)
    try:
        yield
    finally:
        _APART.reset(token)


INLINE_MAX_S = 1e-3
"""Blocking work that costs at most this much CPU time (by :class:`Cost`'s
measure) is done on the event loop's thread by :func:`map_unless_cheap`.
Sending it to a worker thread and back costs the loop two wake-ups (the
executor's futures, the self-pipe) and a GIL hand-over each way, and the
caller waits the whole round trip. Four threads writing zstd chunks through
the plain API (2 cores; ``benchmarks/throughput.py``'s data) wrote 1.1-1.3x
as many MB/s with 64 KiB chunks encoded on zarr's loop thread (about 150-250
us each) as with each sent to a worker (the benchmark prints the ratio), and
1.16x with 256 KiB chunks (about 700 us).
Work past this bound still goes to workers: a slow codec on large chunks
must not hold up everything else waiting on zarr's loop, the encodes of
concurrent writes then run in parallel, and so do the pieces of one large
write (:func:`map_unless_cheap`)."""


class Cost:
    """The CPU time one unit of some blocking work takes (a chunk's encoding):
    a moving mean of what it took, unknown (infinite) until first measured, so
    the first work goes to a worker thread. CPU time of the thread that did it
    (``time.thread_time``): the waits for the GIL and the disk do not count.
    Threads update it without a lock: a lost update only ages the mean."""

    __slots__ = ("mean",)

    def __init__(self) -> None:
        self.mean = math.inf

    def timed[T](self, fn: Callable[[], T], units: int) -> T:
        """``fn()``, its CPU time (``units`` units of the work) folded into the mean."""
        start = time.thread_time()
        try:
            return fn()
        finally:
            if units:
                each = (time.thread_time() - start) / units
                self.mean = each if self.mean == math.inf else 0.75 * self.mean + 0.25 * each


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


CPUS = _cpus()
"""How many pieces :func:`map_unless_cheap` splits work into at most (the
CPUs this process may run on, when it was imported)."""


SHARING: ContextVar[int] = ContextVar("zarr_rangelock_sharing", default=1)
"""How many :func:`map_unless_cheap` calls of one piece of work run at once
(the shards of one write or one read, set by the pipeline around them;
their tasks inherit it): they share the idle CPUs."""

_pieces = [0]  # pieces of such work in worker threads now (all loops, all threads)
_pieces_lock = threading.Lock()


def _after_fork() -> None:
    # The parent's pieces are not the child's, and a thread of the parent may
    # have held the lock.
    global _pieces_lock
    _pieces[0] = 0
    _pieces_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


async def map_unless_cheap[X, R](fn: Callable[[X], R], items: Sequence[X], cost: Cost) -> list[R]:
    """``[fn(x) for x in items]``, each item one unit of the work ``cost``
    measures (and measured, either way): on this thread when the items cost
    at most :data:`INLINE_MAX_S` together, else in worker threads
    (:func:`in_thread`), in pieces of consecutive items run in parallel
    (codecs such as zstd, gzip and blosc let the GIL go while they compress:
    one thread encoding the 256 chunks of a shard was the whole write's
    time; ``benchmarks/encode_split.py``). As many pieces as there are
    :data:`CPUS` not running a piece of such work already, shared by the
    calls made together (:data:`SHARING`: the shards of one write), at least one,
    each of at least ``INLINE_MAX_S``: where writes of several shards
    encode at once, each keeps to one worker (more pieces than CPUs were
    slower). Work never measured (``cost`` infinite) is one piece.

    Every piece has ended when this returns or raises (a cancellation too,
    as :func:`in_thread`); a failure raises the exception of the first item
    that failed in ``items``' order (a piece stops at its first), as the one
    loop over them would. On a ``ShardWriter``'s own loop (:data:`INLINE`),
    one piece on this thread.
    """
    n = len(items)
    if n == 0:
        return []  # (nothing to measure; and 0 items x an unknown cost is NaN)

    def run(lo: int, hi: int) -> list[R]:
        return cost.timed(lambda: [fn(x) for x in items[lo:hi]], hi - lo)

    work = n * cost.mean
    if work <= INLINE_MAX_S or INLINE.get():
        return run(0, n)
    pieces = 1
    if work != math.inf:
        idle = (CPUS - _pieces[0]) // SHARING.get()  # (read without the lock: a guess)
        most = n if INLINE_MAX_S <= 0 else int(work / INLINE_MAX_S)  # (0: always in workers)
        pieces = max(1, min(idle, n, most))
    bounds = [n * i // pieces for i in range(pieces + 1)]
    with _pieces_lock:
        _pieces[0] += pieces
    try:
        if pieces == 1:
            return await in_thread(functools.partial(run, 0, n))
        done = await asyncio.gather(
            *(in_thread(functools.partial(run, lo, hi)) for lo, hi in itertools.pairwise(bounds)),
            return_exceptions=True,
        )
    finally:
        with _pieces_lock:
            _pieces[0] -= pieces
    out: list[R] = []
    for part in done:
        if isinstance(part, BaseException):
            raise part
        out += part
    return out


async def run_to_completion[T](make: Callable[[], Awaitable[T]]) -> T:
    """Await ``make()`` in a task that a cancellation of the caller does not stop.

    Used for work that runs in a worker thread while the caller holds a lock:
    if the caller is cancelled, the thread's I/O still finishes, and the lock
    must stay held until it has, or that I/O would land unprotected. The
    caller's cancellation is re-raised once the work is done.
    """

    async def _run() -> T:
        return await make()

    return await _through_cancellation(asyncio.ensure_future(_run()))


async def _through_cancellation[T](work: asyncio.Future[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile;
    then re-raise the caller's cancellation, else ``work``'s own outcome.

    A cancelled caller gets its ``CancelledError`` even where ``work`` then
    failed (that error its ``__cause__``), as a cancelled ``asyncio.to_thread``
    (stock zarr's) does: ``asyncio.timeout`` turns only a ``CancelledError``
    into its ``TimeoutError``, and a task group that cancelled its tasks
    expects one from each."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done():
                raise
            cancelled = True
            continue
        except Exception as exc:
            if cancelled:
                raise asyncio.CancelledError from exc
            raise
        if cancelled:
            raise asyncio.CancelledError
        return result


def read_span(byte_range: ByteRequest | None, key: str = "") -> tuple[int, int | None]:
    """The range a read of ``byte_range`` must lock shared (``None`` end: to the end).

    Refuses, with a ``ValueError`` naming ``key`` and the numbers, what stock
    zarr's two stores answer differently: an inverted range (``end < start``:
    ``b""`` from a MemoryStore, "read length must be non-negative" from a
    LocalStore) and a negative suffix (``b""`` from both, never meant).
    Offsets that are not ints (numpy's integers are taken), negative or past
    ``MAX_OFFSET`` are refused as the lock's range check refuses them, here,
    so that a locked handle's reads (which take no lock) refuse them too.
    """
    if byte_range is None:
        return 0, None
    if isinstance(byte_range, RangeByteRequest):
        start = check_offset("start", byte_range.start, key)
        end = check_offset("end", byte_range.end, key)
        if end > start:
            return start, end
        if end < start:
            raise ValueError(
                f"byte range [{start}, {end}) for key {key!r} is inverted: end must be >= start"
            )
        # An empty request reads nothing but still sees the key: lock one byte.
        return check_range(key, start, start + 1)
    if isinstance(byte_range, OffsetByteRequest):
        return check_offset("start", byte_range.offset, key), None
    if isinstance(byte_range, SuffixByteRequest):
        suffix = byte_range.suffix
        if type(suffix) is not int or suffix < 0:
            if isinstance(suffix, bool) or not isinstance(suffix, int):
                raise TypeError(
                    f"suffix for key {key!r} must be an int, got {type(suffix).__name__}: "
                    f"{suffix!r}"
                )
            raise ValueError(f"suffix for key {key!r} must be >= 0, got {suffix}")
        return 0, None  # which bytes depends on the size: lock them all
    # Same wording as zarr's stores (its conformance suite matches on it).
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


def is_local_dir(store: Store, key: str) -> bool:
    return type(store) is LocalStore and os.path.isdir(os.path.join(store.root, key))


@protected
def open_fd(path: str, flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags, mode)``, for a caller that closes the descriptor
    in the ``try`` right after it. Protected (``locks/_ki``): a
    KeyboardInterrupt right after ``os.open`` returned, before that ``try``,
    left the descriptor open for good; deferred, it lands inside the
    ``try`` (there is no check between a Python function's return and it)."""
    return os.open(path, flags, mode)
