"""The byte mode's ops on whole keys: ``exists``, ``getsize`` and the listings.

Written only as coroutines (zarr's stores have them only async), registered
with :func:`stress.ops.register_async`: threads run them on zarr's loop, as
zarr's sync front end does. A key found absent is checked as a read that
found it absent (``missing_key`` if no delete could explain it); a listing
must hold the load's keys only, each at most once (:func:`check_listing`).
"""

from __future__ import annotations

from stress.ops import (
    KEY_DIR,
    MISSING_ERRORS,
    ByteWorker,
    await_timed,
    check_listing,
    register_async,
)
from stress.records import Violation

__all__: list[str] = []


def _absent(w: ByteWorker, key: str, t0: int, t1: int, kind: str) -> None:
    """``key`` was found absent between ``t0`` and ``t1`` (checked as a read)."""
    w.read(key, 0, 0, None, t0, t1, kind)


async def _exists(w: ByteWorker) -> None:
    key = w.key()
    found, t0, t1, exc = await await_timed(w.target.exists(key))
    if exc is not None:
        w.error("exists", key, exc)
        return
    w.timed("exists", t0, t1)
    if not found:
        _absent(w, key, t0, t1, "exists")


async def _getsize(w: ByteWorker) -> None:
    key = w.key()
    size, t0, t1, exc = await await_timed(w.target.getsize(key))
    if exc is not None and not isinstance(exc, MISSING_ERRORS):
        w.error("getsize", key, exc)
        return
    w.timed("getsize", t0, t1)
    if exc is not None:
        _absent(w, key, t0, t1, "getsize")
    elif size != w.value_size:
        detail = f"getsize returned {size:,} bytes; every value of the load has {w.value_size:,}"
        w.errors.append(Violation("corrupt", key, 0, w.value_size, None, None, detail, "getsize"))


async def _list(w: ByteWorker) -> None:
    how = w.rng.choice(("list", "list_prefix", "list_dir"))
    prefix = KEY_DIR + ("/" if how == "list_prefix" else "")
    names, t0, t1, exc = await await_timed(w.target.listing(how, prefix))
    if exc is not None:
        w.error(how, prefix, exc)
        return
    assert names is not None  # it returned, so with its list
    w.timed("list", t0, t1)
    listed = [f"{KEY_DIR}/{n}" for n in names] if how == "list_dir" else names
    call = f"{how}({'' if how == 'list' else repr(prefix)})"
    counts = check_listing(w, how, call, listed, w.key_set)
    for key in w.keys:
        if key not in counts:
            _absent(w, key, t0, t1, how)


register_async("exists", 2, _exists, "exists of a key (False: checked as a read finding it absent)")
register_async(
    "getsize",
    2,
    _getsize,
    "getsize of a key: the value size, or absent (checked as a read finding it absent)",
)
register_async(
    "list",
    2,
    _list,
    "list(), list_prefix('stress/') or list_dir('stress'): exactly the load's keys, "
    "each at most once; a key left out is checked as a read finding it absent",
)
