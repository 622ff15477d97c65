"""In-place writes into zarr shards, plugged in as a zarr codec pipeline.

Design note
-----------
*Where it plugs in.* zarr builds each array's codec pipeline from the class
named by ``zarr.config["codec_pipeline.path"]``, looked up in a registry that
loads the ``zarr.codec_pipeline`` entry points and keys each class by
``f"{cls.__module__}.{cls.__qualname__}"``. :class:`ShardWritePipeline`
subclasses zarr's default ``BatchedCodecPipeline``, declares
``__module__ = "zarr_rangelock"`` so that its key is
``"zarr_rangelock.ShardWritePipeline"``, and overrides ``write`` and
``read``. Every store that is not a :class:`~zarr_rangelock.RangeLockedStore`
goes straight to zarr's own ``write``. So do the pipelines zarr builds from
the same class for inner chunks and for shard indexes: their byte setters
are not store paths. An array that is not sharded gets zarr's own write of
each chunk, under the chunk key's whole-key lock (``_StockJob``, one job per
chunk): zarr's read-merge-write of a chunk loses another writer's part of
it otherwise, as it loses another writer's chunks of a shard.

*Which path a shard takes.* One zarr ``write`` call touches several shards;
``_plan`` makes one job per shard: chunks written in place under range locks
(inner codecs of fixed encoded size), appended with the index re-pointed
(compressed inner chunks), or zarr's own write under the whole-key lock
(anything else). The jobs, the shard layouts they keep and how they find a
chunk are in :mod:`zarr_rangelock.shards._jobs` and its design note.

*Atomicity and deadlock.* One ``write`` takes one lock request per shard it
touches, in sorted key order, holds them all until every shard is written and
then releases them. Writes of overlapping regions therefore behave as if
applied one after the other, even across shards. Taking locks in one global
key order, one request per key, keeps this deadlock-free under the lock
table's FIFO rule (a waiter only ever waits on its own key for earlier
entries, which wait only on the same or later keys). A request is never made
while a lock on the same key is held.

*Crash safety.* With a journal-mode store (``durability="journal"``) the
writes of all the call's shards are one transaction of the store's journal,
committed while the locks are still held: after a crash the call is applied
entirely or not at all. A failing call then writes nothing.

*Reads.* A shard kept dense is read by :func:`~._reads.read_dense`
(one read of the span the selection covers, chunks decoded from views of
it), any other by :func:`~._reads.read_packed` (by its index: one read a
run of chunks, decoded over the idle CPUs); what those decline, by zarr.
A read longer than 1 MiB is done in a worker thread, so the shards of a
call wait on the disk together.

*Readers.* zarr reads a shard with two store calls (index, then chunks). The
one-time dense conversion, and appends and compactions of compressed shards,
move chunks or rewrite the index, so a read that fetched the index before
them and the chunks after would use stale offsets. ``read_batch`` therefore
holds the shards it reads shared, whole, across both calls
(``RangeLockedStore.consistent_reads``); writers of those shards wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import NDBuffer
from zarr.core.chunk_grids import ChunkGrid
from zarr.core.chunk_utils import fill_value_or_default
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.config import config as zarr_config
from zarr.core.indexing import CoordinateIndexer, get_indexer
from zarr.registry import register_pipeline
from zarr.storage import StorePath

from ..locks._holdall import hold_all_async
from ..locks._ki import protected
from ..store._io import SHARING, codecs_apart
from ..store._store import RangeLockedStore
from . import _layout as L
from . import _reads
from ._dense import _DenseJob
from ._fill import fill_head
from ._jobs import (
    SpecFacts,
    WriteItem,
    _AppendJob,
    _Job,
    _ShardJob,
    _StockJob,
)

if TYPE_CHECKING:
    from zarr.abc.codec import GetResult
    from zarr.abc.store import ByteGetter
    from zarr.core.array_spec import ArraySpec
    from zarr.core.indexing import SelectorTuple

__all__ = [
    "ShardWritePipeline",
]


class ShardWritePipeline(BatchedCodecPipeline):
    """zarr's default codec pipeline, with safe concurrent in-place shard writes.

    Select it with ``zarr.config.set({"codec_pipeline.path":
    "zarr_rangelock.ShardWritePipeline"})`` before opening or creating an array
    (zarr picks the pipeline when it builds the array object). With a sharded
    array on a :class:`~zarr_rangelock.RangeLockedStore`, ``arr[sel] = value``
    from many threads and ``AsyncArray.setitem`` from many tasks lose no update,
    and writes of overlapping regions behave as if applied one after the other.
    Uncompressed inner chunks are then written in place (one ``set_range`` per
    chunk); compressed ones are appended and the index re-pointed. An array
    that is not sharded on such a store is written by zarr's own write of
    each chunk under the chunk's lock, so it loses no update either.
    Everything else behaves exactly as ``BatchedCodecPipeline``. Every shard
    written reads back with stock zarr. The design notes of
    ``zarr_rangelock.shards._pipeline`` (locks) and ``zarr_rangelock.shards._jobs``
    (layouts) say how.

    Concurrency
    -----------
    Safe from any number of threads and asyncio tasks, sharing one lock table
    with every ``RangeLockedStore`` wrapping the same underlying store. A write
    waits (without blocking the event loop) for earlier conflicting writes of
    the same shard; cancelling it releases every lock it holds or awaits, and
    may leave some of its chunks written and others not, as a failing zarr
    write does. A shard whose encode or write fails does not stop the call's
    other shards: each is written unless its own part fails, and the first
    failure is raised once all are done (with ``durability="journal"``
    nothing is committed).
    """

    # The registry keys classes by module and qualified name; this makes the key
    # the public "zarr_rangelock.ShardWritePipeline" (zarrs subclasses in its
    # __init__ for the same reason).
    __module__ = "zarr_rangelock"

    async def write(
        self,
        batch_info: Iterable[WriteItem],
        value: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> None:
        items = list(batch_info)
        store = self._locked_store(items, only_sharded=False)
        if store is None:
            await super().write(items, value, drop_axes)
            return
        jobs = sorted(
            (self._plan(store, item, value, drop_axes) for item in items), key=lambda j: j.key
        )
        if len({j.key for j in jobs}) != len(jobs):  # pragma: no cover - zarr never does this
            raise ValueError("one write touched the same shard twice")
        concurrency = zarr_config.get("async.concurrency")
        # A shard that fails (its encode, its write) does not stop the others:
        # each is written unless its own part fails, and the first failure is
        # raised once all are done. Stock zarr's writes end the same way, but
        # after it has raised (asyncio.gather leaves them running), so what a
        # read right after a failed stock write sees depends on timing.
        failures: list[Exception] = []
        with _sharing(len(jobs), concurrency):  # (the shards' encodes)
            prepared = await _run_each([j.prepare for j in jobs], concurrency)
        ready = _survivors(jobs, prepared, failures)
        if ready:
            # (not ``async with``: a Ctrl-C at the entry of the stack's __aexit__
            # released nothing; _let_go is protected, see _acquire_all)
            held = contextlib.AsyncExitStack()
            try:
                runs = await _acquire_all(ready, held)
                # every run finishes (or is cancelled and has stopped) before
                # any lock goes; with durability="journal" every shard's writes
                # are one transaction, committed under the locks (all or none:
                # a failure of any shard, raised inside it, commits nothing)
                committed = False
                try:
                    async with store._transaction():
                        with _sharing(len(runs), concurrency):  # (partial chunks' encodes)
                            failures += [e for _, e in await _run_each(runs, concurrency)]
                        if failures:
                            raise _Failed
                    committed = True
                except _Failed:
                    pass
                finally:
                    for job in ready:
                        if isinstance(job, _ShardJob):
                            job.remember_index(committed)
            finally:
                await _let_go(held)
            # The absent marks of chunks an in-place write stored as fill are
            # settled, and shards left without a present chunk deleted, as
            # stock zarr does, each under its own whole-key lock once ours are
            # gone (each checks the shard it finds); not after a journaled
            # call that committed nothing. The values are written by then: a
            # sweep that fails (a full disk while adding marks) is a warning,
            # not the call's error (a journaled call that raised would say it
            # wrote nothing).
            swept = [j for j in ready if isinstance(j, _DenseJob) and j.marks]
            if swept and (committed or not store.durability.startswith("journal")):
                for i, e in await _run_each([j.sweep for j in swept], concurrency):
                    warnings.warn(
                        f"the shard {swept[i].key!r} was written, but which of its "
                        f"chunks of fill values are present could not be recorded "
                        f"({type(e).__name__}: {e}): it is kept where stock zarr "
                        "might delete it, or reads as stock zarr's with every chunk",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        if failures:
            raise _first(failures)

    async def read(
        self,
        batch_info: Iterable[tuple[ByteGetter, ArraySpec, SelectorTuple, SelectorTuple, bool]],
        out: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> tuple[GetResult, ...]:
        """zarr's read, batch by batch, where a failure stops the other batches.

        zarr runs the batches with ``asyncio.gather``, which raises the first
        failure while the other batches go on reading, each holding its shards
        shared (:meth:`read_batch`), after the caller has the error. Here a
        failure cancels them and waits until they have let go, as the write
        path does (:func:`_run_all`).
        """
        batches = [list(b) for b in itertools.batched(batch_info, self.batch_size)]
        results: list[Sequence[GetResult]] = [()] * len(batches)
        concurrency = zarr_config.get("async.concurrency")

        def one(i: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                results[i] = await self.read_batch(batches[i], out, drop_axes)

            return run

        with _sharing(len(batches), concurrency):
            await _run_all([one(i) for i in range(len(batches))], concurrency)
        return tuple(r for batch in results for r in batch)

    async def read_batch(
        self,
        batch_info: Iterable[tuple[ByteGetter, ArraySpec, SelectorTuple, SelectorTuple, bool]],
        out: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> Any:
        """zarr's read, holding the batch's shards shared for its duration.

        zarr reads a shard with two dependent store calls (the index, then the
        chunks at the offsets it gives). A whole-key rewrite between them (the
        one-time dense conversion, a compaction or an append to a compressed
        shard) would make the second read use stale offsets. Holding each
        shard shared across both (:meth:`RangeLockedStore.consistent_reads`)
        rules that out; in-place chunk writes of the shard wait for the read.
        """
        items = list(batch_info)
        store = self._locked_store(items)  # same tuple shape as writes
        if store is None:
            return await super().read_batch(items, out, drop_axes)
        async with store.consistent_reads(i[0].path for i in items):  # type: ignore[attr-defined]  # StorePath: _locked_store checked
            results: list[GetResult | None] = [None] * len(items)
            if self.supports_partial_decode:
                codec = self.array_bytes_codec
                assert isinstance(codec, ShardingCodec)  # _locked_store checked
                for i, item in enumerate(items):
                    facts = _facts(codec, item[1])
                    if facts is None or not _reads.answerable(item, out):
                        continue
                    projections = _projections(item[2], item[1], codec)
                    if not projections:
                        continue
                    # (fixed-size chunks: read_dense, which hands a shard
                    # that is not dense to read_packed with its index)
                    fixed = facts.geometry.chunk_nbytes is not None
                    read = _reads.read_dense if fixed else _reads.read_packed
                    results[i] = await read(codec, facts, store, item, projections, out)
            rest = [i for i, r in enumerate(results) if r is None]
            if rest:
                with codecs_apart():  # (its decodes, under the shards' shared holds)
                    got = await super().read_batch([items[i] for i in rest], out, drop_axes)
                for i, r in zip(rest, got, strict=True):
                    results[i] = r
            return tuple(results)

    def _locked_store(
        self, items: Sequence[tuple[Any, ...]], *, only_sharded: bool = True
    ) -> RangeLockedStore | None:
        """The RangeLockedStore all ``items`` go to, if this pipeline should
        handle them (those of a sharded array only, if ``only_sharded``); None
        to defer to zarr."""
        if not items or (only_sharded and not isinstance(self.array_bytes_codec, ShardingCodec)):
            return None
        first = items[0][0]
        if not isinstance(first, StorePath) or not isinstance(first.store, RangeLockedStore):
            return None
        store = first.store
        if all(isinstance(i[0], StorePath) and i[0].store is store for i in items):
            return store
        return None  # pragma: no cover - zarr writes one array to one store

    def _plan(
        self, store: RangeLockedStore, item: WriteItem, value: NDBuffer, drop_axes: tuple[int, ...]
    ) -> _Job:
        byte_setter, spec, chunk_sel, out_sel, _ = item
        assert isinstance(byte_setter, StorePath)
        codec = self.array_bytes_codec
        key = byte_setter.path
        facts = None
        if isinstance(codec, ShardingCodec) and self.supports_partial_encode:
            facts = _facts(codec, spec)
        if facts is None:
            # zarr's own write of the shard (or, in an array that is not
            # sharded, of the chunk) under its whole-key lock
            return _StockJob(
                pipeline=self,
                store=store,
                key=key,
                spec=spec,
                item=item,
                value=value,
                drop_axes=drop_axes,
            )
        assert isinstance(codec, ShardingCodec)  # (facts are a sharding codec's)
        shard_value = value if len(value.shape) == 0 else value[out_sel]
        projections = _projections(chunk_sel, spec, codec)
        if projections is None:
            # zarr reshapes the value for some coordinate selections; let it.
            projections, shard_value = codec._get_shard_indexer_and_value(
                chunk_sel, spec, shard_value
            )
        cls = _DenseJob if facts.geometry.chunk_nbytes is not None else _AppendJob
        return cls(
            pipeline=self,
            store=store,
            key=key,
            spec=spec,
            codec=codec,
            facts=facts,
            projections=projections,
            value=shard_value,
        )


@contextlib.contextmanager
def _sharing(n: int, concurrency: int | None) -> Iterator[None]:
    """While inside: ``n`` shards' encodes or decodes run at once, at most
    ``concurrency`` (zarr's ``async.concurrency``) of them; they share the
    idle CPUs (``store._io.SHARING``)."""
    token = SHARING.set(max(1, min(n, concurrency or n)))
    try:
        yield
    finally:
        SHARING.reset(token)


# zarr instantiates pipelines through the registry; registering here as well
# makes the name resolve even where the package's entry points are not installed.
register_pipeline(ShardWritePipeline)


@protected
async def _let_go(held: contextlib.AsyncExitStack) -> None:
    """Let go of every lock on ``held`` (protected: see :func:`_acquire_all`)."""
    await held.aclose()


@protected
async def _acquire_all(
    jobs: Sequence[_Job], held: contextlib.AsyncExitStack
) -> list[Callable[[], Awaitable[None]]]:
    """Lock the shards of all ``jobs`` (sorted by key), keep the locks on
    ``held`` and return the writes to run under them.

    The shards are taken by the hold-and-wait rule (``locks/_holdall``), as
    every writer and reader of several keys takes them: in key order, only
    the first waited for without limit, and on a timeout while holding some,
    all let go and the attempt started over in key order, as one call's
    locks.

    Protected from KeyboardInterrupt (``locks/_ki``) while it runs, as are
    ``take``, ``let_go`` and :func:`_let_go` (a coroutine is protected only
    while it runs: an interrupt while it waits lands in the event loop,
    and the writer's loop then cancels the write, which lets go): an
    interrupt at the entry of an exit stack's ``push_async_exit`` or
    ``aclose``, between a shard's locks taken and pushed on ``held``, left
    them held for good.
    """

    @protected
    async def take(
        job: _Job, timeout: float | None
    ) -> tuple[Callable[[], Awaitable[None]], contextlib.AsyncExitStack]:
        locks = contextlib.AsyncExitStack()  # this shard's
        try:
            return await job.acquire(locks, timeout), locks
        except BaseException:
            await locks.aclose()
            raise

    @protected
    async def let_go(taken: list[tuple[Any, contextlib.AsyncExitStack]]) -> None:
        for _, locks in reversed(taken):
            await locks.aclose()

    taken = await hold_all_async(jobs, take, let_go)
    for _, locks in taken:
        held.push_async_exit(locks)
    return [run for run, _ in taken]


class _Failed(Exception):
    """Raised inside a write's transaction when a shard failed: nothing commits."""


async def _run_each(
    thunks: Sequence[Callable[[], Awaitable[None]]], limit: int | None
) -> list[tuple[int, Exception]]:
    """Await every thunk to its end, at most ``limit`` at a time, whether
    others fail or not: the failures (an ``Exception`` each), as
    ``(index of the thunk, exception)`` in the order they happened. A
    cancellation (or another ``BaseException``) cancels the others and is
    raised once they have stopped (a TaskGroup), so none is still writing
    when the caller lets its locks go."""
    failures: list[tuple[int, Exception]] = []
    guard: contextlib.AbstractAsyncContextManager[object] = (
        asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
    )

    async def one(i: int, thunk: Callable[[], Awaitable[None]]) -> None:
        async with guard:
            try:
                await thunk()
            except Exception as e:  # every failure: the caller raises the first
                failures.append((i, e))

    # Protected from KeyboardInterrupt (``locks/_ki``): TaskGroup.create_task
    # adds a task to the group and then its done callback; an interrupt
    # between the two (a ShardWriter's loop runs in the caller's thread,
    # where SIGINT lands) left a task the group waits for that never tells
    # it it is done: the group's exit, and the write, waited for ever.
    @protected
    def start(group: asyncio.TaskGroup) -> None:
        for i, thunk in enumerate(thunks):
            group.create_task(one(i, thunk))

    if len(thunks) == 1:
        await one(0, thunks[0])
        return failures
    async with asyncio.TaskGroup() as group:
        start(group)
    return failures


def _survivors[T](
    items: Sequence[T], failed: list[tuple[int, Exception]], failures: list[Exception]
) -> list[T]:
    """``items`` but those whose thunk failed (:func:`_run_each`'s ``failed``,
    one thunk per item), whose exceptions are added to ``failures``."""
    failures.extend(e for _, e in failed)
    gone = {i for i, _ in failed}
    return [item for i, item in enumerate(items) if i not in gone]


def _first(failures: Sequence[BaseException]) -> BaseException:
    """The first failure, as itself, as stock zarr (``asyncio.gather``) raises
    it; the others, if several shards failed, named in a note. Raise it
    outside any ``except`` block: there the group or exception being handled
    would become its ``__context__`` while holding it, a cycle that pickling
    (tblib, as dask distributed sends a task's error) recursed on without end."""
    first, *rest = failures
    if rest:
        first.add_note(
            f"{len(rest)} other shard(s) of the same call failed too: "
            + "; ".join(f"{type(e).__name__}: {e}" for e in rest)
        )
    return first


async def _run_all(thunks: Sequence[Callable[[], Awaitable[None]]], limit: int | None) -> None:
    """Await every thunk, at most ``limit`` at a time, and return only when all
    have finished: on a failure or a cancellation the others are cancelled and
    awaited (a TaskGroup), so none is still writing when the caller releases
    its locks (``asyncio.gather`` would not wait for them). The first failure
    is re-raised as itself, not as an ExceptionGroup, as stock zarr does."""
    if len(thunks) == 1:
        await thunks[0]()
        return
    guard: contextlib.AbstractAsyncContextManager[object] = (
        asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
    )

    async def one(thunk: Callable[[], Awaitable[None]]) -> None:
        async with guard:
            await thunk()

    failure: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for thunk in thunks:
                group.create_task(one(thunk))
    except BaseExceptionGroup as eg:
        failure = _first(eg.exceptions)
    if failure is not None:
        raise failure  # (not in the except block: see _first)


_CACHE_MAX = 256

_PROJECTIONS: dict[tuple[Any, ...], list[Any]] = {}
"""The inner chunk projections of a shard selection (what zarr's indexer
gives, and rebuilds for every write: a fifth of a chunk write), by the
selection and the two shapes. Only selections of ints and slices are cached
(hashable, and their projections hold nothing else); the lists are only read."""


def _projections(chunk_sel: Any, spec: ArraySpec, codec: ShardingCodec) -> list[Any] | None:
    """zarr's inner chunk projections of a shard selection (cached for ints
    and slices), or None for coordinate and mask selections, whose values
    zarr reshapes (the caller leaves those to zarr)."""
    plan_key = _plan_key(chunk_sel, spec.shape, codec.chunk_shape)
    projections = _PROJECTIONS.get(plan_key) if plan_key is not None else None
    if projections is None:
        indexer = get_indexer(chunk_sel, shape=spec.shape, chunk_grid=_grid(spec.shape, codec))
        if isinstance(indexer, CoordinateIndexer):  # (a MaskIndexer is one too)
            return None
        projections = list(indexer)
        if plan_key is not None:
            if len(_PROJECTIONS) >= _CACHE_MAX * 16:
                _PROJECTIONS.clear()
            _PROJECTIONS[plan_key] = projections
    return projections


def _plan_key(
    chunk_sel: Any, shard_shape: tuple[int, ...], chunk_shape: tuple[int, ...]
) -> tuple[Any, ...] | None:
    """The cache key of a shard selection, None if it is not ints and slices."""
    if type(chunk_sel) is not tuple:
        return None
    for s in chunk_sel:
        if type(s) is not slice and type(s) is not int:
            return None
    key = (chunk_sel, tuple(shard_shape), tuple(chunk_shape))
    try:
        hash(key)
    except TypeError:  # a slice of something unhashable
        return None
    return key


_GRIDS: dict[tuple[tuple[int, ...], tuple[int, ...]], ChunkGrid] = {}


def _grid(shard_shape: tuple[int, ...], codec: ShardingCodec) -> ChunkGrid:
    """The inner chunk grid of a shard (what zarr rebuilds on every shard write;
    for a 64 x 64-chunk shard that costs more than writing the chunk).

    Cached by the two shapes only: a codec is never used as a cache key (zarr's
    codecs are frozen dataclasses, but a Blosc or numcodecs codec holds sets and
    dicts, so hashing one raises ``TypeError``).
    """
    key = (tuple(shard_shape), tuple(codec.chunk_shape))
    grid = _GRIDS.get(key)
    if grid is None:
        if len(_GRIDS) >= _CACHE_MAX:
            _GRIDS.clear()
        grid = _GRIDS[key] = ChunkGrid.from_sizes(*key)
    return grid


_FACTS: dict[
    tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[object, ...], SpecFacts | None]
] = {}


def _facts(codec: ShardingCodec, spec: ArraySpec) -> SpecFacts | None:
    """What writes and reads of shards of ``spec`` need of ``codec``
    (:class:`~._jobs.SpecFacts`), or None if some inner codec cannot run
    synchronously (zarr's own write and read then).

    zarr builds a new spec (and buffer prototype) for every write, from the
    same metadata objects: the cache is keyed by the identity of the codec,
    of the spec's dtype, fill value and config and of its prototype's two
    classes (each entry keeps them alive and is checked object by object, so
    an ``id`` is never taken for another object's), and by the shard shape.
    Nothing we do not own is hashed: a Blosc or numcodecs codec holds sets
    and dicts, so hashing one raises ``TypeError``, and hashing a spec cost
    more than the rest of the lookup.
    """
    proto = spec.prototype  # a new one per write, of the same two classes
    parts = (codec, spec.dtype, spec.fill_value, spec.config, proto.buffer, proto.nd_buffer)
    key = (tuple(map(id, parts)), tuple(spec.shape))
    hit = _FACTS.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], parts, strict=True)):
        return hit[1]
    facts = _work_out(codec, spec)
    if len(_FACTS) >= _CACHE_MAX:
        _FACTS.clear()
    _FACTS[key] = (parts, facts)
    return facts


def _work_out(codec: ShardingCodec, spec: ArraySpec) -> SpecFacts | None:
    transform = _inner_transform(codec, spec)
    if transform is None:
        return None
    chunk_spec = codec._get_chunk_spec(spec)
    dtype = spec.dtype.to_native_dtype()
    elide = not chunk_spec.config.write_empty_chunks
    return SpecFacts(
        transform=transform,
        chunk_spec=chunk_spec,
        geometry=L.shard_geometry(codec, spec),
        plain=dtype if L.plain_bytes(codec, dtype, chunk_spec) else None,
        dtype=dtype,
        head=fill_head(dtype, fill_value_or_default(chunk_spec)) if elide else None,
    )


def _inner_transform(codec: ShardingCodec, spec: ArraySpec) -> Any | None:
    """zarr's synchronous transform of the inner codec chain, or None if some
    inner codec cannot run synchronously."""
    try:
        return codec._get_inner_chunk_transform(spec)
    except TypeError:
        return None
