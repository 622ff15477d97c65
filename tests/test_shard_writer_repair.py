"""``ShardWriter`` stores a repaired metadata document before it writes chunks,
as zarr's own array does.

zarr versions that read invalid stored metadata leniently (``zarr.core.metadata
.repair``) mark metadata whose repair moves chunks; ``AsyncArray._set_selection``
stores the repair before the first chunk is written, so that every reader
finds the chunks where the writer put them. The writer must do the same on
each of its paths (the pipeline, ``write_chunk``, ``write_chunks``, a
selection of whole chunks): same documents, same chunk keys, same values as
the plain API.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from tests._shard_helpers import OURS
from zarr_rangelock import RangeLockedStore, ShardWriter

pytestmark = pytest.mark.skipif(
    not hasattr(zarr.AsyncArray, "_store_repaired_document"),
    reason="this zarr does not repair stored metadata documents",
)

BLOCK = np.arange(32 * 32, dtype="f4").reshape(32, 32) + 1  # one inner chunk
TWO = np.concatenate([BLOCK, BLOCK + 2000])  # inner chunks (0, 0) and (1, 0)

WRITES: dict[str, Callable[[Any], None]] = {
    "writer[sel]": lambda arr: ShardWriter(arr).__setitem__((slice(0, 64), slice(0, 32)), TWO),
    "writer[chunk]": lambda arr: ShardWriter(arr).__setitem__((slice(0, 32), slice(0, 32)), BLOCK),
    "write_chunk": lambda arr: ShardWriter(arr).write_chunk((0, 0), BLOCK),
    "write_chunks": lambda arr: ShardWriter(arr).write_chunks(
        {(0, 0): BLOCK, (1, 0): BLOCK + 2000}
    ),
}
PLAIN: dict[str, tuple[tuple[slice, slice], np.ndarray[Any, Any]]] = {
    "writer[sel]": ((slice(0, 64), slice(0, 32)), TWO),
    "writer[chunk]": ((slice(0, 32), slice(0, 32)), BLOCK),
    "write_chunk": ((slice(0, 32), slice(0, 32)), BLOCK),
    "write_chunks": ((slice(0, 64), slice(0, 32)), TWO),
}


def _needs_repair(root: Path) -> zarr.Array[Any]:
    """A sharded array whose stored document is invalid in a way whose repair
    moves chunks: a chunk size of 0, read as the inner chunk size (32)."""
    zarr.create_array(
        LocalStore(root),
        shape=(128, 128),
        chunks=(32, 32),
        shards=(64, 64),
        dtype="f4",
        compressors=None,
        fill_value=0,
    )
    doc = json.loads((root / "zarr.json").read_text())
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [0, 64]
    (root / "zarr.json").write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that it reads 0 as 32
        with zarr.config.set(OURS):
            arr = zarr.open_array(RangeLockedStore(LocalStore(root)), mode="r+")
    assert arr.metadata._stored_document is not None  # marked: the repair moves chunks
    return arr


def _outcome(root: Path) -> tuple[Any, list[str], np.ndarray[Any, Any]]:
    doc = json.loads((root / "zarr.json").read_text())
    keys = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    keys = [k for k in keys if not k.startswith(".zarr-rangelock")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stored repair reads without a warning
        values = np.asarray(zarr.open_array(LocalStore(root, read_only=True), mode="r")[:])
    return doc["chunk_grid"], keys, values


@pytest.mark.parametrize("how", list(WRITES))
def test_a_writer_stores_the_repaired_document_before_its_chunks_as_the_plain_api_does(
    tmp_path: Path, how: str
) -> None:
    plain = _needs_repair(tmp_path / "plain")
    plain[PLAIN[how][0]] = PLAIN[how][1]
    ours = _needs_repair(tmp_path / "ours")
    WRITES[how](ours)
    got, expected = _outcome(tmp_path / "ours"), _outcome(tmp_path / "plain")
    assert got[0] == expected[0] == {"name": "regular", "configuration": {"chunk_shape": [32, 64]}}
    assert got[1] == expected[1]
    np.testing.assert_array_equal(got[2], expected[2])
    assert ours.metadata._stored_document is None  # stored once, not again


def test_without_the_repair_a_reader_of_the_stored_document_misses_the_chunks(
    tmp_path: Path,
) -> None:
    """The control: chunks written under the repaired metadata while the
    invalid document stays are not what a reader of the store sees."""
    arr = _needs_repair(tmp_path / "a")
    object.__setattr__(arr.metadata, "_stored_document", None)  # skip the repair
    ShardWriter(arr).write_chunk((0, 0), BLOCK)
    doc = json.loads((tmp_path / "a" / "zarr.json").read_text())
    assert doc["chunk_grid"]["configuration"]["chunk_shape"] == [0, 64]  # still invalid
