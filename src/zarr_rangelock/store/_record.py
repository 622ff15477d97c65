"""The journal's records: a transaction's ops, encoded under two checksums.

``_journal`` writes one record at the start of a journal file before it
applies a transaction (step 1 of its design note), retires it after (its
magic zeroed), and replays the complete records that dead processes left;
this module encodes and decodes them.

Design note
-----------
*Record format* (little-endian): a 32-byte header, magic ``ZRLJNL01`` (8),
body length (8), ``time.time_ns()`` when written (8), CRC-32C of the body
(4), CRC-32C of the first 28 header
bytes (4); then the body, one entry per op: kind (1: ``R`` range, ``S``
whole value, ``F`` prepared file, ``D`` delete), key length (2), the key in
UTF-8, start (8), length (8), the bytes; for ``F`` the start is the file's
inode and the bytes its path relative to the root. A retired record's magic
is zeros.
"""

from __future__ import annotations

import struct
import time

import google_crc32c

from ._transaction import _KeyOps

__all__: list[str] = []  # nothing public: ``_journal`` uses the private names

_MAGIC = b"ZRLJNL01"
_HEADER = struct.Struct("<8sQQII")
_HEAD_START = struct.Struct("<8sQQI")  # the header before its own checksum
_ENTRY = struct.Struct("<cHQQ")
_RANGE, _SET, _DELETE, _FILE = b"R", b"S", b"D", b"F"
_RETIRED = b"\0" * 8  # a retired record's magic


def _crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


def _encode(ops: dict[str, _KeyOps]) -> bytes:
    parts: list[bytes | memoryview] = []
    for key, k in sorted(ops.items()):
        kb = key.encode()
        if k.delete:
            parts.append(_ENTRY.pack(_DELETE, len(kb), 0, 0) + kb)
        elif k.file is not None:
            fb = k.file.encode()
            parts += (_ENTRY.pack(_FILE, len(kb), k.file_ino, len(fb)), kb, fb)
        elif k.value is not None:
            parts += (_ENTRY.pack(_SET, len(kb), 0, len(k.value)), kb, bytes(k.value))
        else:
            for start, data in k.ranges:
                parts += (_ENTRY.pack(_RANGE, len(kb), start, len(data)), kb, data)
    body = b"".join(parts)
    return _head(body) + body


def _head(body: bytes) -> bytes:
    head = _HEAD_START.pack(_MAGIC, len(body), time.time_ns(), _crc(body))
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
    if magic != _MAGIC:
        raise _Corrupt(f"no record magic (found {magic!r})")
    if _crc(raw[: _HEAD_START.size]) != head_crc:
        raise _Corrupt("the header fails its checksum")
    body = raw[_HEADER.size : _HEADER.size + length]
    if len(body) != length:
        raise _Corrupt(f"truncated: {len(body)} of {length} body bytes")
    if _crc(body) != body_crc:
        raise _Corrupt("the body fails its checksum")
    ops: dict[str, _KeyOps] = {}
    pos = 0
    while pos < length:
        if pos + _ENTRY.size > length:
            raise _Corrupt("an entry runs past the body")
        kind, klen, start, n = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        key = body[pos : pos + klen].decode()
        pos += klen
        if kind == _DELETE:
            ops[key] = _KeyOps(delete=True)
            continue
        data = body[pos : pos + n]
        pos += n
        if len(data) != n:
            raise _Corrupt("an entry runs past the body")
        if kind == _SET:
            ops[key] = _KeyOps(value=bytearray(data))
        elif kind == _FILE:
            ops[key] = _KeyOps(file=data.decode(), file_ino=start)
        elif kind == _RANGE:
            ops.setdefault(key, _KeyOps()).ranges.append((start, data))
        else:
            raise _Corrupt(f"unknown entry kind {kind!r}")
    return when, ops
