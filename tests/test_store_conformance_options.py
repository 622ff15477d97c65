"""zarr's own store conformance suite, run against RangeLockedStore(LocalStore)
made with the options that change how a key's file is written or found:
``durability="fsync"`` and ``"journal"``, whose whole-value writes and
deletes go through their own backend (``store/_durable``: a synced
temporary file renamed; a journal record first), not stock LocalStore's;
and ``confine=True``, which finds each key by its resolved path.
(``map_writes``: ``tests/test_map_writes.py``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from zarr.storage import LocalStore

from tests import test_store_conformance_local as local_suite
from zarr_rangelock import RangeLockedStore


class _WithOptions(local_suite.TestRangeLockedLocalStore):  # (not collected here again)
    options: ClassVar[dict[str, Any]] = {}
    shown = ""  # what the options add to the repr

    # WrapperStore.open builds the wrapper with its defaults: build it here.
    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path) -> RangeLockedStore:  # type: ignore[override]
        local = LocalStore(tmp_path)
        await local._open()
        return RangeLockedStore(local, **self.options)

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"store": LocalStore(tmp_path), **self.options}

    def test_the_suites_store_has_the_options(self, store: RangeLockedStore) -> None:
        assert store._options() == {**store._options(), **self.options}
        if "durability" in self.options:
            assert type(store._backend).__module__ == "zarr_rangelock.store._durable"

    def test_store_repr(self, store: RangeLockedStore) -> None:
        root = local_suite.inner(store).root.as_posix()
        assert repr(store) == f"RangeLockedStore(LocalStore('file://{root}'){self.shown})"


class TestFsyncLocalStore(_WithOptions):
    options: ClassVar[dict[str, Any]] = {"durability": "fsync"}
    shown = ", durability='fsync'"


class TestJournalLocalStore(_WithOptions):
    options: ClassVar[dict[str, Any]] = {"durability": "journal"}
    shown = ", durability='journal'"


class TestConfinedLocalStore(_WithOptions):
    options: ClassVar[dict[str, Any]] = {"confine": True}
    shown = ", confine=True"
