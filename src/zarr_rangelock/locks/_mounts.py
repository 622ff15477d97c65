"""Which filesystem a path is on (from ``/proc/self/mountinfo``).

``_oslock`` warns when a root is on a network or cluster filesystem
(:data:`NETWORK_FILESYSTEMS`: its locks and stamps cover the processes of one
machine only). Where an overwrite allocates (:func:`overwrites_allocate`: a
copy-on-write filesystem, or one whose type is unknown) a store through a
shared mapping that meets a full disk is ``SIGBUS`` (the kernel's
``page_mkwrite`` cannot reserve the block; however the file's holes were
filled beforehand), where ``pwrite`` raises ``ENOSPC``: so the store's
``map_writes`` maps no file there (``store/_backends``), and the lock file's
change stamps are written with ``pwrite`` there (``_lockfile``). Both ask
here.
"""

from __future__ import annotations

import os

__all__ = [
    "COPY_ON_WRITE_FILESYSTEMS",
    "NETWORK_FILESYSTEMS",
    "filesystem_type",
    "overwrites_allocate",
]


#: Filesystem types whose files other machines can open too (prefixes of the
#: type /proc/self/mountinfo gives: "nfs4", "fuse.sshfs", ...).
NETWORK_FILESYSTEMS = (
    "nfs",
    "cifs",
    "smb",
    "lustre",
    "gpfs",
    "ceph",
    "glusterfs",
    "beegfs",
    "9p",
    "afs",
    "fuse",
    "panfs",
    "pvfs",
    "orangefs",
    "wekafs",
)


#: File systems that copy on write (by the type /proc/self/mountinfo gives):
#: every overwrite there allocates, so a store into a mapping may meet a full
#: disk (SIGBUS) wherever it lands.
COPY_ON_WRITE_FILESYSTEMS = ("btrfs", "zfs", "bcachefs")


def overwrites_allocate(fstype: str | None) -> bool:
    """Whether an overwrite of a file's allocated bytes may need a new block
    on a filesystem of ``fstype`` (a :func:`filesystem_type`): on a
    copy-on-write one, and where the type is unknown (None: no
    ``/proc/self/mountinfo``, another OS, whose own may copy on write)."""
    return fstype is None or fstype in COPY_ON_WRITE_FILESYSTEMS


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem ``path`` is on (from /proc/self/mountinfo), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = fields[4].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type
