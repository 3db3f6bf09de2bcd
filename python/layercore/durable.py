"""Making writes durable: fsync of a file and of the directory that names it; and removing
scratch trees.

Both the store and the transports that write layouts and archives outside it rename complete,
synced files into place; these are the calls they share. :func:`remove_tree` removes what a
sandbox may leave unwritable (an overlay's work dir).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

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
    import tempfile  # here: a command that writes nothing this way never pays for it

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
    """Removes a scratch tree (gone already is fine), making unreadable or read-only
    directories in it writable first (an overlay's work dir is mode 000; a build step may leave
    others). Every step is relative to an open directory and no symlink is followed, so a tree
    a sandboxed command wrote cannot lead it outside; written here rather than with
    ``shutil.rmtree`` because importing shutil costs a ``layercore run --rm`` a few ms."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_entry(parent, path.name)
    finally:
        os.close(parent)


def _remove_entry(parent: int, name: str) -> None:
    """Removes ``name`` in the open directory ``parent``, with everything below it."""
    try:
        os.unlink(name, dir_fd=parent)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError as e:
        if e.errno == errno.EACCES:  # ``parent`` may not be written: make it writable, again
            os.chmod(parent, 0o700)
            _remove_entry(parent, name)
            return
        # EPERM: Linux's answer for a directory
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except PermissionError:  # a directory that may not be read
        os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
        fd = os.open(name, flags, dir_fd=parent)
    try:
        for attempt in range(_EMPTYING_ATTEMPTS):
            with os.scandir(fd) as entries:
                names = [entry.name for entry in entries]
            for child in names:
                _remove_entry(fd, child)
            try:
                os.rmdir(name, dir_fd=parent)
                return
            except OSError as e:
                # Something still wrote into it (a sandbox dying with the build that was
                # killed): empty it again.
                if e.errno != errno.ENOTEMPTY or attempt == _EMPTYING_ATTEMPTS - 1:
                    raise
    finally:
        os.close(fd)


#: How often :func:`remove_tree` empties a directory that keeps getting entries.
_EMPTYING_ATTEMPTS = 5
