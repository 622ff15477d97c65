"""The shard mode's checker on histories built by hand (:class:`Story`).

The array of :data:`GEOM` is 4 x 8, one shard, inner chunks 2 x 4.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from stress.records import OK, Violation
from stress.shard_check import check_array
from stress.shard_model import ArrayHistory, BoxRead, BoxWrite, Geometry, ValueCodec

GEOM = Geometry((4, 8), (4, 8), (2, 4))
Box = tuple[tuple[int, ...], tuple[int, ...]]


class Story:
    """A history built by hand: writes with their times, and the array it left."""

    def __init__(self, dtype: str = "int32", geometry: Geometry = GEOM) -> None:
        self.codec = ValueCodec(dtype, geometry.shape)
        self.h = ArrayHistory(geometry, self.codec)
        self.rec = self.h.recorder()
        self.array = np.zeros(geometry.shape, dtype=self.codec.dtype)

    def write(
        self,
        wid: int,
        box: Box,
        t0: int,
        t1: int,
        status: str = OK,
        fill: bool = False,
        *,
        kind: str = "hand",
        killed: bool = False,
    ) -> None:
        self.rec.writes.append(BoxWrite(wid, kind, *box, t0, t1, status, fill, killed))

    def put(self, wid: int, box: Box) -> None:
        """Make the array show ``wid`` over ``box``."""
        self.array[sl(box)] = self.codec.encode(wid, *box)

    def blank(self, box: Box) -> None:
        """Make the array show the fill value over ``box``."""
        self.array[sl(box)] = 0

    def read(self, box: Box, t0: int, t1: int) -> None:
        values = self.array[sl(box)].copy()
        self.rec.reads.append(BoxRead(*box, t0, t1, values))

    def check(self, other: npt.NDArray[np.generic] | None = None) -> list[Violation]:
        self.h.finals["stock"] = self.array.copy()
        if other is not None:
            self.h.finals["pipeline"] = other
        result = check_array(self.h)
        for v in result.violations:
            print(v.describe(result.write_kinds))
        return result.violations


def sl(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(*box, strict=True))


def kinds(violations: list[Violation]) -> list[str]:
    return sorted({v.kind for v in violations})
