"""The shard mode's numpy model: element values that name their write, and the records.

Design note
-----------
*Values.* Every write of the shard mode puts down a box of elements, and
every element says which write put it there and where it was meant to land.
A write id (``wid``, :func:`stress.signature.make_wid`: writer and sequence
number) is packed into a *code* ``(writer << seq_bits | seq) << 1 | 1``
(odd, so never the fill value 0), and the element at flat index ``i`` holds
``code ^ scramble(i)``, where ``scramble(i)`` is a 64-bit mix of ``i``
folded to the code width with its lowest bit cleared. Decoding is the same
xor. An element that lands at the wrong place (a chunk's bytes where the
index does not point, say) decodes to a write that does not exist, or one
that never covered that element: **corrupt**, either way. Codes are 32 bits
wide for 4-byte dtypes (10-bit writer, 21-bit seq) and 49 bits for 8-byte
ones (16-bit writer, 32-bit seq; a float64 holds every such integer
exactly). The fill value is 0.


The records (:class:`BoxWrite`, :class:`BoxRead`, :class:`ArrayHistory`) are
checked by :mod:`stress.shard_check`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stress.records import OK, Log, Recorder
from stress.signature import CORRUPT, fmt_wid

__all__ = [
    "DTYPES",
    "FILL",
    "I64",
    "ArrayHistory",
    "Box",
    "BoxRead",
    "BoxRecorder",
    "BoxWrite",
    "Geometry",
    "ValueCodec",
    "along",
    "overlap",
    "slices",
    "slices_at",
]

#: The decoded wid of an element holding the fill value.
FILL = 0
#: dtypes the shard mode supports (the code must fit; float64 holds 49-bit integers).
DTYPES = ("int32", "uint32", "int64", "uint64", "float64")

type Box = tuple[tuple[int, ...], tuple[int, ...]]
type I64 = npt.NDArray[np.int64]

_M64 = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_K1 = np.uint64(0xBF58_476D_1CE4_E5B9)
_K2 = np.uint64(0x94D0_49BB_1331_11EB)
_GOLD = np.uint64(0x9E37_79B9_7F4A_7C15)


def _mix(i: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # splitmix64's finaliser; array operands, so uint64 overflow wraps silently.
    z = (i + _GOLD) & _M64
    z = (z ^ (z >> np.uint64(30))) * _K1
    z = (z ^ (z >> np.uint64(27))) * _K2
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True, slots=True)
class Geometry:
    """An array's shape, shard shape and inner-chunk shape (all the same length)."""

    shape: tuple[int, ...]
    shards: tuple[int, ...]
    chunks: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def shard_key(self, coords: Sequence[int]) -> str:
        """The store key of the shard holding element ``coords`` (zarr v3 default keys)."""
        return "c/" + "/".join(str(c // s) for c, s in zip(coords, self.shards, strict=True))

    def chunk_of(self, coords: Sequence[int]) -> tuple[int, ...]:
        """Inner-chunk grid coordinates (array-wide) of element ``coords``."""
        return tuple(c // k for c, k in zip(coords, self.chunks, strict=True))

    def grid(self, unit: Sequence[int]) -> tuple[int, ...]:
        """How many boxes of shape ``unit`` (shards, inner chunks) tile the array, per dimension."""
        return tuple(-(-n // u) for n, u in zip(self.shape, unit, strict=True))

    def cell(self, index: Sequence[int], unit: Sequence[int]) -> Box:
        """The box of grid cell ``index`` of the ``unit`` grid, clipped at the array's edge."""
        lo = tuple(i * u for i, u in zip(index, unit, strict=True))
        hi = tuple(min(a + u, n) for a, u, n in zip(lo, unit, self.shape, strict=True))
        return lo, hi

    def n_shards(self) -> int:
        return int(np.prod(self.grid(self.shards)))

    def shard_cells(self) -> Iterator[tuple[str, Box]]:
        """Every shard of the array: its store key and its box."""
        for index in itertools.product(*(range(n) for n in self.grid(self.shards))):
            box = self.cell(index, self.shards)
            yield self.shard_key(box[0]), box

    def shard_keys(self) -> frozenset[str]:
        """Every key a shard of the array may have (the array is at the store's root)."""
        return frozenset(key for key, _ in self.shard_cells())

    def shards_of(self, lo: Sequence[int], hi: Sequence[int]) -> set[tuple[int, ...]]:
        """Grid coordinates of the shards the box ``[lo, hi)`` touches."""
        spans = zip(lo, hi, self.shards, strict=True)
        return set(itertools.product(*(range(a // s, (b - 1) // s + 1) for a, b, s in spans)))


class ValueCodec:
    """Encode a write's box of elements, and decode any view back to write ids.

    Parameters
    ----------
    dtype : str
        One of :data:`DTYPES`.
    shape : tuple of int
        The array's shape (positions are flat indices into it).
    """

    def __init__(self, dtype: str, shape: tuple[int, ...]) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.strides = tuple(int(np.prod(shape[d + 1 :])) for d in range(len(shape)))
        if self.dtype.itemsize == 4:
            self.writer_bits, self.seq_bits = 10, 21
        else:
            self.writer_bits, self.seq_bits = 16, 32
        self.bits = 1 + self.writer_bits + self.seq_bits
        self.max_writer = (1 << self.writer_bits) - 1
        self.max_seq = (1 << self.seq_bits) - 1
        self._mask = np.uint64((1 << self.bits) - 1)
        self._unsigned = np.dtype(f"u{self.dtype.itemsize}")

    def _flat(self, lo: Sequence[int], hi: Sequence[int]) -> npt.NDArray[np.uint64]:
        flat = np.zeros([b - a for a, b in zip(lo, hi, strict=True)], dtype=np.uint64)
        for d, (a, b) in enumerate(zip(lo, hi, strict=True)):
            flat += along(np.arange(a, b, dtype=np.uint64), d, len(lo)) * np.uint64(self.strides[d])
        return flat

    def _scramble(self, lo: Sequence[int], hi: Sequence[int]) -> npt.NDArray[np.uint64]:
        return _mix(self._flat(lo, hi)) & self._mask & ~np.uint64(1)

    def code(self, wid: int) -> int:
        writer, seq = wid >> 32, wid & 0xFFFF_FFFF
        if not 1 <= writer <= self.max_writer or not 1 <= seq <= self.max_seq:
            raise ValueError(
                f"{fmt_wid(wid)} does not fit a {self.dtype} value "
                f"(writer <= {self.max_writer}, seq <= {self.max_seq})"
            )
        return (writer << self.seq_bits | seq) << 1 | 1

    def encode(self, wid: int, lo: Sequence[int], hi: Sequence[int]) -> npt.NDArray[np.generic]:
        """The values write ``wid`` puts at the box ``[lo, hi)``."""
        codes = np.uint64(self.code(wid)) ^ self._scramble(lo, hi)
        if self.dtype.kind == "f":
            return codes.astype(self.dtype)
        return codes.astype(self._unsigned).view(self.dtype)

    def decode(self, values: npt.ArrayLike, lo: Sequence[int]) -> I64:
        """Write ids of a view read at ``lo``: :data:`FILL` (0), or ``CORRUPT`` (-1)."""
        v = np.asarray(values)
        if v.dtype != self.dtype:
            raise ValueError(f"expected a {self.dtype} view, got {v.dtype}")
        hi = [a + n for a, n in zip(lo, v.shape, strict=True)]
        if self.dtype.kind == "f":
            fv = v.astype(np.float64)
            good = np.isfinite(fv) & (fv >= 0) & (fv < float(1 << self.bits))
            good &= np.floor(np.where(good, fv, 0.0)) == np.where(good, fv, 0.0)
            raw = np.where(good, fv, 0.0).astype(np.uint64)
        else:
            raw = np.ascontiguousarray(v).view(self._unsigned).astype(np.uint64)
            good = raw <= self._mask
        fill = good & (raw == 0)
        code = (raw ^ self._scramble(lo, hi)) & self._mask
        good &= (code & np.uint64(1)) == 1
        word = code >> np.uint64(1)
        writer = (word >> np.uint64(self.seq_bits)).astype(np.int64)
        seq = (word & np.uint64(self.max_seq)).astype(np.int64)
        good &= (writer >= 1) & (seq >= 1)
        wid = (writer << 32) | seq
        return np.where(fill, FILL, np.where(good, wid, CORRUPT)).astype(np.int64)


@dataclass(slots=True)
class BoxWrite:
    """One ``arr[lo:hi] = values`` as a worker saw it.

    Attributes
    ----------
    wid : int
    kind : str
        The op kind (``"shard_chunk"``, ``"shard_span"``, ...).
    lo, hi : tuple of int
        The box written: ``lo`` (inclusive), ``hi`` (exclusive) per dimension.
    t_start, t_end : int
        ``time.monotonic_ns()`` just before the call and just after it returned.
    status : str
        ``"ok"`` or ``"error"`` (raised: may or may not have taken effect).
    fill : bool
        It wrote the fill value (0), not values that name it: zarr drops
        inner chunks that become all fill, and shards that do. Its elements
        read back as the fill value, never as its ``wid``.
    killed : bool
        A failed write whose process was killed in its call (``--kill-every``:
        its end is when the journal it left had been replayed).
    """

    wid: int
    kind: str
    lo: tuple[int, ...]
    hi: tuple[int, ...]
    t_start: int
    t_end: int
    status: str = OK
    fill: bool = False
    killed: bool = False


@dataclass(slots=True)
class BoxRead:
    """One ``arr[lo:hi]`` as a worker saw it; ``values`` are the raw elements.

    A listing of the store (``shard_list``) is a read of the whole array
    whose ``keys`` are the shard keys it listed (``values`` empty).
    """

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    t_start: int
    t_end: int
    values: npt.NDArray[np.generic]
    kind: str = "shard_read"
    keys: frozenset[str] | None = None


type BoxRecorder = Recorder[BoxWrite, BoxRead]


@dataclass
class ArrayHistory(Log[BoxWrite, BoxRead]):
    """Everything recorded in one shard run, and the final array as read back.

    ``finals`` maps a label (``"stock"``: a fresh array with zarr's default
    pipeline on the bare store; ``"pipeline"``: the run's own array) to the
    whole array read after every worker stopped. ``keys``: the shard keys
    the bare store listed then (None: not listed).
    """

    geometry: Geometry
    codec: ValueCodec
    finals: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)
    keys: frozenset[str] | None = None


def along[T: np.generic](a: npt.NDArray[T], d: int, ndim: int) -> npt.NDArray[T]:
    """``a`` (1-d) shaped to broadcast along dimension ``d`` of ``ndim``."""
    shape = [1] * ndim
    shape[d] = len(a)
    return a.reshape(shape)


def slices(lo: Sequence[int], hi: Sequence[int]) -> tuple[slice, ...]:
    """The index of the box ``[lo, hi)``: ``arr[slices(lo, hi)]``."""
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def overlap(a: Box, b: Box) -> Box | None:
    """The box where boxes ``a`` and ``b`` meet; None if they do not."""
    lo = tuple(max(x, y) for x, y in zip(a[0], b[0], strict=True))
    hi = tuple(min(x, y) for x, y in zip(a[1], b[1], strict=True))
    return None if any(x >= y for x, y in zip(lo, hi, strict=True)) else (lo, hi)


def slices_at(box: Box, origin: Sequence[int]) -> tuple[slice, ...]:
    """The index of ``box`` in a view whose first element is at ``origin``."""
    return tuple(slice(a - o, b - o) for a, b, o in zip(*box, origin, strict=True))
