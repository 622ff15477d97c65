"""Store key and prefix validation.

A key is a ``/``-separated relative path. We refuse, for every operation
(reads included), anything that could resolve outside a LocalStore's root or
that two spellings could alias: absolute paths, ``..`` and ``.`` segments,
empty segments (``a//b``, a leading or trailing ``/``), backslashes (a path
separator on Windows), NUL, and the name of the root's lock file
(``.zarr-rangelock``, see ``locks/_oslock``), and keys too long for a file
system: more than :data:`MAX_KEY_BYTES` bytes in UTF-8 (S3's and GCS's limit
on object names, which leaves room for a root within Linux's ``PATH_MAX`` of
4096) or a segment of more than :data:`MAX_SEGMENT_BYTES` (a file name is at
most 255 bytes, and zarr's LocalStore writes a file under its name plus
``.<32 hex digits>.partial`` before renaming it). MemoryStore keys follow the
same rules, so one program behaves the same on either store.

Validation is pure, so valid keys are memoised in :data:`VALID_KEYS`: the hot
path (the same chunk keys written over and over) costs one set lookup, which
callers may do inline (``type(key) is str and key in VALID_KEYS``) before
falling back to :func:`validate_key`.
"""

from __future__ import annotations

import re

from .._errors import InvalidKeyError
from ..locks._lockfile import LOCK_FILE_NAME

#: The journal directory under a LocalStore root (``_journal``; hidden, not a key).
JOURNAL_DIR = ".zarr-rangelock-journal"

__all__ = ["MAX_KEY_BYTES", "MAX_SEGMENT_BYTES", "VALID_KEYS", "validate_key", "validate_prefix"]

#: The longest key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024
#: The longest segment of a key, in bytes of UTF-8: a file name's 255 less
#: the 41 characters (``.<uuid4 hex>.partial``) LocalStore adds while writing.
MAX_SEGMENT_BYTES = 255 - 41

#: Keys known to be valid. Only ever grows by valid keys; emptied (not
#: trimmed) when it reaches :data:`_MAX_MEMO`, which keeps it bounded at no
#: cost to a hit. ``set`` membership, ``add`` and ``clear`` are atomic under
#: the GIL, so it needs no lock.
VALID_KEYS: set[str] = set()
_MAX_MEMO = 1 << 16


TEMP_FILE = re.compile(r"\.[0-9a-f]{32}\.partial$")
"""How zarr's ``LocalStore.set`` names the temporary file it writes and then
renames over the key (``<name>.<uuid4 hex>.partial``). One left behind by a
killed writer is not a key: listings hide such names, and keys of that form
are refused, so a user key never collides with one."""


def is_temp_file(name: str) -> bool:
    """Whether the last segment of ``name`` is shaped like a LocalStore temporary file."""
    return TEMP_FILE.search(name) is not None


def _rule_broken(key: str) -> str | None:
    """The rule ``key`` breaks, or ``None`` if it is a valid key."""
    if key == "":
        return "is empty"
    if key.startswith("/"):
        return "is an absolute path"
    if "\\" in key:
        return "contains a backslash"
    if "\x00" in key:
        return "contains a NUL character"
    if key == LOCK_FILE_NAME or key.startswith(LOCK_FILE_NAME + "/"):
        return "is reserved: a LocalStore root keeps its cross-process lock file there"
    if key == JOURNAL_DIR or key.startswith(JOURNAL_DIR + "/"):
        return "is reserved: a LocalStore root keeps its write-ahead journal there"
    if is_temp_file(key):
        return (
            "ends like a temporary file of LocalStore's set (<name>.<32 hex digits>.partial), "
            "which listings hide"
        )
    for segment in key.split("/"):
        if segment == "":
            return "has an empty segment"
        if segment == "..":
            return "contains a '..' segment"
        if segment == ".":
            return "contains a '.' segment"
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        return f"is {size} bytes long in UTF-8, more than the {MAX_KEY_BYTES} a key may have"
    if size > MAX_SEGMENT_BYTES:
        for segment in key.split("/"):
            n = len(segment.encode("utf-8", "surrogatepass"))
            if n > MAX_SEGMENT_BYTES:
                return (
                    f"has a segment of {n} bytes in UTF-8, more than the {MAX_SEGMENT_BYTES} "
                    "a segment may have (a file name is at most 255 bytes, and LocalStore "
                    "adds 41 while writing it)"
                )
    return None


def _valid_key(key: str) -> bool:
    if key in VALID_KEYS:
        return True
    if _rule_broken(key) is not None:
        return False
    if len(VALID_KEYS) >= _MAX_MEMO:
        VALID_KEYS.clear()
    VALID_KEYS.add(key)
    return True


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid store key.

    Raises
    ------
    TypeError
        If ``key`` is not a ``str``.
    InvalidKeyError
        (a ``ValueError``) if it is empty, absolute, or has an empty, ``.`` or
        ``..`` segment, a backslash or a NUL, or is too long (see above).
    """
    if not isinstance(key, str):
        raise TypeError(f"store key must be a str, got {type(key).__name__}: {key!r}")
    if _valid_key(key):
        return key
    rule = _rule_broken(key)
    assert rule is not None
    raise InvalidKeyError(key, rule)


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` normalised: ``""`` or ``"/"`` (the root, as zarr passes
    it) as ``""``; else a valid key with at most one trailing ``/``, unchanged.

    Every other prefix starting with ``/`` (``"//"``, ``"/a"``) is refused:
    stock zarr's two stores read it differently (a bare LocalStore reads it
    as a path from the filesystem root), and zarr never passes one. Callers
    hand the wrapped store the returned value, never the argument.

    Raises
    ------
    TypeError, InvalidKeyError
        As :func:`validate_key`.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"store prefix must be a str, got {type(prefix).__name__}: {prefix!r}")
    if prefix == "" or prefix == "/":
        return ""
    if prefix.startswith("/"):
        raise InvalidKeyError(
            prefix, "is an absolute path (only '/' alone is accepted as a prefix, meaning the root)"
        )
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if not _valid_key(body):
        rule = _rule_broken(body)
        assert rule is not None
        raise InvalidKeyError(prefix, rule)
    return prefix
