"""Issue 10, item 10: symbolic links inside a LocalStore root, and ``confine=True``.

The layout every test starts from (all under the test's tmp directory)::

    outside/secret          a file outside the root
    root/real/f             a value of the store
    root/alias  -> real     a directory link inside the root
    root/fileal -> real/f   a file link inside the root
    root/out    -> ../outside         a directory link out of the root
    root/outfile -> ../outside/secret a file link out of the root

By default the wrapper follows links as stock zarr does; with ``confine=True``
every operation refuses keys that leave the root, and keys reaching one file
through a link share their locks. Interleavings are forced by patching
``_backends._write_range`` (every value write goes through it) to pause
between the halves of a write; nothing is ordered with ``time.sleep``.
``shutil.rmtree`` is guarded to the tmp directory throughout.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from tests._threads import run_threads, wait_until
from zarr_rangelock import InvalidKeyError, KeyOutsideRootError, RangeLockedStore
from zarr_rangelock.store import _backends, _confine

pytestmark = pytest.mark.timeout(60)

B = cpu.Buffer.from_bytes
SIZE = 16
SECRET = b"secret outside the root"


@pytest.fixture(autouse=True)
def rmtree_stays_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.rmtree
    top = os.path.realpath(tmp_path)

    def guarded(path: Any, *args: Any, **kwargs: Any) -> None:
        if not os.path.realpath(os.fspath(path)).startswith(top + os.sep):
            raise AssertionError(f"refusing rmtree({path!r}) outside {top}")
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f").write_bytes(bytes(SIZE))
    os.symlink("real", root / "alias")
    os.symlink("real/f", root / "fileal")
    os.symlink("../outside", root / "out")
    os.symlink("../outside/secret", root / "outfile")
    return root


def outside_state(tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "outside"
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


# ------------------------------------------------------- default: stock behaviour


def test_by_default_links_are_followed_out_of_the_root_as_stock_zarr_does(
    root: Path, tmp_path: Path
) -> None:
    store = RangeLockedStore(LocalStore(root))
    assert repr(store) == f"RangeLockedStore({LocalStore(root)!r})"
    got = store.get_sync("outfile")
    assert got is not None and got.to_bytes() == SECRET
    store.set_range_sync("out/secret", B(b"S"), 0)  # what confine=True is for
    assert (tmp_path / "outside" / "secret").read_bytes() == b"S" + SECRET[1:]


# ------------------------------------------------------------ confine: refusals

OUTSIDE_KEYS = ["out/secret", "outfile", "out/new", "out/dir/new"]


def refusals(store: RangeLockedStore, key: str) -> dict[str, Callable[[], Any]]:
    """Every operation on ``key``, as a zero-argument callable (coroutines run)."""
    v = B(b"x")

    def run(coro: Any) -> Callable[[], Any]:
        return lambda: asyncio.run(coro())

    async def locked() -> None:
        async with store.locked(key, [(0, 1)]):
            pass

    async def consistent() -> None:
        async with store.consistent_reads([key]):
            pass

    def locked_sync() -> None:
        with store.locked_sync(key, [(0, 1)]):
            pass

    return {
        "get": run(lambda: store.get(key)),
        "get_sync": lambda: store.get_sync(key),
        "get_partial_values": run(
            lambda: store.get_partial_values(cpu.buffer_prototype, [(key, None)])
        ),
        "set": run(lambda: store.set(key, v)),
        "set_sync": lambda: store.set_sync(key, v),
        "set_if_not_exists": run(lambda: store.set_if_not_exists(key, v)),
        "set_range": run(lambda: store.set_range(key, v, 0)),
        "set_range_sync": lambda: store.set_range_sync(key, v, 0),
        "delete": run(lambda: store.delete(key)),
        "delete_sync": lambda: store.delete_sync(key),
        "exists": run(lambda: store.exists(key)),
        "getsize": run(lambda: store.getsize(key)),
        "locked": run(locked),
        "locked_sync": locked_sync,
        "consistent_reads": run(consistent),
        "delete_dir": run(lambda: store.delete_dir(key)),
        "list_prefix": lambda: store.list_prefix(key + "/"),
        "list_dir": lambda: store.list_dir(key),
        "is_empty": run(lambda: store.is_empty(key)),
    }


@pytest.mark.parametrize("key", OUTSIDE_KEYS)
def test_a_confined_store_refuses_every_operation_on_a_key_that_leaves_the_root(
    root: Path, tmp_path: Path, key: str
) -> None:
    store = RangeLockedStore(LocalStore(root), confine=True)
    before = outside_state(tmp_path)
    real_root = os.path.realpath(root)
    for name, call in refusals(store, key).items():
        with pytest.raises(KeyOutsideRootError) as info:
            call()
        err = info.value
        assert isinstance(err, InvalidKeyError), name
        assert err.key == key, name
        assert err.root == real_root, name
        assert err.resolved.startswith(os.path.realpath(tmp_path / "outside")), name
        for part in (repr(key), repr(err.resolved), repr(real_root)):
            assert part in str(err), (name, str(err))
    assert outside_state(tmp_path) == before
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret"]  # nothing created
    assert store.lock_manager.stats().holders == 0
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.key, copy.resolved, copy.root, str(copy)) == (
        err.key,
        err.resolved,
        err.root,
        str(err),
    )


def test_a_confined_store_refuses_a_link_to_its_lock_file(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root), confine=True)  # makes the lock file
    os.symlink(".zarr-rangelock", root / "lk")
    with pytest.raises(InvalidKeyError, match="reserved"):
        store.set_range_sync("lk", B(b"x"), 0)
    with pytest.raises(InvalidKeyError, match="reserved"):
        store.get_sync("lk")


@pytest.mark.asyncio
async def test_confined_listings_leave_out_names_that_leave_the_root(root: Path) -> None:
    store = RangeLockedStore(LocalStore(root), confine=True)
    plain = RangeLockedStore(LocalStore(root), cross_process=False)
    assert sorted([k async for k in plain.list()]) == ["fileal", "outfile", "real/f"]
    assert sorted([k async for k in store.list()]) == ["fileal", "real/f"]
    assert sorted([k async for k in store.list_prefix("")]) == ["fileal", "real/f"]
    assert sorted([k async for k in store.list_dir("")]) == ["alias", "fileal", "real"]
    assert sorted([k async for k in store.list_prefix("alias/")]) == ["alias/f"]
    os.symlink("../../outside/secret", root / "real" / "esc")
    assert sorted([k async for k in store.list_dir("alias")]) == ["f"]
    assert sorted([k async for k in store.list_prefix("real/")]) == ["real/f"]
    assert await store.is_empty("alias") is False


@pytest.mark.asyncio
async def test_a_link_to_a_sibling_whose_name_starts_with_the_roots_is_out_of_the_root(
    root: Path, tmp_path: Path
) -> None:
    # root-x shares the root's path as a string prefix ("/.../root" and
    # "/.../root-x/f"), not as a directory: its files are outside. Taken
    # for inside, "sib/f" became the key "x/f" of the root.
    (tmp_path / "root-x").mkdir()
    (tmp_path / "root-x" / "f").write_bytes(SECRET)
    os.symlink("../root-x", root / "sib")
    store = RangeLockedStore(LocalStore(root), confine=True)
    for call in (
        lambda: store.get_sync("sib/f"),
        lambda: store.set_range_sync("sib/f", B(b"x"), 0),
        lambda: store.set_sync("sib/g", B(b"x")),
    ):
        with pytest.raises(KeyOutsideRootError) as info:
            call()
        assert info.value.resolved.startswith(os.path.realpath(tmp_path / "root-x"))
    assert sorted(os.listdir(tmp_path / "root-x")) == ["f"]
    assert (tmp_path / "root-x" / "f").read_bytes() == SECRET
    assert not (root / "x").exists()
    assert "sib" not in [k async for k in store.list_dir("")]


def test_a_confined_store_checks_keys_against_the_root_its_local_store_moved_to(
    root: Path, tmp_path: Path
) -> None:
    # LocalStore.move() rebinds the store's root: the resolved root and the
    # keys resolved under it are the old directory's, which is gone. Kept,
    # a key through a link in the new root found no link on its old path
    # (nothing there) and was used as it is, out of the new root.
    inner = LocalStore(root)
    store = RangeLockedStore(inner, confine=True)
    assert store.get_sync("real/f") is not None  # the root resolved, the key remembered
    moved = tmp_path / "moved"
    asyncio.run(inner.move(moved))
    os.symlink("../outside", moved / "esc")
    os.remove(moved / "real" / "f")
    os.symlink("../../outside/secret", moved / "real" / "f")
    for key in ("esc/secret", "real/f"):
        with pytest.raises(KeyOutsideRootError) as info:
            store.get_sync(key)
        assert info.value.root == os.path.realpath(moved)


# ----------------------------------------------------- confine: links inside work


@pytest.mark.asyncio
async def test_keys_through_links_inside_the_root_reach_their_file_under_one_key(
    root: Path,
) -> None:
    store = RangeLockedStore(LocalStore(root), confine=True)
    store.set_range_sync("alias/f", B(b"AB"), 0)
    await store.set_range("fileal", B(b"CD"), 2)
    assert (root / "real" / "f").read_bytes() == b"ABCD" + bytes(SIZE - 4)
    got = await store.get("alias/f")
    assert got is not None and got.to_bytes() == b"ABCD" + bytes(SIZE - 4)
    assert await store.getsize("fileal") == SIZE
    with store.locked_sync("alias/f", [(0, 4)]) as h:
        assert h.key == "real/f"  # the lock is on the canonical key
    await store.set("alias/g", B(b"new"))  # a new key through a link
    assert (root / "real" / "g").read_bytes() == b"new"
    await store.delete_dir("alias")  # the keys under alias/ (in real/), nothing else
    assert not (root / "real").exists()
    assert (root / "alias").is_symlink()


def test_confine_survives_pickle_with_read_only_and_with_store_and_shows_in_repr(
    root: Path,
) -> None:
    store = RangeLockedStore(LocalStore(root), confine=True)
    assert repr(store) == f"RangeLockedStore({LocalStore(root)!r}, confine=True)"
    copies = [
        pickle.loads(pickle.dumps(store)),
        store.with_read_only(True),
        store._with_store(LocalStore(root)),
    ]
    for copy in copies:
        assert repr(copy).endswith(", confine=True)")
        with pytest.raises(KeyOutsideRootError):
            copy.get_sync("outfile")
    assert RangeLockedStore(MemoryStore(), confine=True).get_sync("a") is None  # ignored


# ------------------------------------------------------ aliases share their locks


@contextmanager
def first_write_pauses(
    monkeypatch: pytest.MonkeyPatch, pause: Callable[[], None]
) -> Iterator[None]:
    """The first value write writes its first half, calls ``pause``, then the
    rest; later writes run through."""
    original = _backends._write_range
    taken = threading.Lock()

    def write(target: int | memoryview, data: memoryview, start: int) -> None:
        if not taken.acquire(blocking=False):
            original(target, data, start)
            return
        half = len(data) // 2
        original(target, data[:half], start)
        pause()
        original(target, data[half:], start + half)

    with monkeypatch.context() as m:
        m.setattr(_backends, "_write_range", write)
        yield


def race_two_aliases(store: RangeLockedStore, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Thread A writes 1s to real/f and pauses half way; thread B writes 2s to
    alias/f (the same file) over the same range. A resumes once B has finished
    (no shared lock) or is queued behind A (shared lock). Returns the file."""
    paused, b_done = threading.Event(), threading.Event()
    mgr = store.lock_manager

    def pause() -> None:
        paused.set()
        wait_until(lambda: b_done.is_set() or mgr.stats().waiters > 0, "B finished or queued")

    def a() -> None:
        store.set_range_sync("real/f", B(b"\x01" * SIZE), 0)

    def b() -> None:
        assert paused.wait(30)
        store.set_range_sync("alias/f", B(b"\x02" * SIZE), 0)
        b_done.set()

    with first_write_pauses(monkeypatch, pause):
        run_threads(a, b)
    assert mgr.stats().holders == 0
    got = store.get_sync("real/f")
    assert got is not None
    return got.to_bytes()


def test_without_confine_two_keys_aliasing_one_file_interleave(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control: the race the shared lock must prevent really happens.
    store = RangeLockedStore(LocalStore(root))
    final = race_two_aliases(store, monkeypatch)
    half = SIZE // 2
    assert final == b"\x02" * half + b"\x01" * half  # neither write whole


@pytest.mark.parametrize("cross_process", [True, False])
def test_with_confine_two_keys_aliasing_one_file_exclude_each_other(
    root: Path, monkeypatch: pytest.MonkeyPatch, cross_process: bool
) -> None:
    store = RangeLockedStore(LocalStore(root), confine=True, cross_process=cross_process)
    final = race_two_aliases(store, monkeypatch)
    assert final == b"\x02" * SIZE  # A whole, then B whole


_TRY_ALIAS_CHILD = """
import sys
from zarr.storage import LocalStore
from zarr_rangelock import LockTimeout, RangeLockedStore
root, key, confine = sys.argv[1], sys.argv[2], sys.argv[3] == "confine"
store = RangeLockedStore(LocalStore(root), confine=confine)
try:
    with store.locked_sync(key, [(0, None)], timeout=0.05):
        print("granted")
except LockTimeout:
    print("busy")
"""


@pytest.mark.parametrize(
    ("held", "tried"), [("real/f", "alias/f"), ("real/f", "fileal"), ("alias/f", "real/f")]
)
@pytest.mark.parametrize("child", ["confine", "control: the other process does not confine"])
def test_with_confine_a_key_aliasing_one_file_is_excluded_in_another_process_too(
    root: Path, held: str, tried: str, child: str
) -> None:
    """This process holds one key of the file (a confined store); another
    process's confined store asks for another key of the same file and finds
    it busy. The control: a store that does not confine locks the key as
    written, so another process gets an alias at once (and the real name,
    the one a confined store locks any alias by, is busy for it too)."""
    store = RangeLockedStore(LocalStore(root), confine=True)
    with store.locked_sync(held, [(0, None)]):
        out = subprocess.run(
            [sys.executable, "-c", _TRY_ALIAS_CHILD, str(root), tried, child],
            capture_output=True,
            text=True,
            timeout=50,
            check=True,
        ).stdout.strip()
    assert out == ("busy" if child == "confine" or tried == "real/f" else "granted")


def test_a_link_swapped_in_after_a_key_was_used_is_refused_once_the_recheck_interval_passed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake clock: a resolution is reused for RECHECK_S (the documented window).
    now = [1000.0]
    monkeypatch.setattr(_confine, "_monotonic", lambda: now[0])
    store = RangeLockedStore(LocalStore(root), confine=True)
    assert store.get_sync("real/f") is not None
    os.rename(root / "real", root / "moved")
    os.symlink("../outside", root / "real")
    now[0] += _confine.RECHECK_S / 2  # within the window: the old resolution is reused
    assert store.get_sync("real/f") is None  # (outside/f does not exist)
    now[0] += _confine.RECHECK_S
    with pytest.raises(KeyOutsideRootError):
        store.get_sync("real/f")


# ------------------------------------------------------- a root that is a link


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["clear", "delete_dir"])
async def test_a_root_that_is_a_link_is_cleared_in_the_directory_it_points_to(
    tmp_path: Path, how: str
) -> None:
    # Stock LocalStore's clear() of a root that is a symbolic link raises
    # (rmtree refuses a link) and removes nothing; the wrapper removes every
    # key of the directory the link points to, and keeps the link and its
    # lock file, as it does for any root (README).
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    os.symlink("target", link)
    stock = LocalStore(link)
    await stock.set("a/b", B(b"1"))
    with pytest.raises(OSError):  # (the message differs between Pythons)
        await stock.clear()
    assert (target / "a" / "b").exists()
    store = RangeLockedStore(LocalStore(link))
    await store.set("c", B(b"2"))
    if how == "clear":
        await store.clear()
    else:
        await store.delete_dir("")
    assert link.is_symlink()
    assert [k async for k in store.list()] == []
    assert sorted(p.name for p in target.iterdir()) == [".zarr-rangelock"]
    await store.set("d", B(b"3"))  # and it goes on working
    assert (target / "d").read_bytes() == b"3"
