"""Layer.from_diff with a Stack as the lower side: the changeset from an image's merged view to a
root filesystem, without extracting the image.

The oracle is the two-directory diff against the stack extracted (which keeps modes, owners and
whole-second mtimes): same entries, same order, same bytes. Applying the layer on top of the
stack must give the upper tree.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layercore import Layer
from layercore.diff import CompareMode
from layercore.stack import Stack
from test_diff import (
    PATHS,
    T0,
    T1,
    Snapshot,
    copy_tree,
    freeze,
    listing,
    mutate,
    put,
    remove,
)

_TAGS = itertools.count()


# --- building and comparing trees --------------------------------------------------------------


def snapshot(root: Path) -> Snapshot:
    """Every entry's type, mode, owner, body/target, whole-second mtime and xattrs, plus the
    hardlink groups."""
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
                s.st_mtime_ns // 10**9,
                xattrs,
            )
    links = sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1)
    return entries, links


def full_listing(layer: Layer) -> list[tuple[object, ...]]:
    return [
        (e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime, e.linkname, e.xattrs)
        for e in layer.entries()
    ]


def diff_stack(
    tmp: Path,
    stack: Stack,
    upper: Path,
    *,
    compare: CompareMode = "metadata",
    check_mtimes: bool = True,
) -> Layer:
    """The stack diff, checked against the directory diff of the stack extracted and against
    the upper tree once applied on top of the stack."""
    tag = next(_TAGS)
    layer = Layer.from_diff(
        stack, upper, tmp / f"stack-{tag}.tar", compression=None, compare=compare
    )
    lower_dir = tmp / f"lower-{tag}"
    stack.extract(lower_dir)
    by_dir = Layer.from_diff(
        lower_dir, upper, tmp / f"dir-{tag}.tar", compression=None, compare=compare
    )
    assert full_listing(layer) == full_listing(by_dir)
    assert layer.diff_id == by_dir.diff_id
    applied = tmp / f"applied-{tag}"
    Stack([*stack.layers, layer]).extract(applied)
    got, want = snapshot(applied), snapshot(upper)
    if not check_mtimes:
        # compare="content" keeps the stack's mtime for a body it did not rewrite.
        got = ({k: v[:5] + v[6:] for k, v in got[0].items()}, got[1])
        want = ({k: v[:5] + v[6:] for k, v in want[0].items()}, want[1])
    assert got == want
    return layer


def make_base(root: Path) -> Path:
    put(root, "etc/passwd", "root:x:0:0\n")
    put(root, "etc/hosts", "127.0.0.1 localhost\n")
    put(root, "etc/secret", "s3cr3t\n", mode=0o600)
    put(root, "usr/bin/tool", "#!/bin/sh\necho tool\n", mode=0o755)
    put(root, "usr/lib/a.so", "a" * 5000)
    put(root, "usr/lib/b.so", "b" * 100)
    put(root, "var/cache/one", "1")
    put(root, "var/cache/two", "2")
    put(root, "opt/app/conf/main.conf", "main\n")
    put(root, "opt/app/bin/run", "run\n", mode=0o755)
    put(root, "data/hl-a", "shared body\n")
    os.link(root / "data/hl-a", root / "data/hl-b")
    os.symlink("../etc/passwd", root / "usr/passwd-link")
    os.utime(root / "usr/passwd-link", (T0, T0), follow_symlinks=False)
    freeze(root)
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


@pytest.fixture
def layered(tmp_path: Path, base: Path) -> Stack:
    """Three layers: the base, a layer that deletes files, a directory and replaces
    ``opt/app`` (an opaque directory), and one that modifies ``usr/lib`` again."""
    l0 = Layer.from_dir(base, tmp_path / "l0.tar", compression="gzip")
    step1 = copy_tree(base, tmp_path / "step1")
    (step1 / "etc/hosts").unlink()
    shutil.rmtree(step1 / "var/cache")
    shutil.rmtree(step1 / "opt/app")
    put(step1, "opt/app/new", "new app\n", mtime=T1)
    put(step1, "usr/lib/c.so", "c" * 10, mtime=T1)
    freeze(step1, T1)
    l1 = Layer.from_diff(base, step1, tmp_path / "l1.tar", compression="zstd")
    kinds = dict(listing(l1))
    assert kinds.get("opt/app/.wh..wh..opq") == "opaque"
    assert kinds.get("etc/.wh.hosts") == "whiteout"
    step2 = copy_tree(step1, tmp_path / "step2")
    put(step2, "usr/lib/b.so", "B" * 100, mtime=T1 + 5)
    os.chmod(step2 / "usr/lib", 0o700)
    freeze(step2, T1 + 5)
    l2 = Layer.from_diff(step1, step2, tmp_path / "l2.tar", compression=None)
    return Stack([l0, l1, l2])


def upper_of(tmp: Path, stack: Stack, name: str = "upper") -> Path:
    upper = tmp / name
    stack.extract(upper)
    return upper


# --- cases -------------------------------------------------------------------------------------


def test_an_unchanged_tree_gives_a_layer_without_entries(tmp_path: Path, layered: Stack) -> None:
    upper = upper_of(tmp_path, layered)
    layer = diff_stack(tmp_path, layered, upper)
    assert listing(layer) == []
    # Only the end of the archive: zero blocks, padded to a tar record.
    assert layer.path.read_bytes() == bytes(layer.size)


def test_sub_second_upper_mtimes_match_the_stacks_whole_seconds(
    tmp_path: Path, layered: Stack
) -> None:
    upper = upper_of(tmp_path, layered)
    p = upper / "etc/passwd"
    os.utime(p, ns=(T0 * 10**9 + 123_456_789, T0 * 10**9 + 123_456_789))
    assert listing(diff_stack(tmp_path, layered, upper)) == []
    os.utime(p, (T0 + 1, T0 + 1))
    assert listing(diff_stack(tmp_path, layered, upper)) == [
        ("etc", "dir"),
        ("etc/passwd", "file"),
    ]


def test_deleting_a_file_of_a_lower_layer_is_a_whiteout(tmp_path: Path, layered: Stack) -> None:
    upper = upper_of(tmp_path, layered)
    (upper / "etc/passwd").unlink()
    os.utime(upper / "etc", (T0, T0))
    layer = diff_stack(tmp_path, layered, upper)
    assert listing(layer) == [("etc", "dir"), ("etc/.wh.passwd", "whiteout")]
    assert Stack([*layered.layers, layer]).lookup("etc/passwd") is None


def test_deleting_a_directory_is_one_whiteout(tmp_path: Path, layered: Stack) -> None:
    upper = upper_of(tmp_path, layered)
    shutil.rmtree(upper / "usr/bin")
    os.utime(upper / "usr", (T0, T0))
    layer = diff_stack(tmp_path, layered, upper)
    assert listing(layer) == [("usr", "dir"), ("usr/.wh.bin", "whiteout")]


def test_replacing_a_directory_that_a_later_layer_modified(tmp_path: Path, layered: Stack) -> None:
    # usr/lib comes from layer 0, layer 1 added c.so, layer 2 rewrote b.so and its mode.
    assert layered.history("usr/lib") == [(0, "added"), (1, "modified"), (2, "modified")]
    upper = upper_of(tmp_path, layered)
    shutil.rmtree(upper / "usr/lib")
    put(upper, "usr/lib/z.so", "z", mtime=T1 + 9)
    layer = diff_stack(tmp_path, layered, upper)
    # Opaque: lib, marker, z.so (3) beats lib, 3 whiteouts, z.so (5).
    assert listing(layer) == [
        ("usr", "dir"),
        ("usr/lib", "dir"),
        ("usr/lib/.wh..wh..opq", "opaque"),
        ("usr/lib/z.so", "file"),
    ]


def test_a_directory_an_upper_layer_made_opaque_is_diffed_against_its_new_content(
    tmp_path: Path, layered: Stack
) -> None:
    upper = upper_of(tmp_path, layered)
    # opt/app/conf is gone from the view (opaque in layer 1): recreating it is an addition.
    put(upper, "opt/app/conf/main.conf", "back\n", mtime=T1 + 1)
    os.utime(upper / "opt/app/conf", (T1, T1))
    os.utime(upper / "opt/app", (T1, T1))
    layer = diff_stack(tmp_path, layered, upper)
    assert listing(layer) == [
        ("opt", "dir"),
        ("opt/app", "dir"),
        ("opt/app/conf", "dir"),
        ("opt/app/conf/main.conf", "file"),
    ]


def test_type_changes_and_new_entries(tmp_path: Path, layered: Stack) -> None:
    upper = upper_of(tmp_path, layered)
    remove(upper / "usr/bin/tool")
    (upper / "usr/bin/tool").mkdir()
    put(upper, "usr/bin/tool/inner", "i", mtime=T1)
    remove(upper / "usr/passwd-link")
    put(upper, "usr/passwd-link", "now a file", mtime=T1)
    os.symlink("/etc/hosts", upper / "etc/hosts-link")
    os.mkfifo(upper / "fifo")
    layer = diff_stack(tmp_path, layered, upper)
    kinds = dict(listing(layer))
    assert kinds["usr/bin/tool"] == "dir"
    assert kinds["usr/passwd-link"] == "file"
    assert kinds["etc/hosts-link"] == "symlink"
    assert kinds["fifo"] == "fifo"


def test_a_hardlink_of_the_stack_compares_as_a_link_to_the_same_file(
    tmp_path: Path, layered: Stack
) -> None:
    assert {e.path: e.kind for e in layered.walk()}["data/hl-b"] == "hardlink"
    upper = upper_of(tmp_path, layered)
    assert listing(diff_stack(tmp_path, layered, upper)) == []
    # Breaking the link (same body, same metadata) must be written: extraction would
    # otherwise keep the two names on one inode.
    p = upper / "data/hl-b"
    p.unlink()
    put(upper, "data/hl-b", "shared body\n", mtime=T0)
    os.utime(upper / "data", (T0, T0))
    layer = diff_stack(tmp_path, layered, upper)
    assert ("data/hl-b", "file") in listing(layer) or ("data/hl-a", "file") in listing(layer)


def test_content_compare_ignores_an_mtime_only_change(tmp_path: Path, layered: Stack) -> None:
    upper = upper_of(tmp_path, layered)
    os.utime(upper / "usr/lib/a.so", (T1 + 100, T1 + 100))
    metadata = diff_stack(tmp_path, layered, upper)
    assert listing(metadata) == [("usr", "dir"), ("usr/lib", "dir"), ("usr/lib/a.so", "file")]
    content = diff_stack(tmp_path, layered, upper, compare="content", check_mtimes=False)
    assert listing(content) == []


def test_content_compare_sees_a_same_size_rewrite(tmp_path: Path, layered: Stack) -> None:
    upper = upper_of(tmp_path, layered)
    p = upper / "usr/lib/a.so"
    body = bytearray(p.read_bytes())
    body[4321] = ord("X")  # inside the body, same size, mtime restored
    p.write_bytes(bytes(body))
    os.utime(p, (T0, T0))
    blind = Layer.from_diff(layered, upper, tmp_path / "blind.tar")
    assert listing(blind) == []  # metadata cannot see it
    layer = diff_stack(tmp_path, layered, upper, compare="content", check_mtimes=False)
    assert listing(layer) == [("usr", "dir"), ("usr/lib", "dir"), ("usr/lib/a.so", "file")]
    # The body comes from a zstd layer (b.so from the plain one): both are streamed.
    p = upper / "usr/lib/b.so"
    p.write_bytes(b"C" * 100)
    os.utime(p, (T1 + 5, T1 + 5))
    layer = diff_stack(tmp_path, layered, upper, compare="content", check_mtimes=False)
    assert ("usr/lib/b.so", "file") in listing(layer)


def test_a_single_layer_stack_matches_the_directory_diff(tmp_path: Path, base: Path) -> None:
    stack = Stack([Layer.from_dir(base, tmp_path / "only.tar.gz")])
    upper = upper_of(tmp_path, stack)
    (upper / "etc/secret").unlink()
    put(upper, "etc/new", "n", mtime=T1)
    os.chmod(upper / "opt/app/bin/run", 0o700)
    os.setxattr(upper / "usr/lib/b.so", "user.tag", b"v1")
    shutil.rmtree(upper / "var")
    layer = diff_stack(tmp_path, stack, upper)
    kinds = dict(listing(layer))
    assert kinds["etc/.wh.secret"] == "whiteout"
    assert kinds[".wh.var"] == "whiteout"
    assert kinds["opt/app/bin/run"] == "file"
    assert kinds["usr/lib/b.so"] == "file"


def test_an_empty_stack_diffs_against_nothing(tmp_path: Path, base: Path) -> None:
    empty = tmp_path / "empty-src"
    empty.mkdir()
    stack = Stack([Layer.from_dir(empty, tmp_path / "e.tar")])
    layer = diff_stack(tmp_path, stack, base)
    assert len(listing(layer)) == len(snapshot(base)[0])


def test_a_missing_upper_fails_and_writes_nothing(tmp_path: Path, layered: Stack) -> None:
    from layercore.errors import SourceNotFoundError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceNotFoundError):
        Layer.from_diff(layered, tmp_path / "nope", out / "l.tar")
    assert list(out.iterdir()) == []


# --- property: random stacks and random mutations ----------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "a-b", "d.d"])
OPS = st.sampled_from(["delete", "write", "chmod", "touch", "mkdir", "symlink", "link", "recreate"])
MUTATIONS = st.lists(st.tuples(OPS, PATHS, st.text(alphabet="pq", max_size=5)), max_size=8)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(MUTATIONS, max_size=2),
    last=MUTATIONS,
    compare=st.sampled_from(["metadata", "content"]),
)
def test_random_stacks_and_mutations_agree_with_the_directory_diff(
    steps: list[list[tuple[str, str, str]]],
    last: list[tuple[str, str, str]],
    compare: CompareMode,
) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "t0"
        tree.mkdir()
        put(tree, "a/b", "ab")
        put(tree, "b", "b")
        os.link(tree / "b", tree / "c")
        freeze(tree)
        layers = [Layer.from_dir(tree, tmp / "l0.tar", compression="gzip")]
        for i, mutations in enumerate(steps, start=1):
            nxt = copy_tree(tree, tmp / f"t{i}")
            mutate(nxt, mutations, T0 + 1000 * i)
            layers.append(Layer.from_diff(tree, nxt, tmp / f"l{i}.tar", compression=None))
            tree = nxt
        stack = Stack(layers)
        upper = tmp / "upper"
        stack.extract(upper)
        mutate(upper, last, T1)
        diff_stack(tmp, stack, upper, compare=compare, check_mtimes=compare == "metadata")
