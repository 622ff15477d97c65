"""A process killed right after any change it makes to a key's file leaves no
other process trusting what it cached of the key.

README, "A writer killed mid-change": a process stamps a key anew before it
replaces or removes the key's file as well as after, so a writer of another
process that cached the key's descriptor never writes into the old file; and
before it re-points a shard's index in place, so a writer of another process
that kept the shard's index never writes its next chunk by the old one. The
places that do so were found by reading the code (``replacing``,
``removing_prefix``, ``bump``, the journal's replay); this module checks
them all at once, by the system calls themselves. Another process
(``tests._die_after``, forked from a server that imported the library once)
runs one operation with ``os.replace``, ``os.rename``, ``os.unlink``,
``os.remove``, ``os.pwrite`` and ``os.pwritev`` wrapped (and the store's
copies into a mapping of a file, with ``map_writes``): the n-th of them
that touches a file of the keys the operation changes is followed at once by
a SIGKILL of the process; n runs from 1 until the operation ends before
it.

For the operations that rename or unlink, before each run this process (the
other writer) caches a descriptor of each of those keys (a one-byte
``set_range`` of the byte already there) with its revalidation delay made
long (the 10 ms window of ``FD_REVALIDATE_S`` a writer has in a run, made
deterministic); after it, it writes a new byte into each key: the byte must
be in the key's file, or the write must fail because the key is gone.
Written into a file the kill left unlinked or renamed aside, it is lost. For
the chunk written into a shard's free space (the pipeline's and a
``ShardWriter``'s, its index re-pointed in place), this process keeps the
shard's index (it wrote chunk 3 first, with the subprocess's ``durability``,
and read the shard); after the kill it reads the shard, which must read as
the files hold it, and writes chunk 2: the shard must then hold chunk 2 and
all it held after the kill. By an index from before the killed write, chunk
1 would read, and after the write hold, its old value (the control does
both). The same check for a first chunk of a new shard laid out densely
(``dense_shards``), which this process read first (fill: no shard); its
control keeps the write too: this process trusts nothing it knew of a shard
that was not there.

The operations: a key's ``set`` and ``delete``, ``delete_dir``, ``clear``, a
``delete`` of a directory (the removals take a tree three levels deep), a
compaction of a shard (by the pipeline and by a ``ShardWriter``), both
shards of an array written whole or deleted (all fill) in one call (a
journal transaction of two keys in a journaled store), chunk 1 of a shard
written into its free space (by the pipeline and by a ``ShardWriter``) or as
the first of a new dense shard, each with every ``durability`` (the chunks
written into free space also with ``map_writes``: their in-place writes are
copies into a mapping of the file, no system call, each counted as a
change); and the replay of a dead process's record as a journaled store
opens. A journaled
transaction's keys are stamped as its handles hand their new values or
deletes to it (``LockedKey.set``'s, ``delete``'s and ``rewrite``'s
``forget``), and by the commit itself before it renames or removes their
files (the last test: the commit's own stamps, the handles' patched out).

The controls run the same with the stamps before patched out in the
subprocess (``LocalBackend.replacing``, ``removing_prefix`` and ``bump``
made no-ops): kills after a change then lose writes, so the check can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests import _die_after, _forked
from tests._journal_records import dead_journal, record
from tests._shard_helpers import OURS
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _backends
from zarr_rangelock.store._backends import why_not_mapped

pytestmark = pytest.mark.timeout(120)

B = cpu.Buffer.from_bytes
OLD = b"o" * 96


def _old_files(root: Path, keys: list[str]) -> None:
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(OLD)


def _sharded(root: Path, compressed: bool = True, shards: int = 2) -> None:
    # Two shards of four 64-element chunks of one value (a few bytes each,
    # zstd: new incompressible values of chunk 1 fit no free space); the
    # first ``shards`` written.
    kw: dict[str, object] = {} if compressed else {"compressors": None}
    with zarr.config.set(OURS):
        store = RangeLockedStore(LocalStore(root))
        a = zarr.create_array(store, shape=(512,), shards=(256,), chunks=(64,), dtype="i4", **kw)
        a[: 256 * shards] = 1


def _dead_record(root: Path) -> None:
    _old_files(root, ["k"])
    dead_journal(root, record([(b"S", "k", 0, b"N" * 80)]))


#: The operations that write chunk 1 of a shard (its number here) without
#: replacing a file this process could have a descriptor of: into the
#: shard's free space, its index re-pointed in place, or as the first chunk
#: of a new shard laid out densely (``dense_shards``). What this process
#: keeps is what it knows of the shard (its index, or that it is not
#: there), checked by :func:`_chunk_lost`.
IN_PLACE = {"append": 0, "ShardWriter append": 0, "new dense shard": 1}

#: The keys of a tree the removals take (three levels deep)
TREE = ["d/a", "d/x/b", "d/x/y/c"]

#: operation -> (the keys whose files it changes, how the root is made)
CASES: dict[str, tuple[list[str], Callable[[Path], None]]] = {
    "set": (["k"], lambda root: _old_files(root, ["k"])),
    "delete": (["k"], lambda root: _old_files(root, ["k"])),
    "delete_dir": (TREE, lambda root: _old_files(root, [*TREE, "e"])),
    "delete of a directory": (TREE, lambda root: _old_files(root, TREE)),
    "clear": (["k", *TREE], lambda root: _old_files(root, ["k", *TREE])),
    "compaction": (["c/0"], _sharded),
    "whole shards": (["c/0", "c/1"], _sharded),
    "whole uncompressed shards": (["c/0", "c/1"], lambda root: _sharded(root, False)),
    "ShardWriter compaction": (["c/0"], _sharded),
    "fill shards": (["c/0", "c/1"], _sharded),
    "append": (["c/0"], _sharded),
    "ShardWriter append": (["c/0"], _sharded),
    "new dense shard": (["c/1"], lambda root: _sharded(root, False, shards=1)),
    "replay": (["k"], _dead_record),
}


def _cache(store: RangeLockedStore, root: Path, key: str) -> None:
    """This process's descriptor of ``key``, cached (its file unchanged)."""
    store.set_range_sync(key, B((root / key).read_bytes()[:1]), 0)


def _lost(store: RangeLockedStore, root: Path, key: str) -> str | None:
    """Write a new first byte into ``key``: None if it is in the key's file
    or the key is gone and the write failed, else what went wrong."""
    path = root / key
    before = path.read_bytes() if path.exists() else None
    byte = bytes([(before[0] + 1) % 256]) if before else b"Z"
    try:
        store.set_range_sync(key, B(byte), 0)
    except KeyError as exc:
        return None if not path.exists() else f"{key}: {exc!r}, the key there"
    if not path.exists():
        return f"{key}: the write succeeded, the key gone (into an unlinked file)"
    if path.read_bytes()[:1] != byte:
        return f"{key}: the write is not in the key's file (lost)"
    return None


def _stock_chunks(root: Path, shard: int) -> list[int]:
    """Shard ``c/{shard}`` as stock zarr reads it from the files (no wrapper)."""
    return zarr.open_array(LocalStore(root), mode="r")[256 * shard : 256 * (shard + 1)].tolist()


def _chunk_lost(arr: zarr.Array[Any], root: Path, shard: int) -> list[str]:
    """Read shard ``c/{shard}`` through ``arr``, then write its chunk 2 (by
    what this process knows of the shard): what went wrong, if anything:
    the read is not what the files hold, or the shard does not then hold
    chunk 2 and what it held before."""
    before = _stock_chunks(root, shard)
    lo, out = 256 * shard, []
    with zarr.config.set(OURS):
        read = arr[lo : lo + 256].tolist()
        arr[lo + 128 : lo + 192] = 22
    if read != before:
        out.append(f"c/{shard}: chunk 1 read as {set(read[64:128])} (stale)")
    after = _stock_chunks(root, shard)
    expected = before[:128] + [22] * 64 + before[192:]
    if after != expected:
        changed = sorted(
            {i // 64 for i, (a, e) in enumerate(zip(after, expected, strict=True)) if a != e}
        )
        out.append(f"c/{shard}: chunks {changed} not as written (lost)")
    return [f"{x}; chunk 1 held {set(before[64:128])}" for x in out]


def _kills(
    tmp_path: Path,
    op: str,
    durability: str,
    control: bool,
    no_forget: bool = False,
    map_writes: bool = False,
) -> list[list[str]]:
    """Per kill point of ``op`` (after each change of a key's file), the
    writes of this process it lost (see the module); ``no_forget``: the
    subprocess's ``LocalBackend.forget`` a no-op; ``map_writes``: the
    subprocess's store copies its in-place writes into a mapping of the
    file (each copy a change; it must make one)."""
    keys, make = CASES[op]
    out: list[list[str]] = []
    n = 0
    while True:
        n += 1
        root = tmp_path / f"kill{n}"
        root.mkdir()
        make(root)
        in_place, shard = op in IN_PLACE, IN_PLACE.get(op, 0)
        store = RangeLockedStore(
            LocalStore(root),
            durability=durability if in_place else "none",
            dense_shards=op == "new dense shard",
        )
        if in_place:  # what this process knows of the shard kept: chunk 3 written or read
            with zarr.config.set(OURS):
                arr = zarr.open_array(store, mode="r+")
                if shard == 0:
                    arr[192:256] = 1
                    assert arr[0:256].tolist() == [1] * 256  # (and read)
                else:
                    assert arr[256:512].tolist() == [0] * 256  # (not there: fill)
        else:
            for key in keys:
                _cache(store, root, key)
        spec = {"op": op, "keys": keys, "durability": durability, "kill_at": n}
        spec |= {"no_forget": no_forget, "dense": op == "new dense shard"}
        spec |= {"map_writes": map_writes}
        ended = _forked.run(_die_after.run, str(root), {**spec, "control": control}, timeout=60)
        if ended.exitcode == 0:  # it ended before the n-th change
            assert ended.value["changes"] == n - 1
            assert bool(ended.value["mapped"]) == map_writes, ended.value
            store.close()
            return out
        assert ended.killed, str(ended)
        if in_place:
            out.append(_chunk_lost(arr, root, shard))
        else:
            out.append([lost for key in keys if (lost := _lost(store, root, key))])
        store.close()


@pytest.mark.parametrize("durability", ["none", "fsync", "journal", "journal-nosync"])
@pytest.mark.parametrize("op", [op for op in CASES if op != "replay"])
def test_a_write_of_another_process_after_a_kill_right_after_any_change_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, durability: str
) -> None:
    monkeypatch.setattr(_backends, "FD_REVALIDATE_S", 3600.0)
    losses = _kills(tmp_path, op, durability, control=False)
    assert losses, f"{op} changed no key's file"
    assert losses == [[]] * len(losses), losses
    if op in IN_PLACE:  # the last kill came after chunk 1 was in: the killed process's
        last = _stock_chunks(tmp_path / f"kill{len(losses)}", IN_PLACE[op])
        assert last[64:192] == [11] * 64 + [22] * 64


#: The in-place operations that write into an existing shard's file: with
#: ``map_writes``, copies into a mapping (a new dense shard is laid out in a
#: temporary file and renamed)
MAPPED = ["append", "ShardWriter append"]


@pytest.mark.parametrize("control", [False, True], ids=["stamps", "control"])
@pytest.mark.parametrize("op", MAPPED)
def test_the_same_with_in_place_writes_copied_into_a_mapping_of_the_file(
    tmp_path: Path, op: str, control: bool
) -> None:
    # map_writes: the killed process's in-place writes (the chunk, the
    # index) are copies into its mapping of the shard, no system call; each
    # counts as a change (the other process's store pwrites, as a wrapper
    # without map_writes does into a file another one mapped). The control
    # (no stamps before) loses writes here too.
    if why_not_mapped(str(tmp_path)) is not None:
        pytest.skip(f"no mapping here: {why_not_mapped(str(tmp_path))}")
    losses = _kills(tmp_path, op, "none", control=control, map_writes=True)
    if control:
        assert any(losses), losses
        return
    assert losses and losses == [[]] * len(losses), losses
    last = _stock_chunks(tmp_path / f"kill{len(losses)}", IN_PLACE[op])
    assert last[64:192] == [11] * 64 + [22] * 64


def test_a_write_after_a_replay_killed_right_after_any_change_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replay of a dead process's journal, as a journaled store's open
    # runs it: killed after it renamed the record's value over the key and
    # before its stamps after (forget), it left the old stamp there until
    # 2026-12-07, when it stamped only after (its control below loses).
    monkeypatch.setattr(_backends, "FD_REVALIDATE_S", 3600.0)
    losses = _kills(tmp_path, "replay", "journal", control=False)
    assert losses and losses == [[]] * len(losses), losses


@pytest.mark.parametrize(
    ("op", "durability"),
    [
        ("set", "none"),
        ("delete_dir", "journal"),
        ("replay", "journal"),
        ("append", "none"),
        ("ShardWriter append", "journal"),
    ],
)
def test_the_control_without_stamps_before_loses_the_other_processes_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, durability: str
) -> None:
    monkeypatch.setattr(_backends, "FD_REVALIDATE_S", 3600.0)
    losses = _kills(tmp_path, op, durability, control=True)
    assert any(losses), losses


@pytest.mark.parametrize("control", [False, True], ids=["commit stamps", "control"])
@pytest.mark.parametrize("op", ["whole shards", "fill shards", "ShardWriter compaction"])
def test_a_journaled_commit_stamps_its_keys_before_it_changes_them_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, control: bool
) -> None:
    # The handles of a journaled transaction stamp each key as they hand its
    # new value or delete over (LockedKey's forget), before the commit; the
    # commit stamps them itself too (replacing), and that alone keeps the
    # other process's write: here forget does nothing in the subprocess (no
    # stamp by the handles, none after). Until 2026-12-07 the commit did
    # not, and these lost writes as the control does (replacing patched out).
    monkeypatch.setattr(_backends, "FD_REVALIDATE_S", 3600.0)
    losses = _kills(tmp_path, op, "journal", control=control, no_forget=True)
    assert losses
    if control:
        assert any(losses), losses
    else:
        assert losses == [[]] * len(losses), losses
