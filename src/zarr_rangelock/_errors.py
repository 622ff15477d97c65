"""Exceptions. Each keeps its constructor arguments in ``args`` so it pickles
(errors cross process boundaries in multiprocessing and dask workers)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["LockTimeout", "WouldBlock"]


def _fmt_ranges(ranges: Sequence[tuple[int, int | None]]) -> str:
    return ", ".join(f"[{s}, {'end' if e is None else e})" for s, e in ranges)


class LockTimeout(TimeoutError):
    """A lock request did not get its ranges within ``timeout`` seconds.

    Attributes
    ----------
    key : str
        The key (or, for a prefix lock, the prefix) that was asked for.
    ranges : tuple of (int, int or None)
        The ranges that were asked for.
    timeout : float
        The timeout in seconds.
    """

    def __init__(self, key: str, ranges: Sequence[tuple[int, int | None]], timeout: float) -> None:
        super().__init__(key, tuple(ranges), timeout)
        self.key = key
        self.ranges = tuple(ranges)
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"timed out after {self.timeout} s waiting for a lock on key {self.key!r} "
            f"ranges {_fmt_ranges(self.ranges)}"
        )


class WouldBlock(Exception):
    """A ``*_nowait`` request conflicts with a held or earlier queued request."""

    def __init__(self, key: str, ranges: Sequence[tuple[int, int | None]]) -> None:
        super().__init__(key, tuple(ranges))
        self.key = key
        self.ranges = tuple(ranges)

    def __str__(self) -> str:
        return (
            f"lock on key {self.key!r} ranges {_fmt_ranges(self.ranges)} is not free: "
            "it conflicts with a held or earlier queued request"
        )
