"""A forked child and the lock files' descriptions it inherits from its parent.

Design note
-----------
*Forks* (the rest of the design is ``_oslock``'s). A forked child shares its
parent's open file descriptions, and an
OFD lock lasts until its description's last descriptor closes: a child that
kept a description the parent held a lock through (an idle
``multiprocessing`` worker forked while another thread wrote) would keep the
lock after the parent died (other processes waited for as long as the child
lived), and a child releasing a hold of the parent's (leaving a ``with`` block
the forking thread was in) unlocked it for the parent too. So the child
closes its idle descriptions and its presence
(:meth:`~._oslock.OsLocks._forget_inherited`)
and puts ``/dev/null`` under the number of every other descriptor of a lock
file it has but the stamps' (:func:`_deaden_held`): the parent's locks are
the parent's alone, and a handle of them released in the child closes its
number and unlocks nothing.

Every :class:`~._oslock.OsLocks` of the process is in ``_live`` (weakly)
from its creation; :func:`_after_fork_in_child`, registered with
``os.register_at_fork`` once, when this module is first imported, does both
for each of them.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._oslock import OsLocks

__all__: list[str] = []  # nothing public: ``_oslock`` adds each OsLocks to _live

_live: weakref.WeakSet[OsLocks] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Descriptions inherited from the parent are shared with it: a lock taken
    # through one would be the parent's too. Never reuse them.
    lives = list(_live)
    for locks in lives:
        locks._forget_inherited()
    _deaden_held(lives)


def _deaden_held(lives: list[OsLocks]) -> None:
    """In a forked child: let go of the descriptions of lock files that the
    parent's threads held locks through (*Forks* in the design note).

    Whatever this process has open of a lock file but its stamps is the
    parent's (the child has opened nothing yet): a held description, or one
    a thread of the parent was taking or letting go of at the fork (no list
    the child has says which). Each is replaced by ``/dev/null`` under the
    same number, which stays taken, so a handle of the parent's that this
    process releases (a ``with`` block the forking thread was in) closes it
    and unlocks nothing (:meth:`~._oslock.OsLocks._unlock`). One ``fstat``
    per open descriptor, once per fork. (Before Python 3.13 the stamps'
    mapping keeps a duplicate descriptor of the lock file, which this
    replaces too: the mapping never uses it but to close it, and it holds no
    lock.)
    """
    files = {locks.file_id: locks for locks in lives if locks.file_id is not None}
    if not files:
        return
    keep = {fd for locks in files.values() for fd in locks._stamp_fds()}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: the parent's held descriptions stay open here
        return
    devnull = -1
    try:
        for name in names:
            fd = int(name)
            if fd in keep:
                continue
            try:
                st = os.fstat(fd)
            except OSError:  # the listing's own descriptor, closed since
                continue
            locks = files.get((st.st_dev, st.st_ino))
            if locks is None:
                continue
            if devnull < 0:
                devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            os.dup2(devnull, fd, inheritable=False)
            locks._dead.add(fd)
    finally:
        if devnull >= 0:
            os.close(devnull)


os.register_at_fork(after_in_child=_after_fork_in_child)
