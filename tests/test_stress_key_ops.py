"""The byte mode's key ops: ``exists``, ``getsize``, the listings,
``set_if_not_exists`` and ``delete_dir`` under load.

A listing must show exactly the load's keys, each once (never the lock
file, the journal or a temporary file of a ``set`` in flight); a key it
leaves out, ``exists`` saying False and ``getsize`` finding no key are
checked as reads that found the key absent (``missing_key`` unless a
``delete_recreate`` or a ``delete_dir`` may have been between its delete
and its set). A ``set_if_not_exists`` must write if and only if the key
is absent. Each check has a control: a target that lies in that one
answer is caught; stock LocalStore's ``delete_dir`` beside writers of the
directory fails where the locked store's does not.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from stress import targets
from stress.ops import ByteWorker, default_mix
from stress.records import ERROR, MISSING, History
from stress.runner import RunConfig, RunResult, run
from tests._stress_helpers import summary

#: The key ops beside writes that replace whole values, delete and recreate
#: keys, and range writes and reads.
MIX = {
    "exists": 3,
    "getsize": 3,
    "list": 3,
    "set": 2,
    "delete_recreate": 1,
    "set_range": 3,
    "get": 1,
    "set_if_not_exists": 2,
    "delete_dir": 0.5,
    "clear": 0.3,
}


def brief(store: str, seed: int, **kw: Any) -> RunResult:
    print(f"seed {seed}")
    kw.setdefault("duration", 1.0)
    kw.setdefault("mix", MIX)
    return run(RunConfig(store=store, seed=seed, hang_after=10.0, **kw))


def test_the_key_ops_are_in_the_default_mix() -> None:
    kinds = {"exists", "getsize", "list", "set_if_not_exists", "delete_dir", "clear"}
    assert kinds <= set(default_mix())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("store", ["memory", "local"])
def test_the_key_ops_beside_deletes_and_sets_are_clean(store: str) -> None:
    result = brief(store, 20261209)
    assert result.violations == [], summary(result)
    assert set(result.latency) == set(MIX), "every op kind of the mix ran"


@pytest.mark.timeout(120)
def test_the_key_ops_of_two_processes_on_a_journal_store_are_clean() -> None:
    # The root holds the lock file and the journal directory, and every set
    # writes a temporary file first: listings must show none of them.
    result = brief("local", 20261210, processes=2, durability="journal")
    assert result.violations == [], summary(result)
    assert set(result.latency) == set(MIX)


def _kinds(result: RunResult) -> Counter[str]:
    found = Counter(v.kind for v in result.violations)
    print(dict(found))
    return found


@pytest.mark.timeout(60)
def test_a_listing_that_shows_the_lock_file_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: the locked target lists the bare LocalStore under it,
    # which shows the root's lock file (and nothing hides it).
    async def bare_listing(self: targets.LockedTarget, how: str, prefix: str) -> list[str]:
        return await targets.BareTarget(self.inner).listing(how, prefix)

    monkeypatch.setattr(targets.LockedTarget, "listing", bare_listing)
    result = brief("local", 20261211, mix={"list": 1, "set_range": 1})
    found = _kinds(result)
    assert found["corrupt"] > 0, summary(result)
    assert any(".zarr-rangelock" in v.detail for v in result.violations), summary(result)


@pytest.mark.timeout(60)
def test_exists_saying_false_of_a_key_that_surely_exists_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never(self: targets.LockedTarget, key: str) -> bool:
        return False

    monkeypatch.setattr(targets.LockedTarget, "exists", never)
    result = brief("memory", 20261212, mix={"exists": 1, "set_range": 1})
    assert _kinds(result)["missing_key"] > 0, summary(result)


@pytest.mark.timeout(60)
def test_getsize_of_a_wrong_size_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    async def short(self: targets.LockedTarget, key: str) -> int:
        return await targets._Forwarding.getsize(self, key) - 8

    monkeypatch.setattr(targets.LockedTarget, "getsize", short)
    result = brief("memory", 20261213, mix={"getsize": 1, "set_range": 1})
    assert _kinds(result)["corrupt"] > 0, summary(result)
    assert "getsize returned 16,376 bytes" in result.violations[0].detail


@pytest.mark.timeout(60)
def test_a_set_if_not_exists_that_writes_over_a_value_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The control: set_if_not_exists that sets whether or not the key exists.
    # Half the op's calls come without a delete first, on a key that a write
    # completed before made: their bytes, read or left at the end, are flagged.
    async def always(self: targets.LockedTarget, key: str, value: Any) -> None:
        await self.set(key, value)

    monkeypatch.setattr(targets.LockedTarget, "set_if_not_exists", always)
    result = brief("memory", 20261214, mix={"set_if_not_exists": 1, "set_range": 1, "get": 1})
    assert _kinds(result)["phantom_read"] > 0, summary(result)
    assert any("set_if_not_exists wrote" in v.detail for v in result.violations)


#: Each prefix op beside whole-value sets and range writes of keys under it:
#: the mix, the seed, and what the bare LocalStore's raises beside them.
PREFIX_OPS: dict[str, tuple[dict[str, float], int, set[str]]] = {
    "delete_dir": (
        {"delete_dir": 2, "set": 4, "set_range": 2, "get": 1},
        20261215,
        {"OSError", "FileNotFoundError"},
    ),
    "clear": (
        {"clear": 2, "set": 4, "set_range": 2, "get": 1},
        20261207,
        {"FileExistsError", "OSError", "FileNotFoundError"},
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", PREFIX_OPS)
def test_a_prefix_op_beside_sets_into_its_directory_is_clean(op: str) -> None:
    mix, seed, _ = PREFIX_OPS[op]
    result = brief("local", seed, mix=mix, keys=3)
    assert result.violations == [], summary(result)
    assert result.latency[op].total > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", PREFIX_OPS)
def test_stock_prefix_op_beside_sets_into_its_directory_fails(op: str) -> None:
    # The control, the same load on the bare LocalStore. Its delete_dir
    # (shutil.rmtree) meets a set's temporary file or rename in the
    # directory it empties and raises ("Directory not empty", or a file
    # gone between its listing and its unlink); its clear() is rmtree of
    # the root, then mkdir, and a set beside it makes the root again in
    # between (FileExistsError) or meets rmtree as delete_dir does. The
    # locked store holds the prefix lock, so the sets wait; its clear()
    # keeps the root.
    mix, seed, raises = PREFIX_OPS[op]
    result = brief("local", seed, mix=mix, keys=3, unlocked=True, duration=2.0)
    errors = [v for v in result.violations if v.kind == "op_error" and v.op == op]
    assert errors, summary(result)
    raised = {v.detail.split(":")[0] for v in errors}
    print(raised, errors[0].detail)
    assert raised <= raises, raised


def test_a_delete_that_raised_key_missing_is_a_failed_delete_not_a_missing_write() -> None:
    # A delete needs no key; one that raised FileNotFoundError (stock
    # delete_dir beside writers: a file gone between its listing and its
    # unlink) may have removed some keys, so it explains their absence as
    # any failed delete does. A range write that found no key did nothing.
    log = History(16)
    w = ByteWorker(2, "t", random.Random(0), None, ["k"], 16, log.recorder(), {})  # type: ignore[arg-type]
    gone = FileNotFoundError(2, "No such file or directory")
    w.wrote("k", 1, "delete_dir", [(0, 16)], 1, 2, gone, delete=True, noted=True)
    w.wrote("k", 2, "set_range", [(0, 8)], 3, 4, gone)
    assert [r.status for r in w.rec.writes] == [ERROR, MISSING]
