"""Disk full: on an 8 MiB tmpfs, a store write that hits ENOSPC fails with a LayerIOError naming
the path and saying so, leaves nothing partial, and the store still loads, verifies and
accepts writes once space is freed (docs/RELIABILITY.md, Disk full)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layercore import Image, Layer, Store
from layercore.errors import LayerIOError
from test_crash import temp_files

EPOCH = 1_700_000_000


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """A file in ``directory`` that takes all its file system's free space but ``leave`` bytes."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * size)
            f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def random_tree(path: Path, size: int) -> Path:
    """A directory holding ``size`` incompressible bytes."""
    path.mkdir()
    (path / "data").write_bytes(os.urandom(size))
    return path


def small_image(store: Store, tmp: Path, name: str) -> Image:
    layer = store.build_layer(random_tree(tmp / name, 16 << 10), source_date_epoch=EPOCH)
    return store.save(Image.scratch(created=EPOCH).append(layer), f"{name}:1")


def assert_full_and_intact(
    store: Store, tags: dict[str, str], write: Callable[[], object], where: str
) -> LayerIOError:
    """``write`` fails with ENOSPC, clearly; nothing partial is left; the store is whole."""
    with pytest.raises(LayerIOError) as caught:
        write()
    error = caught.value
    assert "No space left on device" in str(error), str(error)
    assert error.path is not None and error.path.startswith(str(store.root)), error.path
    assert where in str(error), str(error)
    print(f"{type(error).__name__}: {error}")
    assert temp_files(store.root) == []
    assert store.verify() == []
    assert store.tags() == tags
    for tag in tags:
        store.load(tag)
    return error


def test_a_full_disk_fails_each_write_clearly_and_leaves_the_store_usable(
    small_fs: Path, tmp_path: Path
) -> None:
    store = Store(small_fs / "store")
    kept = small_image(store, tmp_path, "kept")
    tags = {"kept:1": kept.digest}
    big = random_tree(tmp_path / "big", 12 << 20)  # incompressible, more than the fs
    big_blob = tmp_path / "big.tar"
    Layer.from_dir(big, big_blob, compression=None)

    # Rust-side writes: the layer writer, and the blob copy.
    assert_full_and_intact(store, tags, lambda: store.build_layer(big), "tmp")
    assert_full_and_intact(store, tags, lambda: store.put_blob(big_blob), "tmp")

    # Python-side writes, on a file system with no byte to spare: a config and manifest, then
    # index.json alone (a new tag on an image whose blobs are all there).
    layer = store.build_layer(random_tree(tmp_path / "next", 4 << 10))
    filler = fill(small_fs)
    image = Image.scratch(created=EPOCH).append(layer)
    error = assert_full_and_intact(store, tags, lambda: store.save(image, "next:1"), "blob")
    assert error.errno == errno.ENOSPC
    error = assert_full_and_intact(store, tags, lambda: store.tag("kept:1", "again:1"), "index")
    assert error.errno == errno.ENOSPC

    # Space freed: every write works again and the store verifies.
    filler.unlink()
    store.tag("kept:1", "again:1")
    saved = store.save(image, "next:1")
    store.put_blob(big_blob.read_bytes()[: 1 << 20])
    assert store.tags() == {**tags, "again:1": kept.digest, "next:1": saved.digest}
    store.gc()
    assert store.verify() == []
    assert temp_files(store.root) == []


def test_a_full_disk_fails_an_import_cleanly(small_fs: Path, tmp_path: Path) -> None:
    source = Store(tmp_path / "source")
    big = random_tree(tmp_path / "big", 10 << 20)
    layer = source.build_layer(big, compression=None)
    source.save(Image.scratch(created=EPOCH).append(layer), "big:1")
    archive = source.export_image("big:1", tmp_path / "big.tar", "oci-archive")
    store = Store(small_fs / "store")
    kept = small_image(store, tmp_path, "kept")
    assert_full_and_intact(
        store, {"kept:1": kept.digest}, lambda: store.import_image(archive, "big:1"), "store"
    )
