"""The children of the two kill matrices, run by :func:`tests._forked.run`.

``tests/test_processes_journal_kills.py``: :func:`journal_op` (process A,
killed by the testing hook at a point of its journaled commit, and process
C, which opens the root, replays and reads). ``tests/test_processes_kills_without_journal.py``:
:func:`write_and_die` (process A, killed by its own SIGKILL at a point of a
shard write) and :func:`open_and_read` (process C).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._shard_helpers import OURS
from zarr_rangelock import JournalWarning, RangeLockedStore, ShardWriter
from zarr_rangelock.store import _backends
from zarr_rangelock.store._faults import FAULT_ENV

#: The page size a kill between pages tears a write at
PAGE = 4096


def journal_op(root: str, spec: dict[str, Any], fault: str | None) -> dict[str, Any]:
    """Run ``spec`` on a journaled store of ``root``, killed by the testing
    hook at ``fault`` (if not None): a write of the array, a ``set_range``
    of a key, a read of the array or of a key's bytes. What it read, and
    the ``JournalWarning``s its store's open (a replay) gave."""
    if fault is None:
        os.environ.pop(FAULT_ENV, None)
    else:
        os.environ[FAULT_ENV] = fault  # (read at each commit)
    zarr.config.set(OURS)
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", JournalWarning)
        store = RangeLockedStore(LocalStore(root), durability="journal", dense_shards=spec["dense"])
        if spec["op"] == "write":
            lo, hi = spec["sel"]
            zarr.open_array(store, mode="r+")[lo:hi] = spec["value"]
        elif spec["op"] == "set_range":
            data = cpu.Buffer.from_bytes(bytes.fromhex(spec["hex"]))
            store.set_range_sync(spec["key"], data, spec["start"])
        elif spec["op"] == "read":
            out["read"] = zarr.open_array(store, mode="r")[:].tolist()
        else:
            with open(os.path.join(root, spec["key"]), "rb") as f:
                out["bytes"] = f.read().hex()
    out["warnings"] = [str(w.message) for w in seen]
    return out


def write_and_die(root: str, spec: dict[str, Any]) -> None:
    """Write as ``spec`` says (through the array, or a ``ShardWriter``'s
    ``write_chunks``) and kill this process at ``spec["kill"]``:
    ``before-write``, ``first-page`` or ``last-page`` of the ``spec["nth"]``-th
    range write of ``spec["length"]`` bytes (its bytes up to that page
    boundary written: what the kernel leaves when a fatal signal arrives
    during a ``pwrite`` of several pages, as it checks for one before each
    page), or ``before-rename`` of a temporary file (written and closed)."""
    zarr.config.set(OURS)
    kill, seen = spec["kill"], [0]
    write_range, publish = _backends._write_range, _backends.publish

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def write_then_die(fd: int, data: Any, start: int) -> None:
        if len(data) == spec.get("length") and kill != "before-rename":
            seen[0] += 1
            if seen[0] == spec.get("nth", 1):
                if kill == "before-write":
                    die()
                pages = range((start // PAGE + 1) * PAGE, start + len(data), PAGE)
                if not pages:
                    sys.exit(f"one page of {len(data)} bytes at {start}: a kill cannot tear it")
                cut = (pages[0] if kill == "first-page" else pages[-1]) - start
                write_range(fd, memoryview(data)[:cut], start)
                die()
        write_range(fd, data, start)

    def publish_or_die(*args: Any) -> None:
        if kill == "before-rename":
            die()
        publish(*args)

    _backends._write_range = write_then_die  # type: ignore[assignment]
    _backends.publish = publish_or_die
    store = RangeLockedStore(
        LocalStore(root), durability=spec["durability"], dense_shards=spec["dense"]
    )
    arr = zarr.open_array(store, mode="r+")
    value = spec["value"]
    if spec["api"] == "array":
        lo, hi = spec["sel"]
        if value == "random":  # incompressible: too big for the shard's free space
            value = np.random.default_rng(0).integers(0, 2**31, hi - lo, dtype="i4")
        arr[lo:hi] = value
    else:
        full = np.full(arr.chunks, value, "i4")
        ShardWriter(arr).write_chunks({(c,): full for c in spec["chunks"]})
    sys.exit("not killed: the write ended")


def open_and_read(root: str, durability: str, shard: int) -> dict[str, Any]:
    """Open ``root`` (with ``durability``) and read each of its two shards
    of ``shard`` elements: their values, or the ``ValueError`` met; and the
    keys the store lists."""
    zarr.config.set(OURS)
    store = RangeLockedStore(LocalStore(root), durability=durability)
    arr = zarr.open_array(store, mode="r")
    out: dict[str, Any] = {"shards": []}
    for s in range(2):
        try:
            out["shards"].append(arr[s * shard : (s + 1) * shard].tolist())
        except ValueError as exc:
            out["shards"].append("ValueError: " + str(exc))

    async def keys() -> list[str]:
        return sorted([k async for k in store.list()])

    out["keys"] = asyncio.run(keys())
    return out
