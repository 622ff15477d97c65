"""The journal's records: a transaction's ops, encoded under two checksums.

``_journal`` writes one record at the start of a journal file before it
applies a transaction (step 1 of its design note), retires it after (its
magic zeroed), and replays the complete records that dead processes left;
this module encodes and decodes them.

Design note
-----------
*Record format* (little-endian): a 32-byte header, magic ``ZRLJNL02`` (8),
body length (8), ``time.time_ns()`` when written (8), CRC-32C of the body
(4), CRC-32C of the first 28 header bytes (4); then the body, one entry per
op, keys in sorted order, a key's range writes in the order made:

* a 36-byte entry header: kind (1: ``R`` range, ``S`` whole value, ``F``
  prepared file, ``D`` delete), flags (1), key length (2), start (8),
  length (8), dev (8), inode (8);
* the key in UTF-8;
* ``length`` bytes: ``R`` the bytes written at ``start``; ``S`` the value;
  ``F`` the prepared file's path relative to the root (and ``start`` is its
  inode); ``D`` none (length 0);
* ``R`` with flag 1 (*old*): ``length`` more bytes, what the range held
  before the transaction (carried up to :data:`OLD_BYTES_MAX`).
* ``R`` with flag 8 (*read*, a *read witness*, ``Transaction.add_witness``):
  a range the transaction depends on but does not write (a place a
  compressed shard's new index stops pointing at); its ``length`` bytes
  are what the range held, and no more follow (flag 1 is clear). Never
  applied: replay requires the range to hold them still (``_apply``). The
  read witnesses of a key come after its range writes, up to
  :data:`OLD_BYTES_MAX` bytes of them per key. A replay of an earlier
  version of this format reads such an entry as a range write, without
  old bytes, of the bytes the range held: it writes them back, a no-op
  where no other writer changed them.

The flags of ``S``, ``F`` and ``D`` say what the key was before the
transaction: 2 (*absent*), no file; 4 (*was*), the file whose ``st_dev`` and
``st_ino`` are dev and inode (0 otherwise; replay compares the inode number
alone, ``_apply._same_file``). ``R`` with flag 4: the file its
writes go into, the same in every range of the key (a record of a version
without it has flag 4 clear there: its range keys are witnessed by their
bytes only). These and a range's old bytes
are the op's *witnesses*: replay applies a key's ops only while the key
holds what the transaction found or left there (``_apply``). An entry
without them (flags 0) is applied as a record of the earlier format is.

A record naming what no store key can be (a path outside the root: ``..``,
an absolute path, the journal directory; ``_keys``), a name that is not
UTF-8, or a prepared file that is not a temporary file of its key
(``<key>.<32 hex digits>.partial``) is corrupt: replay discards it with a
warning, never writing, moving or removing a file outside the keys. So
is an entry whose flags this version does not know, or whose kind, flags
and length cannot go together (old bytes or a read on a value, a delete
with bytes): such a record is a bug's or a later version's, and is not
guessed at.

The earlier format, magic ``ZRLJNL01`` (a process of an earlier version
of this library), is still read and replayed as it was: the same header, and
entries of kind (1), key length (2), start (8), length (8), the key, the
bytes, without witnesses. A retired record's magic is zeros, in both.
"""

from __future__ import annotations

import struct
import time

import google_crc32c

from ._keys import TEMP_FILE, _rule_broken
from ._transaction import ABSENT, _KeyOps

__all__: list[str] = []  # nothing public: ``_journal`` uses the private names

_MAGIC = b"ZRLJNL02"
_MAGIC_V1 = b"ZRLJNL01"  # entries without witnesses: still read and replayed
_HEADER = struct.Struct("<8sQQII")
_HEAD_START = struct.Struct("<8sQQI")  # the header before its own checksum
_ENTRY = struct.Struct("<cBHQQQQ")  # kind, flags, key length, start, length, dev, inode
_ENTRY_V1 = struct.Struct("<cHQQ")
_RANGE, _SET, _DELETE, _FILE = b"R", b"S", b"D", b"F"
_OLD, _WAS_ABSENT, _WAS, _READ = 1, 2, 4, 8  # an entry's flags
_RETIRED = b"\0" * 8  # a retired record's magic

OLD_BYTES_MAX = 64 * 1024 + 4
"""A range write's old bytes go into its record entry (its witness at
replay) only up to this many bytes: a shard index of 4,096 chunks (16
bytes each) with its CRC-32C, and any inner chunk of up to 64 KiB (the
hot path of ``set_range``, whose old bytes are read anyway, to undo). A
larger range is written without them (the record would double), and is
witnessed only through the other ranges of its key (see ``_apply``)."""


def _crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


def _was(k: _KeyOps) -> tuple[int, int, int]:
    """The flags, dev and inode of a value's, prepared file's or delete's entry."""
    if k.was is None:
        return 0, 0, 0
    if k.was == ABSENT:
        return _WAS_ABSENT, 0, 0
    return _WAS, k.was[0], k.was[1]


def _encode(ops: dict[str, _KeyOps]) -> bytes:
    parts: list[bytes | memoryview] = []
    for key, k in sorted(ops.items()):
        kb = key.encode()
        n = len(kb)
        if k.replaces:
            flags, dev, ino = _was(k)
            if k.delete:
                parts += (_ENTRY.pack(_DELETE, flags, n, 0, 0, dev, ino), kb)
            elif k.file is not None:
                fb = k.file.encode()
                parts += (_ENTRY.pack(_FILE, flags, n, k.file_ino, len(fb), dev, ino), kb, fb)
            elif k.value is not None:
                value = bytes(k.value)
                parts += (_ENTRY.pack(_SET, flags, n, 0, len(value), dev, ino), kb, value)
            parts += _reads(k, kb, flags, dev, ino)  # (after the entry they add to)
            continue
        olds = k.olds or [None] * len(k.ranges)
        flags, dev, ino = _was(k)  # the file the writes go into (never absent)
        for (start, data), old in zip(k.ranges, olds, strict=True):
            if old is not None and len(old) <= OLD_BYTES_MAX:
                entry = _ENTRY.pack(_RANGE, flags | _OLD, n, start, len(data), dev, ino)
                parts += (entry, kb, data, old)
            else:
                parts += (_ENTRY.pack(_RANGE, flags, n, start, len(data), dev, ino), kb, data)
        parts += _reads(k, kb, flags, dev, ino)
    body = b"".join(parts)
    return _head(body) + body


def _reads(k: _KeyOps, kb: bytes, flags: int, dev: int, ino: int) -> list[bytes]:
    """The entries of ``k``'s read witnesses (flag 8), of the file ``flags``,
    ``dev`` and ``ino`` name (the one the key's writes go into, or the one its
    value, prepared file or delete replaces)."""
    parts: list[bytes] = []
    for (start, length), old in zip(k.reads, k.read_olds, strict=True):
        parts += (_ENTRY.pack(_RANGE, flags | _READ, len(kb), start, length, dev, ino), kb, old)
    return parts


def _head(body: bytes, magic: bytes = _MAGIC) -> bytes:
    head = _HEAD_START.pack(magic, len(body), time.time_ns(), _crc(body))
    return head + struct.pack("<I", _crc(head))


class _Corrupt(Exception):
    """Why a record cannot be applied."""


def _decode(raw: bytes) -> tuple[int, dict[str, _KeyOps]] | None:
    """A record's time and ops; None if retired or empty; :class:`_Corrupt` if
    not whole."""
    if len(raw) < _HEADER.size:
        if raw.strip(b"\0"):
            raise _Corrupt(f"only {len(raw)} bytes, shorter than a record header")
        return None
    magic, length, when, body_crc, head_crc = _HEADER.unpack_from(raw)
    if magic == _RETIRED:
        return None
    if magic not in (_MAGIC, _MAGIC_V1):
        raise _Corrupt(f"no record magic (found {magic!r})")
    if _crc(raw[: _HEAD_START.size]) != head_crc:
        raise _Corrupt("the header fails its checksum")
    body = raw[_HEADER.size : _HEADER.size + length]
    if len(body) != length:
        raise _Corrupt(f"truncated: {len(body)} of {length} body bytes")
    if _crc(body) != body_crc:
        raise _Corrupt("the body fails its checksum")
    v1 = magic == _MAGIC_V1
    entry = _ENTRY_V1 if v1 else _ENTRY
    ops: dict[str, _KeyOps] = {}
    pos = 0
    while pos < length:
        if pos + entry.size > length:
            raise _Corrupt("an entry runs past the body")
        if v1:
            kind, klen, start, n = _ENTRY_V1.unpack_from(body, pos)
            flags = dev = ino = 0
        else:
            kind, flags, klen, start, n, dev, ino = _ENTRY.unpack_from(body, pos)
        pos += entry.size
        key = _text(body[pos : pos + klen])
        pos += klen
        rule = _rule_broken(key)
        if rule is not None:  # a path outside the root, say: never replayed
            raise _Corrupt(f"key {key!r} {rule}")
        bad = _bad_flags(kind, flags, n)
        if bad is not None:  # (a bug's record, or a later version's: not guessed at)
            raise _Corrupt(f"the entry of key {key!r} {bad}")
        data = body[pos : pos + n]
        pos += n
        old = None
        if kind == _RANGE and flags & _OLD:
            old = body[pos : pos + n]
            pos += n
        if len(data) != n or (old is not None and len(old) != n):
            raise _Corrupt("an entry runs past the body")
        was = ABSENT if flags & _WAS_ABSENT else (dev, ino) if flags & _WAS else None
        if kind == _DELETE:
            ops[key] = _KeyOps(delete=True, was=was)
        elif kind == _SET:
            ops[key] = _KeyOps(value=bytearray(data), was=was)
        elif kind == _FILE:
            file = _text(data)
            if not (file.startswith(key) and TEMP_FILE.fullmatch(file[len(key) :])):
                raise _Corrupt(f"prepared file {file!r} is not a temporary file of key {key!r}")
            ops[key] = _KeyOps(file=file, file_ino=start, was=was)
        elif kind == _RANGE and flags & _READ:
            k = ops.setdefault(key, _KeyOps())
            k.reads.append((start, n))
            k.read_olds.append(data)
            if flags & _WAS:
                k.was = dev, ino
        elif kind == _RANGE:
            k = ops.setdefault(key, _KeyOps())
            k.ranges.append((start, data))
            if not v1:
                k.olds.append(old)
                if flags & _WAS:
                    k.was = dev, ino
        else:
            raise _Corrupt(f"unknown entry kind {kind!r}")
    return when, ops


def _bad_flags(kind: bytes, flags: int, n: int) -> str | None:
    """Why an entry's kind, flags and length cannot go together, or None."""
    if flags & ~(_OLD | _WAS_ABSENT | _WAS | _READ):
        return f"has flags this version does not know ({flags:#x})"
    if flags & (_OLD | _READ) and kind != _RANGE:
        return f"is of kind {kind!r} with a range's flags ({flags:#x})"
    if flags & _OLD and flags & _READ:
        return f"is both a write and a read witness ({flags:#x})"
    if flags & _WAS_ABSENT and flags & _WAS:
        return f"says its key was both absent and a file ({flags:#x})"
    if kind == _DELETE and n:
        return f"is a delete with {n} bytes"
    return None


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _Corrupt(f"a name is not UTF-8: {raw!r}") from None
