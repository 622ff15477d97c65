"""Writing a sharded array until the disk is full loses nothing.

A child process writes random whole chunks (random values, a fifth of them
all fill) into random places of a sharded array on a small tmpfs that it
has filled up to a few hundred KiB, through ``ShardWriter.write_chunk`` or
the plain API, uncompressed (in place, and laid out densely first) or zstd
(appended, compacted), in each durability mode and with ``map_writes``,
from one thread and from four (each writing chunks of its own into shared
shards).
Writes start failing with ``OSError`` (``ENOSPC``) as the space runs out.
The child keeps, per chunk, the values it may hold: the last value whose
write returned, and the values of the failed writes since (a failed write
leaves its chunk old or new, never anything else). With the space given
back, stock zarr and the wrapper read every chunk as one of those, and
every chunk can be written again. Seeded: a failure prints the seed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests._small_tmpfs import run_on_a_small_tmpfs

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs, unshare"),
    pytest.mark.timeout(180),
]

CHILD = """
import errno, json, os, random, sys, threading
import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore, ShardWriter

mount, kind, api, mode, seed, leave, steps, threads = sys.argv[1:9]
seed, leave, steps, threads = int(seed), int(leave), int(steps), int(threads)
values = np.random.default_rng(seed)
OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
root = os.path.join(mount, "z")
if mode == "map_writes":
    store = RangeLockedStore(LocalStore(root), map_writes=True)
else:
    store = RangeLockedStore(LocalStore(root), durability=mode)
N, C = 8, 32  # an 8 x 8 grid of 32 x 32 float32 chunks, shards of 4 x 4
with zarr.config.set(OURS):
    arr = zarr.create_array(
        store, shape=(N * C, N * C), chunks=(C, C), shards=(4 * C, 4 * C), dtype="f4",
        compressors=ZstdCodec(level=1) if kind == "zstd" else None, fill_value=0,
    )
writer = ShardWriter(arr)
may_hold = {(i, j): {bytes(C * C * 4)} for i in range(N) for j in range(N)}

def region(c):
    return slice(c[0] * C, (c[0] + 1) * C), slice(c[1] * C, (c[1] + 1) * C)

filler = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT)
try:
    while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > leave:
        os.write(filler, b"\\xff" * 4096)
except OSError:
    pass
os.close(filler)

counts = {"ok": 0, "failed": 0}
errors = []

def work(t):
    # Thread t writes the chunks whose index is t modulo threads (shards
    # shared, chunks not: each chunk's writes stay in order).
    rng, vals = random.Random(seed + t), np.random.default_rng(seed + t)
    mine = [c for k, c in enumerate(sorted(may_hold)) if k % threads == t]
    try:
        for _ in range(steps // threads):
            c = rng.choice(mine)
            v = vals.random((C, C), dtype="f4")
            if rng.random() < 0.2:
                v[:] = 0
            try:
                with zarr.config.set(OURS):
                    if api == "writer":
                        writer.write_chunk(c, v)
                    else:
                        arr[region(c)] = v
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                may_hold[c].add(v.tobytes())
                counts["failed"] += 1
            else:
                may_hold[c] = {v.tobytes()}
                counts["ok"] += 1
    except BaseException as e:
        errors.append(e)

pool = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
for th in pool:
    th.start()
for th in pool:
    th.join(120)
    if th.is_alive():
        print(json.dumps({"hang": True}))
        os._exit(3)
if errors:
    raise errors[0]
ok, failed = counts["ok"], counts["failed"]
os.unlink(os.path.join(mount, "filler"))

def wrong(data):
    return sorted(str(c) for c, vs in may_hold.items() if data[region(c)].tobytes() not in vs)

found = {"ok": ok, "failed": failed}
found["stock"] = wrong(zarr.open_array(LocalStore(root), mode="r")[:])
with zarr.config.set(OURS):
    found["ours"] = wrong(arr[:])
if mode != "none" and mode != "map_writes":
    # what a process opening the root does: nothing left to replay or remove
    found["replayed"] = store.recover()
for c in may_hold:  # the space is back: every chunk can be written again
    v = values.random((C, C), dtype="f4")
    writer.write_chunk(c, v)
    may_hold[c] = {v.tobytes()}
found["again"] = wrong(zarr.open_array(LocalStore(root), mode="r")[:])
ours = (".zarr-rangelock", ".zarr-rangelock-journal", "c", "zarr.json")
found["litter"] = sorted(n for n in os.listdir(root) if n not in ours)
print(json.dumps(found))
"""

CASES = [
    # kind, api, mode, bytes left free, threads
    ("zstd", "writer", "none", 300_000, 1),
    ("zstd", "plain", "journal", 200_000, 1),
    ("zstd", "writer", "fsync", 100_000, 1),
    ("dense", "writer", "map_writes", 60_000, 1),
    ("dense", "plain", "journal-nosync", 60_000, 1),
    ("zstd", "writer", "none", 200_000, 4),
    ("dense", "plain", "journal", 60_000, 4),
]


@pytest.mark.parametrize(("kind", "api", "mode", "leave", "threads"), CASES)
def test_writes_that_fill_the_disk_fail_with_enospc_and_lose_nothing(
    tmp_path: Path, kind: str, api: str, mode: str, leave: int, threads: int
) -> None:
    seed = 20261205
    args = (kind, api, mode, str(seed), str(leave), "1200", str(threads))
    done = run_on_a_small_tmpfs(tmp_path, CHILD, *args, size="4M")
    assert done.returncode == 0, (seed, done.stderr[-3000:])
    found = json.loads(done.stdout)
    assert found["failed"] > 0 and found["ok"] > 0, (seed, found)  # the disk did fill
    assert found["stock"] == [] and found["ours"] == [], (seed, found)
    assert found["again"] == [] and found["litter"] == [], (seed, found)
    assert found.get("replayed", 0) == 0, (seed, found)


HOLE_CHILD = """
import errno, json, os, sys
import numpy as np
import zarr
from zarr.storage import LocalStore
from zarr_rangelock import RangeLockedStore, ShardWriter
mount, mode, api = sys.argv[1], sys.argv[2], sys.argv[3]
OURS = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
root = os.path.join(mount, "z")
kw = {"map_writes": True} if mode == "map_writes" else {"durability": mode}
store = RangeLockedStore(LocalStore(root), dense_shards=True, **kw)
C = 128  # chunks of 128 x 128 f4: 64 KiB, 16 pages
with zarr.config.set(OURS):
    arr = zarr.create_array(store, shape=(4 * C, 4 * C), chunks=(C, C), shards=(4 * C, 4 * C),
                            dtype="f4", compressors=None, fill_value=0)
w = ShardWriter(arr)
w.write_chunk((0, 0), np.full((C, C), 1, "f4"))  # laid out densely: the other chunks are holes
filler = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT)
try:  # leave 24 KiB: room for 6 of the chunk's 16 pages
    while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > 24 << 10:
        os.write(filler, b"\\xff" * 4096)
except OSError:
    pass
os.close(filler)
raised = None
try:
    if api == "write_chunk":
        w.write_chunk((1, 1), np.full((C, C), 2, "f4"))
    else:
        with zarr.config.set(OURS):
            arr[C:2 * C, C:2 * C] = 2
except OSError as e:
    raised = [type(e).__name__, e.errno, getattr(e, "written", None)]
os.unlink(os.path.join(mount, "filler"))
with zarr.config.set(STOCK):
    got = zarr.open_array(LocalStore(root), mode="r")[C:2 * C, C:2 * C]
print(json.dumps({"raised": raised, "new": int((got == 2).sum()), "old": int((got == 0).sum())}))
"""


@pytest.mark.parametrize("mode", ["none", "fsync", "map_writes"])
@pytest.mark.parametrize("api", ["write_chunk", "plain"])
def test_a_chunk_written_into_a_hole_on_a_full_disk_stays_all_old(
    tmp_path: Path, mode: str, api: str
) -> None:
    # Dense shards leave fill chunks of zero bytes as holes. A 64 KiB pwrite
    # over a hole with room for 6 of its 16 pages wrote those 6 and failed:
    # the chunk was left 6,144 elements new and 10,240 old (found by a bug
    # hunt; the test above writes 4 KiB chunks, one page, which cannot tear).
    # The range now gets its blocks first, so the write fails before a byte.
    done = run_on_a_small_tmpfs(tmp_path, HOLE_CHILD, mode, api, size="4M")
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["raised"] == ["PartialWriteError", 28, 0], found
    assert (found["new"], found["old"]) == (0, 128 * 128), found
