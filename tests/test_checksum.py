"""The content checksum of build sources: what a COPY's cache key covers, and its stat cache.
Each rule a cache relies on: a change to content (even with size and mtime kept), mode, owner,
xattr or name changes the digest; a touched mtime does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layercore.build.checksum import checksum_sources, walk_sources


def tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.txt").write_text("alpha\n")
    (root / "pkg" / "sub" / "b.txt").write_text("beta\n")
    os.symlink("a.txt", root / "pkg" / "link")
    return root / "pkg"


def digest(src: Path, cache: Path | None = None) -> str:
    return checksum_sources(list(walk_sources(src)), cache=cache).digest


def test_what_the_checksum_covers(tmp_path: Path) -> None:
    src = tree(tmp_path)
    cache = tmp_path / "stat-cache"
    base = digest(src, cache)
    a = src / "a.txt"
    # A touched mtime is no change.
    os.utime(a, (1, 1))
    assert digest(src, cache) == base
    # Same size, mtime put back: seen (the ctime moved, so the stat cache re-hashes it).
    st = a.stat()
    a.write_text("ALPHA\n")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = digest(src, cache)
    assert changed != base
    a.write_text("alpha\n")
    assert digest(src, cache) == base
    # Mode, owner, xattr, name, symlink target: each is a change.
    os.chmod(a, 0o600)
    assert digest(src, cache) != base
    os.chmod(a, 0o644)
    assert digest(src, cache) == base
    if os.geteuid() == 0:
        os.chown(a, 7, 8)
        assert digest(src, cache) != base
        os.chown(a, 0, 0)
        assert digest(src, cache) == base
    os.setxattr(a, "user.note", b"x")
    assert digest(src, cache) != base
    os.removexattr(a, "user.note")
    assert digest(src, cache) == base
    # Many xattrs (their names overflow a first small buffer): a change to the last one
    # is still seen.
    names = [f"user.{'n' * 40}{i:03d}" for i in range(40)]
    for name in names:
        os.setxattr(a, name, b"v")
    many = digest(src, cache)
    os.setxattr(a, names[-1], b"w")
    assert digest(src, cache) != many
    for name in names:
        os.removexattr(a, name)
    assert digest(src, cache) == base
    (src / "sub" / "b.txt").rename(src / "sub" / "c.txt")
    assert digest(src, cache) != base
    (src / "sub" / "c.txt").rename(src / "sub" / "b.txt")
    os.unlink(src / "link")
    os.symlink("sub/b.txt", src / "link")
    assert digest(src, cache) != base


def test_the_stat_cache_spares_the_reads(tmp_path: Path) -> None:
    src = tree(tmp_path)
    cache = tmp_path / "stat-cache"
    cold = checksum_sources(list(walk_sources(src)), cache=cache)
    assert (cold.hashed, cold.cached, cold.hashed_bytes) == (2, 0, 11)
    warm = checksum_sources(list(walk_sources(src)), cache=cache)
    assert (warm.hashed, warm.cached) == (0, 2) and warm.digest == cold.digest
    names = [(r.name, r.kind) for r in warm.records]
    assert names == [
        ("a.txt", "file"), ("link", "symlink"), ("sub", "dir"), ("sub/b.txt", "file")
    ]  # fmt: skip
    assert warm.records[0].content == (
        "sha256:" + __import__("hashlib").sha256(b"alpha\n").hexdigest()
    )
    # Without a cache file everything is hashed; a damaged one is ignored and replaced.
    assert checksum_sources(list(walk_sources(src))).hashed == 2
    cache.write_bytes(b"garbage")
    assert checksum_sources(list(walk_sources(src)), cache=cache).hashed == 2
    assert checksum_sources(list(walk_sources(src)), cache=cache).hashed == 0


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="gone"):
        checksum_sources([(tmp_path / "gone", "gone")])
    with pytest.raises(ValueError, match="workers"):
        checksum_sources([], workers=0)
