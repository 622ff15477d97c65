"""Descriptor exhaustion (issue 10, item 7): the store never starves the process.

The LocalStore descriptor cache and the OS lock pool's idle lock-file
descriptions are capped per process (budgets shared by every root, sized
from ``RLIMIT_NOFILE``), and wherever the store opens a file (a ``set_range``
cache miss, the store's own ``set``/``get``, a lock-file description) an
``EMFILE``/``ENFILE`` makes it close every cached and idle descriptor of the
process and retry once; if that fails too, the error says which key, the
limit and how many descriptors the store still holds.

The limit is lowered only in child processes (a small script run with
``subprocess``), never in the pytest process: the script warms up zarr's event
loop and the roots' lock files first, then lowers its own soft limit.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from zarr_rangelock import DescriptorLimitError, RangeLockedStore
from zarr_rangelock.locks import _fdbudget
from zarr_rangelock.locks._lockfile import LOCK_FILE_NAME
from zarr_rangelock.store import _fdcache

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd"),
    pytest.mark.timeout(120),
]

B = cpu.Buffer.from_bytes

# The child's prelude: stores on ROOTS roots, zarr's loop and the lock files
# warmed up, then the soft limit lowered to LIMIT. Helpers print one JSON line.
PRELUDE = """
import errno, json, os, resource, sys
from zarr.core.buffer import cpu
from zarr.storage import LocalStore
from zarr_rangelock import DescriptorLimitError, RangeLockedStore

base, roots, limit, cross = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
B = cpu.Buffer.from_bytes
stores = [
    RangeLockedStore(LocalStore(os.path.join(base, f"root{i}")), cross_process=cross)
    for i in range(roots)
]
for s in stores:
    s.set_sync("warm", B(bytes(8)))
    s.get_sync("warm")
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

def open_fds():
    return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own

def exhaust():
    '''The user's own files: open /dev/null until the process is out of descriptors.'''
    mine = []
    while True:
        try:
            mine.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE, e
            return mine
"""

MANY_ROOTS = """
KEYS = 80
for s in stores:
    for k in range(KEYS):
        s.set_sync(f"c/{k}", B(bytes(64)))
for rnd in range(3):
    for k in range(KEYS):
        for i, s in enumerate(stores):
            s.set_range_sync(f"c/{k}", B(bytes([i + 1 + rnd]) * 8), 8 * rnd)
for k in range(KEYS):
    for i, s in enumerate(stores):
        got = s.get_sync(f"c/{k}").to_bytes()
        assert got[:24] == bytes([i + 1]) * 8 + bytes([i + 2]) * 8 + bytes([i + 3]) * 8, got
with open(os.path.join(base, "users-own-file.txt"), "w") as f:  # the user's own open()
    f.write("still works")
print(json.dumps({"open_fds": open_fds()}))
"""

USERS_OWN_FILES = """
for s in stores:
    for k in range(40):
        s.set_sync(f"c/{k}", B(bytes(64)))

def fill_caches_then_exhaust():
    for s in stores:
        for k in range(40):
            s.set_range_sync(f"c/{k}", B(bytes([1]) * 8), 0)
    return exhaust()

s = stores[0]
done = []
# Each step below first needs a descriptor the user's files left none of.
# A lock-file description (three keys held at once need three) ...
mine = fill_caches_then_exhaust()
with s.locked_sync("c/1", [(0, 8)]), s.locked_sync("c/2", [(0, 8)]), s.locked_sync("c/3", [(0, 8)]):
    done.append("three locks")
for fd in mine:
    os.close(fd)
# ... a set_range cache miss, the store's own set and get.
mine = fill_caches_then_exhaust()
s.set_range_sync("c/0", B(bytes([7]) * 8), 8)
done.append("set_range")
for fd in mine:
    os.close(fd)
mine = fill_caches_then_exhaust()
s.set_sync("new", B(b"x" * 16))
done.append("set")
for fd in mine:
    os.close(fd)
mine = fill_caches_then_exhaust()
assert s.get_sync("c/0").to_bytes()[8:16] == bytes([7]) * 8
done.append("get")
for fd in mine:
    os.close(fd)
# ... and the async set and get (their loop made first: it needs descriptors too).
import asyncio
loop = asyncio.new_event_loop()
mine = fill_caches_then_exhaust()
loop.run_until_complete(s.set("anew", B(b"y" * 16)))
done.append("async set")
for fd in mine:
    os.close(fd)
mine = fill_caches_then_exhaust()
assert loop.run_until_complete(s.get("c/0", None)).to_bytes()[8:16] == bytes([7]) * 8
done.append("async get")
for fd in mine:
    os.close(fd)
loop.close()
print(json.dumps({"done": done}))
"""

NOTHING_TO_DROP = """
s = stores[0]
s.set_sync("c/0", B(bytes(64)))
if s._state.os_locks is not None:  # as if another process were there (see _oslock: Alone)
    s._state.os_locks._presence._retry_at = float("inf")
for t in stores:
    t.close()  # nothing cached, nothing idle
mine = exhaust()
try:
    s.set_range_sync("c/0", B(bytes(8)), 0)
except DescriptorLimitError as e:
    out = {"type": type(e).__name__, "errno": e.errno, "message": str(e), "key": e.key,
           "limit": e.limit, "held": e.held, "is_oserror": isinstance(e, OSError)}
else:
    out = {"type": None}
for fd in mine:
    os.close(fd)
print(json.dumps(out))
"""


# One array write over SHARDS shards (of four one-byte chunks): it holds the
# lock of every shard until all are written, each through a lock-file
# description of its own when it locks across processes.
PEAK = """
from zarr_rangelock.locks._oslock import OsLocks
peak = 0
opened = OsLocks._description
def _description(self):  # the most lock-file descriptions open at once
    global peak
    fd = opened(self)
    peak = max(peak, self.held())
    return fd
OsLocks._description = _description
"""

ONE_WRITE_OVER_MANY_SHARDS = (
    PEAK
    + """
import zarr
SHARDS = 300
with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
    arr = zarr.create_array(stores[0], shape=(2 * SHARDS // 10, 20), chunks=(1, 1),
                            shards=(2, 2), dtype="i1", fill_value=0)
    try:
        arr[:] = 1
    except DescriptorLimitError as e:
        out = {"type": type(e).__name__, "key": e.key, "limit": e.limit}
    else:
        out = {"type": None}
    out["peak"] = peak
    out["sum"] = int(arr[:].sum())
print(json.dumps(out))
"""
)


# Roots made one after another, each store kept: each live root keeps its
# lock file's presence description and (Python 3.12) its stamps' mapping's
# duplicate, so some root's lock file cannot be opened under the limit.
MORE_ROOTS_THAN_THE_LIMIT = """
made = []
try:
    for i in range(300):
        s = RangeLockedStore(LocalStore(os.path.join(base, f"more{i}")))
        s.set_sync("k", B(bytes(8)))
        made.append(s)
except OSError as e:
    out = {"type": type(e).__name__, "errno": e.errno, "made": len(made),
           "key": getattr(e, "key", None), "held": getattr(e, "held", None)}
else:
    out = {"type": None}
print(json.dumps(out))
"""


def run_child(body: str, base: Path, *, roots: int, limit: int, cross: bool = True) -> dict:
    """Run PRELUDE + ``body`` in a fresh interpreter; its last stdout line, as JSON."""
    args = [str(base), str(roots), str(limit), "1" if cross else "0"]
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + body, *args],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("cross", [True, False], ids=["cross-process", "in-process"])
def test_several_roots_with_many_keys_never_exhaust_a_low_descriptor_limit(
    tmp_path: Path, cross: bool
) -> None:
    # Four roots x 80 keys under a soft limit of 64: 64 cached descriptors per
    # root used to need 256 (EMFILE on the first root's 50-odd-th key).
    out = run_child(MANY_ROOTS, tmp_path, roots=4, limit=64, cross=cross)
    budget = _fdbudget.cache_budget(64) + _fdbudget.idle_budget(64)
    assert out["open_fds"] <= 3 + 8 + budget, out  # stdio, interpreter and zarr's loop


def test_an_emfile_from_the_users_own_files_is_recovered_by_dropping_the_caches(
    tmp_path: Path,
) -> None:
    out = run_child(USERS_OWN_FILES, tmp_path, roots=3, limit=256)
    assert out["done"] == ["three locks", "set_range", "set", "get", "async set", "async get"]


@pytest.mark.parametrize("cross", [True, False], ids=["lock-file", "data-file"])
def test_when_nothing_can_be_dropped_the_error_names_the_key_the_limit_and_the_descriptors_held(
    tmp_path: Path, cross: bool
) -> None:
    out = run_child(NOTHING_TO_DROP, tmp_path, roots=2, limit=128, cross=cross)
    assert out["type"] == "DescriptorLimitError", out
    assert out["is_oserror"] and out["errno"] == errno.EMFILE
    # A lock-file description is opened below the store, which names the
    # lock file; a data file is named by its key.
    key = os.path.join(tmp_path, "root0", LOCK_FILE_NAME) if cross else "c/0"
    assert out["key"] == key and out["limit"] == 128
    assert repr(key) in out["message"] and "limit of 128" in out["message"]
    assert f"holds {out['held']}" in out["message"]
    assert "ulimit -n" in out["message"]


def test_roots_opened_past_the_limit_fail_with_the_error_naming_the_lock_file(
    tmp_path: Path,
) -> None:
    # The stamps' mapping of a root's lock file duplicated its descriptor
    # outside the budget's retry: a bare OSError (EMFILE) from mmap, naming
    # nothing, where every other open the store makes sheds and then raises
    # DescriptorLimitError; and the error's count left those duplicates out.
    out = run_child(MORE_ROOTS_THAN_THE_LIMIT, tmp_path, roots=1, limit=64)
    assert out["type"] == "DescriptorLimitError", out
    assert out["errno"] == errno.EMFILE
    failed = os.path.join(tmp_path, f"more{out['made']}", LOCK_FILE_NAME)
    assert out["key"] == failed, out
    # every live root: its presence, and on 3.12 its mapping's duplicate
    live = out["made"] + 1  # and the prelude's root
    assert out["held"] >= live * (2 if sys.version_info < (3, 13) else 1), out


def test_the_error_pickles_with_its_message_and_fields() -> None:
    error = DescriptorLimitError("c/0", "set_range", errno.EMFILE, 1024, 3)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DescriptorLimitError
    assert str(copy) == str(error)
    assert (copy.key, copy.limit, copy.held, copy.errno) == ("c/0", 1024, 3, errno.EMFILE)


@pytest.mark.parametrize(
    ("soft", "cache", "idle"),
    [(64, 8, 4), (256, 32, 16), (1024, 128, 64), (20_000, 1024, 256), (1 << 20, 1024, 256)],
)
def test_the_budgets_are_a_bounded_fraction_of_the_soft_limit(
    soft: int, cache: int, idle: int
) -> None:
    assert _fdbudget.cache_budget(soft) == cache
    assert _fdbudget.idle_budget(soft) == idle


def _cached() -> int:
    return sum(len(c) for c in _fdcache.live_caches())


def test_the_descriptor_cache_is_capped_per_process_across_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fdbudget, "cache_budget", lambda soft=None: 10)
    stores = [
        RangeLockedStore(LocalStore(tmp_path / f"r{i}"), cross_process=False) for i in range(4)
    ]
    for rnd in range(2):
        for k in range(12):
            for s in stores:
                if rnd == 0:
                    s.set_sync(f"c/{k}", B(bytes(16)))
                s.set_range_sync(f"c/{k}", B(bytes([rnd + 1]) * 8), 0)
                assert _cached() <= 10
    # The oldest-opened went first, whatever root: the last ten writes are cached.
    assert _cached() == 10
    for s in stores:
        assert s.get_sync("c/11").to_bytes() == bytes([2]) * 8 + bytes(8)
        s.close()
    assert _cached() == 0


CONSISTENT_READS_OF_MANY_KEYS = (
    PEAK
    + """
import asyncio
from zarr.core.buffer import default_buffer_prototype
KEYS = [f"k/{i}" for i in range(300)]
for k in KEYS:
    stores[0].set_sync(k, B(bytes([1]) * 4))
async def main():
    async with stores[0].consistent_reads(KEYS):
        got = [await stores[0].get(k, default_buffer_prototype()) for k in KEYS]
    return sum(g.to_bytes()[0] for g in got)
out = {"sum": asyncio.run(main()), "peak": peak}
print(json.dumps(out))
"""
)


def test_a_consistent_reads_block_over_more_keys_than_the_process_may_open_files_succeeds(
    tmp_path: Path,
) -> None:
    """A ``consistent_reads`` block holds every key it names at once (shared,
    across processes too): like an array write, one call, one lock-file
    description for all of them, so a block of 300 keys under a soft limit
    of 256 reads them all."""
    out = run_child(CONSISTENT_READS_OF_MANY_KEYS, tmp_path, roots=1, limit=256)
    assert out["sum"] == 300 and out["peak"] <= 3, out


@pytest.mark.parametrize("cross", [True, False], ids=["cross-process", "in-process"])
def test_one_write_over_more_shards_than_the_process_may_open_files_succeeds(
    tmp_path: Path, cross: bool
) -> None:
    """An array write holds every shard's lock until all are written
    (hold-and-wait, see the README). Across processes each held lock holds a
    lock-file range, and before ``one_call`` each held a description of its
    own: one write over 300 shards under a soft limit of 256 raised
    ``DescriptorLimitError``. The call's locks now share one description, so
    it writes every shard (and reads them back), with or without
    cross-process locks, with at most a few descriptions open at once."""
    out = run_child(ONE_WRITE_OVER_MANY_SHARDS, tmp_path, roots=1, limit=256, cross=cross)
    assert out["type"] is None and out["sum"] == 300 * 4, out
    assert out["peak"] <= 3, out  # 300 and more, one per shard, before one_call


# A journaled array write over SHARDS shards, killed right after its journal
# was written (nothing applied): the journal names every shard.
KILLED_AFTER_THE_JOURNAL = """
import os, sys, zarr
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore
store = RangeLockedStore(LocalStore(sys.argv[1]), durability="journal")
with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
    arr = zarr.create_array(store, shape=(60, 20), chunks=(1, 1), shards=(2, 2), dtype="i1",
                            fill_value=0)
    os.environ["ZARR_RANGELOCK_FAULT"] = "after-journal"
    arr[:] = 1
"""

# Opening the store replays that journal: under whole-key locks on every key
# it names, held at once.
REPLAY_OF_MANY_KEYS = (
    PEAK
    + """
import zarr
root = os.path.join(base, "journaled")
journaled = RangeLockedStore(LocalStore(root), durability="journal", cross_process=cross)
out = {"peak": peak}  # the replay's (the reads below hold a description per read in flight)
with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
    arr = zarr.open_array(journaled, mode="r")
    out |= {"sum": int(arr[:].sum()), "again": journaled.recover()}
print(json.dumps(out))
"""
)


@pytest.mark.parametrize("cross", [True, False], ids=["cross-process", "in-process"])
def test_replaying_a_journal_over_more_keys_than_the_process_may_open_files_succeeds(
    tmp_path: Path, cross: bool
) -> None:
    """The journal replay holds whole-key locks on every key a dead
    writer's journal names, at once, as one call (one lock-file description
    for all): a journal over 300 shards, left by a writer killed after
    writing it, is replayed by a store opened under a soft limit of 256,
    which then reads every shard."""
    root = tmp_path / "journaled"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_THE_JOURNAL, str(root)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, after the journal
    shards = [p for p in root.glob("c/*/*") if not p.name.endswith(".partial")]
    assert not shards, "nothing applied before the kill (the journal's prepared files aside)"
    out = run_child(REPLAY_OF_MANY_KEYS, tmp_path, roots=1, limit=256, cross=cross)
    assert out["sum"] == 300 * 4 and out["again"] == 0, out
    assert out["peak"] <= 4, out  # (one more than a write's: the replay's turn, held throughout)
