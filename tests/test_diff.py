"""Changeset layers: from_diff (two trees) and from_overlay_upper (an overlayfs upper dir).

Every scenario checks the exact entry list of the layer (names, kinds, order) and that applying
the layer onto a copy of ``lower`` gives ``upper``. The apply here is a small independent
implementation of the OCI rules (whiteouts and opaque markers hide lower content only, then the
layer's entries are extracted; any non-dir-over-dir case unlinks and recreates; directory
attributes are set after their contents), so that the diff is checked against the spec rather
than against the engine's own reader.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layercore import Layer
from layercore.diff import CompareMode, from_diff, from_overlay_upper
from layercore.errors import LayerWarning, SourceNotFoundError, UnsupportedEntryError

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (devices, trusted.* xattrs)")

T0 = 1_600_000_000  # mtime of everything in the lower trees
T1 = 1_650_000_000  # a later mtime for modifications


# --- building trees ----------------------------------------------------------------------------


def put(
    root: Path, rel: str, data: bytes | str = b"", *, mode: int = 0o644, mtime: int = T0
) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        remove(p)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(p, mode)
    os.utime(p, (mtime, mtime))
    return p


def mkdir(root: Path, rel: str, mode: int = 0o755) -> Path:
    p = root / rel
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, mode)
    return p


def symlink(root: Path, rel: str, target: str, mtime: int = T0) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)
    os.utime(p, (mtime, mtime), follow_symlinks=False)
    return p


def freeze(root: Path, mtime: int = T0) -> None:
    """Gives every directory below ``root`` (and root) the same whole-second mtime."""
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        os.utime(dirpath, (mtime, mtime))


def copy_tree(src: Path, dst: Path) -> Path:
    """``cp -a``: keeps modes, owners, mtimes (ns), xattrs and hardlinks."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def remove(p: Path) -> None:
    if p.is_symlink():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


# --- an independent OCI apply ------------------------------------------------------------------


def apply_layer(layer: Path, root: Path) -> None:
    """Extracts ``layer`` onto ``root`` with OCI whiteout semantics (image-spec layer.md)."""
    with tarfile.open(layer, "r:*", encoding="utf-8", errors="surrogateescape") as tar:
        members = tar.getmembers()
        # Whiteouts and opaque markers hide what lower layers have, whatever their position.
        for m in members:
            parent, _, base = m.name.rstrip("/").rpartition("/")
            if base == ".wh..wh..opq":
                d = root / parent
                if d.is_dir() and not d.is_symlink():
                    for child in d.iterdir():
                        remove(child)
            elif base.startswith(".wh."):
                assert base != ".wh.", "bare whiteout"
                remove(root / parent / base[len(".wh.") :])
        dirs: list[tuple[Path, tarfile.TarInfo]] = []
        for m in members:
            name = m.name.rstrip("/")
            if name.rpartition("/")[2].startswith(".wh."):
                continue
            dest = root / name
            if m.isdir():
                if not (dest.is_dir() and not dest.is_symlink()):
                    remove(dest)
                    dest.mkdir()
                dirs.append((dest, m))
                continue
            remove(dest)
            if m.isreg():
                src = tar.extractfile(m)
                assert src is not None
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            elif m.issym():
                os.symlink(m.linkname, dest)
            elif m.islnk():
                os.link(root / m.linkname, dest)
            elif m.isfifo():
                os.mkfifo(dest)
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(dest, m.mode | kind, os.makedev(m.devmajor, m.devminor))
            else:
                raise AssertionError(f"unexpected member {m.name} type {m.type!r}")
            set_attrs(dest, m)
        for dest, m in reversed(dirs):
            set_attrs(dest, m)


def set_attrs(dest: Path, m: tarfile.TarInfo) -> None:
    if IS_ROOT:
        os.lchown(dest, m.uid, m.gid)
    if not m.issym():
        os.chmod(dest, m.mode)
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            raw = value.encode("utf-8", "surrogateescape")
            os.setxattr(dest, key[len("SCHILY.xattr.") :], raw, follow_symlinks=False)
    os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)


# --- comparing trees ---------------------------------------------------------------------------

Snapshot = tuple[dict[str, tuple[object, ...]], list[tuple[str, ...]]]


def snapshot(root: Path, *, mtimes: bool = True) -> Snapshot:
    """Every entry's type, mode, owner, body/target/device, whole-second mtime and xattrs, plus
    the hardlink groups."""
    entries: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            body: object = None
            if stat.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    body = hashlib.sha256(f.read()).hexdigest()
                inodes[(s.st_dev, s.st_ino)].append(rel)
            elif stat.S_ISLNK(s.st_mode):
                body = os.readlink(p)
            elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
                body = (os.major(s.st_rdev), os.minor(s.st_rdev))
            xattrs = {
                k: os.getxattr(p, k, follow_symlinks=False)
                for k in os.listxattr(p, follow_symlinks=False)
                if k != "security.selinux"
            }
            entries[rel] = (
                stat.S_IFMT(s.st_mode),
                stat.S_IMODE(s.st_mode),
                s.st_uid,
                s.st_gid,
                body,
                s.st_mtime_ns // 10**9 if mtimes else None,
                xattrs,
            )
    links = sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1)
    return entries, links


def listing(layer: Layer) -> list[tuple[str, str]]:
    return [(e.path, e.kind) for e in layer.entries()]


def diff(
    tmp: Path,
    lower: Path,
    upper: Path,
    *,
    compare: CompareMode = "metadata",
    check_mtimes: bool = True,
    **options: object,
) -> Layer:
    """Diffs, then checks that the layer applied onto a copy of ``lower`` gives ``upper``."""
    out = tmp / f"layer-{len(list(tmp.glob('layer-*')))}"
    layer = from_diff(lower, upper, out, compression=None, compare=compare, **options)  # type: ignore[arg-type]
    applied = copy_tree(lower, tmp / f"applied-{out.name}")
    apply_layer(layer.path, applied)
    assert snapshot(applied, mtimes=check_mtimes) == snapshot(upper, mtimes=check_mtimes)
    return layer


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """A small lower tree; the test mutates ``upper`` after calling ``make_upper``."""
    lower = tmp_path / "lower"
    put(lower, "etc/passwd", "root:x:0:0\n")
    put(lower, "etc/hosts", "127.0.0.1 localhost\n")
    put(lower, "usr/bin/tool", b"\x7fELF" + bytes(range(256)) * 40, mode=0o755)
    mkdir(lower, "usr", 0o755)
    put(lower, "var/log/keep", "k\n")
    freeze(lower)
    return lower, tmp_path / "upper"


def make_upper(lower: Path) -> Path:
    return copy_tree(lower, lower.parent / "upper")


# --- scenarios ---------------------------------------------------------------------------------


def test_identical_trees_give_an_empty_layer(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    assert listing(diff(tmp_path, lower, upper)) == []


def test_an_added_file_comes_with_its_parent(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    put(upper, "etc/motd", "hi\n", mtime=T1)
    assert listing(diff(tmp_path, lower, upper)) == [("etc", "dir"), ("etc/motd", "file")]


def test_modified_content_writes_the_whole_file(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    put(upper, "etc/hosts", "10.0.0.1 other\n", mtime=T1)
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [("etc", "dir"), ("etc/hosts", "file")]
    with tarfile.open(layer.path) as tar:
        f = tar.extractfile("etc/hosts")
        assert f is not None and f.read() == b"10.0.0.1 other\n"


def test_a_mode_change_alone_is_a_change(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    os.chmod(upper / "etc/passwd", 0o600)
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [("etc", "dir"), ("etc/passwd", "file")]
    assert [e.mode for e in layer.entries()] == [0o755, 0o600]


def test_an_xattr_change_alone_is_a_change(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    os.setxattr(upper / "usr/bin/tool", "user.note", b"v2")
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [("usr", "dir"), ("usr/bin", "dir"), ("usr/bin/tool", "file")]
    assert list(layer.entries())[-1].xattrs == {"user.note": b"v2"}


def test_an_mtime_change_counts_for_metadata_but_not_for_content(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    os.utime(upper / "etc/hosts", (T1, T1))
    os.utime(upper / "etc", (T1, T1))
    assert listing(diff(tmp_path, lower, upper, compare="metadata")) == [
        ("etc", "dir"),
        ("etc/hosts", "file"),
    ]
    content = diff(tmp_path, lower, upper, compare="content", check_mtimes=False)
    assert listing(content) == []


def test_content_compare_sees_a_rewrite_that_kept_size_and_mtime(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    put(upper, "etc/hosts", "127.0.0.2 localhost\n", mtime=T0)  # same size, same mtime
    os.utime(upper / "etc", (T0, T0))
    # Metadata cannot see it (as with every metadata-based differ) ...
    layer = from_diff(lower, upper, tmp_path / "meta", compression=None)
    assert listing(layer) == []
    # ... content can.
    assert listing(diff(tmp_path, lower, upper, compare="content")) == [
        ("etc", "dir"),
        ("etc/hosts", "file"),
    ]


def test_sub_second_mtimes_count_only_when_both_sides_have_them(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    # lower has whole seconds: a copy that gained a fraction of the same second is unchanged.
    os.utime(upper / "etc/hosts", ns=(T0 * 10**9 + 500_000_000,) * 2)
    assert listing(from_diff(lower, upper, tmp_path / "a", compression=None)) == []
    # Both with fractions, and different: changed.
    os.utime(lower / "etc/hosts", ns=(T0 * 10**9 + 300_000_000,) * 2)
    assert listing(from_diff(lower, upper, tmp_path / "b", compression=None)) == [
        ("etc", "dir"),
        ("etc/hosts", "file"),
    ]


def test_a_deleted_file_is_a_whiteout_with_zero_metadata(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    (upper / "etc/hosts").unlink()
    layer = diff(tmp_path, lower, upper, owner="keep", source_date_epoch=T0 + 5, check_mtimes=False)
    assert listing(layer) == [("etc", "dir"), ("etc/.wh.hosts", "whiteout")]
    wh = list(layer.entries())[1]
    assert (wh.mode, wh.uid, wh.gid, wh.size, wh.mtime) == (0, 0, 0, 0, 0)
    assert (wh.uname, wh.gname) == ("", "")


def test_a_deleted_tree_is_one_whiteout(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    for i in range(3):
        put(lower, f"top/x/y{i}/z/file", f"{i}\n")
    put(lower, "top/keep", "k\n")
    freeze(lower)
    upper = make_upper(lower)
    shutil.rmtree(upper / "top/x")
    assert listing(diff(tmp_path, lower, upper)) == [("top", "dir"), ("top/.wh.x", "whiteout")]


def test_rm_rf_and_recreate_gives_an_opaque_directory(tmp_path: Path) -> None:
    """CONFORMANCE 5: `rm -rf /d; mkdir /d; touch /d/new` leaves only /d/new below /d."""
    lower = tmp_path / "lower"
    for name in ["a", "b", "c", "sub/deep/f"]:
        put(lower, f"d/{name}", name)
    put(lower, "other", "o")
    freeze(lower)
    upper = make_upper(lower)
    shutil.rmtree(upper / "d")
    put(upper, "d/new", "new\n", mtime=T1)
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [("d", "dir"), ("d/.wh..wh..opq", "opaque"), ("d/new", "file")]
    opq = list(layer.entries())[1]
    assert (opq.mode, opq.uid, opq.mtime, opq.size) == (0, 0, 0, 0)


def test_explicit_whiteouts_win_when_they_are_not_more_entries(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "d/a", "a")
    put(lower, "d/keep1", "1")
    put(lower, "d/keep2", "2")
    freeze(lower)
    upper = make_upper(lower)
    (upper / "d/a").unlink()
    put(upper, "d/new", "n", mtime=T1)
    # explicit: d, .wh.a, new = 3 entries; opaque: d, marker, keep1, keep2, new = 5.
    assert listing(diff(tmp_path, lower, upper)) == [
        ("d", "dir"),
        ("d/.wh.a", "whiteout"),
        ("d/new", "file"),
    ]
    # A tie (one deleted, one new, nothing else) is explicit too.
    lower2 = tmp_path / "lower2"
    put(lower2, "d/a", "a")
    freeze(lower2)
    upper2 = copy_tree(lower2, tmp_path / "upper2")
    shutil.rmtree(upper2 / "d")
    put(upper2, "d/new", "n", mtime=T1)
    assert listing(diff(tmp_path, lower2, upper2)) == [
        ("d", "dir"),
        ("d/.wh.a", "whiteout"),
        ("d/new", "file"),
    ]


def test_whiteouts_come_before_sibling_entries(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "d/a/x", "x")
    put(lower, "d/a/keep1", "1")
    put(lower, "d/a/keep2", "2")
    put(lower, "d/b", "b")
    put(lower, "d/m", "m")
    put(lower, "d/z", "z")
    freeze(lower)
    upper = make_upper(lower)
    (upper / "d/z").unlink()
    (upper / "d/m").unlink()
    put(upper, "d/0new", "0", mtime=T1)
    (upper / "d/a/x").unlink()
    put(upper, "d/a/y", "y", mtime=T1)
    assert listing(diff(tmp_path, lower, upper)) == [
        ("d", "dir"),
        ("d/.wh.m", "whiteout"),
        ("d/.wh.z", "whiteout"),
        ("d/0new", "file"),
        ("d/a", "dir"),
        ("d/a/.wh.x", "whiteout"),
        ("d/a/y", "file"),
    ]


def test_a_file_replacing_a_directory_hides_it_without_whiteouts(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "x/a", "a")
    put(lower, "x/sub/b", "b")
    freeze(lower)
    upper = make_upper(lower)
    shutil.rmtree(upper / "x")
    put(upper, "x", "now a file", mtime=T1)
    os.utime(upper, (T0, T0))
    assert listing(diff(tmp_path, lower, upper)) == [("x", "file")]


def test_a_directory_replacing_a_file_comes_with_all_its_children(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "x", "a file")
    put(lower, "y", "y")
    freeze(lower)
    upper = make_upper(lower)
    (upper / "x").unlink()
    put(upper, "x/child", "c", mtime=T0)
    put(upper, "x/sub/grandchild", "g", mtime=T0)
    freeze(upper / "x")
    assert listing(diff(tmp_path, lower, upper)) == [
        ("x", "dir"),
        ("x/child", "file"),
        ("x/sub", "dir"),
        ("x/sub/grandchild", "file"),
    ]


def test_symlink_replacing_a_directory_and_back(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "lib/libc.so", "elf")
    symlink(lower, "lib64", "/usr/lib64")
    freeze(lower)
    upper = make_upper(lower)
    shutil.rmtree(upper / "lib")
    symlink(upper, "lib", "usr/lib")
    (upper / "lib64").unlink()
    put(upper, "lib64/ld.so", "ld", mtime=T0)
    freeze(upper / "lib64")
    assert listing(diff(tmp_path, lower, upper)) == [
        ("lib", "symlink"),
        ("lib64", "dir"),
        ("lib64/ld.so", "file"),
    ]


def test_a_symlink_target_change_is_a_change(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    symlink(lower, "bin/sh", "dash")
    freeze(lower)
    upper = make_upper(lower)
    (upper / "bin/sh").unlink()
    symlink(upper, "bin/sh", "bash")
    os.utime(upper / "bin", (T0, T0))
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [("bin", "dir"), ("bin/sh", "symlink")]
    assert list(layer.entries())[1].linkname == "bash"


def test_unchanged_parents_are_written_with_their_modes_and_owners(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "p/q/file", "v1")
    put(lower, "p/unrelated", "u")
    mkdir(lower, "p", 0o750)
    mkdir(lower, "p/q", 0o701)
    if IS_ROOT:
        os.chown(lower / "p/q", 1234, 5678)
    freeze(lower)
    upper = make_upper(lower)
    put(upper, "p/q/file", "v2", mtime=T1)
    os.utime(upper / "p/q", (T0, T0))  # p and p/q are unchanged: written as parents only
    layer = diff(tmp_path, lower, upper, owner="keep")
    assert listing(layer) == [("p", "dir"), ("p/q", "dir"), ("p/q/file", "file")]
    entries = list(layer.entries())
    assert [e.mode for e in entries[:2]] == [0o750, 0o701]
    assert [e.mtime for e in entries[:2]] == [T0, T0]
    if IS_ROOT:
        assert (entries[1].uid, entries[1].gid) == (1234, 5678)


def test_owner_changes_count_only_under_owner_keep(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    if not IS_ROOT:
        pytest.skip("needs root to chown")
    lower, _ = trees
    upper = make_upper(lower)
    os.chown(upper / "etc/passwd", 1000, 1000)
    assert listing(from_diff(lower, upper, tmp_path / "root", compression=None)) == []
    layer = diff(tmp_path, lower, upper, owner="keep")
    assert listing(layer) == [("etc", "dir"), ("etc/passwd", "file")]
    assert list(layer.entries())[1].uid == 1000


def test_a_hardlink_name_replaced_by_a_new_file_leaves_the_other_name(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "d/a", "shared body")
    os.link(lower / "d/a", lower / "d/b")
    freeze(lower)
    upper = make_upper(lower)
    (upper / "d/b").unlink()
    put(upper, "d/b", "own body", mtime=T1)
    assert listing(diff(tmp_path, lower, upper)) == [("d", "dir"), ("d/b", "file")]


def test_a_modified_hardlinked_inode_writes_one_body_and_links(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "d/a", "shared body")
    os.link(lower / "d/a", lower / "d/b")
    os.link(lower / "d/a", lower / "e")
    freeze(lower)
    upper = make_upper(lower)
    with open(upper / "d/a", "r+b") as f:  # in place: all three names see it
        f.write(b"NEW")
    os.utime(upper / "d/a", (T1, T1))
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [
        ("d", "dir"),
        ("d/a", "file"),
        ("d/b", "hardlink"),
        ("e", "hardlink"),
    ]
    assert [e.linkname for e in layer.entries()][2:] == ["d/a", "d/a"]


def test_a_new_link_to_an_unchanged_file_writes_the_whole_group(tmp_path: Path) -> None:
    """The link must point into the same layer, and after applying, both names share an inode."""
    lower = tmp_path / "lower"
    put(lower, "a", "body")
    put(lower, "z/other", "o")
    freeze(lower)
    upper = make_upper(lower)
    os.link(upper / "a", upper / "z/b")
    os.utime(upper / "z", (T0, T0))
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == [("a", "file"), ("z", "dir"), ("z/b", "hardlink")]
    assert list(layer.entries())[2].linkname == "a"


def test_a_broken_link_group_keeps_unchanged_names_apart(tmp_path: Path) -> None:
    """lower: a and b are one inode; upper: the same bytes, two inodes. One of the two names is
    rewritten so that they no longer share an inode after applying."""
    lower = tmp_path / "lower"
    put(lower, "a", "body")
    os.link(lower / "a", lower / "b")
    freeze(lower)
    upper = make_upper(lower)
    (upper / "b").unlink()
    shutil.copy2(upper / "a", upper / "b")
    os.utime(upper, (T0, T0))
    assert listing(diff(tmp_path, lower, upper)) == [("a", "file")]


def test_source_date_epoch_clamps_written_mtimes_not_the_comparison(tmp_path: Path) -> None:
    late = 1_900_000_000
    lower = tmp_path / "lower"
    put(lower, "d/f", "v1", mtime=late)
    put(lower, "d/old", "o", mtime=T0)
    freeze(lower, late)
    upper = make_upper(lower)
    put(upper, "d/f", "v2", mtime=late + 100)  # after the epoch on both sides
    (upper / "d/old").unlink()
    os.utime(upper / "d", (late, late))
    put(upper, "d/early", "e", mtime=T0)
    os.utime(upper / "d", (late, late))
    epoch = 1_700_000_000
    layer = from_diff(lower, upper, tmp_path / "l", compression=None, source_date_epoch=epoch)
    got = [(e.path, e.kind, e.mtime) for e in layer.entries()]
    assert got == [
        ("d", "dir", epoch),
        ("d/.wh.old", "whiteout", 0),
        ("d/early", "file", T0),
        ("d/f", "file", epoch),
    ]


def test_same_trees_give_the_same_bytes_whatever_the_thread_count(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    (upper / "etc/hosts").unlink()
    put(upper, "var/new", os.urandom(3 << 20), mtime=T1)
    blobs = set()
    for i, threads in enumerate([1, 2, 1]):
        layer = from_diff(lower, upper, tmp_path / f"l{i}", compression="gzip", threads=threads)
        blobs.add(layer.path.read_bytes())
        assert layer.compression == "gzip"
        assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert len(blobs) == 1
    layer.verify()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_layers_have_the_same_tar_inside(
    trees: tuple[Path, Path], tmp_path: Path, compression: str
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    put(upper, "etc/motd", "hi\n", mtime=T1)
    plain = from_diff(lower, upper, tmp_path / "plain", compression=None)
    packed = from_diff(lower, upper, tmp_path / "packed", compression=compression)  # type: ignore[arg-type]
    assert packed.diff_id == plain.diff_id
    assert listing(packed) == listing(plain)


def test_special_files(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    put(lower, "dev/keep", "")
    if IS_ROOT:
        os.mknod(lower / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    freeze(lower)
    upper = make_upper(lower)
    os.mkfifo(upper / "dev/fifo")
    expected = [("dev", "dir"), ("dev/fifo", "fifo")]
    if IS_ROOT:
        (upper / "dev/null").unlink()
        os.mknod(upper / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        expected.append(("dev/null", "char"))
    layer = diff(tmp_path, lower, upper)
    assert listing(layer) == expected
    if IS_ROOT:
        assert (list(layer.entries())[2].devmajor, list(layer.entries())[2].devminor) == (1, 5)


def test_sockets_in_upper_are_skipped_with_a_warning(tmp_path: Path) -> None:
    import socket

    lower = tmp_path / "lower"
    put(lower, "run/x", "x")
    freeze(lower)
    upper = make_upper(lower)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(upper / "run/sock"))
        with pytest.warns(LayerWarning, match="socket"):
            layer = from_diff(lower, upper, tmp_path / "l", compression=None)
    finally:
        sock.close()
    assert listing(layer) == [("run", "dir")]


def test_errors_name_the_path(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    with pytest.raises(SourceNotFoundError) as info:
        from_diff(tmp_path / "missing", upper, tmp_path / "l")
    assert info.value.path == str(tmp_path / "missing")
    put(upper, "etc/.wh.passwd", "")
    with pytest.raises(UnsupportedEntryError, match="whiteout") as unsupported:
        from_diff(lower, upper, tmp_path / "l")
    assert unsupported.value.path == str(upper / "etc/.wh.passwd")
    with pytest.raises(ValueError, match="compare"):
        from_diff(lower, upper, tmp_path / "l", compare="bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads"):
        from_diff(lower, upper, tmp_path / "l", threads=0)
    assert not (tmp_path / "l").exists()
    assert not list(tmp_path.glob(".layercore-*"))


def test_an_output_inside_upper_is_not_part_of_the_diff(
    trees: tuple[Path, Path], tmp_path: Path
) -> None:
    lower, _ = trees
    upper = make_upper(lower)
    layer = from_diff(lower, upper, upper / "layer.tar", compression=None)
    assert listing(layer) == []


# --- property: diff, then apply, gives upper ---------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d-e", "d", ".hidden", "z"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map("/".join)


@st.composite
def tree_specs(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(kind, path, payload) in creation order."""
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["file", "file", "dir", "full-dir", "symlink", "hardlink"]),
                PATHS,
                st.text(alphabet="xyz", max_size=6),
            ),
            max_size=24,
        )
    )


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["delete", "write", "chmod", "touch", "mkdir", "symlink", "link", "recreate"] * 2
            + ["recreate", "delete"]
        ),
        PATHS,
        st.text(alphabet="pq", max_size=5),
    ),
    max_size=8,
)


def real_parent(root: Path, rel: str) -> bool:
    """Whether every directory above ``rel`` is a real directory or missing (then created),
    never a symlink or a file, so that the test never writes through a link."""
    p = root
    for part in rel.split("/")[:-1]:
        p = p / part
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            return False
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    return True


def regular_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            q = Path(dirpath) / name
            if q.is_file() and not q.is_symlink():
                found.append(q)
    return sorted(found)


def build_spec(root: Path, spec: list[tuple[str, str, str]]) -> None:
    root.mkdir()
    for kind, rel, payload in spec:
        p = root / rel
        if not real_parent(root, rel) or p.exists() or p.is_symlink():
            continue
        if kind == "file":
            put(root, rel, payload)
        elif kind == "dir":
            p.mkdir()
        elif kind == "full-dir":
            for i in range(3):
                put(root, f"{rel}/f{i}", payload * i)
        elif kind == "symlink":
            symlink(root, rel, payload or "target")
        else:
            files = regular_files(root)
            if files:
                os.link(files[len(payload) % len(files)], p)
    freeze(root)


def mutate(root: Path, mutations: list[tuple[str, str, str]], t: int = T1) -> None:
    for k, (op, rel, payload) in enumerate(mutations):
        if not real_parent(root, rel):
            continue
        p = root / rel
        exists = p.exists() or p.is_symlink()
        is_dir = p.is_dir() and not p.is_symlink()
        mtime = t + k
        if op == "delete" and exists:
            remove(p)
        elif op == "write" and not is_dir:
            if p.is_symlink():
                p.unlink()
            if p.exists():
                with open(p, "r+b") as f:  # in place: every hardlinked name sees it
                    f.truncate(0)
                    f.write(payload.encode() + b"!")
                os.utime(p, (mtime, mtime))
            else:
                put(root, rel, payload, mtime=mtime)
        elif op == "chmod" and exists and not p.is_symlink():
            os.chmod(p, 0o700 if is_dir else 0o600)
        elif op == "touch" and exists:
            os.utime(p, (mtime, mtime), follow_symlinks=False)
        elif op == "mkdir":
            remove(p)
            p.mkdir()
        elif op == "symlink":
            remove(p)
            os.symlink(payload or "target", p)
        elif op == "link" and not exists:
            files = regular_files(root)
            if files:
                os.link(files[len(payload) % len(files)], p)
        elif op == "recreate" and is_dir:
            shutil.rmtree(p)
            p.mkdir()
            put(root, rel + "/new", payload, mtime=mtime)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=tree_specs(), mutations=MUTATIONS, compare=st.sampled_from(["metadata", "content"]))
def test_applying_the_diff_to_lower_gives_upper(
    spec: list[tuple[str, str, str]],
    mutations: list[tuple[str, str, str]],
    compare: CompareMode,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        lower = base / "lower"
        build_spec(lower, spec)
        upper = copy_tree(lower, base / "upper")
        mutate(upper, mutations)
        layer = diff(base, lower, upper, compare=compare, check_mtimes=compare == "metadata")
        names = [e.path for e in layer.entries()]
        assert len(names) == len(set(names)), "two entries for one path"
        # Canonical order: within each directory, whiteouts (and the opaque marker) first.
        seen_normal: set[str] = set()
        for name in names:
            parent, _, base_name = name.rpartition("/")
            if base_name.startswith(".wh."):
                assert parent not in seen_normal, f"whiteout {name} after a sibling"
            else:
                seen_normal.add(parent)
        # Every entry's parent directory is in the layer (unchanged parents are written).
        dirs = {e.path for e in layer.entries() if e.kind == "dir"}
        for name in names:
            parent = name.rpartition("/")[0]
            assert parent == "" or parent in dirs, f"{name} without its parent"


# --- overlayfs upper directories ---------------------------------------------------------------


@needs_root
def test_overlay_upper_converts_whiteout_devices_and_opaque_dirs(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    put(upper, "etc/a.conf", "a\n")
    os.mknod(upper / "etc/zz-gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(upper / "etc/b-gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(upper / "etc/a.conf", "trusted.overlay.origin", b"\x00\xfb")
    os.setxattr(upper / "etc/a.conf", "user.keep", b"yes")
    put(upper, "opq/child", "c\n")
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    put(upper, "uopq/child", "c\n")
    os.setxattr(upper / "uopq", "user.overlay.opaque", b"y")
    put(upper, "notopq/child", "c\n")
    os.setxattr(upper / "notopq", "trusted.overlay.opaque", b"n")
    os.mknod(upper / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a real device stays
    # Linux 6.8+ "xwhiteouts": an empty file with overlay.whiteout in a dir marked opaque=x.
    put(upper, "xw/kept", "k\n")
    os.setxattr(put(upper, "xw/gone", ""), "user.overlay.whiteout", b"y")
    os.setxattr(put(upper, "xw/empty", ""), "user.other", b"y")
    os.setxattr(upper / "xw", "user.overlay.opaque", b"x")
    freeze(upper)
    layer = from_overlay_upper(upper, tmp_path / "layer", compression=None)
    assert listing(layer) == [
        ("etc", "dir"),
        ("etc/.wh.b-gone", "whiteout"),
        ("etc/.wh.zz-gone", "whiteout"),
        ("etc/a.conf", "file"),
        ("notopq", "dir"),
        ("notopq/child", "file"),
        ("null", "char"),
        ("opq", "dir"),
        ("opq/.wh..wh..opq", "opaque"),
        ("opq/child", "file"),
        ("uopq", "dir"),
        ("uopq/.wh..wh..opq", "opaque"),
        ("uopq/child", "file"),
        ("xw", "dir"),
        ("xw/.wh.gone", "whiteout"),
        ("xw/empty", "file"),
        ("xw/kept", "file"),
    ]
    by_path = {e.path: e for e in layer.entries()}
    assert by_path["etc/a.conf"].xattrs == {"user.keep": b"yes"}
    assert by_path["opq"].xattrs == {}
    assert by_path["notopq"].xattrs == {}
    wh = by_path["etc/.wh.b-gone"]
    assert (wh.mode, wh.uid, wh.mtime, wh.size) == (0, 0, 0, 0)
    # Applying it onto a lower tree gives the merged view overlayfs would show.
    lower = tmp_path / "lower"
    put(lower, "etc/zz-gone", "old")
    put(lower, "etc/b-gone/deep", "old")
    put(lower, "etc/kept", "kept")
    put(lower, "opq/lower-only", "hidden")
    put(lower, "notopq/lower-only", "visible")
    apply_layer(layer.path, lower)
    left = sorted(str(p.relative_to(lower)) for p in lower.rglob("*"))
    assert left == [
        "etc",
        "etc/a.conf",
        "etc/kept",
        "notopq",
        "notopq/child",
        "notopq/lower-only",
        "null",
        "opq",
        "opq/child",
        "uopq",
        "uopq/child",
        "xw",
        "xw/empty",
        "xw/kept",
    ]


@needs_root
def test_overlay_upper_same_bytes_as_from_dir_without_overlay_markers(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    put(upper, "usr/bin/tool", os.urandom(10_000), mode=0o755)
    symlink(upper, "lib64", "/usr/lib64")
    os.link(upper / "usr/bin/tool", upper / "usr/bin/tool2")
    freeze(upper)
    a = from_overlay_upper(upper, tmp_path / "a", compression=None, source_date_epoch=T0)
    b = Layer.from_dir(upper, tmp_path / "b", compression=None, source_date_epoch=T0)
    assert a.diff_id == b.diff_id


@needs_root
@pytest.mark.parametrize(
    ("where", "xattr", "message"),
    [
        ("file", "trusted.overlay.metacopy", "metacopy"),
        ("dir", "trusted.overlay.redirect", "redirect"),
    ],
)
def test_overlay_upper_refuses_content_that_lives_in_lower_layers(
    tmp_path: Path, where: str, xattr: str, message: str
) -> None:
    upper = tmp_path / "upper"
    target = put(upper, "d/f", "x") if where == "file" else mkdir(upper, "moved")
    os.setxattr(target, xattr, b"/old" if where == "dir" else b"")
    with pytest.raises(UnsupportedEntryError, match=message) as info:
        from_overlay_upper(upper, tmp_path / "l")
    assert info.value.path == str(target)
    assert not (tmp_path / "l").exists()


# --- interop: umoci applies our layers ---------------------------------------------------------


def write_oci_image(layout: Path, layers: list[Layer]) -> None:
    """A minimal OCI image layout (tag ``t``) stacking ``layers``, bottom first."""
    import json

    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    for layer in layers:
        shutil.copy(layer.path, blobs / layer.digest.removeprefix("sha256:"))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_digest, config_size = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "t"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


@needs_root
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
def test_umoci_unpacks_lower_plus_diff_as_upper(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    for rel in ["d/a", "d/b", "d/c", "d/sub/deep", "gone/x/y", "keep/k", "f2d", "hl/one"]:
        put(lower, rel, rel)
    os.link(lower / "hl/one", lower / "hl/two")
    symlink(lower, "lib64", "/usr/lib64")
    symlink(lower, "s2d", "keep")
    put(lower, "d2f/inner", "inner")
    freeze(lower)
    upper = copy_tree(lower, tmp_path / "upper")
    shutil.rmtree(upper / "d")  # rm -rf + recreate: opaque
    put(upper, "d/new", "new", mtime=T1)
    shutil.rmtree(upper / "gone")  # deleted tree: one whiteout
    (upper / "f2d").unlink()  # file -> dir
    put(upper, "f2d/child", "child", mtime=T1)
    shutil.rmtree(upper / "d2f")  # dir -> file
    put(upper, "d2f", "file now", mtime=T1)
    (upper / "s2d").unlink()  # symlink -> dir
    put(upper, "s2d/in", "in", mtime=T1)
    with open(upper / "hl/one", "r+b") as f:  # both names of a hardlink see the change
        f.write(b"HL")
    os.utime(upper / "hl/one", (T1, T1))
    os.chmod(upper / "keep", 0o700)
    base = Layer.from_dir(lower, tmp_path / "base.tar.gz")
    top = from_diff(lower, upper, tmp_path / "top.tar.gz")
    assert ("d/.wh..wh..opq", "opaque") in listing(top)
    assert (".wh.gone", "whiteout") in listing(top)
    write_oci_image(tmp_path / "image", [base, top])
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'image'}:t", str(bundle)],
        check=True,
        capture_output=True,
    )
    # Types, modes, owners, bodies, link targets, hardlinks, xattrs and mtimes.
    assert snapshot(bundle / "rootfs") == snapshot(upper)
