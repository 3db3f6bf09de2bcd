"""Making writes durable: fsync of a file and of the directory that names it.

Both the store and the transports that write layouts and archives outside it rename complete,
synced files into place; these are the two calls they share.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "fsync_path"]


def fsync_dir(path: Path) -> None:
    """Flushes the directory ``path``, so a rename into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flushes the file ``path``'s bytes to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
