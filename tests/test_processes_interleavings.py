"""Two processes forced into the narrow orders in which a shard writer's
check and its act are apart: one worker (B) is stopped at a chosen point of
its write by a function patched in that worker only, while the other (A)
rewrites, deletes, lays out or appends to the same shard; then B goes on.
What is left must be what some serial order of the two writes leaves, read
by stock zarr.

The windows (``Case.window``), B's stopping point in each, and what must
happen:

* ``before_hold``: B's ``write_chunk`` (or plain write) of a dense shard has
  the shard's validated index in hand (``_known._VALID``: ``valid()`` said
  yes) and is stopped before it takes its chunk's lock
  (``_fastpaths._put_one``; the pipeline's ``_DenseJob._lock``). A rewrites
  the shard whole (compacted by our pipeline or by stock zarr through a
  wrapper, laid out densely again, or deleted). B must see the stamp moved
  under its lock and look again: no write at the old offsets into the new
  file, none into the unlinked old one (with ``map_writes``, not through its
  mapping of the old file). Serial order: A, then B.
* ``in_hold``: B holds its chunk's lock (an OS lock, or none at all while
  its process is alone: an elided token hold) and is stopped just before
  its ``pwrite`` or mapped copy (``_backends._write_range`` /
  ``_write_mapped``). A writes another chunk with fill values, whose sweep
  rewrites the shard whole (``_DenseJob._add_marks``: every chunk copied as
  stored). A must wait for B; B's chunk is then in the copy. Serial: B, A.
* ``before_cold``: two first writes of one new shard on ``dense_shards``
  stores: B found no shard and is stopped before ``put_cold``'s whole-key
  lock (the pipeline's: before its whole-key ``_lock``); A lays the shard
  out with its chunk. B must find A's layout under its lock and write in
  place. Serial: A, B.
* ``in_cold``: the same with B stopped inside ``put_cold`` (``densified``),
  holding the whole-key lock with the shard read as missing; A's first
  write must wait. Serial: B, A.
* ``in_append``: a zstd shard: B holds the whole-key lock with the shard's
  index read (``_INDEXES``, or read under the lock) and is stopped before it
  places its chunk (``repointed``); A's append must wait, or it re-points
  the index B is about to overwrite. Serial: B, A.

Each window has a control that breaks the check or the exclusion it relies
on in B (``Case.control``), and there values differ from every serial
order's, or B raises: B's stamp check skipped (``before_hold``, with the
path check's 10 ms window made wide, so the cached descriptor of the old
file is written: the writes of a process within 10 ms of its last look); the
shard's state as B saw it before its lock kept (``before_cold``); B's store
made with ``cross_process=False`` (``in_cold``, ``in_append``, ``in_hold``),
or, for a process alone, its elided holds not counted, so that it stops
being alone without waiting for them (``in_hold``). In a control A is let
run to its end before B goes on (the real code would keep A waiting there).

The last test kills the other process (a subprocess) right after the
rename of its compaction, before the stamp it gives the key after it: the
key must have been stamped before the rename too (``LocalBackend.replacing``),
or this process, within 10 ms of its last look at the path, writes its chunk
into the old file by the old index (a bug this hunt found).

Worker functions live in this module, top level, so spawn can pickle them by
reference (see ``tests/test_processes.py``). Nothing sleeps: a spawn-context
``Barrier`` orders the workers (steps 0-3, below), and a worker that fails
aborts it. Nothing but the workers opens the root before they are done, so
whether B is alone is B's own (``Case.alone``).
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import subprocess
import sys
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore

from tests._processes import BARRIER_TIMEOUT, SPAWN, child_env, run_workers
from tests._shard_helpers import OURS, STOCK
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.locks import _presence
from zarr_rangelock.locks._oslock import OsLocks
from zarr_rangelock.shards import _dense, _fastpaths, _jobs
from zarr_rangelock.store import _backends

pytestmark = pytest.mark.timeout(60)

SHAPE, CHUNK = (16, 16), (4, 4)  # one shard of 4 x 4 chunks: key c/0/0
KEY = "c/0/0"
B_CHUNK, A_CHUNK = (1, 2), (2, 1)  # the chunks B and A write (A: first writes, appends)
B_VALUE, A_VALUE = 777, 555


def _region(coords: tuple[int, int]) -> tuple[slice, slice]:
    (i, j), (n, m) = coords, CHUNK
    return slice(i * n, (i + 1) * n), slice(j * m, (j + 1) * m)


def _by_chunk(base: int) -> np.ndarray[Any, Any]:
    """Every chunk (i, j) holding ``base + 4 * i + j``."""
    out = np.zeros(SHAPE, "i4")
    for i in range(4):
        for j in range(4):
            out[_region((i, j))] = base + 4 * i + j
    return out


INIT = _by_chunk(100)  # B's dense shard before the windows: every chunk data
REWRITTEN = _by_chunk(300)  # A's whole rewrite that keeps the shard dense
SPARSE = np.zeros(SHAPE, "i4")
SPARSE[_region((3, 3))] = 55  # A's whole rewrite that leaves one chunk: compact

#: A's operations (in its own process, through its own wrapper).
A_OPS = {
    "compacting": "our pipeline writes the whole shard, one chunk of data: compacted",
    "stock": "stock zarr through a wrapper writes the whole shard, one chunk of data",
    "delete": "the shard's key deleted through a wrapper",
    "dense": "our pipeline writes the whole shard with data: laid out densely anew",
    "fill_then_sweep": "our pipeline writes chunk (0, 0) with fill values in place, "
    "then its sweep rewrites the shard with absent marks",
    "chunk_writer": "a ShardWriter's write_chunk of A's chunk",
    "chunk_plain": "our pipeline's arr[region] = value of A's chunk",
}

#: Windows in which A must wait for B (B is stopped holding its lock).
A_WAITS = {"in_hold", "in_cold", "in_append"}


@dataclasses.dataclass(frozen=True)
class Case:
    window: str
    a_op: str
    b_how: str = "writer"  # B writes with write_chunk ("writer") or arr[region] = v ("plain")
    map_writes: bool = False  # B's store maps its writes
    alone: bool = False  # B's process is alone in the root (else it never is)
    control: bool = False

    @property
    def dense_shards(self) -> bool:
        return self.window in ("before_cold", "in_cold")

    @property
    def zstd(self) -> bool:
        return self.window == "in_append"


def _step(steps: Barrier) -> None:
    steps.wait(BARRIER_TIMEOUT)


def _block(value: int) -> np.ndarray[Any, Any]:
    return np.full(CHUNK, value, "i4")


def _worker(worker: int, root: str, case: Case, steps: Barrier) -> dict[str, Any]:
    """Worker 0 is B (stopped), worker 1 is A. Steps: 0, B has made the
    array; 1, B is stopped; 2, B goes on (A's operation is done, or A waits
    for B); 3, both are done."""
    return _b(root, case, steps) if worker == 0 else _a(root, case, steps)


def _b(root: str, case: Case, steps: Barrier) -> dict[str, Any]:
    if case.alone:
        _presence.IDLE_S = 3600.0  # alone until A knocks (not after 50 ms idle)
    else:
        OsLocks.can_be_alone = lambda self: False  # type: ignore[method-assign]  # this worker's copy
    cross_process = not (case.control and case.window in A_WAITS and not case.alone)
    store = RangeLockedStore(
        LocalStore(root),
        map_writes=case.map_writes,
        dense_shards=case.dense_shards,
        cross_process=cross_process,
    )
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store,
            shape=SHAPE,
            shards=SHAPE,
            chunks=CHUNK,
            dtype="i4",
            fill_value=0,
            compressors=ZstdCodec() if case.zstd else None,
        )
    writer = ShardWriter(arr)
    if case.window in ("before_hold", "in_hold"):
        arr[:, :] = INIT  # laid out densely, every chunk present: no absent marks
        writer.write_chunk(B_CHUNK, _block(111))  # validated (and mapped) in this process
    elif case.window == "in_append":
        writer.write_chunk((0, 0), _block(100))  # compact; its index kept in _INDEXES
    report: dict[str, Any] = {"stopped": 0}
    os_locks = store._state.os_locks

    def stop() -> None:
        """B's stopping point (once)."""
        if report["stopped"]:
            return
        report["stopped"] += 1
        report["alone"] = os_locks is not None and os_locks.alone()
        report["mapped"] = any(e.map is not None for e in store._state.fds._entries.values())
        _step(steps)  # 1: stopped
        _step(steps)  # 2: go on

    _arm(case, stop)
    _step(steps)  # 0
    try:
        if case.b_how == "writer":
            writer.write_chunk(B_CHUNK, _block(B_VALUE))
        else:
            arr[_region(B_CHUNK)] = B_VALUE
    except Exception as e:  # (a control's stale write may raise: reported, not fatal)
        report["raised"] = repr(e)
    if not report["stopped"]:
        steps.abort()
        raise AssertionError(f"B never reached its stopping point in {case}")
    _step(steps)  # 3
    return report


def _arm(case: Case, stop: Any) -> None:
    """Patch B's stopping point for ``case`` (and, for a control, break the
    check or the exclusion the window relies on)."""
    window, plain = case.window, case.b_how == "plain"
    if window == "before_hold" and not plain:
        put_one = _fastpaths._put_one

        def stopping_put_one(*args: Any) -> Any:
            stop()
            return put_one(*args)

        _fastpaths._put_one = stopping_put_one  # type: ignore[assignment]
    elif window in ("before_hold", "before_cold") and plain:
        lock = _jobs._Job._lock

        async def stopping_lock(self: Any, *args: Any) -> Any:
            stop()
            return await lock(self, *args)

        _jobs._Job._lock = stopping_lock  # type: ignore[method-assign]
    elif window == "in_hold":
        write_range, write_mapped = _backends._write_range, _backends._write_mapped

        def stopping_range(*args: Any) -> None:
            stop()
            write_range(*args)

        def stopping_mapped(*args: Any) -> None:
            stop()
            write_mapped(*args)

        _backends._write_range = stopping_range
        _backends._write_mapped = stopping_mapped
    elif window == "before_cold":
        put_cold = ShardWriter._put_cold

        def stopping_cold(self: ShardWriter, *args: Any) -> int:
            stop()
            return put_cold(self, *args)

        ShardWriter._put_cold = stopping_cold  # type: ignore[method-assign]
    elif window == "in_cold":
        densified = _dense.densified

        def stopping_densified(*args: Any, **kwargs: Any) -> Any:
            stop()
            return densified(*args, **kwargs)

        _dense.densified = stopping_densified
        _fastpaths.densified = stopping_densified
    elif window == "in_append":
        repointed = _jobs.repointed

        def stopping_repointed(*args: Any) -> Any:
            stop()
            return repointed(*args)

        _jobs.repointed = stopping_repointed
        _fastpaths.repointed = stopping_repointed
    if case.control:
        _break(case)


def _break(case: Case) -> None:
    """A control's breakage in B (see the module)."""
    window, plain = case.window, case.b_how == "plain"
    if window == "before_hold" and not plain:
        # put_in_place's write without its stamp check, the cached
        # descriptor trusted as within 10 ms of its last look
        _backends.FD_REVALIDATE_S = 3600.0

        def write_at(store: Any, key: str, at: Any, token: Any, vk: Any) -> int:
            store._backend.set_ranges(key, at, stamp=token)
            return len(at)

        _fastpaths._write_at = write_at
    elif window == "before_hold":

        async def unchanged(self: Any, handle: Any, peek: Any) -> bool:
            return True  # the guess never checked again under the lock

        _dense._DenseJob._unchanged = unchanged  # type: ignore[method-assign]
    elif window == "before_cold" and not plain:

        def as_seen_before(store: Any, key: str, path: Any) -> Any:
            return (0, None)  # no shard, as before the lock (not read again)

        _fastpaths._stored_index = as_seen_before
    elif window == "before_cold":

        async def index(self: Any, handle: Any) -> Any:
            return 0, None

        _jobs._ShardJob._index = index  # type: ignore[method-assign]
    elif window == "in_hold" and case.alone:
        # elided holds not counted: stopping being alone does not wait for them
        try_elide = _presence.Presence.try_elide

        def uncounted(self: _presence.Presence) -> bool:
            elided = try_elide(self)
            if elided:
                with self._lock:
                    self._elided -= 1
            return elided

        _presence.Presence.try_elide = uncounted  # type: ignore[method-assign]
        _presence.Presence.let_go_elided = lambda self: None  # type: ignore[method-assign]
    # (in_hold not alone, in_cold, in_append: B's store has cross_process=False)


def _a(root: str, case: Case, steps: Barrier) -> dict[str, Any]:
    _step(steps)  # 0
    _step(steps)  # 1: B is stopped
    waited: list[bool] = []
    if case.window in A_WAITS and not case.control:
        begin_wait = _presence.Presence.begin_wait

        def reached(self: _presence.Presence) -> None:
            begin_wait(self)
            if not waited:  # A waits for another process (B): let B go on
                waited.append(True)
                _step(steps)  # 2

        _presence.Presence.begin_wait = reached  # type: ignore[method-assign]
    store = RangeLockedStore(LocalStore(root), dense_shards=case.dense_shards)
    op = case.a_op
    if op == "delete":
        store.delete_sync(KEY)
    else:
        with zarr.config.set(STOCK if op == "stock" else OURS):
            arr = zarr.open_array(store, mode="r+")
        if op in ("compacting", "stock"):
            arr[:, :] = SPARSE
        elif op == "dense":
            arr[:, :] = REWRITTEN
        elif op == "fill_then_sweep":
            arr[_region((0, 0))] = 0
        elif op == "chunk_writer":
            ShardWriter(arr).write_chunk(A_CHUNK, _block(A_VALUE))
        else:
            assert op == "chunk_plain"
            arr[_region(A_CHUNK)] = A_VALUE
    if not waited:
        waited.append(False)
        _step(steps)  # 2: A is done; B goes on
    _step(steps)  # 3
    return {"waited": waited[0]}


def _serial(case: Case) -> np.ndarray[Any, Any]:
    """The array after the serial order of the two writes the window must give."""
    op = case.a_op
    if case.window == "before_hold":  # A, then B
        out = {"compacting": SPARSE, "stock": SPARSE, "dense": REWRITTEN}.get(op)
        out = np.zeros(SHAPE, "i4") if out is None else out.copy()
    elif case.window == "in_hold":  # B, then A (a chunk of fill values)
        out = INIT.copy()
        out[_region((0, 0))] = 0
    else:  # one chunk each (B's first write of the shard, or its append)
        out = np.zeros(SHAPE, "i4")
        out[_region(A_CHUNK)] = A_VALUE
        if case.window == "in_append":
            out[_region((0, 0))] = 100
    out[_region(B_CHUNK)] = B_VALUE
    return out


def _run(tmp_path: Path, case: Case) -> tuple[list[dict[str, Any]], str | None]:
    """Run B and A on a fresh root; their reports, and what stock zarr reads
    wrong against :func:`_serial` (None: nothing)."""
    root = tmp_path / "root"
    reports = run_workers(_worker, 2, str(root), case, SPAWN.Barrier(2))
    expected = _serial(case)
    try:
        with zarr.config.set(STOCK):
            found = zarr.open_array(LocalStore(str(root)), mode="r")[:]
    except Exception as e:
        return reports, f"stock zarr cannot read the array: {e!r}"
    if np.array_equal(found, expected):
        return reports, None
    wrong = [
        f"chunk {c}: {found[_region(c)][0, 0]} (serial: {expected[_region(c)][0, 0]})"
        for c in itertools.product(range(4), range(4))
        if not np.array_equal(found[_region(c)], expected[_region(c)])
    ]
    return reports, "; ".join(wrong)


def _check(tmp_path: Path, case: Case) -> None:
    (b, a), wrong = _run(tmp_path, case)
    assert b["stopped"] == 1
    assert "raised" not in b, b["raised"]
    assert wrong is None, wrong
    assert b["alone"] == case.alone, b  # the window ran as meant
    if case.map_writes:
        assert b["mapped"], b
    if case.window in A_WAITS:
        assert a["waited"], "A did not wait for B"


def _check_control(tmp_path: Path, case: Case) -> None:
    (b, _), wrong = _run(tmp_path, case)
    assert b["stopped"] == 1
    assert "raised" in b or wrong is not None, "the control left a serial order's values"
    print(case, "->", b.get("raised") or wrong)


# --------------------------------------------------------------- the windows


#: (a_op, b_how) of the windows in which A and B write one chunk each (B's
#: first write of the shard, or its append): both by write_chunk, then each
#: of them once by the pipeline instead.
ONE_CHUNK_EACH = [("chunk_writer", "writer"), ("chunk_plain", "writer"), ("chunk_writer", "plain")]


@pytest.mark.parametrize(
    ("a_op", "b_how", "map_writes", "alone"),
    [
        ("compacting", "writer", False, False),
        ("compacting", "writer", False, True),
        ("stock", "writer", False, False),
        ("delete", "writer", False, False),
        ("dense", "writer", False, False),
        ("dense", "writer", True, False),
        ("compacting", "writer", True, False),
        ("compacting", "plain", False, False),
        ("delete", "plain", False, False),
    ],
)
def test_a_chunk_write_stopped_between_its_index_and_its_lock_writes_into_the_shard_as_rewritten(
    a_op: str, b_how: str, map_writes: bool, alone: bool, tmp_path: Path
) -> None:
    _check(tmp_path, Case("before_hold", a_op, b_how, map_writes, alone))


@pytest.mark.parametrize(
    ("b_how", "map_writes", "alone"),
    [
        ("writer", False, False),
        ("writer", False, True),
        ("writer", True, False),
        ("writer", True, True),
        ("plain", False, False),
    ],
)
def test_a_rewrite_of_a_shard_waits_for_a_chunk_write_in_flight_in_another_process(
    b_how: str, map_writes: bool, alone: bool, tmp_path: Path
) -> None:
    _check(tmp_path, Case("in_hold", "fill_then_sweep", b_how, map_writes, alone))


@pytest.mark.parametrize(("a_op", "b_how"), ONE_CHUNK_EACH)
def test_a_first_write_stopped_before_its_lock_finds_the_shard_another_process_laid_out(
    a_op: str, b_how: str, tmp_path: Path
) -> None:
    _check(tmp_path, Case("before_cold", a_op, b_how))


@pytest.mark.parametrize(("a_op", "b_how"), ONE_CHUNK_EACH)
def test_a_first_write_waits_for_another_process_laying_the_shard_out(
    a_op: str, b_how: str, tmp_path: Path
) -> None:
    _check(tmp_path, Case("in_cold", a_op, b_how))


@pytest.mark.parametrize(("a_op", "b_how"), ONE_CHUNK_EACH)
def test_an_append_waits_for_another_process_holding_the_compressed_shards_index(
    a_op: str, b_how: str, tmp_path: Path
) -> None:
    _check(tmp_path, Case("in_append", a_op, b_how))


# --------------------------------------------------------------- controls


@pytest.mark.parametrize(
    "case",
    [
        Case("before_hold", "compacting"),
        Case("before_hold", "dense", map_writes=True),
        Case("before_hold", "delete"),
        Case("before_hold", "compacting", "plain"),
        Case("in_hold", "fill_then_sweep"),
        Case("in_hold", "fill_then_sweep", alone=True),
        Case("in_hold", "fill_then_sweep", map_writes=True, alone=True),
        Case("before_cold", "chunk_writer"),
        Case("before_cold", "chunk_writer", "plain"),
        Case("in_cold", "chunk_writer"),
        Case("in_append", "chunk_writer"),
        Case("in_append", "chunk_writer", "plain"),
    ],
    ids=str,
)
def test_control_each_window_loses_or_misplaces_a_write_without_its_check(
    case: Case, tmp_path: Path
) -> None:
    _check_control(tmp_path, dataclasses.replace(case, control=True))


# ------------------------------------------------- a writer killed mid-change

_KILLED_AFTER_ITS_RENAME = """
import os, signal, sys
import numpy as np, zarr
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _backends

publish = _backends.publish

def publish_then_die(*args):
    publish(*args)  # the new shard renamed over the key, the lock still held
    os.kill(os.getpid(), signal.SIGKILL)

_backends.publish = publish_then_die
with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
    arr = zarr.open_array(RangeLockedStore(LocalStore(sys.argv[1])), mode="r+")
new = np.zeros((16, 16), "i4")
new[12:16, 12:16] = 55
arr[:, :] = new
"""


def _a_writer_then_another_killed(
    script: str, zstd: bool, root: Path, monkeypatch: pytest.MonkeyPatch
) -> ShardWriter:
    """The set-up of the two tests below: this process writes the shard
    (its index kept: dense, validated in ``_VALID``; zstd, in ``_INDEXES``)
    and chunk B_CHUNK again through a ``ShardWriter``, which it returns;
    another process then runs ``script`` on ``root`` and is killed by it.
    The descriptor cache's re-check window is made wide (the writes of a
    writer streaming chunks, within 10 ms of each other)."""
    store = RangeLockedStore(LocalStore(str(root)))
    with zarr.config.set(OURS):
        arr = zarr.create_array(
            store,
            shape=SHAPE,
            shards=SHAPE,
            chunks=CHUNK,
            dtype="i4",
            fill_value=0,
            compressors=ZstdCodec() if zstd else None,
        )
    arr[:, :] = INIT
    writer = ShardWriter(arr)
    writer.write_chunk(B_CHUNK, _block(111))
    monkeypatch.setattr(_backends, "FD_REVALIDATE_S", 3600.0)
    env = child_env()
    killed = subprocess.run([sys.executable, "-c", script, str(root)], env=env, timeout=50)
    assert killed.returncode == -signal.SIGKILL
    return writer


@pytest.mark.parametrize("zstd", [False, True], ids=["dense", "zstd"])
def test_a_shard_replaced_by_a_writer_killed_right_after_its_rename_is_written_by_its_new_index(
    zstd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process writes a chunk of a shard (dense: its index validated in
    # _VALID; zstd: kept in _INDEXES). Another process compacts the shard
    # (our pipeline, the whole shard with one chunk of data) and is killed
    # just after its rename, its lock let go by the kill. This process then
    # writes the chunk again, within 10 ms of its last look at the path
    # (the window made wide: the writes of a writer streaming chunks).
    # Before the stamp moved ahead of the rename too, nothing told it the
    # shard was replaced: it wrote into the old file by the old index, and
    # the chunk was lost.
    root = tmp_path / "root"
    writer = _a_writer_then_another_killed(_KILLED_AFTER_ITS_RENAME, zstd, root, monkeypatch)
    writer.write_chunk(B_CHUNK, _block(B_VALUE))
    expected = SPARSE.copy()
    expected[_region(B_CHUNK)] = B_VALUE
    with zarr.config.set(STOCK):
        found = zarr.open_array(LocalStore(str(root)), mode="r")[:]
    np.testing.assert_array_equal(found, expected)


_KILLED_AFTER_ITS_DELETE_DIR = """
import asyncio, os, signal, sys
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store._backends import LocalBackend

delete_dir = LocalBackend.delete_dir  # (the files' removal, in the library's worker)

async def delete_dir_then_die(self, prefix):
    await delete_dir(self, prefix)  # the shards gone, the prefix lock still held
    os.kill(os.getpid(), signal.SIGKILL)

LocalBackend.delete_dir = delete_dir_then_die
asyncio.run(RangeLockedStore(LocalStore(sys.argv[1])).delete_dir("c"))
"""


@pytest.mark.parametrize("zstd", [False, True], ids=["dense", "zstd"])
def test_a_shard_removed_by_a_delete_dir_killed_right_after_it_is_written_anew(
    zstd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the test above, for a prefix: another process removes every shard
    # (delete_dir("c")) and is killed just after, its prefix lock let go by
    # the kill. This process, within 10 ms of its last look at the shard's
    # path, then writes the chunk again: the shard must be made anew with
    # it. Before the epoch moved ahead of the removal too, nothing told this
    # process the files were gone: it wrote into the unlinked file it had
    # open by the old index, and the chunk was lost.
    root = tmp_path / "root"
    writer = _a_writer_then_another_killed(_KILLED_AFTER_ITS_DELETE_DIR, zstd, root, monkeypatch)
    assert not (root / "c").exists() or not any((root / "c").rglob("*"))
    writer.write_chunk(B_CHUNK, _block(B_VALUE))
    expected = np.zeros(SHAPE, "i4")
    expected[_region(B_CHUNK)] = B_VALUE
    with zarr.config.set(STOCK):
        found = zarr.open_array(LocalStore(str(root)), mode="r")[:]
    np.testing.assert_array_equal(found, expected)
