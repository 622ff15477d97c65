"""The byte mode's ops on whole keys: ``exists``, ``getsize``, the listings,
``set_if_not_exists``, ``delete_dir`` and ``clear``.

Written only as coroutines (zarr's stores have them only async), registered
with :func:`stress.ops.register_async`: threads run them on zarr's loop, as
zarr's sync front end does. A key found absent is checked as a read that
found it absent (``missing_key`` if no delete could explain it); a listing
must hold the load's keys only, each at most once (:func:`check_listing`).
A ``set_if_not_exists`` is recorded with status ``IF_ABSENT``: never
demanded, and its bytes are a ``phantom_read`` wherever the key surely
existed throughout its call (:mod:`stress.oracle`). A ``delete_dir`` of
the load's directory, or a ``clear()``, is a delete of every key, each
within the call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from stress.ops import (
    KEY_DIR,
    MISSING_ERRORS,
    ByteWorker,
    await_timed,
    check_listing,
    now,
    register_async,
)
from stress.records import IF_ABSENT, Violation

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


async def _set_if_not_exists(w: ByteWorker) -> None:
    """Half the time delete the key first (the set then finds it absent, unless
    another writer made it again meanwhile); then ``set_if_not_exists`` of a
    whole new value, which must write if and only if the key is absent."""
    key = w.key()
    whole = [(0, w.value_size)]
    first = w.rng.random() < 0.5
    d_wid = w.new_write(whole) if first else 0
    s_wid = w.new_write(whole)
    if first:
        w.intend(key, d_wid, "delete", whole, delete=True)
    w.intend(key, s_wid, "set_if_not_exists", whole)
    buf = w.payload(s_wid, 0, w.value_size)
    t0 = now()
    if first:
        _, _, t1, exc = await await_timed(w.target.delete(key))
        w.wrote(key, d_wid, "delete", whole, t0, t1, exc, delete=True)
        if exc is not None:
            w.cancel(s_wid)
            return
    _, t_set, t_end, exc = await await_timed(w.target.set_if_not_exists(key, buf))
    w.timed("set_if_not_exists", t0, t_end)
    w.wrote(key, s_wid, "set_if_not_exists", whole, t_set, t_end, exc, returned=IF_ABSENT)


async def _remove_all(
    w: ByteWorker, kind: str, what: str, remove: Callable[[], Awaitable[None]]
) -> None:
    """``remove()`` every key at once (``kind``: ``delete_dir`` or ``clear``;
    ``what`` names the call for an error), each key's delete checked as one
    within the call; then a ``set`` of each key again, in order."""
    whole = [(0, w.value_size)]
    deletes = {key: w.new_write(whole) for key in w.keys}
    sets = {key: w.new_write(whole) for key in w.keys}
    for key in w.keys:
        w.intend(key, deletes[key], kind, whole, delete=True)
        w.intend(key, sets[key], "set", whole)
    bufs = {key: w.payload(sets[key], 0, w.value_size) for key in w.keys}
    _, t0, t1, exc = await await_timed(remove())
    if exc is not None:
        w.error(kind, what, exc)  # once; each key's delete is a failed one
    for key in w.keys:
        w.wrote(key, deletes[key], kind, whole, t0, t1, exc, delete=True, noted=True)
        if exc is not None:
            w.cancel(sets[key])
    if exc is not None:
        return
    t_end = t1
    for key in w.keys:
        _, t_set, t_end, exc = await await_timed(w.target.set(key, bufs[key]))
        w.wrote(key, sets[key], "set", whole, t_set, t_end, exc)
    w.timed(kind, t0, t_end)


async def _delete_dir(w: ByteWorker) -> None:
    """``delete_dir`` of the load's directory (others see its keys absent)."""
    await _remove_all(w, "delete_dir", KEY_DIR, lambda: w.target.delete_dir(KEY_DIR))


async def _clear(w: ByteWorker) -> None:
    """``clear()`` of the whole store (on a journal store beside replays: its
    prefix lock of the root covers the journal's name)."""
    await _remove_all(w, "clear", "(the store)", w.target.clear)


register_async(
    "set_if_not_exists",
    2,
    _set_if_not_exists,
    "set_if_not_exists of a whole new value, half the time right after a delete of the "
    "key: it writes if and only if the key is absent (its bytes where the key surely "
    "existed are a phantom_read)",
)
register_async(
    "delete_dir",
    0.5,
    _delete_dir,
    "delete_dir('stress'): every key at once, then a set of each again (others see "
    "them absent meanwhile)",
)
register_async(
    "clear",
    0.2,
    _clear,
    "clear() of the store: every key at once (the lock file and the journal stay), then "
    "a set of each again",
)
