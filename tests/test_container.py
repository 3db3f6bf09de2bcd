"""Container: a copy-on-write overlay of a Stack in user space, committed as a layer.

The stack below is built from real directories (Layer.from_dir, Layer.from_diff); every test
checks what the container shows and, where it matters, what the committed layer does when it is
stacked on the original layers and extracted (CONFORMANCE.md case 5: a directory deleted and
re-created shows only its new content).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import nobody_python
from layercore import Layer
from layercore.container import Container
from layercore.errors import SourceNotFoundError, UnsupportedEntryError
from layercore.stack import Stack

IS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent


def make_base(root: Path) -> tuple[list[Layer], Path]:
    """Two layers: a base tree, then a diff deleting one file and adding another.
    Returns the layers and the directory they extract to."""
    t0 = root / "t0"
    (t0 / "etc").mkdir(parents=True)
    (t0 / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    (t0 / "etc" / "gone").write_bytes(b"deleted by layer 1\n")
    (t0 / "etc" / "secret").write_bytes(b"s3cr3t\n")
    os.chmod(t0 / "etc" / "secret", 0o600)
    (t0 / "usr" / "bin").mkdir(parents=True)
    (t0 / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(t0 / "usr" / "bin" / "tool", 0o755)
    os.utime(t0 / "usr" / "bin" / "tool", (1_500_000_000, 1_500_000_000))
    (t0 / "usr" / "lib").mkdir()
    (t0 / "usr" / "lib" / "libc.so").write_bytes(b"\x7fELF" + bytes(range(256)))
    (t0 / "data").mkdir()
    os.chmod(t0 / "data", 0o750)
    (t0 / "data" / "a").write_bytes(b"a\n")
    (t0 / "data" / "sub").mkdir()
    (t0 / "data" / "sub" / "deep").write_bytes(b"deep\n")
    os.symlink("../etc/passwd", t0 / "data" / "passwd-link")
    os.setxattr(t0 / "data" / "a", "user.comment", b"kept on copy-up")
    (t0 / "top").write_bytes(b"top-level file\n")
    t1 = root / "t1"
    shutil.copytree(t0, t1, symlinks=True)
    os.unlink(t1 / "etc" / "gone")
    (t1 / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    l0 = Layer.from_dir(t0, root / "l0.tar.gz")
    l1 = Layer.from_diff(t0, t1, root / "l1.tar.gz")
    return [l0, l1], t1


@pytest.fixture
def base(tmp_path: Path) -> tuple[list[Layer], Path]:
    return make_base(tmp_path / "base")


def committed_tree(layers: list[Layer], c: Container, tmp: Path) -> tuple[Layer, Path]:
    layer = c.commit(tmp / "commit.tar.gz")
    dest = tmp / "extracted"
    Stack([*layers, layer]).extract(dest)
    return layer, dest


def names_in(layer: Layer) -> list[str]:
    return [e.path for e in layer.entries()]


def test_reads_fall_through_and_lookup_reports_the_stack(base, tmp_path):
    layers, _ = base
    stack = Stack(layers)
    c = stack.container(tmp_path / "upper")
    assert isinstance(c, Container)
    assert c.read("/etc/passwd") == b"root:x:0:0\n"
    assert c.read("data/passwd-link") == b"root:x:0:0\n"  # symlink followed inside
    e = c.lookup("etc/secret")
    assert e is not None and e.kind == "file" and e.mode == 0o600 and e.layer == 0
    assert c.lookup("etc/hosts") is not None and c.lookup("etc/hosts").layer == 1  # type: ignore[union-attr]
    assert c.lookup("etc/gone") is None
    assert c.lookup("/") is not None and c.lookup("/").kind == "dir"  # type: ignore[union-attr]
    assert c.listdir() == stack.listdir()
    assert c.listdir("etc") == ["hosts", "passwd", "secret"]
    assert [e.path for e in c.walk()] == [e.path for e in stack.walk()]
    assert os.listdir(tmp_path / "upper") == []  # reading copied nothing up
    with pytest.raises(SourceNotFoundError):
        c.read("etc/gone")
    with pytest.raises(FileNotFoundError):
        c.listdir("nope")
    with pytest.raises(UnsupportedEntryError):
        c.read("etc")
    with pytest.raises(UnsupportedEntryError):
        c.listdir("etc/passwd")


def test_write_copies_parents_up_and_leaves_the_stack_blob_alone(base, tmp_path):
    layers, _ = base
    before = [(layer.path.read_bytes(), layer.digest) for layer in layers]
    stack = Stack(layers)
    c = stack.container(tmp_path / "upper")
    c.write("etc/passwd", b"changed\n", mode=0o640)
    c.write("/data/sub/new", b"new\n")
    assert c.read("etc/passwd") == b"changed\n"
    assert stack.read("etc/passwd") == b"root:x:0:0\n"
    assert c.lookup("etc/passwd").mode == 0o640  # type: ignore[union-attr]
    assert c.lookup("etc/passwd").layer is None  # type: ignore[union-attr]
    # Parents were copied up with their attributes; their other children still show.
    up = tmp_path / "upper"
    assert stat.S_IMODE(os.lstat(up / "data").st_mode) == 0o750
    assert os.lstat(up / "data").st_gid == stack.lookup("data").gid  # type: ignore[union-attr]
    assert c.listdir("data/sub") == ["deep", "new"]
    walked = [e.path for e in c.walk()]
    assert walked.index("data/sub/deep") + 1 == walked.index("data/sub/new")
    assert c.listdir("etc") == ["hosts", "passwd", "secret"]
    assert [(p.read_bytes(), d) for p, d in ((lay.path, lay.digest) for lay in layers)] == before
    for layer in layers:
        layer.verify()
    with pytest.raises(SourceNotFoundError):
        c.write("no/such/dir/file", b"x")
    with pytest.raises(UnsupportedEntryError):
        c.write("etc/passwd/under-a-file", b"x")
    with pytest.raises(UnsupportedEntryError):
        c.write("etc", b"x")  # a directory is not replaced by a file
    with pytest.raises(UnsupportedEntryError):
        c.write("etc/.wh.sneaky", b"")
    _, tree = committed_tree(layers, c, tmp_path)
    assert (tree / "etc" / "passwd").read_bytes() == b"changed\n"
    assert stat.S_IMODE(os.lstat(tree / "etc" / "passwd").st_mode) == 0o640
    assert (tree / "data" / "sub" / "new").read_bytes() == b"new\n"
    assert (tree / "data" / "sub" / "deep").read_bytes() == b"deep\n"
    assert stat.S_IMODE(os.lstat(tree / "data").st_mode) == 0o750


def test_remove_of_a_lower_file_commits_a_whiteout(base, tmp_path):
    layers, _ = base
    c = Stack(layers).container(tmp_path / "upper")
    c.remove("etc/passwd")
    assert c.lookup("etc/passwd") is None
    assert c.listdir("etc") == ["hosts", "secret"]
    with pytest.raises(SourceNotFoundError):
        c.read("etc/passwd")
    with pytest.raises(SourceNotFoundError):
        c.remove("etc/passwd")
    wh = os.lstat(tmp_path / "upper" / "etc" / "passwd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0  # what overlayfs writes
    layer, tree = committed_tree(layers, c, tmp_path)
    assert "etc/.wh.passwd" in names_in(layer)
    assert sorted(os.listdir(tree / "etc")) == ["hosts", "secret"]
    # Removing something only the upper dir has leaves no whiteout.
    c.write("etc/tmpfile", b"x")
    c.remove("etc/tmpfile")
    assert not os.path.lexists(tmp_path / "upper" / "etc" / "tmpfile")


def test_remove_lower_dir_then_recreate_shows_only_new_content(base, tmp_path):
    """CONFORMANCE 5: a deleted and re-created directory hides everything it had below."""
    layers, _ = base
    c = Stack(layers).container(tmp_path / "upper")
    c.remove("data")
    assert c.lookup("data") is None and c.lookup("data/sub/deep") is None
    c.mkdir("data", 0o700)
    c.write("data/fresh", b"fresh\n")
    assert c.listdir("data") == ["fresh"]
    assert c.lookup("data/a") is None
    assert (
        os.getxattr(
            tmp_path / "upper" / "data",
            "trusted.overlay.opaque" if IS_ROOT else "user.overlay.opaque",
        )
        == b"y"
    )
    layer, tree = committed_tree(layers, c, tmp_path)
    names = names_in(layer)
    assert "data/.wh..wh..opq" in names or {"data/.wh.a", "data/.wh.sub"} <= set(names)
    assert sorted(os.listdir(tree / "data")) == ["fresh"]
    assert stat.S_IMODE(os.lstat(tree / "data").st_mode) == 0o700
    with pytest.raises(UnsupportedEntryError):
        c.mkdir("data")  # exists now


def test_rename_of_a_lower_directory(base, tmp_path):
    layers, _ = base
    stack = Stack(layers)
    c = stack.container(tmp_path / "upper")
    c.write("data/sub/added", b"added\n")
    c.rename("data", "moved")
    assert c.lookup("data") is None
    assert c.listdir("moved") == ["a", "passwd-link", "sub"]
    assert c.listdir("moved/sub") == ["added", "deep"]
    assert c.read("moved/a") == b"a\n"
    assert c.read("moved/passwd-link") == b"root:x:0:0\n"
    assert c.lookup("moved").mode == 0o750  # type: ignore[union-attr]
    assert c.lookup("moved/a").xattrs.get("user.comment") == b"kept on copy-up"  # type: ignore[union-attr]
    with pytest.raises(UnsupportedEntryError):
        c.rename("moved", "moved/inside")
    with pytest.raises(UnsupportedEntryError):
        c.rename("top", "etc")  # destination exists
    with pytest.raises(SourceNotFoundError):
        c.rename("data", "elsewhere")
    c.rename("top", "etc/top")
    assert c.read("etc/top") == b"top-level file\n" and c.lookup("top") is None
    layer, tree = committed_tree(layers, c, tmp_path)
    assert ".wh.data" in names_in(layer)
    assert not os.path.lexists(tree / "data") and not os.path.lexists(tree / "top")
    assert (tree / "moved" / "sub" / "deep").read_bytes() == b"deep\n"
    assert os.readlink(tree / "moved" / "passwd-link") == "../etc/passwd"
    assert stat.S_IMODE(os.lstat(tree / "moved").st_mode) == 0o750


def test_chmod_of_a_lower_file_keeps_its_content(base, tmp_path):
    layers, _ = base
    stack = Stack(layers)
    c = stack.container(tmp_path / "upper")
    c.chmod("usr/bin/tool", 0o700)
    e = c.lookup("usr/bin/tool")
    assert e is not None and e.mode == 0o700 and e.layer is None
    assert c.read("usr/bin/tool") == stack.read("usr/bin/tool")
    assert stack.lookup("usr/bin/tool").mode == 0o755  # type: ignore[union-attr]
    assert (
        os.lstat(tmp_path / "upper" / "usr" / "bin" / "tool").st_mtime
        == stack.lookup("usr/bin/tool").mtime
    )  # type: ignore[union-attr]
    c.chmod("data/a", 0o600)
    assert os.getxattr(tmp_path / "upper" / "data" / "a", "user.comment") == b"kept on copy-up"
    c.chmod("usr", 0o711)  # a directory is copied up alone; its children still show
    assert c.listdir("usr") == ["bin", "lib"]
    with pytest.raises(UnsupportedEntryError):
        c.chmod("data/passwd-link", 0o777)
    with pytest.raises(SourceNotFoundError):
        c.chmod("nope", 0o777)
    _, tree = committed_tree(layers, c, tmp_path)
    assert stat.S_IMODE(os.lstat(tree / "usr" / "bin" / "tool").st_mode) == 0o700
    assert (tree / "usr" / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert stat.S_IMODE(os.lstat(tree / "usr").st_mode) == 0o711
    assert (tree / "usr" / "lib" / "libc.so").exists()


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_copy_up_keeps_owners_as_root(tmp_path):
    src = tmp_path / "src"
    (src / "home").mkdir(parents=True)
    (src / "home" / "notes").write_bytes(b"mine\n")
    os.chown(src / "home", 1000, 1001)
    os.chown(src / "home" / "notes", 1000, 1001)
    layers = [Layer.from_dir(src, tmp_path / "l.tar", compression=None, owner="keep")]
    c = Stack(layers).container(tmp_path / "upper")
    c.chmod("home/notes", 0o600)
    c.write("home/new", b"root's\n")
    assert (c.lookup("home/notes").uid, c.lookup("home/notes").gid) == (1000, 1001)  # type: ignore[union-attr]
    layer = c.commit(tmp_path / "c.tar", compression=None)
    owners = {e.path: (e.uid, e.gid) for e in layer.entries()}
    assert owners["home/notes"] == (1000, 1001) and owners["home"] == (1000, 1001)
    assert owners["home/new"] == (0, 0)


def test_symlink_and_mkdir(base, tmp_path):
    layers, _ = base
    c = Stack(layers).container(tmp_path / "upper")
    c.mkdir("opt/", 0o750)
    c.symlink("../etc/hosts", "opt/hosts")
    assert c.lookup("opt/hosts").linkname == "../etc/hosts"  # type: ignore[union-attr]
    assert c.read("opt/hosts") == b"127.0.0.1 localhost\n"
    c.symlink("/usr/lib/libc.so", "libc")
    assert c.read("libc").startswith(b"\x7fELF")
    c.symlink("loop", "loop")
    with pytest.raises(UnsupportedEntryError):
        c.read("loop")
    with pytest.raises(UnsupportedEntryError):
        c.symlink("x", "etc/passwd")  # exists
    with pytest.raises(UnsupportedEntryError):
        c.mkdir("../escape")
    # mkdir over a path the stack never had is not opaque.
    assert not os.listxattr(tmp_path / "upper" / "opt")
    _, tree = committed_tree(layers, c, tmp_path)
    assert os.readlink(tree / "opt" / "hosts") == "../etc/hosts"
    assert stat.S_IMODE(os.lstat(tree / "opt").st_mode) == 0o750


def test_xattr_whiteouts_work_in_subdirectories(base, tmp_path):
    """The form for when mknod is refused: an xattr-marked empty file in a marked dir."""
    layers, _ = base
    c = Container(Stack(layers), tmp_path / "upper", whiteouts="xattr")
    c.remove("etc/passwd")
    c.remove("data/sub")
    assert c.lookup("etc/passwd") is None and c.listdir("data") == ["a", "passwd-link"]
    assert stat.S_ISREG(os.lstat(tmp_path / "upper" / "etc" / "passwd").st_mode)
    c.write("etc/passwd", b"back\n")
    assert c.read("etc/passwd") == b"back\n"
    layer, tree = committed_tree(layers, c, tmp_path)
    assert "data/.wh.sub" in names_in(layer)
    assert (tree / "etc" / "passwd").read_bytes() == b"back\n"
    assert sorted(os.listdir(tree / "data")) == ["a", "passwd-link"]


@pytest.mark.parametrize("form", ["device", "xattr"])
def test_deleting_a_top_level_path_commits_a_whiteout_in_both_forms(base, tmp_path, form):
    layers, _ = base
    if form == "device" and not IS_ROOT:
        probe = tmp_path / "probe"
        try:
            os.mknod(probe, stat.S_IFCHR, os.makedev(0, 0))
        except OSError:
            pytest.skip("mknod of a whiteout device is refused here")
        probe.unlink()
    stack = Stack(layers)
    upper = tmp_path / "upper"
    c = Container(stack, upper, whiteouts=form)
    c.remove("top")
    c.remove("/usr")
    c.rename("data", "moved")
    assert c.lookup("top") is None and c.lookup("usr") is None and c.lookup("data") is None
    assert c.listdir() == ["etc", "moved"]
    st_top = os.lstat(upper / "top")
    assert stat.S_ISCHR(st_top.st_mode) if form == "device" else stat.S_ISREG(st_top.st_mode)
    # A new session over the same upper dir reads the whiteouts back.
    again = Container(stack, upper, whiteouts=form)
    assert again.listdir() == ["etc", "moved"]
    layer, tree = committed_tree(layers, c, tmp_path)
    names = names_in(layer)
    assert {".wh.top", ".wh.usr", ".wh.data"} <= set(names)
    assert not any(n == "top" or n.startswith("usr") for n in names)
    assert sorted(os.listdir(tree)) == ["etc", "moved"]
    assert (tree / "moved" / "a").read_bytes() == b"a\n"
    # Re-created after the deletion: the file is back, no whiteout needed for it any more.
    c.write("top", b"new top\n")
    (tmp_path / "again").mkdir()
    layer, tree = committed_tree(layers, c, tmp_path / "again")
    assert ".wh.top" not in names_in(layer) and "top" in names_in(layer)
    assert (tree / "top").read_bytes() == b"new top\n"


def test_the_parents_of_markers_show_in_the_container_as_in_the_stack(tmp_path):
    """A layer holding only ``a/.wh.x`` makes ``a`` a directory (as flatten writes it); the
    container sees it, copies it up with its implied mode and commits it."""

    def tar_layer(path: Path, names: list[str]) -> Path:
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            for name in names:
                info = tarfile.TarInfo(name)
                info.mtime = 1_000_000
                tf.addfile(info, io.BytesIO(b""))
        return path

    layers = [
        Layer.open(tar_layer(tmp_path / "l0.tar", ["keep"])),
        Layer.open(tar_layer(tmp_path / "l1.tar", ["a/.wh.x", "o/.wh..wh..opq"])),
    ]
    stack = Stack(layers)
    c = stack.container(tmp_path / "upper")
    assert [e.path for e in c.walk()] == [e.path for e in stack.walk()] == ["a", "keep", "o"]
    a = c.lookup("a")
    assert a is not None and (a.kind, a.mode, a.mtime, a.layer) == ("dir", 0o755, 0, 1)
    c.write("a/new", b"n")
    assert c.listdir("a") == ["new"]
    copied = os.lstat(tmp_path / "upper" / "a")
    assert stat.S_ISDIR(copied.st_mode) and stat.S_IMODE(copied.st_mode) == 0o755
    layer = c.commit(tmp_path / "commit.tar")
    assert names_in(layer) == ["a", "a/new"]
    after = Stack([*layers, layer])
    assert [e.path for e in after.walk()] == ["a", "a/new", "keep", "o"]
    flat = after.flatten(tmp_path / "flat.tar", compression=None)
    assert [e.path for e in flat.entries()] == ["a", "a/new", "keep", "o"]


NON_ROOT_SCRIPT = textwrap.dedent(
    """
    import os, sys, stat
    from layercore import Layer
    from layercore.stack import Stack
    work = sys.argv[1]
    layers = [Layer.open(os.path.join(work, n)) for n in ("l0.tar.gz", "l1.tar.gz")]
    c = Stack(layers).container(os.path.join(work, "upper"))
    c.remove("etc/passwd")
    c.remove("top")
    c.remove("usr/lib")
    c.mkdir("usr/lib")
    c.write("usr/lib/fresh", b"fresh")
    c.chmod("etc/secret", 0o640)
    assert c.listdir("usr/lib") == ["fresh"], c.listdir("usr/lib")
    assert os.getxattr(os.path.join(work, "upper", "usr", "lib"), "user.overlay.opaque") == b"y"
    layer = c.commit(os.path.join(work, "commit.tar.gz"))
    Stack(layers + [layer]).extract(os.path.join(work, "out"))
    print(sorted(e.path for e in layer.entries()))
    """
)


@pytest.mark.skipif(not IS_ROOT, reason="drops privileges with setpriv")
@pytest.mark.parametrize("form", ["auto", "xattr"])
def test_non_root_container(form):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing")
    work = Path(tempfile.mkdtemp(prefix="lc-container-"))
    try:
        os.chmod(work, 0o777)
        layers, _ = make_base(work / "b")
        for layer in layers:
            shutil.copy(layer.path, work / layer.path.name)
            os.chmod(work / layer.path.name, 0o644)
        script = NON_ROOT_SCRIPT
        if form == "xattr":
            script = script.replace(
                'c = Stack(layers).container(os.path.join(work, "upper"))',
                "from layercore.container import Container\n"
                'c = Container(Stack(layers), os.path.join(work, "upper"), whiteouts="xattr")',
            )
        prefix, env = nobody_python(work)
        run = subprocess.run(
            [*prefix, "-c", script, str(work)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        names = run.stdout
        assert "etc/.wh.passwd" in names and "usr/lib/.wh..wh..opq" in names
        assert "'.wh.top'" in names
        out = work / "out"
        assert sorted(os.listdir(out / "usr" / "lib")) == ["fresh"]
        assert not (out / "etc" / "passwd").exists()
        assert not (out / "top").exists()
        assert stat.S_IMODE(os.lstat(out / "etc" / "secret").st_mode) == 0o640
        assert os.lstat(work / "upper" / "usr" / "lib").st_uid == 65534
        if form == "xattr":
            assert stat.S_ISREG(os.lstat(work / "upper" / "etc" / "passwd").st_mode)
            assert stat.S_ISREG(os.lstat(work / "upper" / "top").st_mode)
    finally:
        shutil.rmtree(work)


# --- property: the container agrees with a plain directory ---------------------------------

NAMES = ["a", "b", "sub", "etc", "data", "top", "x"]
KNOWN = [
    "etc", "etc/passwd", "etc/secret", "etc/hosts", "etc/gone", "data", "data/a", "data/sub",
    "data/sub/deep", "data/passwd-link", "usr", "usr/bin", "usr/bin/tool", "usr/lib",
    "usr/lib/libc.so", "top", "new", "etc/new", "data/new", "data/sub/new", "new/x",
]  # fmt: skip
PATHS = st.one_of(
    st.sampled_from(KNOWN),
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join),
)
OPS = st.one_of(
    st.tuples(
        st.just("write"), PATHS, st.binary(max_size=20), st.sampled_from([0o644, 0o600, 0o755])
    ),
    st.tuples(st.just("mkdir"), PATHS, st.sampled_from([0o755, 0o700])),
    st.tuples(
        st.just("symlink"), st.sampled_from(["a", "../etc/passwd", "sub/deep", "nowhere"]), PATHS
    ),
    st.tuples(st.just("remove"), PATHS),
    st.tuples(st.just("rename"), PATHS, PATHS),
    st.tuples(st.just("chmod"), PATHS, st.sampled_from([0o600, 0o755, 0o700])),
)


def _is_real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _apply_plain(plain: Path, op: tuple) -> bool:  # type: ignore[type-arg]
    """Applies ``op`` to the plain directory if it is valid there; False if skipped."""
    kind = op[0]
    if kind == "write":
        _, rel, data, mode = op
        p = plain / rel
        if not _is_real_dir(p.parent) or _is_real_dir(p):
            return False
        if os.path.lexists(p):
            os.unlink(p)
        p.write_bytes(data)
        os.chmod(p, mode)
    elif kind in ("mkdir", "symlink"):
        rel = op[1] if kind == "mkdir" else op[2]
        p = plain / rel
        if not _is_real_dir(p.parent) or os.path.lexists(p):
            return False
        if kind == "mkdir":
            p.mkdir()
            os.chmod(p, op[2])
        else:
            os.symlink(op[1], p)
    elif kind == "remove":
        p = plain / op[1]
        if not os.path.lexists(p) or not _is_real_dir(p.parent):
            return False
        if _is_real_dir(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)
    elif kind == "rename":
        src, dst = plain / op[1], plain / op[2]
        if not os.path.lexists(src) or not _is_real_dir(src.parent):
            return False
        if os.path.lexists(dst) or not _is_real_dir(dst.parent):
            return False
        if (op[2] + "/").startswith(op[1] + "/"):
            return False
        os.rename(src, dst)
    elif kind == "chmod":
        p = plain / op[1]
        if not os.path.lexists(p) or p.is_symlink() or not _is_real_dir(p.parent):
            return False
        os.chmod(p, op[2])
    return True


def _apply_container(c: Container, op: tuple) -> None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "write":
        c.write(op[1], op[2], op[3])
    elif kind == "mkdir":
        c.mkdir(op[1], op[2])
    elif kind == "symlink":
        c.symlink(op[1], op[2])
    elif kind == "remove":
        c.remove(op[1])
    elif kind == "rename":
        c.rename(op[1], op[2])
    elif kind == "chmod":
        c.chmod(op[1], op[2])


def _snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str | None]]:
    out: dict[str, tuple[str, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", 0, os.readlink(p))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st_.st_mode), None)
            else:
                out[rel] = ("file", stat.S_IMODE(st_.st_mode), p.read_bytes())
    return out


def _check_agree(c: Container, plain: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(plain):
        rel = os.path.relpath(dirpath, plain)
        rel = "" if rel == "." else rel
        assert c.listdir(rel) == sorted(os.listdir(dirpath)), rel
        for name in filenames:
            p = Path(dirpath) / name
            crel = f"{rel}/{name}" if rel else name
            try:
                body = p.read_bytes()
            except OSError:
                assert c.lookup(crel) is not None
                continue
            assert c.read(crel) == body, crel


@pytest.mark.skipif(not IS_ROOT, reason="modes of extracted trees need root to match exactly")
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(OPS, min_size=1, max_size=16))
def test_random_operations_match_a_plain_directory(base, ops):
    layers, _ = base
    work = Path(tempfile.mkdtemp(prefix="lc-container-prop-"))
    try:
        stack = Stack(layers)
        plain = work / "plain"
        stack.extract(plain)
        c = stack.container(work / "upper")
        for op in ops:
            if _apply_plain(plain, op):
                _apply_container(c, op)
                _check_agree(c, plain)
        layer = c.commit(work / "commit.tar.gz")
        dest = work / "dest"
        Stack([*layers, layer]).extract(dest)
        assert _snapshot(dest) == _snapshot(plain)
    finally:
        shutil.rmtree(work)
