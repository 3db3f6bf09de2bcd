"""Making writes durable: fsync of a file and of the directory that names it; and removing
scratch trees.

Both the store and the transports that write layouts and archives outside it rename complete,
synced files into place; these are the calls they share. :func:`remove_tree` removes what a
sandbox may leave unwritable (an overlay's work dir).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "fsync_path", "remove_tree", "write_atomic"]


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


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path`` (mode 0644): a temp file beside it, fsync'd, renamed over it, the
    directory fsync'd; a reader sees the old file or the whole new one, never a part."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Removes a scratch tree, making read-only directories in it writable first (a build
    step may leave some)."""

    def retry(func: Callable[..., Any], target: str, _exc: object) -> None:
        try:
            if func in (os.open, os.scandir):
                # A directory that may not be read (an overlay's work dir is mode 000).
                os.chmod(target, 0o700)
                remove_tree(Path(target))
                return
            os.chmod(os.path.dirname(target), 0o700)
            func(target)
        except FileNotFoundError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
