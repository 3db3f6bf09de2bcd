"""The Rust engine and the pure-Python twin agree byte for byte.

For the same tree and options both write the same uncompressed tar (so the same diff_id), read
the same entries back, and compute the same digests. The property test drives both with random
trees full of the corner cases a tar header has: names around the 100-byte ustar limit,
non-ASCII and non-UTF-8 names, deep nesting, links, odd modes, old and future mtimes.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layercore import Layer, reference


def tar_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


def entry_dict(entry: object) -> dict[str, object]:
    names = ["path", "kind", "mode", "uid", "gid", "uname", "gname", "size", "mtime",
             "linkname", "devmajor", "devminor", "xattrs", "offset"]  # fmt: skip
    return {name: getattr(entry, name) for name in names}


OPTIONS = [
    {"compression": None},
    {"compression": "gzip", "source_date_epoch": 1_650_000_000},
    {"compression": "zstd", "owner": "keep"},
    {"compression": None, "owner": "keep", "source_date_epoch": 0},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_rust_and_reference_write_identical_tars(
    rich_tree: Path, tmp_path: Path, options: dict[str, object]
) -> None:
    ours = Layer.from_dir(rich_tree, tmp_path / "ours", **options)  # type: ignore[arg-type]
    theirs = reference.Layer.from_dir(rich_tree, tmp_path / "theirs", **options)  # type: ignore[arg-type]
    assert tar_bytes(ours.path) == tar_bytes(theirs.path)
    assert ours.diff_id == theirs.diff_id
    assert ours.uncompressed_size == theirs.uncompressed_size
    assert ours.media_type == theirs.media_type
    if options["compression"] is None:
        assert ours.path.read_bytes() == theirs.path.read_bytes()
        assert ours.digest == theirs.digest


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_rust_and_reference_read_the_same_entries_and_digests(
    rich_tree: Path, tmp_path: Path, compression: str | None
) -> None:
    built = Layer.from_dir(rich_tree, tmp_path / "layer", compression=compression)  # type: ignore[arg-type]
    ours = Layer.open(built.path)
    theirs = reference.Layer.open(built.path)
    assert (ours.digest, ours.diff_id, ours.size, ours.uncompressed_size) == (
        theirs.digest,
        theirs.diff_id,
        theirs.size,
        theirs.uncompressed_size,
    )
    assert [entry_dict(e) for e in ours.entries()] == [asdict(e) for e in theirs.entries()]


def test_both_read_a_reference_layer_and_a_gnu_tar_layer_alike(
    rich_tree: Path, tmp_path: Path
) -> None:
    ref = reference.Layer.from_dir(rich_tree, tmp_path / "ref.tar.gz")
    gnu = tmp_path / "gnu.tar"
    subprocess.run(
        ["tar", "--format=posix", "--xattrs", "--sort=name", "-cf", str(gnu), "-C",
         str(rich_tree), "."],
        check=True,
    )  # fmt: skip
    for path in (ref.path, gnu):
        ours = [entry_dict(e) for e in Layer.open(path).entries()]
        theirs = [asdict(e) for e in reference.Layer.open(path).entries()]
        assert ours == theirs


def test_digest_helpers_agree() -> None:
    import layercore

    ids = [reference.Digester(bytes([i]) * 100).digest() for i in range(4)]
    assert layercore.chain_id(ids) == reference.chain_id(ids)
    d1, d2 = layercore.Digester(), reference.Digester()
    for chunk in (b"a", b"bc" * 1000, b""):
        d1.update(chunk)
        d2.update(chunk)
    assert d1.digest() == d2.digest()


# --- property test over random trees ------------------------------------------------------------

NAME_PARTS = st.sampled_from(
    [b"a", b"b", b"a-b", b"a.b", b"A", b"z" * 40, b"caf\xc3\xa9", b"caf\xe9", b"\xff\xfe", b"x y",
     b"tab\there", b"new\nline", b".wh-not", b"_", b"0", b"\xe2\x82\xac"]
)  # fmt: skip
NAMES = (
    st.lists(NAME_PARTS, min_size=1, max_size=4)
    .map(b"".join)
    .filter(lambda n: n not in (b".", b"..") and len(n) < 200)
)


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, bytes, object, int, int]]:
    """(kind, relative path, payload, mode, mtime) tuples; directories come before their content."""
    ops: list[tuple[str, bytes, object, int, int]] = []
    dirs = [b""]
    files: list[bytes] = []
    for _ in range(draw(st.integers(1, 25))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        path = parent + b"/" + name if parent else name
        if any(op[1] == path for op in ops) or len(path) > 400:
            continue
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink", "deep"]))
        mtime = draw(st.sampled_from([0, 1, 1_000_000_000, 1_700_000_000, 2**33 + 5, -86400]))
        mode = draw(st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o1777, 0o444]))
        if kind == "file":
            size = draw(st.sampled_from([0, 1, 511, 512, 513, 5000]))
            ops.append(("file", path, draw(st.binary(min_size=size, max_size=size)), mode, mtime))
            files.append(path)
        elif kind == "dir":
            ops.append(("dir", path, None, mode | 0o700, mtime))
            dirs.append(path)
        elif kind == "deep":
            # A directory path of 98-104 bytes: the ustar name limit with the trailing slash.
            deep = path + b"/" + b"d" * max(1, 100 - len(path) + draw(st.integers(-3, 3)))
            ops.append(("dir", path, None, 0o755, mtime))
            ops.append(("dir", deep, None, 0o755, mtime))
            dirs.extend([path, deep])
        elif kind == "symlink":
            target = draw(st.sampled_from([b"/usr/lib64", b"../up", b"t" * 120, b"caf\xe9"]))
            ops.append(("symlink", path, target, 0o777, mtime))
        elif files:
            ops.append(("hardlink", path, draw(st.sampled_from(files)), 0o644, mtime))
    return ops


def materialise(root: Path, ops: list[tuple[str, bytes, object, int, int]]) -> None:
    base = os.fsencode(root)
    os.mkdir(base)
    for kind, rel, payload, mode, _ in ops:
        full = base + b"/" + rel
        if kind == "file":
            assert isinstance(payload, bytes)
            with open(full, "wb") as f:
                f.write(payload)
            os.chmod(full, mode)
        elif kind == "dir":
            os.mkdir(full)
            os.chmod(full, mode)
        elif kind == "symlink":
            assert isinstance(payload, bytes)
            os.symlink(payload, full)
        elif kind == "hardlink":
            assert isinstance(payload, bytes)
            os.link(base + b"/" + payload, full)
    # mtimes last, deepest first, so creating children does not move a parent's mtime.
    for _kind, rel, _payload, _mode, mtime in sorted(ops, key=lambda op: -op[1].count(b"/")):
        os.utime(base + b"/" + rel, (mtime, mtime), follow_symlinks=False)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=trees(), epoch=st.sampled_from([None, 1_600_000_000]))
def test_random_trees_give_byte_identical_tars(
    ops: list[tuple[str, bytes, object, int, int]], epoch: int | None
) -> None:
    work = Path(tempfile.mkdtemp(prefix="layercore-twin-"))
    try:
        src = work / "src"
        materialise(src, ops)
        ours = Layer.from_dir(src, work / "ours.tar", compression=None, source_date_epoch=epoch)
        theirs = reference.Layer.from_dir(
            src, work / "theirs.tar", compression=None, source_date_epoch=epoch
        )
        assert ours.path.read_bytes() == theirs.path.read_bytes()
        assert ours.diff_id == theirs.diff_id
        read_ours = [entry_dict(e) for e in Layer.open(ours.path).entries()]
        read_theirs = [asdict(e) for e in reference.Layer.open(ours.path).entries()]
        assert read_ours == read_theirs
        # And GNU tar agrees on what is in it.
        listed = subprocess.run(
            ["tar", "--quoting-style=literal", "-tf", str(ours.path)],
            capture_output=True,
            check=True,
        ).stdout.split(b"\n")[:-1]
        expected = [os.fsencode(e["path"]) for e in read_ours]  # type: ignore[arg-type]
        if all(b"\n" not in name for name in expected):
            assert [n.rstrip(b"/") for n in listed] == expected
    finally:
        shutil.rmtree(work)
