"""zarr's own store conformance suite, run against RangeLockedStore(MemoryStore)."""

from __future__ import annotations

from typing import Any

import pytest
from zarr.core.buffer import Buffer
from zarr.storage import MemoryStore

from tests._conformance import RangeLockedStoreTests
from zarr_rangelock import RangeLockedStore


def inner(store: RangeLockedStore) -> MemoryStore:
    wrapped = store._store
    assert isinstance(wrapped, MemoryStore)
    return wrapped


class TestRangeLockedMemoryStore(RangeLockedStoreTests):
    # The suite's back door: write and read the wrapped dict directly.
    async def set(self, store: RangeLockedStore, key: str, value: Buffer) -> None:
        inner(store)._store_dict[key] = value

    async def get(self, store: RangeLockedStore, key: str) -> Buffer:
        return inner(store)._store_dict[key]

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"store": MemoryStore()}

    @pytest.fixture
    def open_kwargs(self) -> dict[str, Any]:
        # WrapperStore.open(store_cls, *args, **kwargs) builds the inner store.
        return {"store_cls": MemoryStore}

    def test_store_repr(self, store: RangeLockedStore) -> None:
        assert repr(store) == f"RangeLockedStore({store._store!r})"
        assert str(store) == f"rangelocked-memory://{id(inner(store)._store_dict)}"
