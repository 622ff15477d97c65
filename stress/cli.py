"""Command line: ``python -m stress [options]``.

Exit status: 0 when the oracle found nothing, 1 when it found violations (or
an op failed, a worker died, locks were left held, or the run hung), 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from stress import report
from stress.ops import OP_KINDS, default_mix
from stress.runner import RunConfig, run
from stress.signature import WORD

__all__ = ["main", "parse_args"]

MAX_VALUE_SIZE = 64 * 1024 * 1024


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16384, 16k, 1M)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def parse_mix(text: str) -> dict[str, float]:
    """``"set_range=3,get=1"`` -> weights; kinds not named get weight 0."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, weight = part.partition("=")
        name = name.strip()
        if name not in OP_KINDS:
            known = ", ".join(OP_KINDS)
            raise argparse.ArgumentTypeError(f"unknown op kind {name!r} (known: {known})")
        try:
            w = float(weight) if eq else 1.0
        except ValueError:
            msg = f"weight of {name!r} is not a number: {weight!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if not w >= 0 or w == float("inf"):
            raise argparse.ArgumentTypeError(f"weight of {name!r} must be >= 0 and finite")
        mix[name] = w
    if not any(w > 0 for w in mix.values()):
        raise argparse.ArgumentTypeError("the mix needs at least one op kind with weight > 0")
    return mix


def _parser() -> argparse.ArgumentParser:
    mix_default = ",".join(f"{k}={v:g}" for k, v in default_mix().items())
    p = argparse.ArgumentParser(
        prog="python -m stress",
        description=(
            "Hammer a RangeLockedStore with random concurrent operations from threads and "
            "asyncio tasks, check every read and the final state against an oracle, and "
            "report throughput, latency, lock waits and a verdict."
        ),
        epilog=(
            "Exit status: 0 no violations, 1 violations found, 2 bad arguments. "
            "A run's op sequences are reproducible from its --seed (thread interleaving is not)."
        ),
    )
    p.add_argument(
        "--store",
        choices=["memory", "local"],
        default="memory",
        help="store to wrap (default: memory)",
    )
    p.add_argument(
        "--path",
        help="directory for --store local (default: a temporary one, "
        "removed afterwards); must be empty or not exist",
    )
    p.add_argument("--threads", type=int, default=4, help="worker threads, sync API (default 4)")
    p.add_argument("--tasks", type=int, default=4, help="asyncio tasks, async API (default 4)")
    p.add_argument("--keys", type=int, default=4, help="number of keys (default 4)")
    p.add_argument(
        "--value-size",
        type=_size,
        default=16 * 1024,
        help=f"bytes per value, a multiple of {WORD} (default 16k)",
    )
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=None,
        help=f"op weights, e.g. 'set_range=3,get=1' (default {mix_default})",
    )
    run_len = p.add_mutually_exclusive_group()
    run_len.add_argument("--duration", type=float, default=None, help="seconds to run (default 10)")
    run_len.add_argument("--ops", type=int, default=None, help="stop after this many ops")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument(
        "--unlocked",
        action="store_true",
        help="control run: same load on the bare store, no locks (must find violations)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--hang-after",
        type=float,
        default=30.0,
        help="declare a hang after this many seconds without a finished op (default 30)",
    )
    p.add_argument("--list-ops", action="store_true", help="list the op kinds and exit")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, RunConfig]:
    """Parse and validate; exits with status 2 and a clear message on bad arguments."""
    p = _parser()
    a = p.parse_args(argv)
    if a.threads < 0 or a.tasks < 0:
        p.error("--threads and --tasks must be >= 0")
    if a.threads + a.tasks < 1:
        p.error("need at least one worker: --threads + --tasks must be >= 1")
    if a.threads + a.tasks > 1000:
        p.error("at most 1000 workers (--threads + --tasks)")
    if a.keys < 1:
        p.error("--keys must be >= 1")
    if a.value_size < 8 * WORD or a.value_size % WORD or a.value_size > MAX_VALUE_SIZE:
        p.error(
            f"--value-size must be a multiple of {WORD} between {8 * WORD} and "
            f"{MAX_VALUE_SIZE} bytes, got {a.value_size}"
        )
    if a.duration is not None and not a.duration > 0:
        p.error("--duration must be > 0 seconds")
    if a.ops is not None and a.ops < 1:
        p.error("--ops must be >= 1")
    if a.hang_after <= 0:
        p.error("--hang-after must be > 0 seconds")
    if a.seed is not None and a.seed < 0:
        p.error("--seed must be >= 0")
    if a.path is not None:
        if a.store != "local":
            p.error("--path only applies to --store local")
        path = Path(a.path)
        if path.exists() and not path.is_dir():
            p.error(f"--path {a.path!r} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            p.error(f"--path {a.path!r} is not empty; give an empty or new directory")
    cfg = RunConfig(
        store=a.store,
        path=a.path,
        threads=a.threads,
        tasks=a.tasks,
        keys=a.keys,
        value_size=a.value_size,
        mix=a.mix if a.mix is not None else default_mix(),
        duration=a.duration if a.ops is None else None,
        ops=a.ops,
        seed=a.seed if a.seed is not None else random.SystemRandom().randrange(2**32),
        unlocked=a.unlocked,
        progress=sys.stderr.isatty(),
        hang_after=a.hang_after,
    )
    if cfg.duration is None and cfg.ops is None:
        cfg.duration = 10.0
    return a, cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    a, cfg = parse_args(argv)
    if a.list_ops:
        for kind in OP_KINDS.values():
            print(f"{kind.name:<20} weight {kind.weight:<5g} {kind.help}")
        return 0
    length = f"{cfg.ops:,} ops" if cfg.ops is not None else f"{cfg.duration:g} s"
    print(
        f"stress: seed {cfg.seed}, {cfg.store}{' (unlocked)' if cfg.unlocked else ''}, "
        f"{cfg.threads} threads + {cfg.tasks} tasks, {length}",
        file=sys.stderr,
        flush=True,
    )
    result = run(cfg)
    rep = report.build(result)
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        print(report.render(rep))
    return int(rep["exit_code"])
