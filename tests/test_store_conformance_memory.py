"""zarr's own store conformance suite, run against RangeLockedStore(MemoryStore)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import pytest_asyncio
from zarr.abc.store import Store
from zarr.core.buffer import Buffer, cpu
from zarr.storage import MemoryStore
from zarr.testing.store import StoreTests

from zarr_rangelock import RangeLockedStore


def inner(store: RangeLockedStore) -> MemoryStore:
    wrapped = store._store
    assert isinstance(wrapped, MemoryStore)
    return wrapped


class TestRangeLockedMemoryStore(StoreTests[RangeLockedStore, cpu.Buffer]):
    store_cls = RangeLockedStore
    buffer_cls = cpu.Buffer

    # zarr runs its suite with pytest-asyncio in "auto" mode, so StoreTests marks
    # neither its async tests nor its async fixtures; this project uses "strict"
    # mode. Mark the tests here and re-declare the two async fixtures, unchanged,
    # as pytest-asyncio fixtures. The class-wide mark also reaches the suite's sync
    # tests, which pytest-asyncio runs normally but warns about; silence that one
    # warning. No test is skipped or overridden.
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings(
            "ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is "
            "not an async function"
        ),
    ]

    @pytest_asyncio.fixture
    async def store(self, open_kwargs: dict[str, Any]) -> Store:  # type: ignore[override]  # same fixture, async-aware
        return await self.store_cls.open(**open_kwargs)

    @pytest_asyncio.fixture
    async def store_not_open(  # type: ignore[override]  # same fixture, async-aware
        self, store_kwargs: dict[str, Any]
    ) -> Store:
        return self.store_cls(**store_kwargs)

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

    def test_store_supports_writes(self, store: RangeLockedStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: RangeLockedStore) -> None:
        assert store.supports_listing
