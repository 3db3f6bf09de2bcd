"""The content checksum of the sources a ``COPY`` or ``ADD`` selects: what its cache key
covers.

Each source's record holds its name (as the step places it), type, permission bits, uid, gid,
size, symlink target, ``security.capability`` and ``user.``/``trusted.`` xattrs, and a regular
file's SHA-256; **not its mtime**, so a touched file keeps its record. The Rust core walks the
trees, reads and hashes on every core and computes the digest; the records reach Python only
when asked for (:attr:`SourceChecksum.records`: a cache miss's explanation). A stat cache file
remembers what each entry's record needs beyond its ``lstat`` (content digest, symlink target,
xattrs) by (device, inode), for as long as its mode, size, mtime and ctime (nanoseconds) are
unchanged: an edit that keeps the size and puts the mtime back still moves the ctime, and is
read again. Unchanged, an entry costs one ``lstat``.

This module imports only ``os`` and the Rust core, so a tool that checksums a context starts
quickly.
"""

from __future__ import annotations

import os

from layercore import _core

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

__all__ = ["SourceChecksum", "SourceRecord", "SourceTree", "checksum_sources", "walk_sources"]


class SourceRecord:
    """One selected source, as its checksum covers it."""

    __slots__ = (
        "canonical", "content", "gid", "kind", "link", "mode", "name", "size", "uid", "xattrs"
    )  # fmt: skip

    name: str
    kind: str  # file, dir, symlink, fifo, char, block or socket
    mode: int
    uid: int
    gid: int
    size: int
    link: bytes
    xattrs: dict[str, bytes]
    content: str | None  # ``sha256:<hex>`` of a regular file
    canonical: str  # the record as one line of text

    def __init__(self, **fields: object) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SourceRecord is read-only: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceRecord) and self.canonical == other.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)

    def __repr__(self) -> str:
        return f"SourceRecord({self.canonical!r})"


class SourceTree:
    """Everything below the directory ``path``, each entry named ``name/<its path below>``
    (just its path below when ``name`` is empty); ``skip(path below, is_dir)`` leaves an entry
    out, and a skipped directory's contents with it. Symlinks are not followed."""

    __slots__ = ("name", "path", "skip")

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str = "",
        skip: Callable[[str, bool], bool] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.name = name
        self.skip = skip


class SourceChecksum:
    """The checksum of a step's sources: their digest (``sha256:`` of the canonical lines, in
    name order: equal digests, equal sources), how many contents were hashed and how many the
    stat cache gave, and the records (built on first use)."""

    __slots__ = ("_checksum", "_records")

    def __init__(self, checksum: _core.Checksum) -> None:
        self._checksum = checksum
        self._records: list[SourceRecord] | None = None

    @property
    def digest(self) -> str:
        return self._checksum.digest

    @property
    def hashed(self) -> int:
        """Contents read and hashed."""
        return self._checksum.hashed

    @property
    def cached(self) -> int:
        """Contents the stat cache gave."""
        return self._checksum.cached

    @property
    def hashed_bytes(self) -> int:
        return self._checksum.hashed_bytes

    @property
    def records(self) -> list[SourceRecord]:
        if self._records is None:
            self._records = [SourceRecord(**row) for row in self._checksum.records()]
        return self._records

    def __len__(self) -> int:
        return len(self._checksum)

    def __repr__(self) -> str:
        return f"SourceChecksum({self.digest!r}, {len(self)} records)"


def checksum_sources(
    sources: Sequence[tuple[str | os.PathLike[str], str] | SourceTree],
    *,
    cache: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> SourceChecksum:
    """The checksum of ``sources``: each ``(path on disk, name in the step)`` or a
    :class:`SourceTree`; records are in name order. ``cache`` is the stat cache file (read,
    and rewritten atomically when something was read afresh). A source that is missing or
    unreadable raises an error naming it; an exception a tree's ``skip`` raises goes through."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    items = [
        (s.path, os.fsencode(s.name), True, s.skip)
        if isinstance(s, SourceTree)
        else (os.fspath(s[0]), os.fsencode(s[1]), False, None)
        for s in sources
    ]
    return SourceChecksum(
        _core.checksum_sources(
            items, cache=None if cache is None else os.fspath(cache), workers=workers
        )
    )


def walk_sources(
    root: str | os.PathLike[str], skip: Callable[[str, bool], bool] | None = None
) -> Iterator[tuple[Path, str]]:
    """Every entry below the directory ``root``, ``(path, name relative to root)``, in name
    order (a directory before what it holds), not following symlinks; ``skip(name, is_dir)``
    leaves an entry out (a directory with its contents): the sources of ``COPY root/ dest``."""
    from pathlib import Path

    base = Path(root)
    for name in _core.walk_tree(os.fspath(root), skip):
        yield base / name, name
