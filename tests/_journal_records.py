"""Journal records written by hand, and the root the journal tests replay them into.

A record is built from the format in ``store/_record``'s design note
(:func:`record`), put into the journal file of a "dead" process
(:func:`dead_journal`: a ``<pid>-<hex>.jnl`` file nobody holds an ``flock``
on) and replayed by opening the root with ``durability="journal"``
(:func:`open_journaled`). Shared by ``test_durability_journal*.py``, the
journal model, and the interrupt and process tests.
"""

from __future__ import annotations

import struct
from pathlib import Path

import google_crc32c
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _transaction
from zarr_rangelock.store._journal import JOURNAL_DIR

B = cpu.Buffer.from_bytes
Op = tuple[bytes, str, int, bytes]  # kind (R, S, F, D), key, start, bytes


def crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


Witness = bytes | tuple[int, int] | None
"""A range write's old bytes; a value's, prepared file's or delete's key as it
was, ``(st_dev, st_ino)`` or ``ABSENT``; None: no witness."""
ABSENT = _transaction.ABSENT


def record(ops: list[Op], when: int = 1, *, witnesses: list[Witness] | None = None) -> bytes:
    """A journal record written at ``when`` (ns), from the format in
    ``_record``'s design note: with ``witnesses`` (one per op), the current
    one (``ZRLJNL02``); without, the earlier one (``ZRLJNL01``)."""
    body = b""
    for i, (kind, key, start, data) in enumerate(ops):
        kb = key.encode()
        if witnesses is None:
            body += struct.pack("<cHQQ", kind, len(kb), start, len(data)) + kb + data
            continue
        w = witnesses[i]
        flags, dev, ino, old = 0, 0, 0, b""
        if isinstance(w, bytes):
            flags, old = 1, w
        elif w == ABSENT:
            flags = 2
        elif w is not None:
            flags, (dev, ino) = 4, w
        entry = struct.pack("<cBHQQQQ", kind, flags, len(kb), start, len(data), dev, ino)
        body += entry + kb + data + old
    magic = b"ZRLJNL01" if witnesses is None else b"ZRLJNL02"
    head = magic + struct.pack("<QQI", len(body), when, crc(body))
    return head + struct.pack("<I", crc(head)) + body


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def dead_journal(root: Path, raw: bytes, name: str = "4194999-0123456789abcdef.jnl") -> Path:
    """A journal file as a killed process leaves it: nobody holds its flock."""
    d = root / JOURNAL_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_bytes(raw)
    return path


def journal_files(root: Path) -> list[str]:
    """The names in the root's journal directory (none if it is not there)."""
    d = root / JOURNAL_DIR
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def open_journaled(root: Path) -> RangeLockedStore:
    return RangeLockedStore(LocalStore(root), durability="journal")


OLD_A = bytes(range(100))
OLD_B = b"b" * 50


def journal_root(tmp_path: Path) -> Path:
    """``tmp_path`` with keys "a" (``OLD_A``, 100 bytes), "b/c" (``OLD_B``, 50) and
    "d" (3), written directly."""
    (tmp_path / "a").write_bytes(OLD_A)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "c").write_bytes(OLD_B)
    (tmp_path / "d").write_bytes(b"ddd")
    return tmp_path
