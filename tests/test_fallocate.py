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

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._fds import has_holes, sparse_file
from tests._small_tmpfs import killed_by_sigbus, run_on_a_small_tmpfs
from zarr_rangelock import RangeLockedStore, _fallocate
from zarr_rangelock.locks._lockfile import FILE_SIZE, LOCK_FILE_NAME

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

if case in ("stamps", "stamps-unallocated"):
    # A key whose change stamp sits on a page of the lock file that nothing
    # has touched yet; its file written before the disk filled up.
    if case == "stamps-unallocated":
        _fallocate._fallocate = None
    s = RangeLockedStore(LocalStore(root))
    s.set_sync("a", B(b"x" * 8))
    key = next(f"k{i}" for i in range(10000) if page(f"k{i}") not in (0, page("a")))
    s.set_sync(key, B(bytes(4096)))
    fill()
    s.set_range_sync(key, B(b"\\x22" * 8), 8)
    print("written", s.get_sync(key).to_bytes()[8:16] == b"\\x22" * 8)
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
    assert done.stdout.split() == ["written", "True"]


def test_control_without_allocation_the_same_write_is_killed_by_sigbus(tmp_path: Path) -> None:
    done = on_a_full_tmpfs(tmp_path, "stamps-unallocated")
    assert killed_by_sigbus(done), (done.returncode, done.stdout, done.stderr)


def test_a_map_writes_write_into_a_hole_on_a_full_tmpfs_raises_enospc(tmp_path: Path) -> None:
    done = on_a_full_tmpfs(tmp_path, "map_writes")
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split() == ["OSError", "28"]  # ENOSPC, from pwrite


def test_control_a_map_writes_write_into_an_unallocated_hole_is_killed_by_sigbus(
    tmp_path: Path,
) -> None:
    done = on_a_full_tmpfs(tmp_path, "map_writes-unallocated")
    assert killed_by_sigbus(done), (done.returncode, done.stdout, done.stderr)
