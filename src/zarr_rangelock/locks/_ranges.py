"""Byte ranges: validation, normalisation and overlap arithmetic.

A range is half-open, ``[start, end)``. ``end=None`` means "to the end of the
key, whatever its size", and is represented internally by :data:`INF`, an
integer larger than any valid offset, so that every comparison stays an
integer comparison.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from numbers import Real
from threading import TIMEOUT_MAX as _TIMEOUT_MAX

import numpy as np

__all__ = [
    "INF",
    "MAX_OFFSET",
    "RangeSpec",
    "as_int",
    "check_key",
    "check_range",
    "check_timeout",
    "normalize_ranges",
    "overlaps",
    "public_ranges",
]

#: Largest byte offset accepted (the largest ``off_t`` on 64-bit platforms).
MAX_OFFSET = (1 << 63) - 1
#: Internal stand-in for ``end=None``: larger than any valid offset.
INF = 1 << 64

#: A range as users write it: ``(start, end)`` with ``end=None`` for "to the end".
type RangeSpec = tuple[int, int | None]


def check_key(key: object) -> str:
    """Return ``key`` if it is a ``str``, else raise ``TypeError``."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}: {key!r}")
    return key


def as_int(value: object) -> int | None:
    """``value`` as an ``int`` if it is one or stands for one, as a list index
    does (``__index__``: numpy's integers), else None. ``bool`` (an int
    subclass) and numpy's bool are refused: ``True`` as a byte offset is
    always a mistake."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]  # __index__ checked above
    except TypeError:  # numpy's bool has an __index__ that refuses
        return None


def as_bool(value: object) -> bool | None:
    """``value`` as a ``bool`` if it is one (numpy's too), else None: an option
    or a lock mode is never read with ``bool()``, which takes ``"no"`` as
    true."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    return None


def check_offset(name: str, value: object, key: str) -> int:
    """``value`` (an offset of ``key``, called ``name`` in errors) as an int
    in ``[0, MAX_OFFSET]``; numpy's integers are taken, ``bool`` is not.

    Raises
    ------
    TypeError
        If it is not an int.
    ValueError
        If it is negative or past :data:`MAX_OFFSET`.
    """
    if type(value) is not int:
        as_index = as_int(value)
        if as_index is None:
            raise TypeError(
                f"{name} for key {key!r} must be an int, got {type(value).__name__}: {value!r}"
            )
        value = as_index
    if value < 0:
        raise ValueError(f"{name} for key {key!r} must be >= 0, got {value}")
    if value > MAX_OFFSET:
        raise ValueError(f"{name} for key {key!r} is beyond the largest offset {MAX_OFFSET}")
    return value


def check_range(key: str, start: object, end: object) -> tuple[int, int]:
    """Validate one range and return it as ``(start, end)`` with ``None`` as :data:`INF`.

    Raises
    ------
    TypeError
        If ``start`` or ``end`` is not an int (``bool`` is refused too).
    ValueError
        If ``start`` is negative, or ``end <= start``.
    """
    s = check_offset("start", start, key)
    if end is None:
        return s, INF
    e = check_offset("end", end, key)
    if e <= s:
        raise ValueError(f"empty or inverted range [{s}, {e}) for key {key!r}: end must be > start")
    return s, e


def check_shared(key: str, shared: object) -> bool:
    """Validate a lock's mode: ``shared`` must be a ``bool`` (or numpy's).

    ``bool(shared)`` would read ``"no"`` or ``"false"`` as shared: two
    callers meaning to write would then not exclude each other.

    Raises
    ------
    TypeError
        If ``shared`` is anything else, naming it and the key.
    """
    mode = as_bool(shared)
    if mode is not None:
        return mode
    raise TypeError(
        f"shared must be a bool, got {type(shared).__name__}: {shared!r} (for key {key!r})"
    )


def check_timeout(key: str, timeout: object) -> float | None:
    """Validate a lock timeout: ``None`` or a real number of seconds ``>= 0``.

    Returns it as a float, or ``None`` (wait forever) for ``None``, for
    infinity and for any timeout longer than ``threading.TIMEOUT_MAX`` (about
    292 years; a blocking wait that long raises ``OverflowError`` in the
    standard library, and an int too large for a float does in ``float()``).
    Every acquire path calls this first, before any arithmetic on the timeout,
    so a bad one fails the same way with or without OS locks.

    Raises
    ------
    TypeError
        If ``timeout`` is not a real number (``bool`` and ``str`` are refused).
    ValueError
        If it is negative or NaN.
    """
    if type(timeout) is not float and type(timeout) is not int:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, Real):
            raise TypeError(
                f"timeout must be a number of seconds or None, got "
                f"{type(timeout).__name__}: {timeout!r} (waiting for key {key!r})"
            )
    try:
        seconds = float(timeout)  # a Real, checked above
    except OverflowError:  # an int past float's range: forever, or never
        seconds = math.inf if timeout > 0 else -math.inf  # type: ignore[operator]  # a Real
    if not seconds >= 0:  # NaN compares False
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r} (waiting for key {key!r})")
    return None if seconds > _TIMEOUT_MAX else seconds


def normalize_ranges(key: str, ranges: Iterable[RangeSpec]) -> tuple[tuple[int, int], ...]:
    """Validate ``ranges`` and return them sorted, with overlapping or touching ones merged.

    Raises
    ------
    TypeError
        If an element is not a ``(start, end)`` pair of ints.
    ValueError
        If ``ranges`` is empty or an element is invalid (see :func:`check_range`).
    """
    if type(ranges) not in (list, tuple) and (  # the ABC check is slow: skip it for those
        isinstance(ranges, (str, bytes)) or not isinstance(ranges, Iterable)
    ):
        raise TypeError(
            f"ranges for key {key!r} must be a sequence of (start, end) pairs, got {ranges!r}"
        )
    checked: list[tuple[int, int]] = []
    for r in ranges:
        if (
            type(r) is not tuple and (not isinstance(r, Sequence) or isinstance(r, (str, bytes)))
        ) or len(r) != 2:
            raise TypeError(f"each range for key {key!r} must be a (start, end) pair, got {r!r}")
        checked.append(check_range(key, r[0], r[1]))
    if not checked:
        raise ValueError(f"empty list of ranges for key {key!r}: at least one range is needed")
    if len(checked) == 1:
        return (checked[0],)
    checked.sort()
    merged = [checked[0]]
    for s, e in checked[1:]:
        ps, pe = merged[-1]
        if s <= pe:
            if e > pe:
                merged[-1] = (ps, e)
        else:
            merged.append((s, e))
    return tuple(merged)


def overlaps(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> bool:
    """True if any range of ``a`` overlaps any range of ``b`` (both normalised)."""
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def public_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[RangeSpec, ...]:
    """Convert internal ranges back to the user's form (``INF`` becomes ``None``)."""
    return tuple((s, None if e >= INF else e) for s, e in ranges)
