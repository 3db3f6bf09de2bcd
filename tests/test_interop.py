"""What real tools make of our exports, and what we make of theirs.

skopeo reads our OCI layouts and archives (docker-archives in both forms) and copies them;
umoci unpacks our layout (checking every diff_id) into the tree our own extract gives;
oci-image-tool validates our layouts and the store itself; images written by skopeo and buildah
import with their content. Every tool is required: a missing one fails the test (``make test``
installs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from layercore import Image, Store, transport
from layercore.image import DOCKER_MANIFEST
from test_transport import (
    build_image,
    legacy_docker_archive,
    plain_layer,
    stack_tree,
)

#: skopeo and buildah keep a cache of what they learnt about blobs here when run as root;
#: it is removed before each run so that no test sees another's.
BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")

Run = Callable[..., str]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (make test installs it with the other Debian tools)")
    return path


def run(*cmd: str | os.PathLike[str]) -> str:
    """Runs a tool; its stdout, or a failure showing its stderr."""
    BLOB_INFO_CACHE.unlink(missing_ok=True)
    proc = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


@pytest.fixture
def skopeo(tmp_path: Path, policy: Path) -> Run:
    exe = need("skopeo")
    scratch = tmp_path / "skopeo-tmp"
    scratch.mkdir()

    def skopeo(*args: str | os.PathLike[str]) -> str:
        return run(exe, "--policy", policy, "--tmpdir", scratch, *args)

    return skopeo


@pytest.fixture
def buildah(tmp_path: Path) -> Run:
    exe = need("buildah")
    root = tmp_path / "buildah"

    def buildah(*args: str | os.PathLike[str]) -> str:
        return run(
            exe,
            "--root",
            root / "storage",
            "--runroot",
            root / "run",
            "--storage-driver",
            "vfs",
            *args,
        )

    return buildah


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def image(store: Store, tmp_path: Path) -> Image:
    """Three layers: gzip, plain tar with a whiteout and an opaque directory, gzip. (skopeo
    1.9 refuses zstd layers in Docker formats, oci-image-tool 1.0.0-rc1 does not know the
    zstd media type, umoci cannot read zstd.)"""
    return build_image(store, tmp_path / "build", top="gzip")


@pytest.fixture
def zstd_image(store: Store, tmp_path: Path) -> Image:
    """Like ``image`` with a zstd top layer."""
    return build_image(store, tmp_path / "build-zstd", tag="app:zstd", top="zstd")


def new_store(tmp_path: Path, name: str) -> Store:
    return Store(tmp_path / f"store-{name}")


def disk_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root``: its type, mode, content digest or symlink target."""
    tree: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                tree[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
            else:
                tree[rel] = ("other", stat.S_IFMT(st.st_mode))
    return tree


# --- skopeo reads and copies our exports ----------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_skopeo_reads_our_layout_and_archives(
    store: Store, tmp_path: Path, skopeo: Run, compression: str, request: pytest.FixtureRequest
) -> None:
    image: Image = request.getfixturevalue("image" if compression == "gzip" else "zstd_image")
    ref = "app:1.0" if compression == "gzip" else "app:zstd"
    layout = transport.export_image(store, ref, tmp_path / "layout", name="app:1.0")
    oci_tar = transport.export_image(store, ref, tmp_path / "i.tar", "oci-archive", name="app:1.0")
    docker_tar = transport.export_image(
        store, ref, tmp_path / "i.docker.tar", "docker-archive", name="app:1.0"
    )
    layer_digests = [layer.digest for layer in image.layers]

    # skopeo splits oci:DIR:REF at the first colon, so the ref name may hold one.
    info = json.loads(skopeo("inspect", f"oci:{layout}:app:1.0"))
    assert info["Digest"] == image.digest
    assert info["Layers"] == layer_digests
    assert info["Architecture"] == image.architecture
    assert skopeo("inspect", "--raw", f"oci:{layout}:app:1.0").encode() == image.manifest_bytes
    config = json.loads(skopeo("inspect", "--config", f"oci:{layout}:app:1.0"))
    assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert config["config"]["Env"] == ["APP=1"]

    info = json.loads(skopeo("inspect", f"oci-archive:{oci_tar}:app:1.0"))
    assert info["Digest"] == image.digest

    # A docker-archive is read layer by layer, decompressed: skopeo lists the diff_ids.
    info = json.loads(skopeo("inspect", f"docker-archive:{docker_tar}"))
    assert info["Layers"] == list(image.diff_ids)
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{docker_tar}"))
    assert config == image.config
    info = json.loads(skopeo("inspect", f"docker-archive:{docker_tar}:app:1.0"))
    assert info["Layers"] == list(image.diff_ids)


def test_skopeo_copies_of_our_exports_import_back(
    store: Store, image: Image, tmp_path: Path, skopeo: Run
) -> None:
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout")
    src = f"oci:{layout}:app:1.0"
    skopeo("copy", "-q", src, f"oci:{tmp_path / 'copy'}:copied:1")
    skopeo("copy", "-q", src, f"oci-archive:{tmp_path / 'copy.oci.tar'}:copied:1")
    skopeo("copy", "-q", src, f"docker-archive:{tmp_path / 'copy.docker.tar'}:copied:1")
    expected = stack_tree(image)

    # skopeo keeps compressed blobs and the config byte for byte and gzips the plain layer
    # (so it writes a new manifest).
    for name in ("copy", "copy.oci.tar"):
        assert transport.detect_format(tmp_path / name) in ("oci", "oci-archive")
        other = new_store(tmp_path, name)
        imported = transport.import_image(other, tmp_path / name)
        assert imported.config_bytes == image.config_bytes
        assert imported.diff_ids == image.diff_ids
        assert [layer.compression for layer in imported.layers] == ["gzip"] * 3
        kept = [0, 2]  # the gzip layers
        assert [imported.layers[i].digest for i in kept] == [image.layers[i].digest for i in kept]
        assert other.tags() == {"copied:1": imported.digest}
        assert stack_tree(imported) == expected

    # To a docker-archive skopeo decompresses the layers: same diff_ids and tree.
    assert transport.detect_format(tmp_path / "copy.docker.tar") == "docker-archive"
    other = new_store(tmp_path, "docker")
    imported = transport.import_image(other, tmp_path / "copy.docker.tar")
    assert imported.diff_ids == image.diff_ids
    assert [layer.digest for layer in imported.layers] == list(image.diff_ids)
    assert imported.config_bytes != b""
    assert list(other.tags()) == ["copied:1"]
    assert stack_tree(imported) == expected


def test_skopeo_copy_of_our_docker_archive_keeps_diff_ids(
    store: Store, image: Image, tmp_path: Path, skopeo: Run
) -> None:
    docker_tar = transport.export_image(store, "app:1.0", tmp_path / "d.tar", "docker-archive")
    skopeo("copy", "-q", f"docker-archive:{docker_tar}", f"oci:{tmp_path / 'out'}:out")
    other = new_store(tmp_path, "out")
    imported = transport.import_image(other, tmp_path / "out")
    assert imported.diff_ids == image.diff_ids
    assert stack_tree(imported) == stack_tree(image)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_skopeo_reads_our_legacy_docker_archive(
    store: Store, tmp_path: Path, skopeo: Run, compression: str, request: pytest.FixtureRequest
) -> None:
    """The legacy form holds uncompressed layers (so even a zstd image reads, which skopeo
    1.9 refuses in Docker formats otherwise) and a repeated layer as a symlink."""
    image: Image = request.getfixturevalue("image" if compression == "gzip" else "zstd_image")
    legacy = store.save(image.append(image.layers[0], created=0), "app:legacy")
    archive = transport.export_image(
        store, "app:legacy", tmp_path / "legacy.tar", "docker-archive", docker_layout="legacy"
    )
    diff_ids = list(legacy.diff_ids)
    assert len(set(diff_ids)) == 3 and len(diff_ids) == 4

    info = json.loads(skopeo("inspect", f"docker-archive:{archive}"))
    assert info["Layers"] == diff_ids
    assert info["Architecture"] == legacy.architecture
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}:app:legacy"))
    assert info["Layers"] == diff_ids
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{archive}"))
    assert config == legacy.config

    skopeo("copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'via-skopeo'}:x")
    theirs = transport.import_image(new_store(tmp_path, "skopeo"), tmp_path / "via-skopeo")
    assert theirs.diff_ids == legacy.diff_ids
    assert stack_tree(theirs) == stack_tree(legacy)


def test_docker_v2s2_manifest_written_by_skopeo_imports_and_exports(
    store: Store, image: Image, tmp_path: Path, skopeo: Run
) -> None:
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout")
    skopeo("copy", "-q", "-f", "v2s2", f"oci:{layout}:app:1.0", f"oci:{tmp_path / 'v2'}:v2:1")
    other = new_store(tmp_path, "v2")
    imported = transport.import_image(other, tmp_path / "v2")
    assert imported.media_type == DOCKER_MANIFEST
    (entry,) = json.loads((tmp_path / "v2" / "index.json").read_text())["manifests"]
    assert imported.digest == entry["digest"]
    assert stack_tree(imported) == stack_tree(image)
    again = transport.export_image(other, "v2:1", tmp_path / "again")
    # skopeo 1.9 selects entries by ref name among OCI media types only (its own v2s2 output
    # included), so the one entry is read without a name.
    info = json.loads(skopeo("inspect", f"oci:{again}"))
    assert info["Digest"] == imported.digest
    docker_tar = transport.export_image(other, "v2:1", tmp_path / "v2.tar", "docker-archive")
    info = json.loads(skopeo("inspect", f"docker-archive:{docker_tar}"))
    assert info["Layers"] == list(image.diff_ids)


# --- umoci and oci-image-tool ---------------------------------------------------------------


def test_umoci_unpacks_our_layout_to_the_tree_we_extract(tmp_path: Path, store: Store) -> None:
    need("umoci")
    image = build_image(store, tmp_path / "build", top="gzip")  # umoci has no zstd
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout")
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:app:1.0", bundle)
    ours = tmp_path / "ours"
    image.stack.extract(ours)
    theirs = disk_tree(bundle / "rootfs")
    assert theirs == disk_tree(ours)
    assert theirs["opt/old/c"][0] == "file" and "opt/old/a" not in theirs
    assert "var/gone" not in theirs
    assert theirs["lib64"] == ("symlink", "/usr/lib64")
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["/app/run.sh"]


def test_oci_image_tool_validates_our_layout_and_the_store(
    store: Store, image: Image, tmp_path: Path
) -> None:
    need("oci-image-tool")
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout")
    store.save(image.with_config(cmd=["sh"], created=0), "app:2.0")
    transport.export_image(store, "app:2.0", layout)
    for ref in ("app:1.0", "app:2.0"):
        run("oci-image-tool", "validate", "--type", "image", "--ref", f"name={ref}", layout)
        run("oci-image-tool", "validate", "--type", "image", "--ref", f"name={ref}", store.root)


# --- images other tools wrote ---------------------------------------------------------------


@pytest.fixture
def buildah_image(buildah: Run, tmp_path: Path, policy: Path) -> tuple[str, dict[str, bytes]]:
    """A working container made from scratch with files, a symlink and config; its id and
    the files it holds."""
    ctx = tmp_path / "ctx"
    (ctx / "dir" / "sub").mkdir(parents=True)
    files = {
        "greeting": b"hello from buildah\n",
        "opt/dir/nested": b"nested\n",
        "opt/dir/sub/deep": os.urandom(100_000),
    }
    (ctx / "greeting").write_bytes(files["greeting"])
    (ctx / "dir" / "nested").write_bytes(files["opt/dir/nested"])
    (ctx / "dir" / "sub" / "deep").write_bytes(files["opt/dir/sub/deep"])
    container = buildah("from", "scratch").strip()
    buildah("copy", "-q", container, ctx / "greeting", "/greeting")
    buildah("copy", "-q", container, ctx / "dir", "/opt/dir")
    buildah("config", "--cmd", '["/greeting"]', "--env", "A=1", "--label", "k=v", container)
    return container, files


@pytest.mark.parametrize(
    ("transport_name", "format_flag", "dest"),
    [
        ("oci", "oci", "layout"),
        ("oci-archive", "oci", "img.oci.tar"),
        ("docker-archive", "docker", "img.docker.tar"),
    ],
)
def test_images_buildah_commits_import(
    buildah: Run,
    buildah_image: tuple[str, dict[str, bytes]],
    tmp_path: Path,
    policy: Path,
    transport_name: str,
    format_flag: str,
    dest: str,
) -> None:
    container, files = buildah_image
    target = tmp_path / dest
    buildah(
        "commit",
        "-q",
        "--signature-policy",
        policy,
        "--format",
        format_flag,
        container,
        f"{transport_name}:{target}:img:v1",
    )
    store = new_store(tmp_path, transport_name)
    imported = transport.import_image(store, target)
    assert store.tags() == {"img:v1": imported.digest}
    for path, body in files.items():
        assert imported.stack.read(path) == body
    assert imported.runtime_config.cmd == ("/greeting",)
    assert "A=1" in imported.runtime_config.env
    assert imported.runtime_config.labels["k"] == "v"
    if transport_name == "oci":
        (entry,) = json.loads((target / "index.json").read_text())["manifests"]
        assert imported.digest == entry["digest"]
    assert store.verify() == []


@pytest.mark.parametrize("dest", ["oci:copy:c", "oci-archive:copy.tar:c", "docker-archive:d.tar:c"])
def test_images_skopeo_writes_import(
    store: Store, image: Image, tmp_path: Path, skopeo: Run, dest: str
) -> None:
    layout = transport.export_image(store, "app:1.0", tmp_path / "layout")
    kind, path, ref = dest.split(":")
    skopeo("copy", "-q", f"oci:{layout}:app:1.0", f"{kind}:{tmp_path / path}:{ref}")
    other = new_store(tmp_path, kind)
    imported = transport.import_image(other, tmp_path / path, "copied")
    assert other.tags() == {"copied": imported.digest}
    assert imported.stack.read("etc/motd") == b"welcome\n"
    assert imported.stack.read("opt/old/c") == b"c\n"
    assert imported.stack.lookup("var/gone") is None
    assert stack_tree(imported) == stack_tree(image)


def test_legacy_docker_archive_reads_as_skopeo_reads_it(
    tmp_path: Path, store: Store, skopeo: Run
) -> None:
    base = plain_layer(tmp_path, "base", {"etc/os-release": "ID=test\n", "bin/sh": "#!\n"})
    app = plain_layer(tmp_path, "app", {"app/main": "main\n", "etc/os-release": "ID=app\n"})
    archive, _ = legacy_docker_archive(tmp_path / "legacy.tar", [base, app, base])
    ours = transport.import_image(store, archive)
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}"))
    assert info["Layers"] == list(ours.diff_ids)
    skopeo("copy", "-q", f"docker-archive:{archive}", f"oci:{tmp_path / 'via-skopeo'}:x")
    theirs = transport.import_image(new_store(tmp_path, "skopeo"), tmp_path / "via-skopeo")
    assert theirs.diff_ids == ours.diff_ids
    assert stack_tree(theirs) == stack_tree(ours)
    assert ours.stack.read("etc/os-release") == b"ID=test\n"
