"""Stack: the merged view of a stack of layers (lookup, listdir, walk, read, history, indexes).

Layers are written with Python's tarfile from small specs, so each test says exactly which
entries in which archive order it is about. The CONFORMANCE.md case numbers are in the names.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import layercore
from layercore import Layer, reference
from layercore.errors import (
    CorruptLayerError,
    DigestMismatchError,
    LayerError,
    LayerIOError,
    SourceNotFoundError,
    UnsupportedEntryError,
)
from layercore.stack import Stack

# (name, kind, content[, mode]). Kinds: "file" (content: bytes), "dir", "symlink" and
# "hardlink" (content: target), "fifo", "whiteout" (name: the path it deletes) and "opaque"
# (name: the directory, "" for the root). Entries are written in the order given.
Spec = tuple[str, str, bytes | str] | tuple[str, str, bytes | str, int]


def tar_bytes(specs: Sequence[Spec]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for n, spec in enumerate(specs):
            name, kind, content = spec[0], spec[1], spec[2]
            mode = spec[3] if len(spec) == 4 else None
            if kind == "whiteout":
                parent, _, base = name.rpartition("/")
                name, kind, content = (f"{parent}/" if parent else "") + f".wh.{base}", "file", b""
            elif kind == "opaque":
                name, kind, content = (f"{name}/" if name else "") + ".wh..wh..opq", "file", b""
            info = tarfile.TarInfo(name)
            info.mtime = 1_000_000 + n
            data: bytes | None = None
            if kind == "file":
                assert isinstance(content, bytes)
                data = content
                info.size = len(data)
                info.mode = 0o644 if mode is None else mode
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755 if mode is None else mode
            elif kind in ("symlink", "hardlink"):
                assert isinstance(content, str)
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = content
                info.mode = 0o777 if kind == "symlink" else 0o644
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                info.mode = 0o644
            else:
                raise AssertionError(kind)
            tf.addfile(info, None if data is None else io.BytesIO(data))
    return buf.getvalue()


def compress(tar: bytes, compression: str | None) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, mtime=0)
    if compression == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=tar, stdout=subprocess.PIPE, check=True
        ).stdout
    assert compression is None
    return tar


def write_layer(path: Path, specs: Sequence[Spec], compression: str | None = None) -> Path:
    path.write_bytes(compress(tar_bytes(specs), compression))
    return path


class Layers:
    """Writes numbered layer blobs into one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def __call__(self, specs: Sequence[Spec], compression: str | None = None) -> Path:
        self.count += 1
        return write_layer(self.root / f"layer{self.count}", specs, compression)

    def stack(self, *layers: Sequence[Spec], compression: str | None = None) -> Stack:
        return Stack([self(specs, compression) for specs in layers])


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers(tmp_path)


def paths(stack: Stack) -> list[str]:
    return [e.path for e in stack.walk()]


LOWER: list[Spec] = [
    ("etc", "dir", b""),
    ("etc/passwd", "file", b"root\n"),
    ("d", "dir", b""),
    ("d/old", "file", b"old"),
    ("d/sub", "dir", b""),
    ("d/sub/deep", "file", b"deep"),
    ("x", "file", b"lower x"),
]


# ----- whiteouts and opaque directories -----


def test_case1_whiteout_before_the_entry_in_the_same_layer_keeps_it(layers: Layers) -> None:
    stack = layers.stack(LOWER, [("x", "whiteout", b""), ("x", "file", b"upper x")])
    assert stack.read("x") == b"upper x"
    entry = stack.lookup("x")
    assert entry is not None and entry.layer == 1
    assert stack.history("x") == [(0, "added"), (1, "modified")]


def test_case2_whiteout_after_the_entry_in_the_same_layer_keeps_it(layers: Layers) -> None:
    stack = layers.stack(LOWER, [("x", "file", b"upper x"), ("x", "whiteout", b"")])
    assert stack.read("/x") == b"upper x"
    assert "x" in stack.listdir()


def test_case3_opaque_marker_after_the_new_child(layers: Layers) -> None:
    stack = layers.stack(
        LOWER, [("d", "dir", b""), ("d/new", "file", b"new"), ("d", "opaque", b"")]
    )
    assert stack.listdir("d") == ["new"]
    assert stack.lookup("d/old") is None
    assert stack.lookup("d/sub/deep") is None


def test_case4_opaque_marker_before_the_directory_entries(layers: Layers) -> None:
    stack = layers.stack(
        LOWER, [("d", "opaque", b""), ("d", "dir", b""), ("d/new", "file", b"new")]
    )
    assert stack.listdir("d") == ["new"]
    assert [p for p in paths(stack) if p.startswith("d")] == ["d", "d/new"]


def test_case5_rm_rf_mkdir_touch_in_one_step(layers: Layers) -> None:
    # What `RUN rm -rf /d && mkdir /d && touch /d/new` produces: an opaque, recreated d.
    stack = layers.stack(
        LOWER, [("d", "dir", b"", 0o700), ("d", "opaque", b""), ("d/new", "file", b"")]
    )
    assert [p for p in paths(stack) if p.startswith("d")] == ["d", "d/new"]
    d = stack.lookup("d")
    assert d is not None and (d.mode, d.layer) == (0o700, 1)
    assert stack.history("d/old") == [(0, "added"), (1, "hidden")]
    assert stack.history("d/new") == [(1, "added")]
    assert stack.history("d") == [(0, "added"), (1, "modified")]


def test_case6_whiteout_of_a_directory_with_deep_content(layers: Layers) -> None:
    deep: list[Spec] = [("a", "dir", b""), ("a/b", "dir", b""), ("a/b/c", "dir", b"")]
    deep += [("a/b/c/f", "file", b"f"), ("a/g", "file", b"g"), ("keep", "file", b"")]
    stack = layers.stack(deep, [("a", "whiteout", b"")])
    assert paths(stack) == ["keep"]
    assert stack.lookup_many(["a", "a/b", "a/b/c", "a/b/c/f", "a/g"]) == [None] * 5
    assert stack.history("a/b/c/f") == [(0, "added"), (1, "deleted")]
    with pytest.raises(SourceNotFoundError):
        stack.listdir("a")


def test_case7_a_bare_whiteout_is_rejected(layers: Layers) -> None:
    bad = layers([("d", "dir", b""), ("d/.wh.", "file", b"")])
    with pytest.raises(CorruptLayerError, match="whiteout must name a file"):
        Stack([layers(LOWER), bad])


def test_case8_the_opaque_marker_is_not_a_whiteout_of_dot_opq(layers: Layers) -> None:
    lower: list[Spec] = [("d", "dir", b""), ("d/a", "file", b""), ("d/.opq", "file", b"")]
    opaque = layers.stack(lower, [("d", "opaque", b"")])
    assert opaque.listdir("d") == []
    # `.wh..opq` (one prefix) is a whiteout of `.opq`, and nothing more.
    whiteout = layers.stack(lower, [("d/.opq", "whiteout", b"")])
    assert whiteout.listdir("d") == ["a"]


def test_case9_whiteouts_never_appear(layers: Layers) -> None:
    stack = layers.stack(
        LOWER,
        [("x", "whiteout", b""), ("d", "opaque", b""), ("etc/none", "whiteout", b"")],
    )
    names = paths(stack)
    assert not [p for p in names if ".wh." in p]
    assert all(".wh." not in n for n in stack.listdir("etc") + stack.listdir("d"))
    assert stack.lookup("etc/.wh.none") is None
    assert stack.lookup("d/.wh..wh..opq") is None


def test_case10_whiteout_of_something_no_lower_layer_has(layers: Layers) -> None:
    stack = layers.stack(LOWER, [("nothing", "whiteout", b"")])
    assert paths(stack) == paths(layers.stack(LOWER))
    assert stack.history("nothing") == []


def test_the_parents_of_a_whiteout_are_directories_of_its_layer(
    layers: Layers, tmp_path: Path
) -> None:
    # A layer holding only `a/.wh.x` (no lower `a`): flatten writes `a/`, and so does the view.
    stack = layers.stack(LOWER, [("a/x", "whiteout", b"")])
    flat = stack.flatten(tmp_path / "flat.tar", compression=None)
    flat_entries = [(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime) for e in flat.entries()]
    assert [(e.path, e.kind, e.mode, e.uid, e.gid, e.mtime) for e in stack.walk()] == flat_entries
    assert ("a", "dir", 0o755, 0, 0, 0) in flat_entries
    a = stack.lookup("a")
    assert a is not None and (a.kind, a.mode, a.uid, a.mtime, a.layer) == ("dir", 0o755, 0, 0, 1)
    assert stack.listdir("a") == []
    assert stack.listdir() == ["a", "d", "etc", "x"]
    assert stack.history("a") == [(1, "added")]
    assert stack.lookup("a/x") is None and stack.history("a/x") == []
    # Deeper, and for opaque markers too.
    stack = layers.stack(LOWER, [("p/q/r", "whiteout", b""), ("o/p", "opaque", b"")])
    assert [e.path for e in stack.walk() if e.layer == 1] == ["o", "o/p", "p", "p/q"]
    assert stack.listdir("p") == ["q"]
    assert [e.path for e in stack.walk()] == [
        e.path for e in stack.flatten(tmp_path / "flat2.tar", compression=None).entries()
    ]


def test_the_implied_parent_of_a_marker_lets_a_lower_directory_show_through(
    layers: Layers, tmp_path: Path
) -> None:
    lower: list[Spec] = [("d", "dir", b"", 0o700), ("d/a", "file", b"a"), ("d/b", "file", b"b")]
    stack = layers.stack(lower, [("d/a", "whiteout", b"")])
    d = stack.lookup("d")
    assert d is not None and (d.mode, d.mtime, d.layer) == (0o700, 1_000_000, 0)
    assert stack.listdir("d") == ["b"]
    assert stack.history("d") == [(0, "added")]
    flat = stack.flatten(tmp_path / "flat.tar", compression=None)
    assert [(e.path, e.mode, e.mtime) for e in flat.entries()] == [
        (e.path, e.mode, e.mtime) for e in stack.walk()
    ]
    # Whited out and implied by the same layer: the implied directory replaces the lower one.
    stack = layers.stack(lower, [("d", "whiteout", b""), ("d/b", "whiteout", b"")])
    d = stack.lookup("d")
    assert d is not None and (d.mode, d.mtime, d.layer) == (0o755, 0, 1)
    assert stack.listdir("d") == []
    assert stack.history("d") == [(0, "added"), (1, "modified")]
    flat = stack.flatten(tmp_path / "flat2.tar", compression=None)
    assert [(e.path, e.mode, e.mtime) for e in flat.entries()] == [
        (e.path, e.mode, e.mtime) for e in stack.walk()
    ]


def test_a_marker_below_a_same_layer_file_implies_nothing(layers: Layers) -> None:
    stack = layers.stack([("f", "file", b"f"), ("f/x", "whiteout", b"")])
    f = stack.lookup("f")
    assert f is not None and f.kind == "file"
    assert paths(stack) == ["f"]


def test_non_directory_entries_named_like_whiteouts_are_invisible(layers: Layers) -> None:
    stack = layers.stack(
        LOWER, [(".wh.dir", "dir", b""), (".wh.dir/f", "file", b""), (".wh.x", "symlink", "y")]
    )
    assert paths(stack) == paths(layers.stack(LOWER))


# ----- type changes -----


def test_case12_a_file_replaces_a_directory(layers: Layers) -> None:
    stack = layers.stack(LOWER, [("d", "file", b"now a file")])
    assert [p for p in paths(stack) if p.startswith("d")] == ["d"]
    assert stack.read("d") == b"now a file"
    assert stack.lookup("d/sub/deep") is None
    assert stack.history("d/sub/deep") == [(0, "added"), (1, "hidden")]
    with pytest.raises(UnsupportedEntryError, match="not a directory"):
        stack.listdir("d")


def test_case13_a_directory_replaces_a_file(layers: Layers) -> None:
    stack = layers.stack(LOWER, [("x", "dir", b"", 0o711), ("x/new", "file", b"n")])
    assert [p for p in paths(stack) if p.startswith("x")] == ["x", "x/new"]
    x = stack.lookup("x")
    assert x is not None and (x.kind, x.mode, x.layer) == ("dir", 0o711, 1)
    assert stack.history("x") == [(0, "added"), (1, "modified")]


def test_case14_symlink_replaces_directory_and_directory_replaces_symlink(
    layers: Layers,
) -> None:
    stack = layers.stack(LOWER, [("d", "symlink", "/etc")])
    d = stack.lookup("d")
    assert d is not None and (d.kind, d.linkname) == ("symlink", "/etc")
    assert [p for p in paths(stack) if p.startswith("d")] == ["d"]
    # Reads through the new symlink land in /etc, not in the hidden directory.
    assert stack.read("d/passwd") == b"root\n"
    with pytest.raises(SourceNotFoundError):
        stack.read("d/old")

    stack = layers.stack(
        [("l", "symlink", "etc"), ("etc", "dir", b"")], [("l", "dir", b""), ("l/f", "file", b"")]
    )
    assert stack.listdir("l") == ["f"]
    l_entry = stack.lookup("l")
    assert l_entry is not None and l_entry.kind == "dir"


def test_a_lower_file_under_an_upper_implied_directory(layers: Layers) -> None:
    # The upper layer has `p/f` but no `p`: extraction would make `p` a directory.
    stack = layers.stack([("p", "file", b"")], [("p/f", "file", b"")])
    p = stack.lookup("p")
    assert p is not None and (p.kind, p.mode, p.uid, p.mtime, p.layer) == ("dir", 0o755, 0, 0, 1)
    assert paths(stack) == ["p", "p/f"]


# ----- links -----


def test_case16_17_a_hardlink_keeps_its_body_when_the_target_changes_or_goes(
    layers: Layers,
) -> None:
    base: list[Spec] = [
        ("t1", "file", b"one"),
        ("l1", "hardlink", "t1"),
        ("t2", "file", b"two"),
        ("l2", "hardlink", "t2"),
    ]
    stack = layers.stack(base, [("t1", "file", b"changed"), ("t2", "whiteout", b"")])
    assert stack.read("l1") == b"one"
    assert stack.read("t1") == b"changed"
    assert stack.read("l2") == b"two"
    assert stack.lookup("t2") is None
    link = stack.lookup("l2")
    assert link is not None and (link.kind, link.linkname) == ("hardlink", "t2")


def test_case19_a_file_and_a_hardlink_with_one_name_across_layers(layers: Layers) -> None:
    stack = layers.stack([("x", "file", b"old")], [("y", "file", b"new"), ("x", "hardlink", "y")])
    assert paths(stack) == ["x", "y"]
    assert stack.read("x") == b"new"
    x = stack.lookup("x")
    assert x is not None and (x.kind, x.layer) == ("hardlink", 1)


def test_read_follows_symlinks_inside_the_stack(layers: Layers) -> None:
    stack = layers.stack(
        [
            ("usr", "dir", b""),
            ("usr/lib", "dir", b""),
            ("usr/lib/os-release", "file", b"ID=debian\n"),
            ("etc", "dir", b""),
            ("etc/os-release", "symlink", "../usr/lib/os-release"),
            ("lib", "symlink", "usr/lib"),
            ("abs", "symlink", "/usr/lib/os-release"),
            ("climb", "symlink", "../../../../usr/lib/os-release"),
            ("loop", "symlink", "loop"),
            ("dangling", "symlink", "/nowhere"),
        ]
    )
    for p in ["etc/os-release", "/lib/os-release", "abs", "climb", "lib/../lib/os-release"]:
        assert stack.read(p) == b"ID=debian\n", p
    # `..` after a symlink climbs from where the link led (usr/lib/.. is usr), as in the kernel.
    with pytest.raises(SourceNotFoundError):
        stack.read("lib/../etc/os-release")
    with pytest.raises(UnsupportedEntryError, match="symbolic links"):
        stack.read("loop")
    with pytest.raises(SourceNotFoundError):
        stack.read("dangling")
    link = stack.lookup("lib")
    assert link is not None and link.kind == "symlink"  # lookup does not follow
    assert stack.lookup("lib/os-release") is None


# ----- metadata -----


def test_case29_a_directory_in_several_layers_takes_the_highest_attributes(
    tmp_path: Path,
) -> None:
    def layer(name: str, mode: int, uid: int, mtime: int, child: str) -> Path:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            d = tarfile.TarInfo("shared")
            d.type, d.mode, d.uid, d.gid, d.mtime = tarfile.DIRTYPE, mode, uid, uid + 1, mtime
            d.uname = f"user{uid}"
            tf.addfile(d)
            f = tarfile.TarInfo(f"shared/{child}")
            tf.addfile(f, io.BytesIO(b""))
        (tmp_path / name).write_bytes(buf.getvalue())
        return tmp_path / name

    a = layer("a", 0o700, 10, 111, "a")
    b = layer("b", 0o750, 20, 222, "b")
    c = write_layer(tmp_path / "c", [("shared/c", "file", b"")])
    stack = Stack([a, b, c])
    shared = stack.lookup("shared")
    assert shared is not None
    got = (shared.mode, shared.uid, shared.gid, shared.uname, shared.mtime, shared.layer)
    assert got == (0o750, 20, 21, "user20", 222, 1)
    assert stack.listdir("shared") == ["a", "b", "c"]
    assert stack.history("shared") == [(0, "added"), (1, "modified")]


def test_entries_carry_the_layer_metadata(layers: Layers) -> None:
    stack = layers.stack(
        [("bin", "dir", b""), ("bin/tool", "file", b"#!", 0o4755), ("p", "fifo", b"")]
    )
    tool = stack.lookup("bin/tool")
    assert tool is not None
    assert (tool.path, tool.kind, tool.mode, tool.size, tool.mtime) == (
        "bin/tool",
        "file",
        0o4755,
        2,
        1_000_001,
    )
    fifo = stack.lookup("p")
    assert fifo is not None and fifo.kind == "fifo"
    with pytest.raises(UnsupportedEntryError, match="FIFO"):
        stack.read("p")


# ----- the API -----


def test_paths_are_normalised(layers: Layers) -> None:
    stack = layers.stack(LOWER)
    for p in ["etc/passwd", "/etc/passwd", "./etc/passwd", "etc//passwd", "/etc/./passwd"]:
        entry = stack.lookup(p)
        assert entry is not None and entry.path == "etc/passwd", p
    assert stack.lookup(Path("/etc/passwd")) is not None
    assert stack.lookup(b"etc/passwd") is not None
    assert stack.listdir("/") == stack.listdir("") == stack.listdir() == ["d", "etc", "x"]
    assert stack.listdir("/d/") == ["old", "sub"]
    assert stack.lookup("/") is None  # the root has no entry


def test_walk_is_depth_first_sorted_by_bytes(layers: Layers) -> None:
    stack = layers.stack(
        [("a-b", "dir", b""), ("a", "dir", b""), ("a/x", "file", b""), ("a.b", "file", b"")],
        [("a-b/y", "file", b""), ("B", "file", b"")],
    )
    assert paths(stack) == ["B", "a", "a/x", "a-b", "a-b/y", "a.b"]
    assert len(stack) == 6
    assert [e.layer for e in stack.walk()] == [1, 0, 0, 0, 1, 0]


def test_lookup_many(layers: Layers) -> None:
    stack = layers.stack(LOWER, [("new", "file", b"")])
    got = stack.lookup_many(["etc/passwd", "missing", "/new", "d/sub"])
    assert [None if e is None else (e.path, e.layer) for e in got] == [
        ("etc/passwd", 0),
        None,
        ("new", 1),
        ("d/sub", 0),
    ]
    # Any iterable, any size (more than one batch).
    many = ["etc/passwd" if i % 2 else "etc/passwdx" for i in range(1000)]
    results = stack.lookup_many(p for p in many)
    assert [r is not None for r in results] == [i % 2 == 1 for i in range(1000)]
    assert stack.lookup_many([]) == []
    with pytest.raises(TypeError):
        stack.lookup_many([1])  # type: ignore[list-item]


def test_non_utf8_names(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tf:
        info = tarfile.TarInfo(os.fsdecode(b"caf\xe9"))
        tf.addfile(info, io.BytesIO(b""))
    (tmp_path / "l").write_bytes(buf.getvalue())
    stack = Stack([tmp_path / "l"])
    name = os.fsdecode(b"caf\xe9")
    assert stack.listdir() == [name]
    entry = stack.lookup(name)
    assert entry is not None and entry.path == name
    assert stack.lookup(b"caf\xe9") is not None


def test_missing_paths_and_wrong_kinds(layers: Layers) -> None:
    stack = layers.stack(LOWER)
    assert stack.lookup("nope") is None
    with pytest.raises(FileNotFoundError):
        stack.read("nope")
    with pytest.raises(SourceNotFoundError) as info:
        stack.listdir("etc/nope")
    assert info.value.path == "etc/nope"
    with pytest.raises(UnsupportedEntryError, match="directory"):
        stack.read("etc")
    with pytest.raises(UnsupportedEntryError):
        stack.read("/")
    with pytest.raises(LayerError):
        stack.listdir("x")


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_read_from_every_compression(layers: Layers, compression: str | None) -> None:
    big = os.urandom(300_000) + b"z" * 2_000_000
    specs: list[Spec] = [
        ("small", "file", b"small"),
        ("big", "file", big),
        ("link", "hardlink", "big"),
        ("tail", "file", b"tail"),
    ]
    stack = layers.stack(specs, compression=compression)
    assert stack.layers[0].compression == compression
    assert stack.read("small") == b"small"
    assert stack.read("big") == big
    assert stack.read("link") == big
    assert stack.read("tail") == b"tail"


def test_read_from_our_gzip_starts_at_a_member_and_gets_every_byte(tmp_path: Path) -> None:
    # Our gzip layers have one member per MiB of tar, and the index keeps seek points every
    # 4 MiB or more: bodies before, across and after them read back whole.
    src = tmp_path / "src"
    src.mkdir()
    bodies = {
        "a-first": b"first",
        "b-big": os.urandom(9 << 20),
        "c-middle": os.urandom(5000),
        "d-big2": os.urandom(5 << 20),
        "e-last": b"last",
    }
    for name, body in bodies.items():
        (src / name).write_bytes(body)
    layer = Layer.from_dir(src, tmp_path / "l.tar.gz", compression="gzip")
    stack = Stack([layer])
    for name, body in bodies.items():
        assert stack.read(name) == body, name
    # The same through a cached index.
    cached = Stack([layer], index_dir=tmp_path / "idx")
    again = Stack([layer], index_dir=tmp_path / "idx")
    assert cached.read("e-last") == again.read("e-last") == b"last"
    assert again.read("d-big2") == bodies["d-big2"]


def test_read_into_streams_to_a_file(layers: Layers, tmp_path: Path) -> None:
    body = b"0123456789" * 500_000
    stack = layers.stack([("f", "file", body)], compression="gzip")
    dest = tmp_path / "out"
    assert stack.read_into("f", dest) == len(body)
    assert dest.read_bytes() == body
    before = set(tmp_path.iterdir())
    with pytest.raises(SourceNotFoundError):
        stack.read_into("missing", tmp_path / "other")
    assert set(tmp_path.iterdir()) == before


def rewrite(blob: Path, specs: Sequence[Spec]) -> None:
    """Rewrites a blob in place as a later write would: a new mtime (set explicitly, since two
    writes within the file system's timestamp granularity may get the same one)."""
    mtime = blob.stat().st_mtime_ns
    write_layer(blob, specs)
    os.utime(blob, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))


def test_reading_a_blob_rewritten_since_indexing_is_refused(layers: Layers) -> None:
    blob = layers([("f", "file", b"one")])
    stack = Stack([blob])
    rewrite(blob, [("f", "file", b"a different body")])
    with pytest.raises(LayerError, match="changed since it was indexed"):
        stack.read("f")


def test_layers_diff_ids_and_chain_id(layers: Layers) -> None:
    blobs = [layers(LOWER, "gzip"), layers([("n", "file", b"")]), layers([], "zstd")]
    stack = Stack(blobs)
    opened = [Layer.open(b) for b in blobs]
    assert list(stack.layers) == opened
    assert stack.diff_ids == [layer.diff_id for layer in opened]
    assert stack.chain_id == layercore.chain_id([layer.diff_id for layer in opened])
    assert Stack(blobs[:1]).chain_id == opened[0].diff_id
    # Layer objects are taken as they are, and their diff_ids are checked.
    assert Stack(opened).layers == tuple(opened)
    wrong = Layer.open(blobs[1], digest=opened[1].digest, diff_id=opened[0].diff_id)
    with pytest.raises(DigestMismatchError) as info:
        Stack([blobs[0], wrong])
    assert info.value.what == "diff_id"
    assert info.value.actual == opened[1].diff_id
    with pytest.raises(ValueError):
        _ = Stack([]).chain_id


def test_missing_and_corrupt_blobs(layers: Layers, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        Stack([layers(LOWER), tmp_path / "missing"])
    broken = tmp_path / "broken"
    broken.write_bytes(gzip.compress(tar_bytes(LOWER))[:-30])
    with pytest.raises(CorruptLayerError):
        Stack([broken])


def test_the_same_blob_twice(layers: Layers) -> None:
    blob = layers([("f", "file", b"")])
    stack = Stack([blob, blob])
    f = stack.lookup("f")
    assert f is not None and f.layer == 1
    assert stack.history("f") == [(0, "added"), (1, "modified")]


# ----- history -----


def test_history_through_add_modify_delete_hide_and_recreate(layers: Layers) -> None:
    stack = layers.stack(
        [("d", "dir", b""), ("d/f", "file", b"1")],
        [("d/f", "file", b"2")],
        [("d/f", "whiteout", b"")],
        [("d/f", "file", b"3")],
        [("d", "opaque", b"")],
        [("d/f", "file", b"4")],
        [("d", "file", b"")],
        [("unrelated", "file", b"")],
    )
    assert stack.history("d/f") == [
        (0, "added"),
        (1, "modified"),
        (2, "deleted"),
        (3, "added"),
        (4, "hidden"),
        (5, "added"),
        (6, "hidden"),
    ]
    assert stack.history("/d") == [(0, "added"), (6, "modified")]
    assert stack.history("never") == []


# ----- indexes -----


def test_index_save_and_load(layers: Layers) -> None:
    blobs = [layers(LOWER, "gzip"), layers([("n", "file", b"n")])]
    first = Stack(blobs)
    assert not any(Path(f"{b}.lcidx").exists() for b in blobs)
    written = first.save_indexes()
    assert written == [Path(f"{b}.lcidx") for b in blobs]
    second = Stack(blobs)
    assert paths(second) == paths(first)
    assert second.chain_id == first.chain_id
    assert second.layers == first.layers
    assert second.read("etc/passwd") == b"root\n"
    # The index really is what the second stack used: an in-place rewrite that keeps the size
    # and mtime (which no real writer does) goes unnoticed by the index.
    blob = blobs[1]
    st = blob.stat()
    other = tar_bytes([("m", "file", b"m")])
    assert len(other) == st.st_size
    with open(blob, "r+b") as f:
        f.write(other)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Stack(blobs).lookup("n") is not None


def test_a_stale_or_damaged_index_is_rebuilt(layers: Layers) -> None:
    blob = layers([("one", "file", b"1")])
    Stack([blob], save_index=True)
    index = Path(f"{blob}.lcidx")
    assert index.exists()
    saved = index.read_bytes()
    # The blob is rewritten: a new Stack sees the new content, and saves a new index.
    rewrite(blob, [("two", "file", b"22")])
    stack = Stack([blob], save_index=True)
    assert paths(stack) == ["two"]
    assert index.read_bytes() != saved
    assert Stack([blob]).read("two") == b"22"
    # A damaged index is rebuilt, not trusted.
    damaged = bytearray(index.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    index.write_bytes(bytes(damaged))
    assert paths(Stack([blob])) == ["two"]
    index.write_bytes(b"")
    assert paths(Stack([blob], save_index=True)) == ["two"]
    assert index.stat().st_size > 0


def test_a_fresh_index_is_not_rewritten(layers: Layers) -> None:
    blob = layers(LOWER)
    Stack([blob], save_index=True)
    index = Path(f"{blob}.lcidx")
    before = index.stat()
    Stack([blob], save_index=True)
    after = index.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_an_index_dir_holds_the_cached_indexes(layers: Layers, tmp_path: Path) -> None:
    blobs_dir = tmp_path / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True)
    blobs = [
        write_layer(blobs_dir / "aa11", LOWER, "gzip"),
        write_layer(blobs_dir / "bb22", [("n", "file", b"n")]),
    ]
    index_dir = tmp_path / ".layercore" / "index"
    # Nothing is written unless asked; asked, the directory is created and the blobs' own
    # directory is left alone.
    stack = Stack(blobs, index_dir=index_dir)
    assert stack.index_dir == index_dir
    assert not index_dir.exists()
    written = stack.save_indexes()
    assert written == [index_dir / "aa11.lcidx", index_dir / "bb22.lcidx"]
    assert sorted(os.listdir(blobs_dir)) == ["aa11", "bb22"]
    assert sorted(os.listdir(index_dir)) == ["aa11.lcidx", "bb22.lcidx"]
    assert Stack(blobs).index_dir is None
    # A later stack with the same index_dir uses them: a same-size, same-mtime rewrite of a
    # blob (which no real writer does) goes unnoticed, as it would beside the blob.
    blob = blobs[1]
    st = blob.stat()
    other = tar_bytes([("m", "file", b"m")])
    assert len(other) == st.st_size
    with open(blob, "r+b") as f:
        f.write(other)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    cached = Stack(blobs, index_dir=index_dir)
    assert cached.lookup("n") is not None and cached.lookup("m") is None
    # Without the index_dir the blob is indexed afresh.
    assert Stack(blobs).lookup("m") is not None


def test_a_stale_index_in_an_index_dir_is_rebuilt(layers: Layers, tmp_path: Path) -> None:
    blob = layers([("one", "file", b"1")])
    index_dir = tmp_path / "cache"
    Stack([blob], save_index=True, index_dir=index_dir)
    index = index_dir / f"{blob.name}.lcidx"
    assert index.exists() and not Path(f"{blob}.lcidx").exists()
    saved = index.read_bytes()
    rewrite(blob, [("two", "file", b"22")])
    stack = Stack([blob], save_index=True, index_dir=index_dir)
    assert paths(stack) == ["two"]
    assert stack.read("two") == b"22"
    assert index.read_bytes() != saved
    # An index left there by another blob of the same name is not used either.
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    other = write_layer(other_dir / blob.name, [("three", "file", b"333")])
    assert paths(Stack([other], index_dir=index_dir)) == ["three"]
    # A damaged one is rebuilt, and with save_index rewritten.
    index.write_bytes(b"not an index")
    assert paths(Stack([blob], save_index=True, index_dir=index_dir)) == ["two"]
    assert index.read_bytes() != b"not an index"
    # An index_dir that cannot be created is an error naming it, when saving only.
    blocked = tmp_path / "a-file" / "index"
    (tmp_path / "a-file").write_bytes(b"")
    assert paths(Stack([blob], index_dir=blocked)) == ["two"]
    with pytest.raises(LayerIOError) as info:
        Stack([blob], save_index=True, index_dir=blocked)
    assert Path(info.value.path) == blocked


def test_squash_keeps_the_index_dir(layers: Layers, tmp_path: Path) -> None:
    blobs = [layers(LOWER), layers([("n", "file", b"n")]), layers([("x", "whiteout", b"")])]
    index_dir = tmp_path / "cache"
    stack = Stack(blobs, save_index=True, index_dir=index_dir)
    squashed = stack.squash(1, 3, tmp_path / "squashed.tar", compression=None)
    assert squashed.index_dir == index_dir
    assert (index_dir / "squashed.tar.lcidx").exists()
    assert paths(squashed) == paths(stack)


# ----- a random stack against a model -----

NAMES = ["a", "b", "c"]
PATHS = ["/".join(parts) for depth in (1, 2, 3) for parts in itertools.product(NAMES, repeat=depth)]

spec_strategy = st.one_of(
    st.tuples(st.sampled_from(PATHS), st.just("file"), st.binary(max_size=3)),
    st.tuples(
        st.sampled_from(PATHS), st.just("dir"), st.just(b""), st.sampled_from([0o700, 0o755])
    ),
    st.tuples(st.sampled_from(PATHS), st.just("symlink"), st.sampled_from(["a", "/b/c"])),
    st.tuples(st.sampled_from(PATHS), st.just("whiteout"), st.just(b"")),
    st.tuples(st.sampled_from(["", *PATHS]), st.just("opaque"), st.just(b"")),
)


def walk_key(path: str) -> bytes:
    """Depth first, names sorted by bytes: a `/` sorts before every byte a name can hold."""
    return path.encode().replace(b"/", b"\0")


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def ancestors(path: str) -> list[str]:
    out = []
    while "/" in path:
        path = parent_of(path)
        out.append(path)
    return out


def model(stack_specs: list[list[Spec]]) -> dict[str, tuple[str, int, int]]:
    """Extracts the layers one by one into a dict path -> (kind, layer, mode), as a container
    runtime applies layers: first the layer's whiteouts and opaque markers (they speak about
    lower layers only), then its entries in archive order, the last one of a path winning.
    A missing parent is created as a directory (mode 0755, this layer); a parent that is a
    non-directory of a lower layer is replaced by one; an entry below a non-directory of the
    same layer cannot be created and is dropped. The parents of whiteouts and opaque markers
    are created the same way (containerd's apply does it)."""
    tree: dict[str, tuple[str, int, int]] = {}

    def remove_below(path: str, inclusive: bool) -> None:
        for p in list(tree):
            if (p.startswith(path + "/") if path else True) or (inclusive and p == path):
                del tree[p]

    def make_parents(path: str, k: int) -> None:
        for a in reversed(ancestors(path)):
            if a not in tree or tree[a][0] != "dir":
                remove_below(a, inclusive=True)
                tree[a] = ("dir", k, 0o755)

    for k, specs in enumerate(stack_specs):
        for spec in specs:
            if spec[1] == "whiteout":
                remove_below(spec[0], inclusive=True)
            elif spec[1] == "opaque":
                remove_below(spec[0], inclusive=False)
        entries = [s for s in specs if s[1] not in ("whiteout", "opaque")]
        last = {s[0]: i for i, s in enumerate(entries)}
        entries = [s for i, s in enumerate(entries) if last[s[0]] == i]
        kinds = {s[0]: s[1] for s in entries}
        for spec in specs:
            # A marker's path in the model is its target (whiteout) or directory (opaque):
            # the directories it lies in are those of `.../.wh.NAME` or `DIR/.wh..wh..opq`.
            if spec[1] in ("whiteout", "opaque") and spec[0]:
                marker = spec[0] + "/.wh..wh..opq" if spec[1] == "opaque" else spec[0]
                if not any(a in kinds and kinds[a] != "dir" for a in ancestors(marker)):
                    make_parents(marker, k)
        for spec in entries:
            path, kind = spec[0], spec[1]
            if any(a in kinds and kinds[a] != "dir" for a in ancestors(path)):
                continue  # below a non-directory of this same layer
            make_parents(path, k)
            mode = spec[3] if len(spec) == 4 else {"file": 0o644, "symlink": 0o777}[kind]
            if path in tree and tree[path][0] == "dir" and kind == "dir":
                tree[path] = ("dir", k, mode)
            else:
                remove_below(path, inclusive=True)
                tree[path] = (kind, k, mode)
    return tree


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.lists(spec_strategy, max_size=8), min_size=1, max_size=4))
def test_random_stacks_match_the_extraction_model(stack_specs: list[list[Spec]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        blobs = [write_layer(Path(tmp) / f"l{k}", specs) for k, specs in enumerate(stack_specs)]
        stack = Stack(blobs)
        expected = model(stack_specs)
        assert [(e.path, e.kind, e.layer, e.mode) for e in stack.walk()] == [
            (p, *expected[p]) for p in sorted(expected, key=walk_key)
        ]
        found = stack.lookup_many(PATHS)
        assert [e is not None for e in found] == [p in expected for p in PATHS]
        for d in ["", *PATHS]:
            if d == "" or expected.get(d, ("",))[0] == "dir":
                children = sorted(p.rpartition("/")[2] for p in expected if parent_of(p) == d)
                assert stack.listdir(d) == children
        for p in PATHS:
            history = stack.history(p)
            if p in expected:
                assert history and history[-1][1] in ("added", "modified")
            else:
                assert not history or history[-1][1] in ("deleted", "hidden")


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.lists(spec_strategy, max_size=8), min_size=1, max_size=4))
def test_random_stacks_show_what_flatten_writes(stack_specs: list[list[Spec]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        blobs = [write_layer(Path(tmp) / f"l{k}", specs) for k, specs in enumerate(stack_specs)]
        stack = Stack(blobs)
        try:
            flat = stack.flatten(Path(tmp) / "flat.tar", compression=None)
        except UnsupportedEntryError:
            return  # writing through a non-directory: flatten refuses what the view shows
        fields = ("path", "kind", "mode", "uid", "gid", "mtime", "linkname")
        assert [tuple(getattr(e, f) for f in fields) for e in stack.walk()] == [
            tuple(getattr(e, f) for f in fields) for e in flat.entries()
        ]


def extracted(root: Path) -> list[tuple[str, str, int]]:
    """(path, kind, mode) of everything below `root`, in walk order."""
    kinds = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st_ = os.lstat(full)
            out.append((os.path.relpath(full, root), kinds[stat.S_IFMT(st_.st_mode)], st_.st_mode))
    return sorted(((p, k, stat.S_IMODE(m)) for p, k, m in out), key=lambda t: walk_key(t[0]))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.lists(spec_strategy, max_size=8), min_size=1, max_size=4))
def test_random_stacks_extract_to_the_model(stack_specs: list[list[Spec]]) -> None:
    # Extraction streams each layer in archive order; the model (which the view matches)
    # applies markers first. Both give the same tree, implied directories and the parents of
    # whiteouts and opaque markers included, unless extraction refuses to write through a
    # non-directory (where the view shows a directory replacing it), as the twin does too.
    # Layers naming a path twice are left out: the view keeps the last entry, extraction
    # also what the earlier ones did (a file entry removing a directory's contents).
    for specs in stack_specs:
        named = [s[0] for s in specs if s[1] not in ("whiteout", "opaque")]
        assume(len(named) == len(set(named)))
    with tempfile.TemporaryDirectory() as tmp:
        blobs = [write_layer(Path(tmp) / f"l{k}", specs) for k, specs in enumerate(stack_specs)]
        try:
            Stack(blobs).extract(Path(tmp) / "x")
        except UnsupportedEntryError as e:
            assert "not a directory" in str(e) or "symlink" in str(e), str(e)
            with pytest.raises(UnsupportedEntryError):
                reference.Stack(blobs).extract(Path(tmp) / "twin")
            return
        expected = model(stack_specs)
        assert extracted(Path(tmp) / "x") == [
            (p, expected[p][0], expected[p][2]) for p in sorted(expected, key=walk_key)
        ]
