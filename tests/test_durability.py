"""``durability=`` of ``RangeLockedStore(LocalStore)`` (issue 11).

What each mode promises, checked from outside: the argument is checked and
travels with the wrapper; the journal directory is never a key; every mode
stores exactly what ``"none"`` stores; the fsyncs each mode names really
happen (counted per file by patching ``os.fsync``/``os.fdatasync``); and a
range write cut short by ``RLIMIT_FSIZE`` says what it wrote (``"none"``) or
is rolled back (``"journal"``): ``test_durability_cut_short.py``. What a
durable store does when it opens (journal replay, stray temporary files):
``test_durability_journal.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import ZstdCodec
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from tests._journal_records import journal_files
from tests._processes import child_env
from tests._shard_helpers import OURS, new_array
from zarr_rangelock import InvalidKeyError, RangeLockedStore
from zarr_rangelock.shards import _jobs
from zarr_rangelock.store._journal import JOURNAL_DIR
from zarr_rangelock.store._rewrite import Span

pytestmark = pytest.mark.timeout(60)

B = cpu.Buffer.from_bytes
MODES = ("none", "fsync", "journal", "journal-nosync")
DURABLE = MODES[1:]
JOURNALED = ("journal", "journal-nosync")


def value(store: RangeLockedStore, key: str) -> bytes | None:
    got = store.get_sync(key)
    return None if got is None else got.to_bytes()


async def _collect(it: Any) -> list[str]:
    return sorted([k async for k in it])


# ------------------------------------------------------------------ 1. arguments


@pytest.mark.parametrize("bad", ["journaled", "", "FSYNC", None, True, 1, "journal "])
def test_an_unknown_durability_value_is_refused_naming_the_value(
    bad: object, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="durability must be one of") as info:
        RangeLockedStore(LocalStore(tmp_path), durability=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    for mode in MODES:
        assert repr(mode) in str(info.value)


@pytest.mark.parametrize("mode", DURABLE)
def test_a_durable_mode_on_a_memory_store_is_refused_naming_the_store_type(mode: str) -> None:
    with pytest.raises(ValueError, match="MemoryStore") as info:
        RangeLockedStore(MemoryStore(), durability=mode)  # type: ignore[arg-type]
    assert f"durability={mode!r}" in str(info.value)
    assert "LocalStore" in str(info.value)


def test_durability_none_is_accepted_for_a_memory_store() -> None:
    store = RangeLockedStore(MemoryStore(), durability="none")
    assert store.durability == "none"
    store.set_sync("k", B(b"abc"))
    assert value(store, "k") == b"abc"


def test_the_default_durability_is_none(tmp_path: Path) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    assert store.durability == "none"
    assert "durability=" not in repr(store)


@pytest.mark.parametrize("mode", MODES)
def test_durability_survives_pickling_and_with_read_only_and_shows_in_repr(
    mode: str, tmp_path: Path
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path), durability=mode)  # type: ignore[arg-type]
    assert store.durability == mode
    assert ("durability=" in repr(store)) == (mode != "none")
    if mode != "none":
        assert repr(store).endswith(f", durability={mode!r})")
    copy = pickle.loads(pickle.dumps(store))
    ro = store.with_read_only(True)
    back = ro.with_read_only(False)
    for other in (copy, ro, back):
        assert other.durability == mode
        assert repr(other) == repr(store)
    # The unpickled copy really journals (or not): its range write leaves a
    # journal file exactly in the journal modes.
    copy.set_sync("k", B(b"0123456789"))
    copy.set_range_sync("k", B(b"ab"), 3)
    assert value(store, "k") == b"012ab56789"
    assert bool(journal_files(tmp_path)) == (mode in JOURNALED)


# ------------------------------------------------------------------ 2. the journal is no key


@pytest.mark.parametrize("kind", ["memory", "local"])
@pytest.mark.parametrize(
    "key", [JOURNAL_DIR, f"{JOURNAL_DIR}/x", f"{JOURNAL_DIR}/123-abcdef0123456789.jnl"]
)
def test_the_journal_directory_is_refused_as_a_key(kind: str, key: str, tmp_path: Path) -> None:
    store = (
        RangeLockedStore(LocalStore(tmp_path), durability="journal")
        if kind == "local"
        else RangeLockedStore(MemoryStore())
    )
    calls = [
        lambda: store.set_sync(key, B(b"x")),
        lambda: store.get_sync(key),
        lambda: store.set_range_sync(key, B(b"x"), 0),
        lambda: store.delete_sync(key),
        lambda: asyncio.run(store.exists(key)),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError, match="write-ahead journal") as info:
            call()
        assert key in str(info.value)
    if kind == "local":
        assert not (tmp_path / JOURNAL_DIR / "x").exists()


def test_a_journal_named_directory_below_the_root_is_an_ordinary_key(tmp_path: Path) -> None:
    store = RangeLockedStore(LocalStore(tmp_path), durability="journal")
    key = f"a/{JOURNAL_DIR}/0"
    store.set_sync(key, B(b"xyz"))
    store.set_range_sync(key, B(b"Y"), 1)
    assert value(store, key) == b"xYz"
    assert asyncio.run(_collect(store.list())) == [key]


def _journaled_writes(store: RangeLockedStore) -> None:
    store.set_sync("a/0", B(b"0" * 100))
    store.set_sync("b", B(b"1" * 10))
    store.set_range_sync("a/0", B(b"x" * 10), 5)
    asyncio.run(store.set_range("b", B(b"y"), 9))


@pytest.mark.parametrize("mode", JOURNALED)
def test_listings_and_is_empty_never_show_the_journal(mode: str, tmp_path: Path) -> None:
    store = RangeLockedStore(LocalStore(tmp_path), durability=mode)  # type: ignore[arg-type]
    _journaled_writes(store)
    assert journal_files(tmp_path), "the writes made no journal file: nothing is tested"
    assert asyncio.run(_collect(store.list())) == ["a/0", "b"]
    assert asyncio.run(_collect(store.list_prefix(""))) == ["a/0", "b"]
    assert asyncio.run(_collect(store.list_dir(""))) == ["a", "b"]
    assert not asyncio.run(store.is_empty(""))
    store.delete_sync("a/0")
    store.delete_sync("b")
    assert journal_files(tmp_path)
    assert asyncio.run(_collect(store.list())) == []
    assert asyncio.run(_collect(store.list_prefix(""))) == []
    assert JOURNAL_DIR not in asyncio.run(_collect(store.list_dir("")))
    assert asyncio.run(store.is_empty(""))


@pytest.mark.parametrize("how", ["clear", "delete_dir"])
@pytest.mark.parametrize("mode", JOURNALED)
def test_clear_and_delete_dir_of_the_root_keep_the_journal(
    how: str, mode: str, tmp_path: Path
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path), durability=mode)  # type: ignore[arg-type]
    _journaled_writes(store)
    before = journal_files(tmp_path)
    assert before
    asyncio.run(store.clear() if how == "clear" else store.delete_dir(""))
    assert asyncio.run(_collect(store.list())) == []
    assert journal_files(tmp_path) == before  # the same files: the pool holds them open
    # and journaled writes go on working, through the same journal files
    _journaled_writes(store)
    assert value(store, "a/0") == b"0" * 5 + b"x" * 10 + b"0" * 85
    assert value(store, "b") == b"1" * 9 + b"y"
    assert journal_files(tmp_path) == before


# ------------------------------------------------------------------ 3. the same values


KEYS = ("a", "b/c", "b/d")
_op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.binary(max_size=40)),
    st.tuples(
        st.just("set_range"),
        st.sampled_from(KEYS),
        st.binary(max_size=12),
        st.integers(0, 45),
        st.booleans(),  # async?
    ),
    st.tuples(st.just("delete"), st.sampled_from(KEYS)),
    st.tuples(st.just("set_if_not_exists"), st.sampled_from(KEYS), st.binary(max_size=20)),
    st.tuples(st.just("get"), st.sampled_from(KEYS)),
)


def _apply(store: RangeLockedStore, op: tuple[Any, ...]) -> object:
    """Run ``op``; its result, or the type of the error it raised."""
    try:
        if op[0] == "set":
            store.set_sync(op[1], B(op[2]))
        elif op[0] == "set_range":
            _, key, data, start, use_async = op
            if use_async:
                asyncio.run(store.set_range(key, B(data), start))
            else:
                store.set_range_sync(key, B(data), start)
        elif op[0] == "delete":
            store.delete_sync(op[1])
        elif op[0] == "set_if_not_exists":
            asyncio.run(store.set_if_not_exists(op[1], B(op[2])))
        else:
            return value(store, op[1])
    except Exception as exc:
        return type(exc)
    return None


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the lock file and the journal."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != ".zarr-rangelock" and not rel.startswith(JOURNAL_DIR):
            out[rel] = path.read_bytes()
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", DURABLE)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_op, max_size=12))
def test_every_durable_mode_stores_what_durability_none_stores(
    mode: str, ops: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = RangeLockedStore(LocalStore(Path(tmp) / "none"))
        durable = RangeLockedStore(LocalStore(Path(tmp) / "d"), durability=mode)  # type: ignore[arg-type]
        for op in ops:
            assert _apply(durable, op) == _apply(plain, op), op
        assert asyncio.run(_collect(durable.list())) == asyncio.run(_collect(plain.list()))
        for key in KEYS:
            assert value(durable, key) == value(plain, key)
        # On disk too: no aside or temporary file left behind by a durable write.
        assert _files(Path(tmp) / "d") == _files(Path(tmp) / "none")


@pytest.mark.parametrize("mode", MODES)
def test_set_if_not_exists_of_a_directory_key_does_nothing_as_stock_zarr(
    mode: str, tmp_path: Path
) -> None:
    # A group's path is a directory: it exists, so stock LocalStore stores
    # nothing. The durable modes asked for a regular file's size and then
    # wrote, raising IsADirectoryError (found by a bug hunt).
    stores = {
        "stock": LocalStore(tmp_path / "stock"),
        "ours": RangeLockedStore(LocalStore(tmp_path / "ours"), durability=mode),  # type: ignore[arg-type]
    }
    for name, store in stores.items():
        asyncio.run(store.set("grp/zarr.json", B(b"{}")))
        asyncio.run(store.set_if_not_exists("grp", B(b"x")))
        assert (tmp_path / name / "grp").is_dir()
    assert _files(tmp_path / "ours") == _files(tmp_path / "stock")


# ------------------------------------------------------------------ 4. fsync


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every ``os.fsync``/``os.fdatasync`` from now on, as (call, file path)."""
    calls: list[tuple[str, str]] = []
    real = {"fsync": os.fsync, "fdatasync": os.fdatasync}

    def counting(name: str) -> Any:
        def sync(fd: int) -> None:
            calls.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            real[name](fd)

        return sync

    for name in real:
        monkeypatch.setattr(os, name, counting(name))
    yield calls


def _paths(calls: list[tuple[str, str]]) -> list[str]:
    return [path for _, path in calls]


def test_durability_none_never_syncs(tmp_path: Path, syncs: list[tuple[str, str]]) -> None:
    store = RangeLockedStore(LocalStore(tmp_path))
    store.set_sync("c/0", B(b"0" * 64))
    store.set_range_sync("c/0", B(b"x" * 8), 8)
    asyncio.run(store.set_range("c/0", B(b"y" * 8), 16))
    asyncio.run(store.set_if_not_exists("c/1", B(b"1")))
    store.delete_sync("c/0")
    assert value(store, "c/1") == b"1"
    assert syncs == []


def test_fsync_mode_fdatasyncs_the_data_file_after_each_range_write(
    tmp_path: Path, syncs: list[tuple[str, str]]
) -> None:
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability="fsync")
    store.set_sync("c/0", B(b"0" * 64))
    syncs.clear()
    store.set_range_sync("c/0", B(b"x" * 8), 8)
    assert syncs == [("fdatasync", str(root / "c" / "0"))]
    syncs.clear()
    asyncio.run(store.set_range("c/0", B(b"y" * 8), 16))
    assert syncs == [("fdatasync", str(root / "c" / "0"))]
    assert value(store, "c/0") == b"0" * 8 + b"x" * 8 + b"y" * 8 + b"0" * 40


def test_fsync_mode_syncs_a_shard_append_in_several_runs_once_before_its_index(
    tmp_path: Path, syncs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shard pipeline's append of compressed chunks that land apart (each
    in a dead gap of the shard): one ``fdatasync`` of the shard for all of
    them, then one for its index (it was one per run of chunks)."""
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability="fsync")
    arr = new_array(
        store,
        shape=(8, 12),
        chunks=(2, 3),
        shards=(8, 12),
        pipeline=OURS,
        compressors=ZstdCodec(),
    )
    rng = np.random.default_rng(3)
    arr[:] = np.ones((8, 12), dtype="i4")  # small chunks, packed
    a, b = (slice(0, 2), slice(0, 3)), (slice(4, 6), slice(0, 3))  # apart in the shard
    for sel in (a, b):  # moved out (random values do not compress): dead gaps
        arr[sel] = rng.integers(0, 2**31, size=(2, 3), dtype="i4")
    runs: list[int] = []
    placed = _jobs.repointed

    def spied(*args: Any) -> Any:
        plan = placed(*args)
        runs.append(0 if plan is None else len(plan[0]))
        return plan

    monkeypatch.setattr(_jobs, "repointed", spied)
    syncs.clear()
    arr[0:6, 0:3] = 2  # chunks a, b and the one between: small again
    shard = str(root / "c" / "0" / "0")
    assert syncs == [("fdatasync", shard)] * 2
    assert runs[0] >= 2, runs  # the chunks went into gaps apart
    with zarr.config.set(OURS):
        got = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r")[:]
    assert (got[0:6, 0:3] == 2).all() and (got[6:, :] == 1).all() and (got[:, 3:] == 1).all()


@pytest.mark.parametrize("mode", ["fsync", "journal"])
def test_a_whole_value_syncs_its_temporary_file_then_the_directory(
    mode: str, tmp_path: Path, syncs: list[tuple[str, str]]
) -> None:
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability=mode)  # type: ignore[arg-type]
    syncs.clear()  # whatever opening did
    store.set_sync("c/0", B(b"0" * 64))
    assert [name for name, _ in syncs] == ["fsync", "fsync"]
    temp, directory = _paths(syncs)
    assert re.fullmatch(re.escape(str(root / "c" / "0")) + r"\.[0-9a-f]{32}\.partial", temp)
    assert directory == str(root / "c")
    syncs.clear()
    asyncio.run(store.set_if_not_exists("c/1", B(b"1")))
    assert _paths(syncs)[-1] == str(root / "c")
    syncs.clear()
    store.delete_sync("c/0")
    assert syncs == [("fsync", str(root / "c"))]
    assert value(store, "c/0") is None


@pytest.mark.parametrize("mode", ["fsync", "journal"])
def test_a_rewrite_from_pieces_syncs_its_temporary_file_then_the_directory(
    mode: str, tmp_path: Path, syncs: list[tuple[str, str]]
) -> None:
    # A lone rewrite (a compressed shard's compaction, not in a transaction)
    # is published as a whole value is: its temporary file fsynced before
    # the rename, else a power loss could leave the key naming a file whose
    # bytes never reached the disk (the whole shard lost, not just the write).
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability=mode)  # type: ignore[arg-type]
    store.set_sync("c/0", B(b"old value"))
    syncs.clear()
    with store.locked_sync("c/0", [(0, None)]) as h:
        h.rewrite(12, [(0, B(b"new")), (3, Span(0, 9))])
    assert [name for name, _ in syncs] == ["fsync", "fsync"]
    temp, directory = _paths(syncs)
    assert re.fullmatch(re.escape(str(root / "c" / "0")) + r"\.[0-9a-f]{32}\.partial", temp)
    assert directory == str(root / "c")
    assert value(store, "c/0") == b"newold value"


def test_journal_mode_syncs_journal_data_journal_for_one_range_write(
    tmp_path: Path, syncs: list[tuple[str, str]]
) -> None:
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability="journal")
    store.set_sync("c/0", B(b"0" * 64))
    syncs.clear()
    # The first journaled write makes the journal file: its directory and the
    # root are fsynced once, so the file's name survives a power loss.
    store.set_range_sync("c/0", B(b"x" * 8), 8)
    (jnl,) = journal_files(root)
    journal = str(root / JOURNAL_DIR / jnl)
    data = str(root / "c" / "0")
    assert syncs == [
        ("fsync", str(root / JOURNAL_DIR)),
        ("fsync", str(root)),
        ("fdatasync", journal),
        ("fdatasync", data),
        ("fdatasync", journal),
    ]
    for write in (
        lambda: store.set_range_sync("c/0", B(b"y" * 8), 16),
        lambda: asyncio.run(store.set_range("c/0", B(b"z" * 8), 24)),
    ):
        syncs.clear()
        write()
        assert syncs == [("fdatasync", journal), ("fdatasync", data), ("fdatasync", journal)]
    assert value(store, "c/0") == b"0" * 8 + b"x" * 8 + b"y" * 8 + b"z" * 8 + b"0" * 32


def test_journal_mode_syncs_the_directory_of_the_files_a_transaction_renames(
    tmp_path: Path, syncs: list[tuple[str, str]]
) -> None:
    """One array write that makes two compressed shards is one transaction of
    two prepared files, renamed over their keys once the record is durable:
    their directory is fsynced after the renames and before the record is
    retired (a power loss after the retire must not undo a rename whose
    record is gone)."""
    root = tmp_path.resolve()
    store = RangeLockedStore(LocalStore(root), durability="journal")
    arr = new_array(
        store, shape=(16,), chunks=(4,), shards=(8,), pipeline=OURS, compressors=ZstdCodec()
    )
    syncs.clear()
    arr[:] = np.arange(16, dtype="i4")  # shards c/0 and c/1, each a prepared file
    (jnl,) = journal_files(root)
    journal = str(root / JOURNAL_DIR / jnl)
    assert syncs[-3:] == [
        ("fdatasync", journal),  # the record
        ("fsync", str(root / "c")),  # the renames
        ("fdatasync", journal),  # the retire
    ]
    prepared = sorted(path for _, path in syncs[:-3] if path.endswith(".partial"))
    assert len(prepared) == 2, syncs  # fsynced before the record names them
    for path, key in zip(prepared, ("0", "1"), strict=True):
        assert re.fullmatch(re.escape(str(root / "c" / key)) + r"\.[0-9a-f]{32}\.partial", path)
    assert (arr[:] == np.arange(16)).all()


def test_journal_nosync_never_syncs(tmp_path: Path, syncs: list[tuple[str, str]]) -> None:
    store = RangeLockedStore(LocalStore(tmp_path), durability="journal-nosync")
    store.set_sync("c/0", B(b"0" * 64))
    store.set_range_sync("c/0", B(b"x" * 8), 8)  # makes the journal file
    store.set_range_sync("c/0", B(b"y" * 8), 16)
    asyncio.run(store.set_range("c/0", B(b"z" * 8), 24))
    asyncio.run(store.set_if_not_exists("c/1", B(b"1")))
    store.delete_sync("c/1")
    assert journal_files(tmp_path)
    assert value(store, "c/0") == b"0" * 8 + b"x" * 8 + b"y" * 8 + b"z" * 8 + b"0" * 32
    assert syncs == []


def test_a_journal_file_made_without_sync_is_synced_before_a_journal_mode_record(
    tmp_path: Path, syncs: list[tuple[str, str]]
) -> None:
    # Wrappers of one root share its journal files: one made by a
    # journal-nosync write has an unsynced name when a "journal" write reuses it.
    root = tmp_path.resolve()
    nosync = RangeLockedStore(LocalStore(root), durability="journal-nosync")
    nosync.set_sync("c/0", B(b"0" * 64))
    nosync.set_range_sync("c/0", B(b"x" * 8), 8)
    assert syncs == []
    (jnl,) = journal_files(root)
    journal = str(root / JOURNAL_DIR / jnl)
    data = str(root / "c" / "0")
    durable = RangeLockedStore(LocalStore(root), durability="journal")
    durable.set_range_sync("c/0", B(b"y" * 8), 16)
    assert journal_files(root) == [jnl]  # the same file
    assert syncs == [
        ("fsync", str(root / JOURNAL_DIR)),
        ("fsync", str(root)),
        ("fdatasync", journal),
        ("fdatasync", data),
        ("fdatasync", journal),
    ]
    syncs.clear()
    nosync.set_range_sync("c/0", B(b"z" * 8), 24)
    assert syncs == []
    assert value(durable, "c/0") == b"0" * 8 + b"x" * 8 + b"y" * 8 + b"z" * 8 + b"0" * 32


@pytest.mark.parametrize("durability", ["fsync", "journal"])
def test_a_durable_set_creates_files_with_the_mode_stock_localstore_gives(
    tmp_path: Path, durability: str
) -> None:
    old = os.umask(0o002)
    try:
        RangeLockedStore(LocalStore(tmp_path / "ours"), durability=durability).set_sync(
            "a/b", cpu.Buffer.from_bytes(b"x")
        )
        from zarr.core.sync import sync

        sync(LocalStore(tmp_path / "stock").set("a/b", cpu.Buffer.from_bytes(b"x")))
    finally:
        os.umask(old)
    mode = (tmp_path / "ours" / "a" / "b").stat().st_mode & 0o777
    assert mode == (tmp_path / "stock" / "a" / "b").stat().st_mode & 0o777


_SWEEP_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys, warnings
    import numpy as np, zarr
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    root, mode = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    store = RangeLockedStore(LocalStore(root), durability=mode)
    with zarr.config.set({"codec_pipeline.path": "zarr_rangelock.ShardWritePipeline"}):
        a = zarr.create_array(store, shape=(64, 64), chunks=(16, 16), shards=(64, 64),
                              dtype="i4", compressors=None, fill_value=0)
        a[...] = 7  # one dense shard of 16 KiB, every chunk present, no marks
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 10, resource.RLIM_INFINITY))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                a[0:16, 0:16] = 0  # a chunk of fill values: dropped, marks to add
                raised = None
            except OSError as exc:
                raised = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"raised": raised,
                      "warnings": [f"{w.category.__name__}: {w.message}" for w in seen]}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux")
@pytest.mark.parametrize("mode", ["none", "journal"])
def test_a_write_whose_marks_cannot_be_added_returns_and_warns(mode: str, tmp_path: Path) -> None:
    # The chunk is written (journaled: committed), then adding the shard's
    # absent marks, a whole rewrite after the write's locks, fails on a
    # full disk (here: a file size limit under the shard's size). The call
    # raised that OSError, so a journaled call that had committed said it
    # wrote nothing (found by a bug hunt). It returns now, with a warning
    # naming the shard; the shard stays as written, every chunk present.
    env = child_env()
    done = subprocess.run(
        [sys.executable, "-c", _SWEEP_CHILD, str(tmp_path), mode],
        capture_output=True, text=True, timeout=50, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["raised"] is None, got
    assert any(
        w.startswith("RuntimeWarning: the shard 'c/0/0' was written") and "File too large" in w
        for w in got["warnings"]
    ), got
    with zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}):
        stock = zarr.open_array(LocalStore(tmp_path), mode="r")
        assert (stock[0:16, 0:16] == 0).all() and (stock[16:, :] == 7).all()
