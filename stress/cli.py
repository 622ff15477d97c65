"""Command line: ``python -m stress [options]``.

Exit status: 0 when the oracle found nothing, 1 when it found violations (or
an op failed, a worker died, locks were left held, or the run hung), 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from stress import report
from stress.kills import kill_problem
from stress.ops import OP_KINDS, default_mix
from stress.runner import RunConfig, run
from stress.shard_model import DTYPES, ValueCodec
from stress.shard_ops import COMPRESSORS, INDEX_LOCATIONS, ORDERS, ShardConfig
from stress.signature import MAX_WRITER, WORD

__all__ = ["main", "parse_args"]

MAX_VALUE_SIZE = 64 * 1024 * 1024
#: A bound on --processes (each is a whole interpreter with zarr loaded).
MAX_PROCESSES = 64


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16384, 16k, 1M)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (e.g. 60,60 or 64x64x8)") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"every dimension must be >= 1: {text!r}")
    return dims


def parse_mix(text: str, mode: str = "bytes") -> dict[str, float]:
    """``"set_range=3,get=1"`` -> weights; kinds not named get weight 0.

    Only kinds of ``mode`` (``"bytes"``, or ``"shard"`` for ``--shard``) are accepted.
    """
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, weight = part.partition("=")
        name = name.strip()
        if name not in OP_KINDS or OP_KINDS[name].mode != mode:
            known = ", ".join(k.name for k in OP_KINDS.values() if k.mode == mode)
            other = "" if name not in OP_KINDS else f" in {mode} mode"
            raise argparse.ArgumentTypeError(f"unknown op kind {name!r}{other} (known: {known})")
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
    shard_mix = ",".join(f"{k}={v:g}" for k, v in default_mix("shard").items())
    sd = ShardConfig()
    p = argparse.ArgumentParser(
        prog="python -m stress",
        description=(
            "Hammer a RangeLockedStore with random concurrent operations from threads, "
            "asyncio tasks and (--processes) worker processes, check every read and the "
            "final state against an oracle, and report throughput, latency, lock waits and "
            "a verdict."
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
    p.add_argument(
        "--map-writes",
        action="store_true",
        help="for --store local: the locked store copies range writes into mappings of "
        "the files (RangeLockedStore(map_writes=True)) instead of pwrite",
    )
    p.add_argument(
        "--durability",
        choices=["none", "fsync", "journal", "journal-nosync"],
        default="none",
        help="for --store local: the locked store's durability (RangeLockedStore("
        "durability=...)): fsync-ed writes, or each write call one journal transaction "
        "(default none)",
    )
    p.add_argument(
        "--kill-every",
        type=float,
        default=None,
        metavar="S",
        help="with --processes N and a journal --durability: every S seconds SIGKILL a "
        "random worker process and start another in its place (its store replays the "
        "dead one's journal beside the live writers); the dead one's writes are read "
        "back from a file it announced them in, those it had not finished checked as "
        "failed writes",
    )
    p.add_argument(
        "--kill-replays",
        type=float,
        default=None,
        metavar="P",
        help="with --kill-every: the chance that a process started in a killed one's "
        "place is killed too while it opens the root, at a time drawn to land in its "
        f"replay of the dead journals (default {RunConfig.kill_replays:g}; 0: never)",
    )
    p.add_argument(
        "--dump-history",
        default=None,
        metavar="PATH",
        help="on a failing verdict, pickle the records the checker held at the end (the "
        "whole run with --checkpoint 0), the final state and the violations to PATH",
    )
    p.add_argument(
        "--dense-shards",
        action="store_true",
        help="the locked store lays out each shard of uncompressed chunks densely at its "
        "first write (RangeLockedStore(dense_shards=True)); with --shard",
    )
    p.add_argument("--threads", type=int, default=4, help="worker threads, sync API (default 4)")
    p.add_argument("--tasks", type=int, default=4, help="asyncio tasks, async API (default 4)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes (spawned), each running --threads and --tasks on its own "
        "store over the same --store local root; histories are merged and checked "
        "together (default 1: this process only)",
    )
    p.add_argument(
        "--keys", type=int, default=None, help=f"number of keys (default {RunConfig.keys})"
    )
    p.add_argument(
        "--value-size",
        type=_size,
        default=None,
        help=f"bytes per value, a multiple of {WORD} (default {RunConfig.value_size // 1024}k)",
    )
    p.add_argument(
        "--mix",
        default=None,
        help=f"op weights, e.g. 'set_range=3,get=1' (default {mix_default}; "
        f"with --shard: {shard_mix})",
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
    p.add_argument(
        "--checkpoint",
        type=int,
        default=None,
        help="check and drop the records every this many ops (of all processes), so "
        "memory stays flat (0: keep the whole history, check at the end; default "
        "20000, with --shard 2000)",
    )
    p.add_argument("--list-ops", action="store_true", help="list the op kinds and exit")
    g = p.add_argument_group(
        "shard mode",
        "--shard: worker threads (arr[sel] = v, arr[sel]) and asyncio tasks "
        "(await AsyncArray.setitem/getitem) write random regions of one sharded zarr array "
        "through zarr_rangelock.ShardWritePipeline on the locked store, checked against a "
        "numpy model; with --unlocked, the bare store and zarr's default pipeline. "
        "--keys and --value-size do not apply.",
    )
    g.add_argument("--shard", action="store_true", help="run the shard mode")

    def dims(t: tuple[int, ...]) -> str:
        return ",".join(map(str, t))

    g.add_argument("--shape", type=_dims, help=f"array shape (default {dims(sd.shape)})")
    g.add_argument("--shards", type=_dims, help=f"shard shape (default {dims(sd.shards)})")
    g.add_argument(
        "--chunks",
        type=_dims,
        help=f"inner chunk shape; divides the shard shape (default {dims(sd.chunks)})",
    )
    g.add_argument("--dtype", choices=DTYPES, help=f"element type (default {sd.dtype})")
    g.add_argument(
        "--compressor",
        choices=COMPRESSORS,
        help="inner-chunk compressor: none = fixed-size chunks (in-place writes), "
        f"zstd/gzip = variable-size (default {sd.compressor})",
    )
    g.add_argument(
        "--crc32c", action="store_true", default=None, help="add a crc32c codec to inner chunks"
    )
    g.add_argument(
        "--index-location",
        choices=INDEX_LOCATIONS,
        help=f"where the shard index lives (default {sd.index_location})",
    )
    g.add_argument(
        "--order",
        choices=ORDERS,
        help="physical order of inner chunks in a shard (zarr's subchunk_write_order; "
        f"default {sd.order})",
    )
    g.add_argument(
        "--prefill",
        type=float,
        help="fraction of inner chunks stock zarr writes before the load, so shards start "
        f"in zarr's compact layout (default {sd.prefill:g})",
    )
    return p


#: Shard-mode options, as argparse dests (ShardConfig's fields); without --shard an error.
_SHARD_OPTS = tuple(f.name for f in dataclasses.fields(ShardConfig))


def _shard_config(p: argparse.ArgumentParser, a: argparse.Namespace) -> ShardConfig:
    given = {k: getattr(a, k) for k in _SHARD_OPTS if getattr(a, k) is not None}
    if not a.shard:
        if given:
            opts = ", ".join("--" + k.replace("_", "-") for k in given)
            p.error(f"{opts} only apply with --shard")
        return ShardConfig()
    for opt in ("keys", "value_size"):
        if getattr(a, opt) is not None:
            p.error(f"--{opt.replace('_', '-')} does not apply with --shard")
    sc = ShardConfig(**given)
    problem = sc.problem()
    if problem is not None:
        p.error(problem)
    return sc


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, RunConfig]:
    """Parse and validate; exits with status 2 and a clear message on bad arguments."""
    p = _parser()
    a = p.parse_args(argv)
    mode = "shard" if a.shard else "bytes"
    shard = _shard_config(p, a)
    if a.keys is None:
        a.keys = RunConfig.keys
    if a.value_size is None:
        a.value_size = RunConfig.value_size
    if a.mix is not None:
        try:
            a.mix = parse_mix(a.mix, mode)
        except argparse.ArgumentTypeError as e:
            p.error(f"argument --mix: {e}")
        if a.unlocked:
            needs = [k for k, w in a.mix.items() if w > 0 and OP_KINDS[k].locked_only]
            if needs:
                p.error(
                    f"argument --mix: {', '.join(needs)} need the wrapper (ShardWriter), "
                    "which --unlocked leaves out"
                )
    if a.threads < 0 or a.tasks < 0:
        p.error("--threads and --tasks must be >= 0")
    if a.threads + a.tasks < 1:
        p.error("need at least one worker: --threads + --tasks must be >= 1")
    if a.threads + a.tasks > 1000:
        p.error("at most 1000 workers (--threads + --tasks)")
    if not 1 <= a.processes <= MAX_PROCESSES:
        p.error(f"--processes must be between 1 and {MAX_PROCESSES}")
    if a.processes > 1:
        if a.store != "local":
            p.error(
                "--processes needs --store local: worker processes share data only "
                "through a LocalStore root (a MemoryStore lives inside one process)"
            )
        most = (ValueCodec(shard.dtype, shard.shape).max_writer if a.shard else MAX_WRITER) - 1
        if (a.threads + a.tasks) * a.processes > most:
            dtype = f" with --dtype {shard.dtype}" if a.shard else ""
            p.error(f"at most {most} workers in all (--processes x (--threads + --tasks)){dtype}")
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
    if a.checkpoint is not None and a.checkpoint < 0:
        p.error("--checkpoint must be >= 0 ops")
    if a.seed is not None and a.seed < 0:
        p.error("--seed must be >= 0")
    if a.map_writes and (a.store != "local" or a.unlocked):
        p.error("--map-writes only applies to --store local, without --unlocked")
    if a.durability != "none" and (a.store != "local" or a.unlocked):
        p.error("--durability only applies to --store local, without --unlocked")
    if a.durability != "none" and a.map_writes:
        p.error(
            f"--map-writes needs --durability none, got {a.durability}: the durable modes "
            "write and sync through descriptors"
        )
    if a.dense_shards and (mode != "shard" or a.unlocked):
        p.error("--dense-shards only applies to --shard, without --unlocked")
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
        mix=a.mix if a.mix is not None else default_mix(mode, a.unlocked),
        duration=a.duration if a.ops is None else None,
        ops=a.ops,
        seed=a.seed if a.seed is not None else random.SystemRandom().randrange(2**32),
        unlocked=a.unlocked,
        progress=sys.stderr.isatty(),
        hang_after=a.hang_after,
        checkpoint=a.checkpoint,
        mode=mode,
        shard=shard,
        processes=a.processes,
        map_writes=a.map_writes,
        dense_shards=a.dense_shards,
        durability=a.durability,
        kill_every=a.kill_every,
        kill_replays=RunConfig.kill_replays if a.kill_replays is None else a.kill_replays,
        dump_history=a.dump_history,
    )
    if cfg.duration is None and cfg.ops is None:
        cfg.duration = 10.0
    problem = kill_problem(cfg)
    if a.kill_replays is not None and cfg.kill_every is None:
        problem = (
            "--kill-replays needs --kill-every (it kills the processes started in "
            "killed ones' places)"
        )
    if problem:
        p.error(problem)
    return a, cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    a, cfg = parse_args(argv)
    if a.list_ops:
        for mode, title in (("bytes", "store ops (default)"), ("shard", "shard mode (--shard)")):
            print(f"{title}:")
            for kind in OP_KINDS.values():
                if kind.mode == mode:
                    print(f"  {kind.name:<20} weight {kind.weight:<5g} {kind.help}")
        return 0
    length = f"{cfg.ops:,} ops" if cfg.ops is not None else f"{cfg.duration:g} s"
    what = f", shard mode: {cfg.shard.describe()}" if cfg.mode == "shard" else ""
    workers = f"{cfg.threads} threads + {cfg.tasks} tasks"
    if cfg.processes > 1:
        workers = f"{cfg.processes} processes x ({workers})"
    print(
        f"stress: seed {cfg.seed}, {cfg.store}{' (unlocked)' if cfg.unlocked else ''}, "
        f"{workers}, {length}{what}",
        file=sys.stderr,
        flush=True,
    )
    result = run(cfg)
    rep = report.build(result)
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        print(report.render(rep))
    code = int(rep["exit_code"])
    if any(v.kind == "hang" for v in result.violations):
        # Workers stuck for good (a worker thread of an event loop's
        # executor, which a normal exit joins) would keep the process alive
        # for ever after its report: exit at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
