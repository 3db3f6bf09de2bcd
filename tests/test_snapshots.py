"""Overlay snapshots: each layer extracted once, in overlayfs lower-directory form, keyed by
chain_id; RUN mounts them as lower dirs; gc removes the ones no image uses."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import layercore
from layercore import Layer, Store
from layercore.extract import snapshot
from test_build import EPOCH, TWO_STAGE_FILES, TWO_STAGES, busybox_store, context

LISTING = (
    "find . -mindepth 1 -printf '%p %y %m %U:%G %s %l\\n' | sort && "
    "find . -type f -exec md5sum {} + | sort"
)


def tar_layer(path: Path, entries: list[tuple[str, str, bytes | str]]) -> Layer:
    """A layer of ``(name, kind, body-or-link)`` entries, kind one of file, dir, symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(data), 0o777
                tar.addfile(info)
            else:
                body = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(body), 0o644
                tar.addfile(info, io.BytesIO(body))
    path.write_bytes(buf.getvalue())
    return Layer.open(path)


def stack_layers(tmp_path: Path) -> list[Layer]:
    """Three layers with every kind of change: whiteouts of a file and of a directory, an
    opaque directory, a file replaced by a directory and the reverse, a symlink, a file
    re-added after its whiteout."""
    low = tar_layer(
        tmp_path / "l1.tar",
        [
            ("a", "dir", ""), ("a/x", "file", "x1"), ("a/y", "file", "y1"),
            ("d", "dir", ""), ("d/sub", "dir", ""), ("d/sub/f", "file", "f1"),
            ("d/old", "file", "old"), ("gone", "dir", ""), ("gone/deep", "file", "deep"),
            ("swap", "file", "file"), ("tree", "dir", ""), ("tree/t", "file", "t"),
        ],
    )  # fmt: skip
    mid = tar_layer(
        tmp_path / "l2.tar",
        [
            ("a", "dir", ""), ("a/.wh.x", "file", ""), ("d", "dir", ""),
            ("d/.wh..wh..opq", "file", ""), ("d/new", "file", "new"), (".wh.gone", "file", ""),
            (".wh.swap", "file", ""), ("swap", "dir", ""), ("swap/in", "file", "in"),
            (".wh.tree", "file", ""), ("tree", "file", "now a file"),
            ("link", "symlink", "a/y"),
        ],
    )  # fmt: skip
    top = tar_layer(
        tmp_path / "l3.tar",
        [("a", "dir", ""), ("a/x", "file", "x3"), ("d", "dir", ""), ("d/.wh.new", "file", "")],
    )
    return [low, mid, top]


def listing_of_mount(ws: Path, lowers: list[Path], userns: bool) -> str:
    """The tree an overlay of ``lowers`` (bottom first), read-only, shows."""
    (ws / "merged").mkdir()
    options = (
        ("userxattr," if userns else "")
        + "ro,lowerdir="
        + ":".join(str(p) for p in reversed(lowers))
    )
    script = f'mount -t overlay overlay -o "$1" "$2" && cd "$2" && {LISTING}'
    command = ["unshare", "--mount", "--propagation", "private"]
    if userns:
        command[1:1] = ["--user", "--map-root-user"]
    done = subprocess.run(
        [*command, "--", "/bin/sh", "-c", script, "sh", options, str(ws / "merged")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def listing_of_dir(path: Path) -> str:
    done = subprocess.run(
        ["/bin/sh", "-c", LISTING], cwd=path, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_snapshots_mounted_as_lower_dirs_show_the_merged_tree(tmp_path: Path) -> None:
    """Mounting the snapshots, top first, shows exactly what extracting the stack gives."""
    layers = stack_layers(tmp_path)
    store = Store(tmp_path / "store")
    userns = os.geteuid() != 0
    snaps = store.snapshots(layers, xattrs="user" if userns else "trusted")
    chains = [layercore.chain_id([layer.diff_id for layer in layers[: i + 1]]) for i in range(3)]
    suffix = ".user" if userns else ""
    assert [p.name for p in snaps] == [c.removeprefix("sha256:") + suffix for c in chains]
    # The middle snapshot holds its layer alone: a whiteout device, an opaque mark.
    gone = os.lstat(snaps[1] / "gone")
    assert (gone.st_mode & 0o170000, gone.st_rdev) == (0o020000, 0)
    mark = "user.overlay.opaque" if userns else "trusted.overlay.opaque"
    assert os.getxattr(snaps[1] / "d", mark) == b"y"
    assert not (snaps[1] / "d" / "sub").exists()
    extracted = tmp_path / "extracted"
    layercore.Stack(layers).extract(extracted)
    assert listing_of_mount(tmp_path, snaps, userns) == listing_of_dir(extracted)


def test_snapshot_of_one_layer_needs_an_empty_destination(tmp_path: Path) -> None:
    layer = stack_layers(tmp_path)[1]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OSError, match="must be empty"):
        snapshot(layer, tmp_path / "full")
    with pytest.raises(ValueError, match="overlay xattr namespace"):
        snapshot(layer, tmp_path / "new", xattrs="system")  # type: ignore[arg-type]


def test_builds_share_snapshots_and_gc_keeps_only_those_images_use(tmp_path: Path) -> None:
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, TWO_STAGES, TWO_STAGE_FILES)
    result = layercore.build(ctx, store=store, tags=["app:1"], source_date_epoch=EPOCH)
    snapshots = tmp_path / "store" / ".layercore" / "snapshots"
    suffix = "" if os.geteuid() == 0 else ".user"

    def snap(chain: str) -> Path:
        return snapshots / (chain.removeprefix("sha256:") + suffix)

    base_snap = snap(store.load("busybox:test").stack.chain_id)
    assert base_snap.is_dir()
    # gc: the build stage is no image of the index; its snapshots go, the base's stays.
    before = {p.name for p in snapshots.iterdir()}
    report = store.gc()
    after = {p.name for p in snapshots.iterdir()}
    assert base_snap.name in after and len(after) < len(before)
    kept = {
        snap(layercore.chain_id(img.diff_ids[: i + 1])).name
        for img in (store.load(t) for t in store.tags())
        for i in range(len(img.layers))
    }
    assert after <= kept
    assert report.bytes_freed > 0
    assert store.load(result.digest).stack.read("srv/made.txt") == b"hi from /app\n"
    # The RUN ran over snapshots of its stage's layers; its upper dir became the snapshot of
    # the RUN layer.
    tagged = layercore.build(ctx, store=store, target="build", tags=["stage:1"], no_cache=True)
    stage = store.load(tagged.digest)
    copy_layer = next(s.layer for s in tagged.steps if s.instruction.startswith("COPY"))
    for i in range(len(stage.layers)):
        kept = snap(layercore.chain_id(stage.diff_ids[: i + 1])).is_dir()
        # The COPY layer's snapshot was made of links to the staged context for that build
        # only; every other layer's is kept.
        assert kept == (stage.layers[i].digest != copy_layer)
    assert (snap(stage.stack.chain_id) / "app" / "made.txt").read_text() == "hi from /app\n"
    assert os.path.lexists(snap(stage.stack.chain_id) / "app" / "sub" / "b.txt")  # whiteout
    # Another build on the same base reuses its snapshot: extracted once.
    inode = base_snap.stat().st_ino
    (tmp_path / "other").mkdir()
    other = context(tmp_path / "other", "FROM busybox:test\nRUN echo two > /two\n")
    layercore.build(other, store=store, tags=["two:1"], source_date_epoch=EPOCH)
    assert base_snap.stat().st_ino == inode
    # Removing the tag lets gc remove the snapshot of the layer only that image had.
    two = snap(store.load("two:1").stack.chain_id)
    assert (two / "two").read_text() == "two\n"
    store.remove("two:1")
    store.gc()
    assert not two.exists() and base_snap.is_dir()
    assert snap(stage.stack.chain_id).is_dir()


def test_the_copy_snapshotter_builds_the_same_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where overlayfs cannot be mounted, RUN runs on an extracted root filesystem and diffs
    it: the image is the same."""
    one = busybox_store(tmp_path / "one")
    two = busybox_store(tmp_path / "two")
    # The same base in both stores: a difference below is the snapshotter's.
    assert one.load("busybox:test").digest == two.load("busybox:test").digest
    ctx = context(tmp_path, TWO_STAGES, TWO_STAGE_FILES)
    overlay = layercore.build(ctx, store=one, source_date_epoch=EPOCH)
    monkeypatch.setenv("LAYERCORE_SNAPSHOTTER", "copy")
    copied = layercore.build(ctx, store=two, source_date_epoch=EPOCH)
    assert copied.digest == overlay.digest
    assert not (tmp_path / "two" / "store" / ".layercore" / "snapshots").exists()


def test_a_failed_overlay_mount_falls_back_to_a_copied_rootfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUN whose overlay cannot be mounted runs again on an extracted root filesystem, and
    later RUNs of the process go there directly."""
    from layercore.build import executor
    from layercore.runtime import sandbox

    real = executor.in_overlay
    tried: list[str] = []

    def refused(command: list[str], ws: Path, options: str, *, userns: bool) -> list[str]:
        tried.append(options)
        return real(command, ws, options + ",no_such_option", userns=userns)

    monkeypatch.setattr(executor, "in_overlay", refused)
    monkeypatch.setattr(sandbox, "_overlay_failed", set())
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, TWO_STAGES, TWO_STAGE_FILES)
    result = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert len(tried) == 1 and sandbox._overlay_failed == {os.geteuid()}
    assert store.load(result.digest).stack.read("srv/made.txt") == b"hi from /app\n"
    # Forcing the overlay turns the refusal into an error that says so.
    monkeypatch.setattr(sandbox, "_overlay_failed", set())
    monkeypatch.setenv("LAYERCORE_SNAPSHOTTER", "overlay")
    with pytest.raises(layercore.build.BuildError, match="overlayfs cannot be mounted"):
        layercore.build(ctx, store=store, source_date_epoch=EPOCH, no_cache=True)


def test_run_over_a_copy_never_changes_the_context(tmp_path: Path) -> None:
    """The COPY layer's snapshot is made of links to the context's files for the build: a RUN
    that appends to, chmods and deletes them changes the image, never the context; a
    ``--chown`` that the files on disk do not have is extracted instead, as usual."""
    store = busybox_store(tmp_path)
    ctx = context(
        tmp_path,
        """
        FROM busybox:test AS build
        COPY app/ /app/
        COPY --chown=7:8 app/a.txt /owned.txt
        RUN echo more >> /app/a.txt && chmod 600 /app/sub/b.txt && rm /app/c.txt \\
            && echo more >> /owned.txt
        FROM busybox:test
        COPY --from=build /app /copied
        RUN echo again >> /copied/a.txt
        """,
        {"app/a.txt": "a\n", "app/sub/b.txt": "b\n", "app/c.txt": "c\n"},
    )
    before = {p: (p.read_bytes(), p.stat().st_mode) for p in (ctx / "app").rglob("*.txt")}
    result = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert {p: (p.read_bytes(), p.stat().st_mode) for p in (ctx / "app").rglob("*.txt")} == before
    assert all(p.stat().st_nlink == 1 for p in before)  # the build's links are gone
    image = store.load(result.digest)
    assert image.stack.read("copied/a.txt") == b"a\nmore\nagain\n"
    b = image.stack.lookup("copied/sub/b.txt")
    assert b is not None and b.mode & 0o777 == 0o600
    assert image.stack.lookup("copied/c.txt") is None
    stage = store.load(layercore.build(ctx, store=store, target="build").digest)
    assert stage.stack.read("owned.txt") == b"a\nmore\n"
    owned = stage.stack.lookup("owned.txt")
    assert owned is not None and (owned.uid, owned.gid) == (7, 8)
