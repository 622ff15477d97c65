"""Setup shared by the tests of ``ShardWriter.write_chunks``
(``test_shard_writer_batches.py`` and ``test_shard_writer_batch_threads.py``):
an array geometry in which every shard can be dense, twins with the fast
paths open, the plain API's twin of a batch, and a spy on the paths the
writer takes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, MemoryStore

from tests._writer_helpers import chunk_grid, chunk_region, locked_array, make_all_dense, twins
from zarr_rangelock import ShardWriter
from zarr_rangelock.shards import _fastpaths

# The geometry of the fast-path, thread and durability tests of batches: 8 x 6 inner
# chunks of 3 x 4 in 2 x 2 shards of 4 x 3 chunks. No chunk is clipped by
# the array's edge: the writer leaves edge chunks to the pipeline (zarr
# merges them into the chunk stored before; see ``shards/_writer``), and
# these tests are about the fast paths. Every shard has all twelve of its
# chunks in the array, so every shard can be dense (a chunk alone in an
# edge shard would be a whole-shard write, always the pipeline's).
T_SHAPE, T_CHUNKS, T_SHARDS = (24, 24), (3, 4), (12, 12)
T_ALL = list(itertools.product(*(range(g) for g in chunk_grid(T_SHAPE, T_CHUNKS))))
T_SHARD_KEYS = ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]
THREE_PER_SHARD = [c for c in T_ALL if c[0] % 4 == 1]
"""A row of three chunks in each shard: few enough to be appended into a
compressed shard's free space without a compaction (see ``_jobs``)."""
CHUNK_BYTES = 3 * 4 * 4  # one inner chunk of i4, uncompressed


def t_region(coords: tuple[int, ...]) -> Any:
    """The region of the chunk at ``coords``."""
    return chunk_region(coords, T_SHAPE, T_CHUNKS)


def t_value(coords: tuple[int, ...], tag: int) -> Any:
    """Distinct numbers per chunk and tag >= 1 (a scalar for every fifth
    chunk), none fill; the tag can be read back from any element:
    ``value // 1000``."""
    k = T_ALL.index(coords)
    if k % 5 == 0:
        return np.int32(1000 * tag + k)
    shape = np.empty(T_SHAPE)[t_region(coords)].shape
    return (np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) % 1000) + 1000 * tag


def t_full(tag: int) -> np.ndarray:
    """The whole array, every chunk ``t_value(chunk, tag)``."""
    full = np.zeros(T_SHAPE, dtype="i4")
    for coords in T_ALL:
        full[t_region(coords)] = t_value(coords, tag)
    return full


def t_array(inner: MemoryStore | LocalStore, compressor: str) -> zarr.Array[Any]:
    """A new array of this geometry in ``inner``, through the wrapper."""
    return locked_array(
        inner, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS, compressor=compressor
    )


def ready_twins(
    kind: str, tmp_path: Path, compressor: str, **options: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any], ShardWriter, np.ndarray]:
    """Twins, their writer and the model, every shard written whole and then
    in part: dense and validated (uncompressed), or with an index this
    process wrote and free space (compressed): the fast paths are open."""
    written, plain = twins(
        kind, tmp_path, compressor, shape=T_SHAPE, chunks=T_CHUNKS, shards=T_SHARDS, **options
    )
    writer = ShardWriter(written)
    model = np.zeros(T_SHAPE, dtype="i4")
    make_all_dense([writer, plain], model, T_SHARDS, t_full(1))
    return written, plain, writer, model


def plain_writes(
    plain: zarr.Array[Any],
    model: np.ndarray,
    pairs: Any,
    shape: tuple[int, ...] = T_SHAPE,
    chunks: tuple[int, ...] = T_CHUNKS,
) -> None:
    """The plain API's twin of a batch: each chunk in turn (and the model)."""
    for coords, value in pairs:
        region = chunk_region(tuple(coords), shape, chunks)
        plain[region] = value
        model[region] = value


# ------------------------------------------------------------------- the spies


@dataclass
class Spy:
    """What the writer did: regions written through the pipeline
    (``_write_slow``), each try of a fast path: (shard key, chunks, all of
    them written; ``cold``: into a shard not laid out densely), and the
    shards the fast paths compacted."""

    slow: list[Any] = field(default_factory=list)
    in_place: list[tuple[str, int, bool]] = field(default_factory=list)
    appended: list[tuple[str, int, bool]] = field(default_factory=list)
    cold: list[tuple[str, int, bool]] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.slow.clear()
        self.in_place.clear()
        self.appended.clear()
        self.cold.clear()
        self.compacted.clear()


def _shard_name(key: str) -> str:
    """A shard's key relative to its array ("c/0/1")."""
    return key if key.startswith("c/") else key[key.rindex("/c/") + 1 :]


def spy_on_writer(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """A ``Spy`` on every ``ShardWriter`` from now on (until ``monkeypatch``
    undoes it); each module's ``spy`` fixture."""
    s = Spy()
    slow, in_place, appended, cold, compact_fast = (
        ShardWriter._write_slow,
        ShardWriter._put_in_place,
        ShardWriter._put_appended,
        ShardWriter._put_cold,
        _fastpaths._compact,
    )

    def write_slow(self: ShardWriter, region: Any, value: Any) -> None:
        s.slow.append(region)
        slow(self, region, value)

    def put_in_place(
        self: ShardWriter, key: str, writes: list[Any], path: Any, wait: bool = True
    ) -> int:
        done = in_place(self, key, writes, path, wait)  # how many were written (all or none)
        if done != _fastpaths.BUSY:  # not tried: the writer tries again, waiting
            s.in_place.append((_shard_name(key), len(writes), done == len(writes)))
        return done

    def put_appended(self: ShardWriter, key: str, writes: list[Any], path: Any) -> int:
        done = appended(self, key, writes, path)  # how many were written (all or none)
        s.appended.append((_shard_name(key), len(writes), done == len(writes)))
        return done

    def put_cold(self: ShardWriter, key: str, writes: list[Any], path: Any) -> int:
        done = cold(self, key, writes, path)  # how many were written (all or none)
        s.cold.append((_shard_name(key), len(writes), done == len(writes)))
        return done

    def compact(store: Any, key: str, *args: Any) -> None:
        s.compacted.append(_shard_name(key))
        compact_fast(store, key, *args)

    monkeypatch.setattr(ShardWriter, "_write_slow", write_slow)
    monkeypatch.setattr(ShardWriter, "_put_in_place", put_in_place)
    monkeypatch.setattr(ShardWriter, "_put_appended", put_appended)
    monkeypatch.setattr(ShardWriter, "_put_cold", put_cold)
    monkeypatch.setattr(_fastpaths, "_compact", compact)
    return s
