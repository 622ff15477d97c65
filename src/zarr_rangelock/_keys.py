"""Store key and prefix validation.

A key is a ``/``-separated relative path. We refuse, for every operation
(reads included), anything that could resolve outside a LocalStore's root or
that two spellings could alias: absolute paths, ``..`` and ``.`` segments,
empty segments (``a//b``, a leading or trailing ``/``), backslashes (a path
separator on Windows) and NUL. MemoryStore keys follow the same rule, so one
program behaves the same on either store.

Validation is pure, so valid keys are memoised: the hot path (the same chunk
keys written over and over) costs one dict lookup.
"""

from __future__ import annotations

from functools import lru_cache

from ._errors import InvalidKeyError

__all__ = ["validate_key", "validate_prefix"]


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
    for segment in key.split("/"):
        if segment == "":
            return "has an empty segment"
        if segment == "..":
            return "contains a '..' segment"
        if segment == ".":
            return "contains a '.' segment"
    return None


@lru_cache(maxsize=1 << 16)
def _valid_key(key: str) -> bool:
    return _rule_broken(key) is None


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid store key.

    Raises
    ------
    TypeError
        If ``key`` is not a ``str``.
    InvalidKeyError
        (a ``ValueError``) if it is empty, absolute, or has an empty, ``.`` or
        ``..`` segment, a backslash or a NUL.
    """
    if not isinstance(key, str):
        raise TypeError(f"store key must be a str, got {type(key).__name__}: {key!r}")
    if _valid_key(key):
        return key
    rule = _rule_broken(key)
    assert rule is not None
    raise InvalidKeyError(key, rule)


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is ``""`` or a valid key with at most one trailing ``/``.

    Raises
    ------
    TypeError, InvalidKeyError
        As :func:`validate_key`.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"store prefix must be a str, got {type(prefix).__name__}: {prefix!r}")
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if body == "":
        raise InvalidKeyError(prefix, "is an absolute path")
    if not _valid_key(body):
        rule = _rule_broken(body)
        assert rule is not None
        raise InvalidKeyError(prefix, rule)
    return prefix
