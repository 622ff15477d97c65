"""zarr's own store conformance suite, run against
``RangeLockedStore(LocalStore, durability=...)`` for ``"fsync"`` and ``"journal"``.

zarr's ``WrapperStore.open(store_cls, ...)`` passes no arguments to the
wrapper, so each mode gets a subclass whose ``durability`` defaults to it;
everything else is the LocalStore module's setup.
"""

from __future__ import annotations

from typing import Any, ClassVar

from zarr.storage import LocalStore

from tests import test_store_conformance_local as local
from zarr_rangelock import RangeLockedStore


class _FsyncStore(RangeLockedStore):
    def __init__(self, store: LocalStore, **kwargs: Any) -> None:
        kwargs.setdefault("durability", "fsync")
        super().__init__(store, **kwargs)


class _JournalStore(RangeLockedStore):
    def __init__(self, store: LocalStore, **kwargs: Any) -> None:
        kwargs.setdefault("durability", "journal")
        super().__init__(store, **kwargs)


# Reached through the module, so this module does not collect it again.
class _DurableTests(local.TestRangeLockedLocalStore):
    mode: ClassVar[str]

    def test_store_repr(self, store: RangeLockedStore) -> None:  # type: ignore[override]  # same test, one more field
        root = local.inner(store).root.as_posix()
        assert store.durability == self.mode
        assert repr(store) == (
            f"RangeLockedStore(LocalStore('file://{root}'), durability={self.mode!r})"
        )
        assert str(store) == f"rangelocked-file://{root}"

    def test_the_store_under_test_is_durable(self, store: RangeLockedStore) -> None:
        assert type(store) is self.store_cls
        assert store.durability == self.mode
        assert store.with_read_only(True).durability == self.mode


class TestRangeLockedLocalStoreFsync(_DurableTests):
    store_cls = _FsyncStore
    mode = "fsync"


class TestRangeLockedLocalStoreJournal(_DurableTests):
    store_cls = _JournalStore
    mode = "journal"
