"""The content checksum of the sources a ``COPY`` or ``ADD`` selects: what its cache key
covers.

Each source's record holds its name (as the step places it), type, permission bits, uid, gid,
size, symlink target, ``security.capability`` and ``user.``/``trusted.`` xattrs, and a regular
file's SHA-256; **not its mtime**, so a touched file keeps its record. The Rust core hashes on
every core, and a stat cache file remembers each content digest by (device, inode) for as long
as the file's size, mtime and ctime (nanoseconds) are unchanged: an edit that keeps the size
and puts the mtime back still moves the ctime, and is hashed again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from layercore import _core
from layercore.image import sha256_digest

__all__ = ["SourceChecksum", "SourceRecord", "checksum_sources", "walk_sources"]


@dataclass(frozen=True)
class SourceRecord:
    """One selected source, as its checksum covers it."""

    name: str
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    link: bytes
    xattrs: dict[str, bytes]
    content: str | None  # ``sha256:<hex>`` of a regular file
    canonical: str  # the record as one line of text


@dataclass(frozen=True)
class SourceChecksum:
    """The records of a step's sources, in order, and their digest (``sha256:`` of the
    canonical lines): equal digests, equal sources."""

    digest: str
    records: list[SourceRecord]
    hashed: int  # contents read and hashed
    cached: int  # contents the stat cache gave
    hashed_bytes: int


def checksum_sources(
    sources: Sequence[tuple[str | os.PathLike[str], str]],
    *,
    cache: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> SourceChecksum:
    """The checksum of ``sources``, each ``(path on disk, name in the step)``, in that order;
    ``cache`` is the stat cache file (read, and rewritten atomically when something was
    hashed). A source that is missing or unreadable raises an error naming it."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    rows, stats = _core.checksum_sources(
        [(os.fspath(p), name) for p, name in sources],
        cache=None if cache is None else os.fspath(cache),
        workers=workers,
    )
    records = [SourceRecord(**row) for row in rows]  # type: ignore[arg-type]
    digest = sha256_digest("\n".join(r.canonical for r in records).encode())
    return SourceChecksum(
        digest, records, int(stats["hashed"]), int(stats["cached"]), int(stats["hashed_bytes"])
    )


def walk_sources(root: str | os.PathLike[str]) -> Iterator[tuple[Path, str]]:
    """Every entry below the directory ``root``, ``(path, name relative to root)``, in sorted
    order, not following symlinks: the sources of ``COPY root/ dest``."""
    base = Path(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        here = Path(dirpath)
        rel = here.relative_to(base).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in sorted([*dirnames, *filenames]):
            yield here / name, prefix + name
