"""The report: one JSON-able dict, and a text rendering of it.

:func:`build` turns a :class:`~stress.runner.RunResult` into plain data (that
is what ``--json`` prints); :func:`render` formats the same data as the text
table. Keeping one source means the two never disagree.
"""

from __future__ import annotations

import platform
import shlex
from typing import Any

import numpy as np
import zarr

from stress.ops import default_mix
from stress.records import Violation
from stress.runner import ProcessStats, RunConfig, RunResult
from stress.signature import fmt_wid

__all__ = ["EXAMPLES", "build", "render", "reproduce_command"]

#: Examples kept per violation kind.
EXAMPLES = 5


def reproduce_command(cfg: RunConfig) -> str:
    """The command line that repeats this run's load (same seed, same options)."""
    args = ["python", "-m", "stress"]
    if cfg.mode == "shard":
        args.append("--shard")
    args += ["--store", cfg.store]
    if cfg.path:
        args += ["--path", cfg.path]
    args += ["--threads", str(cfg.threads), "--tasks", str(cfg.tasks)]
    if cfg.processes != 1:
        args += ["--processes", str(cfg.processes)]
    if cfg.mode == "shard":
        sc = cfg.shard
        for opt, dims in (("--shape", sc.shape), ("--shards", sc.shards), ("--chunks", sc.chunks)):
            args += [opt, ",".join(map(str, dims))]
        args += ["--dtype", sc.dtype, "--compressor", sc.compressor]
        if sc.crc32c:
            args.append("--crc32c")
        args += ["--index-location", sc.index_location, "--order", sc.order]
        args += ["--prefill", f"{sc.prefill:g}"]
    else:
        args += ["--keys", str(cfg.keys), "--value-size", str(cfg.value_size)]
    if cfg.mix != default_mix(cfg.mode, cfg.unlocked):
        args += ["--mix", ",".join(f"{k}={v:g}" for k, v in cfg.mix.items())]
    if cfg.ops is not None:
        args += ["--ops", str(cfg.ops)]
    if cfg.duration is not None:
        args += ["--duration", f"{cfg.duration:g}"]
    if cfg.unlocked:
        args.append("--unlocked")
    if cfg.map_writes:
        args.append("--map-writes")
    if cfg.dense_shards:
        args.append("--dense-shards")
    if cfg.durability != "none":
        args += ["--durability", cfg.durability]
    if cfg.kill_every is not None:
        args += ["--kill-every", f"{cfg.kill_every:g}"]
        if cfg.kill_replays != RunConfig.kill_replays:
            args += ["--kill-replays", f"{cfg.kill_replays:g}"]
    if cfg.checkpoint is not None:
        args += ["--checkpoint", str(cfg.checkpoint)]
    args += ["--seed", str(cfg.seed)]
    return shlex.join(args)


def _example(v: Violation, kinds: dict[int, str]) -> dict[str, Any]:
    def who(w: int | None) -> str | None:
        if w is None:
            return None
        return fmt_wid(w) + (f" ({kinds[w]})" if w in kinds else "")

    return {
        "key": v.key,
        "range": [v.start, v.end],
        "expected": who(v.expected),
        "found": who(v.found),
        "op": v.op,
        "detail": v.detail,
        "text": v.describe(kinds),
    }


def build(result: RunResult) -> dict[str, Any]:
    """The report as plain data (``json.dumps``-able)."""
    cfg = result.config
    elapsed = max(result.elapsed_s, 1e-9)
    ops: dict[str, Any] = {}
    for kind, values in result.latency.items():
        arr = np.asarray(values, dtype=np.float64) / 1e6  # ms (a sample past 4096 per worker)
        count = getattr(values, "total", len(values))
        ops[kind] = {
            "count": count,
            "ops_per_s": count / elapsed,
            "p50_ms": float(np.percentile(arr, 50)),
            "p99_ms": float(np.percentile(arr, 99)),
            "max_ms": getattr(values, "peak", arr.max()) / (1e6 if hasattr(values, "peak") else 1),
        }
    locks: dict[str, Any] | None = None
    if result.lock_stats is not None:
        locks = dict(result.lock_stats)
        waits = locks.get("waits", 0)
        locks["mean_wait_ms"] = 1e3 * locks.get("total_wait_s", 0.0) / waits if waits else 0.0
    kinds = result.checked.write_kinds
    by_kind: dict[str, Any] = {}
    for kind, found in result.checked.by_kind().items():
        by_kind[kind] = {
            "count": len(found),
            "examples": [_example(v, kinds) for v in found[:EXAMPLES]],
        }
    for v in result.extra:
        entry = by_kind.setdefault(v.kind, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < EXAMPLES:
            entry["examples"].append(_example(v, kinds))
    total = sum(e["count"] for e in by_kind.values())
    return {
        "verdict": "clean" if total == 0 else "violations",
        "exit_code": 0 if total == 0 else 1,
        "seed": cfg.seed,
        "reproduce": reproduce_command(cfg),
        "config": {
            "mode": cfg.mode,
            "store": cfg.store,
            "path": cfg.path,
            "target": result.target,
            "unlocked": cfg.unlocked,
            "map_writes": cfg.map_writes,
            "dense_shards": cfg.dense_shards,
            "durability": cfg.durability,
            "threads": cfg.threads,
            "tasks": cfg.tasks,
            "keys": cfg.keys,
            "value_size": cfg.value_size,
            "mix": cfg.mix,
            "duration_s": cfg.duration,
            "ops": cfg.ops,
            "processes": cfg.processes,
            "kill_every_s": cfg.kill_every,
            "kill_replays": cfg.kill_replays,
            "shard": _shard_config(cfg) if cfg.mode == "shard" else None,
        },
        "versions": {"python": platform.python_version(), "zarr": zarr.__version__},
        "elapsed_s": result.elapsed_s,
        "ops_total": result.ops,
        "ops_per_s": result.ops / elapsed,
        "ops_by_kind": ops,
        "processes": [_process(p) for p in result.processes],
        "kills_stopped": result.kills_stopped,
        "most_dead_at_once": result.most_dead_at_once,
        "kills_aimed_at_replays": result.kills_aimed_at_replays,
        "history_file": result.history_file,
        "bytes_written": result.bytes_written,
        "bytes_written_per_s": result.bytes_written / elapsed,
        "locks": locks,
        "oracle": {
            "reads_checked": result.checked.reads,
            "writes_checked": result.checked.writes,
            "keys": result.checked.keys,
            "check_s": result.checked.seconds,
            "checkpoints": result.memory.checkpoints,
            "retained_peak": result.memory.retained_peak,
        },
        "memory": {**result.memory.figures(), "samples": result.memory.rss_mib},
        "violations": {"total": total, "by_kind": by_kind},
    }


def _process(p: ProcessStats) -> dict[str, Any]:
    """One worker process of a ``--processes`` run; ``ops`` None: its history was lost."""
    rate = None
    if p.ops is not None:
        rate = p.ops / p.elapsed_s if p.elapsed_s > 0 else 0.0
    return {
        "process": p.proc,
        "pid": p.pid,
        "ops": p.ops,
        "ops_per_s": rate,
        "elapsed_s": p.elapsed_s,
        "bytes_written": p.bytes_written,
        "exit_code": p.exitcode,
        "peak_rss_mib": p.peak_rss_mib,
        "retained_peak": p.retained_peak,
        "checkpoints": p.checkpoints,
        "generation": p.generation,
        "killed_at_s": p.killed_at_s,
        "killed_opening": p.killed_opening,
        "writes_read_back": p.writes_read_back,
        "reads_read_back": p.reads_read_back,
        "in_flight": p.in_flight,
        "replay_warnings": p.replay_warnings,
    }


#: A process killed more often than this shows as one row of its kills.
KILL_ROWS = 3


def _process_rows(procs: list[dict[str, Any]]) -> list[str]:
    """The op table's rows of the worker processes (killed ones too)."""
    lines = []
    for p in procs:
        name = f"  process {p['process']}" + (f" g{p['generation']}" if p["generation"] else "")
        if p["killed_at_s"] is not None:
            killed = [
                q for q in procs if q["process"] == p["process"] and q["killed_at_s"] is not None
            ]
            if len(killed) > KILL_ROWS:
                if p is killed[0]:
                    lines.append(_killed_row(p["process"], killed))
                continue
            if p["killed_opening"]:
                how = f"killed at {p['killed_at_s']:.1f} s as it opened the root (pid {p['pid']})"
            else:
                how = (
                    f"killed at {p['killed_at_s']:.1f} s (pid {p['pid']}): "
                    f"{p['writes_read_back']:,} writes read back, "
                    f"{p['in_flight']:,} of them in flight"
                )
            lines.append(f"  {name:<20}{p['ops']:>10,}{'-':>11}    {how}")
        elif p["ops"] is None:
            lines.append(
                f"  {name:<20}{'-':>10}{'-':>11}    no history came back "
                f"(pid {p['pid'] or '-'}, exit code {p['exit_code']})"
            )
        else:
            lines.append(
                f"  {name:<20}{p['ops']:>10,}{p['ops_per_s']:>11,.1f}"
                f"    in {p['elapsed_s']:.1f} s (pid {p['pid']})"
            )
    return lines


def _killed_row(proc: int, killed: list[dict[str, Any]]) -> str:
    """One row for the many processes killed in place ``proc`` (``KILL_ROWS``)."""
    name = f"  process {proc} g0-g{killed[-1]['generation']}"
    ops = sum(q["ops"] for q in killed)
    first, last = killed[0]["killed_at_s"], killed[-1]["killed_at_s"]
    opening = sum(q["killed_opening"] for q in killed)
    times = f"{len(killed)} times" + (f" ({opening} opening)" if opening else "")
    return (
        f"  {name:<20}{ops:>10,}{'-':>11}    killed {times}, from {first:.1f} s "
        f"to {last:.1f} s: {sum(q['writes_read_back'] for q in killed):,} writes read back, "
        f"{sum(q['in_flight'] for q in killed):,} of them in flight"
    )


def _kills(rep: dict[str, Any]) -> list[str]:
    """The report's lines on ``--kill-every``: kills, writes read back, replays."""
    procs = rep["processes"]
    killed = [p for p in procs if p["killed_at_s"] is not None]
    warned = [w for p in procs for w in p["replay_warnings"]]
    every = rep["config"]["kill_every_s"]
    lines = [
        f"  kills          {len(killed)} worker processes killed (one every {every:g} s at "
        f"most; up to {rep['most_dead_at_once']} dead at once) and replaced; "
        f"{sum(p['ops'] for p in killed):,} ops of theirs are not in the op table (their "
        "latencies died with them)",
        f"                 their writes since their last checkpoint, read back: "
        f"{sum(p['writes_read_back'] for p in killed):,}, "
        f"{sum(p['in_flight'] for p in killed):,} of them in flight (checked as failed writes); "
        f"their reads: {sum(p['reads_read_back'] for p in killed):,} (checked)",
        f"                 JournalWarnings as the replacements replayed: {len(warned):,}",
    ]
    if rep["config"]["kill_replays"]:
        opening = sum(p["killed_opening"] for p in killed)
        lines.insert(
            1,
            f"                 {opening} of them as they opened the root: "
            f"{rep['kills_aimed_at_replays']} replacements were told to die "
            f"(chance {rep['config']['kill_replays']:g}) at a time drawn to land in their "
            "replay, the rest had opened by then",
        )
    lines += [f"                   {w}" for w in warned[:EXAMPLES]]
    if rep["kills_stopped"]:
        lines.append(f"                 kills {rep['kills_stopped']}")
    return lines


def _shard_config(cfg: RunConfig) -> dict[str, Any]:
    sc = cfg.shard
    return {
        "shape": list(sc.shape),
        "shards": list(sc.shards),
        "chunks": list(sc.chunks),
        "dtype": sc.dtype,
        "compressor": sc.compressor,
        "crc32c": sc.crc32c,
        "fixed_size": sc.fixed_size,
        "index_location": sc.index_location,
        "order": sc.order,
        "prefill": sc.prefill,
        "describe": sc.describe(),
    }


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(rep: dict[str, Any]) -> str:
    """The text report."""
    c = rep["config"]
    shard = c.get("shard")
    length = f"{c['ops']:,} ops" if c["ops"] is not None else f"{c['duration_s']:g} s"
    if shard is None:
        workers = f"{c['threads']} threads + {c['tasks']} asyncio tasks"
        what = f", {c['keys']} keys x {c['value_size']:,} B"
    else:
        workers = f"{c['threads']} threads (arr[sel]) + {c['tasks']} asyncio tasks (AsyncArray)"
        what = ""
    n_procs = c.get("processes", 1)
    if n_procs > 1:
        workers = f"{n_procs} processes x ({workers})"
    load = f"{workers}{what}, {length}"
    lines = [
        "zarr-rangelock stress run" + (" (shard mode)" if shard else ""),
        f"  target      {c['target']}{' at ' + c['path'] if c['path'] else ''}",
        *([f"  array       {shard['describe']}"] if shard else []),
        f"  load        {load}",
        f"  seed        {rep['seed']}    (python {rep['versions']['python']}, "
        f"zarr {rep['versions']['zarr']})",
        "",
        f"  {'op':<20}{'count':>10}{'ops/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}",
    ]
    for kind, s in rep["ops_by_kind"].items():
        lines.append(
            f"  {kind:<20}{s['count']:>10,}{s['ops_per_s']:>11,.1f}"
            f"{s['p50_ms']:>10.3f}{s['p99_ms']:>10.3f}{s['max_ms']:>10.3f}"
        )
    lines.append(
        f"  {'all':<20}{rep['ops_total']:>10,}{rep['ops_per_s']:>11,.1f}"
        f"    in {rep['elapsed_s']:.1f} s"
    )
    lines.extend(_process_rows(rep["processes"]))
    lines.append("")
    lines.append(
        f"  bytes written  {_bytes(rep['bytes_written'])} ({_bytes(rep['bytes_written_per_s'])}/s)"
    )
    locks = rep["locks"]
    if locks is None and c["unlocked"]:
        lines.append("  lock waits     none: no locks (--unlocked control run)")
    elif locks is None:
        lines.append("  lock waits     unknown: no worker process reported its lock table")
    else:
        grants, waits = locks.get("grants", 0), locks.get("waits", 0)
        pct = 100.0 * waits / grants if grants else 0.0
        lines.append(
            f"  lock waits     {waits:,} of {grants:,} grants ({pct:.1f}%); "
            f"waited {locks.get('total_wait_s', 0.0):.2f} s in all, "
            f"{locks['mean_wait_ms']:.3f} ms mean, "
            f"{1e3 * locks.get('max_wait_s', 0.0):.2f} ms max; "
            f"max queue depth {locks.get('max_queue_depth', 0)}"
        )
        extra = [f"{k} {locks[k]}" for k in ("timeouts", "cancellations") if locks.get(k)]
        if locks.get("os_waits"):
            extra.append(
                f"waited at the OS level {locks['os_waits']:,} times, "
                f"{locks.get('os_wait_s', 0.0):.2f} s in all"
            )
        if n_procs > 1:
            extra.append("summed over the processes' own lock tables")
        if extra:
            lines.append(f"                 {', '.join(extra)}")
    o = rep["oracle"]
    if shard is None:
        final = f"the final state of {o['keys']} keys"
    else:
        n = o["keys"]
        final = (
            f"the final array ({n} shard{'s' if n != 1 else ''}, read through the run's "
            "array and with stock zarr)"
        )
    lines.append(
        f"  oracle         checked {o['reads_checked']:,} reads, {o['writes_checked']:,} "
        f"writes and {final} in {o['check_s']:.1f} s"
    )
    mem = rep.get("memory") or {}
    if "start_mib" in mem:
        lines.append(
            f"  memory         RSS {mem['start_mib']:.0f} MiB at the start, "
            f"{mem['middle_mib']:.0f} in the middle, {mem['end_mib']:.0f} at the end, "
            f"{mem['peak_mib']:.0f} peak; the oracle held at most {o['retained_peak']:,} "
            f"records ({o['checkpoints']:,} checkpoints)"
        )
        if n_procs > 1:
            lines[-1] = lines[-1].replace("memory         RSS", "memory         coordinator RSS")
            done = [
                p for p in rep["processes"] if p["ops"] is not None and p["killed_at_s"] is None
            ]
            if done:
                peaks = ", ".join(f"{p['peak_rss_mib']:.0f}" for p in done)
                held = max(p["retained_peak"] for p in done)
                lines.append(
                    f"                 worker processes: peak RSS {peaks} MiB; "
                    f"each held at most {held:,} records"
                )
    if c.get("kill_every_s") is not None:
        lines.extend(_kills(rep))
    v = rep["violations"]
    if v["total"] == 0:
        lines.append("  violations     none")
    else:
        lines.append(f"  violations     {v['total']:,}")
        for kind, entry in v["by_kind"].items():
            lines.append(f"    {kind:<14}{entry['count']:>7,}")
            for ex in entry["examples"]:
                lines.append(f"        {ex['text']}")
    lines.append("")
    ops = f"{rep['ops_total']:,}"
    killed_ops = sum(p["ops"] for p in rep["processes"] if p["killed_at_s"] is not None)
    if killed_ops:
        ops += f" + {killed_ops:,} (of the killed processes)"
    if v["total"] == 0:
        lines.append(f"VERDICT: PASS - no violations in {ops} ops (seed {rep['seed']})")
    else:
        summary = ", ".join(f"{k} {e['count']:,}" for k, e in v["by_kind"].items())
        lines.append(
            f"VERDICT: FAIL - {v['total']:,} violations ({summary}) in "
            f"{ops} ops (seed {rep['seed']})"
        )
        if c["unlocked"]:
            what = "bare store" if shard is None else "bare store with zarr's default pipeline"
            lines.append(
                f"         (expected: this is the --unlocked control, the same load on the {what}; "
                "it shows the oracle sees races)"
            )
        lines.append(f"         same load again: {rep['reproduce']}")
        if rep.get("history_file"):
            lines.append(
                f"         the checker's records, final state and violations: "
                f"{rep['history_file']} (pickle)"
            )
    return "\n".join(lines)
