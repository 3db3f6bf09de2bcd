"""The changeset engine through the public API, end to end: build a base layer from a tree,
change the tree, diff it into a second layer, and check that the merged view, the extraction
and the flattened layer all show the changed tree."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import layercore
from layercore import Layer, Stack


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            if stat.S_ISREG(st.st_mode):
                body: object = full.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            else:
                body = None
            mtime = None if stat.S_ISLNK(st.st_mode) else int(st.st_mtime)
            out[str(full.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777,
                                                mtime, body)  # fmt: skip
    return out


def make_base(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0\n")
    (root / "etc" / "motd").write_text("hello\n")
    (root / "var" / "cache" / "apt").mkdir(parents=True)
    for i in range(20):
        (root / "var" / "cache" / "apt" / f"pkg{i}.deb").write_bytes(os.urandom(1000))
    (root / "usr" / "lib64").mkdir(parents=True)
    os.symlink("/usr/lib64", root / "lib64")
    (root / "app").mkdir()
    (root / "app" / "main.py").write_text("print(1)\n")


def change(root: Path) -> None:
    (root / "etc" / "motd").write_text("changed\n")  # modified
    os.chmod(root / "etc" / "passwd", 0o600)  # metadata only
    shutil.rmtree(root / "var" / "cache" / "apt")  # deleted tree
    (root / "app" / "main.py").unlink()
    (root / "app" / "main.py").mkdir()  # file replaced by a directory
    (root / "app" / "main.py" / "__init__.py").write_text("")
    (root / "new.txt").write_text("added\n")


def test_diff_stack_extract_flatten_agree(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    make_base(lower)
    upper = tmp_path / "upper"
    shutil.copytree(lower, upper, symlinks=True)
    change(upper)
    # Directory mtimes moved while the trees were built: pin them so comparisons are exact.
    for root in (lower, upper):
        for dirpath, _, _ in os.walk(root):
            os.utime(dirpath, (1_700_000_000, 1_700_000_000))

    base = Layer.from_dir(lower, tmp_path / "base.tar.gz")
    delta = Layer.from_diff(lower, upper, tmp_path / "delta.tar.gz")
    kinds = {e.path: e.kind for e in delta.entries()}
    assert kinds["var/cache/.wh.apt"] == "whiteout"
    assert kinds["etc/motd"] == "file"
    assert "etc/hostname" not in kinds

    stack = Stack([base, delta])
    assert stack.chain_id == layercore.chain_id([base.diff_id, delta.diff_id])
    assert stack.read("etc/motd") == b"changed\n"
    assert stack.lookup("var/cache/apt/pkg0.deb") is None
    entry = stack.lookup("/etc/passwd")
    assert entry is not None and entry.mode == 0o600 and entry.layer == 1
    assert [h[1] for h in stack.history("var/cache/apt")] == ["added", "deleted"]

    extracted = tmp_path / "extracted"
    stack.extract(extracted)
    assert snapshot(extracted) == snapshot(upper)

    flat = stack.flatten(tmp_path / "flat.tar.gz")
    assert not any(e.kind in ("whiteout", "opaque") for e in flat.entries())
    applied = tmp_path / "applied"
    applied.mkdir()
    flat.apply(applied)
    assert snapshot(applied) == snapshot(upper)

    # Squashing the single top layer keeps the view; the whiteout is still needed.
    squashed = stack.squash(1, 2, tmp_path / "squashed.tar.gz")
    assert len(squashed.layers) == 2
    assert [e.path for e in squashed.walk()] == [e.path for e in stack.walk()]


def test_overlay_upper_conversion_through_the_layer_class(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "new.conf").write_text("x=1\n")
    os.mknod(upper / "etc" / "old.conf", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    (upper / "opt").mkdir()
    os.setxattr(upper / "opt", "trusted.overlay.opaque", b"y")
    layer = Layer.from_overlay_upper(upper, tmp_path / "upper.tar")
    kinds = {e.path: e.kind for e in layer.entries()}
    assert kinds == {
        "etc": "dir",
        "etc/.wh.old.conf": "whiteout",
        "etc/new.conf": "file",
        "opt": "dir",
        "opt/.wh..wh..opq": "opaque",
    }
    assert all("overlay" not in name for e in layer.entries() for name in e.xattrs)
