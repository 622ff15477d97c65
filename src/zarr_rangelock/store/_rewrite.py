"""Whole-value rewrites built from pieces: new bytes, and ranges of the old value.

Design note
-----------
*Why.* A compaction of a compressed shard (``shards/_jobs``) writes a new
value that is mostly the old one's bytes at other offsets. Reading the old
value, assembling the new one and handing it to ``set`` holds about three
times the shard in memory at once (measured by
``benchmarks/compaction_memory.py``: 4x the raw shard, traced). A rewrite
names the new value instead: its size, and pieces in order, each
``(offset, bytes)`` to write or ``(offset, Span(start, end))`` to copy from
the key's value as stored; what no piece covers is zero, and a later piece
wins where two overlap (as in ``shards/_layout.assemble_shard``).

*LocalStore* (:func:`build_temp`, :func:`publish`): the new value is written
into a temporary file beside the key's, named as LocalStore names its own
(``<name>.<32 hex>.partial``, ``_keys.TEMP_FILE``: hidden from listings,
removed as a stray if a killed writer leaves it), sized first (the gaps stay
sparse zeros), the copies made with ``os.copy_file_range`` (in the kernel:
no user memory; where it is refused, ``pread``/``pwrite`` through one
buffer of :data:`COPY_BLOCK` bytes), then published the way a whole-value
``set`` of the same durability mode is: renamed over the key (``"none"``),
fsynced before the rename and the directory fsynced after (``"fsync"``, and a
lone journal-mode write, atomic by itself), or handed to the call's journal
transaction as a prepared file (``_journal``: the record names the file, it
does not carry its bytes). Memory: :data:`COPY_BLOCK` at most, beyond the new
bytes the caller passes.

*MemoryStore* (:func:`assemble`): the new value is assembled in memory and
set; the old value is in memory anyway, so this costs one value's size.

Spans are read from the value as stored: a journal transaction's reads do
not see its own pending writes, and neither do its copies.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._errors import KeyNotFoundError
from ..locks._ranges import MAX_OFFSET, as_int
from ._apply import _aside, publish
from ._io import as_bytes_view, open_fd, write_range

__all__ = ["COPY_BLOCK", "Piece", "Span", "assemble", "build_temp", "check_pieces", "publish"]

#: The buffer of a copy that ``os.copy_file_range`` refuses (another file
#: system, an old kernel): the most memory a LocalStore rewrite uses.
COPY_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Span:
    """A byte range of the value as stored, to copy into the new value.

    Attributes
    ----------
    start : int
        First byte (inclusive).
    end : int
        Last byte (exclusive).
    """

    start: int
    end: int


type Piece = tuple[int, memoryview | Span]
"""``(offset in the new value, bytes to write or a Span to copy)``."""


def check_pieces(
    key: str, size: int, pieces: Sequence[tuple[int, object]], old_size: int | None
) -> list[Piece]:
    """The pieces as ``(offset, memoryview | Span)``; ``ValueError`` naming the
    key and the numbers if one falls outside ``[0, size)`` or copies from
    outside the stored value (``old_size`` bytes; None: no value, so no copy),
    or ``size`` is negative or past ``MAX_OFFSET``; ``TypeError`` naming them
    for a piece that is not an ``(int, Buffer or Span)`` pair or a Span whose
    ends are not ints (numpy's integers are taken, ``bool`` is not)."""
    as_size = as_int(size)
    if as_size is None or as_size < 0:
        raise ValueError(f"rewrite of {key!r}: the new size must be an int >= 0, got {size!r}")
    if as_size > MAX_OFFSET:
        raise ValueError(
            f"rewrite of {key!r}: the new size {as_size} is past {MAX_OFFSET}, the largest "
            "a file can have (a file offset is a signed 64-bit number)"
        )
    size = as_size
    out: list[Piece] = []
    for piece in pieces:
        if not isinstance(piece, (tuple, list)) or len(piece) != 2:
            raise TypeError(
                f"rewrite of {key!r}: each piece must be an (offset, Buffer or Span) pair, "
                f"got {piece!r}"
            )
        offset, src = _piece_int(key, "a piece's offset", piece[0]), piece[1]
        if isinstance(src, Span):
            if type(src.start) is not int or type(src.end) is not int:
                src = Span(
                    _piece_int(key, "a Span's start", src.start),
                    _piece_int(key, "a Span's end", src.end),
                )
            n = src.end - src.start
            if old_size is None:
                raise KeyNotFoundError(key, "rewrite")
            if src.start < 0 or n < 0 or src.end > old_size:
                raise ValueError(
                    f"rewrite of {key!r}: copy of [{src.start}, {src.end}) lies outside "
                    f"the stored value of {old_size} bytes"
                )
            item: memoryview | Span = src
        else:
            item = as_bytes_view(src, "rewrite")
            n = len(item)
        if offset < 0 or offset + n > size:
            raise ValueError(
                f"rewrite of {key!r}: a piece of {n} bytes at {offset} lies outside "
                f"the new value of {size} bytes"
            )
        if n:
            out.append((offset, item))
    return out


def _piece_int(key: str, what: str, value: object) -> int:
    as_index = as_int(value)
    if as_index is None:
        raise TypeError(
            f"rewrite of {key!r}: {what} must be an int, got {type(value).__name__}: {value!r}"
        )
    return as_index


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Consecutive copies that continue each other, as one copy."""
    out: list[Piece] = []
    for offset, src in pieces:
        if out and isinstance(src, Span):
            last_offset, last = out[-1]
            if (
                isinstance(last, Span)
                and last.end == src.start
                and last_offset + (last.end - last.start) == offset
            ):
                out[-1] = (last_offset, Span(last.start, src.end))
                continue
        out.append((offset, src))
    return out


def _copy(src: int, dst: int, start: int, end: int, offset: int, buf: list[bytearray]) -> None:
    """Copy ``[start, end)`` of ``src`` to ``offset`` of ``dst``."""
    pos = start
    while pos < end:
        n = 0
        if not buf:
            try:
                n = os.copy_file_range(src, dst, end - pos, pos, offset + (pos - start))
            except OSError:
                buf.append(bytearray(min(COPY_BLOCK, end - start)))  # refused: copy ourselves
        if buf:
            view = memoryview(buf[0])[: min(len(buf[0]), end - pos)]
            n = os.preadv(src, (view,), pos)
            if n > 0:
                write_range(dst, view[:n], offset + (pos - start))
        if n <= 0:
            raise OSError(f"the stored value ended at {pos} while copying [{start}, {end})")
        pos += n


def build_temp(path: str, size: int, pieces: list[Piece], sync: bool) -> tuple[str, int]:
    """Write the new value of the file ``path`` into a temporary file beside it
    (see the design note); return its path and inode. With ``sync`` it is
    fsynced. Removed again if anything fails."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _aside(path)
    # 0o666 less the umask, as zarr's LocalStore (Python's open) creates files
    fd = open_fd(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    src = -1
    try:
        os.ftruncate(fd, size)
        buf: list[bytearray] = []  # the copy buffer, made only if the kernel refuses
        for offset, item in _merged(pieces):
            if isinstance(item, Span):
                if src < 0:
                    src = open_fd(path, os.O_RDONLY | os.O_CLOEXEC)
                _copy(src, fd, item.start, item.end, offset, buf)
            else:
                write_range(fd, item, offset)
        if sync:
            os.fsync(fd)
        ino = os.fstat(fd).st_ino
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # (os.ftruncate's names no file)
            exc.add_note(
                f"while building the new value of {path!r} ({size} bytes) in a "
                "temporary file beside it; the value is as it was"
            )
        raise
    finally:
        if src >= 0:
            os.close(src)
    os.close(fd)
    return tmp, ino


def assemble(old: memoryview | None, size: int, pieces: list[Piece]) -> np.ndarray:
    """The new value in memory (MemoryStore): zeros, then each piece, copies
    from ``old`` (the value as stored)."""
    out = np.zeros(size, dtype=np.uint8)
    for offset, item in pieces:
        if isinstance(item, Span):
            assert old is not None  # check_pieces: no copy without a value
            data: memoryview = old[item.start : item.end]
        else:
            data = item
        out[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out
