"""Layer.from_dir, Layer.open, entries() and verify() through the Rust engine."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

import layercore
from conftest import nobody_python
from layercore import Layer
from layercore.errors import (
    CorruptLayerError,
    DigestMismatchError,
    LayerError,
    LayerIOError,
    LayerWarning,
    SourceNotFoundError,
    TruncatedLayerError,
    UnsupportedEntryError,
)

IS_ROOT = os.geteuid() == 0


def decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(
            ["zstd", "-dc"], input=data, stdout=subprocess.PIPE, check=True
        ).stdout
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_digests_sizes_and_media_type_describe_the_blob(
    rich_tree: Path, tmp_path: Path, compression: str | None
) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer", compression=compression)
    blob = layer.path.read_bytes()
    tar = decompressed(layer.path)
    assert layer.digest == sha256(blob)
    assert layer.diff_id == sha256(tar)
    assert layer.size == len(blob)
    assert layer.uncompressed_size == len(tar)
    assert layer.compression == compression
    suffix = {None: "", "gzip": "+gzip", "zstd": "+zstd"}[compression]
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar" + suffix
    if compression is None:
        assert layer.digest == layer.diff_id
    assert layercore.sha256_file(layer.path) == layer.digest


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_same_tree_twice_and_any_thread_count_gives_identical_blobs(
    rich_tree: Path, tmp_path: Path, compression: str | None
) -> None:
    blobs = []
    for i, threads in enumerate([1, 2, 1, 3]):
        layer = Layer.from_dir(
            rich_tree, tmp_path / f"l{i}", compression=compression, threads=threads
        )
        blobs.append(layer.path.read_bytes())
    assert all(b == blobs[0] for b in blobs)


def test_large_input_spans_many_gzip_chunks_and_stays_thread_independent(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # Several MiB so the parallel compressors really interleave.
    (src / "random").write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    (src / "text").write_bytes(b"layercore " * 600_000)
    one = Layer.from_dir(src, tmp_path / "one.gz", threads=1)
    two = Layer.from_dir(src, tmp_path / "two.gz", threads=2)
    assert one.path.read_bytes() == two.path.read_bytes()
    tar = gzip.decompress(one.path.read_bytes())
    assert sha256(tar) == one.diff_id
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        member = tf.extractfile("random")
        assert member is not None
        assert member.read() == (src / "random").read_bytes()


def tree_snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """What must survive a round trip: kind, mode, mtime, size, content, link target, xattrs."""
    snap: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, os.fsencode(root))
            st = os.lstat(full)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = {
                n: os.getxattr(full, n, follow_symlinks=False)
                for n in sorted(os.listxattr(full, follow_symlinks=False))
                if n.startswith("user.")
            }
            mtime = None if stat.S_ISLNK(st.st_mode) else int(st.st_mtime)
            snap[os.fsdecode(rel)] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                mtime,
                content,
                xattrs,
            )
    return snap


def test_gnu_tar_extracts_a_tree_equal_to_the_source(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar.gz")
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpzf",
            str(layer.path),
            "-C",
            str(dest),
        ],
        check=True,
    )
    expected = tree_snapshot(rich_tree)
    got = tree_snapshot(dest)
    assert got == expected
    # owner="root": everything extracted as root (we are root, so -p kept what the tar says).
    if IS_ROOT:
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                assert (st.st_uid, st.st_gid) == (0, 0)
    # Hardlinks come back as one inode.
    assert os.stat(dest / "data" / "hl-a").st_ino == os.stat(dest / "data" / "hl-b").st_ino
    assert os.stat(dest / "data" / "hl-a").st_ino == os.stat(dest / "usr" / "hl-c").st_ino


def test_bsdtar_reads_our_layer(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar.zst", compression="zstd")
    listing = subprocess.run(
        ["bsdtar", "-tf", str(layer.path)], check=True, stdout=subprocess.PIPE
    ).stdout.splitlines()
    assert b"lib64" in listing
    assert b"caf\\351/menu" in listing  # bsdtar escapes the non-UTF-8 byte when listing
    assert len(listing) == sum(1 for _ in layer.entries())


def entries_by_path(layer: Layer) -> dict[str, layercore.Entry]:
    return {e.path: e for e in layer.entries()}


def test_each_entry_kind_round_trips_through_entries(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar.gz", source_date_epoch=1_700_000_000)
    entries = entries_by_path(layer)
    assert entries["etc"].kind == "dir"
    assert entries["data"].mode == 0o750
    passwd = entries["etc/passwd"]
    assert passwd.kind == "file"
    assert passwd.size == (rich_tree / "etc" / "passwd").stat().st_size
    assert passwd.mtime == 1_700_000_000  # clamped from 1.8e9
    assert entries["etc/secret"].mode == 0o600
    assert entries["usr/bin/tool"].mode == 0o4755
    assert entries["lib64"].kind == "symlink"
    assert entries["lib64"].linkname == "/usr/lib64"
    assert entries["usr/passwd-link"].linkname == "../etc/passwd"
    assert entries["long-link"].linkname == "t" * 150
    # One body per inode: the first path in walk order carries it.
    assert entries["data/hl-a"].kind == "file"
    assert entries["data/hl-b"].kind == "hardlink"
    assert entries["data/hl-b"].linkname == "data/hl-a"
    assert entries["data/hl-b"].size == 0
    assert entries["usr/hl-c"].linkname == "data/hl-a"
    assert entries["fifo"].kind == "fifo"
    long_name = "d" * 60 + "/" + "e" * 60 + "/" + "f" * 120
    assert entries[long_name].kind == "file"
    assert entries["unicode-é.txt"].kind == "file"
    assert entries[os.fsdecode(b"caf\xe9/menu")].kind == "file"
    xattrs = entries["with-xattr"].xattrs
    assert xattrs["user.comment"] == b"made by layercore tests"
    assert xattrs["user.binary"] == b"\xff\x00\x01"
    for e in entries.values():
        assert (e.uid, e.gid, e.uname, e.gname) == (0, 0, "", "")
        assert e.mtime <= 1_700_000_000
    if IS_ROOT:
        assert (entries["null"].kind, entries["null"].devmajor, entries["null"].devminor) == (
            "char",
            1,
            3,
        )
        assert (entries["loop0"].kind, entries["loop0"].devmajor) == ("block", 7)


def test_offsets_point_at_the_file_bodies(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar.gz")
    tar = decompressed(layer.path)
    checked = 0
    for e in layer.entries():
        if e.kind == "file" and e.size:
            body = (rich_tree / e.path).read_bytes() if "\udce9" not in e.path else None
            if body is not None:
                assert tar[e.offset : e.offset + e.size] == body
                checked += 1
    assert checked > 5


def test_entry_order_is_gnu_tar_sort_name_order(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar", compression=None)
    gnu = subprocess.run(
        f"tar --sort=name --format=posix -cf - -C {rich_tree} . "
        "| tar --quoting-style=literal -tf -",
        shell=True,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout.splitlines()
    expected = [os.fsdecode(n.removeprefix(b"./").rstrip(b"/")) for n in gnu if n != b"./"]
    assert [e.path for e in layer.entries()] == expected
    names = [e.path for e in layer.entries()]
    assert names.index("a") < names.index("a/x") < names.index("a-b")


def test_owner_keep_records_ids_and_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "mine").write_text("x")
    (src / "theirs").write_text("y")
    if IS_ROOT:
        os.chown(src / "theirs", 1234, 5678)
    layer = Layer.from_dir(src, tmp_path / "l.tar", compression=None, owner="keep")
    entries = entries_by_path(layer)
    st = os.stat(src / "mine")
    assert (entries["mine"].uid, entries["mine"].gid) == (st.st_uid, st.st_gid)
    import pwd

    assert entries["mine"].uname == pwd.getpwuid(st.st_uid).pw_name
    if IS_ROOT:
        assert (entries["theirs"].uid, entries["theirs"].gid) == (1234, 5678)
        assert entries["theirs"].uname == ""  # no such user: no name, not a made-up one


def test_sockets_are_skipped_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_text("k")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        with pytest.warns(LayerWarning, match="sock"):
            layer = Layer.from_dir(src, tmp_path / "l.tar", compression=None)
    finally:
        sock.close()
    assert [e.path for e in layer.entries()] == ["keep"]


def test_files_of_8_gib_and_more_get_a_pax_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 8 * 1024**3 + 5
    with open(src / "huge", "wb") as f:
        f.truncate(size)  # sparse: costs no disk, reads as zeros
    layer = Layer.from_dir(src, tmp_path / "huge.tar.zst", compression="zstd", level=1)
    (entry,) = list(layer.entries())
    assert entry.size == size
    # PAX header + records + ustar header, the body padded to a block, two end blocks, padding.
    stream = 3 * 512 + size + (-size % 512) + 1024
    assert layer.uncompressed_size == stream + (-stream % 10240)
    with subprocess.Popen(["zstd", "-dc", str(layer.path)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        head = proc.stdout.read(1024)
        proc.kill()
    assert head[156:157] == b"x"
    assert f"size={size}\n".encode() in head[512:1024]


def test_empty_directory_makes_a_valid_empty_layer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    layer = Layer.from_dir(src, tmp_path / "empty.tar", compression=None)
    assert layer.path.read_bytes() == b"\0" * 10240
    assert list(layer.entries()) == []


# --- opening layers made by other tools ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "oldgnu"])
def test_reads_gnu_tar_archives(rich_tree: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"{fmt}.tar"
    src = rich_tree
    if fmt == "ustar":
        # ustar cannot hold the long names, non-ASCII names or xattrs: a plain subset.
        src = tmp_path / "plain"
        src.mkdir()
        (src / "dir").mkdir()
        (src / "dir" / "file").write_text("ustar\n")
        (src / ("p" * 90)).mkdir()
        (src / ("p" * 90) / ("q" * 90)).write_text("prefix field\n")
        os.symlink("/abs/target", src / "link")
    subprocess.run(
        ["tar", f"--format={fmt}", "--sort=name", "-cf", str(out), "-C", str(src), "."],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    layer = Layer.open(out)
    assert layer.compression is None
    assert layer.diff_id == sha256(out.read_bytes())
    with tarfile.open(out) as tf:
        expected = {
            m.name.removeprefix("./").rstrip("/"): m for m in tf.getmembers() if m.name != "."
        }
    got = entries_by_path(layer)
    assert set(got) == set(expected)
    for name, member in expected.items():
        e = got[name]
        assert e.size == (member.size if member.isreg() else 0)
        assert e.mode == member.mode
        assert e.mtime == int(member.mtime)
        if member.issym():
            assert e.kind == "symlink" and e.linkname == member.linkname
        if member.islnk():
            assert e.kind == "hardlink"


def test_reads_bsdtar_and_python_tarfile_archives(rich_tree: Path, tmp_path: Path) -> None:
    bsd = tmp_path / "bsd.tar.gz"
    subprocess.run(["bsdtar", "-czf", str(bsd), "-C", str(rich_tree), "."], check=True)
    entries = entries_by_path(Layer.open(bsd))
    assert entries["lib64"].linkname == "/usr/lib64"
    assert entries["with-xattr"].xattrs.get("user.comment") == b"made by layercore tests"

    py = tmp_path / "py.tar"
    with tarfile.open(py, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(rich_tree / "etc", arcname="etc")
        info = tarfile.TarInfo("usr/local/" + "z" * 120)
        data = b"python wrote this"
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    entries = entries_by_path(Layer.open(py))
    assert entries["usr/local/" + "z" * 120].size == len(b"python wrote this")
    assert entries["etc/passwd"].kind == "file"


def test_whiteout_and_opaque_entries_are_classified(tmp_path: Path) -> None:
    path = tmp_path / "changes.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ["etc/.wh.passwd", "var/.wh..wh..opq", "var/new"]:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    kinds = {e.path: e.kind for e in Layer.open(path).entries()}
    assert kinds == {"etc/.wh.passwd": "whiteout", "var/.wh..wh..opq": "opaque", "var/new": "file"}


# --- errors -------------------------------------------------------------------------------------


def test_missing_source_is_a_file_not_found_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        Layer.from_dir(tmp_path / "nope", tmp_path / "out.tar")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.path == str(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_file_as_source_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UnsupportedEntryError, match="not a directory"):
        Layer.from_dir(tmp_path / "f", tmp_path / "out.tar")


def test_bad_options_are_value_errors(rich_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression"):
        Layer.from_dir(rich_tree, tmp_path / "o", compression="lz4")
    with pytest.raises(ValueError, match="owner"):
        Layer.from_dir(rich_tree, tmp_path / "o", owner="nobody")
    with pytest.raises(ValueError, match="level"):
        Layer.from_dir(rich_tree, tmp_path / "o", compression="zstd", level=99)
    with pytest.raises(ValueError, match="threads"):
        Layer.from_dir(rich_tree, tmp_path / "o", threads=0)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to drop privileges to another user")
def test_an_unreadable_file_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    # pytest's tmp dirs are private to root: work where the other user can reach.
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="layercore-unreadable-", dir="/tmp"))
    os.chmod(base, 0o777)
    src = base / "src"
    src.mkdir(parents=True)
    (src / "ok").write_text("fine")
    (src / "locked").write_text("no")
    os.chmod(src / "locked", 0)
    out_dir = base / "out"
    out_dir.mkdir()
    for d in (src, out_dir):
        os.chmod(d, 0o777)
    script = (
        "import sys, layercore\n"
        "try:\n"
        f"    layercore.Layer.from_dir({str(src)!r}, {str(out_dir / 'l.tar')!r})\n"
        "except layercore.LayerIOError as e:\n"
        "    print(type(e).__name__, isinstance(e, PermissionError) or isinstance(e, OSError),"
        " e.path)\n"
    )

    prefix, env = nobody_python(base)
    result = subprocess.run([*prefix, "-c", script], capture_output=True, text=True, env=env)
    try:
        assert result.stdout.split() == ["LayerIOError", "True", str(src / "locked")], result.stderr
        assert list(out_dir.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_open_missing_layer(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        Layer.open(tmp_path / "missing.tar")


def test_verify_catches_a_changed_blob(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar", compression=None)
    layer.verify()
    data = bytearray(layer.path.read_bytes())
    # Flip a byte inside a file body: still a valid tar, different digest.
    body = next(e for e in layer.entries() if e.path == "etc/passwd")
    data[body.offset] ^= 0x01
    layer.path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError) as info:
        layer.verify()
    assert info.value.what == "digest"
    assert info.value.expected == layer.digest
    assert info.value.actual == sha256(bytes(data))
    assert info.value.path == str(layer.path)


def test_verify_catches_a_wrong_diff_id(rich_tree: Path, tmp_path: Path) -> None:
    built = Layer.from_dir(rich_tree, tmp_path / "layer.tar.gz")
    wrong = "sha256:" + "0" * 64
    opened = Layer.open(built.path, digest=built.digest, diff_id=wrong)
    assert opened.uncompressed_size is None
    with pytest.raises(DigestMismatchError) as info:
        opened.verify()
    assert info.value.what == "diff_id"
    assert info.value.actual == built.diff_id


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_truncated_layers_are_reported(
    rich_tree: Path, tmp_path: Path, compression: str | None
) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer", compression=compression)
    data = layer.path.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) // 2 + 7])  # mid-block, mid-stream
    with pytest.raises(TruncatedLayerError) as info:
        Layer.open(cut)
    assert info.value.path == str(cut)
    trusted = Layer.open(cut, digest=layer.digest, diff_id=layer.diff_id)
    with pytest.raises(CorruptLayerError):
        list(trusted.entries())
    with pytest.raises((CorruptLayerError, DigestMismatchError)):
        trusted.verify()


def test_corrupt_header_checksum_is_reported(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar", compression=None)
    data = bytearray(layer.path.read_bytes())
    data[0] ^= 0x20  # first name byte: the checksum no longer matches
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptLayerError, match="checksum"):
        Layer.open(bad)


def test_garbage_after_the_end_of_archive_is_reported(rich_tree: Path, tmp_path: Path) -> None:
    layer = Layer.from_dir(rich_tree, tmp_path / "layer.tar", compression=None)
    bad = tmp_path / "bad.tar"
    bad.write_bytes(layer.path.read_bytes() + b"trailing garbage")
    with pytest.raises(CorruptLayerError):
        Layer.open(bad)


def test_errors_share_one_base_class() -> None:
    for cls in (
        SourceNotFoundError,
        LayerIOError,
        CorruptLayerError,
        TruncatedLayerError,
        DigestMismatchError,
        UnsupportedEntryError,
    ):
        assert issubclass(cls, LayerError)
    assert issubclass(CorruptLayerError, ValueError)
    assert issubclass(LayerIOError, OSError)


def test_output_into_missing_directory_fails_cleanly(rich_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(LayerError) as info:
        Layer.from_dir(rich_tree, tmp_path / "no" / "such" / "dir" / "l.tar")
    assert "no/such/dir" in str(info.value)


# --- digests ------------------------------------------------------------------------------------


def test_digester_matches_hashlib_incrementally() -> None:
    d = layercore.Digester()
    h = hashlib.sha256()
    for chunk in [b"", b"abc", bytes(range(256)) * 1000, bytearray(b"xyz"), memoryview(b"12345")]:
        d.update(chunk)
        h.update(chunk)
        assert d.hexdigest() == h.hexdigest()
    assert d.digest() == "sha256:" + h.hexdigest()
    assert d.size == 3 + 256_000 + 3 + 5


def test_chain_id_follows_the_oci_definition() -> None:
    a = sha256(b"a")
    b = sha256(b"b")
    c = sha256(b"c")
    assert layercore.chain_id([a]) == a
    ab = sha256(f"{a} {b}".encode())
    assert layercore.chain_id([a, b]) == ab
    assert layercore.chain_id([a, b, c]) == sha256(f"{ab} {c}".encode())
    with pytest.raises(ValueError):
        layercore.chain_id([])
    with pytest.raises(ValueError):
        layercore.chain_id(["sha256:nothex"])


def test_sha256_file_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        layercore.sha256_file(tmp_path / "missing")
    shutil.rmtree(tmp_path)


def test_under_places_the_tree_with_owner_and_mode_overrides(tmp_path: Path) -> None:
    """What `COPY --chown=1000:100 --chmod=640 src /srv/app/` writes: the tree under srv/app,
    the two directories first with the attributes given, every entry owned by 1000:100 with
    mode 0640 (a symlink keeps its own), hardlinks pointing inside the placed tree."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f")
    os.link(src / "sub" / "f", src / "g")
    os.symlink("sub/f", src / "link")
    layer = Layer.from_dir(
        src,
        tmp_path / "layer.tar",
        compression=None,
        source_date_epoch=100,
        owner=(1000, 100),
        under="srv/app",
        under_dirs=[layercore.DirAttrs(0o755, 0, 0, 7), layercore.DirAttrs(0o700, 1000, 100, 8)],
        chmod=0o640,
    )
    rows = [(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.linkname) for e in layer.entries()]
    assert rows[:2] == [
        ("srv", "dir", 0o755, 0, 0, 7, None),
        ("srv/app", "dir", 0o700, 1000, 100, 8, None),
    ]
    by_path = {r[0]: r for r in rows}
    [link] = [r for r in rows if r[1] == "hardlink"]
    assert link[2:5] == (0o640, 1000, 100)
    assert link[6] in ("srv/app/g", "srv/app/sub/f") and link[6] != link[0]
    assert by_path["srv/app/link"][6] == "sub/f"
    assert by_path["srv/app/sub"][1:5] == ("dir", 0o640, 1000, 100)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(layer.path), "-C", str(out)], check=True)
    assert (out / "srv/app/sub/f").read_text() == "f"
    # The default for the directories: 0755, root, the source_date_epoch.
    plain = Layer.from_dir(
        src, tmp_path / "p.tar", compression=None, source_date_epoch=5, under="a"
    )
    first = next(iter(plain.entries()))
    assert (first.path, first.mode, first.uid, first.mtime) == ("a", 0o755, 0, 5)
    with pytest.raises(ValueError, match="not a clean relative path"):
        Layer.from_dir(src, tmp_path / "bad", under="a/../b")
    with pytest.raises(ValueError, match="under_dirs gives 1"):
        Layer.from_dir(src, tmp_path / "bad", under="a/b", under_dirs=[layercore.DirAttrs()])
    assert not (tmp_path / "bad").exists()
