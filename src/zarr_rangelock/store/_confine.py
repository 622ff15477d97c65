"""Confinement of a LocalStore's keys to its root (``confine=True``).

Design note
-----------
Stock zarr's LocalStore follows symbolic links: a link inside the root makes
``get``/``set``/``delete`` (and our ``set_range``) reach files outside it, and
some users link chunk directories to other disks on purpose, so the wrapper's
default keeps that. With ``confine=True`` every key (and prefix) is first
*resolved*: its path under the root with every symbolic link followed. A key
that resolves outside the root is refused (:class:`KeyOutsideRootError`); one
that resolves inside is replaced by its resolved path relative to the root,
its *canonical key*, for the locks (in-process and OS locks alike: the OS lock
slot is a CRC of the key it is given) and for the I/O. So two keys that reach
one file through a link (``real/f`` and ``alias/f``, ``alias`` linking to
``real``) lock as one key and exclude each other. Without ``confine`` keys are
literal, as in stock zarr: such aliases do not exclude each other.

Cost: resolving a key with no link in it costs one ``lstat`` per segment (a
key through a link: an ``os.path.realpath`` of the rest); the root is
resolved once per root object. Each wrapper remembers a key's canonical key
for :data:`RECHECK_S` (1 ms), so a stream of calls on one key resolves it
about once per millisecond. Nothing here runs with ``confine=False``.

What stays racy (time of check to time of use): the path is resolved, then
used by separate system calls, and a resolution is reused for up to
:data:`RECHECK_S`. A link created or swapped inside the root in that window
by someone who does not go through a confined wrapper (wrappers never make
links) can still send an operation outside the root, and the root itself is
resolved once. Confinement guards against links that are there, not against
an adversary racing the store (that would need ``openat2`` with
``RESOLVE_BENEATH``, which Python does not offer).
"""

from __future__ import annotations

import os
import stat
import time

from zarr.storage import LocalStore

from .._errors import InvalidKeyError, KeyOutsideRootError
from ._keys import _rule_broken

__all__ = ["RECHECK_S", "Confiner", "canonical_key", "canonical_prefix", "leaves_root"]

_S_ISLNK = stat.S_ISLNK
_monotonic = time.monotonic

#: A wrapper reuses a key's resolution for this many seconds.
RECHECK_S = 0.001
#: Resolutions remembered per wrapper at most (emptied, not trimmed, when full).
_MAX_MEMO = 1 << 14


def _under(root: str) -> str:
    return root if root.endswith("/") else root + "/"


def _resolve(under: str, key: str) -> str | None:
    """``under + key`` with every symbolic link followed, or ``None`` if no
    link is on the way (``under`` is the resolved root and a ``/``)."""
    j = key.find("/")
    while True:
        step = under + (key if j < 0 else key[:j])
        try:
            mode = os.lstat(step).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None  # nothing below a missing name exists, so no link either
        if _S_ISLNK(mode):
            return os.path.realpath(under + key)
        if j < 0:
            return None
        j = key.find("/", j + 1)


def canonical_key(root: str, key: str) -> str:
    """``key`` (valid) as the path it resolves to, relative to ``root`` (resolved).

    Returns ``key`` itself when no link is on its path (the common case: one
    ``lstat`` per segment, nothing else).

    Raises
    ------
    KeyOutsideRootError
        If it resolves outside ``root`` (or to the root itself).
    InvalidKeyError
        If it resolves, through a link, to a name no key may have (the
        root's lock file, say).
    """
    under = _under(root)
    resolved = _resolve(under, key)
    if resolved is None:
        return key
    if not resolved.startswith(under) or resolved == under:
        raise KeyOutsideRootError(key, resolved, root)
    canon = resolved[len(under) :]
    if canon == key:
        return key
    rule = _rule_broken(canon)
    if rule is not None:
        raise InvalidKeyError(key, f"resolves through a symbolic link to {canon!r}, which {rule}")
    return canon


def canonical_prefix(root: str, prefix: str) -> str:
    """A validated prefix (``""`` or a key with at most one trailing ``/``) made
    canonical as :func:`canonical_key` does; ``""`` stays ``""``."""
    body = prefix.rstrip("/")
    if not body:
        return prefix
    canon = canonical_key(root, body)
    return canon + "/" if prefix.endswith("/") else canon


def leaves_root(root: str, path: str) -> bool:
    """Whether ``path`` (under ``root``) is a link that resolves outside ``root``;
    one ``lstat`` when it is no link."""
    try:
        if not _S_ISLNK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    resolved = os.path.realpath(path)
    under = _under(root)
    return not resolved.startswith(under) or resolved == under


class Confiner:
    """The key checks of one confined LocalStore wrapper: its root, resolved
    once per root object (``LocalStore.move()`` rebinds ``root``)."""

    __slots__ = ("_cached", "_memo", "_store")

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._cached: tuple[object, str] | None = None
        # key -> (canonical key, when resolved); dict get/set are atomic under the GIL
        self._memo: dict[str, tuple[str, float]] = {}

    def root(self) -> str:
        """The root, symbolic links resolved."""
        root = self._store.root
        cached = self._cached
        if cached is None or cached[0] is not root:
            self._memo = {}
            cached = self._cached = (root, os.path.realpath(root))
        return cached[1]

    def key(self, key: str) -> str:
        """:func:`canonical_key` of a valid ``key``, reused for :data:`RECHECK_S`."""
        root = self.root()
        memo = self._memo
        now = _monotonic()
        hit = memo.get(key)
        if hit is not None and now - hit[1] < RECHECK_S:
            return hit[0]
        canon = canonical_key(root, key)  # raises for a key out of the root: never memoised
        if len(memo) >= _MAX_MEMO:
            memo.clear()
        memo[key] = (canon, now)
        return canon

    def prefix(self, prefix: str) -> str:
        """:func:`canonical_prefix` of a validated ``prefix``."""
        return canonical_prefix(self.root(), prefix)

    def keeps(self, base: str, name: str) -> bool:
        """Whether a listing of directory ``base`` may show ``name`` (it is not a
        link out of the root)."""
        root = self.root()
        return not leaves_root(root, f"{root}/{base}/{name}" if base else f"{root}/{name}")
