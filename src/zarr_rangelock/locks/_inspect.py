"""Inspection of a lock table: its invariants (``check``) and a readable dump.

Kept apart from the table (``_table``), which it only reads, under the
table's mutex. Tests call ``check`` after every step; the stress runner
prints ``dump`` when a run hangs.
"""

from __future__ import annotations

import threading
from typing import Protocol

from ._grant import _HELD, _WAITING, TOKENS_MAX, Grant, _conflict, _Token
from ._index import RangeIndex


class _Table(Protocol):
    """What inspection reads of a :class:`~zarr_rangelock.RangeLockManager`."""

    _mutex: threading.Lock
    _keys: dict[str, RangeIndex | Grant | list[_Token]]
    _promoted: dict[int, Grant]
    _prefixes: list[Grant]
    _holders: int
    _waiters: int


__all__ = ["check", "dump"]


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
                assert type(st) is RangeIndex
                live.extend({it[1]: it[3] for it in st.items()}.values())
    live.sort(key=lambda g: g._seq)
    return tokens + [
        f"#{g._seq} {g!r} blocked by {g._nblockers}, blocking {len(g._blocks or ())}" for g in live
    ]


def check(self: _Table, *, idle: bool = False) -> None:
    """Assert every internal invariant (for tests; ``O(n^2)`` in entries).

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
            assert type(st) is RangeIndex and len(st) > 0, f"empty state left for key {key!r}"
            seen: dict[int, Grant] = {}
            count = 0
            for s, seq, e, g in st.items():
                count += 1
                assert g._key == key and g._seq == seq and (s, e) in g._ranges
                seen[seq] = g
            assert count == sum(len(g._ranges) for g in seen.values())
            assert st.nwaiting == sum(g._state == _WAITING for g in seen.values())
            live.extend(seen.values())
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
                for o in earlier:
                    assert o._state != _HELD, f"conflicting holders {o!r} and {g!r}"
            else:
                waiters += 1
                assert g._nblockers == len(earlier) > 0, (g, g._nblockers, earlier)
                for o in earlier:
                    assert g in (o._blocks or ()), f"{o!r} does not list its waiter {g!r}"
            # overlap queries agree with brute force
            if not g._prefix and type(st := self._keys[g._key]) is RangeIndex:
                for s, e in g._ranges:
                    fast = {it[1] for it in st.overlapping(s, e)}
                    slow = {it[1] for it in st.items() if it[0] < e and s < it[2]}
                    assert fast == slow, (g, s, e)
        for g in self._promoted.values():
            assert g._state == _HELD and self._keys.get(g._key) is not None, g
        assert holders + ntokens == self._holders, (holders, ntokens, self._holders)
        assert waiters == self._waiters, (waiters, self._waiters)
