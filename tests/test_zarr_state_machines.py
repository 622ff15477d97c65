"""zarr's own hypothesis state machines, run against our wrapped stores.

``zarr.testing.stateful`` ships two machines that zarr runs against its own
stores: ``ZarrStoreStateMachine`` (set, get, partial reads, delete, clear,
listing and ``exists`` against a dict model) and ``ZarrHierarchyStateMachine``
(groups and arrays, sharded ones among them, created, overwritten through
basic and orthogonal selections, resized and deleted, against a MemoryStore
model). Here they drive ``RangeLockedStore(MemoryStore())`` and
``RangeLockedStore(LocalStore(tmp))`` (also with ``confine=True``) with
``ShardWritePipeline`` selected, so every array write of the hierarchy
machine goes through our pipeline.

Settings are sized for CI (the module runs in well under a minute on two
cores); a failure prints the shrunk steps and a ``@reproduce_failure`` blob.
The LocalStore root holds our cross-process lock file, ``.zarr-rangelock``,
which the wrapper hides from every listing, as the machines require.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zarr
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test
from zarr.storage import LocalStore, MemoryStore
from zarr.testing.stateful import (
    MAX_BINARY_SIZE,
    ZarrHierarchyStateMachine,
    ZarrStoreStateMachine,
)
from zarr.testing.strategies import keys as zarr_keys
from zarr.testing.strategies import node_names

from tests._shard_helpers import OURS
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME
from zarr_rangelock.store._keys import JOURNAL_DIR

pytestmark = [
    pytest.mark.timeout(90),
    # zarr warns about dtypes without a v3 spec that its strategies draw
    pytest.mark.filterwarnings("ignore::zarr.core.dtype.common.UnstableSpecificationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SETTINGS = settings(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
STORE_SETTINGS = settings(SETTINGS, max_examples=25, stateful_step_count=20)
HIERARCHY_SETTINGS = settings(SETTINGS, max_examples=20, stateful_step_count=20)


#: The wrapper's options per store the machines run on (a LocalStore's but
#: for "memory"); the last two change only how arrays are written: the
#: hierarchy machine's alone.
STORES: dict[str, dict[str, Any]] = {
    "memory": {},
    "local": {},
    "local-confined": {"confine": True},
    "local-journal": {"durability": "journal"},
    "local-dense": {"dense_shards": True},
    "local-mapped": {"map_writes": True},
}


def _wrapped(kind: str, tmp_path: Path) -> Iterator[RangeLockedStore]:
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "root")
    wrapped = RangeLockedStore(inner, **STORES[kind])
    yield wrapped
    wrapped.close()


@pytest.fixture(params=list(STORES)[:4])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RangeLockedStore]:
    yield from _wrapped(request.param, tmp_path)


@pytest.fixture(params=list(STORES))
def hierarchy_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RangeLockedStore]:
    yield from _wrapped(request.param, tmp_path)


def _nested(a: str, b: str) -> bool:
    return a.startswith(b + "/") or b.startswith(a + "/")


_RESERVED = (LOCK_FILE_NAME, JOURNAL_DIR)


def _reserved(key: str) -> bool:
    return key.split("/")[0] in _RESERVED


class _Keys(ZarrStoreStateMachine):
    """zarr's store machine, without our reserved names as keys.

    Hypothesis also draws the string constants of the code under test, such
    as the lock file's and the journal's names, which both stores refuse as
    keys (``InvalidKeyError``) where zarr's model expects a key.
    """

    @rule(key=zarr_keys(), data=st.binary(min_size=0, max_size=MAX_BINARY_SIZE))
    def set(self, key: str, data: bytes) -> None:
        assume(not _reserved(key))
        super().set(key, data)

    @rule(key=zarr_keys(), data=st.data())
    def get_invalid_zarr_keys(self, key: str, data: st.DataObject) -> None:
        assume(not _reserved(key))
        super().get_invalid_zarr_keys(key, data)

    @rule(key=zarr_keys())
    def exists(self, key: str) -> None:
        assume(not _reserved(key))
        super().exists(key)


class _FileSystemKeys(_Keys):
    """zarr's store machine, setting only keys a file system can hold.

    A directory tree cannot hold a file ``a`` and a file ``a/b`` at once, and
    a deleted ``a/b`` leaves the directory ``a`` behind; stock LocalStore
    raises ``FileExistsError``/``IsADirectoryError`` there, and so does ours
    (zarr skips this machine for LocalStore for that reason). So ``set`` skips
    a key nested with any key set since the last ``clear``.
    """

    def __init__(self, store: RangeLockedStore) -> None:
        super().__init__(store)
        self.ever_set: set[str] = set()

    @rule(key=zarr_keys(), data=st.binary(min_size=0, max_size=MAX_BINARY_SIZE))
    def set(self, key: str, data: bytes) -> None:
        assume(not any(_nested(key, k) for k in self.ever_set) and not _reserved(key))
        self.ever_set.add(key)
        super().set(key, data)

    @rule()
    def clear(self) -> None:
        super().clear()
        self.ever_set.clear()


def test_zarr_store_state_machine_finds_nothing_wrong_with_the_wrapped_store(
    store: RangeLockedStore,
) -> None:
    machine = _FileSystemKeys if isinstance(store._store, LocalStore) else _Keys
    with zarr.config.set(OURS):
        run_state_machine_as_test(lambda: machine(store), settings=STORE_SETTINGS)


class _Hierarchy(ZarrHierarchyStateMachine):
    """zarr's hierarchy machine, treating a wrapped LocalStore as zarr treats a
    LocalStore: it skips ``check_list_dir`` there (a chunk directory emptied
    by deletes or a resize still lists, in stock LocalStore and in ours)."""

    @precondition(lambda self: bool(self.all_groups))
    @rule(data=st.data())
    def check_list_dir(self, data: st.DataObject) -> None:
        assume(not isinstance(self.store._store, LocalStore))
        super().check_list_dir(data)

    # Our reserved names are not keys (see _Keys).
    @rule(name=node_names, data=st.data())
    def add_group(self, name: str, data: st.DataObject) -> None:
        assume(name not in _RESERVED)
        super().add_group(name, data)

    @rule(data=st.data(), name=node_names)
    def add_array(self, data: st.DataObject, name: str) -> None:
        assume(name not in _RESERVED)
        super().add_array(data, name)


def test_zarr_hierarchy_state_machine_finds_nothing_wrong_with_the_wrapped_store(
    hierarchy_store: RangeLockedStore,
) -> None:
    with zarr.config.set(OURS):
        run_state_machine_as_test(lambda: _Hierarchy(hierarchy_store), settings=HIERARCHY_SETTINGS)
