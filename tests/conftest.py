"""Fixtures shared by several test modules."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from zarr_rangelock import JournalWarning


@pytest.fixture
def no_journal_warning() -> Iterator[None]:
    """A ``JournalWarning`` in the test is an error (a replay that should find
    nothing wrong)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalWarning)
        yield
