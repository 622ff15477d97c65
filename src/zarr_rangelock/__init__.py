"""Byte-range locks for zarr stores, and in-place writes into sharded arrays.

Public names are re-exported here; the private modules hold one concept each.
"""

from ._errors import (
    InvalidKeyError,
    KeyNotFoundError,
    LockTimeout,
    RangeNotHeldError,
    RangeOutOfBoundsError,
    UnsupportedStoreError,
    WouldBlock,
)
from ._manager import Grant, LockStats, RangeLockManager
from ._pipeline import ShardWritePipeline
from ._protocol import SupportsSetRange
from ._store import RangeLockedStore

__all__ = [
    "Grant",
    "InvalidKeyError",
    "KeyNotFoundError",
    "LockStats",
    "LockTimeout",
    "RangeLockManager",
    "RangeLockedStore",
    "RangeNotHeldError",
    "RangeOutOfBoundsError",
    "ShardWritePipeline",
    "SupportsSetRange",
    "UnsupportedStoreError",
    "WouldBlock",
]
