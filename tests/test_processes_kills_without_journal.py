"""A writer killed at fixed points of a shard write with ``durability="none"``
or ``"fsync"`` while a live writer goes on: a matrix, with real processes
(README, "Compressed inner chunks", "Stray temporary files are not keys"
and the table at the start of "Crash safety"), the twin of
``tests/test_processes_journal_kills.py`` for the modes without a journal.

Process A (a subprocess) writes and kills itself with SIGKILL from a
patched function at one point: before the in-place write of its shard's
index (``_backends._write_range``, matched by length), between two pages of
that write (the bytes up to a page boundary written, then the kill: what
the kernel leaves when a fatal signal arrives during a ``pwrite`` of
several pages, as it checks for one before each page), between the pages
of a dense chunk's in-place write, or before the rename of a temporary file
(``_backends.publish``: a compaction, or the dense layout of a new shard).
This process, B, whose store was opened before A died, then reads and
writes the shard; process C then opens the root and reads; stock zarr
reads too. Nothing replays here (there is no journal): what A left is
what everyone sees.

What the README promises and these tests assert: a compressed shard's
write killed before its index leaves the shard as it was; a compaction or
a dense layout killed before its rename leaves the shard as it was and a
stray temporary file that listings hide and a durable store removes once
it is 60 s old; a dense chunk written in place can be torn; a
``write_chunks`` over two shards can stop between them.

THE FINDING (not documented before this module): a kill between the pages
of a compressed shard's *index* write leaves an index whose CRC-32C fails:
the whole shard, every chunk of it, is unreadable (our reader, C, stock
zarr: ``ValueError``) and every partial write into it raises, in every
process, until a write of the whole shard (or a delete) replaces it. It
needs the index's ``pwrite`` to span a page boundary (always for shards of
256 chunks or more, whose index is over 4 KiB; for a smaller one, where
the shard's size puts its index across one) and a changed entry of the
index to lie before a boundary the kill lands on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from tests import _forked, _kill_children
from tests._shard_helpers import OURS
from zarr_rangelock import RangeLockedStore

BEFORE, A_VALUE, B_VALUE = 1, 11, 22


@dataclass(frozen=True)
class Geometry:
    """Two shards of ``chunks`` inner chunks of ``chunk`` int32 each."""

    chunks: int
    chunk: int
    zstd: bool

    @property
    def shard(self) -> int:
        return self.chunks * self.chunk

    @property
    def index_nbytes(self) -> int:
        return 16 * self.chunks + 4

    def sel(self, c: int) -> slice:
        """The elements of inner chunk ``c`` (over both shards)."""
        return slice(c * self.chunk, (c + 1) * self.chunk)


SMALL = Geometry(chunks=4, chunk=4, zstd=True)  # a 68-byte index
BIG = Geometry(chunks=1024, chunk=4, zstd=True)  # a 16,388-byte index: five pages
DENSE = Geometry(chunks=4, chunk=2048, zstd=False)  # 8 KiB chunks: two pages each


def _a_killed(root: Path, durability: str, dense: bool, **spec: Any) -> None:
    """Run A (``tests._kill_children.write_and_die``) on ``root``; it must
    die by its own SIGKILL."""
    spec = {"durability": durability, "dense": dense, **spec}
    ended = _forked.run(_kill_children.write_and_die, str(root), spec)
    assert ended.killed, str(ended)


def _c(root: Path, durability: str, g: Geometry) -> dict[str, Any]:
    """Process C (``tests._kill_children.open_and_read``) opens ``root``
    (with ``durability``) and reads each shard: its values, or the
    ``ValueError`` it met; and the keys it lists."""
    ended = _forked.run(_kill_children.open_and_read, str(root), durability, g.shard)
    assert ended.exitcode == 0, str(ended)
    out: dict[str, Any] = ended.value
    return out


def _by_shard(read: Callable[[slice], Any], g: Geometry) -> list[Any]:
    """Each shard's values as a list, or ``"ValueError: ..."``."""
    out: list[Any] = []
    for s in range(2):
        try:
            out.append(np.asarray(read(slice(s * g.shard, (s + 1) * g.shard))).tolist())
        except ValueError as exc:
            out.append(f"ValueError: {exc}")
    return out


def _stock(root: Path, g: Geometry) -> list[Any]:
    """What stock zarr (its own pipeline, a bare LocalStore) reads, per shard."""
    arr = zarr.open_array(LocalStore(str(root)), mode="r")
    return _by_shard(arr.__getitem__, g)


def _chunks(values: list[int], g: Geometry) -> str:
    """A shard's values chunk by chunk: ``o`` all BEFORE, ``n`` all A's,
    ``b`` all B's, ``0`` all fill, ``t`` torn (mixed)."""
    names = {BEFORE: "o", A_VALUE: "n", B_VALUE: "b", 0: "0"}
    out = ""
    for c in range(0, len(values), g.chunk):
        chunk = set(values[c : c + g.chunk])
        out += names.get(chunk.pop(), "?") if len(chunk) == 1 else "t"
    return out


def _strays(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.partial"))


def _array(
    root: Path, g: Geometry, durability: str, dense: bool = False, fill: bool = True
) -> tuple[RangeLockedStore, zarr.Array[Any]]:
    """B's store and array (every element BEFORE where ``fill``)."""
    store = RangeLockedStore(LocalStore(str(root)), durability=durability, dense_shards=dense)
    kw: dict[str, Any] = {} if g.zstd else {"compressors": None}  # zarr's default: zstd
    a = zarr.create_array(
        store, shape=(2 * g.shard,), shards=(g.shard,), chunks=(g.chunk,), dtype="i4", **kw
    )
    if fill:
        a[:] = BEFORE
    return store, a


# ------------------------------------------------- killed before its index: as it was


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("durability", "api"), [("none", "array"), ("fsync", "array"), ("none", "write_chunks")]
)
def test_a_compressed_write_killed_before_its_index_leaves_the_shard_as_it_was_for_every_process(
    tmp_path: Path, durability: str, api: str
) -> None:
    # README, "Compressed inner chunks": "It never writes a byte the stored
    # index points at, so a write that fails or is killed before the index
    # is rewritten leaves the shard as it was". A's chunk 1 is written into
    # free space, its index not. B, live, reads the shard as it was, then
    # writes chunk 2 and chunk 1 (each read back), and C and stock zarr read
    # B's writes; no temporary file anywhere.
    root, g = tmp_path / "root", SMALL
    with zarr.config.set(OURS):
        store, a = _array(root, g, durability)
        spec = {"sel": [4, 8], "chunks": [1], "value": A_VALUE}
        _a_killed(root, durability, False, api=api, kill="before-write", length=68, **spec)
        assert _chunks(a[0:16].tolist(), g) == "oooo"
        a[g.sel(2)] = B_VALUE
        a[g.sel(1)] = B_VALUE
        assert _chunks(a[0:16].tolist(), g) == "obbo"
        c = _c(root, "none", g)
        store.close()
    assert [_chunks(s, g) for s in c["shards"]] == ["obbo", "oooo"]
    assert _stock(root, g) == c["shards"]
    assert _strays(root) == []


# ---------------------------------------- killed between the pages of its index: THE FINDING


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("durability", "api"), [("none", "array"), ("fsync", "write_chunks")])
def test_finding_a_kill_between_the_pages_of_an_index_write_leaves_the_whole_shard_unreadable(
    tmp_path: Path, durability: str, api: str
) -> None:
    # THE FINDING (asserts what happens now; the README did not say it): A
    # rewrites chunk 1's entry of a 1,024-chunk shard's index (16,388
    # bytes, five pages) and is killed before the last page (the one with
    # the CRC-32C): the new entry is stored, the old checksum too, and the
    # index fails its check. Not one chunk: the whole shard is lost to
    # every reader, B (live), C and stock zarr, with zarr's checksum
    # ValueError (loud, never wrong values). B's writes of another chunk
    # and of the same chunk read the index first and raise too, writing
    # nothing; the other shard is untouched. A write of the whole shard
    # (which reads no index) replaces it, and everyone reads it again.
    # "fsync" changes nothing here (the tear is in the page cache).
    # Journal mode repairs this case (test_processes_journal_kills, the
    # mid-apply cases).
    root, g = tmp_path / "root", BIG
    with zarr.config.set(OURS):
        store, a = _array(root, g, durability)
        spec = {"sel": [4, 8], "chunks": [1], "value": A_VALUE}
        length = g.index_nbytes
        _a_killed(root, durability, False, api=api, kill="last-page", length=length, **spec)
        b_read = _by_shard(a.__getitem__, g)
        assert b_read[0].startswith("ValueError: Stored and computed checksum do not match")
        assert set(b_read[1]) == {BEFORE}
        for sel in (g.sel(2), g.sel(1)):  # another chunk, the same chunk
            with pytest.raises(ValueError, match="checksum"):
                a[sel] = B_VALUE
        a[g.sel(g.chunks + 2)] = B_VALUE  # the other shard: written
        c = _c(root, "none", g)
        assert c["shards"][0] == b_read[0]
        assert _chunks(c["shards"][1], g) == "oob" + "o" * (g.chunks - 3)
        assert _stock(root, g)[0] == b_read[0]
        a[0 : g.shard] = B_VALUE  # the whole shard: cured
        c = _c(root, "none", g)
        store.close()
    assert _chunks(c["shards"][0], g) == "b" * g.chunks
    assert _stock(root, g) == c["shards"]
    assert _strays(root) == []


@pytest.mark.timeout(60)
def test_a_kill_between_index_pages_before_every_changed_entry_leaves_the_old_index(
    tmp_path: Path,
) -> None:
    # The control of the finding: A rewrites the last chunk's entry (in the
    # index's last page, beside the checksum) and is killed after the
    # index's first page: what it wrote there is byte for byte the old
    # index, so the shard reads as it was, and B, C and stock zarr go on.
    # A torn index needs a changed entry before the page boundary the kill
    # lands on.
    root, g = tmp_path / "root", BIG
    last = g.chunks - 1
    with zarr.config.set(OURS):
        store, a = _array(root, g, "none")
        spec = {"sel": [4 * last, 4 * last + 4], "value": A_VALUE, "length": g.index_nbytes}
        _a_killed(root, "none", False, api="array", kill="first-page", **spec)
        assert set(a[0 : g.shard].tolist()) == {BEFORE}
        a[g.sel(1)] = B_VALUE
        c = _c(root, "none", g)
        store.close()
    assert _chunks(c["shards"][0], g) == "ob" + "o" * (g.chunks - 2)
    assert _stock(root, g) == c["shards"]


@pytest.mark.timeout(60)
def test_finding_write_chunks_over_two_shards_killed_in_the_second_index_loses_that_shard_whole(
    tmp_path: Path,
) -> None:
    # README, the "none" row of "Crash safety": "an array write spanning
    # several chunks can stop between them": write_chunks of chunks 1-2 of
    # each shard, killed in the second shard's index write. The first shard
    # is A's, all new; the second is THE FINDING: unreadable as a whole,
    # not "all old", until B writes it whole.
    root, g = tmp_path / "root", BIG
    with zarr.config.set(OURS):
        store, a = _array(root, g, "none")
        chunks = [1, 2, g.chunks + 1, g.chunks + 2]
        spec = {"chunks": chunks, "value": A_VALUE, "length": g.index_nbytes, "nth": 2}
        _a_killed(root, "none", False, api="write_chunks", kill="last-page", **spec)
        c = _c(root, "none", g)
        assert _chunks(c["shards"][0], g) == "onn" + "o" * (g.chunks - 3)
        assert c["shards"][1].startswith("ValueError: Stored and computed checksum")
        assert _stock(root, g) == c["shards"]
        a[g.shard :] = B_VALUE
        c = _c(root, "none", g)
        store.close()
    assert _chunks(c["shards"][1], g) == "b" * g.chunks
    assert _stock(root, g) == c["shards"]


# ------------------------------------------ killed before a rename: as it was, a stray file


@pytest.mark.timeout(60)
@pytest.mark.parametrize("durability", ["none", "fsync"])
def test_a_compaction_killed_before_its_rename_leaves_the_shard_and_a_hidden_stray_file(
    tmp_path: Path, durability: str
) -> None:
    # A writes incompressible values into chunk 1 of a shard of 64-element
    # chunks of one value (about 20 bytes each): they fit no gap or free
    # space, so the shard is compacted, into a temporary file beside it,
    # and A is killed before the rename. README, "Compressed inner chunks"
    # (the compaction: "copied by the kernel into a temporary file beside
    # the shard, which is then renamed over it"): the shard is as it was;
    # "Stray temporary files are not keys": the file A left is hidden from
    # the wrapper's listings (a bare LocalStore lists it), and "Stray
    # temporary files of killed writers are removed when a durable store
    # opens ... once they are 60 s old": C ("none") keeps it, C' ("fsync")
    # keeps it while it is new and removes it once it is old.
    root, g = tmp_path / "root", Geometry(chunks=4, chunk=64, zstd=True)
    with zarr.config.set(OURS):
        store, a = _array(root, g, durability)
        spec = {"sel": [64, 128], "value": "random"}
        _a_killed(root, durability, False, api="array", kill="before-rename", **spec)
        (stray,) = _strays(root)
        assert stray.startswith("0.")  # beside c/0
        assert _chunks(a[0 : g.shard].tolist(), g) == "oooo"
        a[g.sel(2)] = B_VALUE
        a[g.sel(1)] = B_VALUE
        c = _c(root, "none", g)
        assert [_chunks(s, g) for s in c["shards"]] == ["obbo", "oooo"]
        assert [k for k in c["keys"] if k.startswith("c/")] == ["c/0", "c/1"]
        assert _c(root, "fsync", g)["shards"] == c["shards"]  # new: kept
        assert _strays(root) == [stray]

        async def bare_keys() -> list[str]:
            return [k async for k in LocalStore(str(root)).list_prefix("c/")]

        assert any(k.endswith(".partial") for k in asyncio.run(bare_keys()))
        old = (root / "c" / stray).stat().st_mtime - 120
        os.utime(root / "c" / stray, (old, old))
        assert _c(root, "fsync", g)["shards"] == c["shards"]
        store.close()
    assert _strays(root) == []  # old: removed by the durable store's open
    assert _stock(root, g) == c["shards"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", ["array", "write_chunks"])
def test_a_dense_layout_killed_before_its_rename_leaves_no_shard_and_the_live_writer_lays_it_out(
    tmp_path: Path, api: str
) -> None:
    # dense_shards=True: A's first write of a new shard lays it out densely
    # (the pipeline's rewrite; ShardWriter's put_cold) in a temporary file
    # and is killed before the rename. The shard stays missing (read as
    # fill), the stray file hidden; B's writes then lay it out and survive
    # in C and stock zarr.
    root, g = tmp_path / "root", DENSE
    with zarr.config.set(OURS):
        store, a = _array(root, g, "none", dense=True, fill=False)
        spec = {"sel": [g.chunk, 2 * g.chunk], "chunks": [1], "value": A_VALUE}
        _a_killed(root, "none", True, api=api, kill="before-rename", **spec)
        assert len(_strays(root)) == 1
        assert not (root / "c" / "0").exists()
        assert _chunks(a[0 : g.shard].tolist(), g) == "0000"
        a[g.sel(2)] = B_VALUE
        a[g.sel(1)] = B_VALUE
        c = _c(root, "none", g)
        store.close()
    assert [_chunks(s, g) for s in c["shards"]] == ["0bb0", "0000"]
    assert [k for k in c["keys"] if k.startswith("c/")] == ["c/0"]
    assert _stock(root, g) == c["shards"]


# ----------------------------------------------------------- a dense chunk torn in place


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", ["array", "write_chunks"])
def test_a_dense_chunk_killed_between_its_pages_is_torn_until_written_again(
    tmp_path: Path, api: str
) -> None:
    # README, the "none" row of "Crash safety": "one set_range is rarely
    # torn, but can be: the kernel stops a write for a fatal signal between
    # pages", and "an array write spanning several chunks can stop between
    # them". A writes chunks 1 and 2 of shard 0 and chunk 1 of shard 1
    # (8 KiB each, in place) and is killed after the first page of its
    # second chunk: chunk 1 new, chunk 2 torn (half new), the rest old.
    # Only that chunk: the shard (its index is never rewritten) stays
    # readable. B writes the torn chunk again and C and stock read B's.
    root, g = tmp_path / "root", DENSE
    with zarr.config.set(OURS):
        store, a = _array(root, g, "none", dense=True)
        spec = {"chunks": [1, 2, g.chunks + 1], "value": A_VALUE, "nth": 2}
        if api == "array":  # one call, chunks 1-2 of shard 0 only
            spec = {**spec, "sel": [g.chunk, 3 * g.chunk]}
        _a_killed(root, "none", True, api=api, kill="first-page", length=4 * g.chunk, **spec)
        torn = a[g.sel(2)]
        assert set(torn[: g.chunk // 2].tolist()) == {A_VALUE}  # the first page
        assert set(torn[g.chunk // 2 :].tolist()) == {BEFORE}
        assert [_chunks(s, g) for s in _by_shard(a.__getitem__, g)] == ["onto", "oooo"]
        a[g.sel(2)] = B_VALUE
        c = _c(root, "none", g)
        store.close()
    assert [_chunks(s, g) for s in c["shards"]] == ["onbo", "oooo"]
    assert _stock(root, g) == c["shards"]
