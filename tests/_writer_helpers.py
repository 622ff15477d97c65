"""Setup shared by the ``ShardWriter`` tests: twin arrays, one written
through a writer and one through the plain API, and their comparison."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from tests._shard_helpers import OURS, STOCK, new_array
from zarr_rangelock import RangeLockedStore, ShardWriter

COMPRESSORS: dict[str, Any] = {"raw": None, "zstd": [ZstdCodec(level=1)]}
STORES = ("memory", "local")

Inner = MemoryStore | LocalStore


@contextlib.contextmanager
def inner_stores(kind: str) -> Iterator[tuple[Inner, Inner]]:
    """Two empty stores of ``kind`` (LocalStores under a fresh temporary
    directory, so hypothesis examples never share one)."""
    if kind == "memory":
        yield MemoryStore(), MemoryStore()
        return
    with tempfile.TemporaryDirectory(prefix="wtests-") as tmp:
        yield LocalStore(Path(tmp) / "writer"), LocalStore(Path(tmp) / "plain")


def locked_array(inner: Inner, path: str = "", **options: Any) -> zarr.Array[Any]:
    """A sharded array at ``path`` of ``inner``, through the wrapper and our
    pipeline (``options``: ``new_array``'s, plus ``empty`` for
    ``write_empty_chunks``)."""
    empty = options.pop("empty", False)
    compressor = options.pop("compressor", "raw")
    durability = options.pop("durability", "none")
    if path:
        options["name"] = path
    return new_array(
        RangeLockedStore(inner, durability=durability),
        pipeline=OURS,
        compressors=COMPRESSORS[compressor],
        config={"write_empty_chunks": empty},
        **options,
    )


def array_keys(arr: zarr.Array[Any]) -> list[str]:
    """The array's keys, relative to its own path (metadata left out)."""
    path = arr.store_path.path
    prefix = f"{path}/" if path else ""

    async def collect() -> list[str]:
        return [k async for k in arr.store.list_prefix(prefix)]

    return sorted(k[len(prefix) :] for k in sync(collect()) if not k.endswith("zarr.json"))


def stock_read(inner: Inner, path: str = "") -> np.ndarray:
    """Read with stock zarr (default pipeline, the bare store)."""
    with zarr.config.set(STOCK):
        return np.asarray(zarr.open_array(inner, path=path, mode="r")[...])


def assert_same(
    written: zarr.Array[Any], plain: zarr.Array[Any], model: np.ndarray | None = None
) -> None:
    """The writer's array and the plain API's hold the same values (the
    model's, if given) and the same keys."""
    got = written[...]
    np.testing.assert_array_equal(got, plain[...])
    if model is not None:
        np.testing.assert_array_equal(got, model)
    assert array_keys(written) == array_keys(plain)


def no_locks_left(arr: zarr.Array[Any]) -> None:
    store = arr.store
    assert isinstance(store, RangeLockedStore)
    store.lock_manager._check()
    stats = store.lock_manager.stats()
    assert stats.holders == 0 and stats.waiters == 0


def chunk_region(coords: tuple[int, ...], shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
    """The region of the inner chunk at ``coords``, clipped at the edge."""
    return tuple(
        slice(i * n, min((i + 1) * n, s)) for i, n, s in zip(coords, chunks, shape, strict=True)
    )


def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """The grid of inner chunks."""
    return tuple(-(-s // c) for s, c in zip(shape, chunks, strict=True))


SHAPE, CHUNKS, SHARDS = (10, 7), (4, 3), (8, 6)  # a 3 x 3 grid of chunks, edges on both axes
GRID = chunk_grid(SHAPE, CHUNKS)
ALL_CHUNKS = list(itertools.product(*(range(g) for g in GRID)))


def twins(
    kind: str, tmp_path: Path, compressor: str = "raw", empty: bool = False, **options: Any
) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
    """The writer's array (at a path inside its store) and the plain API's."""
    options = {"shape": SHAPE, "chunks": CHUNKS, "shards": SHARDS, **options}
    if kind == "memory":
        inner, twin = MemoryStore(), MemoryStore()
    else:
        inner, twin = LocalStore(tmp_path / "writer"), LocalStore(tmp_path / "plain")
    return (
        locked_array(inner, "group/array", compressor=compressor, empty=empty, **options),
        locked_array(twin, compressor=compressor, empty=empty, **options),
    )


def chunk_value(coords: tuple[int, ...], salt: int) -> np.ndarray:
    """Distinct numbers for the chunk at ``coords`` (clipped shape), none fill."""
    shape = np.empty(SHAPE)[chunk_region(coords, SHAPE, CHUNKS)].shape
    return np.arange(int(np.prod(shape)), dtype="i4").reshape(shape) + 100 * salt + 1


def make_dense(writer: ShardWriter, plain: zarr.Array[Any], model: np.ndarray) -> None:
    """Shard (0, 0) dense (every chunk written), then one partial chunk write
    through the pipeline, which validates its index: what the fast path needs."""
    for arr in (writer, plain):
        arr[0:8, 0:6] = 5
        arr[1, 1] = 6
    model[0:8, 0:6] = 5
    model[1, 1] = 6


Outcome = tuple[type[BaseException], str] | None


def outcome(fn: Callable[[], None]) -> Outcome:
    """What ``fn()`` raised (type and message), or None."""
    try:
        fn()
    except Exception as e:
        return type(e), str(e)
    return None
