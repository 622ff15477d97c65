"""The stress runner's ``--kill-every``: worker processes killed under load and replaced.

The runs are short (2 s, a kill every 0.5 s at most) and print their
seeds. Each kill is a real SIGKILL of a spawned worker process in the
middle of its load; the process that takes its place replays its journal
beside the live writers of the other process. The control shows that the
check needs what the dead processes left behind: without their writes read
back, their values in the store name writes nobody recorded.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from zarr.storage import MemoryStore

from stress import processes, report
from stress.byte_runner import BytesRun
from stress.kills import IntentFile, ReadBack, read_back
from stress.ops import default_mix
from stress.records import ERROR, OK, ReadRecord, WriteRecord
from stress.runner import SETUP_WRITER, RunConfig, RunResult, run
from stress.shard_model import BoxWrite
from stress.shard_ops import ShardConfig
from stress.signature import encode, make_wid
from stress.worker import StartSignal, _Link
from tests._stress_helpers import first_run, summary, usage_error

#: Two processes of two threads and two tasks each; journaled writes.
KILLS: dict[str, Any] = {
    "store": "local",
    "processes": 2,
    "threads": 2,
    "tasks": 2,
    "durability": "journal",
    "kill_every": 0.5,
    "duration": 2.0,
    "hang_after": 20.0,
}


def killed_run(seed: int, **kw: Any) -> RunResult:
    print(f"seed {seed}")
    return run(RunConfig(seed=seed, **{**KILLS, **kw}))


def assert_kills_checked(result: RunResult) -> None:
    """At least one kill, its replacement ran, and the dead processes' writes
    were read back and checked."""
    procs = "\n".join(map(str, result.processes))
    killed = [p for p in result.processes if p.killed_at_s is not None]
    assert killed, f"no process was killed:\n{procs}"
    assert all(p.exitcode == -signal.SIGKILL for p in killed), procs
    # (One kill may come right after a checkpoint emptied the file: not each.)
    assert sum(p.writes_read_back for p in killed) > 0, procs
    assert sum(p.reads_read_back for p in killed) > 0, procs
    last = {p.proc: p for p in result.processes if p.killed_at_s is None}
    assert sorted(last) == list(range(result.config.processes)), procs
    assert all(p.exitcode == 0 for p in last.values()), procs
    assert max(p.generation for p in last.values()) >= 1, procs
    assert result.checked.writes >= sum(p.writes_read_back for p in killed)
    assert result.checked.reads >= sum(p.reads_read_back for p in killed)


def test_a_replacement_writes_under_writer_numbers_and_seeds_of_its_own() -> None:
    # Generation g of process p is process p + g * processes to _slots: the
    # values of a dead process's writes and its replacement's never share a wid.
    cfg = RunConfig(store="memory", processes=2, threads=1, tasks=1, kill_every=1.0)
    first = BytesRun(cfg, MemoryStore(), sys.stderr, proc=1)
    third = BytesRun(cfg, MemoryStore(), sys.stderr, proc=1, generation=2)
    assert [w.writer for w in first.workers] == [SETUP_WRITER + 3, SETUP_WRITER + 4]
    assert [w.writer for w in third.workers] == [SETUP_WRITER + 11, SETUP_WRITER + 12]
    assert [w.name for w in third.workers] == ["p1g2.thread-0", "p1g2.task-0"]
    assert first.workers[0].rng.random() != third.workers[0].rng.random()
    with pytest.raises(ValueError, match="generation 20000 needs writer numbers past"):
        BytesRun(cfg, MemoryStore(), sys.stderr, proc=1, generation=20_000)


@pytest.mark.timeout(120)
def test_kills_in_the_byte_mode_are_clean_and_every_generation_is_checked() -> None:
    # Checkpoints every 400 ops too: a kill after one finds only what came
    # since. A checkpoint lands where the processes park, and kills wait
    # while one is due: a slow CI machine ran one 2 s run with none
    # (2026-12-07), so up to three runs, each of which must be clean, until
    # one had a checkpoint.
    def clean(seed: int) -> RunResult:
        result = killed_run(seed, checkpoint=400)
        assert result.violations == [], summary(result)
        assert_kills_checked(result)
        return result

    result = first_run(
        clean, (20261207, 20261208, 20261209), lambda r: r.memory.checkpoints > 0, "a checkpoint"
    )
    rep = report.build(result)
    assert "--kill-every 0.5" in rep["reproduce"]
    text = report.render(rep)
    assert "worker processes killed" in text and "in flight" in text, text
    assert "(of the killed processes) ops" in text, text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_kills_in_the_shard_mode_are_clean(compressor: str) -> None:
    # Pipeline writes, ShardWriter writes (chunks, spans, fills) and reads;
    # the default shard checkpoint (2,000 ops) comes once or twice.
    shard = ShardConfig(compressor=compressor)
    result = killed_run(
        20261208, mode="shard", mix=default_mix("shard"), shard=shard, durability="journal-nosync"
    )
    assert result.violations == [], summary(result)
    assert_kills_checked(result)


@pytest.mark.timeout(120)
def test_kills_that_do_not_wait_for_the_last_replacement_leave_several_dead_at_once() -> None:
    # A kill every 0.1 s, and a replacement takes longer than that to start
    # (spawn, imports, store): two or three dead journals at once, replayed
    # by whichever replacement opens first, beside the live writers left.
    result = killed_run(20261216, processes=3, threads=1, tasks=2, kill_every=0.1)
    assert result.violations == [], summary(result)
    assert result.most_dead_at_once >= 2, "\n".join(map(str, result.processes))
    assert "dead at once" in report.render(report.build(result))


@pytest.mark.timeout(120)
def test_clear_and_delete_dir_beside_the_replays_of_killed_processes_are_clean() -> None:
    # clear() holds the root's prefix lock, which covers the journal's name:
    # a replacement's replay meets it (waits, or lets go and starts over),
    # and delete_dir empties the keys' directory under the live writers.
    mix = {"clear": 2, "delete_dir": 2, "set_range": 6, "set": 2, "get": 2, "rmw": 2}
    result = killed_run(20261218, mix=mix, keys=3)
    assert result.violations == [], summary(result)
    assert_kills_checked(result)
    assert result.latency["clear"].total > 0 and result.latency["delete_dir"].total > 0


@pytest.mark.timeout(120)
def test_without_the_dead_processes_writes_read_back_the_check_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The control: the coordinator forgets what a killed process left in its
    # file, as it would without the file. The dead process's writes since
    # the last checkpoint (here: since the start) are in the store, and
    # their values name writes the history does not have.
    monkeypatch.setattr(processes, "read_back", lambda path, t_end: ReadBack([], [], 0))
    result = killed_run(20261207, checkpoint=0, keys=2)
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    assert [p for p in result.processes if p.killed_at_s is not None]
    # Bytes of writes the history lacks: "no write with this id was made to this key".
    assert found["phantom_read"] + found["corrupt"] > 0, summary(result)


def test_read_back_turns_unfinished_intents_into_failed_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "p0g0.intents")
    f = IntentFile(path)
    done = WriteRecord("k", 1, "set_range", ((0, 8),), 10, 20)
    f.intend(WriteRecord("k", 1, "set_range", ((0, 8),), 9, 0, ERROR))
    f.wrote(done)
    seen = ReadRecord.from_bytes("k", 0, encode(make_wid(3, 1), 0, 8), 21, 22, kind="get")
    f.read(seen)
    f.intend(WriteRecord("k", 2, "rmw", ((8, 16),), 30, 0, ERROR))
    f.cancel(2)  # an rmw that found the key missing: no write
    f.intend(WriteRecord("k", 3, "delete", ((0, 64),), 40, 0, ERROR, is_delete=True))
    f.intend(BoxWrite(4, "writer_chunk", (0, 0), (8, 8), 50, 0, ERROR))
    f.close()
    # A torn tail (an intent whose write the kill cut short) is a call that never started.
    body = pickle.dumps(("i", WriteRecord("k", 5, "set", ((0, 64),), 60, 0, ERROR)))
    with open(path, "ab") as raw:
        raw.write(struct.pack("<I", len(body)) + body[:-3])
    back = read_back(path, 999)
    writes = back.writes
    assert back.in_flight == 2
    assert [(r.key, r.t_start, r.t_end, r.runs.as_list()) for r in back.reads] == [
        ("k", 21, 22, [(0, 8, make_wid(3, 1))])
    ]
    assert writes[0] == done and writes[0].status == OK
    assert [(w.wid, w.t_start, w.t_end, w.status) for w in writes[1:]] == [
        (3, 40, 999, ERROR),
        (4, 50, 999, ERROR),
    ]
    assert writes[1].is_delete
    assert writes[1].killed and writes[2].killed  # both modes' records say so
    assert read_back(str(tmp_path / "never-written"), 1) == ReadBack([], [], 0)


class _Conn:
    """A pipe end that records the size of the intent file at each send."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sizes: list[int] = []

    def send(self, msg: object) -> None:
        self.sizes.append(os.path.getsize(self.path))


class _Shared:
    def __init__(self, value: int) -> None:
        self.value = value


class _Load:
    def __init__(self, intents: IntentFile) -> None:
        self.intents = intents
        self.log = type("L", (), {"recorders": []})()
        self.dropped = False

    def handed_over(self) -> None:
        self.dropped = True


def test_a_checkpoint_empties_the_intent_file_before_it_sends_the_records(
    tmp_path: Path,
) -> None:
    # Emptied after the send, a kill between the send and the emptying would
    # bring the records the coordinator already has back a second time.
    path = str(tmp_path / "p0g0.intents")
    f = IntentFile(path)
    f.wrote(WriteRecord("k", 1, "set_range", ((0, 8),), 10, 20))
    conn = _Conn(path)
    link = _Link(conn, _Shared(1), _Shared(1))  # type: ignore[arg-type]
    load = _Load(f)
    link.hand_over(load)  # type: ignore[arg-type]
    assert conn.sizes == [0] and load.dropped
    f.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "2", "--durability", "fsync"], "needs --durability journal"),
        (["--processes", "1", "--durability", "journal"], "needs --processes 2 or more"),
        (["--processes", "2", "--durability", "journal", "--ops", "100"], "needs a --duration"),
    ],
)
def test_kill_every_refuses_what_it_cannot_run(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(["--store", "local", "--kill-every", "1", *args], capsys)
    assert message in err, err


def test_kill_every_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--store", "local", "--processes", "2", "--durability", "journal"]
    err = usage_error([*args, "--kill-every", "0"], capsys)
    assert "--kill-every must be > 0 seconds, got 0" in err, err


def test_a_place_killed_more_than_three_times_shows_as_one_row() -> None:
    def row(proc: int, gen: int, killed_at: float | None, opening: bool = False) -> dict[str, Any]:
        return {
            "process": proc,
            "generation": gen,
            "killed_at_s": killed_at,
            "pid": 100 + gen,
            "ops": 10,
            "ops_per_s": 5.0,
            "elapsed_s": 2.0,
            "writes_read_back": 4,
            "in_flight": 1,
            "killed_opening": opening,
        }

    procs = [row(0, g, 1.0 + g, opening=g == 3) for g in range(5)] + [row(0, 5, None)]
    procs += [row(1, 0, 2.5), row(1, 1, 4.5, opening=True), row(1, 2, None)]
    lines = report._process_rows(procs)
    assert len(lines) == 5, lines
    assert "process 0 g0-g4" in lines[0]
    assert "killed 5 times (1 opening), from 1.0 s to 5.0 s" in lines[0]
    assert "50" in lines[0] and "20 writes read back, 5 of them in flight" in lines[0]
    assert "process 0 g5" in lines[1] and "in 2.0 s" in lines[1]
    assert "killed at 2.5 s (pid 100): 4 writes read back" in lines[2]
    assert "killed at 4.5 s as it opened the root (pid 101)" in lines[3]


def _hold_the_event_and_die(ev: Any, holding: Any) -> None:
    """A spawned process: take the lock ``Event.wait`` holds while it looks
    (as a process does that is killed there), say so, and die of SIGKILL."""
    ev._cond.acquire()
    holding.set()
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_briefly(ev: Any, say: Any) -> None:
    """A spawned process: say it is about to wait, wait 0.1 s, say it returned."""
    say.send("waiting")
    ev.wait(0.1)
    say.send("returned")


@pytest.mark.timeout(60)
def test_a_process_killed_inside_event_wait_blocks_every_later_wait() -> None:
    # Why the start signal is a pipe per process: a multiprocessing.Event's
    # wait holds a lock shared by every process while it looks, and keeps
    # no deadline for it. A process SIGKILLed there (a kill run kills a
    # process as soon as it is ready, which may be inside that wait) holds
    # it for good: a later wait, even with a timeout, never returns (a
    # 90 s kill run hung at its end so, every process started after the
    # kill waiting).
    spawn = multiprocessing.get_context("spawn")
    ev, holding = spawn.Event(), spawn.Event()
    p = spawn.Process(target=_hold_the_event_and_die, args=(ev, holding))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL and holding.is_set()
    said, say = spawn.Pipe(duplex=False)
    waiter = spawn.Process(target=_wait_briefly, args=(ev, say))
    waiter.start()
    assert said.poll(30) and said.recv() == "waiting"
    returned = said.poll(2.0)  # twenty times the wait's own timeout
    waiter.kill()
    waiter.join(30)
    assert not returned, "Event.wait(0.1) returned: the lock was not kept"


def _wait_for_the_start(go: StartSignal) -> None:
    go.wait()


@pytest.mark.timeout(60)
def test_a_start_signal_comes_to_each_process_however_the_others_died() -> None:
    # Each process's signal is a pipe of its own: one killed while it waits
    # takes nothing with it; the next process's start comes, and a wait
    # before it keeps its timeout.
    spawn = multiprocessing.get_context("spawn")
    pipes = [spawn.Pipe(duplex=False) for _ in range(2)]
    first = spawn.Process(target=_wait_for_the_start, args=(StartSignal(pipes[0][0]),))
    first.start()
    first.kill()
    first.join(30)
    assert first.exitcode == -signal.SIGKILL
    go = StartSignal(pipes[1][0])
    assert go.wait(0.05) is False
    pipes[1][1].send_bytes(b"go")
    assert go.wait(10) is True


@pytest.mark.timeout(120)
def test_kills_stop_when_no_writer_numbers_are_left(monkeypatch: pytest.MonkeyPatch) -> None:
    # Writer numbers for three processes in all: the two first and one
    # replacement. A kill that would need a fourth stops the kills, and the
    # report says why; the run goes on to its end, clean.
    class Room(processes.Kills):
        def __init__(self, cfg: RunConfig, max_processes: int) -> None:
            super().__init__(cfg, cfg.processes + 1)

    monkeypatch.setattr(processes, "Kills", Room)
    result = killed_run(20261217, kill_every=0.2, kill_replays=0.0)
    assert result.violations == [], summary(result)
    assert result.kills_stopped in (
        "stopped after 0: no writer numbers left",
        "stopped after 1: no writer numbers left",
    ), result.kills_stopped
    assert len([p for p in result.processes if p.killed_at_s is not None]) <= 1
    text = report.render(report.build(result))
    assert f"kills {result.kills_stopped}" in text, text
