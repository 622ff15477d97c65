"""The lock table's fast path for the store's writes: holds too cheap to be Grants.

See the lock table's design note (``_table``): a key held only by the store's
``set_range`` writes (and the shard writer's writes of one chunk in place,
``shards/_fastpaths._put_one``) on disjoint ranges maps to a list of
``(start, end, seq)`` *tokens*; anyone else who needs the key first turns
them into held Grants (:meth:`TokenHolds._promote`). Kept apart from the
general queue, which it only joins through ``_promote``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ._grant import _HELD, TOKENS_MAX, Grant, _Token
from ._ki import protected
from ._mutex import wait_for
from ._oslock import OsLocks
from ._presence import ELIDED
from ._queue import KeyQueue

if TYPE_CHECKING:
    from ._grant import _Owner

__all__ = ["TokenHolds"]

type _TokenHold = tuple[_Token, int | None]
"""A hold of :meth:`TokenHolds._hold_if_free`: the token and the OS lock
held with it (an ``_oslock`` handle), if any."""


class TokenHolds:
    """Mixin of :class:`~zarr_rangelock.RangeLockManager`: the token fast path."""

    _mutex: threading.Lock
    _keys: dict[str, KeyQueue | Grant | list[_Token]]
    _promoted: dict[int, Grant]
    _prefixes: list[Grant]
    _seq: int
    _grants: int
    _holders: int
    _os: OsLocks | None

    def _insert(self, g: Grant) -> None:
        raise NotImplementedError  # the general queue's (RangeLockManager)

    # Both protected from KeyboardInterrupt (``_ki``): a token is never left
    # behind by an interrupt; one that arrives during the write is raised after.

    @protected
    def _run_if_free(
        self,
        key: str,
        start: int,
        end: int,
        fn: Callable[[str, memoryview, int], None],
        data: memoryview,
    ) -> bool:
        """Run ``fn(key, data, start)`` holding ``[start, end)`` of ``key``
        exclusively, if the key is free or held only by other such calls on
        disjoint ranges: then return True. Else run nothing and return False.
        The store's hot path (the caller has validated ``key``, ``start`` and
        ``end``): :meth:`_hold_if_free`, ``fn``, :meth:`_let_go`.
        """
        hold = self._hold_if_free(key, start, end)
        if hold is None:
            return False
        try:
            fn(key, data, start)
        finally:
            self._let_go(key, hold)
        return True

    @protected
    def _hold_if_free(self, key: str, start: int, end: int) -> _TokenHold | None:
        """Hold ``[start, end)`` of ``key`` exclusively if the key is free or
        held only by other token holds on disjoint ranges, and (with OS locks)
        no other process holds the range: the hold, to give to
        :meth:`_let_go`. Else None, nothing held. Never waits. The caller has
        validated ``key``, ``start`` and ``end``, and runs protected from
        KeyboardInterrupt (``_ki``) from here to its ``_let_go``.

        The hold is a :data:`_Token`, a tuple, not a :class:`Grant`: building
        a Grant costs more than the rest of the bookkeeping. A key held only
        by tokens maps to the list of them (at most :data:`TOKENS_MAX`; two
        threads writing disjoint chunks of one shard stay on this path).
        Whoever needs the key meanwhile (a request that must queue behind
        them, a prefix lock) first turns the tokens into held Grants
        (:meth:`_promote`); :meth:`_let_go` then finds its Grant and
        releases it normally.
        """
        mutex = self._mutex
        if not mutex.acquire(False):
            wait_for(mutex)
        keys = self._keys
        st = keys.get(key)
        if st is None and not self._prefixes:
            self._seq += 1
            token = (start, end, self._seq)
            keys[key] = [token]
        elif type(st) is list and len(st) < TOKENS_MAX:
            for t in st:
                if t[0] < end and start < t[1]:
                    mutex.release()
                    return None
            self._seq += 1
            token = (start, end, self._seq)
            st.append(token)
        else:
            mutex.release()
            return None
        self._grants += 1
        self._holders += 1
        mutex.release()
        os_locks = self._os
        if os_locks is None or (os_locks.stamps is None and not os_locks.ready()):
            return token, None  # (open: stamps set, ready() without the call)
        # Never wait here (this may run on an event loop, or inside the shard
        # writer's gate): if another process holds the range, the caller
        # takes the general path.
        try:
            # (OsLocks.try_token's elided case inlined: a process alone, the
            # common case, takes no OS lock; one call less a write.)
            presence = os_locks._presence
            if presence.alone and presence.try_elide():
                return token, ELIDED
            held = os_locks.try_token(key, start, end)
        except BaseException:
            self._drop_token(key, token)
            raise
        if held is None:
            self._drop_token(key, token)
            return None
        return token, held

    @protected
    def _let_go(self, key: str, hold: _TokenHold) -> None:
        """Release a hold of :meth:`_hold_if_free` (the OS lock first)."""
        token, held = hold
        try:
            if held == ELIDED:  # (OsLocks.release's first case inlined, as above)
                self._os._presence.let_go_elided()  # type: ignore[union-attr]  # held implies os_locks
            elif held is not None:
                self._os.release(held)  # type: ignore[union-attr]  # held implies os_locks
        finally:
            self._drop_token(key, token)

    @protected
    def _drop_token(self, key: str, token: _Token) -> None:
        """Release the token hold ``token`` of ``key`` (or the Grant it became)."""
        mutex = self._mutex
        if not mutex.acquire(False):
            wait_for(mutex)
        keys = self._keys
        st = keys.get(key)
        if type(st) is list and token in st:  # tokens are unique by seq
            if len(st) == 1:
                del keys[key]
            else:
                st.remove(token)
            self._holders -= 1
            mutex.release()
        else:
            promoted = self._promoted.pop(id(token))
            mutex.release()
            promoted._owner._release(promoted)

    def _promote(self, key: str) -> Grant | KeyQueue:
        """Replace the tokens holding ``key`` by equivalent held Grants (same
        ranges, same places in the queue); return the key's new entry. Under
        the mutex."""
        tokens = self._keys.pop(key)
        assert type(tokens) is list
        for token in tokens:
            start, end, seq = token
            g = Grant(cast("_Owner", self), key, ((start, end),), False)  # a RangeLockManager
            g._seq = seq
            g._state = _HELD
            g._holder = 0  # owned through the token (any thread may drop it)
            self._promoted[id(token)] = g
            if len(tokens) == 1:
                self._keys[key] = g
            else:
                self._insert(g)
        entry = self._keys[key]
        assert not isinstance(entry, list)
        return entry
