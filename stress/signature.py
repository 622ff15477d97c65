"""Byte signatures: every write says, in every 8-byte word it puts down, who wrote it.

A write is identified by a *write id* (``wid``), the pair (writer, seq) packed
into one int: ``writer << 32 | seq``. ``writer`` is a worker's number (1 to
65535; 0 is never used, so an all-zero word is never valid) and ``seq`` counts
that worker's writes from 1.

Every write covers whole 8-byte words at word-aligned offsets. Word ``i`` of a
value (bytes ``[8*i, 8*i + 8)``) written by ``wid`` holds, little-endian::

    bits 63..48  writer
    bits 47..16  seq
    bits 15..0   check = mix(writer, seq, i) & 0xFFFF

The check depends on the word's position, so a word that lands at the wrong
offset, or a word stitched together from two writes (a write torn inside a
word), fails to decode instead of being credited to somebody. Decoding turns a
buffer into *runs*: maximal spans of consecutive words with the same wid, with
:data:`CORRUPT` for words that do not decode.

Encoding and decoding are vectorised with numpy: about 30 us for 64 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "CORRUPT",
    "MAX_SEQ",
    "MAX_WRITER",
    "WORD",
    "Runs",
    "decode",
    "encode",
    "fmt_wid",
    "make_wid",
    "wid_seq",
    "wid_writer",
]

#: Bytes per signature word; every write offset and length is a multiple of it.
WORD = 8
#: Largest writer number (16 bits).
MAX_WRITER = 0xFFFF
#: Largest sequence number (32 bits).
MAX_SEQ = 0xFFFF_FFFF
#: The wid given to a word that does not decode.
CORRUPT = -1

_M64 = (1 << 64) - 1
_K_WRITER = 0x9E37_79B9_7F4A_7C15
_K_SEQ = 0xC2B2_AE3D_27D4_EB4F
_K_POS = np.uint64(0x1656_67B1_9E37_79F9)
_K_FINAL = np.uint64(0xFF51_AFD7_ED55_8CCD)
_S29 = np.uint64(29)
_S32 = np.uint64(32)
_S16 = np.uint64(16)
_S48 = np.uint64(48)
_LOW16 = np.uint64(0xFFFF)
_LOW48 = np.uint64((1 << 48) - 1)


def make_wid(writer: int, seq: int) -> int:
    """Pack ``(writer, seq)`` into a write id."""
    if not 1 <= writer <= MAX_WRITER:
        raise ValueError(f"writer must be in [1, {MAX_WRITER}], got {writer}")
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"seq must be in [1, {MAX_SEQ}], got {seq}")
    return writer << 32 | seq


def wid_writer(wid: int) -> int:
    """The writer number of a write id."""
    return wid >> 32


def wid_seq(wid: int) -> int:
    """The sequence number of a write id."""
    return wid & MAX_SEQ


def fmt_wid(wid: int | None) -> str:
    """``w<writer>#<seq>``, ``(missing)`` for ``None``, ``(corrupt)`` for :data:`CORRUPT`."""
    if wid is None:
        return "(missing)"
    if wid == CORRUPT:
        return "(corrupt)"
    return f"w{wid_writer(wid)}#{wid_seq(wid)}"


def _check_bits(
    base: npt.NDArray[np.uint64] | np.uint64, pos: npt.NDArray[np.uint64]
) -> npt.NDArray[np.uint64]:
    # A cheap 64-bit mix (multiply/xor-shift), folded to 16 bits. Array operands
    # throughout: numpy wraps uint64 overflow silently for arrays.
    h = base ^ (pos * _K_POS)
    h = h ^ (h >> _S29)
    h = h * _K_FINAL
    return (h >> _S32) & _LOW16


def encode(wid: int, start: int, length: int) -> bytes:
    """The bytes that write ``wid`` puts at ``[start, start + length)``.

    Both ``start`` and ``length`` must be multiples of :data:`WORD`.
    """
    if start % WORD or length % WORD or start < 0 or length < 0:
        raise ValueError(f"start and length must be non-negative multiples of {WORD}")
    writer, seq = wid_writer(wid), wid_seq(wid)
    base = np.uint64(((writer * _K_WRITER) ^ (seq * _K_SEQ)) & _M64)
    pos = np.arange(start // WORD, (start + length) // WORD, dtype=np.uint64)
    head = np.uint64(wid) << _S16
    words = head | _check_bits(base, pos)
    return words.astype("<u8", copy=False).tobytes()


@dataclass(frozen=True, slots=True)
class Runs:
    """Decoded content of a byte span: maximal runs of words with one wid each.

    ``lo[i]`` (inclusive) and ``hi[i]`` (exclusive) are absolute *word* indices;
    ``wid[i]`` is the write id of every word in the run, or :data:`CORRUPT`.
    Runs are sorted, contiguous and non-empty.
    """

    lo: npt.NDArray[np.int64]
    hi: npt.NDArray[np.int64]
    wid: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.wid)

    def as_list(self) -> list[tuple[int, int, int]]:
        """``[(start_byte, end_byte, wid), ...]``, handy in tests and reports."""
        return [
            (int(a) * WORD, int(b) * WORD, int(w))
            for a, b, w in zip(self.lo, self.hi, self.wid, strict=True)
        ]


def _runs(wid: npt.NDArray[np.int64], first: int) -> Runs:
    if len(wid) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Runs(empty, empty, empty)
    cuts = np.flatnonzero(wid[1:] != wid[:-1]) + 1
    lo = np.concatenate(([0], cuts)).astype(np.int64)
    hi = np.concatenate((cuts, [len(wid)])).astype(np.int64)
    return Runs(lo + first, hi + first, wid[lo])


def decode(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8], start: int) -> Runs:
    """Attribute every word of ``data``, which was read from offset ``start``.

    ``start`` must be a multiple of :data:`WORD`. A trailing partial word is
    reported as a :data:`CORRUPT` run.
    """
    if start % WORD:
        raise ValueError(f"start must be a multiple of {WORD}, got {start}")
    raw = np.frombuffer(data, dtype=np.uint8)
    n_words, tail = divmod(len(raw), WORD)
    words = raw[: n_words * WORD].view("<u8").astype(np.uint64, copy=False)
    first = start // WORD
    head = (words >> _S16).astype(np.int64)  # the claimed wid of every word
    runs = _runs(head, first)
    # Verify the check bits of every word against the wid its run claims: one
    # base per run, spread over the run's words, instead of per-word arithmetic.
    run_head = runs.wid.astype(np.uint64)
    run_writer = run_head >> _S32
    run_seq = run_head & np.uint64(MAX_SEQ)
    base = (run_writer * np.uint64(_K_WRITER)) ^ (run_seq * np.uint64(_K_SEQ))
    pos = np.arange(first, first + n_words, dtype=np.uint64)
    ok = (words & _LOW16) == _check_bits(np.repeat(base, runs.hi - runs.lo), pos)
    run_ok = (run_writer != 0) & (run_seq != 0)
    if tail == 0 and bool(ok.all()) and bool(run_ok.all()):
        return runs
    ok &= np.repeat(run_ok, runs.hi - runs.lo)
    wid = np.where(ok, head, np.int64(CORRUPT))
    if tail:
        wid = np.append(wid, np.int64(CORRUPT))
    return _runs(wid, first)
