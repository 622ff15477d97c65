"""Where a root's locks and change stamps live in its lock file.

The lock file (:data:`LOCK_FILE_NAME` in a LocalStore root) is the offset
space of every OS range lock of the root (``_oslock``) and, in its first
bytes, the change stamps. Every key hashes (CRC-32, stable across processes
and runs) to one of :data:`SLOTS` slots of :data:`SLOT_BYTES` (1 TiB) of
that space, and a range ``[s, e)`` of the key is locked as
``[slot * SLOT_BYTES + s, slot * SLOT_BYTES + e)``, offsets past 1 TiB
clamped to the slot's last byte (ranges there can only overlap more: more
exclusion, never less). Keys that collide share a slot, which can only make
requests of different processes wait that need not, never the reverse (a
process's own requests: ``_own``). A prefix lock
(``delete_dir``, ``clear``) locks :data:`WHOLE_SPACE`, every slot, which
stays below the presence byte (``_presence``).

The file's first :data:`FILE_SIZE` bytes are a header (:data:`MAGIC`) and
:data:`STAMP_SLOTS` 64-bit change stamps and one more, the epoch
(``_osfile``, "Change stamps"); keys hash to stamp slots by the same CRC-32.
Every process maps the stamps shared (:func:`open_stamps`), with two
exceptions, each for a place where a store or a load through the mapping
could kill the process with ``SIGBUS`` on a full disk, where ``pwrite``
raises ``OSError``:

* *Holes.* A page of the stamps over a hole of the file gets its block when
  first written (on tmpfs, when first touched at all). So a writable opener
  gives the holes their blocks first (``_fallocate``; where the file system
  lacks ``fallocate``, :func:`fill_stamps` writes every stamp anew, which
  does the same); where neither can (the disk full when a lock file with
  holes is opened, or a read-only opener) the stamps are read and written
  with ``pread``/``pwrite`` (:class:`FileStamps`: the same bytes, through
  the same page cache as the others' mappings).
* *Overwrites that allocate* (``_mounts.overwrites_allocate``: a
  copy-on-write file system, or one of unknown type): every store may need
  a new block, holes or not. The stamps are mapped read-only there and
  written with ``pwrite``.

Where the stamps are written with ``pwrite``, a whole-value change must not
find out only after the change that its stamp cannot be written (other
processes would go on trusting what they had cached of the old value): when
its exclusive whole-key lock (a prefix lock: the epoch) is taken, before the
change, :meth:`FileStamps.back` writes the stamp the change will bump, so a
full disk fails the change there. Over holes once per slot (the block is
then had); where overwrites allocate, at every such lock (the bump after
the change may then fail too, but the stamp has moved already: no process
keeps trusting the old value).

Complexity: a key's slots are one CRC-32 of its name, memoised; the spans of
``n`` ranges O(n).
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import zlib

from .._fallocate import allocate_holes, allocated
from ._mounts import overwrites_allocate
from ._presence import PRESENCE_BYTE

__all__ = [
    "FILE_SIZE",
    "HEADER",
    "LOCK_FILE_NAME",
    "MAGIC",
    "SLOTS",
    "SLOT_BYTES",
    "STAMP_SLOTS",
    "WHOLE_SPACE",
    "FileStamps",
    "Span",
    "fill_stamps",
    "fresh_stamp",
    "key_slot",
    "open_stamps",
    "range_span",
    "slots_of",
    "spans_for",
    "stamp_slot",
]

#: Name of the lock file in a LocalStore root (hidden from listings, refused as a key).
LOCK_FILE_NAME = ".zarr-rangelock"

#: Offset space of one key in the lock file (offsets past it are clamped).
SLOT_BYTES = 1 << 40
#: Slots keys hash to; ``SLOTS * SLOT_BYTES`` stays below ``2**63``.
SLOTS = 1 << 22
WHOLE_SPACE = SLOTS * SLOT_BYTES

#: Stamp slots keys hash to, and one more: the epoch, for prefix changes.
STAMP_SLOTS = 4096
HEADER = 64
MAGIC = b"ZRLOCK01"
FILE_SIZE = HEADER + 8 * (STAMP_SLOTS + 1)

assert WHOLE_SPACE <= PRESENCE_BYTE  # no key slot, no prefix lock reaches the presence

type Span = tuple[int, int]  # (start, length) in the lock file; length 0: to the end

_SLOTS_OF: dict[str, tuple[int, int]] = {}
_SLOTS_MEMO_MAX = 1 << 16


def slots_of(key: str) -> tuple[int, int]:
    """``key``'s lock slot and stamp slot, memoised (the hot path's lookup).

    The memo only grows by pure results and is emptied when full; dict
    operations are atomic, so it needs no lock.
    """
    slots = _SLOTS_OF.get(key)
    if slots is None:
        crc = zlib.crc32(key.encode("utf-8", "surrogatepass"))
        slots = (crc & (SLOTS - 1), crc & (STAMP_SLOTS - 1))
        if len(_SLOTS_OF) >= _SLOTS_MEMO_MAX:
            _SLOTS_OF.clear()
        _SLOTS_OF[key] = slots
    return slots


def key_slot(key: str) -> int:
    """The slot ``key`` hashes to (CRC-32: stable across processes and runs)."""
    return slots_of(key)[0]


def stamp_slot(key: str) -> int:
    """The change-stamp slot of ``key`` (see above)."""
    return slots_of(key)[1]


def range_span(key: str, start: int, end: int) -> Span:
    """The lock-file span of ``[start, end)`` of ``key`` (``end`` may be ``INF``)."""
    base = slots_of(key)[0] * SLOT_BYTES
    if end <= SLOT_BYTES:
        return base + start, end - start
    return _clamped(base, start)


def _clamped(base: int, start: int) -> Span:
    """The span from ``start`` to the end of the slot at ``base``."""
    s = min(start, SLOT_BYTES - 1)
    return base + s, SLOT_BYTES - s


def spans_for(key: str, ranges: tuple[tuple[int, int], ...], prefix: bool) -> list[Span]:
    """Lock-file spans, ascending, for ``ranges`` of ``key`` (or a prefix lock)."""
    if prefix:
        return [(0, WHOLE_SPACE)]
    base = slots_of(key)[0] * SLOT_BYTES  # (range_span's, once for all of them)
    return [(base + s, e - s) if e <= SLOT_BYTES else _clamped(base, s) for s, e in ranges]


def fresh_stamp() -> int:
    """A new change stamp: 64 random bits, never 0 (a stamp never written)."""
    return int.from_bytes(os.urandom(8)) | 1


def fill_stamps(fd: int) -> bool:
    """Write a fresh stamp into every slot of ``fd``'s lock file (open for
    writing), in one ``pwrite``; whether all of it was written (False where
    the disk or the quota is full: the holes stay).

    Safe while other processes use the file: a stamp only ever changes to a
    number nobody saw before, so a fresh one where nothing changed is a false
    alarm (caches of the keys are dropped once), never a miss."""
    words = memoryview(bytearray(os.urandom(8 * (STAMP_SLOTS + 1)))).cast("Q")
    for i in range(len(words)):
        words[i] |= 1
    try:
        return os.pwrite(fd, words, HEADER) == words.nbytes
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return False
        raise


class FileStamps:
    """The lock file's stamps read and written with ``pread``/``pwrite`` (see
    above): ``stamps[i]`` as of a ``memoryview`` of them cast to ``"Q"``
    (native byte order, as the mapping other processes use), through a
    descriptor of the lock file this object owns.

    ``backed``: the slots this object has written (so their blocks exist:
    a later write there cannot find the disk full, unless ``renew``: every
    overwrite allocates); see :meth:`back`.

    Concurrency
    -----------
    Thread-safe (positional reads and writes of 8 bytes; ``backed`` only
    grows). A write that finds the disk full raises ``OSError``
    (``ENOSPC``); a read of a hole reads 0.
    """

    __slots__ = ("backed", "fd", "renew")

    def __init__(self, fd: int, *, renew: bool = False) -> None:
        self.fd = fd
        self.renew = renew
        self.backed: set[int] = set()

    def __getitem__(self, slot: int) -> int:
        return int.from_bytes(os.pread(self.fd, 8, HEADER + 8 * slot), sys.byteorder)

    def __setitem__(self, slot: int, stamp: int) -> None:
        os.pwrite(self.fd, stamp.to_bytes(8, sys.byteorder), HEADER + 8 * slot)
        self.backed.add(slot)

    def back(self, slot: int) -> None:
        """Make sure the stamp of a change about to be made has moved even
        if the disk is full afterwards: write a fresh stamp into ``slot``
        unless this object wrote it before and ``renew`` is off (its block is
        had). Call with the exclusive lock of a key of the slot held, before
        changing the key's value: a false alarm for its readers, as
        :func:`fill_stamps`.

        Raises
        ------
        OSError
            ``ENOSPC`` (or ``EDQUOT``) where the slot's block cannot be had.
        """
        if self.renew or slot not in self.backed:
            self[slot] = fresh_stamp()

    def __del__(self) -> None:
        # (not contextlib.suppress: at interpreter shutdown module globals,
        # contextlib among them, may be None by now; os.close then fails too)
        try:  # noqa: SIM105  (see above)
            os.close(self.fd)
        except Exception:
            pass


type Stamps = tuple[mmap.mmap | None, memoryview | FileStamps, FileStamps | None]


def open_stamps(fd: int, writable: bool, fstype: str | None) -> Stamps | None:
    """The stamps of the lock file open at ``fd`` (see above):
    ``(mapping, reads, writes)``: the mapping (None where the stamps are not
    mapped), what the stamps are read from (``reads[slot]``: the mapping's
    ``"Q"`` view, or a :class:`FileStamps`) and what they are written with
    (None: ``reads``, a writable mapping). None for a lock file being made
    (a read-only opener finds it shorter than :data:`FILE_SIZE`). ``fd``
    stays the caller's; a :class:`FileStamps` has a duplicate of its own.
    ``writable`` makes the file if it is new (a size and the magic) and
    allocates its holes; ``fstype`` (``_mounts.filesystem_type``) says
    whether overwrites allocate."""
    if writable:
        if os.fstat(fd).st_size < FILE_SIZE:
            os.ftruncate(fd, FILE_SIZE)  # idempotent: never shrinks, zero-fills
            os.pwrite(fd, MAGIC, 0)
        whole = allocate_holes(fd, FILE_SIZE) or fill_stamps(fd)
    else:
        if os.fstat(fd).st_size < FILE_SIZE:
            return None  # being made: treat as not there yet
        whole = allocated(fd, FILE_SIZE)  # (on tmpfs a read of a hole takes a block)
    renew = writable and overwrites_allocate(fstype)
    if not whole:
        stamps = FileStamps(os.dup(fd), renew=renew)
        return None, stamps, stamps if writable else None
    in_place = writable and not renew
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if in_place else 0)
    mapping = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, prot)
    reads = memoryview(mapping).cast("B")[HEADER:FILE_SIZE].cast("Q")
    return mapping, reads, FileStamps(os.dup(fd), renew=True) if renew else None
