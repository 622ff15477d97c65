"""Temporary files a killed LocalStore ``set`` leaves behind are not keys.

Issue 11 (first part): zarr's ``LocalStore.set`` writes
``<name>.<uuid4 hex>.partial`` and renames it over the key; a SIGKILL between
the two leaves the temporary file, and a bare LocalStore lists it as a key.
Through the wrapper it never appears in ``list``, ``list_prefix``,
``list_dir`` or ``is_empty``, and a key of that shape is refused, so a user
key cannot collide with one. (Cleaning such files up when a store opens is
not done yet.)
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore, MemoryStore

from zarr_rangelock import InvalidKeyError, RangeLockedStore

pytestmark = pytest.mark.timeout(60)

STRAY = "0." + "ab" * 16 + ".partial"


async def _all(it: object) -> list[str]:
    return sorted([k async for k in it])  # type: ignore[attr-defined]


def _leave_a_stray_file(root: Path) -> Path:
    """A child writes through zarr's LocalStore.set and is SIGKILLed between the
    temporary file's write and its rename (where a real kill leaves it)."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from zarr.core.buffer import cpu
        from zarr.core.sync import sync
        from zarr.storage import LocalStore, _local
        real = os.replace
        def kill_before_rename(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)
        _local.os.replace = kill_before_rename
        store = LocalStore({str(root)!r})
        sync(store.set("c/0/0", cpu.Buffer.from_bytes(b"x" * 64)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=50, check=False)
    assert done.returncode == -signal.SIGKILL
    strays = list((root / "c" / "0").glob("0.*.partial"))
    assert len(strays) == 1, strays
    return strays[0]


def test_a_bare_local_store_lists_a_killed_writers_temporary_file(tmp_path: Path) -> None:
    """The control: stock LocalStore shows the stray file as a key."""
    stray = _leave_a_stray_file(tmp_path)
    keys = asyncio.run(_all(LocalStore(tmp_path).list()))
    assert f"c/0/{stray.name}" in keys


def test_the_wrapper_never_lists_a_killed_writers_temporary_file(tmp_path: Path) -> None:
    stray = _leave_a_stray_file(tmp_path)
    store = RangeLockedStore(LocalStore(tmp_path))
    assert asyncio.run(_all(store.list())) == []
    assert asyncio.run(_all(store.list_prefix("c/"))) == []
    assert stray.name not in asyncio.run(_all(store.list_dir("c/0")))
    assert asyncio.run(store.is_empty("c"))
    store.set_sync("c/0/1", cpu.Buffer.from_bytes(b"y"))
    assert asyncio.run(_all(store.list())) == ["c/0/1"]
    assert asyncio.run(_all(store.list_dir("c/0"))) == ["1"]


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_a_key_shaped_like_a_temporary_file_is_refused_on_both_stores(
    kind: str, tmp_path: Path
) -> None:
    store = RangeLockedStore(LocalStore(tmp_path) if kind == "local" else MemoryStore())
    with pytest.raises(InvalidKeyError, match=r"temporary file.*\.partial") as info:
        store.set_sync(f"c/0/{STRAY}", cpu.Buffer.from_bytes(b"z"))
    assert STRAY in str(info.value)
    # names that only look alike are keys
    for key in ("c/0/0.partial", "c/0/0." + "AB" * 16 + ".partial", "c/0/0.abc.partial"):
        store.set_sync(key, cpu.Buffer.from_bytes(b"z"))
        got = store.get_sync(key)
        assert got is not None and got.to_bytes() == b"z"
