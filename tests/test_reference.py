"""Tests of layercore.reference, the pure-Python twin: its layers against GNU tar, its digests
against hashlib, its reader against its writer, and its failures.

The twin is the differential oracle for the Rust writer, so these tests pin the tar format of
docs/ARCHITECTURE.md ("The layer tar format") on the Python side.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _import_reference() -> types.ModuleType:
    """layercore.reference, also when the Rust extension is not built.

    The twin needs only layercore.errors; if the package's __init__ cannot import the extension,
    load the two pure-Python modules under a bare package object, then drop that object again so
    a later ``import layercore`` fails (or succeeds) on its own.
    """
    try:
        return importlib.import_module("layercore.reference")
    except ImportError:
        pass
    pkg_dir = Path(__file__).resolve().parent.parent / "python" / "layercore"
    pkg = types.ModuleType("layercore")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["layercore"] = pkg
    try:
        return importlib.import_module("layercore.reference")
    finally:
        del sys.modules["layercore"]


ref = _import_reference()
errors = sys.modules["layercore.errors"]
Layer = ref.Layer

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mknod, chown)")
GNU_TAR = shutil.which("tar")
needs_tar = pytest.mark.skipif(GNU_TAR is None, reason="GNU tar not installed")
ZSTD_CLI = shutil.which("zstd")

NON_UTF8 = b"caf\xe9"  # latin-1 'café': not valid UTF-8
LONG_DIR = "d" * 60
LONG_FILE = "f" * 80  # LONG_DIR/LONG_FILE is 141 bytes
LONG_COMPONENT = "L" * 150
DIR_100 = "g" * 100  # fits ustar as a name, not with its slash
OWNED_UID, OWNED_GID = 1234, 5678
T0_NS = 1_600_000_000_123_456_789  # a fractional mtime: entries must floor it
OLD_NS = 1_000_000_000_999_999_999
NEG_NS = -100_500_000_000  # 1969: floors to -101 and needs a PAX mtime record
SDE = 1_500_000_000
BIG = bytes(range(256)) * 781 + b"tail"  # 199940 bytes, not a multiple of 512

# What GNU tar may say about this tree without anything being wrong: tar 1.34 does not know PAX
# 'hdrcharset' (which tarfile writes for non-UTF-8 values) and then reads the values as the raw
# bytes they are; the 1969 mtime is "implausibly old"; a socket is skipped when archiving.
TAR_NOTES = re.compile(
    rb"^\S*tar: (Ignoring unknown extended header keyword 'hdrcharset'"
    rb"|empty: implausibly old time stamp .*"
    rb"|\./sock: socket ignored)$"
)


# --------------------------------------------------------------------------------------------
# The source tree


def _xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def make_tree(root: Path) -> dict[str, Any]:
    """A tree with one of everything a layer can carry (and a socket, which it cannot)."""
    root.mkdir()
    info: dict[str, Any] = {"xattrs": _xattrs_supported(root)}

    def write(rel: str | bytes, data: bytes, mode: int = 0o644) -> None:
        p = os.path.join(os.fsencode(root), os.fsencode(rel))
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)

    (root / "a" / "b" / "empty").mkdir(parents=True)
    write("a/x", b"hello\n")
    write("a/b/deep", b"deep\n" * 100, 0o600)
    write("a-b", b"sorted after a/ and its contents")
    write("A", b"upper case sorts first")
    write("\u00e4nderung", b"valid UTF-8, not ASCII")
    write(NON_UTF8, b"latin-1 name")
    write("empty", b"")
    write("block512", b"z" * 512)
    write("big", BIG)
    write("setuid", b"#!/bin/sh\n", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / LONG_DIR).mkdir()
    write(f"{LONG_DIR}/{LONG_FILE}", b"long path")
    write(LONG_COMPONENT, b"long component")
    (root / DIR_100).mkdir()
    write(f"{DIR_100}/in", b"inside a 100-byte directory name")
    os.symlink("/etc/passwd", root / "abs")
    os.symlink("../a-b", root / "a" / "rel")
    os.symlink("nowhere", root / "dangling")
    os.symlink("t" * 150, root / "longtarget")
    os.link(root / "a" / "x", root / "hl")  # 'a/x' comes first in the walk: it carries the body
    os.mkfifo(root / "fifo")
    os.chmod(root / "fifo", 0o620)
    if IS_ROOT:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chmod(root / "null", 0o666)  # past the umask
        os.mknod(root / "blk", stat.S_IFBLK | 0o640, os.makedev(7, 0))
        os.chown(root / "a" / "b" / "deep", OWNED_UID, OWNED_GID)
    if info["xattrs"]:
        os.setxattr(root / "a" / "x", "user.greeting", b"hello")
        os.setxattr(root / "a" / "x", "user.empty", b"")
        os.setxattr(root / "a-b", "user.bin", b"\xff\x00\x01")
        os.setxattr(root / "a", "user.dir", b"on a directory")
        os.setxattr(root / LONG_COMPONENT, "user.long", b"1")  # xattr records come before path
    # A socket: tar cannot carry it. bind() wants a short path, hence the chdir.
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind("sock")
    finally:
        os.chdir(cwd)

    # mtimes last, children before parents (writing a child changes its directory's mtime).
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root), topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(T0_NS, T0_NS), follow_symlinks=False)
    os.utime(root / "a" / "b" / "deep", ns=(OLD_NS, OLD_NS))
    os.utime(root / "abs", ns=(OLD_NS, OLD_NS), follow_symlinks=False)
    os.utime(root / "empty", ns=(NEG_NS, NEG_NS))
    os.utime(root, ns=(T0_NS, T0_NS))
    return info


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_tree(src)
    return src


@pytest.fixture
def built(tree: Path, tmp_path: Path) -> dict[str | None, Any]:
    """The tree built once per compression (owner='root')."""
    out = tmp_path / "out"
    out.mkdir()
    layers = {}
    for comp in (None, "gzip", "zstd"):
        with pytest.warns(errors.LayerWarning, match="sock"):
            layers[comp] = Layer.from_dir(tree, out / f"layer-{comp}", compression=comp)
    return layers


def build(src: Path, out: Path, **kwargs: Any) -> Any:
    with pytest.warns(errors.LayerWarning):
        return Layer.from_dir(src, out, **kwargs)


def run_tar(*args: str, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        [GNU_TAR or "tar", *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    noise = [ln for ln in proc.stderr.splitlines() if not TAR_NOTES.match(ln)]
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert not noise, proc.stderr.decode(errors="replace")
    return proc.stdout


# --------------------------------------------------------------------------------------------
# A tree's observable state, for comparing a source with an extraction


def walk_sorted(root: bytes, rel: bytes = b"") -> Iterator[bytes]:
    """Relative paths depth-first, each directory followed by its contents, sorted by bytes."""
    for name in sorted(os.listdir(os.path.join(root, rel) if rel else root)):
        child = os.path.join(rel, name) if rel else name
        yield child
        if stat.S_ISDIR(os.lstat(os.path.join(root, child)).st_mode):
            yield from walk_sorted(root, child)


def snapshot(root: Path, *, root_owner: bool) -> dict[bytes, tuple[Any, ...]]:
    """rel path -> what a layer must preserve; sockets left out, mtimes in whole seconds."""
    out: dict[bytes, tuple[Any, ...]] = {}
    inodes: dict[tuple[int, int], bytes] = {}
    base = os.fsencode(root)
    for rel in walk_sorted(base):
        full = os.path.join(base, rel)
        st = os.lstat(full)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFSOCK:
            continue
        if fmt == stat.S_IFREG:
            with open(full, "rb") as f:
                body: Any = hashlib.sha256(f.read()).hexdigest()
            # hardlink identity: every path of an inode maps to its first path in walk order
            body = (body, inodes.setdefault((st.st_dev, st.st_ino), rel))
        elif fmt == stat.S_IFLNK:
            body = os.readlink(full)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            body = (os.major(st.st_rdev), os.minor(st.st_rdev))
        else:
            body = None
        try:
            xattrs = {
                n: os.getxattr(full, n, follow_symlinks=False)
                for n in os.listxattr(full, follow_symlinks=False)
            }
        except OSError:
            xattrs = {}
        owner = (0, 0) if root_owner else (st.st_uid, st.st_gid)
        mtime = st.st_mtime_ns // 1_000_000_000
        mode = stat.S_IMODE(st.st_mode)
        out[rel] = (fmt, mode, mtime, owner, body, xattrs)
    return out


def entries_by_path(layer: Any) -> dict[str, Any]:
    return {e.path: e for e in layer.entries()}


# --------------------------------------------------------------------------------------------
# GNU tar interop


@needs_tar
def test_gnu_tar_extracts_the_source_tree(tree: Path, built: dict[str | None, Any], tmp_path: Path):
    dest = tmp_path / "dest"
    dest.mkdir()
    layer = built[None]
    listing = run_tar("-tvf", str(layer.path))
    run_tar("--xattrs", "--xattrs-include=*", "-xpf", str(layer.path), "-C", str(dest))

    expected = snapshot(tree, root_owner=True)
    got = snapshot(dest, root_owner=not IS_ROOT)  # as root: the owners tar restored
    assert got.keys() == expected.keys()
    for rel in expected:
        assert got[rel] == expected[rel], rel
    # the things the snapshot encodes, spelled out once
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.readlink(dest / "a" / "rel") == "../a-b"
    assert os.stat(dest / "hl").st_ino == os.stat(dest / "a" / "x").st_ino
    assert os.lstat(dest / "empty").st_mtime_ns // 10**9 == NEG_NS // 10**9 == -101
    assert stat.S_IMODE(os.stat(dest / "setuid").st_mode) == 0o4755
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert os.path.lexists(os.path.join(os.fsencode(dest), NON_UTF8))
    assert not os.path.lexists(dest / "sock")
    if IS_ROOT:
        assert os.stat(dest / "a" / "b" / "deep").st_uid == 0
        assert os.lstat(dest / "null").st_rdev == os.makedev(1, 3)
    if _xattrs_supported(tmp_path):
        assert os.getxattr(dest / "a-b", "user.bin") == b"\xff\x00\x01"
        assert os.getxattr(dest / "a", "user.dir") == b"on a directory"

    lines = listing.splitlines()
    assert any(ln.startswith(b"hrw-r--r-- 0/0") and ln.endswith(b"hl link to a/x") for ln in lines)
    assert any(
        ln.startswith(b"lrwxrwxrwx 0/0") and ln.endswith(b"abs -> /etc/passwd") for ln in lines
    )
    assert any(ln.startswith(b"prw--w----") for ln in lines)
    if IS_ROOT:
        assert any(ln.startswith(b"crw-rw-rw- 0/0") and b" 1,3 " in ln for ln in lines)
        assert any(ln.startswith(b"brw-r-----") and b" 7,0 " in ln for ln in lines)


@needs_tar
@needs_root
def test_gnu_tar_extracts_kept_owners(tree: Path, tmp_path: Path):
    layer = build(tree, tmp_path / "keep.tar", compression=None, owner="keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    run_tar("--xattrs", "--xattrs-include=*", "-xpf", str(layer.path), "-C", str(dest))
    assert snapshot(dest, root_owner=False) == snapshot(tree, root_owner=False)
    st = os.stat(dest / "a" / "b" / "deep")
    assert (st.st_uid, st.st_gid) == (OWNED_UID, OWNED_GID)


@needs_tar
def test_entry_order_is_gnu_tar_sort_name(tree: Path, built: dict[str | None, Any]):
    ours = run_tar("-tf", str(built[None].path)).splitlines()
    gnu_archive = run_tar("--sort=name", "--format=posix", "-cf", "-", "-C", str(tree), ".")
    gnu = [n.removeprefix(b"./") for n in run_tar("-tf", "-", input=gnu_archive).splitlines()]
    gnu = [n for n in gnu if n]  # the root './'
    assert ours == gnu
    # the sort is by bytes within a directory, each directory followed by its contents
    assert ours.index(b"A") < ours.index(b"a/") < ours.index(b"a/x") < ours.index(b"a-b")
    assert len(ours) == len(set(ours))


@needs_tar
@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_gnu_tar_reads_compressed_layers(built: dict[str | None, Any], comp: str):
    if comp == "zstd" and ZSTD_CLI is None:
        pytest.skip("zstd CLI not installed")
    flag = "-z" if comp == "gzip" else "--zstd"
    assert run_tar(flag, "-tf", str(built[comp].path)) == run_tar("-tf", str(built[None].path))


# --------------------------------------------------------------------------------------------
# Digests, determinism, compression


def test_diff_id_and_digest_are_sha256_of_the_bytes(built: dict[str | None, Any]):
    tar = built[None].path.read_bytes()
    tar_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    for comp, layer in built.items():
        blob = layer.path.read_bytes()
        assert layer.diff_id == tar_id
        assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert layer.size == len(blob)
        assert layer.uncompressed_size == len(tar)
        assert layer.compression == comp
        assert layer.path.name == f"layer-{comp}"
    assert built[None].digest == built[None].diff_id
    assert built["gzip"].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert built["zstd"].media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert built[None].media_type == "application/vnd.oci.image.layer.v1.tar"


def test_layer_files_are_0644(built: dict[str | None, Any]):
    for layer in built.values():
        assert stat.S_IMODE(layer.path.stat().st_mode) == 0o644


def test_compressed_layers_hold_the_same_tar(built: dict[str | None, Any]):
    tar = built[None].path.read_bytes()
    assert gzip.decompress(built["gzip"].path.read_bytes()) == tar
    if ZSTD_CLI is not None:
        out = subprocess.run(
            [ZSTD_CLI, "-d", "-c", str(built["zstd"].path)], capture_output=True, check=True
        )
        assert out.stdout == tar
    zstandard = pytest.importorskip("zstandard")
    with zstandard.ZstdDecompressor().stream_reader(built["zstd"].path.read_bytes()) as r:
        assert r.read() == tar


@pytest.mark.parametrize("comp", [None, "gzip", "zstd"])
def test_builds_are_byte_identical(tree: Path, tmp_path: Path, comp: str | None):
    first = build(tree, tmp_path / "one", compression=comp)
    second = build(tree, tmp_path / "two", compression=comp, threads=8)
    # the same tree somewhere else (cp -a keeps modes, times, owners, xattrs, links, devices)
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(tree), str(copy)], check=True)
    assert snapshot(copy, root_owner=False) == snapshot(tree, root_owner=False)
    third = build(copy, tmp_path / "three", compression=comp)
    blob = first.path.read_bytes()
    assert second.path.read_bytes() == blob
    assert third.path.read_bytes() == blob, "the layer depends on where the tree is"
    assert first.digest == second.digest == third.digest


def test_source_date_epoch_clamps_mtimes(tree: Path, tmp_path: Path):
    layer = build(tree, tmp_path / "l.tar", compression=None, source_date_epoch=SDE)
    got = entries_by_path(layer)
    assert got["a/x"].mtime == SDE  # newer: clamped
    assert got["a"].mtime == SDE
    assert got["a/b/deep"].mtime == OLD_NS // 10**9  # older: kept
    assert got["empty"].mtime == -101
    assert max(e.mtime for e in got.values()) == SDE
    plain = entries_by_path(build(tree, tmp_path / "p.tar", compression=None))
    assert plain["a/x"].mtime == T0_NS // 10**9 > SDE


# --------------------------------------------------------------------------------------------
# The tar bytes themselves (what the Rust writer must reproduce)


def _blocks(tar: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, header) of every header block, following sizes (PAX headers included)."""
    pos = 0
    while tar[pos : pos + 512] != b"\0" * 512:
        header = tar[pos : pos + 512]
        yield pos, header
        size = int(header[124:135], 8)
        pos += 512 + (size + 511) // 512 * 512


def _record(tar: bytes, pos: int) -> bytes:
    size = int(tar[pos + 124 : pos + 135], 8)
    return tar[pos + 512 : pos + 512 + size]


def test_header_bytes(built: dict[str | None, Any]):
    tar = built[None].path.read_bytes()
    assert len(tar) % 10240 == 0
    headers = list(_blocks(tar))
    by_name = {h[:100].rstrip(b"\0"): (pos, h) for pos, h in headers}

    _, first = headers[0]
    assert first[:100] == b"A".ljust(100, b"\0")  # no './', no root entry
    _, d = by_name[b"a/"]
    assert d[100:108] == b"0000755\0"
    assert d[108:116] == d[116:124] == b"0000000\0"
    assert d[124:136] == b"00000000000\0"
    assert d[136:148] == b"%011o\0" % (T0_NS // 10**9)
    assert d[156:157] == b"5"
    assert d[257:265] == b"ustar\x0000"
    assert d[265:297] == d[297:329] == b"\0" * 32  # owner='root': no names
    assert d[329:345] == b"\0" * 16  # device fields NUL-filled...
    assert d[345:500] == b"\0" * 155  # ...and no prefix
    chk = sum(d[:148]) + 8 * 32 + sum(d[156:])
    assert d[148:156] == b"%06o\0 " % chk
    if IS_ROOT:
        _, c = by_name[b"null"]
        assert c[329:345] == b"0000001\x000000003\0"  # ...except for devices
    _, h = by_name[b"hl"]
    assert (h[156:157], h[157:257].rstrip(b"\0"), h[124:136]) == (b"1", b"a/x", b"0" * 11 + b"\0")

    # a name over 100 bytes: a PAX header first, all numbers 0, with a 'path' record
    long_name = f"{LONG_DIR}/{LONG_FILE}".encode()
    pax_pos = next(pos for pos, h in headers if long_name in _record(tar, pos))
    pax = tar[pax_pos : pax_pos + 512]
    assert pax[:100] == b"././@PaxHeader".ljust(100, b"\0")
    assert pax[156:157] == b"x"
    assert pax[100:124] == b"0000000\0" * 3
    assert pax[136:148] == b"00000000000\0"
    rec = b"path=" + long_name + b"\n"
    assert _record(tar, pax_pos) == b"%d " % (len(rec) + 4) + rec
    member = tar[pax_pos + 1024 : pax_pos + 1536]  # the record fits one block
    assert member[:100] == long_name[:100]  # the ustar name: cut to 100 bytes

    # a 100-byte directory name plus its slash goes to PAX too
    dir_rec = b"path=" + DIR_100.encode() + b"/\n"
    assert any(_record(tar, pos).endswith(dir_rec) for pos, _ in headers)

    # a non-UTF-8 name: hdrcharset=BINARY first, the raw bytes, '?' in the ustar name
    pos = next(p for p, _ in headers if _record(tar, p).endswith(b"path=" + NON_UTF8 + b"\n"))
    assert _record(tar, pos) == b"21 hdrcharset=BINARY\n13 path=caf\xe9\n"
    assert tar[pos + 1024 : pos + 1124].rstrip(b"\0") == b"caf?"

    # negative mtime: a PAX mtime record, 0 in the ustar field
    pos = next(p for p, _ in headers if _record(tar, p).endswith(b"mtime=-101\n"))
    assert _record(tar, pos) == b"14 mtime=-101\n"
    assert tar[pos + 1024 : pos + 1124].rstrip(b"\0") == b"empty"
    assert tar[pos + 1024 + 136 : pos + 1024 + 148] == b"00000000000\0"


def test_xattr_records_sorted_and_first(built: dict[str | None, Any], tmp_path: Path):
    if not _xattrs_supported(tmp_path):
        pytest.skip("no user xattrs here")
    tar = built[None].path.read_bytes()
    headers = list(_blocks(tar))
    recs = [_record(tar, p) for p, h in headers if h[156:157] == b"x"]
    # sorted by name, lengths counting themselves
    assert b"28 SCHILY.xattr.user.empty=\n36 SCHILY.xattr.user.greeting=hello\n" in recs
    # a binary value switches the whole header to hdrcharset=BINARY
    assert b"21 hdrcharset=BINARY\n29 SCHILY.xattr.user.bin=\xff\x00\x01\n" in recs
    # xattrs come before path
    long_rec = b"160 path=" + LONG_COMPONENT.encode() + b"\n"
    assert b"28 SCHILY.xattr.user.long=1\n" + long_rec in recs


# --------------------------------------------------------------------------------------------
# Reading back: open, entries, verify


def test_open_detects_compression_and_digests(built: dict[str | None, Any]):
    for layer in built.values():
        assert Layer.open(layer.path) == layer
        assert Layer.open(str(layer.path)) == layer


def test_open_with_trusted_digests_reads_nothing(built: dict[str | None, Any]):
    layer = built["zstd"]
    trusted = Layer.open(layer.path, digest=layer.digest, diff_id=layer.diff_id)
    assert trusted.compression == "zstd"
    assert trusted.media_type == layer.media_type
    assert trusted.size == layer.size
    assert trusted.uncompressed_size is None
    trusted.verify()


def test_open_checks_a_given_digest(built: dict[str | None, Any]):
    layer = built["gzip"]
    wrong = "sha256:" + "0" * 64
    with pytest.raises(errors.DigestMismatchError) as e:
        Layer.open(layer.path, digest=wrong)
    assert (e.value.what, e.value.expected, e.value.actual) == ("digest", wrong, layer.digest)
    assert Layer.open(layer.path, diff_id=layer.diff_id) == layer
    with pytest.raises(ValueError, match="malformed"):
        Layer.open(layer.path, digest="sha256:xyz", diff_id=layer.diff_id)


def test_entries_round_trip_the_metadata(tree: Path, built: dict[str | None, Any]):
    tar = built[None].path.read_bytes()
    entries = list(built[None].entries())
    got = {e.path: e for e in entries}
    assert len(got) == len(entries)
    assert "sock" not in got and "" not in got
    xattrs = _xattrs_supported(tree.parent)

    for rel_b, (fmt, mode, mtime, _owner, body, xa) in snapshot(tree, root_owner=True).items():
        rel = os.fsdecode(rel_b)
        e = got.pop(rel)
        assert (e.uid, e.gid, e.uname, e.gname) == (0, 0, "", ""), rel
        assert e.mtime == mtime, rel
        assert e.mode == mode, rel
        assert e.xattrs == (xa if xattrs else {}), rel
        if fmt == stat.S_IFREG:
            digest, first = body
            if first != rel_b:
                assert (e.kind, e.linkname, e.size) == ("hardlink", os.fsdecode(first), 0)
                continue
            assert e.kind == "file" and e.linkname is None
            data = tar[e.offset : e.offset + e.size]
            assert hashlib.sha256(data).hexdigest() == digest, rel
            assert e.size == os.lstat(os.path.join(os.fsencode(tree), rel_b)).st_size
            assert e.offset % 512 == 0
        elif fmt == stat.S_IFDIR:
            assert (e.kind, e.size, e.linkname) == ("dir", 0, None)
        elif fmt == stat.S_IFLNK:
            assert (e.kind, e.linkname, e.size) == ("symlink", os.fsdecode(body), 0)
        elif fmt == stat.S_IFIFO:
            assert e.kind == "fifo"
        elif fmt == stat.S_IFCHR:
            assert (e.kind, (e.devmajor, e.devminor)) == ("char", body)
        elif fmt == stat.S_IFBLK:
            assert (e.kind, (e.devmajor, e.devminor)) == ("block", body)
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
            assert (e.devmajor, e.devminor) == (0, 0)
    assert not got, f"entries without a source: {sorted(got)}"

    assert entries[0].path == "A"
    big = next(e for e in entries if e.path == "big")
    assert tar[big.offset : big.offset + big.size] == BIG
    assert next(e for e in entries if e.path == os.fsdecode(NON_UTF8)).path == "caf\udce9"
    for comp in ("gzip", "zstd"):
        assert list(built[comp].entries()) == entries


@needs_root
def test_entries_with_kept_owners(tree: Path, tmp_path: Path):
    got = entries_by_path(build(tree, tmp_path / "k.tar", compression="zstd", owner="keep"))
    deep = got["a/b/deep"]
    assert (deep.uid, deep.gid, deep.uname, deep.gname) == (OWNED_UID, OWNED_GID, "", "")
    x = got["a/x"]
    assert (x.uid, x.gid, x.uname, x.gname) == (0, 0, "root", "root")


def test_whiteouts_are_classified(tmp_path: Path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / ".wh.gone").write_bytes(b"")
    (src / "d" / ".wh..wh..opq").write_bytes(b"")
    (src / "d" / ".whx").write_bytes(b"")
    layer = Layer.from_dir(src, tmp_path / "w.tar.gz")
    kinds = {e.path: e.kind for e in layer.entries()}
    assert kinds == {
        ".wh.gone": "whiteout",
        "d": "dir",
        "d/.wh..wh..opq": "opaque",
        "d/.whx": "file",
    }

    (src / ".wh.").write_bytes(b"")
    bad = Layer.from_dir(src, tmp_path / "bad.tar", compression=None)
    with pytest.raises(errors.CorruptLayerError) as e:
        list(bad.entries())
    assert e.value.path == str(bad.path)


def test_entries_of_foreign_archives_are_normalised(tmp_path: Path):
    """'./' prefixes and the root entry that other tools write are normalised away."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, type_ in (("./", tarfile.DIRTYPE), ("./etc/", tarfile.DIRTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type = type_
            tf.addfile(ti)
        ti = tarfile.TarInfo("./etc/" + "p" * 120)  # a GNU longname
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
        ti = tarfile.TarInfo("./etc/link")
        ti.type, ti.linkname = tarfile.LNKTYPE, "./etc/" + "p" * 120
        tf.addfile(ti)
    path = tmp_path / "foreign.tar"
    path.write_bytes(buf.getvalue())
    got = list(Layer.open(path).entries())
    assert [(e.path, e.kind) for e in got] == [
        ("etc", "dir"),
        ("etc/" + "p" * 120, "file"),
        ("etc/link", "hardlink"),
    ]
    assert got[2].linkname == "etc/" + "p" * 120
    assert buf.getvalue()[got[1].offset : got[1].offset + 3] == b"abc"


def _tamper(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("comp", [None, "gzip", "zstd"])
def test_verify_detects_a_changed_byte(built: dict[str | None, Any], comp: str | None):
    layer = built[comp]
    layer.verify()
    if comp is None:
        at = next(e for e in layer.entries() if e.path == "big").offset + 1000  # file data
    else:
        at = layer.size // 2
    _tamper(layer.path, at)
    with pytest.raises(errors.DigestMismatchError) as e:
        layer.verify()
    assert isinstance(e.value, ValueError)
    assert e.value.what == "digest"
    assert e.value.expected == layer.digest
    assert e.value.actual == "sha256:" + hashlib.sha256(layer.path.read_bytes()).hexdigest()
    assert e.value.path == str(layer.path)


def test_verify_detects_a_wrong_diff_id(built: dict[str | None, Any]):
    layer = built["gzip"]
    wrong = "sha256:" + "1" * 64
    trusted = Layer.open(layer.path, digest=layer.digest, diff_id=wrong)
    with pytest.raises(errors.DigestMismatchError) as e:
        trusted.verify()
    assert (e.value.what, e.value.expected, e.value.actual) == ("diff_id", wrong, layer.diff_id)


# --------------------------------------------------------------------------------------------
# Broken archives


def _truncated(src: Path, dst: Path, length: int) -> Path:
    dst.write_bytes(src.read_bytes()[:length])
    return dst


def test_truncated_tar(built: dict[str | None, Any], tmp_path: Path):
    layer = built[None]
    big = next(e for e in layer.entries() if e.path == "big")
    last = list(layer.entries())[-1]
    end_of_last = last.offset + (last.size + 511) // 512 * 512
    for cut in (big.offset + 100, big.offset - 300, end_of_last, end_of_last + 200, 0):
        t = _truncated(layer.path, tmp_path / f"cut-{cut}.tar", cut)
        with pytest.raises(errors.TruncatedLayerError) as e:
            Layer.open(t)
        assert e.value.path == str(t), cut
        with pytest.raises(errors.TruncatedLayerError):
            list(Layer.open(t, digest=layer.digest, diff_id=layer.diff_id).entries())
    # the padding after the end-of-archive blocks is not required
    ok = _truncated(layer.path, tmp_path / "short-padding.tar", end_of_last + 1024)
    assert Layer.open(ok).diff_id != layer.diff_id


@pytest.mark.parametrize("comp", ["gzip", "zstd"])
def test_truncated_compressed_stream(built: dict[str | None, Any], tmp_path: Path, comp: str):
    layer = built[comp]
    for cut in (layer.size // 2, layer.size - 1):
        t = _truncated(layer.path, tmp_path / f"cut-{cut}", cut)
        with pytest.raises(errors.TruncatedLayerError) as e:
            Layer.open(t)
        assert isinstance(e.value, errors.CorruptLayerError)
        assert e.value.path == str(t)


def test_corrupt_tar_is_not_truncated(built: dict[str | None, Any], tmp_path: Path):
    layer = built[None]
    bad = tmp_path / "bad.tar"
    shutil.copyfile(layer.path, bad)
    second = list(layer.entries())[1]
    _tamper(bad, second.offset - 512 + 10)  # a byte of the second header's name: bad checksum
    with pytest.raises(errors.CorruptLayerError) as e:
        Layer.open(bad)
    assert not isinstance(e.value, errors.TruncatedLayerError)
    assert e.value.path == str(bad)

    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(errors.CorruptLayerError) as e:
        Layer.open(garbage)
    assert not isinstance(e.value, errors.TruncatedLayerError)

    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(b"\x1f\x8b" + b"\xff" * 100)
    with pytest.raises(errors.CorruptLayerError):
        Layer.open(bad_gzip)


def test_open_missing_layer(tmp_path: Path):
    missing = tmp_path / "nope.tar"
    with pytest.raises(errors.SourceNotFoundError) as e:
        Layer.open(missing)
    assert isinstance(e.value, FileNotFoundError)
    assert e.value.path == str(missing)
    with pytest.raises(FileNotFoundError):
        Layer.open(missing, digest="sha256:" + "0" * 64, diff_id="sha256:" + "0" * 64)


# --------------------------------------------------------------------------------------------
# Building: failures


def test_missing_source(tmp_path: Path):
    missing = tmp_path / "missing"
    with pytest.raises(errors.SourceNotFoundError) as e:
        Layer.from_dir(missing, tmp_path / "out.tar")
    assert isinstance(e.value, FileNotFoundError)
    assert isinstance(e.value, errors.LayerError)
    assert e.value.path == str(missing)
    assert str(missing) in str(e.value)
    assert os.listdir(tmp_path) == []


def test_source_not_a_directory(tmp_path: Path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(errors.LayerError) as e:
        Layer.from_dir(f, tmp_path / "out.tar")
    assert e.value.path == str(f)
    assert "not a directory" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "lz4"},
        {"owner": "nobody"},
        {"compression": "gzip", "level": 99},
        {"compression": "zstd", "level": 0},
        {"threads": 0},
        {"source_date_epoch": "yesterday"},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]):
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError):
        Layer.from_dir(tmp_path / "src", tmp_path / "out", **kwargs)
    assert os.listdir(tmp_path) == ["src"]


def test_socket_warning_names_it_and_points_at_the_caller(tree: Path, tmp_path: Path):
    with pytest.warns(errors.LayerWarning) as record:
        Layer.from_dir(tree, tmp_path / "l.tar", compression=None)
    [w] = record
    assert str(tree / "sock") in str(w.message)
    assert w.filename == __file__


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_failure_leaves_no_temp_file(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = os.listxattr
    calls = 0

    def failing(path: Any, *args: Any, **kwargs: Any) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 10:  # well into the walk: the temp file exists and has data
            assert len(os.listdir(out_dir)) == 1
            raise exc
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "listxattr", failing)
    with pytest.raises((errors.LayerIOError, KeyboardInterrupt)) as e:
        Layer.from_dir(tree, out_dir / "l.tar.gz")
    if isinstance(exc, OSError):
        assert isinstance(e.value, errors.LayerIOError) and isinstance(e.value, OSError)
        assert e.value.path is not None and e.value.path.startswith(str(tree))
    assert os.listdir(out_dir) == []


def test_non_utf8_xattr_name_is_unsupported_and_cleaned_up(tmp_path: Path):
    if not _xattrs_supported(tmp_path):
        pytest.skip("no user xattrs here")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", os.fsdecode(b"user.\xff"), b"v")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.UnsupportedEntryError) as e:
        Layer.from_dir(src, out / "l.tar")
    assert e.value.path == str(src / "f")
    assert os.listdir(out) == []


def test_file_that_shrinks_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "victim"
    victim.write_bytes(b"v" * 100_000)
    ino = victim.stat().st_ino
    real = os.fstat

    def fstat_then_truncate(fd: int) -> os.stat_result:
        st = real(fd)
        if st.st_ino == ino:  # the check passed; now the file shrinks under the reader
            os.truncate(victim, 10)
        return st

    monkeypatch.setattr(os, "fstat", fstat_then_truncate)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(errors.SourceChangedError) as e:
        Layer.from_dir(src, out / "l.tar", compression=None)
    assert isinstance(e.value, OSError)
    assert e.value.path == str(victim)
    assert "shrank" in str(e.value)
    assert os.listdir(out) == []


def test_file_that_changed_size_after_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "victim"
    victim.write_bytes(b"v" * 1000)
    real_open = os.open

    def open_after_growth(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsencode(path) == os.fsencode(victim):
            with open(victim, "ab") as f:
                f.write(b"more")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_after_growth)
    with pytest.raises(errors.SourceChangedError, match="size changed"):
        Layer.from_dir(src, tmp_path / "l.tar")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_out_inside_src_is_not_walked(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    layer = Layer.from_dir(src, src / "layer.tar", compression=None)
    assert [e.path for e in layer.entries()] == ["f"]


def test_empty_tree(tmp_path: Path):
    (tmp_path / "src").mkdir()
    layer = Layer.from_dir(tmp_path / "src", tmp_path / "e.tar", compression=None)
    assert layer.path.read_bytes() == b"\0" * 10240
    assert list(layer.entries()) == []
    layer.verify()


# --------------------------------------------------------------------------------------------
# Digest helpers


def test_sha256_file_and_digester(tmp_path: Path):
    f = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 17)
    f.write_bytes(data)
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert ref.sha256_file(f) == expected
    d = ref.Digester()
    d.update(data[:100])
    c = d.copy()
    d.update(memoryview(data)[100:])
    assert d.digest() == expected
    assert d.hexdigest() == expected.removeprefix("sha256:")
    assert d.size == len(data)
    assert c.size == 100
    assert ref.Digester(b"abc").digest() == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(errors.SourceNotFoundError):
        ref.sha256_file(tmp_path / "missing")


def test_chain_id():
    a = "sha256:" + hashlib.sha256(b"a").hexdigest()
    b = "sha256:" + hashlib.sha256(b"b").hexdigest()
    c = "sha256:" + hashlib.sha256(b"c").hexdigest()
    assert ref.chain_id([a]) == a
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert ref.chain_id([a, b]) == ab
    assert ref.chain_id((a, b, c)) == "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    for bad in ([], [a, "sha256:abc"], ["md5:" + "0" * 64], [a.upper()], a):
        with pytest.raises(ValueError):
            ref.chain_id(bad)
