"""Issue 10, item 4: the prefix ``"/"`` means the root, and never escapes it.

zarr itself passes ``"/"`` as a prefix meaning the whole store (its hierarchy
state machine's ``clear`` calls ``is_empty("/")``; ``test_array_v3_nan_fill_value``
calls ``list_prefix("/")`` expecting every key). Stock zarr's two stores
disagree on it, and a bare LocalStore escapes its root (``Path(root) / "/"`` is
the filesystem root: ``list_dir("/")`` lists it, ``delete_dir("/")`` would
remove it). The wrapper reads ``"/"`` as ``""`` on both stores, and refuses
every other prefix that starts with ``"/"`` before the wrapped store sees it.

Safety: every test here runs with ``shutil.rmtree`` guarded so that it refuses
any path outside the test's tmp directory, and the wrapped LocalStore is spied
on so that no prefix starting with ``"/"`` ever reaches it. Nothing here calls
a bare LocalStore.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from zarr_rangelock import InvalidKeyError, RangeLockedStore
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME

pytestmark = pytest.mark.timeout(30)

B = cpu.Buffer.from_bytes
KEYS = {"a/b": b"ab", "c": b"c"}


@pytest.fixture(autouse=True)
def rmtree_stays_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``shutil.rmtree`` refuse any path outside ``tmp_path`` (a safety net)."""
    real = shutil.rmtree
    top = os.path.realpath(tmp_path)

    def guarded(path: Any, *args: Any, **kwargs: Any) -> None:
        where = os.path.realpath(os.fspath(path))
        if not where.startswith(top + os.sep):
            raise AssertionError(f"refusing rmtree({path!r}) outside {top}")
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded)


class Spy:
    """Records every prefix the wrapped store's prefix methods are given."""

    def __init__(self, inner: MemoryStore | LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, str]] = []
        for name in ("list_prefix", "list_dir", "delete_dir", "is_empty", "delete"):
            original = getattr(inner, name)
            monkeypatch.setattr(inner, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(prefix: str, *args: Any, **kwargs: Any) -> Any:
            self.seen.append((name, prefix))
            return original(prefix, *args, **kwargs)

        return call

    def assert_no_leading_slash(self) -> None:
        assert [s for s in self.seen if s[1].startswith("/")] == []


@pytest.fixture(params=["memory", "local"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file beside the store's root: nothing here may touch it."""
    path = tmp_path / "outside.txt"
    path.write_bytes(b"keep me")
    return path


@pytest.fixture
def spied(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside: Path
) -> Iterator[tuple[RangeLockedStore, Spy]]:
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "root")
    store = RangeLockedStore(inner)
    for key, value in KEYS.items():
        store.set_sync(key, B(value))
    spy = Spy(inner, monkeypatch)
    yield store, spy
    spy.assert_no_leading_slash()
    assert outside.read_bytes() == b"keep me"


async def listed(it: Any) -> list[str]:
    return sorted([k async for k in it])


async def remaining(store: RangeLockedStore) -> dict[str, bytes]:
    out = {}
    for key in await listed(store.list()):
        got = await store.get(key)
        assert got is not None
        out[key] = got.to_bytes()
    return out


@pytest.mark.asyncio
async def test_the_prefix_slash_lists_and_tests_the_whole_store_on_both_stores(
    spied: tuple[RangeLockedStore, Spy],
) -> None:
    store, _ = spied
    assert await store.is_empty("/") is False
    assert await listed(store.list_prefix("/")) == ["a/b", "c"]
    assert await listed(store.list_dir("/")) == ["a", "c"]
    # exactly what "" gives, as zarr means it
    assert await listed(store.list_prefix("/")) == await listed(store.list_prefix(""))
    assert await listed(store.list_dir("/")) == await listed(store.list_dir(""))
    assert await store.getsize_prefix("/") == 3


@pytest.mark.asyncio
async def test_the_prefix_slash_on_an_empty_store_is_empty(kind: str, tmp_path: Path) -> None:
    inner = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "root")
    store = RangeLockedStore(inner)
    assert await store.is_empty("/") is True
    assert await listed(store.list_prefix("/")) == []
    assert await listed(store.list_dir("/")) == []


@pytest.mark.asyncio
async def test_delete_dir_slash_clears_the_stores_keys_only_and_keeps_the_lock_file(
    spied: tuple[RangeLockedStore, Spy], tmp_path: Path
) -> None:
    store, _ = spied
    await store.delete_dir("/")
    assert await remaining(store) == {}
    assert await store.is_empty("/") is True
    if isinstance(store._store, LocalStore):
        assert os.listdir(tmp_path / "root") == [LOCK_FILE_NAME]
        assert sorted(os.listdir(tmp_path)) == ["outside.txt", "root"]


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["//", "///", "/a", "/a/", "/a/b", "//a"])
async def test_other_prefixes_starting_with_a_slash_are_refused_and_change_nothing(
    spied: tuple[RangeLockedStore, Spy], bad: str
) -> None:
    store, spy = spied
    for call in (store.list_prefix, store.list_dir):
        with pytest.raises(InvalidKeyError, match="absolute path") as info:
            call(bad)
        assert info.value.key == bad
        assert "only '/' alone" in str(info.value)
    with pytest.raises(InvalidKeyError, match="absolute path"):
        await store.is_empty(bad)
    with pytest.raises(InvalidKeyError, match="absolute path"):
        await store.delete_dir(bad)
    assert spy.seen == []  # refused before the wrapped store was asked anything
    # (then checked through list(), which lists a MemoryStore by list_prefix(""))
    assert await remaining(store) == KEYS


@pytest.mark.asyncio
async def test_what_zarr_itself_calls_with_the_slash_prefix_works(
    spied: tuple[RangeLockedStore, Spy],
) -> None:
    store, _ = spied
    await store.delete_dir("/")
    arr = zarr.create_array(store, shape=(4,), chunks=(2,), dtype="f8", fill_value=float("nan"))
    arr[:] = 1.0
    # test_array_v3_nan_fill_value: every key under "/"
    assert await listed(store.list_prefix("/")) == ["c/0", "c/1", "zarr.json"]
    # the hierarchy state machine's clear: the whole store, through is_empty("/")
    await store.clear()
    assert await store.is_empty("/")
