"""Counting the files a LocalStore wrapper opens (its descriptor cache)."""

from __future__ import annotations

from typing import Any

import pytest

from zarr_rangelock.store import _fdcache


def files_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on (until the test ends), the path of every file that a
    wrapper's descriptor cache opens, in order, appended to the list
    returned."""
    opened: list[str] = []
    real = _fdcache.FdCache.open

    def counting(self: _fdcache.FdCache, path: str, *args: Any) -> int:
        opened.append(path)
        return real(self, path, *args)

    monkeypatch.setattr(_fdcache.FdCache, "open", counting)
    return opened
