"""The zarr this package needs, checked when the package is imported.

The package works inside zarr's codec pipeline and calls zarr's internals,
some of which changed within zarr 3.4: under 3.2 it does not import, under
3.3 writes fail (a private method of the sharding codec it calls is not
there), and under 3.4.0 and 3.4.1 some writes do not match what that zarr
itself writes. ``pip`` keeps to the floor in ``pyproject.toml``; an
environment that does not (``--no-deps``, an older zarr installed over it)
gets this error at import, naming both versions, instead of one of those.
"""

from __future__ import annotations

import re

import zarr

__all__ = ["ZARR_MIN", "check_zarr"]

#: The oldest zarr release the package is tested with (``pyproject.toml`` says the same).
ZARR_MIN = (3, 4, 2)


def check_zarr(version: str) -> None:
    """Raise ``ImportError`` if zarr ``version`` is older than :data:`ZARR_MIN`.

    Only the release numbers at the start count (``3.4.2rc1`` and
    ``3.4.2.dev5+g1234`` pass as 3.4.2); a version string without them is
    let through (nothing can be said of it)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        return
    found = tuple(int(n or 0) for n in m.groups())
    if found < ZARR_MIN:
        need = ".".join(map(str, ZARR_MIN))
        raise ImportError(
            f"zarr-rangelock needs zarr >= {need} (it works inside zarr's codec pipeline, "
            f"with zarr's internals as they are since {need}); this environment has zarr "
            f"{version}: pip install 'zarr>={need}'"
        )


check_zarr(zarr.__version__)
