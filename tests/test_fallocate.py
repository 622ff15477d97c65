"""Holes allocated ahead of mappings (``_fallocate``): a full disk raises, never SIGBUS.

A page of a shared mapping over a hole gets its block when first written
(on tmpfs, when first touched); with none left the access is ``SIGBUS``,
which kills the process. The lock file's change stamps are such a mapping
(the file is made by ``ftruncate``, all holes), and so are shard files with
``map_writes=True``. First the mechanism on this machine's temporary
directory; then, where a small tmpfs can be mounted in a namespace of its
own (``unshare``), the real thing: a process writing on a full file system
gets ``OSError``, and its controls (the same writes with allocation turned
off, a bare mapping over a hole) are killed by ``SIGBUS``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._fds import has_holes, sparse_file
from tests._processes import python_output
from tests._small_tmpfs import killed_by_sigbus, run_on_a_small_tmpfs
from zarr_rangelock import RangeLockedStore, _fallocate
from zarr_rangelock.locks import _lockfile, _osfile
from zarr_rangelock.locks._lockfile import (
    FILE_SIZE,
    LOCK_FILE_NAME,
    STAMP_SLOTS,
    FileStamps,
    stamp_slot,
)
from zarr_rangelock.locks._oslock import OsLocks

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate(2), SEEK_HOLE"),
    pytest.mark.timeout(120),
]

B = cpu.Buffer.from_bytes


# ---------------------------------------------------------------- mechanism


def test_allocate_holes_gives_a_sparse_file_its_blocks_and_keeps_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    sparse_file(path, 1 << 20, b"\x07" * 10)
    before = path.read_bytes()
    with open(path, "r+b") as f:
        assert _fallocate.allocate_holes(f.fileno(), 1 << 20)
    assert not has_holes(path)
    assert path.read_bytes() == before and os.stat(path).st_size == 1 << 20


def test_allocate_holes_makes_no_call_for_a_file_without_holes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * 8192)
    monkeypatch.setattr(_fallocate, "_fallocate", None)  # a call would fail
    with open(path, "r+b") as f:
        assert _fallocate.allocate_holes(f.fileno(), 8192)


@pytest.mark.parametrize("why", ["the call fails", "no such call"])
def test_allocate_holes_says_so_where_a_hole_cannot_be_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    path = tmp_path / "f"
    sparse_file(path, 1 << 16)
    monkeypatch.setattr(
        _fallocate, "_fallocate", (lambda *a: -1) if why == "the call fails" else None
    )
    with open(path, "r+b") as f:
        assert not _fallocate.allocate_holes(f.fileno(), 1 << 16)
    assert has_holes(path)


def test_a_new_lock_file_has_no_holes(tmp_path: Path) -> None:
    # (Premise: a file made as the lock file is made, by ftruncate, is holes.)
    sparse_file(tmp_path / "premise", FILE_SIZE)
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    store.set_sync("a", B(b"x"))  # the first lock opens (makes) the lock file
    assert not has_holes(tmp_path / "root" / LOCK_FILE_NAME)


def test_an_existing_lock_file_with_holes_gets_them_allocated_and_keeps_its_stamps(
    tmp_path: Path,
) -> None:
    # As an earlier version left it: made by ftruncate, the magic and the
    # stamps bumped since written, every other page a hole.
    root = tmp_path / "root"
    first = RangeLockedStore(LocalStore(root))
    first.set_sync("a", B(b"x"))
    first.set_sync("b", B(b"x"))
    lock_file = root / LOCK_FILE_NAME
    content = lock_file.read_bytes()
    words = {i: content[i : i + 8] for i in range(64, FILE_SIZE, 8) if any(content[i : i + 8])}
    assert words  # the stamps of "a" and "b", bumped by their sets
    lock_file.unlink()
    sparse_file(lock_file, FILE_SIZE, content[:64])
    with open(lock_file, "r+b") as f:
        for i, word in words.items():
            os.pwrite(f.fileno(), word, i)
    assert lock_file.read_bytes() == content and has_holes(lock_file)
    # Another process opens it to write "b" (whose stamp a range write keeps).
    code = f"""
        from zarr.core.buffer import cpu
        from zarr.storage import LocalStore
        from zarr_rangelock import RangeLockedStore
        s = RangeLockedStore(LocalStore({os.fspath(root)!r}))
        s.set_range_sync("b", cpu.Buffer.from_bytes(b"y"), 0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=60)
    assert not has_holes(lock_file)
    assert lock_file.read_bytes() == content


def see_each_others_bumps(one: OsLocks, other: OsLocks) -> None:
    """Each of two ``OsLocks`` of a root sees the stamps the other bumps."""
    assert one.stamps is not None and other.stamps is not None
    for slot in (0, 7, STAMP_SLOTS):
        one.bump(slot)
        assert other.stamps[slot] == one.stamps[slot] != 0
        other.bump(slot)
        assert one.stamps[slot] == other.stamps[slot]


def lock_file_of_holes(root: Path) -> tuple[Path, bytes]:
    """``root``'s lock file, made by a store's ``set`` of "a", then replaced
    by one of its size with only its magic written (the rest holes); and
    what it held before."""
    RangeLockedStore(LocalStore(root)).set_sync("a", B(b"x"))
    lock_file = root / LOCK_FILE_NAME
    content = lock_file.read_bytes()
    lock_file.unlink()
    sparse_file(lock_file, FILE_SIZE, content[:64])
    return lock_file, content


def test_where_fallocate_is_missing_every_stamp_is_written_anew_and_then_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file system without fallocate: writing the stamps gives the holes
    # their blocks as any write does. Each stamp changes to a fresh number
    # (a false alarm for whatever was cached under the old one, never a
    # stamp seen before), and the stamps are mapped.
    root = tmp_path / "root"
    lock_file, _ = lock_file_of_holes(root)
    monkeypatch.setattr(_fallocate, "_fallocate", None)
    locks = OsLocks(str(root), writable=True)
    assert locks.ready() and isinstance(locks.stamps, memoryview)
    assert not has_holes(lock_file)
    after = locks.stamps.tolist()
    assert all(stamp & 1 for stamp in after)  # (never 0: a stamp never written)
    assert len(set(after)) == len(after)  # (64 random bits each)


def test_an_exclusive_whole_key_lock_backs_its_stamp_where_stamps_are_read_with_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the stamps are read with pread (holes without blocks), taking a
    # key's exclusive whole-key lock writes its stamp first (a bump: the
    # block it needs is had before any change); a prefix lock writes the
    # epoch's. Shared and range locks write nothing; a slot written once is
    # not written again.
    monkeypatch.setattr(_fallocate, "_fallocate", None)
    monkeypatch.setattr(_lockfile, "fill_stamps", lambda fd: False)
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    mgr = store._state.manager
    with mgr.lock("k", shared=True):
        pass
    stamps = store._state.os_locks.stamps
    assert isinstance(stamps, FileStamps)
    slot = stamp_slot("k")
    before = stamps[slot]
    with mgr.lock("k", 0, 8):
        pass
    with mgr.lock("k", shared=True):
        pass
    assert stamps[slot] == before and slot not in stamps.backed
    with mgr.lock("k"):
        backed = stamps[slot]
    assert backed != before and slot in stamps.backed
    with mgr.lock("k"):
        pass
    assert stamps[slot] == backed  # (backed once)
    with mgr.lock_prefix("p/"):
        pass
    assert STAMP_SLOTS in stamps.backed
    mgr.release(mgr.acquire_nowait("j", [(0, None)]))  # (the try-lock path backs it too)
    assert stamp_slot("j") in stamps.backed


@pytest.mark.parametrize("fs", ["btrfs", "zfs", "bcachefs", None])
def test_where_overwrites_allocate_the_stamps_are_mapped_read_only_and_written_with_pwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fs: str | None
) -> None:
    # On a copy-on-write file system (None: of a type nobody can tell) every
    # overwrite may need a new block, so a store through a shared mapping
    # that meets a full disk is SIGBUS (page_mkwrite cannot reserve the
    # block), fallocate or not, where pwrite raises ENOSPC. No such file
    # system can be made here: its type is faked, and the test pins the
    # mechanism (nothing can be written through that mapping), beside a
    # process on the real one, whose mapping is written.
    root = tmp_path / "root"
    with monkeypatch.context() as m:
        m.setattr(_osfile, "filesystem_type", lambda path: fs)
        cow = OsLocks(str(root), writable=True)
        assert cow.ready()
    assert isinstance(cow.stamps, memoryview) and cow.stamps.readonly
    plain = OsLocks(str(root), writable=True)
    assert plain.ready() and isinstance(plain.stamps, memoryview)
    assert not plain.stamps.readonly
    see_each_others_bumps(cow, plain)


def test_where_overwrites_allocate_every_exclusive_whole_key_lock_moves_its_stamp_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # There a block had once is no block had for the next write: each
    # whole-value change's stamp is written when its lock is taken (so the
    # stamp has moved before the change, whatever the bump after it meets).
    monkeypatch.setattr(_osfile, "filesystem_type", lambda path: "btrfs")
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    mgr = store._state.manager
    with mgr.lock("k", shared=True):
        pass
    stamps = store._state.os_locks.stamps
    slot = stamp_slot("k")
    seen = {stamps[slot]}
    with mgr.lock("k", 0, 8):
        pass
    with mgr.lock("k", shared=True):
        pass
    assert stamps[slot] in seen  # (range and shared locks change nothing)
    for _ in range(3):
        with mgr.lock("k"):
            seen.add(stamps[slot])
    assert len(seen) == 4
    # And the store works as anywhere else.
    store.set_sync("k", B(b"abcd"))
    store.set_range_sync("k", B(b"X"), 1)
    assert store.get_sync("k").to_bytes() == b"aXcd"
    store.delete_sync("k")
    assert store.get_sync("k") is None


@pytest.fixture(params=["holes", "copy-on-write"])
def stamps_written_with_pwrite(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Stamps written with pwrite: over holes the disk had no room for, or on
    a file system whose overwrites allocate."""
    if request.param == "holes":
        monkeypatch.setattr(_fallocate, "_fallocate", None)
        monkeypatch.setattr(_lockfile, "fill_stamps", lambda fd: False)
    else:
        monkeypatch.setattr(_osfile, "filesystem_type", lambda path: "zfs")
    return str(request.param)


def test_a_whole_key_lock_whose_stamp_cannot_be_backed_raises_and_holds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stamps_written_with_pwrite: str
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path / "root"))
    store.set_sync("k", B(b"x"))

    def full(self: FileStamps, slot: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(FileStamps, "back", full)
        with pytest.raises(OSError) as e:
            store.delete_sync("k")
        assert e.value.errno == errno.ENOSPC
    assert store.get_sync("k").to_bytes() == b"x"  # nothing deleted
    assert store._state.manager.stats().holders == 0
    assert store._state.os_locks._own.empty()  # (its OS lock let go too)
    store.delete_sync("k")  # nothing left held: the next lock is had at once
    assert store.get_sync("k") is None


def test_stamps_read_with_pread_and_stamps_mapped_see_each_others_bumps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where a process cannot allocate the lock file's holes it reads and
    # writes the stamps with pread/pwrite; another process (here another
    # OsLocks of the root) maps them. One page cache: each sees the other's.
    root = tmp_path / "root"
    with monkeypatch.context() as m:
        m.setattr(_fallocate, "_fallocate", None)  # (a file system without the call...
        m.setattr(_lockfile, "fill_stamps", lambda fd: False)  # ...and, then, no room)
        unmapped = OsLocks(str(root), writable=True)
        assert unmapped.ready()
    assert isinstance(unmapped.stamps, FileStamps)
    assert has_holes(root / LOCK_FILE_NAME)  # (nothing allocated them)
    mapped = OsLocks(str(root), writable=True)
    assert mapped.ready() and isinstance(mapped.stamps, memoryview)  # allocated them
    see_each_others_bumps(unmapped, mapped)


def test_a_process_that_reads_stamps_with_pread_and_one_that_maps_them_see_each_others_bumps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above, the mapping side in another process, as users run them.
    root = tmp_path / "root"
    with monkeypatch.context() as m:
        m.setattr(_fallocate, "_fallocate", None)
        m.setattr(_lockfile, "fill_stamps", lambda fd: False)
        unmapped = OsLocks(str(root), writable=True)
        assert unmapped.ready()
    assert isinstance(unmapped.stamps, FileStamps)
    for slot in (0, 7, STAMP_SLOTS):
        unmapped.bump(slot)
    code = f"""
from zarr_rangelock.locks._oslock import OsLocks
mapped = OsLocks({os.fspath(root)!r}, writable=True)
assert mapped.ready() and isinstance(mapped.stamps, memoryview)
print(*(mapped.stamps[s] for s in (0, 7, {STAMP_SLOTS})))
for s in (1, 9):
    mapped.bump(s)
print(*(mapped.stamps[s] for s in (1, 9)))
"""
    seen, bumped = python_output(code).splitlines()
    assert [int(v) for v in seen.split()] == [unmapped.stamps[s] for s in (0, 7, STAMP_SLOTS)]
    assert [int(v) for v in bumped.split()] == [unmapped.stamps[s] for s in (1, 9)]
    assert all(unmapped.stamps[s] for s in (1, 9))


def test_a_lock_file_opened_read_only_with_holes_has_its_stamps_read_with_pread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read-only (a read-only file or file system), its holes cannot be
    # allocated; on tmpfs even a read of a hole through a mapping takes a
    # block (SIGBUS on a full one), so such a file is not mapped.
    root = tmp_path / "root"
    lock_file, content = lock_file_of_holes(root)  # the magic, then holes...
    with open(lock_file, "r+b") as f:  # ...but for the stamps bumped (the page of "a"'s)
        for i in range(64, FILE_SIZE, 8):
            if any(content[i : i + 8]):
                os.pwrite(f.fileno(), content[i : i + 8], i)
    assert lock_file.read_bytes() == content and has_holes(lock_file)
    real_open = os.open

    def no_writing(path: str, flags: int, *args: int) -> int:
        if os.fspath(path) == os.fspath(lock_file) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "read-only", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_writing)
    reader = OsLocks(str(root), writable=False)
    assert reader.ready() and isinstance(reader.stamps, FileStamps)
    got = [reader.stamps[i] for i in range(STAMP_SLOTS + 1)]
    words = memoryview(content).cast("B")[64:FILE_SIZE].cast("Q").tolist()
    assert got == words and any(got)  # (the stamp of "a", bumped by its set)


# ------------------------------------------------------- on a full tmpfs

# Runs in a mount namespace of its own, on a 1 MiB tmpfs at argv[1]; argv[2]
# names the case. Prints what happened; a SIGBUS kills it instead.
CHILD = """
import mmap, os, sys
from zarr.core.buffer import cpu
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore, _fallocate
from zarr_rangelock.locks._lockfile import HEADER, slots_of

mount, case = sys.argv[1], sys.argv[2]
B = cpu.Buffer.from_bytes
root = os.path.join(mount, "root")

def fill():
    fd = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\\xff" * 4096)
    except OSError:
        pass
    os.close(fd)

def page(key):
    return (HEADER + 8 * slots_of(key)[1]) // 4096

if case.startswith("stamps-full-at-open"):
    # The lock file has holes (as an earlier version made it) when a process
    # opens it on a full disk: neither fallocate nor writing the stamps can
    # give them blocks. A key's file (its stamp on a page still a hole) is
    # written in place, then deleted while a descriptor of it stays open (as
    # another process's cache keeps one), so the delete frees no space.
    from zarr_rangelock.locks._lockfile import FILE_SIZE, LOCK_FILE_NAME, MAGIC
    from zarr_rangelock.locks._oslock import OsLocks
    if case == "stamps-full-at-open-unbacked":
        # (the change's stamp neither backed nor moved first)
        from zarr_rangelock.store._backends import LocalBackend
        OsLocks.back = lambda self, key, prefix: None
        LocalBackend.replacing = lambda self, key: None
    os.makedirs(root)
    fd = os.open(os.path.join(root, LOCK_FILE_NAME), os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, FILE_SIZE)
    os.pwrite(fd, MAGIC, 0)
    os.close(fd)
    key = next(f"k{i}" for i in range(10000) if page(f"k{i}") != 0)
    with open(os.path.join(root, key), "wb") as f:
        f.write(bytes(4096))
    kept = os.open(os.path.join(root, key), os.O_RDONLY)
    fill()
    s = RangeLockedStore(LocalStore(root))
    s.set_range_sync(key, B(b"\\x22" * 8), 8)
    print(type(s._state.os_locks.stamps).__name__, flush=True)
    print("written", s.get_sync(key).to_bytes()[8:16] == b"\\x22" * 8)
    try:
        s.delete_sync(key)
        print("deleted")
    except OSError as e:
        print("OSError", e.errno)
    print("exists", os.path.exists(os.path.join(root, key)))
elif case.startswith("stamps"):
    # A key whose change stamp sits on a page of the lock file that nothing
    # has touched yet; its file written before the disk filled up. Then a
    # range write (reads the stamps), and a whole-value write (bumps one).
    from zarr_rangelock.locks import _lockfile
    if case == "stamps-mapped-over-holes":
        _fallocate._fallocate = None  # (as a file system without the call)
    if case == "stamps-mapped-over-holes":
        _lockfile.allocate_holes = lambda fd, size: True  # mapped as if allocated
    s = RangeLockedStore(LocalStore(root))
    s.set_sync("a", B(b"x" * 8))
    print(type(s._state.os_locks.stamps).__name__, flush=True)
    key = next(f"k{i}" for i in range(10000) if page(f"k{i}") not in (0, page("a")))
    s.set_sync(key, B(bytes(4096)))
    other = next(f"o{i}" for i in range(10000) if page(f"o{i}") not in (0, page("a"), page(key)))
    fill()
    s.set_range_sync(key, B(b"\\x22" * 8), 8)
    print("written", s.get_sync(key).to_bytes()[8:16] == b"\\x22" * 8)
    try:
        s._state.os_locks.bump(slots_of(other)[1])  # (as a set or delete of it would)
        print("bumped")
    except OSError as e:
        print("OSError", e.errno)
elif case in ("map_writes", "map_writes-unallocated"):
    # A shard file with a hole, written through map_writes.
    if case == "map_writes-unallocated":
        import zarr_rangelock.store._fdcache as fdcache
        fdcache.allocate_holes = lambda fd, size: True
    s = RangeLockedStore(LocalStore(root), map_writes=True)
    s.set_sync("a", B(b"x" * 8))
    path = os.path.join(root, "s")
    with open(path, "wb") as f:
        f.write(b"\\x01")
    os.truncate(path, 256 * 1024)
    fill()
    try:
        s.set_range_sync("s", B(b"\\x22" * 4096), 128 * 1024)
        print("written")
    except OSError as e:
        print("OSError", e.errno)
elif case == "bare mapping":
    path = os.path.join(mount, "s")
    with open(path, "wb") as f:
        f.write(b"\\x01")
    os.truncate(path, 256 * 1024)
    fill()
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 256 * 1024)
        m[128 * 1024] = 0x22
    print("written")
"""


def on_a_full_tmpfs(tmp_path: Path, case: str) -> subprocess.CompletedProcess[str]:
    """The child's ``case`` on a 1 MiB tmpfs of its own."""
    return run_on_a_small_tmpfs(tmp_path, CHILD, case)


def test_control_a_mapping_written_over_a_hole_on_a_full_tmpfs_is_killed_by_sigbus(
    tmp_path: Path,
) -> None:
    done = on_a_full_tmpfs(tmp_path, "bare mapping")
    assert killed_by_sigbus(done), (done.returncode, done.stdout, done.stderr)


def test_a_write_on_a_full_tmpfs_reads_and_bumps_its_stamp_without_sigbus(
    tmp_path: Path,
) -> None:
    done = on_a_full_tmpfs(tmp_path, "stamps")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split() == ["memoryview", "written", "True", "bumped"]


#: What the child of the two cases below prints but for whether the key exists.
FULL_AT_OPEN_SAYS = ["FileStamps", "written", "True", "OSError", "28", "exists"]


def test_where_holes_cannot_be_allocated_stamps_are_read_with_pread_and_a_delete_fails_first(
    tmp_path: Path,
) -> None:
    # A disk full when the lock file (with holes) is opened: the stamps are
    # not mapped. Reading them takes no block, so a range write lands. A
    # delete of the key must bump its stamp, into a hole of a full file
    # system: it fails with ENOSPC before deleting anything.
    done = on_a_full_tmpfs(tmp_path, "stamps-full-at-open")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split() == [*FULL_AT_OPEN_SAYS, "True"]


def test_control_a_delete_whose_stamp_is_not_backed_first_deletes_and_then_fails(
    tmp_path: Path,
) -> None:
    # Without OsLocks.back (nor the stamp moved before a file is replaced or
    # removed, LocalBackend.replacing) the same delete runs, and only its bump after it
    # fails: the key is gone while every other process's caches of it stay
    # valid under the old stamp.
    done = on_a_full_tmpfs(tmp_path, "stamps-full-at-open-unbacked")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split() == [*FULL_AT_OPEN_SAYS, "False"]


def test_control_stamps_mapped_over_holes_kill_the_same_write_by_sigbus(tmp_path: Path) -> None:
    done = on_a_full_tmpfs(tmp_path, "stamps-mapped-over-holes")
    assert killed_by_sigbus(done), (done.returncode, done.stdout, done.stderr)
    assert done.stdout.split() == ["memoryview"]  # (killed by the range write's read)


def test_a_map_writes_write_into_a_hole_on_a_full_tmpfs_raises_enospc(tmp_path: Path) -> None:
    done = on_a_full_tmpfs(tmp_path, "map_writes")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split() == ["OSError", "28"]  # ENOSPC, from pwrite


def test_control_a_map_writes_write_into_an_unallocated_hole_is_killed_by_sigbus(
    tmp_path: Path,
) -> None:
    done = on_a_full_tmpfs(tmp_path, "map_writes-unallocated")
    assert killed_by_sigbus(done), (done.returncode, done.stdout, done.stderr)
