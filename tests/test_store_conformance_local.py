"""zarr's own store conformance suite, run against RangeLockedStore(LocalStore)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from tests._conformance import RangeLockedStoreTests
from zarr_rangelock import RangeLockedStore


def inner(store: RangeLockedStore) -> LocalStore:
    wrapped = store._store
    assert isinstance(wrapped, LocalStore)
    return wrapped


class TestRangeLockedLocalStore(RangeLockedStoreTests):
    # The suite's back door: write and read the files directly.
    async def set(self, store: RangeLockedStore, key: str, value: Buffer) -> None:
        path = inner(store).root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: RangeLockedStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes((inner(store).root / key).read_bytes())

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": LocalStore(tmp_path)}

    @pytest.fixture
    def open_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        # WrapperStore.open(store_cls, *args, **kwargs) builds the inner store.
        return {"store_cls": LocalStore, "root": str(tmp_path)}

    def test_store_repr(self, store: RangeLockedStore) -> None:
        root = inner(store).root.as_posix()
        assert repr(store) == f"RangeLockedStore(LocalStore('file://{root}'))"
        assert str(store) == f"rangelocked-file://{root}"
