"""Byte-range locks for zarr stores, and in-place writes into sharded arrays.

Public names are re-exported here; the private modules hold one concept each.
"""

# First: checks the installed zarr before any module imports zarr's internals.
from . import _requires  # noqa: F401
from ._errors import (
    CrossProcessLockError,
    CrossProcessWarning,
    DescriptorLimitError,
    InvalidKeyError,
    JournalWarning,
    KeyNotFoundError,
    KeyOutsideRootError,
    LockTimeout,
    PartialWriteError,
    RangeNotHeldError,
    RangeOutOfBoundsError,
    SelfDeadlockError,
    UnsupportedStoreError,
    WouldBlock,
)
from .locks._table import Grant, LockStats, RangeLockManager
from .shards._pipeline import ShardWritePipeline
from .shards._writer import ShardWriter
from .store._protocol import SupportsSetRange
from .store._rewrite import Span
from .store._store import RangeLockedStore

__all__ = [
    "CrossProcessLockError",
    "CrossProcessWarning",
    "DescriptorLimitError",
    "Grant",
    "InvalidKeyError",
    "JournalWarning",
    "KeyNotFoundError",
    "KeyOutsideRootError",
    "LockStats",
    "LockTimeout",
    "PartialWriteError",
    "RangeLockManager",
    "RangeLockedStore",
    "RangeNotHeldError",
    "RangeOutOfBoundsError",
    "SelfDeadlockError",
    "ShardWritePipeline",
    "ShardWriter",
    "Span",
    "SupportsSetRange",
    "UnsupportedStoreError",
    "WouldBlock",
]
