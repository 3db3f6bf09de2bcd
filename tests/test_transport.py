"""Import and export: OCI layouts, OCI archives and docker-archives, read back by our importer.

What the real tools make of these files is in test_interop.py; here are the formats' contents,
round trips, name selection, platform selection, the legacy ``docker save`` layout (read and
written), atomicity, and hostile or broken sources.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from layercore import (
    CorruptImageError,
    DigestMismatchError,
    Image,
    ImageNotFoundError,
    Layer,
    LayerIOError,
    SourceNotFoundError,
    Stack,
    Store,
    sha256_file,
    transport,
)
from layercore.image import canonical_json, host_architecture
from layercore.layer import Compression

EPOCH = 1_700_000_000


# --- building images ------------------------------------------------------------------------


def make_base_tree(root: Path) -> Path:
    """Files, a hardlink pair, absolute and relative symlinks, nested and empty directories."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / "tool"
    tool.write_bytes(hashlib.sha256(b"seed").digest() * 4096)
    tool.chmod(0o755)
    (root / "usr" / "lib64").mkdir()
    os.symlink("/usr/lib64", root / "lib64")
    os.symlink("../etc/passwd", root / "usr" / "passwd-link")
    (root / "data").mkdir()
    (root / "data" / "hl-a").write_text("shared body\n")
    os.link(root / "data" / "hl-a", root / "data" / "hl-b")
    (root / "opt" / "old").mkdir(parents=True)
    (root / "opt" / "old" / "a").write_text("a\n")
    (root / "opt" / "old" / "b").write_text("b\n")
    (root / "var" / "empty").mkdir(parents=True)
    (root / "var" / "gone").write_text("deleted in the next layer\n")
    return root


def build_layers(work: Path, *, top: Compression = "zstd") -> list[Layer]:
    """Three layers: a gzip base, a plain-tar changeset with a whiteout and an opaque
    directory (made by diffing a changed copy against the base), and a small top layer."""
    base = make_base_tree(work / "base")
    l0 = Layer.from_dir(base, work / "l0.tar.gz", compression="gzip", source_date_epoch=EPOCH)
    upper = work / "upper"
    subprocess.run(["cp", "-a", str(base), str(upper)], check=True)
    (upper / "etc" / "hosts").write_text("127.0.0.1 localhost app\n")
    (upper / "var" / "gone").unlink()
    shutil.rmtree(upper / "opt" / "old")
    (upper / "opt" / "old").mkdir()
    (upper / "opt" / "old" / "c").write_text("c\n")
    (upper / "app").mkdir()
    (upper / "app" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (upper / "app" / "run.sh").chmod(0o755)
    l1 = Layer.from_diff(
        Stack([l0]), upper, work / "l1.tar", compression=None, source_date_epoch=EPOCH
    )
    motd = work / "motd"
    (motd / "etc").mkdir(parents=True)
    (motd / "etc" / "motd").write_text("welcome\n")
    l2 = Layer.from_dir(motd, work / "l2.blob", compression=top, source_date_epoch=EPOCH)
    return [l0, l1, l2]


def build_image(
    store: Store, work: Path, *, tag: str | None = "app:1.0", top: Compression = "zstd"
) -> Image:
    """An image of :func:`build_layers` with config changes, saved in ``store``."""
    work.mkdir(parents=True, exist_ok=True)
    image = Image.scratch(created=EPOCH)
    for i, layer in enumerate(build_layers(work, top=top)):
        image = image.append(layer, created_by=f"step {i}", created=EPOCH)
    image = image.with_config(env={"APP": "1"}, cmd=["/app/run.sh"], created=EPOCH)
    return store.save(image, tag)


def stack_tree(image: Image) -> dict[str, tuple[object, ...]]:
    """The merged view of an image: every path's kind, mode, owner, mtime, link and body."""
    tree: dict[str, tuple[object, ...]] = {}
    for e in image.stack.walk():
        body = image.stack.read(e.path) if e.kind == "file" else None
        tree[e.path] = (e.kind, e.mode, e.uid, e.gid, e.mtime, e.linkname, body)
    return tree


def blob_digests(image: Image) -> list[str]:
    return [layer.digest for layer in image.layers]


def file_listing(root: Path) -> list[str]:
    """Every path below ``root``, sorted (to compare before and after an operation)."""
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )


# --- archives by hand -----------------------------------------------------------------------


def tar_members(path: Path) -> dict[str, bytes]:
    """Regular members of a (small) tar archive by name, in archive order."""
    with tarfile.open(path) as tar:
        out = {}
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
        return out


def write_tar(
    path: Path,
    files: dict[str, bytes],
    *,
    symlinks: dict[str, str] | None = None,
    compress: bool = False,
) -> Path:
    """A tar of ``files`` (names written exactly as given) and ``symlinks`` (name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    data = buf.getvalue()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def legacy_docker_archive(
    path: Path,
    layers: list[bytes],
    *,
    diff_ids: list[str] | None = None,
    repo_tag: str = "legacy:1",
    link_repeats: bool = True,
) -> tuple[Path, bytes]:
    """What ``docker save`` wrote before Docker 25: ``<id>/layer.tar`` + ``<id>/json`` +
    ``<id>/VERSION`` per layer, ``<config hex>.json``, ``manifest.json`` and
    ``repositories``. A layer repeated is a symlink to its first copy, as Docker made it.
    Returns the archive and the config bytes."""
    if diff_ids is None:
        diff_ids = []
        for body in layers:
            raw = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    config = canonical_json(
        {
            "architecture": host_architecture()[0],
            "os": "linux",
            "created": "2020-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD"]},
            "docker_version": "19.03.12",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"ADD layer{i}"} for i in range(len(layers))],
        }
    )
    config_hex = hashlib.sha256(config).hexdigest()
    files: dict[str, bytes] = {}
    symlinks: dict[str, str] = {}
    first_dir: dict[bytes, str] = {}
    layer_paths = []
    parent = ""
    for i, body in enumerate(layers):
        layer_id = hashlib.sha256(f"{parent} layer {i}".encode()).hexdigest()
        files[f"{layer_id}/VERSION"] = b"1.0"
        files[f"{layer_id}/json"] = json.dumps({"id": layer_id, "parent": parent}).encode()
        if link_repeats and body in first_dir:
            symlinks[f"{layer_id}/layer.tar"] = f"../{first_dir[body]}/layer.tar"
        else:
            files[f"{layer_id}/layer.tar"] = body
            first_dir.setdefault(body, layer_id)
        layer_paths.append(f"{layer_id}/layer.tar")
        parent = layer_id
    files[f"{config_hex}.json"] = config
    files["manifest.json"] = json.dumps(
        [{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": layer_paths}]
    ).encode()
    repo, _, tag = repo_tag.rpartition(":")
    files["repositories"] = json.dumps({repo: {tag: parent}}).encode()
    return write_tar(path, files, symlinks=symlinks), config


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def image(store: Store, tmp_path: Path) -> Image:
    return build_image(store, tmp_path / "build")


def blobs_of(store: Store) -> list[str]:
    return sorted(os.listdir(store.root / "blobs" / "sha256"))


def scratch_of(store: Store) -> list[str]:
    return sorted(os.listdir(store.root / ".layercore" / "tmp"))


# --- detect_format --------------------------------------------------------------------------


def test_detect_format_of_each_export(store: Store, image: Image, tmp_path: Path) -> None:
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout", "oci")
    oci_tar = transport.export_image(store, "app:1.0", tmp_path / "img.oci.tar", "oci-archive")
    docker_tar = transport.export_image(
        store, "app:1.0", tmp_path / "img.docker.tar", "docker-archive"
    )
    assert transport.detect_format(layout) == "oci"
    assert transport.detect_format(oci_tar) == "oci-archive"
    # Docker >= 25 archives are OCI layouts too (with manifest.json beside index.json).
    assert transport.detect_format(docker_tar) == "oci-archive"
    members = tar_members(docker_tar)
    only_docker = write_tar(
        tmp_path / "only-docker.tar",
        {k: v for k, v in members.items() if k not in ("oci-layout", "index.json")},
    )
    assert transport.detect_format(only_docker) == "docker-archive"
    gz = tmp_path / "img.oci.tar.gz"
    gz.write_bytes(gzip.compress(oci_tar.read_bytes()))
    assert transport.detect_format(gz) == "oci-archive"


def test_detect_format_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "plain-dir").mkdir()
    with pytest.raises(CorruptImageError, match="no oci-layout"):
        transport.detect_format(tmp_path / "plain-dir")
    (tmp_path / "garbage").write_bytes(b"this is not a tar archive at all" * 100)
    with pytest.raises(CorruptImageError, match="tar archive"):
        transport.detect_format(tmp_path / "garbage")
    other = write_tar(tmp_path / "other.tar", {"README": b"hello"})
    with pytest.raises(CorruptImageError, match=r"manifest\.json"):
        transport.detect_format(other)
    with pytest.raises(SourceNotFoundError):
        transport.detect_format(tmp_path / "missing.tar")


# --- export: OCI layout ---------------------------------------------------------------------


def test_oci_export_writes_a_layout_named_by_the_whole_tag(
    store: Store, image: Image, tmp_path: Path
) -> None:
    dest = transport.export_image(store, "app:1.0", tmp_path / "out", "oci")
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((dest / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["manifests"] == [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.digest,
            "size": len(image.manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": "app:1.0"},
        }
    ]
    blob_dir = dest / "blobs" / "sha256"
    expected = {image.digest, image.config_digest, *blob_digests(image)}
    assert {f"sha256:{name}" for name in os.listdir(blob_dir)} == expected
    for name in os.listdir(blob_dir):
        assert sha256_file(blob_dir / name) == f"sha256:{name}"
    assert (blob_dir / image.digest[7:]).read_bytes() == image.manifest_bytes
    # Layers are copied as stored: the compressed bytes, not a recompression.
    for layer in image.layers:
        assert (blob_dir / layer.digest[7:]).read_bytes() == layer.path.read_bytes()


def test_oci_export_adds_to_a_layout_and_replaces_a_same_name(
    store: Store, image: Image, tmp_path: Path
) -> None:
    other = store.save(image.with_config(env={"OTHER": "1"}, created=EPOCH), "app:2.0")
    dest = tmp_path / "out"
    transport.export_image(store, "app:1.0", dest)
    transport.export_image(store, "app:2.0", dest)
    transport.export_image(store, "app:2.0", dest, name="app:1.0")
    entries = json.loads((dest / "index.json").read_text())["manifests"]
    named = {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"] for e in entries}
    assert named == {"app:1.0": other.digest, "app:2.0": other.digest}
    # The blobs of the image no longer named stay (a layout keeps what it was given).
    assert (dest / "blobs" / "sha256" / image.config_digest[7:]).is_file()
    imported = transport.import_image(fresh_store_at(tmp_path), dest, name="app:1.0")
    assert imported.digest == other.digest


def fresh_store_at(tmp_path: Path) -> Store:
    return Store(tmp_path / f"import-store-{len(list(tmp_path.iterdir()))}")


def test_oci_export_keeps_blobs_already_there_and_rewrites_wrong_ones(
    store: Store, image: Image, tmp_path: Path
) -> None:
    dest = transport.export_image(store, "app:1.0", tmp_path / "out")
    blob_dir = dest / "blobs" / "sha256"
    kept = blob_dir / image.layers[0].digest[7:]
    inode = kept.stat().st_ino
    short = blob_dir / image.layers[1].digest[7:]
    short.write_bytes(b"truncated")
    transport.export_image(store, "app:1.0", dest)
    assert kept.stat().st_ino == inode
    assert sha256_file(short) == image.layers[1].digest
    assert not [n for n in os.listdir(blob_dir) if n.startswith(".")]


def test_export_by_digest_is_unnamed(store: Store, image: Image, tmp_path: Path) -> None:
    dest = transport.export_image(store, image.digest, tmp_path / "out")
    (entry,) = json.loads((dest / "index.json").read_text())["manifests"]
    assert "annotations" not in entry
    assert entry["digest"] == image.digest
    transport.export_image(store, image.digest, dest)
    assert len(json.loads((dest / "index.json").read_text())["manifests"]) == 1
    archive = transport.export_image(store, image.digest, tmp_path / "d.tar", "docker-archive")
    (item,) = json.loads(tar_members(archive)["manifest.json"])
    assert item["RepoTags"] == []
    # Imported without a name of its own, it is stored untagged.
    other = fresh_store_at(tmp_path)
    assert transport.import_image(other, archive).digest == image.digest
    assert other.tags() == {}
    assert [(t, i.digest) for t, i in other.images()] == [(None, image.digest)]


def test_export_refuses_a_directory_that_is_not_a_layout(
    store: Store, image: Image, tmp_path: Path
) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine\n")
    with pytest.raises(LayerIOError, match="not an OCI image layout"):
        transport.export_image(store, "app:1.0", dest)
    assert os.listdir(dest) == ["notes.txt"]
    with pytest.raises(LayerIOError, match="is a directory"):
        transport.export_image(store, "app:1.0", dest, "oci-archive")


def test_export_validates_format_and_names(store: Store, image: Image, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        transport.export_image(store, "app:1.0", tmp_path / "x", "tarball")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid tag"):
        transport.export_image(store, "app:1.0", tmp_path / "x", name="bad name")
    with pytest.raises(ValueError, match="Docker image reference"):
        transport.export_image(store, "app:1.0", tmp_path / "x.tar", "docker-archive", name="App")
    with pytest.raises(ImageNotFoundError):
        transport.export_image(store, "nope:1", tmp_path / "x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tar").exists()


def test_concurrent_exports_to_one_layout_keep_every_entry(
    store: Store, image: Image, tmp_path: Path
) -> None:
    dest = tmp_path / "shared"
    names = [f"app:{i}" for i in range(6)]
    errors: list[BaseException] = []

    def export(name: str) -> None:
        try:
            transport.export_image(store, "app:1.0", dest, name=name)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=export, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = json.loads((dest / "index.json").read_text())["manifests"]
    assert sorted(e["annotations"]["org.opencontainers.image.ref.name"] for e in entries) == names


def test_export_never_serves_a_damaged_blob(store: Store, image: Image, tmp_path: Path) -> None:
    blob = store.blob_path(image.layers[2].digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    for fmt, dest in (("oci", "layout"), ("oci-archive", "a.tar"), ("docker-archive", "d.tar")):
        with pytest.raises(DigestMismatchError) as info:
            transport.export_image(store, "app:1.0", tmp_path / dest, fmt)  # type: ignore[arg-type]
        assert info.value.expected == image.layers[2].digest
        assert not (tmp_path / dest).exists()


# --- export: archives -----------------------------------------------------------------------


def test_oci_archive_holds_the_layout(store: Store, image: Image, tmp_path: Path) -> None:
    archive = transport.export_image(store, "app:1.0", tmp_path / "img.tar", "oci-archive")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        infos = tar.getmembers()
    assert names[:2] == ["oci-layout", "index.json"]
    assert "manifest.json" not in names
    assert {"blobs", "blobs/sha256"} <= set(names)
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 for i in infos)
    members = tar_members(archive)
    for digest in (image.digest, image.config_digest, *blob_digests(image)):
        body = members[f"blobs/sha256/{digest[7:]}"]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    index = json.loads(members["index.json"])
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "app:1.0"}
    assert archive.stat().st_size % tarfile.RECORDSIZE == 0


def test_an_own_name_that_is_no_tag_is_the_source_s_fault(
    store: Store, image: Image, tmp_path: Path
) -> None:
    # Found by fuzz/python/fuzz_image.py: a plain ValueError without the source's path.
    dest = transport.export_image(store, "app:1.0", tmp_path / "out", "oci")
    index = json.loads((dest / "index.json").read_text())
    index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "@atest"}
    (dest / "index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptImageError, match="'@atest' is not a valid tag") as info:
        transport.import_image(Store(tmp_path / "other"), dest)
    assert info.value.path == str(dest)
    assert transport.import_image(Store(tmp_path / "other"), dest, "app:2").digest == image.digest


def test_docker_archive_is_what_docker_25_writes(
    store: Store, image: Image, tmp_path: Path
) -> None:
    archive = transport.export_image(store, "app:1.0", tmp_path / "img.tar", "docker-archive")
    members = tar_members(archive)
    (item,) = json.loads(members["manifest.json"])
    assert item == {
        "Config": f"blobs/sha256/{image.config_digest[7:]}",
        "RepoTags": ["app:1.0"],
        "Layers": [f"blobs/sha256/{d[7:]}" for d in blob_digests(image)],
    }
    (entry,) = json.loads(members["index.json"])["manifests"]
    assert entry["annotations"] == {
        "io.containerd.image.name": "docker.io/library/app:1.0",
        "org.opencontainers.image.ref.name": "1.0",
    }
    # Layers as stored: the gzip one is still gzip, the zstd one still zstd.
    for layer in image.layers:
        assert members[f"blobs/sha256/{layer.digest[7:]}"] == layer.path.read_bytes()
    bare = transport.export_image(
        store, "app:1.0", tmp_path / "bare.tar", "docker-archive", name="example.com/team/app"
    )
    (item,) = json.loads(tar_members(bare)["manifest.json"])
    assert item["RepoTags"] == ["example.com/team/app:latest"]


def test_archives_are_reproducible_and_replace_atomically(
    store: Store, image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for fmt in ("oci-archive", "docker-archive"):
        a = transport.export_image(store, "app:1.0", tmp_path / f"a-{fmt}.tar", fmt)  # type: ignore[arg-type]
        b = transport.export_image(store, "app:1.0", tmp_path / f"b-{fmt}.tar", fmt)  # type: ignore[arg-type]
        assert a.read_bytes() == b.read_bytes()
    dest = tmp_path / "a-oci-archive.tar"
    before = dest.read_bytes()
    calls = 0
    real_copy = transport._copy_file_into

    def failing_copy(path: Path, out_fd: int, size: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        real_copy(path, out_fd, size)

    monkeypatch.setattr(transport, "_copy_file_into", failing_copy)
    other = store.save(image.with_config(env={"X": "1"}, created=EPOCH), "app:2.0")
    with pytest.raises(OSError, match="No space"):
        transport.export_image(store, other.digest, dest, "oci-archive")
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- export: the legacy docker-archive ------------------------------------------------------

#: The ``container_config`` Docker wrote for every layer below the top (an empty Go struct).
DOCKER_EMPTY_CONTAINER_CONFIG = (
    '{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
    '"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,'
    '"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
    '"Labels":null}'
)


def export_legacy(store: Store, ref: str, dest: Path, **kwargs: str) -> Path:
    return transport.export_image(
        store, ref, dest, "docker-archive", docker_layout="legacy", **kwargs
    )


def legacy_contents(archive: Path) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    """Every member of a (small) archive in order, and the bodies of its regular files."""
    with tarfile.open(archive) as tar:
        infos = tar.getmembers()
    return infos, tar_members(archive)


def chain_ids(diff_ids: tuple[str, ...]) -> list[str]:
    chains = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


def test_legacy_docker_archive_is_what_docker_save_wrote(
    store: Store, image: Image, tmp_path: Path
) -> None:
    archive = export_legacy(store, "app:1.0", tmp_path / "legacy.tar")
    infos, members = legacy_contents(archive)
    (item,) = json.loads(members["manifest.json"])
    assert list(item) == ["Config", "RepoTags", "Layers"]
    assert item["Config"] == f"{image.config_digest[7:]}.json"
    assert item["RepoTags"] == ["app:1.0"]
    ids = [name.removesuffix("/layer.tar") for name in item["Layers"]]
    assert item["Layers"] == [f"{i}/layer.tar" for i in ids]
    assert len(set(ids)) == 3 and all(re.fullmatch("[0-9a-f]{64}", i) for i in ids)
    assert members[item["Config"]] == image.config_bytes
    assert members["manifest.json"].endswith(b"]\n")
    assert members["repositories"] == f'{{"app":{{"1.0":"{ids[-1]}"}}}}\n'.encode()
    # filepath.Walk order: names sorted, each directory before its files.
    expected = []
    for name in sorted([item["Config"], "manifest.json", "repositories", *ids]):
        if name in ids:
            expected += [name, f"{name}/VERSION", f"{name}/json", f"{name}/layer.tar"]
        else:
            expected.append(name)
    assert [i.name for i in infos] == expected
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" for i in infos)
    assert {i.name: i.mode for i in infos if i.isdir()} == {i: 0o755 for i in ids}
    assert archive.stat().st_size % tarfile.RECORDSIZE == 0

    chains = chain_ids(image.diff_ids)
    layer_json = [json.loads(members[f"{i}/json"]) for i in ids]
    for n, (layer_id, v1) in enumerate(zip(ids, layer_json, strict=True)):
        assert members[f"{layer_id}/VERSION"] == b"1.0"
        # The uncompressed tar of each layer, whatever its compression in the store.
        tar_bytes = members[f"{layer_id}/layer.tar"]
        assert "sha256:" + hashlib.sha256(tar_bytes).hexdigest() == image.diff_ids[n]
        assert v1["id"] == layer_id
        assert v1.get("parent") == (ids[n - 1] if n else None)
    # Below the top: Docker's v1 JSON, the id being v1.CreateID's digest of it.
    for n in (0, 1):
        assert (
            members[f"{ids[n]}/json"]
            == (
                f'{{"id":"{ids[n]}",'
                + (f'"parent":"{ids[n - 1]}",' if n else "")
                + f'"created":"1970-01-01T00:00:00Z","container_config":'
                f'{DOCKER_EMPTY_CONTAINER_CONFIG},"os":"linux"}}'
            ).encode()
        )
        hashed = (
            f'{{"container_config":{DOCKER_EMPTY_CONTAINER_CONFIG},'
            f'"created":"1970-01-01T00:00:00Z","layer_id":"{chains[n]}"'
            + (f',"parent":"sha256:{ids[n - 1]}"' if n else "")
            + "}"
        )
        assert ids[n] == hashlib.sha256(hashed.encode()).hexdigest()
    # The top layer carries the image's configuration.
    top = layer_json[2]
    assert list(top) == [
        "id", "parent", "created", "container_config", "config", "architecture", "os"
    ]  # fmt: skip
    assert top["config"] == image.config["config"]
    assert json.dumps(top["container_config"], separators=(",", ":")) == (
        DOCKER_EMPTY_CONTAINER_CONFIG
    )
    assert top["created"] == image.created
    assert (top["architecture"], top["os"]) == (image.architecture, image.os)


def test_legacy_docker_archive_round_trip(store: Store, image: Image, tmp_path: Path) -> None:
    archive = export_legacy(store, "app:1.0", tmp_path / "legacy.tar")
    assert transport.detect_format(archive) == "docker-archive"
    other = Store(tmp_path / "other")
    imported = transport.import_image(other, archive)
    assert other.tags() == {"app:1.0": imported.digest}
    assert imported.config_bytes == image.config_bytes
    assert imported.config_digest == image.config_digest
    assert imported.diff_ids == image.diff_ids
    # Every layer came back uncompressed: its digest is its diff_id.
    assert blob_digests(imported) == list(image.diff_ids)
    assert {layer.media_type for layer in imported.layers} == {
        "application/vnd.oci.image.layer.v1.tar"
    }
    assert stack_tree(imported) == stack_tree(image)
    assert other.verify() == []


def test_legacy_docker_archive_is_reproducible(store: Store, image: Image, tmp_path: Path) -> None:
    a = export_legacy(store, "app:1.0", tmp_path / "a.tar")
    b = export_legacy(store, "app:1.0", tmp_path / "b.tar")
    assert a.read_bytes() == b.read_bytes()
    # The same image in another store (moved there as an OCI layout) gives the same bytes.
    other = Store(tmp_path / "other")
    transport.import_image(other, transport.export_image(store, "app:1.0", tmp_path / "layout"))
    c = export_legacy(other, "app:1.0", tmp_path / "c.tar")
    assert c.read_bytes() == a.read_bytes()
    # Replaced atomically: no temp file is left beside it.
    export_legacy(store, "app:1.0", a)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_legacy_ids_follow_the_layers_below_and_the_config(
    store: Store, image: Image, tmp_path: Path
) -> None:
    """As in Docker: a layer's id depends on the layers up to it, the top's on the config."""
    store.save(image.with_config(env={"OTHER": "1"}, created=EPOCH), "app:2.0")
    ids = []
    for ref in ("app:1.0", "app:2.0"):
        members = tar_members(export_legacy(store, ref, tmp_path / f"{ref}.tar"))
        ids.append(json.loads(members["manifest.json"])[0]["Layers"])
    assert ids[0][:2] == ids[1][:2]
    assert ids[0][2] != ids[1][2]


def test_legacy_repeated_layer_is_a_symlink_to_its_first_copy(
    store: Store, image: Image, tmp_path: Path
) -> None:
    repeated = store.save(image.append(image.layers[0], created=EPOCH), "app:rep")
    archive = export_legacy(store, "app:rep", tmp_path / "rep.tar")
    with tarfile.open(archive) as tar:
        (item,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        first, again = item["Layers"][0], item["Layers"][3]
        assert first != again
        assert tar.getmember(first).isfile()
        link = tar.getmember(again)
    assert link.issym()
    assert link.linkname == f"../{first}"
    other = Store(tmp_path / "other")
    imported = transport.import_image(other, archive)
    assert imported.diff_ids == repeated.diff_ids
    assert stack_tree(imported) == stack_tree(repeated)


def test_legacy_names_and_unnamed_exports(store: Store, image: Image, tmp_path: Path) -> None:
    named = export_legacy(store, "app:1.0", tmp_path / "n.tar", name="example.com/team/app")
    members = tar_members(named)
    (item,) = json.loads(members["manifest.json"])
    assert item["RepoTags"] == ["example.com/team/app:latest"]
    top = item["Layers"][-1].removesuffix("/layer.tar")
    assert json.loads(members["repositories"]) == {"example.com/team/app": {"latest": top}}
    # Exported by digest: no name, so no repositories file.
    unnamed = tar_members(export_legacy(store, image.digest, tmp_path / "u.tar"))
    assert json.loads(unnamed["manifest.json"])[0]["RepoTags"] == []
    assert "repositories" not in unnamed
    # An image without layers: a manifest listing none.
    store.save(Image.scratch(created=EPOCH), "empty:1")
    empty = tar_members(export_legacy(store, "empty:1", tmp_path / "e.tar"))
    assert json.loads(empty["manifest.json"])[0]["Layers"] == []
    assert "repositories" not in empty
    imported = transport.import_image(Store(tmp_path / "other"), tmp_path / "e.tar")
    assert imported.layers == ()
    assert imported.config_bytes == store.load("empty:1").config_bytes


def test_docker_layout_is_for_docker_archives_only(
    store: Store, image: Image, tmp_path: Path
) -> None:
    for fmt in ("oci", "oci-archive"):
        with pytest.raises(ValueError, match="applies to the docker-archive format only"):
            transport.export_image(store, "app:1.0", tmp_path / fmt, fmt, docker_layout="legacy")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="applies to the docker-archive format only"):
            store.export_image("app:1.0", tmp_path / fmt, fmt, docker_layout="legacy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown docker_layout 'v1'"):
        transport.export_image(
            store,
            "app:1.0",
            tmp_path / "x.tar",
            "docker-archive",
            docker_layout="v1",  # type: ignore[arg-type]
        )
    assert sorted(os.listdir(tmp_path)) == ["build", "store"]
    # Through the store, the keyword reaches the transport.
    store.export_image("app:1.0", tmp_path / "s.tar", "docker-archive", docker_layout="legacy")
    assert "repositories" in tar_members(tmp_path / "s.tar")


def replace_diff_id(store: Store, image: Image, index: int, diff_id: str, tag: str) -> Image:
    """``image`` saved under ``tag`` with a config that lists ``diff_id`` for layer ``index``
    (the blobs are unchanged)."""
    diff_ids = list(image.diff_ids)
    diff_ids[index] = diff_id
    config_bytes = canonical_json(
        {**image.config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    )
    config_desc = {
        **image.manifest["config"],
        "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
        "size": len(config_bytes),
    }
    layers = list(image.layers)
    layers[index] = dataclasses.replace(layers[index], diff_id=diff_id)
    manifest = canonical_json({**image.manifest, "config": config_desc})
    return store.save(Image.from_json(manifest, config_bytes, layers), tag)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_legacy_export_refuses_a_layer_not_matching_its_diff_id(
    store: Store, image: Image, tmp_path: Path, index: int
) -> None:
    """gzip (0), plain (1) and zstd (2) layers are checked against the config's diff_id."""
    wrong = "sha256:" + "0" * 64
    replace_diff_id(store, image, index, wrong, "bad:1")
    dest = tmp_path / "out" / "bad.tar"
    with pytest.raises(DigestMismatchError) as info:
        export_legacy(store, "bad:1", dest)
    assert info.value.what == "diff_id"
    assert info.value.expected == wrong
    assert info.value.actual == image.diff_ids[index]
    assert info.value.path == str(image.layers[index].path)
    assert not dest.exists()
    assert not dest.parent.exists() or os.listdir(dest.parent) == []


def test_legacy_export_of_zstd_layers_needs_zstandard(
    store: Store, image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ImportError, match="pip install 'layercore\\[zstd\\]'"):
        export_legacy(store, "app:1.0", tmp_path / "z.tar")
    assert sorted(os.listdir(tmp_path)) == ["build", "store"]
    # Without zstd layers it is not needed.
    gzip_only = build_image(store, tmp_path / "gz", tag="gz:1", top="gzip")
    archive = export_legacy(store, "gz:1", tmp_path / "gz.tar")
    with tarfile.open(archive) as tar:
        assert len([m for m in tar.getnames() if m.endswith("/layer.tar")]) == len(gzip_only.layers)


def test_streamed_member_of_8_gib_and_more_keeps_a_one_block_header(tmp_path: Path) -> None:
    """A layer.tar's size is known only once written; past the octal ustar limit it is
    written base-256 (as GNU tar does) so that the header still fits its reserved block."""
    size = 8**11 + 3
    archive = tmp_path / "big.tar"
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        writer = transport._TarWriter(fd)

        def sparse_body(out: int) -> int:
            end = os.lseek(out, 0, os.SEEK_CUR) + size
            os.ftruncate(out, end)
            os.lseek(out, end, os.SEEK_SET)
            return size

        writer.add_streamed("a" * 64 + "/layer.tar", sparse_body)
        writer.add_bytes("after", b"next member\n")
        writer.finish()
    finally:
        os.close(fd)
    with tarfile.open(archive) as tar:
        big, after = tar.getmembers()
        assert (big.name, big.size, big.isfile()) == ("a" * 64 + "/layer.tar", size, True)
        assert big.offset == 0 and big.offset_data == tarfile.BLOCKSIZE
        assert tar.extractfile(after).read() == b"next member\n"  # type: ignore[union-attr]
    listing = subprocess.run(
        ["bsdtar", "-tvf", str(archive)], check=True, capture_output=True, text=True
    ).stdout
    assert str(size) in listing.splitlines()[0]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "oci-archive", "docker-archive"])
def test_round_trip_keeps_the_image(
    store: Store, image: Image, tmp_path: Path, fmt: transport.Format
) -> None:
    exported = transport.export_image(store, "app:1.0", tmp_path / f"out-{fmt}", fmt)
    other = Store(tmp_path / "other")
    imported = transport.import_image(other, exported)
    # Our docker-archive carries the OCI layout too, so even it keeps the manifest's bytes.
    assert imported.digest == image.digest
    assert imported.manifest_bytes == image.manifest_bytes
    assert imported.config_bytes == image.config_bytes
    assert blob_digests(imported) == blob_digests(image)
    assert other.tags() == {"app:1.0": image.digest}
    assert all(layer.path.parent == other.root / "blobs" / "sha256" for layer in imported.layers)
    assert stack_tree(imported) == stack_tree(image)
    assert other.verify() == []
    assert scratch_of(other) == []


def test_docker_archive_without_oci_layout_keeps_config_and_blobs(
    store: Store, image: Image, tmp_path: Path
) -> None:
    exported = transport.export_image(store, "app:1.0", tmp_path / "d.tar", "docker-archive")
    members = tar_members(exported)
    plain = write_tar(
        tmp_path / "manifest-only.tar",
        {k: v for k, v in members.items() if k not in ("oci-layout", "index.json")},
    )
    other = Store(tmp_path / "other")
    imported = transport.import_image(other, plain)
    assert imported.config_bytes == image.config_bytes
    assert imported.diff_ids == image.diff_ids
    assert blob_digests(imported) == blob_digests(image)
    assert [layer.media_type for layer in imported.layers] == [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ]
    assert imported.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert other.tags() == {"app:1.0": imported.digest}
    assert stack_tree(imported) == stack_tree(image)


def test_gzip_compressed_archives_import(store: Store, image: Image, tmp_path: Path) -> None:
    for fmt in ("oci-archive", "docker-archive"):
        exported = transport.export_image(store, "app:1.0", tmp_path / f"{fmt}.tar", fmt)  # type: ignore[arg-type]
        gz = tmp_path / f"{fmt}.tar.gz"
        gz.write_bytes(gzip.compress(exported.read_bytes()))
        other = Store(tmp_path / f"store-{fmt}")
        assert transport.import_image(other, gz).digest == image.digest
        assert scratch_of(other) == []


def test_import_reads_only_the_blobs_the_store_lacks(
    store: Store, image: Image, tmp_path: Path
) -> None:
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout")
    # The base layer is already in the store: it need not be in the source at all.
    (layout / "blobs" / "sha256" / image.layers[0].digest[7:]).unlink()
    inodes = {d: store.blob_path(d).stat().st_ino for d in blob_digests(image)}
    again = transport.import_image(store, layout, "app:again")
    assert again.digest == image.digest
    assert {d: store.blob_path(d).stat().st_ino for d in blob_digests(image)} == inodes
    assert store.tags() == {"app:1.0": image.digest, "app:again": image.digest}
    with pytest.raises(CorruptImageError, match=f"{image.layers[0].digest[7:]} is missing"):
        transport.import_image(Store(tmp_path / "empty"), layout)


# --- names and platforms --------------------------------------------------------------------


def test_import_chooses_by_name_and_tags(store: Store, image: Image, tmp_path: Path) -> None:
    second = store.save(image.with_config(env={"V": "2"}, created=EPOCH), "app:2.0")
    layout = tmp_path / "layout"
    transport.export_image(store, "app:1.0", layout)
    transport.export_image(store, "app:2.0", layout)
    other = Store(tmp_path / "other")
    with pytest.raises(ImageNotFoundError, match=r"holds 2 images \(app:1.0, app:2.0\)"):
        transport.import_image(other, layout)
    with pytest.raises(ImageNotFoundError, match=r"no image named 'app:3\.0'"):
        transport.import_image(other, layout, name="app:3.0")
    assert transport.import_image(other, layout, name="app:2.0").digest == second.digest
    assert transport.import_image(other, layout, "mine", name=image.digest).digest == image.digest
    assert other.tags() == {"app:2.0": second.digest, "mine": image.digest}
    with pytest.raises(ValueError, match="invalid tag"):
        transport.import_image(other, layout, "no spaces allowed", name="app:2.0")


def test_import_chooses_among_docker_repo_tags(store: Store, image: Image, tmp_path: Path) -> None:
    second = store.save(image.with_config(env={"V": "2"}, created=EPOCH), "app:2.0")
    one = tar_members(
        transport.export_image(store, "app:1.0", tmp_path / "1.tar", "docker-archive")
    )
    two = tar_members(
        transport.export_image(store, "app:2.0", tmp_path / "2.tar", "docker-archive")
    )
    qualified = {**json.loads(two["manifest.json"])[0], "RepoTags": ["docker.io/library/app:2.0"]}
    items = [*json.loads(one["manifest.json"]), qualified]
    files = {k: v for k, v in {**one, **two}.items() if k.startswith("blobs/")}
    both = write_tar(tmp_path / "both.tar", {**files, "manifest.json": json.dumps(items).encode()})
    other = Store(tmp_path / "other")
    with pytest.raises(ImageNotFoundError, match="holds 2 images"):
        transport.import_image(other, both)
    imported = transport.import_image(other, both, name="app:2.0")
    assert imported.config_digest == second.config_digest
    # A fully qualified RepoTag is stored under Docker's short form.
    assert list(other.tags()) == ["app:2.0"]
    imported = transport.import_image(other, both, name="docker.io/library/app:1.0")
    assert imported.config_digest == image.config_digest


def platform_layout(
    store: Store, image: Image, dest: Path, platforms: list[dict[str, str]]
) -> Path:
    """A layout whose one entry is an image index: ``image`` for each platform given with
    ``"this"`` as architecture (the host's), a missing manifest for the others."""
    transport.export_image(store, "app:1.0", dest)
    entries = []
    for p in platforms:
        if p["architecture"] == "this":
            p = {**p, "architecture": host_architecture()[0]}
            digest, size = image.digest, len(image.manifest_bytes)
        else:
            digest, size = "sha256:" + hashlib.sha256(json.dumps(p).encode()).hexdigest(), 100
        entries.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": p,
            }
        )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }
    )
    digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (dest / "blobs" / "sha256" / digest[7:]).write_bytes(index)
    top = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest,
                "size": len(index),
                "annotations": {"org.opencontainers.image.ref.name": "multi:1"},
            }
        ],
    }
    (dest / "index.json").write_bytes(canonical_json(top))
    return dest


def other_arches() -> list[str]:
    return [a for a in ("s390x", "ppc64le", "riscv64") if a != host_architecture()[0]][:2]


def test_import_picks_this_platform_from_an_index(
    store: Store, image: Image, tmp_path: Path
) -> None:
    a, b = other_arches()
    layout = platform_layout(
        store,
        image,
        tmp_path / "multi",
        [
            {"os": "linux", "architecture": a},
            {"os": "windows", "architecture": "this"},
            {"os": "linux", "architecture": "this"},
            {"os": "linux", "architecture": b},
        ],
    )
    other = Store(tmp_path / "other")
    assert transport.import_image(other, layout).digest == image.digest
    assert other.tags() == {"multi:1": image.digest}


def test_import_of_an_index_without_this_platform_lists_them(
    store: Store, image: Image, tmp_path: Path
) -> None:
    a, b = other_arches()
    layout = platform_layout(
        store,
        image,
        tmp_path / "multi",
        [{"os": "linux", "architecture": a}, {"os": "linux", "architecture": b, "variant": "v1"}],
    )
    other = Store(tmp_path / "other")
    with pytest.raises(ImageNotFoundError, match=f"linux/{a}, linux/{b}/v1"):
        transport.import_image(other, layout)
    assert blobs_of(other) == []


# --- docker-archives by hand ----------------------------------------------------------------


def plain_layer(tmp_path: Path, name: str, files: dict[str, str]) -> bytes:
    src = tmp_path / f"src-{name}"
    for path, text in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(text)
    layer = Layer.from_dir(src, tmp_path / f"{name}.tar", compression=None, source_date_epoch=EPOCH)
    return layer.path.read_bytes()


def test_legacy_docker_archive_imports(tmp_path: Path, store: Store) -> None:
    base = plain_layer(tmp_path, "base", {"etc/os-release": "ID=test\n", "bin/sh": "#!\n"})
    app = plain_layer(tmp_path, "app", {"app/main": "main\n", "etc/os-release": "ID=app\n"})
    gz = gzip.compress(plain_layer(tmp_path, "gz", {"srv/data": "compressed layer\n"}))
    archive, config = legacy_docker_archive(tmp_path / "legacy.tar", [base, app, gz, base])
    assert transport.detect_format(archive) == "docker-archive"
    imported = transport.import_image(store, archive)
    assert store.tags() == {"legacy:1": imported.digest}
    assert imported.config_bytes == config
    digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in (base, app, gz, base)]
    assert blob_digests(imported) == digests
    assert [layer.media_type for layer in imported.layers] == [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar",
    ]
    assert imported.stack.read("etc/os-release") == b"ID=test\n"
    assert imported.stack.read("app/main") == b"main\n"
    assert imported.stack.read("srv/data") == b"compressed layer\n"
    assert imported.runtime_config.cmd == ("/bin/sh",)
    assert store.verify() == []


@pytest.mark.parametrize("compressed", [False, True])
def test_docker_archive_layer_not_matching_its_diff_id_is_refused(
    tmp_path: Path, store: Store, compressed: bool
) -> None:
    base = plain_layer(tmp_path, "base", {"etc/os-release": "ID=test\n"})
    app = plain_layer(tmp_path, "app", {"app/main": "main\n"})
    good = ["sha256:" + hashlib.sha256(b).hexdigest() for b in (base, app)]
    wrong = plain_layer(tmp_path, "evil", {"app/main": "evil\n"})
    layers = [base, gzip.compress(wrong) if compressed else wrong]
    archive, _ = legacy_docker_archive(tmp_path / "bad.tar", layers, diff_ids=good)
    before, outside = blobs_of(store), file_listing(tmp_path)
    with pytest.raises(DigestMismatchError, match=r"layer 1 \([0-9a-f]{64}/layer.tar\)") as info:
        transport.import_image(store, archive)
    assert info.value.what == "diff_id"
    assert info.value.expected == good[1]
    assert blobs_of(store) == before
    assert scratch_of(store) == []
    assert file_listing(tmp_path) == outside
    assert store.tags() == {}


def test_docker_25_archive_with_a_foreign_only_manifest_falls_back_to_manifest_json(
    store: Store, image: Image, tmp_path: Path
) -> None:
    """Docker 25's first releases listed only foreign layers in the OCI manifest."""
    members = tar_members(
        transport.export_image(store, "app:1.0", tmp_path / "d.tar", "docker-archive")
    )
    manifest = canonical_json({**image.manifest, "layers": []})
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.loads(members["index.json"])
    index["manifests"][0].update(digest=digest, size=len(manifest))
    members["index.json"] = json.dumps(index).encode()
    members[f"blobs/sha256/{digest[7:]}"] = manifest
    archive = write_tar(tmp_path / "docker25.tar", members)
    other = Store(tmp_path / "other")
    imported = transport.import_image(other, archive)
    assert imported.config_bytes == image.config_bytes
    assert blob_digests(imported) == blob_digests(image)
    assert other.tags() == {"app:1.0": imported.digest}


# --- hostile and broken sources -------------------------------------------------------------


@pytest.fixture
def oci_members(store: Store, image: Image, tmp_path: Path) -> dict[str, bytes]:
    return tar_members(
        transport.export_image(store, "app:1.0", tmp_path / "good.tar", "oci-archive")
    )


def assert_refused(
    store: Store,
    tmp_path: Path,
    archive: Path,
    error: type[Exception],
    match: str,
) -> None:
    """Importing ``archive`` fails with ``error``; blobs/, the store's scratch space and
    everything outside the store are as they were."""
    before_blobs, before_tags = blobs_of(store), store.tags()
    outside = [p for p in file_listing(tmp_path) if not p.startswith("store")]
    with pytest.raises(error, match=match):
        transport.import_image(store, archive, "victim:1")
    assert blobs_of(store) == before_blobs
    assert scratch_of(store) == []
    assert store.tags() == before_tags
    assert [p for p in file_listing(tmp_path) if not p.startswith("store")] == outside


@pytest.mark.parametrize(
    ("member", "match"),
    [
        ("../evil", "'..' component"),
        ("blobs/../../evil", "'..' component"),
        ("/tmp/evil", "absolute name"),
        ("blobs/sha256/not-a-digest", "not named by a sha256 digest"),
    ],
)
def test_archive_with_hostile_member_names_is_refused(
    store: Store, tmp_path: Path, oci_members: dict[str, bytes], member: str, match: str
) -> None:
    archive = write_tar(tmp_path / "hostile.tar", {**oci_members, member: b"payload"})
    assert_refused(store, tmp_path, archive, CorruptImageError, match)


def test_descriptor_that_is_not_a_digest_is_refused(
    store: Store, tmp_path: Path, oci_members: dict[str, bytes]
) -> None:
    index = json.loads(oci_members["index.json"])
    index["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
    archive = write_tar(
        tmp_path / "h.tar", {**oci_members, "index.json": json.dumps(index).encode()}
    )
    assert_refused(store, tmp_path, archive, CorruptImageError, "not a sha256 digest")


def test_blob_not_matching_its_name_is_refused(
    store: Store, image: Image, tmp_path: Path, oci_members: dict[str, bytes]
) -> None:
    other = Store(tmp_path / "store-2")
    name = f"blobs/sha256/{image.layers[2].digest[7:]}"
    tampered = {**oci_members, name: oci_members[name][:-1] + b"\x00"}
    archive = write_tar(tmp_path / "tampered.tar", tampered)
    assert_refused(other, tmp_path, archive, DigestMismatchError, name)
    # The same blob damaged in a layout directory.
    layout = tmp_path / "layout"
    transport.export_image(store, "app:1.0", layout)
    (layout / name).write_bytes(tampered[name])
    with pytest.raises(DigestMismatchError, match=name):
        transport.import_image(other, layout)
    assert blobs_of(other) == [] and scratch_of(other) == []


def test_manifest_blob_not_matching_its_name_is_refused(
    store: Store, image: Image, tmp_path: Path, oci_members: dict[str, bytes]
) -> None:
    name = f"blobs/sha256/{image.digest[7:]}"
    archive = write_tar(tmp_path / "t.tar", {**oci_members, name: image.manifest_bytes + b" "})
    assert_refused(Store(tmp_path / "store-2"), tmp_path, archive, DigestMismatchError, name)


@pytest.mark.parametrize(
    ("layer_path", "match"),
    [
        ("../../etc/passwd", "'..' component"),
        ("/etc/passwd", "absolute name"),
        ("escape/layer.tar", "links outside the archive"),
        ("missing/layer.tar", "missing from the archive"),
    ],
)
def test_docker_archive_paths_stay_inside_the_archive(
    tmp_path: Path, store: Store, layer_path: str, match: str
) -> None:
    base = plain_layer(tmp_path, "base", {"etc/os-release": "ID=test\n"})
    archive, _ = legacy_docker_archive(tmp_path / "legacy.tar", [base])
    members = tar_members(archive)
    (item,) = json.loads(members["manifest.json"])
    item["Layers"] = [layer_path]
    members["manifest.json"] = json.dumps([item]).encode()
    hostile = write_tar(
        tmp_path / "hostile.tar", members, symlinks={"escape/layer.tar": "../../etc/passwd"}
    )
    assert_refused(store, tmp_path, hostile, CorruptImageError, match)


def test_truncated_and_garbled_archives_are_refused(
    tmp_path: Path, oci_members: dict[str, bytes]
) -> None:
    store = Store(tmp_path / "store-2")
    good = write_tar(tmp_path / "good2.tar", oci_members)
    data = good.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError):
        transport.import_image(store, cut)
    broken_json = write_tar(tmp_path / "j.tar", {**oci_members, "index.json": b"{not json"})
    assert_refused(store, tmp_path, broken_json, CorruptImageError, "index.json is not valid JSON")
    gz = tmp_path / "cut.tar.gz"
    gz.write_bytes(gzip.compress(data)[:-100])
    with pytest.raises(CorruptImageError):
        transport.import_image(store, gz)
    assert blobs_of(store) == [] and scratch_of(store) == []


def test_duplicate_members_are_refused(
    store: Store, tmp_path: Path, oci_members: dict[str, bytes]
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [*oci_members.items(), ("index.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "dup.tar"
    archive.write_bytes(buf.getvalue())
    assert_refused(store, tmp_path, archive, CorruptImageError, "appears more than once")


@pytest.mark.parametrize(
    ("fmt", "layout"),
    [
        ("oci", "oci"),
        ("oci-archive", "oci"),
        ("docker-archive", "oci"),
        ("docker-archive", "legacy"),
    ],
)
def test_export_and_import_report_their_progress_in_bytes(
    store: Store, image: Image, tmp_path: Path, fmt: transport.Format, layout: str
) -> None:
    blob_bytes = len(image.manifest_bytes) + len(image.config_bytes)
    blob_bytes += sum(layer.size for layer in image.layers)
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / ("out" if fmt == "oci" else "out.tar")
    store.export_image(
        "app:1.0",
        dest,
        fmt,
        docker_layout=layout,  # type: ignore[arg-type]
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[0] == (0, blob_bytes) and seen[-1] == (blob_bytes, blob_bytes)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    seen.clear()
    other = Store(tmp_path / "other")
    imported = other.import_image(dest, "copy:1", progress=lambda d, t: seen.append((d, t)))
    assert imported.diff_ids == image.diff_ids
    done, total = seen[-1]
    assert total is not None and done == total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # Every layer was copied into the new store and counted.
    assert done >= sum(layer.size for layer in imported.layers)
