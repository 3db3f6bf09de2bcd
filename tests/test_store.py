"""Store: the embedded OCI layout (save/load, tags, blobs, stamps, gc, du, verify) and its
safety when several processes use it at once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from layercore import (
    CorruptImageError,
    DigestMismatchError,
    Image,
    ImageNotFoundError,
    Layer,
    SourceNotFoundError,
    Store,
)
from layercore.image import OCI_INDEX, OCI_MANIFEST

LayerFactory = Callable[..., Layer]
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def src_dir(tmp_path: Path) -> Callable[[dict[str, bytes]], Path]:
    """A directory tree from ``{path: content}``, outside any store."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes]) -> Path:
        src = tmp_path / "sources" / f"src-{next(counter)}"
        src.mkdir(parents=True)
        for name, content in files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(content)
        return src

    return make


@pytest.fixture
def make_layer(tmp_path: Path, src_dir: Callable[[dict[str, bytes]], Path]) -> LayerFactory:
    """A layer blob outside any store, built with Layer.from_dir."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes], compression: str | None = "gzip") -> Layer:
        out = tmp_path / "layers" / f"layer-{next(counter)}"
        out.parent.mkdir(exist_ok=True)
        return Layer.from_dir(src_dir(files), out, compression=compression)  # type: ignore[arg-type]

    return make


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def blob_names(store: Store) -> set[str]:
    return set(os.listdir(store.root / "blobs" / "sha256"))


def private_tmp(store: Store) -> list[str]:
    return os.listdir(store.root / ".layercore" / "tmp")


def two_images(make_layer: LayerFactory) -> tuple[Layer, Image, Image]:
    """Two images sharing a base layer, each with a layer of its own."""
    base = make_layer({"etc/os-release": b"ID=base\n" + os.urandom(20_000)}, None)
    one = Image.scratch(created=0).append(base, created_by="base", created=0)
    return (
        base,
        one.append(make_layer({"app/one": b"1" * 3000}), created_by="one", created=0),
        one.append(make_layer({"app/two": b"2" * 5000}), created_by="two", created=0),
    )


# -- the layout ---------------------------------------------------------------------------------


def test_a_new_store_is_an_oci_layout(tmp_path: Path) -> None:
    store = Store(tmp_path / "a" / "b")
    assert store.root == tmp_path / "a" / "b"
    assert json.loads((store.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((store.root / "index.json").read_bytes()) == {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    }
    assert (store.root / "blobs" / "sha256").is_dir()
    assert store.tags() == {} and store.images() == []
    # Opening it again keeps what is there.
    store.save(Image.scratch(created=0), "empty")
    assert Store(store.root).tags() == store.tags()


def test_default_root_honours_layercore_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAYERCORE_HOME", str(tmp_path / "home-store"))
    assert Store().root == tmp_path / "home-store"
    assert (tmp_path / "home-store" / "oci-layout").is_file()
    monkeypatch.delenv("LAYERCORE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert Store().root == tmp_path / "user" / ".local" / "share" / "layercore"


def test_other_tools_read_the_store_as_an_oci_layout(
    store: Store, make_layer: LayerFactory, tmp_path: Path
) -> None:
    layer = make_layer({"etc/motd": b"hello\n"})
    store.save(Image.scratch(created=0).append(layer).with_config(cmd=["sh"]), "app:1.0")
    validate = subprocess.run(
        ["oci-image-tool", "validate", "--type", "image", "--ref", "name=app:1.0", store.root],
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{store.root}:app:1.0", bundle],
        check=True,
        capture_output=True,
    )
    assert (bundle / "rootfs" / "etc" / "motd").read_bytes() == b"hello\n"


# -- save and load ------------------------------------------------------------------------------


def test_save_and_load_round_trip(store: Store, make_layer: LayerFactory) -> None:
    layer = make_layer({"bin/app": b"#!/bin/sh\necho hi\n", "etc/conf": b"x=1\n"})
    image = Image.scratch(created=0).append(layer, created_by="COPY . /").with_config(cmd=["app"])
    saved = store.save(image, "app:1.0")
    assert saved == image
    assert saved.layers[0].path == store.blob_path(layer.digest)
    assert saved.layers[0].path.read_bytes() == layer.path.read_bytes()

    loaded = store.load("app:1.0")
    assert loaded.digest == image.digest
    assert loaded.manifest_bytes == image.manifest_bytes
    assert loaded.config_bytes == image.config_bytes
    assert [x.path for x in loaded.layers] == [store.blob_path(layer.digest)]
    assert [(x.digest, x.diff_id, x.size, x.media_type) for x in loaded.layers] == [
        (layer.digest, layer.diff_id, layer.size, layer.media_type)
    ]
    assert loaded.runtime_config.cmd == ("app",)
    assert loaded.stack.read("bin/app") == b"#!/bin/sh\necho hi\n"
    assert store.blob_path(image.digest).read_bytes() == image.manifest_bytes
    assert store.blob_path(image.config_digest).read_bytes() == image.config_bytes
    # Indexes of store layers are cached in the private directory, never in blobs/.
    assert set(os.listdir(store.root / ".layercore" / "index"))
    assert blob_names(store) == {d[7:] for d in (image.digest, image.config_digest, layer.digest)}


def test_load_by_digest_and_by_unique_prefix(store: Store, make_layer: LayerFactory) -> None:
    image = Image.scratch(created=0).append(make_layer({"f": b"f"}))
    store.save(image, "app")
    hex_digest = image.digest[7:]
    for ref in (image.digest, hex_digest[:12], "sha256:" + hex_digest[:20], hex_digest):
        assert store.load(ref) == image
    with pytest.raises(ImageNotFoundError, match=hex_digest[:11]) as info:
        store.load(hex_digest[:11])  # too short to be a prefix
    assert isinstance(info.value, LookupError)
    assert info.value.path == str(store.root)
    with pytest.raises(ImageNotFoundError, match="'nope:1'"):
        store.load("nope:1")


def test_tags_tag_remove_and_images(store: Store, make_layer: LayerFactory) -> None:
    _, one, two = two_images(make_layer)
    store.save(one, "b/one:1")
    store.save(two, "a/two:1")
    store.tag("b/one:1", "a/one:latest")
    assert store.tags() == {
        "a/one:latest": one.digest,
        "a/two:1": two.digest,
        "b/one:1": one.digest,
    }
    assert list(store.tags()) == sorted(store.tags())
    # A tag moves to the image it is given to.
    store.tag(two.digest, "b/one:1")
    assert store.tags()["b/one:1"] == two.digest
    assert store.load("b/one:1") == two
    store.remove("a/one:latest")
    assert "a/one:latest" not in store.tags()
    with pytest.raises(ImageNotFoundError, match="a/one:latest"):
        store.remove("a/one:latest")
    # Untagged images are listed with None and removed by digest.
    untagged = Image.scratch(created=123)
    store.save(untagged)
    store.save(untagged)
    assert [(tag, image.digest) for tag, image in store.images()] == [
        ("a/two:1", two.digest),
        ("b/one:1", two.digest),
        (None, untagged.digest),
    ]
    store.remove(untagged.digest[:19])
    assert [tag for tag, _ in store.images()] == ["a/two:1", "b/one:1"]
    # Tagging an untagged image replaces its untagged entry.
    store.save(untagged)
    store.tag(untagged.digest, "later")
    assert [tag for tag, _ in store.images()] == ["a/two:1", "b/one:1", "later"]


@pytest.mark.parametrize("tag", ["", "app:", "-app", "a b", "app::1", "ÿ", f"sha256:{'a' * 64}"])
def test_invalid_tags_are_refused_by_name(store: Store, tag: str) -> None:
    image = Image.scratch(created=0)
    with pytest.raises(ValueError, match="invalid tag") as info:
        store.save(image, tag)
    assert repr(tag) in str(info.value)
    with pytest.raises(ValueError, match="invalid tag"):
        store.tag(store.save(image).digest, tag)


@pytest.mark.parametrize("tag", ["busybox", "app:1.0", "example.com/app:v1", "a--b", "A_b+c@d"])
def test_valid_tags(store: Store, tag: str) -> None:
    image = store.save(Image.scratch(created=0), tag)
    assert store.load(tag) == image


def test_saving_an_image_whose_layers_are_present_writes_no_layer_bytes(
    store: Store, make_layer: LayerFactory
) -> None:
    base = make_layer({"big": os.urandom(200_000)})
    store.save(Image.scratch(created=0).append(base), "first")
    blob = store.blob_path(base.digest)
    before = os.stat(blob)
    # The source is gone: the store cannot read it, so it must not need to.
    base.path.unlink()
    second = Image.scratch(created=0).append(base).with_config(env={"A": "1"})
    store.save(second, "second")
    after = os.stat(blob)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    assert store.load("second").stack.read("big") == store.load("first").stack.read("big")


def test_build_layer_writes_into_the_store_and_keeps_an_existing_blob(
    store: Store, src_dir: Callable[[dict[str, bytes]], Path]
) -> None:
    src = src_dir({"a/b": b"content"})
    layer = store.build_layer(src, compression="zstd", source_date_epoch=0)
    assert layer.path == store.blob_path(layer.digest)
    assert layer.compression == "zstd" and layer.media_type.endswith("+zstd")
    first = os.stat(layer.path)
    again = store.build_layer(src, compression="zstd", source_date_epoch=0)
    assert again == layer
    assert os.stat(layer.path).st_ino == first.st_ino
    assert private_tmp(store) == []
    assert Layer.open(layer.path).diff_id == layer.diff_id


# -- blobs --------------------------------------------------------------------------------------


def test_put_blob_adds_files_and_bytes_once(store: Store, tmp_path: Path) -> None:
    data = b"some blob\n" * 1000
    src = tmp_path / "blob"
    src.write_bytes(data)
    assert store.put_blob(src) == (sha256(data), len(data))
    assert store.put_blob(data, digest=sha256(data)) == (sha256(data), len(data))
    assert store.put_blob(b"other") == (sha256(b"other"), 5)
    assert store.blob_path(sha256(data)).read_bytes() == data
    assert oct(store.blob_path(sha256(data)).stat().st_mode & 0o777) == "0o644"
    assert store.has_blob(sha256(b"other")) and not store.has_blob(sha256(b"absent"))
    assert private_tmp(store) == []
    with pytest.raises(ValueError, match="sha256"):
        store.blob_path("md5:abc")


@pytest.mark.parametrize("source", ["file", "bytes"])
def test_put_blob_with_a_wrong_digest_raises_and_leaves_nothing(
    store: Store, tmp_path: Path, source: str
) -> None:
    data = b"payload" * 10_000
    src = tmp_path / "payload"
    src.write_bytes(data)
    wrong = sha256(b"something else")
    before = blob_names(store)
    with pytest.raises(DigestMismatchError) as info:
        store.put_blob(src if source == "file" else data, digest=wrong)
    assert info.value.expected == wrong and info.value.actual == sha256(data)
    assert blob_names(store) == before
    assert private_tmp(store) == []
    assert not store.has_blob(wrong) and not store.has_blob(sha256(data))


def test_a_missing_source_leaves_nothing_behind(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        store.put_blob(tmp_path / "gone", digest=sha256(b""))
    layer_src = tmp_path / "gone-dir"
    with pytest.raises(SourceNotFoundError):
        store.build_layer(layer_src)
    assert blob_names(store) == set() and private_tmp(store) == []


def test_a_blob_damaged_on_disk_is_never_served(store: Store, make_layer: LayerFactory) -> None:
    layer = make_layer({"f": os.urandom(50_000)}, None)
    saved = store.save(Image.scratch(created=0).append(layer), "app")
    blob = saved.layers[0].path
    assert store.open_blob(layer.digest) == blob
    with open(blob, "r+b") as f:  # same size, one byte changed
        f.seek(30_000)
        byte = f.read(1)
        f.seek(30_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DigestMismatchError, match="damaged") as info:
        store.open_blob(layer.digest)
    assert info.value.path == str(blob)
    assert store.verify("app") == [layer.digest]
    assert store.verify() == [layer.digest]
    # Saving the layer again from a good copy repairs the store.
    store.save(Image.scratch(created=0).append(layer), "app")
    assert store.open_blob(layer.digest) == blob
    assert store.verify() == []
    with pytest.raises(SourceNotFoundError, match="not in the store"):
        store.open_blob(sha256(b"absent"))


def test_verify_rehashes_even_when_the_stat_looks_unchanged(
    store: Store, make_layer: LayerFactory
) -> None:
    layer = make_layer({"f": b"x" * 10_000}, None)
    store.save(Image.scratch(created=0).append(layer), "app")
    blob = store.blob_path(layer.digest)
    with open(blob, "r+b") as f:
        f.write(b"y")
    # Damage the stamp cannot see (bit rot under an unchanged stat): simulated by stamping
    # the damaged file.
    st = os.stat(blob)
    stamp = store.root / ".layercore" / "stamps" / layer.digest[7:]
    stamp.write_text(f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n")
    assert store.verify() == [layer.digest]
    assert store.verify("app") == [layer.digest]


def test_a_damaged_or_invalid_manifest_or_config_fails_to_load(
    store: Store, make_layer: LayerFactory
) -> None:
    image = store.save(Image.scratch(created=0).append(make_layer({"f": b"f"})), "app")
    for digest in (image.digest, image.config_digest):
        path = store.blob_path(digest)
        good = path.read_bytes()
        path.write_bytes(good.replace(b"sha256", b"sha257", 1))
        with pytest.raises(DigestMismatchError) as info:
            store.load("app")
        assert info.value.path == str(path)
        assert store.verify() == [digest]
        path.write_bytes(good)
    assert store.load("app") == image
    # A manifest stored under its right digest but not valid JSON.
    digest, size = store.put_blob(b'{"schemaVersion": 2, "layers": [')
    index_path = store.root / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": size,
            "annotations": {REF_NAME: "bad"},
        }
    )
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptImageError, match="not valid JSON") as corrupt:
        store.load("bad")
    assert corrupt.value.path == str(store.blob_path(digest))
    # gc refuses to guess what a broken manifest references, and deletes nothing.
    names = blob_names(store)
    with pytest.raises(CorruptImageError):
        store.gc()
    assert blob_names(store) == names


# -- gc and du ----------------------------------------------------------------------------------


def test_gc_removes_only_unreachable_blobs(store: Store, make_layer: LayerFactory) -> None:
    base, one, two = two_images(make_layer)
    store.save(one, "one")
    store.save(two, "two")
    orphan, _ = store.put_blob(b"nobody references me")
    everything = blob_names(store)
    assert store.gc().removed == [orphan]
    assert blob_names(store) == everything - {orphan[7:]}

    store.remove("two")
    only_two = {two.digest, two.config_digest, two.layers[1].digest}
    sizes = {d: store.blob_path(d).stat().st_size for d in only_two}
    report = store.gc()
    assert report.removed == sorted(only_two)
    assert report.bytes_freed == sum(sizes.values())
    assert blob_names(store) == everything - {orphan[7:]} - {d[7:] for d in only_two}
    stamps = set(os.listdir(store.root / ".layercore" / "stamps"))
    assert stamps == blob_names(store)
    assert store.has_blob(base.digest)
    loaded = store.load("one")
    assert loaded.stack.read("app/one") == b"1" * 3000
    assert store.verify() == []
    assert store.gc().removed == []


def test_gc_keeps_what_an_image_index_reaches(store: Store, make_layer: LayerFactory) -> None:
    image = store.save(Image.scratch(created=0).append(make_layer({"f": b"f"})))
    store.remove(image.digest)
    index_bytes = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **image.manifest_descriptor.to_json(),
                    "platform": {"os": "linux", "architecture": image.architecture},
                }
            ],
        }
    ).encode()
    digest, size = store.put_blob(index_bytes)
    index_path = store.root / "index.json"
    index = json.loads(index_path.read_bytes())
    index["manifests"] = [
        {"mediaType": OCI_INDEX, "digest": digest, "size": size, "annotations": {REF_NAME: "multi"}}
    ]
    index_path.write_text(json.dumps(index))
    assert store.gc().removed == []
    assert store.load("multi") == image


def test_du_counts_a_shared_base_once(store: Store, make_layer: LayerFactory) -> None:
    base, one, two = two_images(make_layer)
    store.save(one, "one")
    store.save(two, "two")
    store.tag("two", "two-again")  # another tag of the same image shares nothing new
    usage = store.du()
    on_disk = sum(p.stat().st_size for p in (store.root / "blobs" / "sha256").iterdir())
    assert usage.total_bytes == on_disk
    assert usage.saved_bytes == base.size
    assert usage.shared_bytes == base.size
    assert usage.unreferenced_bytes == 0
    by_tag = {u.tag: u for u in usage.images}
    assert set(by_tag) == {"one", "two", "two-again"}
    for tag, image in (("one", one), ("two", two)):
        u = by_tag[tag]
        assert u.digest == image.digest
        assert u.size == len(image.manifest_bytes) + len(image.config_bytes) + sum(
            x.size for x in image.layers
        )
        assert u.shared_bytes == base.size
        assert u.unique_bytes == u.size - base.size
    assert by_tag["two-again"] == by_tag["two"].__class__(
        "two-again", two.digest, by_tag["two"].size, by_tag["two"].unique_bytes, base.size
    )
    store.remove("one")
    usage = store.du()
    one_only = len(one.manifest_bytes) + len(one.config_bytes) + one.layers[1].size
    assert usage.unreferenced_bytes == one_only
    assert usage.saved_bytes == usage.shared_bytes == 0
    assert store.gc().bytes_freed == one_only


# -- nothing outside the root, nothing partial --------------------------------------------------


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if Path(path) == skip:
                continue
            st = os.lstat(path)
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


def test_nothing_is_written_outside_the_store_root(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    src_dir: Callable[[dict[str, bytes]], Path],
    make_layer: LayerFactory,
) -> None:
    import tempfile

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    src = src_dir({"etc/a": b"a", "usr/b": b"b" * 100_000})
    outside = make_layer({"etc/c": b"c"})
    root = tmp_path / "store"
    before = snapshot(tmp_path, root)

    store = Store(root)
    built = store.build_layer(src)
    image = Image.scratch(created=0).append(built).append(outside).with_config(cmd=["sh"])
    store.save(image, "app")
    loaded = store.load("app")
    assert loaded.stack.read("usr/b") == b"b" * 100_000
    store.save(loaded.flatten(root / ".layercore" / "tmp" / "flat"), "flat")
    store.put_blob(b"garbage")
    store.remove("app")
    store.gc()
    store.du()
    assert store.verify() == []

    assert snapshot(tmp_path, root) == before
    assert os.listdir(scratch) == []
    assert all(len(name) == 64 for name in blob_names(store))


def test_gc_clears_leftovers_of_interrupted_writes(store: Store) -> None:
    leftover = store.root / ".layercore" / "tmp" / "12345-dead.blob"
    leftover.write_bytes(b"half a blob")
    assert store.gc().bytes_freed == len(b"half a blob")
    assert private_tmp(store) == []


def test_gc_cannot_run_inside_writing_in_the_same_thread(store: Store) -> None:
    with store.writing(), pytest.raises(RuntimeError, match="writing"):
        store.gc()
    assert store.gc().removed == []


# -- several processes --------------------------------------------------------------------------


def run_children(scripts: list[str], env: dict[str, str] | None = None) -> None:
    """Starts one Python process per script, lets them all reach 'ready', then releases them
    together; fails with the output of any process that fails."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for script in scripts
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", line + (proc.stderr.read() if proc.stderr else "")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err


def test_two_processes_saving_the_same_large_layer_leave_one_intact_blob(
    tmp_path: Path, src_dir: Callable[[dict[str, bytes]], Path]
) -> None:
    src = src_dir({"big-1": os.urandom(24 << 20), "big-2": os.urandom(24 << 20)})
    layer = Layer.from_dir(src, tmp_path / "big.tar", compression=None)
    for round_ in range(3):
        root = tmp_path / f"store-{round_}"
        Store(root)
        scripts = [
            f"""
            import sys
            from layercore import Image, Layer, Store
            store = Store({str(root)!r})
            layer = Layer.open({str(layer.path)!r}, digest={layer.digest!r},
                               diff_id={layer.diff_id!r})
            image = Image.scratch(created=0).append(layer, created=0)
            print("ready", flush=True)
            sys.stdin.readline()
            store.save(image, "t{i}")
            """
            for i in range(2)
        ]
        run_children(scripts)
        store = Store(root)
        assert sorted(store.tags()) == ["t0", "t1"]
        assert store.tags()["t0"] == store.tags()["t1"]
        assert blob_names(store) >= {layer.digest[7:]}
        assert len(blob_names(store)) == 3
        assert private_tmp(store) == []
        assert store.verify() == []
        assert store.blob_path(layer.digest).stat().st_size == layer.size


def test_gc_running_while_saves_happen_never_breaks_a_saved_image(tmp_path: Path) -> None:
    rounds = 20
    root = tmp_path / "store"
    Store(root)
    work = tmp_path / "work"
    work.mkdir()
    saver = f"""
        import os, sys
        from pathlib import Path
        from layercore import Image, Layer, Store
        store = Store({str(root)!r})
        work = Path({str(work)!r})
        base_src = work / "base"
        base_src.mkdir()
        (base_src / "base").write_bytes(b"base" * 50_000)
        base = Layer.from_dir(base_src, work / "base.tar", compression=None)
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range({rounds}):
            src = work / f"src-{{i}}"
            src.mkdir()
            (src / "n").write_bytes(str(i).encode() * 10_000)
            if i % 2:
                with store.writing():  # build then save without gc in between
                    top = store.build_layer(src, compression="gzip")
                    image = Image.scratch(created=0).append(base).append(top)
                    store.save(image, f"keep{{i}}")
            else:
                top = Layer.from_dir(src, work / f"top-{{i}}.tar.gz")
                store.save(Image.scratch(created=0).append(base).append(top), f"keep{{i}}")
            # Garbage for the concurrent gc to collect.
            garbage = Image.scratch(created=i).append(top)
            store.save(garbage, "scratch")
            store.remove("scratch")
        (work / "done").touch()
    """
    collector = f"""
        import sys
        from layercore import Store
        from pathlib import Path
        store = Store({str(root)!r})
        done = Path({str(work)!r}) / "done"
        print("ready", flush=True)
        sys.stdin.readline()
        while not done.exists():
            store.gc()
    """
    run_children([saver, collector, collector])
    store = Store(root)
    assert sorted(store.tags()) == sorted(f"keep{i}" for i in range(rounds))
    for i in range(rounds):
        image = store.load(f"keep{i}")
        assert image.stack.read("n") == str(i).encode() * 10_000
        assert image.stack.read("base") == b"base" * 50_000
    assert store.verify() == []
    store.gc()
    assert store.verify() == []
    assert private_tmp(store) == []


def test_flatten_and_squash_write_the_new_layer_straight_into_the_store(
    store: Store, make_layer: LayerFactory, tmp_path: Path
) -> None:
    layers = [
        make_layer({"etc/a": b"a", "etc/b": b"b"}),
        make_layer({"etc/b": b"B", "usr/x": b"x"}),
        make_layer({"usr/y": b"y"}),
    ]
    image = Image.scratch(created=0)
    for i, layer in enumerate(layers):
        image = image.append(layer, created_by=f"step {i}", created=0)
    image = store.save(image, "app:1")
    tree = [(e.path, e.kind, e.size) for e in image.stack.walk()]

    flat = store.flatten("app:1", "app:flat", source_date_epoch=0)
    assert store.load("app:flat") == flat
    assert len(flat.layers) == 1
    assert flat.layers[0].path == store.blob_path(flat.layers[0].digest)
    assert [(e.path, e.kind, e.size) for e in flat.stack.walk()] == tree
    assert flat.stack.read("etc/b") == b"B"

    squashed = store.squash(image, 1, 3, "app:squashed", source_date_epoch=0)
    assert store.load("app:squashed") == squashed
    assert [layer.digest for layer in squashed.layers[:1]] == [image.layers[0].digest]
    assert len(squashed.layers) == 2
    assert squashed.layers[1].path == store.blob_path(squashed.layers[1].digest)
    assert [(e.path, e.kind, e.size) for e in squashed.stack.walk()] == tree

    # Nothing was left in the private temp area, and the new blobs verify.
    assert private_tmp(store) == []
    assert store.verify() == []
    with pytest.raises(ValueError):
        store.squash(image, 2, 2, "app:bad")
    assert private_tmp(store) == []
    assert "app:bad" not in store.tags()


# -- the one ingest path, blob locations, indexes ----------------------------------------------


def test_ingest_stages_then_commits_and_discards_the_rest(store: Store) -> None:
    data = b"incoming blob\n"
    digest = sha256(data)
    with store.ingest() as batch:
        path = batch.new_path("pull")
        path.write_bytes(data)
        assert batch.add(path, digest) == path
        # Staged, not yet visible: the batch serves it, the store does not have it.
        assert batch.find(digest) == path and batch.is_staged(path)
        assert not store.has_blob(digest)
        again = batch.new_path("pull")
        again.write_bytes(data)
        assert batch.add(again, digest) == path and not again.exists()
        leftover = batch.new_path("scratch")
        leftover.write_bytes(b"never added")
        batch.commit()
        assert store.has_blob(digest)
        assert store.open_blob(digest).read_bytes() == data
        assert batch.find(digest) == store.blob_path(digest)
    assert private_tmp(store) == []


def test_failed_ingest_leaves_the_store_as_it_was(store: Store) -> None:
    before = blob_names(store)
    with pytest.raises(RuntimeError), store.ingest() as batch:
        path = batch.new_path("pull")
        path.write_bytes(b"half a download")
        batch.add(path, sha256(b"half a download"))
        raise RuntimeError("connection lost")
    assert blob_names(store) == before
    assert private_tmp(store) == []


def test_blob_locations_persist_and_go_with_the_blob(store: Store) -> None:
    digest, _size = store.put_blob(b"shared layer")
    assert store.blob_locations(digest) == []
    store.record_location(digest, "reg.example:5000/team/app")
    store.record_location(digest, "reg.example:5000/base")
    store.record_location(digest, "reg.example:5000/team/app")
    assert Store(store.root).blob_locations(digest) == [
        "reg.example:5000/team/app",
        "reg.example:5000/base",
    ]
    store.gc()  # unreferenced: removed, and what was known about it with it
    assert not store.has_blob(digest)
    assert store.blob_locations(digest) == []


def test_save_index_and_read_manifest(store: Store, make_layer: LayerFactory) -> None:
    amd = store.save(Image.scratch(architecture="amd64").append(make_layer({"a": b"1"})))
    arm = store.save(Image.scratch(architecture="arm64").append(make_layer({"b": b"2"})))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**img.manifest_descriptor.to_json(), "platform": {"os": "linux", "architecture": a}}
            for img, a in ((amd, "amd64"), (arm, "arm64"))
        ],
    }
    data = json.dumps(index).encode()
    digest = store.save_index(data, "multi:1")
    assert digest == sha256(data)
    assert store.read_manifest("multi:1") == (data, OCI_INDEX, digest)
    assert store.read_manifest(amd.digest)[1] == OCI_MANIFEST
    assert store.load("multi:1").digest in (amd.digest, arm.digest)
    missing = dict(index, manifests=[*index["manifests"], {"digest": sha256(b"x"), "size": 1}])
    with pytest.raises(CorruptImageError, match="not in the store"):
        store.save_index(json.dumps(missing).encode(), "multi:2")
    with pytest.raises(CorruptImageError, match="not an image index"):
        store.save_index(amd.manifest_bytes, "multi:3")
