"""Which filesystem a path is on (from ``/proc/self/mountinfo``).

``_oslock`` warns when a root is on a network or cluster filesystem
(:data:`NETWORK_FILESYSTEMS`: its locks and stamps cover the processes of one
machine only), and the store's ``map_writes`` maps no file on a copy-on-write
filesystem (``store/_backends``); both ask here.
"""

from __future__ import annotations

import os

__all__ = ["NETWORK_FILESYSTEMS", "filesystem_type"]


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
