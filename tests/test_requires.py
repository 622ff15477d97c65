"""The package refuses, at import, a zarr older than the one it needs, naming both."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import zarr

from tests._processes import python_output
from zarr_rangelock._requires import ZARR_MIN, check_zarr

NEED = ".".join(map(str, ZARR_MIN))


@pytest.mark.parametrize("version", ["3.2.1", "3.3.0", "3.4.0", "3.4.1", "2.18.7"])
def test_an_older_zarr_is_refused_with_both_versions_named(version: str) -> None:
    with pytest.raises(ImportError) as raised:
        check_zarr(version)
    message = str(raised.value)
    assert f"zarr >= {NEED}" in message and f"has zarr {version}" in message


@pytest.mark.parametrize(
    "version", [NEED, "3.4.3", "3.5", "4.0.0", f"{NEED}rc1", f"{NEED}.dev5+g1234", "unknown"]
)
def test_the_needed_zarr_newer_ones_and_unparseable_versions_pass(version: str) -> None:
    check_zarr(version)


def test_the_installed_zarr_passes() -> None:
    check_zarr(zarr.__version__)


@pytest.mark.timeout(60)
def test_importing_the_package_under_an_older_zarr_raises_the_check_first() -> None:
    # In a fresh interpreter whose zarr says it is 3.3.0: the import fails
    # with the check's message, not with what a missing zarr internal raises.
    code = (
        "import zarr; zarr.__version__ = '3.3.0'\n"
        "try:\n"
        "    import zarr_rangelock\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = python_output(code)
    assert out.startswith("ImportError zarr-rangelock needs zarr >=") and "has zarr 3.3.0" in out


def test_the_floor_is_the_one_pyproject_declares() -> None:
    # pip keeps to pyproject's floor, the import check to ZARR_MIN: one number.
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (zarr_dep,) = [d for d in deps if re.match(r"zarr\b", d)]
    assert zarr_dep == f"zarr>={NEED}"
