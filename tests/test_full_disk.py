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
