"""Helpers for tests that run other processes: ask one about a lock, run
spawned workers together."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore

if TYPE_CHECKING:
    from distributed import Client

_TRY_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import LockTimeout, RangeLockedStore
    root, key, start, end = sys.argv[1:5]
    store = RangeLockedStore(LocalStore(root))
    try:
        with store.locked_sync(key, [(int(start), int(end))], timeout=0.05):
            print("granted")
    except LockTimeout:
        print("busy")
    """
)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter: this one's, with this one's
    import path as its ``PYTHONPATH`` (so it imports the same
    ``zarr_rangelock`` and ``tests``), and ``extra``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **extra)


def python_output(code: str, *args: str, timeout: float = 50) -> str:
    """What ``code`` prints, run by a fresh interpreter of this Python with
    ``args`` (it must exit cleanly within ``timeout`` seconds)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


def try_in_another_process(root: Path, key: str, start: int, end: int) -> str:
    """Whether another process, through its own store of ``root``, gets
    ``[start, end)`` of ``key`` within 50 ms: ``"granted"`` or ``"busy"``."""
    out = subprocess.run(
        [sys.executable, "-c", _TRY_CHILD, str(root), key, str(start), str(end)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


_PRESENT_CHILD = textwrap.dedent(
    """
    import sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    store = RangeLockedStore(LocalStore(sys.argv[1]))
    with store.locked_sync("another process's key", [(0, 1)]):
        print("present", flush=True)
        sys.stdin.readline()
    """
)


@contextlib.contextmanager
def present_in_another_process(root: Path) -> Iterator[None]:
    """While inside: another process locks in ``root`` (holds a range of a
    key of its own), so no process there is alone (``locks/_oslock``: a
    process alone takes no OS lock for a token hold)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRESENT_CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "present\n"
        yield
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0


SPAWN = multiprocessing.get_context("spawn")

# Deadlines that only catch hangs; a healthy test ends long before them. All
# workers of a test must report within RUN_TIMEOUT and exit within JOIN_GRACE
# more, which keeps every test under its 60 s pytest timeout.
BARRIER_TIMEOUT = 30.0
RUN_TIMEOUT = 40.0
JOIN_GRACE = 5.0


def _report(fn: Callable[..., object], worker: int, results: Any, args: tuple[Any, ...]) -> None:
    """Child entry point: run ``fn(worker, *args)``, put ``(worker, ok, payload)``.

    The payload is ``fn``'s result, or the formatted traceback if it raised;
    then the child exits with code 1 and aborts every barrier among ``args``
    so that siblings waiting for it fail at once.
    """
    try:
        value = fn(worker, *args)
    except BaseException:
        for arg in args:
            if isinstance(arg, Barrier):
                arg.abort()
        results.put((worker, False, traceback.format_exc()))
        raise SystemExit(1) from None
    results.put((worker, True, value))


def run_workers(fn: Callable[..., object], n: int, *args: Any) -> list[Any]:
    """Run ``fn(worker, *args)`` for ``worker`` in ``range(n)``, each in a spawned
    process; return their results in worker order.

    Fails the test, naming the worker, if any worker raised (with its
    traceback), did not report, did not end within the deadline (it is then
    terminated), or exited with a non-zero code.
    """
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_report, args=(fn, w, results, args), name=f"{fn.__name__}-{w}", daemon=True
        )
        for w in range(n)
    ]
    for p in procs:
        p.start()
    reports: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        # Drain the queue before joining: a child does not exit until what it
        # put has been flushed into the pipe.
        while len(reports) < n and time.monotonic() < deadline:
            try:
                worker, ok, payload = results.get(timeout=0.1)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break  # all gone; whoever did not report died without a word
                continue
            reports[worker] = (ok, payload)
    finally:
        exit_by = max(deadline, time.monotonic()) + JOIN_GRACE
        for p in procs:
            p.join(max(0.0, exit_by - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.terminate()  # only our own children, by their Process object
            p.join(JOIN_GRACE)
        results.close()
    problems = [f"worker {p.name} hung and was terminated" for p in hung]
    for w, p in enumerate(procs):
        if w not in reports:
            problems.append(f"worker {p.name} never reported (exit code {p.exitcode})")
        elif not reports[w][0]:
            problems.append(f"worker {p.name} raised:\n{reports[w][1]}")
        elif p.exitcode != 0:
            problems.append(f"worker {p.name} exited with code {p.exitcode}")
    if problems:
        # A sibling's BrokenBarrierError is only the echo of the real failure: list it last.
        problems.sort(key=lambda line: "BrokenBarrierError" in line)
        pytest.fail("\n".join(problems), pytrace=False)
    return [reports[w][1] for w in range(n)]


@contextlib.contextmanager
def dask_workers(env: dict[str, str]) -> Iterator[Client]:
    """A client of a dask ``LocalCluster`` of two worker processes of two
    threads each, ``env`` in the workers' environment (as a user sets it)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            # No dashboard, and the scheduler's other HTTP routes on a free port
            # rather than 8787, so that test runs side by side do not collide.
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
            silence_logs=logging.ERROR,
            env=env,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def assert_both_workers_ran(stream: list[dict[str, Any]], task: str = "store") -> None:
    """The tasks of ``stream`` (``get_task_stream``'s data) whose key names
    ``task`` ran on both workers."""
    workers = {t["worker"] for t in stream if task in str(t["key"])}
    assert len(workers) == 2, f"the {task} tasks ran on {sorted(workers)} only"


def colliding_keys(prefix: str) -> tuple[str, str]:
    """Two keys ``prefix/<n>`` whose slots of the lock file collide
    (``locks/_oslock``: requests of one process for them rely on each
    other's holds, and other processes' wait)."""
    from zarr_rangelock.locks._lockfile import key_slot

    seen: dict[int, str] = {}
    for n in itertools.count():
        key = f"{prefix}/{n}"
        first = seen.setdefault(key_slot(key), key)
        if first != key:
            return first, key
    raise AssertionError("unreachable")


def locked_local_store(
    root: str | Path,
    cross_process: bool | None = None,
    durability: str = "none",
    map_writes: bool = False,
    dense_shards: bool = False,
) -> RangeLockedStore:
    """A ``RangeLockedStore`` on a LocalStore at ``root`` (with ``durability``,
    ``map_writes`` and ``dense_shards``).

    ``cross_process=None`` builds the store as users do, with the default
    (cross-process locks on); ``False`` asks for in-process locks only.
    """
    inner = LocalStore(root)
    options: dict[str, Any] = {"durability": durability, "map_writes": map_writes}
    options["dense_shards"] = dense_shards
    if cross_process is not None:
        options["cross_process"] = cross_process
    return RangeLockedStore(inner, **options)
