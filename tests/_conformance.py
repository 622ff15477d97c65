"""zarr's store conformance suite, set up for RangeLockedStore.

Each wrapped store runs the suite in its own test module
(``test_store_conformance_<store>.py``), by subclassing
:class:`RangeLockedStoreTests` and adding what depends on the wrapped store:
the suite's back door (``set``/``get``), ``store_kwargs``/``open_kwargs`` and
``test_store_repr``. Not collected itself: the name does not start with "Test".
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import pytest_asyncio
from zarr.abc.store import Store
from zarr.core.buffer import cpu
from zarr.testing.store import StoreTests

from zarr_rangelock import RangeLockedStore


class RangeLockedStoreTests(StoreTests[RangeLockedStore, cpu.Buffer]):
    store_cls = RangeLockedStore
    buffer_cls = cpu.Buffer

    # zarr runs its suite with pytest-asyncio in "auto" mode, so StoreTests marks
    # neither its async tests nor its async fixtures; this project uses "strict"
    # mode. Mark the tests here and re-declare the two async fixtures, unchanged,
    # as pytest-asyncio fixtures. The class-wide mark also reaches the suite's sync
    # tests, which pytest-asyncio runs normally but warns about; silence that one
    # warning. No test is skipped or overridden. (Subclasses inherit the marks:
    # pytest collects them along the MRO.)
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

    def test_store_supports_writes(self, store: RangeLockedStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: RangeLockedStore) -> None:
        assert store.supports_listing
