"""flatten and squash: the CONFORMANCE cases, GNU tar and umoci as oracles, a property test.

Layers are written with Python's ``tarfile`` from small specs, in the archive order the test
gives. Results are checked twice: by listing our output (``Layer.entries()``: no whiteouts, no
duplicates, canonical order) and by extracting it with GNU tar and comparing the tree.
"""

from __future__ import annotations

import dataclasses
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layercore import Layer
from layercore.errors import SourceNotFoundError, UnsupportedEntryError
from layercore.flatten import flatten, squash

IS_ROOT = os.geteuid() == 0
T0 = 1_600_000_000

# --- layer specs ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class E:
    """One tar entry: kind is file, dir, symlink or hardlink (whiteouts are files by name)."""

    kind: str
    path: str
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    mtime: int = T0
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()


def f(path: str, data: bytes | str = b"", mode: int = 0o644, mtime: int = T0) -> E:
    body = data.encode() if isinstance(data, str) else data
    return E("file", path, body, mode=mode, mtime=mtime)


def d(path: str, mode: int = 0o755, mtime: int = T0, uid: int = 0, gid: int = 0) -> E:
    return E("dir", path, mode=mode, mtime=mtime, uid=uid, gid=gid)


def sym(path: str, target: str) -> E:
    return E("symlink", path, target=target, mode=0o777)


def hard(path: str, target: str) -> E:
    return E("hardlink", path, target=target)


def wh(path: str) -> E:
    parent, _, base = path.rpartition("/")
    return f(f"{parent}/.wh.{base}" if parent else f".wh.{base}", mode=0o600, mtime=0)


def opq(directory: str) -> E:
    return f(f"{directory}/.wh..wh..opq" if directory else ".wh..wh..opq", mode=0o600, mtime=0)


def write_layer(path: Path, entries: Iterable[E], compression: str | None = None) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.mode, ti.mtime, ti.uid, ti.gid = e.mode, e.mtime, e.uid, e.gid
            ti.uname = ti.gname = "root"
            ti.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[e.kind]
            ti.linkname = e.target
            ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs}
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    data = raw.getvalue()
    if compression == "gzip":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def stack(tmp: Path, *layers: Sequence[E], compression: str | None = None) -> list[Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    return [
        write_layer(tmp / f"layer{i}.tar", entries, compression) for i, entries in enumerate(layers)
    ]


# --- reading results --------------------------------------------------------------------------


def _rank(name: bytes) -> tuple[int, bytes]:
    if name == b".wh..wh..opq":
        return (0, name)
    return (1 if name.startswith(b".wh.") else 2, name)


def canonical_key(path: str) -> tuple[tuple[int, bytes], ...]:
    return tuple(_rank(part) for part in os.fsencode(path).split(b"/"))


def listing(layer: Layer, *, whiteouts_allowed: bool = False) -> list[tuple[str, str]]:
    """(path, kind) in archive order, checking what every result of ours must satisfy."""
    items = [(e.path, e.kind) for e in layer.entries()]
    paths = [p for p, _ in items]
    assert len(set(paths)) == len(paths), f"duplicate entries: {paths}"
    assert paths == sorted(paths, key=canonical_key), "not in canonical order"
    if not whiteouts_allowed:
        assert not [p for p, k in items if k in ("whiteout", "opaque")], items
    return items


Snapshot = dict[str, tuple[Any, ...]]


def extract(layer: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(
        ["tar", "-xpf", str(layer), "-C", str(dest), "--numeric-owner"],
        check=True,
        stderr=subprocess.PIPE,
    )
    return dest


def snapshot(root: Path, *, dir_mtimes: bool = True) -> Snapshot:
    """path -> (kind, ...): what a user sees in an extracted tree, hardlink groups included."""
    out: Snapshot = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st_ = os.lstat(full)
            mode = stat.S_IMODE(st_.st_mode)
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", mode, int(st_.st_mtime) if dir_mtimes else None)
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISREG(st_.st_mode):
                with open(full, "rb") as fh:
                    body = fh.read()
                out[rel] = ("file", body, mode, int(st_.st_mtime))
                inodes.setdefault(st_.st_ino, []).append(rel)
            else:
                out[rel] = ("other", stat.S_IFMT(st_.st_mode))
    for names in inodes.values():
        if len(names) > 1:
            for n in names:
                out[n] = (*out[n], tuple(sorted(names)))
    return out


def files(snap: Snapshot) -> dict[str, bytes | str]:
    """The short form most tests compare: file bodies, symlink targets, dirs as '/'."""
    return {
        p: (v[1] if v[0] == "file" else "->" + v[1] if v[0] == "symlink" else "/")
        for p, v in snap.items()
    }


def flat_tree(tmp: Path, layers: Sequence[Path | Layer], **kwargs: Any) -> tuple[Layer, Snapshot]:
    tmp.mkdir(parents=True, exist_ok=True)
    out = flatten(layers, tmp / "flat.tar", compression=None, **kwargs)
    listing(out)
    return out, snapshot(extract(out.path, tmp / "flat-x"))


# --- CONFORMANCE: whiteouts and opaque directories --------------------------------------------


def test_1_2_a_whiteout_hides_lower_layers_only_in_either_order(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [f("x", "lower x"), f("y", "lower y"), f("z", "lower z")],
        [wh("x"), f("x", "upper x"), f("y", "upper y"), wh("y"), wh("z")],
    )
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"x": b"upper x", "y": b"upper y"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_3_4_an_opaque_marker_hides_lower_children_wherever_it_is(
    tmp_path: Path, marker_first: bool
) -> None:
    own = [d("d"), f("d/new", "new")]
    upper = [opq("d"), *own] if marker_first else [*own, opq("d")]
    layers = stack(tmp_path, [d("d"), f("d/old", "old"), d("d/sub"), f("d/sub/x")], upper)
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"d": "/", "d/new": b"new"}


@pytest.mark.parametrize("form", ["opaque", "whiteout"])
def test_5_rm_rf_mkdir_touch_in_one_step(tmp_path: Path, form: str) -> None:
    upper = (
        [d("d"), opq("d"), f("d/new", "n")]
        if form == "opaque"
        else [wh("d"), d("d"), f("d/new", "n")]
    )
    layers = stack(tmp_path, [d("d"), f("d/old", "o"), d("d/deep"), f("d/deep/x")], upper)
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"d": "/", "d/new": b"n"}


def test_6_whiteout_of_a_directory_with_deep_content(tmp_path: Path) -> None:
    deep = [d("d"), d("d/a"), d("d/a/b"), f("d/a/b/c", "c"), sym("d/a/l", "/x"), f("keep", "k")]
    layers = stack(tmp_path, deep, [f("d/a/b/more", "m")], [wh("d")])
    out, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"keep": b"k"}
    assert listing(out) == [("keep", "file")]


def test_9_10_whiteouts_never_appear_and_whiteouts_of_nothing_are_dropped(
    tmp_path: Path,
) -> None:
    layers = stack(
        tmp_path,
        [d("d"), f("d/x", "x")],
        [wh("never-existed"), wh("d/nothing"), opq("d"), d("d"), f("d/y", "y")],
    )
    out, tree = flat_tree(tmp_path, layers)
    assert listing(out) == [("d", "dir"), ("d/y", "file")]
    assert files(tree) == {"d": "/", "d/y": b"y"}


def test_7_a_bare_whiteout_is_rejected(tmp_path: Path) -> None:
    from layercore.errors import CorruptLayerError

    layers = stack(tmp_path, [d("etc"), f("etc/passwd", "p")], [f("etc/.wh.")])
    with pytest.raises(CorruptLayerError) as info:
        flatten(layers, tmp_path / "out", compression=None)
    assert info.value.path == str(layers[1])
    assert not (tmp_path / "out").exists()


def test_8_opaque_marker_is_not_a_whiteout_of_a_file_named_wh_opq(tmp_path: Path) -> None:
    # `.wh..opq` cannot exist as a name, but `d/x` must survive the marker in a lower layer.
    layers = stack(tmp_path, [d("d"), f("d/x", "x")], [opq("d"), d("d"), f("d/y", "y")])
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"d": "/", "d/y": b"y"}


# --- CONFORMANCE 11: squash ---------------------------------------------------------------------


def test_11_squash_keeps_only_the_whiteouts_the_kept_layers_need(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("d"), f("d/x", "x"), f("d/y", "y"), d("o"), f("o/old", "old"), f("gone", "g")],
        [f("base2", "b")],
        # The range: 2..4.
        [wh("d/x"), wh("never"), opq("o"), d("o"), f("o/new", "n"), f("tmp", "t")],
        [wh("d"), wh("gone"), wh("tmp")],
        [f("top", "t")],
    )
    new = squash(layers, 2, 4, tmp_path / "sq.tar", compression=None)
    assert [layer.path for layer in new] == [layers[0], layers[1], tmp_path / "sq.tar", layers[4]]
    assert listing(new[2], whiteouts_allowed=True) == [
        (".wh.d", "whiteout"),  # d/x's whiteout is redundant under it
        (".wh.gone", "whiteout"),  # `never` and `tmp` exist in no kept layer
        ("o", "dir"),
        ("o/.wh..wh..opq", "opaque"),
        ("o/new", "file"),
    ]
    _, before = flat_tree(tmp_path / "before", layers)
    _, after = flat_tree(tmp_path / "after", new)
    assert before == after
    assert files(after) == {"base2": b"b", "o": "/", "o/new": b"n", "top": b"t"}


def test_squash_from_the_bottom_is_flatten_and_validates_its_range(tmp_path: Path) -> None:
    layers = stack(tmp_path, [d("a"), f("a/x", "1")], [wh("a/x"), f("a/y", "2")], [f("b", "3")])
    whole = squash(layers, 0, 2, tmp_path / "sq.tar", compression=None)
    flat = flatten(layers[:2], tmp_path / "flat.tar", compression=None)
    assert whole[0].path.read_bytes() == flat.path.read_bytes()
    assert len(whole) == 2 and whole[1].path == layers[2]
    for start, end in [(1, 1), (2, 1), (0, 4), (-1, 2)]:
        with pytest.raises(ValueError):
            squash(layers, start, end, tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists()


def test_squash_makes_a_deleted_and_recreated_directory_opaque(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("d", 0o700), f("d/old", "o"), d("keep"), f("keep/k", "k")],
        [wh("d"), wh("keep/k")],
        [d("d", 0o750), f("d/new", "n")],
    )
    new = squash(layers, 1, 3, tmp_path / "sq.tar", compression=None)
    assert listing(new[1], whiteouts_allowed=True) == [
        ("d", "dir"),
        ("d/.wh..wh..opq", "opaque"),
        ("d/new", "file"),
        ("keep", "dir"),
        ("keep/.wh.k", "whiteout"),
    ]
    _, before = flat_tree(tmp_path / "before", layers)
    _, after = flat_tree(tmp_path / "after", new)
    assert before == after
    assert before["d"][1] == 0o750


# --- CONFORMANCE: type changes ------------------------------------------------------------------


def test_12_a_file_replaces_a_directory(tmp_path: Path) -> None:
    layers = stack(tmp_path, [d("a"), d("a/b"), f("a/b/c", "c"), f("a/x")], [f("a", "file")])
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"a": b"file"}


def test_13_a_directory_replaces_a_file(tmp_path: Path) -> None:
    layers = stack(tmp_path, [f("a", "file"), f("b", "b")], [d("a", 0o700), f("a/new", "n")])
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"a": "/", "a/new": b"n", "b": b"b"}
    assert tree["a"][1] == 0o700


def test_14_symlink_and_directory_replace_each_other(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("s"), f("s/x", "x"), sym("t", "/somewhere")],
        [sym("s", "/usr/share"), d("t"), f("t/y", "y")],
    )
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"s": "->/usr/share", "t": "/", "t/y": b"y"}


def test_file_directory_file_directory(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("a"), f("a/first", "1")],
        [f("a", "file")],
        [d("a"), f("a/second", "2")],
    )
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"a": "/", "a/second": b"2"}


# --- CONFORMANCE: links -------------------------------------------------------------------------


def test_16_hardlink_whose_target_is_modified_keeps_the_old_content(tmp_path: Path) -> None:
    # go-containerregistry #2002: ln t2 t1 && ln t2 t3; echo 456 > t1
    layers = stack(
        tmp_path,
        [f("t2", "123", mode=0o640), hard("t1", "t2"), hard("t3", "t2")],
        [f("t1", "456")],
    )
    out, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"t1": b"456", "t2": b"123", "t3": b"123"}
    assert tree["t2"] == ("file", b"123", 0o640, T0, ("t2", "t3"))
    assert listing(out) == [("t1", "file"), ("t2", "file"), ("t3", "hardlink")]
    # And when the modified name is the one the others were linked to.
    layers = stack(
        tmp_path / "b",
        [f("t2", "123"), hard("t1", "t2"), hard("t3", "t2")],
        [f("t2", "456")],
    )
    _, tree = flat_tree(tmp_path / "b", layers)
    assert files(tree) == {"t1": b"123", "t2": b"456", "t3": b"123"}
    assert tree["t1"][-1] == ("t1", "t3")


def test_17_hardlink_whose_target_is_deleted_keeps_the_content(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("bin"), f("bin/real", "ELF"), hard("bin/alias", "bin/real")],
        [wh("bin/real")],
    )
    out, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"bin": "/", "bin/alias": b"ELF"}
    assert listing(out) == [("bin", "dir"), ("bin/alias", "file")]


def test_18_both_names_deleted_in_one_later_layer(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [f("a", "body"), hard("b", "a"), f("c", "c")],
        [wh("a"), wh("b")],
    )
    _, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {"c": b"c"}


def test_19_a_file_and_a_hardlink_under_the_same_name_across_layers(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [f("name", "old"), f("other", "o")],
        [f("src", "new"), hard("name", "src")],
        [hard("more", "x"), f("x", "late")][::-1],  # x first, then the link to it
    )
    out, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {
        "more": b"late",
        "name": b"new",
        "other": b"o",
        "src": b"new",
        "x": b"late",
    }
    assert tree["name"][-1] == ("name", "src")
    assert tree["more"][-1] == ("more", "x")
    assert [p for p, _ in listing(out)] == ["more", "name", "other", "src", "x"]


def test_20_absolute_symlinks_are_preserved(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("usr"), d("usr/lib64"), sym("lib64", "/usr/lib64")],
        [sym("lib", "usr/lib"), sym("up", "../../etc/passwd")],
    )
    out, tree = flat_tree(tmp_path, layers)
    assert files(tree) == {
        "lib": "->usr/lib",
        "lib64": "->/usr/lib64",
        "up": "->../../etc/passwd",
        "usr": "/",
        "usr/lib64": "/",
    }
    by_path = {e.path: e for e in out.entries()}
    assert by_path["lib64"].linkname == "/usr/lib64"


# --- CONFORMANCE: hostile input -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [f("a/../../etc/passwd", "x")],
        [hard("a", "missing")],
        [hard("a", "/etc/passwd")],
        [sym("link", "/etc"), f("link/passwd", "x")],
    ],
    ids=["dotdot", "link-to-nothing", "link-outside", "through-own-symlink"],
)
def test_22_23_24_hostile_entries_are_rejected_naming_the_layer(
    tmp_path: Path, bad: list[E]
) -> None:
    layers = stack(tmp_path, [f("ok", "ok")], bad)
    with pytest.raises(UnsupportedEntryError) as info:
        flatten(layers, tmp_path / "out", compression=None)
    assert info.value.path == str(layers[1])
    assert not (tmp_path / "out").exists()


def test_23_writing_through_a_lower_symlink_is_rejected(tmp_path: Path) -> None:
    layers = stack(tmp_path, [sym("link", "/etc")], [f("link/passwd", "owned")])
    with pytest.raises(UnsupportedEntryError) as info:
        flatten(layers, tmp_path / "out", compression=None)
    assert info.value.path == str(layers[1])
    assert "link" in str(info.value)
    # Replacing the symlink with a directory first is a normal type change.
    layers = stack(tmp_path / "ok", [sym("link", "/etc")], [d("link"), f("link/passwd", "p")])
    _, tree = flat_tree(tmp_path / "ok", layers)
    assert files(tree) == {"link": "/", "link/passwd": b"p"}


def test_missing_layers_and_bad_arguments(tmp_path: Path) -> None:
    layers = stack(tmp_path, [f("a")])
    with pytest.raises(SourceNotFoundError):
        flatten([*layers, tmp_path / "nope.tar"], tmp_path / "out")
    with pytest.raises(ValueError):
        flatten(layers, tmp_path / "out", threads=0)
    with pytest.raises(ValueError):
        flatten(layers, tmp_path / "out", compression="lzma")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        flatten(layers, tmp_path / "out", level=99)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer0.tar"]


# --- CONFORMANCE: metadata and reproducibility ------------------------------------------------


def test_29_directory_attributes_come_from_the_highest_layer(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        [d("d", 0o700, mtime=T0 + 1, uid=1000, gid=1000), f("d/a", "a")],
        [d("d", 0o750, mtime=T0 + 2, uid=2, gid=3), f("d/b", "b")],
        [f("d/c", "c")],  # implies d without describing it: attributes stay
    )
    out, tree = flat_tree(tmp_path, layers)
    d_entry = next(e for e in out.entries() if e.path == "d")
    assert (d_entry.mode, d_entry.uid, d_entry.gid, d_entry.mtime) == (0o750, 2, 3, T0 + 2)
    assert tree["d"] == ("dir", 0o750, T0 + 2)
    assert os.stat(tmp_path / "flat-x" / "d").st_uid == (2 if IS_ROOT else os.geteuid())


def test_30_xattrs_survive_flatten(tmp_path: Path) -> None:
    ping = dataclasses.replace(
        f("bin/ping", "ELF", mode=0o755), xattrs=(("security.capability", "cap_net_raw+p"),)
    )
    layers = stack(
        tmp_path,
        [d("bin"), f("bin/ping", "old")],
        [dataclasses.replace(d("bin"), xattrs=(("user.dir", "yes"),)), ping],
    )
    out = flatten(layers, tmp_path / "out.tar", compression=None)
    xattrs = {e.path: e.xattrs for e in out.entries()}
    assert xattrs == {
        "bin": {"user.dir": b"yes"},
        "bin/ping": {"security.capability": b"cap_net_raw+p"},
    }


def test_implied_directories_get_defaults_and_the_source_date_epoch(tmp_path: Path) -> None:
    layers = stack(tmp_path, [f("a/b/c", "deep", mtime=T0)])
    out = flatten(layers, tmp_path / "out.tar", compression=None)
    meta = {e.path: (e.kind, e.mode, e.uid, e.gid, e.mtime) for e in out.entries()}
    assert meta == {
        "a": ("dir", 0o755, 0, 0, 0),
        "a/b": ("dir", 0o755, 0, 0, 0),
        "a/b/c": ("file", 0o644, 0, 0, T0),
    }
    clamped = flatten(layers, tmp_path / "sde.tar", compression=None, source_date_epoch=1000)
    assert {e.mtime for e in clamped.entries()} == {1000}


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_31_two_runs_and_any_thread_count_give_identical_bytes(
    tmp_path: Path, compression: Any
) -> None:
    big = os.urandom(3 << 20) + b"x" * (2 << 20)
    layers = stack(
        tmp_path,
        [d("d"), f("d/big", big), f("d/small", "s"), f("z", "z"), f("a", "a")],
        [f("d/big2", big[::-1]), wh("z"), hard("d/link", "d/big2")],
        compression="gzip",
    )
    blobs = []
    for i, threads in enumerate([1, 2, 1, 4]):
        out = flatten(layers, tmp_path / f"o{i}", compression=compression, threads=threads)
        blobs.append((out.digest, out.diff_id, out.path.read_bytes()))
    assert all(b == blobs[0] for b in blobs)
    assert out.compression == compression


def test_result_is_a_described_layer_and_accepts_layers_or_paths(tmp_path: Path) -> None:
    paths = stack(tmp_path, [d("a"), f("a/x", "1")], [f("a/y", "2")], compression="gzip")
    from_paths = flatten(paths, tmp_path / "p.tar.gz")
    from_layers = flatten([Layer.open(p) for p in paths], tmp_path / "l.tar.gz")
    assert from_paths.path.read_bytes() == from_layers.path.read_bytes()
    assert from_paths == dataclasses.replace(Layer.open(from_paths.path), path=from_paths.path)
    assert from_paths.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    from_paths.verify()
    assert gzip.decompress(from_paths.path.read_bytes())[:5] == b"a/\0\0\0"


def test_flatten_equals_from_dir_of_the_extracted_tree(tmp_path: Path) -> None:
    """The promise behind the canonical order: flatten == build(extract(flatten))."""
    layers = stack(
        tmp_path,
        [
            d("etc", 0o755, mtime=T0 + 5),
            f("etc/passwd", "root:x:0:0\n", mtime=T0 + 1),
            d("usr", 0o755),
            d("usr/bin", 0o755, mtime=T0 + 9),
            f("usr/bin/tool", "v1", mode=0o4755),
            hard("usr/bin/tool-alias", "usr/bin/tool"),
            sym("lib64", "/usr/lib64"),
            d("a-b", 0o700),
            f("a-b/x", "x"),
        ],
        [
            d("usr/bin", 0o750, mtime=T0 + 10),
            f("usr/bin/tool", "v2"),
            d("a", 0o755),
            f("a/y", "y"),
            f(".wh.lib64", b""),
        ],
    )
    flat = flatten(layers, tmp_path / "flat.tar", compression=None)
    tree = extract(flat.path, tmp_path / "x")
    rebuilt = Layer.from_dir(tree, tmp_path / "rebuilt.tar", compression=None, owner="keep")
    assert flat.path.read_bytes() == rebuilt.path.read_bytes()


# --- umoci as an independent oracle -----------------------------------------------------------


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest, len(data)


def oci_layout(layout: Path, layers: Sequence[Path], tag: str = "t") -> None:
    """An OCI image layout holding one image made of `layers` (plain tar or gzip)."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors, diff_ids = [], []
    for path in layers:
        data = path.read_bytes()
        gz = data[:2] == b"\x1f\x8b"
        tar = gzip.decompress(data) if gz else data
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        digest, size = _blob(layout, data)
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz else "")
        descriptors.append({"mediaType": media, "digest": digest, "size": size})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": descriptors,
    }
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def umoci_rootfs(tmp: Path, layers: Sequence[Path]) -> Path:
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    if not IS_ROOT:
        pytest.skip("umoci unpack without --rootless needs root")
    oci_layout(tmp / "layout", layers)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp / 'layout'}:t", str(tmp / "bundle")],
        check=True,
        capture_output=True,
    )
    return tmp / "bundle" / "rootfs"


UMOCI_STACK: list[list[E]] = [
    [
        d("etc"),
        f("etc/passwd", "root:x:0:0\n"),
        f("etc/shadow", "secret", mode=0o600),
        d("usr"),
        d("usr/lib64"),
        f("usr/lib64/libc.so", "ELF libc"),
        sym("lib64", "/usr/lib64"),
        d("var", 0o755),
        d("var/cache"),
        d("var/cache/apt"),
        f("var/cache/apt/pkgcache.bin", "cache" * 1000),
        d("opt"),
        f("opt/old", "old"),
        d("bin"),
        f("bin/t2", "123"),
        hard("bin/t1", "bin/t2"),
        hard("bin/t3", "bin/t2"),
        d("d"),
        f("d/gone", "g"),
        f("file-then-dir", "f"),
        d("dir-then-file"),
        f("dir-then-file/x", "x"),
    ],
    [
        f("etc/hostname", "box\n"),
        wh("var/cache"),
        d("opt"),
        opq("opt"),
        f("opt/new", "new"),
        f("bin/t1", "456"),
        wh("bin/t2"),
        wh("d"),
        d("d", 0o700),
        f("d/fresh", "fresh"),
        d("file-then-dir", 0o750),
        f("file-then-dir/y", "y"),
        f("dir-then-file", "now a file"),
    ],
    [
        d("etc", 0o711, mtime=T0 + 100),
        f("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        f("new-top", "top"),
    ],
]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_umoci_unpack_of_the_stack_equals_our_flattened_layer(
    tmp_path: Path, compression: str | None
) -> None:
    layers = stack(tmp_path / "layers", *UMOCI_STACK, compression=compression)
    rootfs = umoci_rootfs(tmp_path / "umoci", layers)
    flat = flatten(layers, tmp_path / "flat.tar", compression=compression)
    listing(flat)
    ours = snapshot(extract(flat.path, tmp_path / "ours"), dir_mtimes=False)
    theirs = snapshot(rootfs, dir_mtimes=False)
    assert ours == theirs
    assert files(ours)["bin/t3"] == b"123"
    # umoci also unpacks our single flattened layer to the same tree.
    again = snapshot(umoci_rootfs(tmp_path / "umoci2", [flat.path]), dir_mtimes=False)
    assert again == theirs


def test_umoci_unpack_of_a_squashed_stack_equals_the_original(tmp_path: Path) -> None:
    layers = stack(tmp_path / "layers", *UMOCI_STACK, compression="gzip")
    new = squash(layers, 1, 3, tmp_path / "sq.tar.gz")
    original = snapshot(umoci_rootfs(tmp_path / "u1", layers), dir_mtimes=False)
    squashed = snapshot(umoci_rootfs(tmp_path / "u2", [x.path for x in new]), dir_mtimes=False)
    assert squashed == original


# --- property test: a Python model of the OCI rules -------------------------------------------


class Node:
    """A file-system object of the model; hardlinked names share one Node."""

    def __init__(self, kind: str, mode: int, mtime: int, data: bytes = b"", target: str = ""):
        self.kind, self.mode, self.mtime, self.data, self.target = kind, mode, mtime, data, target
        self.poisoned = False  # an implied directory that replaced a non-directory


class ModelError(Exception):
    """The model's verdict that the stack writes through a non-directory (CONFORMANCE 23)."""


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _delete(tree: dict[str, Node], path: str, *, keep_self: bool = False) -> None:
    for p in [p for p in tree if p.startswith(path + "/") or (p == path and not keep_self)]:
        del tree[p]


def model(layers: Sequence[Sequence[E]]) -> dict[str, Node]:
    """Applies the layers one by one the way the OCI image-spec describes it."""
    tree: dict[str, Node] = {}
    for layer in layers:
        # Whiteouts and opaque markers first: they hide lower layers only.
        for e in layer:
            base = e.path.rpartition("/")[2]
            parent = e.path.rpartition("/")[0]
            if base == ".wh..wh..opq":
                if parent:
                    _delete(tree, parent, keep_self=True)
                else:
                    tree.clear()
            elif base.startswith(".wh."):
                _delete(tree, f"{parent}/{base[4:]}" if parent else base[4:])
        explicit = {e.path for e in layer if not e.path.rpartition("/")[2].startswith(".wh.")}
        for e in layer:
            for a in _ancestors(e.path):
                node = tree.get(a)
                if node is None or node.kind != "dir":
                    # A directory the layer implies; over a non-directory that is an error
                    # unless the layer describes the directory itself.
                    poisoned = node is not None and a not in explicit
                    _delete(tree, a)
                    tree[a] = Node("dir", 0o755, 0)
                    tree[a].poisoned = poisoned
            if e.path.rpartition("/")[2].startswith(".wh."):
                continue
            old = tree.get(e.path)
            if e.kind == "dir" and old is not None and old.kind == "dir":
                old.mode, old.mtime, old.poisoned = e.mode, e.mtime, False
                continue
            if e.kind == "hardlink":
                new = tree[e.target]
            else:
                new = Node(e.kind, e.mode, e.mtime, e.data, e.target)
            _delete(tree, e.path)
            tree[e.path] = new
    if any(node.poisoned for node in tree.values()):
        raise ModelError
    return tree


def model_snapshot(tree: dict[str, Node]) -> Snapshot:
    out: Snapshot = {}
    groups: dict[int, list[str]] = {}
    for path, node in tree.items():
        if node.kind == "dir":
            out[path] = ("dir", node.mode, node.mtime)
        elif node.kind == "symlink":
            out[path] = ("symlink", node.target)
        else:
            out[path] = ("file", node.data, node.mode, node.mtime)
            groups.setdefault(id(node), []).append(path)
    for names in groups.values():
        if len(names) > 1:
            for n in names:
                out[n] = (*out[n], tuple(sorted(names)))
    return out


POOL = ["a", "b", "c", "a/x", "a/y", "a/x/z", "b/x", "b/y"]
DIRS = ["", "a", "b", "a/x"]


@st.composite
def layer_spec(draw: st.DrawFn) -> list[E]:
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["file", "file", "dir", "dir", "symlink", "wh", "opq", "hard"]),
                st.sampled_from(POOL),
                st.sampled_from(DIRS),
                st.integers(0, 3),
            ),
            min_size=1,
            max_size=8,
        )
    )
    entries: list[E] = []
    for kind, path, directory, n in ops:
        files_so_far = [e.path for e in entries if e.kind == "file" and ".wh." not in e.path]
        if kind == "file":
            e = f(path, f"{path}:{n}", mode=[0o644, 0o600, 0o755, 0o640][n], mtime=T0 + n)
        elif kind == "dir":
            e = d(path, [0o755, 0o700, 0o750, 0o711][n], mtime=T0 + 10 + n)
        elif kind == "symlink":
            e = sym(path, ["/abs/target", "rel", "../up", "a/x"][n])
        elif kind == "wh":
            e = wh(path)
        elif kind == "opq":
            e = opq(directory)
        elif files_so_far:
            e = hard(path, files_so_far[n % len(files_so_far)])
        else:
            continue
        # One entry per path, and nothing below a non-directory of the same layer.
        if any(x.path == e.path for x in entries):
            continue
        nondirs = {x.path for x in entries if x.kind != "dir" and ".wh." not in x.path}
        if e.kind != "dir" and ".wh." not in e.path:
            if any(x.path.startswith(e.path + "/") for x in entries):
                continue
            nondirs.add(e.path)
        if any(a in nondirs for a in _ancestors(e.path)):
            continue
        entries.append(e)
    return entries


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(layers=st.lists(layer_spec(), min_size=2, max_size=4), gz=st.booleans())
def test_property_flatten_equals_applying_the_layers_one_by_one(
    layers: list[list[E]], gz: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        paths = stack(tmp_path / "layers", *layers, compression="gzip" if gz else None)
        try:
            expected = model_snapshot(model(layers))
        except ModelError:
            with pytest.raises(UnsupportedEntryError):
                flatten(paths, tmp_path / "flat.tar", compression=None)
            return
        _, tree = flat_tree(tmp_path, paths)
        assert tree == expected
        # Squashing the top layers over the bottom one shows the same tree.
        new = squash(paths, 1, len(paths), tmp_path / "sq.tar", compression=None)
        _, again = flat_tree(tmp_path / "again", new)
        assert again == expected
