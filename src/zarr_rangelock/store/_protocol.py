"""The ``SupportsSetRange`` store protocol (same signatures as zarr-python PR #3907)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from zarr.core.buffer import Buffer

__all__ = ["SupportsSetRange"]


@runtime_checkable
class SupportsSetRange(Protocol):
    """A store that can overwrite a byte range of an existing value in place.

    ``set_range(key, value, start)`` overwrites ``len(value)`` bytes of the
    existing value of ``key``, beginning at byte ``start``. The value keeps its
    size: the key must exist (else ``KeyError``), ``start`` must be ``>= 0``
    and ``start + len(value) <= size`` (else ``ValueError``), and a read-only
    store refuses as for ``set``. A refused write changes nothing.

    The protocol itself says nothing about concurrency;
    :class:`~zarr_rangelock.RangeLockedStore` implements it with range locks so
    that overlapping writes, whole-value writes and reads exclude each other.
    ``isinstance(store, SupportsSetRange)`` checks only that both methods exist.
    """

    async def set_range(self, key: str, value: Buffer, start: int) -> None:
        """Overwrite ``len(value)`` bytes of ``key``'s value at offset ``start``."""
        ...

    def set_range_sync(self, key: str, value: Buffer, start: int) -> None:
        """Synchronous :meth:`set_range`; needs no event loop."""
        ...
