"""The byte mode's run (the default): store calls on ``cfg.keys`` keys of
``cfg.value_size`` bytes, checked by :func:`stress.oracle.check`.

Split from :mod:`stress.runner` (which drives every load); it registers
itself there as the ``"bytes"`` load on import, as the shard mode's
:mod:`stress.shard_runner` does.
"""

from __future__ import annotations

import random
import time
from typing import TextIO

from zarr.storage import LocalStore, MemoryStore

import stress.key_ops  # noqa: F401  (registers the byte mode's ops on whole keys)
from stress.ops import KEY_DIR, ByteWorker
from stress.oracle import KeyCarry, check
from stress.records import CheckResult, History, Violation
from stress.runner import SETUP_WRITER, RunConfig, _Run, register_load
from stress.signature import MAX_WRITER
from zarr_rangelock import RangeLockedStore

__all__ = ["BytesRun"]


@register_load("bytes")
class BytesRun(_Run):
    """The byte-store load: store calls on ``cfg.keys`` keys of ``cfg.value_size`` bytes."""

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
        self.keys = [f"{KEY_DIR}/k{i}" for i in range(cfg.keys)]
        self.history = self.log = History(cfg.value_size)
        self.spans: dict[int, tuple[tuple[int, int], ...]] = {}
        self.workers = [
            ByteWorker(
                writer,
                name,
                rng,
                self.target,
                self.keys,
                cfg.value_size,
                self.history.recorder(),
                self.spans,
            )
            for writer, name, rng in self._slots(MAX_WRITER)
        ]

    def _setup(self) -> None:
        """Create every key with a whole value, signed by the setup writer."""
        size = self.cfg.value_size
        w = ByteWorker(
            SETUP_WRITER,
            "setup",
            random.Random(0),
            self.target,
            self.keys,
            size,
            self.history.recorder(),
            self.spans,
        )
        for key in self.keys:
            wid = w.new_write([(0, size)])
            buf = w.payload(wid, 0, size)
            t0 = time.monotonic_ns()
            self.target.set_sync(key, buf)
            w.wrote(key, wid, "set", [(0, size)], t0, time.monotonic_ns())

    def _final(self) -> list[Violation]:
        """Read the final state, after every worker stopped; problems doing so."""
        t_final = time.monotonic_ns()
        for key in self.keys:
            buf = self.inner.get_sync(key)
            self.history.set_final(key, None if buf is None else buf.to_bytes(), t_final)
        return []

    # Checkpoints: what earlier epochs carry forward.
    carry: dict[str, KeyCarry] | None = None

    def retained(self) -> int:
        carried = sum(c.size() for c in (self.carry or {}).values())
        return super().retained() + carried

    def _checkpoint(self) -> bool:
        """Read every key now (no worker is mid-op), check the epoch, keep its carry."""
        self._final()
        result = check(self.history, self.carry)
        self.carry = result.carry
        self._absorb(result)
        self.drop_records()
        self.history.final = {}
        carried = self.carry or {}
        keep = {wid for c in carried.values() for wid in c.writes}
        self.prune_spans(keep)
        return True

    def handed_over(self) -> None:
        super().handed_over()
        self.prune_spans()  # only the quick check reads them, and workers of a process run none

    def prune_spans(self, keep: set[int] | None = None) -> None:
        """Forget the quick check's spans of writes not in ``keep`` (None: all)."""
        for wid in [wid for wid in self.spans if keep is None or wid not in keep]:
            del self.spans[wid]  # the quick check's table: only writes still visible

    def _check(self) -> CheckResult:
        result = check(self.history, self.carry)
        self.carry = result.carry
        self._absorb(result)
        assert self._found is not None
        return self._found
