"""The stress runner's records: what workers saw (writes, reads), a run's
history, findings and a check's result; shared by the byte mode's checker
(:mod:`stress.oracle`) and the shard mode's (:mod:`stress.shard_check`).
Split from :mod:`stress.oracle`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stress.signature import Runs, decode, fmt_wid

if TYPE_CHECKING:
    from stress.oracle import KeyCarry

__all__ = [
    "ERROR",
    "IF_ABSENT",
    "MISSING",
    "OK",
    "VIOLATION_KINDS",
    "CheckResult",
    "History",
    "Log",
    "ReadRecord",
    "Recorder",
    "Violation",
    "WriteRecord",
]

#: Every kind of violation the checker reports, in report order.
VIOLATION_KINDS = (
    "lost_update",
    "lost_rmw",
    "torn_write",
    "torn_read",
    "stale_read",
    "phantom_read",
    "missing_key",
    "corrupt",
    "stock_mismatch",
    "op_error",
    "lock_leak",
    "hang",
)

#: Write status: took effect / failed because the key was missing (no effect) /
#: raised something else (may or may not have taken effect) / a
#: ``set_if_not_exists`` that returned (took effect, whole, if and only if
#: the key was absent at its instant: the oracle never demands it, and
#: flags its bytes where the key surely existed throughout its call).
OK, MISSING, ERROR, IF_ABSENT = "ok", "missing", "error", "if_absent"


@dataclass(slots=True)
class WriteRecord:
    """One write as a worker saw it.

    Attributes
    ----------
    key : str
    wid : int
        Write id; the bytes carry it (:mod:`stress.signature`).
    kind : str
        The operation (``"set"``, ``"set_range"``, ``"rmw"``, ``"delete"``, ...).
    spans : tuple of (int, int)
        Byte ranges written, ``(start (inclusive), end (exclusive))``, word-aligned.
        A ``delete`` covers the whole value.
    t_start, t_end : int
        ``time.monotonic_ns()`` just before the call and just after it returned.
    status : str
        ``"ok"``, ``"missing"`` (failed: key absent), ``"error"`` or
        ``"if_absent"``.
    is_delete : bool
    killed : bool
        A failed write whose process was killed in its call (``--kill-every``:
        its end is when the journal it left had been replayed).
    """

    key: str
    wid: int
    kind: str
    spans: tuple[tuple[int, int], ...]
    t_start: int
    t_end: int
    status: str = OK
    is_delete: bool = False
    killed: bool = False


@dataclass(slots=True)
class ReadRecord:
    """One read as a worker saw it.

    Attributes
    ----------
    key : str
    start, end : int
        Byte range asked for, ``start`` (inclusive), ``end`` (exclusive).
    t_start, t_end : int
        ``time.monotonic_ns()`` around the call.
    runs : Runs or None
        The decoded bytes; ``None`` if the key was absent.
    kind : str
        The operation that read (``"get"``, ``"get_range"``, ``"rmw"``, ``"final"``...).
    rmw : int
        For the read half of a read-modify-write, the wid of its write; else 0.
    """

    key: str
    start: int
    end: int
    t_start: int
    t_end: int
    runs: Runs | None
    kind: str = "get"
    rmw: int = 0

    @classmethod
    def from_bytes(
        cls,
        key: str,
        start: int,
        data: bytes | bytearray | memoryview | None,
        t_start: int,
        t_end: int,
        *,
        end: int | None = None,
        kind: str = "get",
        rmw: int = 0,
    ) -> ReadRecord:
        """Decode ``data`` (read from ``start``; ``None``: key absent) into a record."""
        runs = None if data is None else decode(data, start)
        if end is None:
            end = start + (0 if data is None else len(data))
        return cls(key, start, end, t_start, t_end, runs, kind, rmw)


@dataclass(frozen=True, slots=True)
class Violation:
    """One finding. ``expected``/``found`` are write ids (``None``: key absent).

    ``where`` replaces the byte range in :meth:`describe` when set: the shard
    mode (:mod:`stress.shard_check`) locates its findings by shard key, inner
    chunk and element instead of bytes, and there ``found=None`` is the fill
    value.
    """

    kind: str
    key: str
    start: int
    end: int
    expected: int | None
    found: int | None
    detail: str = ""
    op: str = ""
    where: str = ""

    @classmethod
    def note(cls, kind: str, detail: str, op: str = "", key: str = "-") -> Violation:
        """A finding about the run itself (a crash, a hang, a leak), not about bytes."""
        return cls(kind, key, 0, 0, None, None, detail, op)

    def describe(self, kinds: dict[int, str] | None = None) -> str:
        """One line: key, byte range, expected and found writer, detail."""

        def who(w: int | None) -> str:
            if w is None:
                return "-"
            s = fmt_wid(w)
            if kinds and w in kinds:
                s += f"({kinds[w]})"
            return s

        found = who(self.found)
        if self.found is None and self.where:
            found = "(fill)"
        elif self.found is None and self.kind in ("lost_update", "missing_key"):
            found = "(key absent)"
        place = self.where or f"bytes=[{self.start}, {self.end})"
        text = f"key={self.key} {place} "
        text += f"expected={who(self.expected)} found={found}"
        if self.op:
            text += f" op={self.op}"
        return text + (f": {self.detail}" if self.detail else "")


class Recorder[W, R]:
    """One worker's log of writes ``W`` and reads ``R``. Not shared between
    threads: each worker has its own."""

    __slots__ = ("reads", "writes")

    def __init__(self) -> None:
        self.writes: list[W] = []
        self.reads: list[R] = []


@dataclass
class Log[W, R]:
    """The logs of every worker of a run (the byte and the shard mode's history)."""

    recorders: list[Recorder[W, R]] = field(default_factory=list, kw_only=True)

    def recorder(self) -> Recorder[W, R]:
        """A new log for one worker. Call before the workers start."""
        rec: Recorder[W, R] = Recorder()
        self.recorders.append(rec)
        return rec

    def writes(self) -> Iterator[W]:
        for rec in self.recorders:
            yield from rec.writes

    def reads(self) -> Iterator[R]:
        for rec in self.recorders:
            yield from rec.reads


@dataclass
class History(Log[WriteRecord, ReadRecord]):
    """Everything recorded in one run, plus the final state of every key.

    Parameters
    ----------
    value_size : int
        Size in bytes of every value (all keys; a multiple of ``WORD``).
    """

    value_size: int
    final: dict[str, ReadRecord] = field(default_factory=dict)

    def set_final(self, key: str, data: bytes | None, t: int) -> None:
        """Record the state of ``key`` after every worker stopped (read at ``t``)."""
        self.final[key] = ReadRecord.from_bytes(key, 0, data, t, t, kind="final")


@dataclass
class CheckResult:
    """Violations found, and what was checked."""

    violations: list[Violation]
    reads: int
    writes: int
    keys: int
    seconds: float
    write_kinds: dict[int, str]
    #: What the next checkpoint needs of each key (see :func:`check`).
    carry: dict[str, KeyCarry] = field(default_factory=dict, repr=False)

    def by_kind(self) -> dict[str, list[Violation]]:
        out: dict[str, list[Violation]] = {}
        for v in self.violations:
            out.setdefault(v.kind, []).append(v)
        return {k: out[k] for k in sorted(out, key=_kind_order)}


def _kind_order(kind: str) -> tuple[int, str]:
    try:
        return (VIOLATION_KINDS.index(kind), kind)
    except ValueError:
        return (len(VIOLATION_KINDS), kind)
