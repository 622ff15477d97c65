"""The stress runner's ``--kill-replays``: processes started in killed ones' places
killed too, while they open the root and replay the dead journals.

A replacement told to die gets a SIGKILL timed from the start of its
store's opening (:func:`stress.worker.open_root`), drawn to land in its
replay: a replay cut short, whose record's keys, file and turn at the root
the kernel lets go of, for the next opening to replay again. The first
test forces that interleaving: the replay waits for a key this process
holds, and dies there. The random runs show it beside live writers,
checked by the oracle, and the coordinator's bookkeeping of the places
with several dead processes at once.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from zarr.storage import LocalStore

from stress import report
from stress.kills import Kills
from stress.ops import default_mix
from stress.runner import RunConfig, run
from stress.worker import _DeathInOpening, open_root
from tests._journal_records import dead_journal, record
from tests._processes import SPAWN
from tests._stress_helpers import summary, usage_error
from zarr_rangelock import JournalWarning, RangeLockedStore

OLD = bytes(range(100))


def _open_and_die(root: str, after: float) -> None:
    """A spawned process: open the root as a stress worker does, told to die
    ``after`` seconds into the opening."""
    open_root(RunConfig(store="local", durability="journal"), LocalStore(root), after)


def _flocks(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds an ``flock`` on ``path`` (``/proc/locks``;
    looking never takes the lock, which would make a replay skip the file)."""
    st = path.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields:  # a waiter's line: "1: -> FLOCK ..."
                continue
            if fields[1] == "FLOCK" and fields[4] == str(pid) and fields[5] == inode:
                return True
    return False


@pytest.mark.timeout(60)
def test_a_process_killed_in_its_replay_leaves_the_record_to_the_next_opening(
    tmp_path: Path,
) -> None:
    # A dead journal's record writes "new!" over the first bytes of "k".
    # This process holds "k" whole, so the spawned process's replay adopts
    # the record (takes its file's flock, seen in /proc/locks) and waits for
    # "k": it is in the middle of its replay when open_root's SIGKILL comes,
    # 3 s into its opening. Nothing of the record was applied; the file,
    # its flock and the replay's turn at the root went with the process, so
    # the next opening (recover()) takes them and replays it, all new.
    root = tmp_path / "root"
    root.mkdir()
    (root / "k").write_bytes(OLD)
    store = RangeLockedStore(LocalStore(str(root)), durability="journal")  # nothing to replay
    path = dead_journal(root, record([(b"R", "k", 0, b"new!")], witnesses=[OLD[:4]]))
    with store.locked_sync("k", [(0, None)]):
        p = SPAWN.Process(target=_open_and_die, args=(str(root), 3.0))
        p.start()
        assert p.pid is not None
        deadline = time.monotonic() + 30
        while not _flocks(p.pid, path):
            assert p.is_alive(), f"it ended before it adopted the record (exit {p.exitcode})"
            assert time.monotonic() < deadline, "it never adopted the record"
            p.join(0.01)  # wait on the process: it dies or adopts
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        assert (root / "k").read_bytes() == OLD
        assert path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalWarning)
        assert store.recover() == 1
    assert (root / "k").read_bytes() == b"new!" + OLD[4:]
    assert not path.exists()
    store.close()


def test_a_death_in_opening_never_comes_once_the_opening_has_returned() -> None:
    death = _DeathInOpening(60.0)
    death.opened()
    death.timer.join(10)
    assert not death.timer.is_alive()  # cancelled
    death._die()  # a timer that fired as the opening returned: it finds it opened
    assert death.opening is False  # (and this process lives)


def test_aim_draws_a_death_within_the_longest_recent_opening_and_never_past_the_room() -> None:
    cfg = RunConfig(store="local", processes=2, durability="journal", kill_every=1.0)
    kills = Kills(cfg, max_processes=8)
    try:
        for s in (0.002, 0.010, 0.004):
            kills.opened(s)
        kills.replays = 0.999999
        drawn = [kills.aim(0, 1, 2, time_left=5.0) for _ in range(200)]
        assert all(d is not None and 0.0 <= d <= 0.010 for d in drawn), drawn
        assert kills.aimed == 200
        # Generation 3 of place 0 is process 6; the one after it (8) has no room.
        assert kills.aim(0, 3, 2, time_left=5.0) is None
        assert kills.aim(0, 1, 2, time_left=0.5) is None  # the load ends too soon
        kills.replays = 0.0
        assert kills.aim(0, 1, 2, time_left=5.0) is None
        assert kills.aimed == 200
    finally:
        kills.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["bytes", "shard"])
def test_kills_into_replays_are_clean_and_replacements_die_as_they_open(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nearly every replacement is told to die in its opening, and (so that a
    # loaded machine's slow openings cannot make the drawn times miss them
    # all) at its very start; the ones that die leave their place's dead
    # journals to the next generation, and the dead processes' writes come
    # back once a process of that place is ready.
    aim = Kills.aim

    def at_once(self: Kills, *args: Any) -> float | None:
        return None if aim(self, *args) is None else 0.0

    monkeypatch.setattr(Kills, "aim", at_once)
    kw: dict[str, Any] = {"keys": 4}
    if mode == "shard":
        kw = {"mode": "shard", "mix": default_mix("shard"), "durability": "journal-nosync"}
    seed = 20261209
    print(f"seed {seed}")
    cfg = RunConfig(
        seed=seed,
        store="local",
        processes=3,
        threads=1,
        tasks=2,
        kill_every=0.2,
        kill_replays=0.9,
        duration=3.0,
        hang_after=20.0,
        **{"durability": "journal", **kw},
    )
    result = run(cfg)
    assert result.violations == [], summary(result)
    procs = "\n".join(map(str, result.processes))
    opening = [p for p in result.processes if p.killed_opening]
    assert opening, f"no replacement died as it opened:\n{procs}"
    assert all(p.ops == 0 and p.writes_read_back == 0 for p in opening), procs
    assert result.kills_aimed_at_replays >= len(opening)
    last = [p for p in result.processes if p.killed_at_s is None]
    assert len(last) == 3 and all(p.exitcode == 0 for p in last), procs
    rep = report.build(result)
    assert "--kill-replays 0.9" in rep["reproduce"]
    text = report.render(rep)
    assert f"{len(opening)} of them as they opened the root" in text, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kill-replays", "0.5"], "--kill-replays needs --kill-every"),
        (
            ["--kill-every", "1", "--kill-replays", "1"],
            "--kill-replays must be at least 0 and below 1, got 1",
        ),
        (["--kill-every", "1", "--kill-replays", "-0.1"], "got -0.1"),
    ],
)
def test_kill_replays_refuses_what_it_cannot_run(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--store", "local", "--processes", "2", "--durability", "journal"]
    err = usage_error([*base, *args], capsys)
    assert message in err, err
