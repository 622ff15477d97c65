"""A replay killed after it changed a key, before it stamped it, leaves no other
process trusting what it cached of the key.

A writer stamps a key anew before it replaces the key's file as well as after
(``LocalBackend.replacing``, README "A writer killed mid-change"): a process
that cached the key's descriptor or index trusts it only under the stamp it
saw. A replay of a dead process's journal changes keys too (a record's
whole values are renamed over them, its ranges written in place); killed
between those changes and the stamps after them (``forget``), it left the
old stamp on a new file, and a writer of another process wrote into the old
file, its descriptor still cached: the write was lost.

Here the replaying process is a subprocess that SIGKILLs itself where the
replay would stamp the keys after applying a record (``forget``, patched in
that process only). This process holds a cached descriptor of the key and
writes into it afterwards, its revalidation delay made long (the window of
``FD_REVALIDATE_S``, 10 ms, that a writer of another process has in a run,
made deterministic). The control keeps the replay from stamping before
(``replacing`` patched out in the subprocess): the write goes into the old
file, and the new one does not have it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from zarr.core.buffer import cpu
from zarr.storage import LocalStore

from tests._journal_records import dead_journal, record
from zarr_rangelock import RangeLockedStore
from zarr_rangelock.store import _backends

pytestmark = pytest.mark.timeout(60)

B = cpu.Buffer.from_bytes
OLD, NEW = b"o" * 64, b"N" * 64

_REPLAY_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from zarr.storage import LocalStore
    from zarr_rangelock import RangeLockedStore
    from zarr_rangelock.store import _backends
    root, control = sys.argv[1], sys.argv[2] == "control"
    if control:  # no stamp before the replay changes a key
        _backends.LocalBackend.replacing = lambda self, key: None
    def die(self, key):  # where the replay stamps the keys it changed
        os.kill(os.getpid(), signal.SIGKILL)
    _backends.LocalBackend.forget = die
    RangeLockedStore(LocalStore(root), durability="journal")
    print("the replay never reached forget")
    """
)


@pytest.mark.parametrize("control", [False, True], ids=["stamped before", "control"])
def test_a_write_after_a_replay_killed_before_its_stamps_lands_in_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, control: bool
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "k").write_bytes(OLD)
    monkeypatch.setattr(_backends, "FD_REVALIDATE_S", 3600.0)
    store = RangeLockedStore(LocalStore(root), durability="fsync")
    store.set_range_sync("k", B(b"a"), 0)  # its descriptor of k, cached
    # A dead process's record: the whole value of k (renamed over it on replay).
    dead_journal(root, record([(b"S", "k", 0, NEW)]))
    done = subprocess.run(
        [sys.executable, "-c", _REPLAY_AND_DIE, str(root), "control" if control else "-"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)
    assert (root / "k").read_bytes() == NEW  # the replay renamed the new value over k
    store.set_range_sync("k", B(b"Z"), 1)
    got = (root / "k").read_bytes()
    if control:
        assert got == NEW, "the write went into the new file: the control shows no loss"
    else:
        assert got == b"N" + b"Z" + NEW[2:]
