"""Inspection of a lock table: its counters (``snapshot``), its invariants
(``check``) and a readable dump.

Kept apart from the table (``_table``), which it only reads, under the
table's mutex. Tests call ``check`` after every step; the stress runner
prints ``dump`` when a run hangs.
"""

from __future__ import annotations

import threading
from typing import Protocol

from ._grant import _HELD, _WAITING, TOKENS_MAX, Grant, LockStats, _conflict, _Token
from ._oslock import OsLocks
from ._queue import KeyQueue, expected_blockers, is_barrier


class _Table(Protocol):
    """What inspection reads of a :class:`~zarr_rangelock.RangeLockManager`."""

    _mutex: threading.Lock
    _keys: dict[str, KeyQueue | Grant | list[_Token]]
    _promoted: dict[int, Grant]
    _prefixes: list[Grant]
    _holders: int
    _waiters: int
    _grants: int
    _waits: int
    _timeouts: int
    _cancellations: int
    _total_wait: float
    _max_wait: float
    _max_depth: int
    _os: OsLocks | None


__all__ = ["Inspection", "check", "dump", "snapshot"]


def snapshot(self: _Table) -> LockStats:
    """The table's counters, read together under its mutex."""
    with self._mutex:
        return LockStats(
            grants=self._grants,
            waits=self._waits,
            timeouts=self._timeouts,
            cancellations=self._cancellations,
            total_wait_s=self._total_wait,
            max_wait_s=self._max_wait,
            holders=self._holders,
            waiters=self._waiters,
            keys=len(self._keys) + len({p._key for p in self._prefixes}),
            max_queue_depth=self._max_depth,
            os_waits=0 if self._os is None else self._os.waits,
            os_wait_s=0.0 if self._os is None else self._os.wait_s,
        )


def dump(self: _Table) -> list[str]:
    """One line per live request, oldest first (for hang reports and debugging)."""
    with self._mutex:
        live: list[Grant] = list(self._prefixes)
        tokens: list[str] = []
        for key, st in self._keys.items():
            if isinstance(st, Grant):
                live.append(st)
            elif type(st) is list:
                tokens.extend(
                    f"#{t[2]} key={key!r} range=[{t[0]}, {t[1]}) exclusive held (token)" for t in st
                )
            else:
                assert type(st) is KeyQueue
                live.extend(st.entries())
    live.sort(key=lambda g: g._seq)
    return tokens + [
        f"#{g._seq} {g!r} blocked by {g._nblockers}, blocking {len(g._blocks or ())}" for g in live
    ]


def check(self: _Table, *, idle: bool = False) -> None:
    """Assert every internal invariant (for tests; ``O(n^2)`` in entries).

    Beyond each key queue's structure (:meth:`KeyQueue.check`): no held
    entry has an earlier conflicting one; a queued entry's blocker count and
    the waiter lists agree with the queue's rule; and that rule loses no
    earlier conflicting entry.

    With ``idle`` (nothing is being acquired or released anywhere), also
    assert that every held grant was handed over to its caller.
    """
    with self._mutex:
        live: list[Grant] = list(self._prefixes)
        ntokens = 0
        for key, st in self._keys.items():
            if type(st) is list:
                for p in self._prefixes:
                    assert not key.startswith(p._key), f"tokens {st} on {key!r} under {p!r}"
                assert 0 < len(st) <= TOKENS_MAX, st
                for i, tk in enumerate(st):
                    assert tk[0] < tk[1], tk
                    for tj in st[:i]:
                        assert not (tj[0] < tk[1] and tk[0] < tj[1]), f"{tj} and {tk} overlap"
                ntokens += len(st)
                continue
            if isinstance(st, Grant):
                assert st._key == key and st._state == _HELD, st
                live.append(st)
                continue
            assert type(st) is KeyQueue and st.n > 0, f"empty state left for key {key!r}"
            live.extend(st.check(key))  # the segments' own invariants
        live.sort(key=lambda g: g._seq)
        holders = waiters = 0
        for i, g in enumerate(live):
            assert g._state in (_WAITING, _HELD), g
            earlier = [o for o in live[:i] if _conflict(o, g)]
            if g._state == _HELD:
                holders += 1
                assert not idle or g._holder is not None, (
                    f"{g!r} is held but was never handed to its caller (an exception "
                    "between grant and hand-over?): nobody will release it"
                )
                # FIFO: held only once every earlier conflicting entry is gone
                assert not earlier, f"{g!r} is held while earlier {earlier[0]!r} conflicts"
                continue
            waiters += 1
            # What it waits for: every earlier conflicting entry (a prefix
            # lock), or, on a key, the entries the KeyQueue rule names and
            # every earlier conflicting prefix lock.
            if g._prefix:
                expected = earlier
            else:
                expected = expected_blockers(g)
                expected += [p for p in earlier if p._prefix]
            assert g._nblockers == len(expected) > 0, (g, g._nblockers, expected)
            for o in expected:
                assert _conflict(o, g) and o._seq < g._seq, (o, g)
                assert g in (o._blocks or ()), f"{o!r} does not list its waiter {g!r}"
            # ... and that is enough: an earlier conflicting entry it does not
            # wait for directly comes before a barrier it waits for (which
            # conflicts with it too, and waits for it, by the same rule).
            barriers = [b._seq for b in expected if is_barrier(b) and b._key == g._key]
            for o in earlier:
                if o not in expected:
                    assert barriers and o._seq < max(barriers), f"{g!r} overtakes {o!r}"
        for g in self._promoted.values():
            assert g._state == _HELD and self._keys.get(g._key) is not None, g
        assert holders + ntokens == self._holders, (holders, ntokens, self._holders)
        assert waiters == self._waiters, (waiters, self._waiters)


class Inspection:
    """Mixin of :class:`~zarr_rangelock.RangeLockManager`: its inspection
    methods, this module's functions."""

    def stats(self: _Table) -> LockStats:
        """Return a snapshot of the counters (see :class:`LockStats`)."""
        return snapshot(self)

    def _dump(self: _Table) -> list[str]:
        """One line per live request, oldest first (for hang reports and debugging)."""
        return dump(self)

    def _check(self: _Table, *, idle: bool = False) -> None:
        """Assert every internal invariant (for tests; ``O(n^2)`` in entries).

        ``idle=True`` (no acquire or release running on any thread or task)
        also asserts that every held grant was handed to its caller: a grant
        made but never handed over (lost between "granted" and "the caller's
        ``with`` owns it") is held by nobody and would block its ranges forever.
        """
        check(self, idle=idle)
