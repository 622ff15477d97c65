"""The process of ``test_processes_killed_after_each_change.py`` that kills itself.

:func:`run` makes one change to a root (the operation ``spec["op"]``) with
``os.replace``, ``os.rename``, ``os.unlink``, ``os.remove``, ``os.pwrite``
and ``os.pwritev`` wrapped (and, with ``spec["map_writes"]``, the store's
copies into a mapping of a file, ``_backends._write_mapped``): the
``spec["kill_at"]``-th of them that touches a file of ``spec["keys"]`` is
followed at once by a SIGKILL of the process.
It runs in a child forked by :func:`tests._forked.run` from a server that
imported this module (numpy, zarr and the library with it) once: a fresh
interpreter for every kill point spent most of the module's time importing
them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._shard_helpers import OURS
from zarr_rangelock import RangeLockedStore, ShardWriter
from zarr_rangelock.store import _backends


def run(root: str, spec: dict[str, Any]) -> dict[str, int]:
    """Run ``spec``'s operation on ``root``; unless killed, the count of
    changes it made to the keys' files (``changes``), and of those that
    were copies into a mapping of the file (``mapped``: with
    ``spec["map_writes"]``)."""
    root = os.path.realpath(root)
    zarr.config.set(OURS)
    files = {os.path.join(root, key) for key in spec["keys"]}
    backend = _backends.LocalBackend
    if spec["control"]:  # no stamp before a change
        backend.replacing = lambda self, key: None  # type: ignore[method-assign]
        backend.removing_prefix = lambda self: None  # type: ignore[method-assign]
        backend.bump = lambda self, key: None  # type: ignore[method-assign]
    if spec.get("no_forget"):  # no stamp after a change, nor a handle's before a commit
        backend.forget = lambda self, key: None  # type: ignore[method-assign]
    changes, mapped = [0], [0]

    def where(path: Any, dir_fd: int | None) -> str:
        path = os.fsdecode(path)
        if dir_fd is not None:  # (shutil.rmtree's calls)
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.realpath(path)

    def changed() -> None:  # a key's file changed: killed if it is the n-th change
        changes[0] += 1
        if changes[0] == spec["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)

    def killed_after(call: Callable[..., Any], paths: int) -> Callable[..., Any]:
        def wrapped(*args: Any, **kw: Any) -> Any:
            out = call(*args, **kw)
            if {where(p, kw.get("dir_fd")) for p in args[:paths]} & files:
                changed()
            return out

        return wrapped

    def killed_after_writing(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(fd: int, *args: Any) -> Any:  # an in-place write into a key's file
            out = call(fd, *args)
            if where(f"/proc/self/fd/{fd}", None) in files:
                changed()
            return out

        return wrapped

    def killed_after_copying(copy: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(m: Any, *args: Any) -> Any:  # into a mapping: of the op's shard alone
            out = copy(m, *args)
            mapped[0] += 1
            changed()
            return out

        return wrapped

    _backends._write_mapped = killed_after_copying(_backends._write_mapped)
    os.replace, os.rename = killed_after(os.replace, 2), killed_after(os.rename, 2)
    os.unlink, os.remove = killed_after(os.unlink, 1), killed_after(os.remove, 1)
    os.pwrite, os.pwritev = killed_after_writing(os.pwrite), killed_after_writing(os.pwritev)
    store = RangeLockedStore(  # (replays)
        LocalStore(root),
        durability=spec["durability"],
        dense_shards=spec["dense"],
        map_writes=spec.get("map_writes", False),
    )
    op = spec["op"]
    if op == "set":
        store.set_sync("k", cpu.Buffer.from_bytes(b"n" * 80))
    elif op == "delete":
        store.delete_sync("k")
    elif op == "delete_dir":
        asyncio.run(store.delete_dir("d"))
    elif op == "delete of a directory":
        store.delete_sync("d")
    elif op == "clear":
        asyncio.run(store.clear())
    elif op == "compaction":  # incompressible values: the shard is compacted
        arr = zarr.open_array(store, mode="r+")
        arr[64:128] = np.random.default_rng(0).integers(0, 2**31, 64, dtype="i4")
    elif op == "ShardWriter compaction":
        arr = zarr.open_array(store, mode="r+")
        noise = np.random.default_rng(0).integers(0, 2**31, 64, dtype="i4")
        ShardWriter(arr).write_chunk((1,), noise)
    elif op == "append":  # chunk 1 into the shard's free space, its index re-pointed
        arr = zarr.open_array(store, mode="r+")
        arr[64:128] = 11
    elif op == "ShardWriter append":
        arr = zarr.open_array(store, mode="r+")
        ShardWriter(arr).write_chunk((1,), np.full(64, 11, "i4"))
    elif op == "new dense shard":  # chunk 1 of shard c/1, not there yet: laid out densely
        arr = zarr.open_array(store, mode="r+")
        ShardWriter(arr).write_chunk((5,), np.full(64, 11, "i4"))
    elif op == "fill shards":  # both shards all fill: deleted, in one call
        arr = zarr.open_array(store, mode="r+")
        arr[:] = 0
    elif op.startswith("whole"):  # both shards' whole values set, in one call
        arr = zarr.open_array(store, mode="r+")
        arr[:] = 2
    elif op != "replay":  # (a replay is the store's opening, above)
        raise ValueError(f"no operation {op!r}")
    return {"changes": changes[0], "mapped": mapped[0]}
