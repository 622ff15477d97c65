"""The README's many-processes example runs as shipped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_the_many_processes_example_writes_every_chunk(tmp_path: Path) -> None:
    target = tmp_path / "data.zarr"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "many_processes.py"), str(target)],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"ok: {target}"


@pytest.mark.timeout(120)
def test_the_lock_demo_example_loses_no_increment_and_leaves_no_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lock_demo.py")],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "counter = 8000 " in done.stdout
    assert "every slice holds its writer's last value: True" in done.stdout
    assert "keys left 0" in done.stdout


def _readme_block(marker: str) -> str:
    """The README's one ```python block that contains ``marker``."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    assert len(blocks) == 1, (marker, len(blocks))
    return blocks[0]


# Stock zarr reads back what the thread-pool example wrote (the promise of its
# last comment): every 128 x 128 tile holds its number.
_STOCK_READS_THE_TILES = """
import zarr as _zarr
from zarr.storage import LocalStore as _LocalStore

_zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"})
_got = _zarr.open_array(_LocalStore("data.zarr"), mode="r")[:]
_want = np.arange(64 * 64, dtype="f4").reshape(64, 64).repeat(128, 0).repeat(128, 1)
assert (_got == _want).all()
print("stock zarr reads every tile")
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "markers",
    [
        ["mgr = RangeLockManager()"],
        ["assert isinstance(store, SupportsSetRange)", "h.set_range(", "h.rewrite("],
        ["with ThreadPoolExecutor(8) as pool:"],
    ],
    ids=["lock manager", "store, locked_sync, rewrite", "thread pool into shared shards"],
)
def test_the_readmes_python_examples_run_as_written(markers: list[str], tmp_path: Path) -> None:
    """The README's self-contained examples (a block and those that say they
    continue it), run in a fresh directory; their own asserts are the check."""
    script = "\n".join(_readme_block(m) for m in markers)
    if "ThreadPoolExecutor" in script:
        script += _STOCK_READS_THE_TILES
    (tmp_path / "example.py").write_text(script)
    done = subprocess.run(
        [sys.executable, "example.py"], capture_output=True, text=True, timeout=160, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if "ThreadPoolExecutor" in script:
        assert "stock zarr reads every tile" in done.stdout
