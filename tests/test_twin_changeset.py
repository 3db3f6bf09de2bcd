"""The pure-Python twin of the changeset engine agrees with the Rust engine.

For the same stacks and trees, ``layercore.reference`` (tarfile, os, shutil) must see the same
merged view (lookup, listdir, walk, read), write byte-identical uncompressed tars from
``flatten`` and ``from_diff``, and extract the same trees as ``layercore``.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layercore import Layer, Stack, reference

# (path, kind, payload, mode): kind file/dir/symlink/hardlink/fifo/whiteout/opaque.
Spec = tuple[str, str, object, int]
ENTRY_FIELDS = ["path", "kind", "mode", "uid", "gid", "uname", "gname", "size", "mtime",
                "linkname", "devmajor", "devminor", "xattrs", "offset"]  # fmt: skip


def tar_bytes(specs: Sequence[Spec]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for n, (name, kind, payload, mode) in enumerate(specs):
            if kind == "whiteout":
                parent, _, base = name.rpartition("/")
                name, kind, payload = (f"{parent}/" if parent else "") + f".wh.{base}", "file", b""
            elif kind == "opaque":
                name, kind, payload = (f"{name}/" if name else "") + ".wh..wh..opq", "file", b""
            info = tarfile.TarInfo(name)
            info.mtime = 1_000_000 + n
            info.mode = mode
            info.uid, info.gid = n % 3, n % 2
            data: bytes | None = None
            if kind == "file":
                assert isinstance(payload, bytes)
                data = payload
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("symlink", "hardlink"):
                assert isinstance(payload, str)
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                raise AssertionError(kind)
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def write_layer(path: Path, specs: Sequence[Spec], compression: str | None) -> Path:
    data = tar_bytes(specs)
    if compression == "gzip":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def blobs(root: Path, layers: Sequence[Sequence[Spec]], compression: str | None) -> list[Path]:
    return [write_layer(root / f"layer{i}", specs, compression) for i, specs in enumerate(layers)]


def fields(entry: object) -> dict[str, object]:
    return {name: getattr(entry, name) for name in ENTRY_FIELDS}


def snapshot(root: Path, *, dir_mtimes: set[str] | None = None) -> dict[str, object]:
    """Everything an extraction produces: types, modes, owners, bodies, link targets, mtimes
    (of directories only for the ``dir_mtimes`` paths), and which names share an inode."""
    out: dict[str, object] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            fmt = stat.S_IFMT(st_.st_mode)
            item: dict[str, object] = {"fmt": fmt, "mode": stat.S_IMODE(st_.st_mode)}
            item["owner"] = (st_.st_uid, st_.st_gid)
            if fmt == stat.S_IFREG:
                item["body"] = Path(full).read_bytes()
                item["mtime"] = st_.st_mtime_ns
                item["inode"] = inodes.setdefault(st_.st_ino, rel) if st_.st_nlink > 1 else None
            elif fmt == stat.S_IFLNK:
                item["target"] = os.readlink(full)
                item["mtime"] = st_.st_mtime_ns
            elif fmt == stat.S_IFDIR and dir_mtimes is not None and rel in dir_mtimes:
                item["mtime"] = st_.st_mtime_ns
            else:
                item["mtime"] = st_.st_mtime_ns if fmt == stat.S_IFIFO else None
            out[rel] = item
    return out


def assert_same_stack(work: Path, paths: Sequence[Path]) -> None:
    """Rust and reference agree on every view operation, flatten bytes and extraction."""
    ours = Stack(paths)
    theirs = reference.Stack(paths)
    walk_ours = [(e.layer, fields(e)) for e in ours.walk()]
    walk_theirs = [(k, fields(e)) for k, e in theirs.walk_with_layers()]
    assert walk_ours == walk_theirs
    assert [fields(e) for e in theirs.walk()] == [f for _, f in walk_ours]
    probes = {e["path"] for _, e in walk_ours} | {"missing", "a/missing/x"}
    for specs_path in probes:
        assert isinstance(specs_path, str)
        ours_e = ours.lookup(specs_path)
        theirs_e = theirs.lookup_with_layer(specs_path)
        if ours_e is None:
            assert theirs_e is None, specs_path
            continue
        assert theirs_e is not None, specs_path
        assert (ours_e.layer, fields(ours_e)) == (theirs_e[0], fields(theirs_e[1]))
        if ours_e.kind == "dir":
            assert ours.listdir(specs_path) == theirs.listdir(specs_path)
        try:
            body = ours.read(specs_path)
        except (OSError, ValueError) as e:
            with pytest.raises(type(e)):
                theirs.read(specs_path)
        else:
            assert theirs.read(specs_path) == body
    assert ours.listdir("") == theirs.listdir("")

    # flatten: byte-identical uncompressed tars; the same error if Rust refuses.
    try:
        flat_ours = ours.flatten(work / "flat-ours.tar", compression=None)
    except ValueError as e:
        with pytest.raises(type(e)):
            theirs.flatten(work / "flat-theirs.tar", compression=None)
        flat_ours = None
    if flat_ours is not None:
        flat_theirs = theirs.flatten(work / "flat-theirs.tar", compression=None)
        assert flat_theirs.path.read_bytes() == flat_ours.path.read_bytes()
        assert flat_theirs.diff_id == flat_ours.diff_id

    # extract: the same trees.
    try:
        ours.extract(work / "x-ours")
    except ValueError as e:
        with pytest.raises(type(e)):
            theirs.extract(work / "x-theirs")
        return
    theirs.extract(work / "x-theirs")
    dated = {e.path for e in ours.walk() if e.kind == "dir" and e.mtime != 0}
    assert snapshot(work / "x-theirs", dir_mtimes=dated) == snapshot(
        work / "x-ours", dir_mtimes=dated
    )


def assert_same_diff(work: Path, lower: Path, upper: Path, compare: str = "metadata") -> bytes:
    assert compare in ("metadata", "content")
    mode: Literal["metadata", "content"] = "content" if compare == "content" else "metadata"
    ours = Layer.from_diff(lower, upper, work / "diff-ours.tar", compression=None, compare=mode)
    theirs = reference.Layer.from_diff(
        lower, upper, work / "diff-theirs.tar", compression=None, compare=compare
    )
    data = ours.path.read_bytes()
    assert theirs.path.read_bytes() == data
    assert theirs.diff_id == ours.diff_id
    return data


# --------------------------------------------------------------------------------------------
# Stacks from tar specs

STACKS: dict[str, list[list[Spec]]] = {
    "whiteouts-and-opaque": [
        [
            ("d", "dir", None, 0o755),
            ("d/a", "file", b"a", 0o644),
            ("d/b", "file", b"b", 0o600),
            ("e", "dir", None, 0o750),
            ("e/x", "file", b"x", 0o644),
            ("e/sub", "dir", None, 0o755),
            ("e/sub/y", "file", b"y", 0o644),
        ],
        [("d/a", "whiteout", None, 0), ("e", "opaque", None, 0), ("e/new", "file", b"n", 0o644)],
        [("d/.", "dir", None, 0o711), ("d/a", "file", b"again", 0o644)],
    ],
    "whiteout-after-entry-same-layer": [
        [("f", "file", b"old", 0o644), ("g", "dir", None, 0o755), ("g/in", "file", b"i", 0o644)],
        [
            ("f", "file", b"new", 0o644),
            ("f", "whiteout", None, 0),
            ("g/more", "file", b"m", 0o644),
            ("g", "opaque", None, 0),
        ],
    ],
    "type-changes": [
        [
            ("p", "dir", None, 0o755),
            ("p/q", "file", b"q", 0o644),
            ("s", "file", b"s", 0o644),
            ("l", "symlink", "p/q", 0o777),
        ],
        [
            ("p", "file", b"now a file", 0o640),
            ("s", "dir", None, 0o755),
            ("s/t", "fifo", None, 0o600),
            ("l", "file", b"was a link", 0o644),
        ],
        [("p", "whiteout", None, 0), ("p/z/deep", "file", b"implied parents", 0o644)],
    ],
    "implied-dirs-borrow-lower-attributes": [
        [("a", "dir", None, 0o700), ("a/b", "dir", None, 0o711), ("a/b/c", "file", b"c", 0o644)],
        [("a/b/d", "file", b"d", 0o644), ("x/y/z", "file", b"z", 0o644)],
    ],
    "hardlinks-keep-content": [
        [
            ("f", "file", b"body", 0o644),
            ("h", "hardlink", "f", 0o644),
            ("k", "hardlink", "f", 0o644),
            ("dir", "dir", None, 0o755),
        ],
        [("f", "file", b"other", 0o600), ("h", "whiteout", None, 0)],
    ],
    "symlinks-read-through": [
        [
            ("etc", "dir", None, 0o755),
            ("etc/passwd", "file", b"root", 0o644),
            ("abs", "symlink", "/etc/passwd", 0o777),
            ("rel", "symlink", "etc/../etc/passwd", 0o777),
            ("loop", "symlink", "loop", 0o777),
            ("dirlink", "symlink", "etc", 0o777),
        ],
        [("up", "symlink", "../../abs", 0o777)],
    ],
    "opaque-root": [
        [("a", "file", b"a", 0o644), ("b", "dir", None, 0o755), ("b/c", "file", b"c", 0o644)],
        [("", "opaque", None, 0), ("n", "file", b"n", 0o644)],
    ],
    "marker-parents-are-implied": [
        [("d", "dir", None, 0o700), ("d/a", "file", b"a", 0o644), ("f", "file", b"f", 0o644)],
        [
            ("d/a", "whiteout", None, 0),
            ("p/q/r", "whiteout", None, 0),
            ("o/p", "opaque", None, 0),
            ("w", "whiteout", None, 0),
            ("w/x", "whiteout", None, 0),
        ],
    ],
    "through-a-lower-file": [
        [("t", "file", b"file", 0o644)],
        [("t/inside", "file", b"x", 0o644)],
    ],
    "whiteouts-around-the-layers-own-directories": [
        [
            ("d", "dir", None, 0o700),
            ("d/a", "file", b"a", 0o644),
            ("e", "dir", None, 0o750),
            ("e/x", "file", b"x", 0o644),
        ],
        [
            ("d/b", "whiteout", None, 0),
            ("d", "whiteout", None, 0),
            ("e/new/f", "file", b"n", 0o644),
            ("e", "whiteout", None, 0),
        ],
    ],
    "marker-below-a-same-layer-file": [
        [("g", "file", b"g", 0o644), ("g/x", "whiteout", None, 0), ("g", "opaque", None, 0)],
    ],
    "marker-below-a-lower-symlink": [
        [("s", "symlink", "/etc", 0o777)],
        [("s/passwd", "whiteout", None, 0)],
    ],
}


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("name", sorted(STACKS))
def test_stacks_agree(tmp_path: Path, name: str, compression: str | None) -> None:
    paths = blobs(tmp_path, STACKS[name], compression)
    assert_same_stack(tmp_path, paths)


def test_extract_respects_dir_modes_and_whiteouts_in_either_order(tmp_path: Path) -> None:
    paths = blobs(tmp_path, STACKS["whiteout-after-entry-same-layer"], None)
    reference.Stack(paths).extract(tmp_path / "x")
    assert (tmp_path / "x" / "f").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "x" / "g")) == ["more"]


def test_flatten_compressed_output_has_the_same_tar(tmp_path: Path) -> None:
    paths = blobs(tmp_path, STACKS["whiteouts-and-opaque"], "gzip")
    plain = Stack(paths).flatten(tmp_path / "plain.tar", compression=None)
    packed = reference.Stack(paths).flatten(tmp_path / "twin.tar.gz", compression="gzip")
    assert gzip.decompress(packed.path.read_bytes()) == plain.path.read_bytes()
    assert packed.diff_id == plain.diff_id


# --------------------------------------------------------------------------------------------
# Stacks from real trees, and from_diff


def build_tree(
    root: Path, files: dict[str, bytes | str | None], mtime: int = 1_600_000_000
) -> Path:
    """``None`` is a directory, ``str`` a symlink target, ``bytes`` a file body; ``@x`` links."""
    root.mkdir()
    for rel, payload in sorted(files.items()):
        full = root / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        if payload is None:
            full.mkdir(exist_ok=True)
        elif isinstance(payload, str) and payload.startswith("@"):
            os.link(root / payload[1:], full)
        elif isinstance(payload, str):
            os.symlink(payload, full)
        else:
            full.write_bytes(payload)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    return root


BASE: dict[str, bytes | str | None] = {
    "etc/passwd": b"root\n", "etc/group": b"root\n", "etc/hosts": b"localhost\n",
    "usr/bin/sh": b"#!sh\n", "usr/bin/ls": b"ls", "usr/lib/a": b"a", "usr/lib/b": b"b",
    "usr/lib/c": b"c", "usr/lib/d": b"d", "usr/share/doc/x": b"x", "var/log": None,
    "link": "/etc/passwd", "data/one": b"1", "data/two": "@data/one",
}  # fmt: skip

DIFFS: dict[str, dict[str, bytes | str | None]] = {
    "identical": dict(BASE),
    "modify-add-delete": {**{k: v for k, v in BASE.items() if k != "etc/group"},
                          "etc/passwd": b"root\nuser\n", "new/file": b"new", "var/log/l": b"l"},
    "lib-emptied-opaque": {**{k: v for k, v in BASE.items() if not k.startswith("usr/lib/")},
                           "usr/lib/z": b"z"},
    "dir-becomes-file": {**{k: v for k, v in BASE.items() if not k.startswith("usr/")},
                         "usr": b"now a file"},
    "file-becomes-dir": {**{k: v for k, v in BASE.items() if k != "etc/hosts"},
                         "etc/hosts/inner": b"i"},
    "hardlink-broken": {**{k: v for k, v in BASE.items() if k != "data/two"}, "data/two": b"1"},
    "everything-gone": {"only": b"o"},
    "hardlink-group-grows": {**BASE, "data/three": "@data/one", "etc/passwd": "@data/one"},
}  # fmt: skip


@pytest.mark.parametrize("compare", ["metadata", "content"])
@pytest.mark.parametrize("name", sorted(DIFFS))
def test_from_diff_agrees_and_stacks_agree(tmp_path: Path, name: str, compare: str) -> None:
    lower = build_tree(tmp_path / "lower", BASE)
    upper = build_tree(tmp_path / "upper", DIFFS[name])
    if name == "modify-add-delete":
        os.utime(upper / "etc" / "hosts", (1, 1))  # metadata sees a change, content does not
    data = assert_same_diff(tmp_path, lower, upper, compare=compare)
    base = Layer.from_dir(lower, tmp_path / "base.tar", compression=None)
    twin = reference.Layer.from_dir(lower, tmp_path / "base-twin.tar", compression=None)
    assert twin.path.read_bytes() == base.path.read_bytes()
    assert data.endswith(b"\0" * 1024)  # a complete tar
    assert_same_stack(tmp_path, [base.path, tmp_path / "diff-ours.tar"])


@pytest.mark.parametrize("epoch", [None, 1_500_000_000])
@pytest.mark.parametrize("owner", ["root", "keep"])
def test_from_diff_options_agree(tmp_path: Path, owner: str, epoch: int | None) -> None:
    lower = build_tree(tmp_path / "lower", BASE)
    upper = build_tree(tmp_path / "upper", DIFFS["modify-add-delete"])
    os.chown(upper / "new" / "file", 1234, 5678)
    own: Literal["root", "keep"] = "keep" if owner == "keep" else "root"
    ours = Layer.from_diff(
        lower, upper, tmp_path / "o.tar", compression=None, owner=own, source_date_epoch=epoch
    )
    theirs = reference.Layer.from_diff(
        lower, upper, tmp_path / "t.tar", compression="gzip", owner=owner, source_date_epoch=epoch
    )
    assert gzip.decompress(theirs.path.read_bytes()) == ours.path.read_bytes()
    assert theirs.diff_id == ours.diff_id


def test_from_diff_chooses_opaque_only_when_strictly_smaller(tmp_path: Path) -> None:
    lower = build_tree(tmp_path / "lower", {"d/a": b"a", "d/b": b"b", "d/c": b"c", "e/x": b"x"})
    upper = build_tree(tmp_path / "upper", {"d/z": b"z", "e": None})
    data = assert_same_diff(tmp_path, lower, upper)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
    # d: 3 whiteouts + z + d = 5 > 3 (d, marker, z): opaque. e: 2 (e, .wh.x) ties 2: explicit.
    assert names == ["d", "d/.wh..wh..opq", "d/z", "e", "e/.wh.x"]


def test_from_diff_refuses_whiteout_names_like_rust(tmp_path: Path) -> None:
    lower = build_tree(tmp_path / "lower", {"a": b"a"})
    upper = build_tree(tmp_path / "upper", {".wh.a": b""})
    with pytest.raises(ValueError):
        Layer.from_diff(lower, upper, tmp_path / "o.tar", compression=None)
    with pytest.raises(ValueError):
        reference.Layer.from_diff(lower, upper, tmp_path / "t.tar", compression=None)


def test_apply_layer_of_a_diff_gives_the_upper_tree(tmp_path: Path) -> None:
    lower = build_tree(tmp_path / "lower", BASE)
    upper = build_tree(tmp_path / "upper", DIFFS["lib-emptied-opaque"])
    layer = reference.Layer.from_diff(lower, upper, tmp_path / "d.tar", compression=None)
    dest = tmp_path / "dest"
    subprocess.run(["cp", "-a", str(lower), str(dest)], check=True)  # keeps hardlinks
    layer.apply(dest)
    assert snapshot(dest) == snapshot(upper)


# --------------------------------------------------------------------------------------------
# Random stacks and mutations

NAMES = st.sampled_from(["a", "b", "c", "a-b", "d"])


@st.composite
def layer_specs(draw: st.DrawFn) -> list[Spec]:
    """One well-formed layer: unique paths, nothing below a non-directory of the layer,
    hardlinks to earlier files. (Across layers anything goes: type changes, whiteouts of
    directories, implied directories over lower files.)"""
    specs: list[Spec] = []
    kinds: dict[str, str] = {}
    files: list[str] = []

    def fits(path: str, kind: str) -> bool:
        parts = path.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if path in kinds or any(kinds.get(a, "dir") != "dir" for a in ancestors):
            return False
        return kind == "dir" or not any(p.startswith(path + "/") for p in kinds)

    for _ in range(draw(st.integers(0, 7))):
        path = "/".join(draw(st.lists(NAMES, min_size=1, max_size=3)))
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "whiteout", "opaque",
                                     "hardlink", "fifo"]))  # fmt: skip
        mode = draw(st.sampled_from([0o644, 0o755, 0o600]))
        if kind == "opaque":
            parent = path.rpartition("/")[0]
            marker = f"{parent}/.wh..wh..opq" if parent else ".wh..wh..opq"
            if fits(marker, "file"):
                kinds[marker] = "file"
                specs.append((parent, "opaque", None, 0))
            continue
        if kind == "whiteout":
            parent, _, base = path.rpartition("/")
            marker = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
            if fits(marker, "file"):
                kinds[marker] = "file"
                specs.append((path, "whiteout", None, 0))
            continue
        if not fits(path, kind) or (kind == "hardlink" and not files):
            continue
        kinds[path] = kind
        if kind == "file":
            specs.append((path, "file", draw(st.binary(max_size=700)), mode))
            files.append(path)
        elif kind == "hardlink":
            specs.append((path, "hardlink", draw(st.sampled_from(files)), mode))
        elif kind == "symlink":
            specs.append((path, "symlink", draw(st.sampled_from(["a", "/b", "../c"])), 0o777))
        else:
            specs.append((path, kind, None, mode))
    return specs


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(layers=st.lists(layer_specs(), min_size=1, max_size=4), gz=st.booleans())
def test_random_stacks_agree(layers: list[list[Spec]], gz: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="layercore-twin-cs-"))
    try:
        paths = blobs(work, layers, "gzip" if gz else None)
        try:
            Stack(paths)
        except ValueError as e:
            with pytest.raises(type(e)):
                reference.Stack(paths).flatten(work / "f.tar", compression=None)
            return
        assert_same_stack(work, paths)
    finally:
        shutil.rmtree(work)


@st.composite
def mutations(
    draw: st.DrawFn,
) -> tuple[dict[str, bytes | str | None], dict[str, bytes | str | None]]:
    lower: dict[str, bytes | str | None] = {}
    for _ in range(draw(st.integers(0, 8))):
        path = "/".join(draw(st.lists(NAMES, min_size=1, max_size=3)))
        if any(p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in lower):
            continue
        lower[path] = draw(st.sampled_from([b"x", b"yy", None, "a"]))
    upper = dict(lower)
    for path in list(lower):
        action = draw(st.sampled_from(["keep", "keep", "delete", "modify", "retype"]))
        if action == "delete":
            del upper[path]
        elif action == "modify":
            upper[path] = b"changed"
        elif action == "retype":
            upper[path] = None if lower[path] is not None else b"file"
    for _ in range(draw(st.integers(0, 3))):
        path = "/".join(draw(st.lists(NAMES, min_size=1, max_size=3)))
        if not any(
            p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in upper
        ):
            upper[path] = b"added"
    return lower, upper


@SETTINGS
@given(trees=mutations(), compare=st.sampled_from(["metadata", "content"]))
def test_random_mutations_give_identical_diffs(
    trees: tuple[dict[str, bytes | str | None], dict[str, bytes | str | None]], compare: str
) -> None:
    work = Path(tempfile.mkdtemp(prefix="layercore-twin-cs-"))
    try:
        lower = build_tree(work / "lower", trees[0])
        upper = build_tree(work / "upper", trees[1], mtime=1_600_000_000)
        assert_same_diff(work, lower, upper, compare=compare)
        base = reference.Layer.from_dir(lower, work / "base.tar", compression=None)
        assert_same_stack(work, [base.path, work / "diff-ours.tar"])
    finally:
        shutil.rmtree(work)
