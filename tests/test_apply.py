"""Applying layers onto a directory and extracting stacks (layercore.extract).

Layers are written by hand with Python's tarfile (so hostile names stay hostile) or built with
Layer.from_dir; the resulting trees are compared with what the OCI rules say, and with GNU tar.
Numbers in test names refer to the cases of CONFORMANCE.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import nobody_python
from layercore import Layer, reference
from layercore import Stack as LayerStack
from layercore.errors import (
    CorruptLayerError,
    LayerIOError,
    LayerWarning,
    SourceNotFoundError,
    TruncatedLayerError,
    UnsupportedEntryError,
)
from layercore.extract import apply, extract
from layercore.layer import Compression, Owner

IS_ROOT = os.geteuid() == 0
MTIME = 1_600_000_000

# ----- writing layers by hand ----------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes]


def _info(name: str, kind: bytes, mode: int, mtime: int, uid: int, gid: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = uid
    info.gid = gid
    return info


def reg(
    name: str,
    data: bytes | str = b"",
    *,
    mode: int = 0o644,
    mtime: int = MTIME,
    uid: int = 0,
    gid: int = 0,
    xattrs: dict[str, str] | None = None,
) -> Member:
    body = data.encode() if isinstance(data, str) else data
    info = _info(name, tarfile.REGTYPE, mode, mtime, uid, gid)
    info.size = len(body)
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return info, body


def d(
    name: str,
    *,
    mode: int = 0o755,
    mtime: int = MTIME,
    uid: int = 0,
    gid: int = 0,
    xattrs: dict[str, str] | None = None,
) -> Member:
    info = _info(name, tarfile.DIRTYPE, mode, mtime, uid, gid)
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return info, b""


def sym(name: str, target: str) -> Member:
    info = _info(name, tarfile.SYMTYPE, 0o777, MTIME, 0, 0)
    info.linkname = target
    return info, b""


def hard(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE, 0o644, MTIME, 0, 0)
    info.linkname = target
    return info, b""


def dev(name: str, kind: bytes, major: int, minor: int, mode: int = 0o666) -> Member:
    info = _info(name, kind, mode, MTIME, 0, 0)
    info.devmajor = major
    info.devminor = minor
    return info, b""


def wh(path: str) -> Member:
    """The whiteout of `path`."""
    parent, _, name = path.rpartition("/")
    return reg(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opq(directory: str) -> Member:
    return reg(f"{directory}/.wh..wh..opq")


def write_layer(path: Path, members: list[Member], compression: str | None = None) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, body in members:
            tar.addfile(info, io.BytesIO(body) if body else None)
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data, mtime=0) if compression == "gzip" else data)
    return path


class Stack:
    """Layers written into one directory and applied, one at a time, onto `root`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.root.mkdir()
        self.blobs = base / "blobs"
        self.blobs.mkdir()
        self.count = 0

    def layer(self, members: list[Member], compression: str | None = None) -> Path:
        self.count += 1
        return write_layer(self.blobs / f"layer{self.count}.tar", members, compression)

    def apply(self, members: list[Member]) -> list[str]:
        return apply(self.layer(members), self.root)

    def tree(self) -> dict[str, str]:
        return tree(self.root)


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def tree(root: Path) -> dict[str, str]:
    """Every path below `root`: `dir/` for directories, `-> target` for symlinks, the content
    of regular files, the kind of anything else. Never follows a symlink."""
    out: dict[str, str] = {}

    def walk(rel: str) -> None:
        for name in sorted(os.listdir(root / rel)):
            r = f"{rel}/{name}" if rel else name
            p = root / r
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                out[r + "/"] = "dir"
                walk(r)
            elif stat.S_ISLNK(st.st_mode):
                out[r] = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[r] = p.read_bytes().decode(errors="replace")
            else:
                out[r] = stat.filemode(st.st_mode)[0]

    walk("")
    assert not any(Path(p.rstrip("/")).name.startswith(".wh.") for p in out), (
        f"whiteout names must never appear in a tree (case 9): {sorted(out)}"
    )
    return out


def snapshot(root: Path, skip: Path) -> dict[str, tuple[object, ...]]:
    """Everything below `root` except `skip`: kind, mode, size, mtime, content hash, target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        out[dirpath] = _snap(Path(dirpath))
        for name in filenames + [n for n in dirnames if (Path(dirpath) / n).is_symlink()]:
            out[os.path.join(dirpath, name)] = _snap(Path(dirpath) / name)
    return out


def _snap(p: Path) -> tuple[object, ...]:
    st = p.lstat()
    body: object = None
    if stat.S_ISREG(st.st_mode):
        body = hashlib.sha256(p.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        body = os.readlink(p)
    return (st.st_mode, st.st_size, st.st_mtime_ns, body)


# ----- whiteouts and opaque directories (cases 1-10) -------------------------------------------


@pytest.mark.parametrize("whiteout_first", [True, False], ids=["case1-wh-first", "case2-wh-after"])
def test_an_entry_survives_its_own_layers_whiteout(stack: Stack, whiteout_first: bool) -> None:
    stack.apply([d("a"), reg("a/x", "lower"), reg("a/other", "lower")])
    layer = [reg("a/x", "upper"), wh("a/x")]
    stack.apply(layer[::-1] if whiteout_first else layer)
    assert stack.tree() == {"a/": "dir", "a/x": "upper", "a/other": "lower"}


def test_a_directory_survives_its_own_layers_whiteout_without_its_lower_children(
    stack: Stack,
) -> None:
    stack.apply([d("d"), reg("d/old", "1"), d("d/sub"), reg("d/sub/old", "1")])
    stack.apply([d("d"), reg("d/new", "2"), d("d/sub"), wh("d")])
    assert stack.tree() == {"d/": "dir", "d/new": "2", "d/sub/": "dir"}


@pytest.mark.parametrize("marker_first", [False, True], ids=["case3-after", "case4-before"])
def test_opaque_marker_hides_lower_children_wherever_it_is(
    stack: Stack, marker_first: bool
) -> None:
    stack.apply([d("d"), reg("d/old", "1"), d("d/keep"), reg("d/keep/old", "1"), reg("top", "1")])
    body = [reg("d/new", "2"), d("d/keep"), reg("d/keep/new", "2")]
    layer = [d("d"), opq("d"), *body] if marker_first else [d("d"), *body, opq("d")]
    stack.apply(layer)
    assert stack.tree() == {
        "d/": "dir",
        "d/keep/": "dir",
        "d/keep/new": "2",
        "d/new": "2",
        "top": "1",
    }


def test_opaque_marker_before_the_directory_entry_itself(stack: Stack) -> None:
    stack.apply([d("d"), reg("d/old", "1")])
    stack.apply([opq("d"), d("d", mode=0o700), reg("d/new", "2")])
    assert stack.tree() == {"d/": "dir", "d/new": "2"}
    assert stat.S_IMODE((stack.root / "d").stat().st_mode) == 0o700


def test_case5_rm_rf_mkdir_touch_in_one_step(stack: Stack, tmp_path: Path) -> None:
    stack.apply([d("d"), d("d/sub"), reg("d/sub/deep", "1"), reg("d/a", "1"), reg("d/b", "1")])
    # What a diff of "rm -rf /d; mkdir /d; touch /d/new" produces.
    stack.apply([d("d"), opq("d"), reg("d/new")])
    assert stack.tree() == {"d/": "dir", "d/new": ""}


def test_case6_whiteout_of_a_deep_directory(stack: Stack) -> None:
    deep = [d("a"), d("a/b"), d("a/b/c"), d("a/b/c/d"), reg("a/b/c/d/f", "x"), sym("a/b/l", "c")]
    stack.apply([*deep, reg("a/b/c/g", "y"), hard("a/h", "a/b/c/d/f"), reg("keep", "k")])
    stack.apply([wh("a")])
    assert stack.tree() == {"keep": "k"}


def test_case7_bare_whiteout_is_rejected_and_wipes_nothing(stack: Stack) -> None:
    stack.apply([d("d"), reg("d/x", "1"), reg("d/y", "1")])
    before = stack.tree()
    with pytest.raises(CorruptLayerError, match=r"\.wh\."):
        stack.apply([reg("d/.wh."), reg("d/z", "new")])
    assert stack.tree() == before


def test_case8_opaque_marker_is_not_a_whiteout_of_wh_opq(stack: Stack) -> None:
    stack.apply([d("d"), reg("d/.opq", "1"), reg("d/other", "1")])
    # `.wh..opq` is the whiteout of `.opq`, not an opaque marker: `other` survives.
    stack.apply([reg("d/.wh..opq")])
    assert stack.tree() == {"d/": "dir", "d/other": "1"}
    # `.wh..wh..opq` is the opaque marker: it is not a whiteout of a file named `.wh..opq`,
    # it hides every lower child.
    stack.apply([reg("d/plain", "2")])
    stack.apply([opq("d")])
    assert stack.tree() == {"d/": "dir"}


def test_case10_whiteout_of_a_missing_path_is_harmless(stack: Stack) -> None:
    stack.apply([reg("x", "1")])
    stack.apply([wh("nothing"), wh("no/such/dir"), opq("missing")])
    # Nothing removed; the directories holding the markers are the layer's (see below).
    assert stack.tree() == {"x": "1", "missing/": "dir", "no/": "dir", "no/such/": "dir"}


def test_a_whiteout_naming_dot_dot_is_rejected(stack: Stack, tmp_path: Path) -> None:
    stack.apply([d("a"), reg("a/x", "1")])
    for name in ["a/.wh...", "a/.wh.."]:
        with pytest.raises(UnsupportedEntryError, match="not a file name"):
            stack.apply([reg(name)])
    assert stack.tree() == {"a/": "dir", "a/x": "1"}


def test_only_empty_files_may_use_the_whiteout_prefix(stack: Stack) -> None:
    for member in [d(".wh.dir"), sym(".wh.link", "x")]:
        with pytest.raises(UnsupportedEntryError, match=r"'\.wh\.'"):
            stack.apply([member])
    assert stack.tree() == {}


# ----- the directories holding whiteouts and opaque markers ----------------------------------

KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


def lower_d() -> list[Member]:
    """A lower `d` with attributes of its own (made afresh: members are not shared)."""
    return [d("d", mode=0o700, mtime=1_500_000_000), reg("d/a", "a"), reg("d/b", "b")]


def marker_stack(name: str) -> tuple[list[list[Member]], set[str]]:
    """Layers (bottom first) whose top layer holds whiteouts or opaque markers, and paths the
    result must have."""
    base = [d("etc"), reg("etc/passwd", "root")]
    stacks: dict[str, tuple[list[list[Member]], set[str]]] = {
        "whiteout-only": ([base, [wh("a/x")]], {"a"}),
        "opaque-only": ([base, [opq("o/p")]], {"o", "o/p"}),
        "deep-markers": ([base, [wh("p/q/r"), opq("o"), wh("p/s")]], {"o", "p", "p/q"}),
        "lower-dir-shows-through": ([lower_d(), [wh("d/a")]], {"d", "d/b"}),
        "whiteout-then-marker-below": ([lower_d(), [wh("d"), wh("d/b")]], {"d"}),
        "marker-below-then-whiteout": ([lower_d(), [wh("d/b"), wh("d")]], {"d"}),
        "content-then-whiteout": ([lower_d(), [reg("d/new/f", "n"), wh("d")]], {"d/new/f"}),
        "opaque-after-content": (
            [
                [d("top"), d("top/sub", mode=0o700), reg("top/sub/old"), reg("top/gone")],
                [reg("top/sub/new", "n"), opq("top")],
            ],
            {"top/sub/new"},
        ),
    }
    return stacks[name]


def walk_key(path: str) -> bytes:
    return path.encode().replace(b"/", b"\0")


def row(
    path: str, kind: str, mode: int, owner: tuple[int, int], mtime: int, dated: set[str]
) -> tuple[object, ...]:
    """What extraction must agree on. Owners only as root (otherwise the extracting user owns
    everything); directory mtimes only where the view has one (implied directories have 0,
    extraction the time it made them)."""
    return (
        path,
        kind,
        mode,
        owner if IS_ROOT else None,
        mtime if kind != "dir" or path in dated else None,
    )


def disk_rows(root: Path, dated: set[str]) -> list[tuple[object, ...]]:
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            kind = KINDS[stat.S_IFMT(st.st_mode)]
            mode = stat.S_IMODE(st.st_mode)
            rows.append(row(rel, kind, mode, (st.st_uid, st.st_gid), int(st.st_mtime), dated))
    return sorted(rows, key=lambda r: walk_key(str(r[0])))


@pytest.mark.parametrize(
    "name",
    [
        "whiteout-only",
        "opaque-only",
        "deep-markers",
        "lower-dir-shows-through",
        "whiteout-then-marker-below",
        "marker-below-then-whiteout",
        "content-then-whiteout",
        "opaque-after-content",
    ],
)
def test_marker_directories_extract_as_the_view_and_flatten_show_them(
    tmp_path: Path, name: str
) -> None:
    layers, present = marker_stack(name)
    blobs = [write_layer(tmp_path / f"l{i}.tar", members) for i, members in enumerate(layers)]
    stack = LayerStack(blobs)
    view = list(stack.walk())
    dated = {e.path for e in view if e.kind == "dir" and e.mtime != 0}
    expected = [row(e.path, e.kind, e.mode, (e.uid, e.gid), e.mtime, dated) for e in view]
    assert present <= {str(r[0]) for r in expected}
    flat = stack.flatten(tmp_path / "flat.tar", compression=None)
    flat_rows = [
        row(e.path, e.kind, e.mode, (e.uid, e.gid), e.mtime, dated) for e in flat.entries()
    ]
    assert flat_rows == expected
    assert extract(blobs, tmp_path / "ours") == []
    assert disk_rows(tmp_path / "ours", dated) == expected
    reference.Stack(blobs).extract(tmp_path / "twin")
    assert disk_rows(tmp_path / "twin", dated) == expected


def test_a_lower_directory_whited_out_around_the_layers_content_loses_its_attributes(
    stack: Stack,
) -> None:
    # Whichever comes first, the lower `d` goes and the one the layer implies stays: mode
    # 0755, no xattrs, root's (as root). The twin does the same.
    xattrs = {"user.note": "lower"}
    for order in ([wh("d/x"), wh("d")], [wh("d"), wh("d/x")], [reg("d/n", "n"), wh("d")]):
        for applier in (apply, reference.apply_layer):
            shutil.rmtree(stack.root)
            stack.root.mkdir()
            stack.apply([d("d", mode=0o750, uid=12, gid=34, xattrs=xattrs), reg("d/old", "o")])
            target = stack.root / "d"
            assert os.getxattr(target, "user.note") == b"lower"
            applier(stack.layer(list(order)), stack.root)
            st = target.lstat()
            assert stat.S_IMODE(st.st_mode) == 0o755, (order, applier)
            assert os.listxattr(target) == []
            if IS_ROOT:
                assert (st.st_uid, st.st_gid) == (0, os.getegid())
            assert "d/old" not in stack.tree()


def test_a_marker_below_a_same_layer_non_directory_implies_nothing(stack: Stack) -> None:
    below = stack.layer([reg("f", "file"), wh("f/x"), opq("f"), sym("s", "/etc"), wh("s/x")])
    # Written after the marker, the file replaces the directory made for it.
    after = stack.layer([wh("g/x"), reg("g", "file")])
    assert [e.path for e in LayerStack([below, after]).walk()] == ["f", "g", "s"]
    for applier in (apply, reference.apply_layer):
        shutil.rmtree(stack.root)
        stack.root.mkdir()
        applier(below, stack.root)
        applier(after, stack.root)
        assert stack.tree() == {"f": "file", "g": "file", "s": "-> /etc"}


def test_a_marker_below_a_lower_non_directory_is_refused_like_any_entry(stack: Stack) -> None:
    lower = stack.layer([reg("t", "file"), sym("s", "/etc")])
    apply(lower, stack.root)
    for member in [wh("t/x"), opq("t/sub"), wh("s/passwd")]:
        upper = stack.layer([member])
        needle = "symlink" if member[0].name.startswith("s/") else "not a directory"
        with pytest.raises(UnsupportedEntryError, match=needle) as info:
            apply(upper, stack.root)
        assert member[0].name in str(info.value)
        with pytest.raises(UnsupportedEntryError):
            reference.apply_layer(upper, stack.root)
        # Flatten refuses the same stack: the layer's directory would replace a lower file.
        with pytest.raises(UnsupportedEntryError):
            LayerStack([lower, upper]).flatten(stack.base / "flat.tar", compression=None)
    assert stack.tree() == {"s": "-> /etc", "t": "file"}


def test_a_marker_below_a_whiteout_name_implies_nothing(stack: Stack) -> None:
    stack.apply([reg("x", "1")])
    for applier in (apply, reference.apply_layer):
        applier(stack.layer([wh(".wh.q/r"), opq(".wh.q/s")]), stack.root)
        assert stack.tree() == {"x": "1"}


# ----- type changes (cases 12-15) ------------------------------------------------------------


def test_case12_a_file_replaces_a_directory(stack: Stack) -> None:
    stack.apply([d("x"), d("x/sub"), reg("x/sub/f", "1"), reg("x/g", "1")])
    stack.apply([reg("x", "file now")])
    assert stack.tree() == {"x": "file now"}


def test_case13_a_directory_replaces_a_file(stack: Stack) -> None:
    stack.apply([reg("x", "file"), reg("y", "1")])
    stack.apply([d("x"), reg("x/child", "new")])
    assert stack.tree() == {"x/": "dir", "x/child": "new", "y": "1"}


def test_case14_symlink_replaces_directory_and_directory_replaces_symlink(
    stack: Stack, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    stack.apply([d("dir"), reg("dir/f", "1"), sym("link", str(outside))])
    stack.apply([sym("dir", "/usr"), d("link", mode=0o750), reg("link/new", "n")])
    assert stack.tree() == {"dir": "-> /usr", "link/": "dir", "link/new": "n"}
    assert os.listdir(outside) == ["precious"], "the old link's target is untouched"


def test_case15_opaque_below_a_lower_symlink_touches_nothing_outside(
    guarded: tuple[Stack, Callable[[], None]], tmp_path: Path
) -> None:
    stack, unchanged = guarded
    outside = tmp_path / "outside"
    stack.apply([d("d"), reg("d/x", "1")])
    stack.apply([sym("d", str(outside)), sym("rel", "../outside")])
    # A marker's directory is the layer's, like any entry's parent: below a symlink it is
    # rejected like any entry there, and nothing is removed on either side of the link.
    for member in [opq("d"), opq("d/etc"), opq("rel"), wh("d/etc"), wh("rel/etc/passwd")]:
        with pytest.raises(UnsupportedEntryError, match="never written through symlinks") as info:
            stack.apply([member])
        assert member[0].name in str(info.value)
    assert stack.tree() == {"d": f"-> {outside}", "rel": "-> ../outside"}
    unchanged()


# ----- links (cases 16-21) -------------------------------------------------------------------


def test_case16_hardlink_keeps_old_content_when_its_target_is_rewritten(stack: Stack) -> None:
    stack.apply([d("bin"), reg("bin/a", "old"), hard("bin/b", "bin/a")])
    assert (stack.root / "bin/a").stat().st_ino == (stack.root / "bin/b").stat().st_ino
    stack.apply([reg("bin/a", "new")])
    assert stack.tree() == {"bin/": "dir", "bin/a": "new", "bin/b": "old"}


def test_case17_hardlink_survives_deletion_of_its_target(stack: Stack) -> None:
    stack.apply([reg("a", "body"), hard("b", "a"), hard("c", "a")])
    stack.apply([wh("a")])
    assert stack.tree() == {"b": "body", "c": "body"}
    assert (stack.root / "b").stat().st_nlink == 2


def test_case18_both_names_of_a_hardlink_deleted(stack: Stack) -> None:
    stack.apply([reg("a", "body"), hard("b", "a"), reg("z", "z")])
    stack.apply([wh("b"), wh("a")])
    assert stack.tree() == {"z": "z"}


def test_hardlink_to_a_lower_layers_file_and_before_its_own_whiteout(stack: Stack) -> None:
    stack.apply([reg("a", "lower")])
    stack.apply([hard("b", "a"), wh("b")])
    assert stack.tree() == {"a": "lower", "b": "lower"}


def test_case20_absolute_symlinks_are_kept_verbatim(stack: Stack) -> None:
    stack.apply([d("usr"), d("usr/lib64"), sym("lib64", "/usr/lib64"), sym("bin", "usr/bin")])
    assert os.readlink(stack.root / "lib64") == "/usr/lib64"
    assert os.readlink(stack.root / "bin") == "usr/bin"


def test_case21_symlinks_climbing_above_the_root_are_kept_but_never_followed(
    stack: Stack, tmp_path: Path
) -> None:
    before = snapshot(tmp_path, skip=stack.root)
    stack.apply([d("a"), sym("a/up", "../../../.."), sym("a/chain", "up/tmp")])
    assert stack.tree() == {"a/": "dir", "a/chain": "-> up/tmp", "a/up": "-> ../../../.."}
    for name in ["a/up/pwned", "a/chain/pwned", "a/up/tmp/pwned"]:
        with pytest.raises(UnsupportedEntryError, match="symlink"):
            stack.apply([reg(name, "x")])
    with pytest.raises(UnsupportedEntryError):
        stack.apply([hard("a/h", "a/up/etc/passwd")])
    after = snapshot(tmp_path, skip=stack.root)
    assert {k: v for k, v in after.items() if "blobs" not in k} == {
        k: v for k, v in before.items() if "blobs" not in k
    }


# ----- hostile input (cases 22-24) -----------------------------------------------------------


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[Stack, Callable[[], None]]]:
    """A stack next to an `outside` directory, and a check that nothing outside the root (the
    blobs aside) changed."""
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "passwd").write_text("root:x:0:0\n")
    s = Stack(tmp_path)
    before = snapshot(tmp_path, skip=s.root)

    def unchanged() -> None:
        now = snapshot(tmp_path, skip=s.root)
        strip = {k: v for k, v in now.items() if "/blobs" not in k}
        assert strip == {k: v for k, v in before.items() if "/blobs" not in k}

    yield s, unchanged


@pytest.mark.parametrize(
    "name", ["../escape", "a/../../escape", "a/b/../../../escape", "..", "a/.."]
)
def test_case22_dot_dot_components_are_rejected(
    guarded: tuple[Stack, Callable[[], None]], name: str
) -> None:
    stack, unchanged = guarded
    stack.apply([d("a"), d("a/b")])
    for member in [reg(name, "x"), d(name), sym(name, "/etc"), hard(name, "a")]:
        with pytest.raises(UnsupportedEntryError, match=r"'\.\.'") as info:
            stack.apply([member])
        assert name.rstrip("/") in str(info.value)
    assert stack.tree() == {"a/": "dir", "a/b/": "dir"}
    unchanged()


def test_case22_absolute_and_untidy_names_land_inside_the_root(
    guarded: tuple[Stack, Callable[[], None]],
) -> None:
    stack, unchanged = guarded
    unique = f"/tmp/layercore-pwned-{uuid.uuid4().hex}"
    stack.apply(
        [
            reg(f"{unique}/abs", "1"),
            reg("/etc/hosts", "h"),
            reg("./dot/x", "2"),
            reg("double//slash", "3"),
            d("trailing/"),
            reg("a/./b", "4"),
        ]
    )
    assert not os.path.exists(unique)
    assert stack.tree() == {
        "a/": "dir",
        "a/b": "4",
        "dot/": "dir",
        "dot/x": "2",
        "double/": "dir",
        "double/slash": "3",
        "etc/": "dir",
        "etc/hosts": "h",
        "tmp/": "dir",
        f"{unique[1:]}/": "dir",
        f"{unique[1:]}/abs": "1",
        "trailing/": "dir",
    }
    unchanged()


def test_case22_nul_in_a_pax_path_is_rejected(guarded: tuple[Stack, Callable[[], None]]) -> None:
    stack, unchanged = guarded
    info, body = reg("placeholder", "x")
    info.pax_headers = {"path": "a\x00/../../escape"}
    with pytest.raises(UnsupportedEntryError, match="NUL"):
        stack.apply([(info, body)])
    assert stack.tree() == {}
    unchanged()


@pytest.mark.parametrize("planted", ["lower", "same"])
def test_case23_entries_through_a_planted_symlink_are_rejected(
    guarded: tuple[Stack, Callable[[], None]], tmp_path: Path, planted: str
) -> None:
    stack, unchanged = guarded
    target = str(tmp_path / "outside" / "etc")
    links = [sym("link", target), sym("etc", "/etc"), sym("rel", "../outside/etc")]
    if planted == "lower":
        stack.apply(links)
    attacks = [
        reg("link/passwd", "pwned"),
        reg(f"etc/layercore-pwned-{uuid.uuid4().hex}", "pwned"),
        reg("rel/passwd", "pwned"),
        d("link/newdir"),
        sym("link/s", "x"),
        reg("link/deeper/still/passwd", "pwned"),
    ]
    for attack in attacks:
        layer = [*links, attack] if planted == "same" else [attack]
        with pytest.raises(UnsupportedEntryError, match="symlink") as info:
            stack.apply(layer)
        assert attack[0].name in str(info.value), "the error names the entry"
        assert "never written through symlinks" in str(info.value)
    assert not any(p.name.startswith("layercore-pwned-") for p in Path("/etc").iterdir())
    unchanged()


def test_case24_hardlinks_to_missing_or_outside_targets_name_both_paths(
    guarded: tuple[Stack, Callable[[], None]],
) -> None:
    stack, unchanged = guarded
    stack.apply([d("etc"), reg("etc/real", "r"), sym("out", "/etc"), d("dir")])
    cases = {
        "missing": "does not exist",
        "etc/missing": "does not exist",
        "../outside/etc/passwd": "'..'",
        "/etc/passwd": "does not exist",  # normalised to etc/passwd inside the root
        "out/passwd": "symlink",
        "dir": "directory",
        "link": "itself",
    }
    for target, needle in cases.items():
        with pytest.raises(UnsupportedEntryError, match=needle) as info:
            stack.apply([hard("link", target)])
        message = str(info.value)
        assert "'link'" in message and target.lstrip("/") in message, message
    assert not (stack.root / "link").exists()
    assert stack.tree() == {"dir/": "dir", "etc/": "dir", "etc/real": "r", "out": "-> /etc"}
    unchanged()


# ----- privileges (case 25) ------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="creating devices and chown need root")
def test_case25_as_root_devices_owners_and_setuid_are_restored(stack: Stack) -> None:
    warnings = stack.apply(
        [
            d("dev"),
            dev("dev/null", tarfile.CHRTYPE, 1, 3),
            dev("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660),
            dev("dev/fifo", tarfile.FIFOTYPE, 0, 0, mode=0o600),
            reg("su", "x", mode=0o4755),
            reg("owned", "x", mode=0o2750, uid=1234, gid=5678),
            d("shared", mode=0o3775, uid=1000, gid=1000),
        ]
    )
    assert warnings == []
    null = (stack.root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3 and stat.S_IMODE(null.st_mode) == 0o666
    loop = (stack.root / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    assert stat.S_ISFIFO((stack.root / "dev/fifo").lstat().st_mode)
    su = (stack.root / "su").stat()
    assert (stat.S_IMODE(su.st_mode), su.st_uid) == (0o4755, 0)
    owned = (stack.root / "owned").stat()
    assert (stat.S_IMODE(owned.st_mode), owned.st_uid, owned.st_gid) == (0o2750, 1234, 5678)
    shared = (stack.root / "shared").stat()
    assert (stat.S_IMODE(shared.st_mode), shared.st_uid, shared.st_gid) == (0o3775, 1000, 1000)


def test_an_owner_that_cannot_be_restored_clears_setuid_with_a_warning(stack: Stack) -> None:
    bad = 2**32 - 1  # (uid_t)-1: never a real owner
    blob = stack.layer([reg("su", "x", mode=0o6755, uid=bad, gid=bad), reg("plain", "p")])
    with pytest.warns(LayerWarning) as record:
        warnings = apply(Layer.open(blob), stack.root)
    assert sorted(warnings) == sorted(str(w.message) for w in record)
    assert len(warnings) == 2
    assert any("owner not restored" in w and "'su'" in w for w in warnings)
    assert any("setuid/setgid bits cleared" in w and "'su'" in w for w in warnings)
    assert all(str(blob) in w for w in warnings)
    assert stat.S_IMODE((stack.root / "su").stat().st_mode) == 0o755


CHILD = r"""
import json, sys, warnings
from layercore.extract import apply
dest, devices, *blobs = sys.argv[1:]
out = []
for blob in blobs:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            returned = apply(blob, dest, devices=devices)
        except Exception as e:
            out.append({"error": type(e).__name__, "message": str(e)})
            continue
    out.append({"warnings": returned, "emitted": [str(w.message) for w in caught]})
print(json.dumps(out))
"""


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory uid 65534 can use (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="layercore-apply-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def run_as_nobody(dest: Path, devices: str, blobs: list[Path]) -> list[dict[str, object]]:
    os.chown(dest, 65534, 65534)
    prefix, env = nobody_python(dest.parent)
    result = subprocess.run(
        [*prefix, "-c", CHILD, str(dest), devices, *map(str, blobs)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    reports: list[dict[str, object]] = json.loads(result.stdout)
    return reports


ROOTLESS_LOWER = [
    d("dev"),
    dev("dev/null", tarfile.CHRTYPE, 1, 3),
    dev("dev/fifo", tarfile.FIFOTYPE, 0, 0, mode=0o640),
    reg("su", "x", mode=0o4755),
    reg("mine", "x", mode=0o2755, uid=65534, gid=65534),
    reg("capped", "x", xattrs={"user.note": "kept", "trusted.secret": "root only"}),
    d("ro", mode=0o555, mtime=1_500_000_000),
    reg("ro/a", "a"),
    d("gomod", mode=0o555),
    d("gomod/pkg", mode=0o555),
    reg("gomod/pkg/f", "f", mode=0o444),
]


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_case25_as_nobody_devices_are_skipped_and_setuid_cleared(nobody_dir: Path) -> None:
    dest = nobody_dir / "root"
    dest.mkdir()
    lower = write_layer(nobody_dir / "lower.tar", ROOTLESS_LOWER)
    # Writes into a read-only lower directory and removes a read-only tree (a Go module cache).
    upper = write_layer(nobody_dir / "upper.tar", [reg("ro/b", "b"), wh("gomod")])
    reports = run_as_nobody(dest, "skip", [lower, upper])
    assert "error" not in reports[0] and "error" not in reports[1], reports
    warnings = reports[0]["warnings"]
    assert isinstance(warnings, list)
    assert reports[0]["emitted"] == warnings, "returned and emitted as LayerWarning"
    text = "\n".join(warnings)
    assert "device node not created" in text and "'dev/null'" in text
    assert "setuid/setgid bits cleared" in text and "'su'" in text
    assert "owner not restored" in text
    assert "xattr trusted.secret not set" in text
    upper_warnings = reports[1]["warnings"]
    assert isinstance(upper_warnings, list) and len(upper_warnings) == 1
    (upper_warning,) = upper_warnings
    assert "owner not restored" in upper_warning and "'ro/b'" in upper_warning

    assert not os.path.lexists(dest / "dev/null")
    assert stat.S_ISFIFO((dest / "dev/fifo").lstat().st_mode)
    su = (dest / "su").stat()
    assert (stat.S_IMODE(su.st_mode), su.st_uid) == (0o755, 65534)
    mine = (dest / "mine").stat()
    assert stat.S_IMODE(mine.st_mode) == 0o2755, "its owner was restorable: setgid kept"
    assert os.getxattr(dest / "capped", "user.note") == b"kept"
    assert "trusted.secret" not in os.listxattr(dest / "capped")
    ro = (dest / "ro").stat()
    assert (stat.S_IMODE(ro.st_mode), ro.st_mtime) == (0o555, 1_500_000_000)
    assert tree(dest) == {
        "capped": "x",
        "dev/": "dir",
        "dev/fifo": "p",
        "mine": "x",
        "ro/": "dir",
        "ro/a": "a",
        "ro/b": "b",
        "su": "x",
    }


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_case25_as_nobody_the_fail_policy_rejects_devices(nobody_dir: Path) -> None:
    dest = nobody_dir / "root"
    dest.mkdir()
    lower = write_layer(nobody_dir / "lower.tar", ROOTLESS_LOWER)
    (report,) = run_as_nobody(dest, "fail", [lower])
    assert report["error"] == "UnsupportedEntryError"
    message = str(report["message"])
    assert "dev/null" in message and "CAP_MKNOD" in message
    assert not os.path.lexists(dest / "dev/null")


def test_unknown_device_policy_is_a_value_error(stack: Stack) -> None:
    with pytest.raises(ValueError, match="device policy"):
        apply(stack.layer([]), stack.root, devices="maybe")  # type: ignore[arg-type]


# ----- broken input (case 26) ----------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_case26_a_truncated_layer_fails_and_leaves_no_partial_file(
    stack: Stack, compression: str | None
) -> None:
    big = os.urandom(1 << 20)
    blob = stack.layer([reg("first", "1"), reg("big", big), reg("last", "3")], compression)
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedLayerError) as info:
        apply(blob, stack.root)
    assert info.value.path == str(blob)
    # What is left: the entries before the failing one, never a half-written file.
    assert stack.tree() == {"first": "1"}


def test_case26_a_header_checksum_error_is_corrupt(stack: Stack) -> None:
    blob = stack.layer([reg("first", "1"), reg("second", "2")])
    data = bytearray(blob.read_bytes())
    second = data.index(b"second")
    data[second + 1] ^= 0x20
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptLayerError, match="checksum"):
        apply(blob, stack.root)
    assert stack.tree() == {"first": "1"}


def test_a_missing_layer_or_destination(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        apply(tmp_path / "nope.tar", stack.root)
    with pytest.raises(SourceNotFoundError):
        apply(stack.layer([reg("x")]), tmp_path / "no-such-dir")


# ----- metadata (cases 29, 30) ---------------------------------------------------------------


def test_case29_directory_attributes_highest_layer_wins(stack: Stack) -> None:
    uid, gid = (1000, 2000) if IS_ROOT else (os.geteuid(), os.getegid())
    stack.apply(
        [d("d", mode=0o755, mtime=1_000_000_000), reg("d/f", "1"), d("e", uid=uid, gid=gid)]
    )
    stack.apply([d("d", mode=0o750, mtime=1_100_000_000, uid=uid, gid=gid), reg("d/g", "2")])
    st = (stack.root / "d").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o750, 1_100_000_000)
    if IS_ROOT:
        assert (st.st_uid, st.st_gid) == (1000, 2000)
    # A higher layer that changes `d` without listing it leaves its attributes alone.
    stack.apply([reg("d/h", "3"), wh("d/f")])
    st = (stack.root / "d").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o750, 1_100_000_000)
    assert stack.tree() == {"d/": "dir", "d/g": "2", "d/h": "3", "e/": "dir"}


def test_dir_over_dir_replaces_xattrs(stack: Stack) -> None:
    stack.apply([d("d", xattrs={"user.a": "1", "user.b": "2"})])
    stack.apply([d("d", xattrs={"user.a": "3"})])
    assert sorted(os.listxattr(stack.root / "d")) == ["user.a"]
    assert os.getxattr(stack.root / "d", "user.a") == b"3"


def test_case29_from_dir_metadata_survives_apply(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name, mode in [("private", 0o700), ("group", 0o750), ("sticky", 0o1777), ("sgid", 0o2755)]:
        (src / name / "inner").mkdir(parents=True)
        (src / name / "inner" / "f").write_text(name)
        os.chmod(src / name, mode)
    for i, p in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(p, (1_500_000_000 + i, 1_500_000_000 + i))
        if IS_ROOT:
            os.chown(p, 1000 + i, 2000 + i)
    layer = Layer.from_dir(src, tmp_path / "layer.tar.gz", owner="keep")
    dest = tmp_path / "dest"
    extract([layer], dest)
    for p in src.rglob("*"):
        a, b = p.stat(), (dest / p.relative_to(src)).stat()
        assert (a.st_mode, int(a.st_mtime)) == (b.st_mode, int(b.st_mtime)), p
        if IS_ROOT:
            assert (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid), p


# A VFS_CAP_REVISION_2 value (magic_etc, then permitted/inheritable words): cap_net_raw
# (bit 13) permitted, effective flag set.
CAP_NET_RAW = bytes.fromhex("01000002" + "00200000" + "00" * 12)


@pytest.mark.skipif(not IS_ROOT, reason="security.* xattrs need root")
def test_case30_security_capability_survives_from_dir_and_apply(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    ping = src / "bin" / "ping"
    ping.write_bytes(b"\x7fELF not really")
    ping.chmod(0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.setxattr(ping, "user.origin", b"test")
    layer = Layer.from_dir(src, tmp_path / "layer.tar.zst", compression="zstd")
    dest = tmp_path / "dest"
    assert extract([layer], dest) == []
    out = dest / "bin" / "ping"
    assert os.getxattr(out, "security.capability") == CAP_NET_RAW
    assert os.getxattr(out, "user.origin") == b"test"
    if shutil.which("getcap"):
        shown = subprocess.run(["getcap", str(out)], capture_output=True, text=True).stdout
        assert "cap_net_raw" in shown


# ----- extract() -----------------------------------------------------------------------------


def test_extract_creates_the_destination_and_applies_bottom_first(stack: Stack) -> None:
    l1 = stack.layer([d("etc"), reg("etc/a", "1"), reg("etc/b", "1")])
    l2 = stack.layer([wh("etc/a"), reg("etc/b", "2"), reg("etc/c", "2")], "gzip")
    dest = stack.base / "new" / "tree"
    assert extract([Layer.open(l1), l2], dest) == []
    assert tree(dest) == {"etc/": "dir", "etc/b": "2", "etc/c": "2"}


def test_extract_refuses_a_non_empty_destination_and_missing_blobs(stack: Stack) -> None:
    l1 = stack.layer([reg("x", "1")])
    (stack.root / "already").write_text("here")
    with pytest.raises(LayerIOError, match="empty"):
        extract([l1], stack.root)
    fresh = stack.base / "fresh"
    with pytest.raises(SourceNotFoundError):
        extract([l1, stack.base / "missing.tar"], fresh)
    assert not fresh.exists(), "nothing is created before every blob is known to exist"
    with pytest.raises(TypeError):
        extract(str(l1), fresh)  # a str is a Sequence too: refused at run time


# ----- GNU tar as the oracle -----------------------------------------------------------------


def full_snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Kind, mode, owner, mtime, content, link target, device, xattrs and hardlink group of
    every path below `root` (byte names: some are not UTF-8)."""
    out: dict[bytes, tuple[object, ...]] = {}
    groups: dict[int, bytes] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, base)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body: object = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                body = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                body = None
            xattrs = {
                k: os.getxattr(p, k, follow_symlinks=False)
                for k in os.listxattr(p, follow_symlinks=False)
            }
            group = groups.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                int(st.st_mtime),
                st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                body,
                sorted(xattrs.items()),
                group,
            )
    return out


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_apply_equals_gnu_tar_extraction(
    rich_tree: Path, tmp_path: Path, compression: Compression
) -> None:
    owner: Owner = "keep" if IS_ROOT else "root"
    if IS_ROOT:
        os.chown(rich_tree / "etc" / "secret", 1234, 4321)
        os.chown(rich_tree / "data", 99, 98)
    layer = Layer.from_dir(rich_tree, tmp_path / "layer", compression=compression, owner=owner)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    flags = {None: [], "gzip": ["-z"], "zstd": ["--zstd"]}[compression]
    flags += ["--xattrs", "--xattrs-include=*", "-xpf"]
    subprocess.run(["tar", *flags, str(layer.path), "-C", str(theirs)], check=True)
    extract([layer], ours)
    a, b = full_snapshot(ours), full_snapshot(theirs)
    assert a.keys() == b.keys()
    assert len(a) > 20
    for path in a:
        assert a[path] == b[path], path
    # And both equal the source tree (host-owned root aside).
    assert full_snapshot(rich_tree) == a
