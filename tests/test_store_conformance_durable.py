"""zarr's own store conformance suite, run against the durable modes of
RangeLockedStore(LocalStore): ``durability="fsync"`` and ``"journal"``,
whose whole-value writes and deletes go through their own backend
(``store/_durable``: a synced temporary file renamed; a journal record
first), not stock LocalStore's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from zarr.storage import LocalStore

from tests import test_store_conformance_local as local_suite
from zarr_rangelock import RangeLockedStore


class _Durable(local_suite.TestRangeLockedLocalStore):  # (not collected here again)
    durability = ""

    # WrapperStore.open builds the wrapper with its defaults: build it here.
    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path) -> RangeLockedStore:  # type: ignore[override]
        local = LocalStore(tmp_path)
        await local._open()
        return RangeLockedStore(local, durability=self.durability)

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": LocalStore(tmp_path), "durability": self.durability}

    def test_the_suites_store_is_in_the_durable_mode(self, store: RangeLockedStore) -> None:
        assert store.durability == self.durability
        assert type(store._backend).__module__ == "zarr_rangelock.store._durable"

    def test_store_repr(self, store: RangeLockedStore) -> None:
        root = local_suite.inner(store).root.as_posix()
        assert repr(store) == (
            f"RangeLockedStore(LocalStore('file://{root}'), durability={self.durability!r})"
        )


class TestFsyncLocalStore(_Durable):
    durability = "fsync"


class TestJournalLocalStore(_Durable):
    durability = "journal"
