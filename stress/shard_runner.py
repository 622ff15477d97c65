"""The shard mode's run: one sharded array, many writers, a numpy model, a verdict.

``python -m stress --shard`` creates a sharded array on a
:class:`~zarr_rangelock.RangeLockedStore` while zarr's ``codec_pipeline.path``
names ``zarr_rangelock.ShardWritePipeline`` (so the array uses it), prefills
some inner chunks with stock zarr (the shards start in zarr's own compact
layout), then runs the shard op kinds (:mod:`stress.shard_ops`) from the
runner's threads and asyncio tasks. After the load it reads the whole array
twice: through the run's array (locked store, the pipeline) and through a
fresh array opened with zarr's default pipeline on the bare store, and hands
the history and both reads to :func:`stress.shard_check.check_epoch`. It
does the same at every checkpoint (every ``--checkpoint`` ops, 2,000 by
default, with every worker parked; :mod:`stress.runner`), then drops the
records and keeps only the epoch's :class:`~stress.shard_check.ArrayCarry`.

With ``--processes N`` the coordinator (``proc=None``) creates and prefills
the array and reads it back at the end; each worker process opens it on its
own store and runs its threads and tasks (:mod:`stress.processes`).

``--unlocked`` is the control: the bare store and zarr's default pipeline for
everything. Stock zarr writes part of a shard by reading, merging and writing
back the whole shard, so concurrent writers of different inner chunks of one
shard lose each other's chunks, and the model reports ``lost_update``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

import numpy as np
import zarr
from zarr import Array
from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from stress.records import CheckResult, Violation
from stress.runner import SETUP_WRITER, RunConfig, _Run, register_load
from stress.shard_check import ArrayCarry, check_epoch
from stress.shard_model import ArrayHistory, BoxWrite, ValueCodec, slices
from stress.shard_ops import ShardConfig, ShardWorker, drain
from stress.signature import make_wid
from stress.targets import LockedTarget
from zarr_rangelock import RangeLockedStore, ShardWriter

__all__ = ["PIPELINE", "STOCK", "ShardRun", "sharding_codec"]

#: zarr config that makes arrays built under it use the library's pipeline.
PIPELINE = {"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}
#: zarr's default pipeline, named explicitly (for the control and the stock read).
STOCK = {"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}


def sharding_codec(sc: ShardConfig) -> ShardingCodec:
    """The array's serializer: a sharding codec as ``sc`` describes it."""
    inner: list[Any] = [BytesCodec()]
    if sc.compressor == "zstd":
        inner.append(ZstdCodec())
    elif sc.compressor == "gzip":
        inner.append(GzipCodec())
    if sc.crc32c:
        inner.append(Crc32cCodec())
    return ShardingCodec(
        chunk_shape=sc.chunks,
        codecs=inner,
        index_location=sc.index_location,  # type: ignore[arg-type]  # checked by problem()
        subchunk_write_order=sc.order,  # type: ignore[arg-type]  # checked by problem()
    )


def _pipeline_name(arr: Array[Any]) -> str:
    return type(arr.async_array.codec_pipeline).__name__


@register_load("shard")
class ShardRun(_Run):
    """A shard-mode run (see the module docstring)."""

    #: A shard op moves far more than a byte op and a read keeps its values:
    #: check ten times as often.
    CHECKPOINT = 2_000
    #: What the last checkpoint kept for the next epoch.
    carry: ArrayCarry | None = None

    def __init__(
        self,
        cfg: RunConfig,
        inner: MemoryStore | LocalStore,
        out: TextIO,
        *,
        proc: int | None = 0,
        generation: int = 0,
        opened: RangeLockedStore | None = None,
    ) -> None:
        super().__init__(cfg, inner, out, proc=proc, generation=generation, opened=opened)
        sc = cfg.shard
        problem = sc.problem()
        if problem is not None:
            raise ValueError(problem)
        self.geometry = sc.geometry
        self.codec = ValueCodec(sc.dtype, sc.shape)
        slots = self._slots(self.codec.max_writer, f" with --dtype {sc.dtype}")
        self.array_history = self.log = ArrayHistory(self.geometry, self.codec)
        if isinstance(self.target, LockedTarget):
            store: Any = self.target.store
            config, want = PIPELINE, "ShardWritePipeline"
        else:
            store, config, want = inner, STOCK, "BatchedCodecPipeline"
        with zarr.config.set(config):
            if self.creates:
                self.arr: Array[Any] = zarr.create_array(
                    store,
                    shape=sc.shape,
                    chunks=sc.shards,
                    dtype=sc.dtype,
                    fill_value=0,
                    serializer=sharding_codec(sc),
                    compressors=None,
                )
            else:  # a worker process: the coordinator created (and prefilled) it
                self.arr = zarr.open_array(store, mode="r+")
        self.pipeline = _pipeline_name(self.arr)
        if self.pipeline != want:
            raise RuntimeError(f"the array was built with {self.pipeline}, not {want}")
        self.label = f"{self.target.label} + {self.pipeline}"
        # One ShardWriter for the process's workers (it is thread-safe), as
        # a thread pool shares one.
        shard_writer = ShardWriter(self.arr) if isinstance(self.target, LockedTarget) else None
        self.workers = [
            ShardWorker(
                writer,
                name,
                rng,
                self.arr,
                self.codec,
                self.geometry,
                self.array_history.recorder(),
                shard_writer,
            )
            for writer, name, rng in slots
        ]

    def _stock_array(self, mode: Literal["r", "r+"] = "r") -> Array[Any]:
        """The array opened afresh with zarr's default pipeline on the bare store."""
        with zarr.config.set(STOCK):
            arr = zarr.open_array(self.inner, mode=mode)
        assert _pipeline_name(arr) == "BatchedCodecPipeline"
        return arr

    def _setup(self) -> None:
        """Stock zarr writes a random ``prefill`` fraction of the inner chunks, one by one."""
        sc = self.cfg.shard
        if sc.prefill <= 0:
            return
        g = self.geometry
        grid = g.grid(g.chunks)
        total = int(np.prod(grid))
        rng = random.Random(f"{self.cfg.seed}/prefill")
        picks = rng.sample(range(total), round(total * sc.prefill))
        arr = self._stock_array("r+")
        rec = self.array_history.recorder()
        for seq, flat in enumerate(sorted(picks), start=1):
            lo, hi = g.cell([int(i) for i in np.unravel_index(flat, grid)], g.chunks)
            wid = make_wid(SETUP_WRITER, seq)
            values = self.codec.encode(wid, lo, hi)
            t0 = time.monotonic_ns()
            arr[slices(lo, hi)] = values
            rec.writes.append(BoxWrite(wid, "prefill", lo, hi, t0, time.monotonic_ns()))

    def _final(self) -> list[Violation]:
        out: list[Violation] = []
        reads: dict[str, Callable[[], Any]] = {
            "stock": lambda: self._stock_array()[...],
            self.pipeline: lambda: self.arr[...],
        }
        for label, read in reads.items():
            try:
                self.array_history.finals[label] = np.asarray(read())
            except Exception as e:
                detail = f"reading the final array ({label}) failed: {type(e).__name__}: {e}"
                out.append(Violation.note("op_error", detail, "final"))
        try:
            self.array_history.keys = self._shard_keys()
        except Exception as e:
            detail = f"listing the bare store's shard keys failed: {type(e).__name__}: {e}"
            out.append(Violation.note("op_error", detail, "final"))
        return out

    def _shard_keys(self) -> frozenset[str]:
        """The shard keys the bare store lists; not the other names under
        ``c/`` (a stock LocalStore's temporary files)."""
        return frozenset(sync(drain(self.inner.list_prefix("c/")))) & self.geometry.shard_keys()

    def retained(self) -> int:
        return super().retained() + (self.carry.size() if self.carry is not None else 0)

    def _checkpoint(self) -> bool:
        """Read the array both ways now (no worker is mid-op), check the epoch,
        keep its carry, drop its records."""
        self.crashes.extend(self._final())
        self._check()
        self.drop_records()
        self.array_history.finals = {}
        self.array_history.keys = None
        return True

    def _check(self) -> CheckResult:
        result, self.carry = check_epoch(self.array_history, self.carry)
        self._absorb(result)
        assert self._found is not None
        return self._found
