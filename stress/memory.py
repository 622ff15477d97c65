"""How much a stress run keeps: RSS samples and the records its oracle held.

Split from :mod:`stress.runner` (which re-exports these names): the runner
samples :func:`rss_mib` at the start of the load, at every checkpoint and at
the end, and the report prints :meth:`Memory.figures`.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field

__all__ = ["Memory", "peak_rss_mib", "rss_mib"]


def rss_mib() -> float:
    """This process's resident set size now, in MiB (Linux; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def peak_rss_mib() -> float:
    """The peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Memory:
    """How much the run kept: RSS samples and the records the oracle held.

    ``rss_mib`` holds ``(seconds into the load, MiB)`` at the start, at each
    checkpoint and at the end; ``retained_peak`` is the most records (reads,
    writes, carried writes and read-modify-write items) the oracle held at
    once, ``checkpoints`` how many checks ran before the final one.
    """

    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    retained_peak: int = 0
    checkpoints: int = 0

    def figures(self) -> dict[str, float]:
        """RSS at start, middle and end, and the peak (MiB)."""
        if not self.rss_mib:
            return {}
        mid = self.rss_mib[len(self.rss_mib) // 2]
        return {
            "start_mib": self.rss_mib[0][1],
            "middle_mib": mid[1],
            "end_mib": self.rss_mib[-1][1],
            "peak_mib": max(self.peak_rss_mib, *(mib for _, mib in self.rss_mib)),
        }
