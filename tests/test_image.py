"""Image: the immutable manifest + config + layers model (scratch, append, with_config, flatten,
squash, from_json) and the JSON it writes."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from layercore import (
    CorruptImageError,
    Descriptor,
    HistoryEntry,
    Image,
    Layer,
    RuntimeConfig,
    Stack,
)
from layercore.image import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    canonical_json,
)

LayerFactory = Callable[..., Layer]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def make_layer(tmp_path: Path) -> LayerFactory:
    """Builds a small layer from ``{path: content}`` (None: a directory) with Layer.from_dir."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes | None], compression: str | None = "gzip") -> Layer:
        n = next(counter)
        src = tmp_path / f"src-{n}"
        src.mkdir()
        for name, content in files.items():
            path = src / name
            if content is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
        for dirpath, dirnames, filenames in os.walk(src):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (1_000_000, 1_000_000))
        return Layer.from_dir(src, tmp_path / f"layer-{n}.tar", compression=compression)  # type: ignore[arg-type]

    return make


def tree(stack: Stack) -> list[tuple[str, str, int, int, str | None, bytes | None]]:
    """What a user sees in a stack: every path with its kind, mode, size, link and content."""
    return [
        (
            e.path,
            e.kind,
            e.mode,
            e.size,
            e.linkname,
            stack.read(e.path) if e.kind == "file" else None,
        )
        for e in stack.walk()
    ]


def docker_image(layer: Layer) -> tuple[bytes, bytes]:
    """Manifest and config bytes of a Docker v2s2 image of one layer, as `docker save` writes."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05.123456789Z",
        "docker_version": "24.0.7",
        "container_config": {"Hostname": "abc"},
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["sh"], "Healthcheck": {"Test": ["NONE"]}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "ADD rootfs.tar /"}],
    }
    config_bytes = json.dumps(config, indent=2).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": layer.digest, "size": layer.size}],
    }
    return json.dumps(manifest, indent=3).encode(), config_bytes


# -- serialization ------------------------------------------------------------------------------


def test_images_are_canonical_json_and_equal_images_have_equal_digests(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer({"etc/hosts": b"127.0.0.1 localhost\n"})

    def build() -> Image:
        return (
            Image.scratch(architecture="arm64", created=1_700_000_000)
            .append(layer, created_by="COPY hosts /etc/", created=1_700_000_001)
            .with_config(env={"B": "2", "A": "1"}, labels={"z": "1", "a": "2"}, created=5)
        )

    one, two = build(), build()
    assert one.digest == two.digest == sha256(one.manifest_bytes)
    assert one.config_digest == sha256(one.config_bytes)
    assert one == two and hash(one) == hash(two)
    for data in (one.manifest_bytes, one.config_bytes):
        assert data == canonical_json(json.loads(data))
    assert json.loads(one.manifest_bytes) == one.manifest
    assert json.loads(one.config_bytes) == one.config
    # A different timestamp is a different image.
    other = Image.scratch(architecture="arm64", created=1_700_000_000).append(
        layer, created_by="COPY hosts /etc/", created=1_700_000_002
    )
    assert (
        other.digest
        != Image.scratch(architecture="arm64", created=1_700_000_000)
        .append(layer, created_by="COPY hosts /etc/", created=1_700_000_001)
        .digest
    )


def test_manifest_and_config_have_the_oci_shape(make_layer: LayerFactory) -> None:
    layer = make_layer({"a": b"a"}, compression=None)
    image = Image.scratch(architecture="amd64", created=0).append(layer, created=0)
    manifest = image.manifest
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": image.config_digest,
            "size": len(image.config_bytes),
        },
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer.digest, "size": layer.size}],
    }
    assert image.config == {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z"}],
    }
    assert image.manifest_descriptor == Descriptor(
        OCI_MANIFEST, image.digest, len(image.manifest_bytes)
    )
    assert image.media_type == OCI_MANIFEST
    assert image.diff_ids == (layer.diff_id,)


def test_image_is_immutable_and_its_json_is_a_copy(make_layer: LayerFactory) -> None:
    image = Image.scratch(created=0).with_config(env={"A": "1"}, created=0)
    with pytest.raises(AttributeError):
        image.digest = "sha256:0"  # type: ignore[misc]
    config = image.config
    config["config"]["Env"].append("B=2")
    manifest = image.manifest
    manifest["layers"].append({})
    assert image.runtime_config.env == ("A=1",)
    assert image.config["config"]["Env"] == ["A=1"]
    assert image.manifest["layers"] == []
    with pytest.raises(TypeError):
        image.runtime_config.labels["x"] = "y"  # type: ignore[index]
    changed = image.append(make_layer({"f": b"f"}), created=0)
    assert len(image.layers) == 0 and len(changed.layers) == 1


def test_images_and_their_parts_pickle(make_layer: LayerFactory) -> None:
    image = Image.scratch(created=0).append(make_layer({"f": b"1"})).with_config(labels={"a": "b"})
    copy = pickle.loads(pickle.dumps(image))
    assert copy == image and copy.manifest_bytes == image.manifest_bytes
    assert copy.runtime_config == image.runtime_config
    assert copy.layers == image.layers
    d = Descriptor("text/plain", sha256(b""), 0, {"k": "v"})
    assert pickle.loads(pickle.dumps(d)) == d


# -- scratch and timestamps -------------------------------------------------------------------


def test_scratch_defaults_to_the_host_architecture_in_goarch_spelling() -> None:
    image = Image.scratch(created=0)
    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())
    if expected is not None:
        assert image.architecture == expected
    assert image.os == "linux"
    assert image.layers == () and image.diff_ids == () and image.history == ()
    assert image.runtime_config == RuntimeConfig()
    windows = Image.scratch(architecture="arm", variant="v7", os="windows", created=0)
    assert (windows.architecture, windows.os, windows.config["variant"]) == ("arm", "windows", "v7")


def test_created_comes_from_source_date_epoch_when_not_given(
    monkeypatch: pytest.MonkeyPatch, make_layer: LayerFactory
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    image = Image.scratch().append(make_layer({"f": b"f"})).with_config(cmd=["sh"])
    assert image.created == "2023-11-14T22:13:20Z"
    assert [h.created for h in image.history] == ["2023-11-14T22:13:20Z"] * 2
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        Image.scratch()


def test_created_without_source_date_epoch_is_now_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    before = datetime.now(UTC).replace(microsecond=0)
    created = Image.scratch().created
    after = datetime.now(UTC)
    assert created is not None and created.endswith("Z")
    assert before <= datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z") <= after


def test_created_accepts_unix_times_strings_and_datetimes() -> None:
    assert Image.scratch(created=86_400).created == "1970-01-02T00:00:00Z"
    assert Image.scratch(created="2020-02-02T02:02:02.5+01:00").created == (
        "2020-02-02T02:02:02.5+01:00"
    )
    aware = datetime(2021, 5, 6, 9, 8, 7, 654321, tzinfo=timezone(timedelta(hours=2)))
    assert Image.scratch(created=aware).created == "2021-05-06T07:08:07Z"
    with pytest.raises(TypeError):
        Image.scratch(created=1.5)  # type: ignore[arg-type]


# -- append and with_config ---------------------------------------------------------------------


def test_append_adds_a_layer_and_its_history_entry(make_layer: LayerFactory) -> None:
    base = make_layer({"etc/os-release": b"ID=test\n"})
    app = make_layer({"app/run": b"#!/bin/sh\n"})
    image = (
        Image.scratch(created=0)
        .append(base, created_by="ADD rootfs /", created=10)
        .append(app, created_by="COPY app /app", comment="the app", author="me", created=20)
    )
    assert image.layers == (base, app)
    assert image.diff_ids == (base.diff_id, app.diff_id)
    assert [d["digest"] for d in image.manifest["layers"]] == [base.digest, app.digest]
    assert [d["mediaType"] for d in image.manifest["layers"]] == [OCI_LAYER_GZIP] * 2
    assert image.history == (
        HistoryEntry("1970-01-01T00:00:10Z", "ADD rootfs /"),
        HistoryEntry("1970-01-01T00:00:20Z", "COPY app /app", "the app", "me"),
    )
    assert image.created == "1970-01-01T00:00:20Z"
    assert image.stack.read("app/run") == b"#!/bin/sh\n"
    assert image.stack.read("etc/os-release") == b"ID=test\n"


def test_with_config_merges_env_and_labels_and_replaces_the_rest() -> None:
    image = Image.scratch(created=0).with_config(
        env={"PATH": "/bin", "HOME": "/root", "LANG": "C"},
        labels={"a": "1", "b": "2"},
        cmd=["sh"],
        entrypoint=["/init"],
        exposed_ports=["80", "53/udp"],
        volumes=["/data"],
        working_dir="/srv",
        user="app",
        stop_signal="SIGINT",
        created=1,
    )
    rc = image.runtime_config
    assert rc.env == ("PATH=/bin", "HOME=/root", "LANG=C")
    assert dict(rc.labels) == {"a": "1", "b": "2"}
    assert (rc.cmd, rc.entrypoint) == (("sh",), ("/init",))
    assert rc.exposed_ports == ("53/udp", "80/tcp")  # a set: canonical JSON sorts it
    assert rc.volumes == ("/data",)
    assert (rc.working_dir, rc.user, rc.stop_signal) == ("/srv", "app", "SIGINT")
    assert image.config["config"]["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert image.config["config"]["Volumes"] == {"/data": {}}

    changed = image.with_config(
        env={"HOME": "/home/app", "PATH": None, "TZ": "UTC"},
        labels={"a": None, "c": "3"},
        cmd=["sh", "-c", "echo hi"],
        exposed_ports=[],
        created=2,
    )
    rc = changed.runtime_config
    assert rc.env == ("HOME=/home/app", "LANG=C", "TZ=UTC")  # order kept, new key appended
    assert dict(rc.labels) == {"b": "2", "c": "3"}
    assert rc.cmd == ("sh", "-c", "echo hi")
    assert rc.entrypoint == ("/init",)  # None: unchanged
    assert rc.exposed_ports == ()
    assert "ExposedPorts" not in changed.config["config"]
    assert rc.volumes == ("/data",) and rc.user == "app"

    cleared = changed.with_config(cmd=[], user="", env=["TZ=Europe/Paris", "X=a=b"], created=3)
    assert cleared.runtime_config.cmd is None and cleared.runtime_config.user is None
    assert cleared.runtime_config.env_dict() == {
        "HOME": "/home/app",
        "LANG": "C",
        "TZ": "Europe/Paris",
        "X": "a=b",
    }


def test_with_config_records_a_dockerfile_like_empty_layer_entry(make_layer: LayerFactory) -> None:
    layer = make_layer({"f": b"f"})
    image = Image.scratch(created=0).append(layer, created_by="COPY f /", created=0)
    changed = image.with_config(env={"A": "1", "B": "two words"}, cmd=["sh"], created=7)
    assert changed.history[-1] == HistoryEntry(
        "1970-01-01T00:00:07Z", 'ENV A=1 B="two words"; CMD ["sh"]', empty_layer=True
    )
    assert changed.config["history"][-1]["empty_layer"] is True
    assert changed.created == "1970-01-01T00:00:07Z"
    assert changed.layers == image.layers and changed.diff_ids == image.diff_ids
    named = image.with_config(working_dir="/w", created_by="WORKDIR /w", comment="why", created=0)
    assert named.history[-1] == HistoryEntry(
        "1970-01-01T00:00:00Z", "WORKDIR /w", "why", empty_layer=True
    )
    multiline = image.with_config(env={"A": "x\ny"}, created=0).history[-1]
    assert multiline.created_by == 'ENV A="x\\ny"'
    assert image.with_config(labels={"k": None}, created=0).history[-1].created_by == (
        "UNSETLABEL k"
    )


def test_with_config_rejects_nothing_to_change_and_bad_env() -> None:
    image = Image.scratch(created=0)
    with pytest.raises(ValueError, match="nothing to change"):
        image.with_config(created_by="noop")
    with pytest.raises(ValueError, match="NOEQUALS"):
        image.with_config(env=["NOEQUALS"])
    with pytest.raises(TypeError):
        image.with_config(cmd="sh -c true")


def test_changes_keep_unknown_config_keys(make_layer: LayerFactory) -> None:
    layer = make_layer({"f": b"f"})
    manifest_bytes, config_bytes = docker_image(layer)
    image = Image.from_json(manifest_bytes, config_bytes, [layer])
    changed = image.with_config(env={"A": "1"}, created=0).append(make_layer({"g": b"g"}))
    config = changed.config
    assert config["docker_version"] == "24.0.7"
    assert config["container_config"] == {"Hostname": "abc"}
    assert config["config"]["Healthcheck"] == {"Test": ["NONE"]}
    assert config["config"]["Env"] == ["PATH=/usr/bin", "A=1"]


# -- from_json ----------------------------------------------------------------------------------


def test_from_json_keeps_the_bytes_and_their_digests(make_layer: LayerFactory) -> None:
    layer = make_layer({"f": b"f"})
    manifest_bytes, config_bytes = docker_image(layer)
    image = Image.from_json(manifest_bytes, config_bytes, [layer])
    assert image.manifest_bytes == manifest_bytes and image.config_bytes == config_bytes
    assert image.digest == sha256(manifest_bytes)
    assert image.config_digest == sha256(config_bytes)
    assert image.created == "2024-01-02T03:04:05.123456789Z"
    assert image.runtime_config.cmd == ("sh",)
    assert image.history == (HistoryEntry("2024-01-02T03:04:05Z", "ADD rootfs.tar /"),)


def _oci(layers: list[Layer], **config_changes: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        **config_changes,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256(canonical_json(config)),
            "size": len(canonical_json(config)),
        },
        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in layers],
    }
    return manifest, config


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("manifest-not-json", "manifest is not valid JSON"),
        ("config-not-json", "config is not valid JSON"),
        ("index", "not an image manifest"),
        ("config-digest", "manifest names config"),
        ("missing-layer", "1 layers given, the manifest lists 2"),
        ("layer-digest", "but the manifest lists"),
        ("diff-id", "but the config lists"),
        ("too-much-history", "history has 2 entries with a layer"),
        ("rootfs", "rootfs must be of type 'layers'"),
        ("no-os", "'architecture' and 'os'"),
    ],
)
def test_from_json_rejects_inconsistent_images(
    make_layer: LayerFactory, case: str, message: str
) -> None:
    one, two = make_layer({"a": b"1"}), make_layer({"b": b"2"})
    layers = [one]
    manifest, config = _oci(layers)
    if case == "index":
        manifest["mediaType"] = OCI_INDEX
    elif case == "missing-layer":
        manifest, config = _oci([one, two])
    elif case == "layer-digest":
        manifest["layers"][0]["digest"] = two.digest
        manifest["layers"][0]["size"] = two.size
    elif case == "diff-id":
        manifest, config = _oci(layers, rootfs={"type": "layers", "diff_ids": [two.diff_id]})
    elif case == "too-much-history":
        manifest, config = _oci(layers, history=[{"created_by": "a"}, {"created_by": "b"}])
    elif case == "rootfs":
        manifest, config = _oci(layers, rootfs={"type": "tarball", "diff_ids": [one.diff_id]})
    elif case == "no-os":
        del config["os"]
        manifest["config"]["digest"] = sha256(canonical_json(config))
        manifest["config"]["size"] = len(canonical_json(config))
    manifest_bytes, config_bytes = canonical_json(manifest), canonical_json(config)
    if case == "manifest-not-json":
        manifest_bytes = manifest_bytes[:-1]
    elif case == "config-not-json":
        config_bytes = b"\xff" + config_bytes
    elif case == "config-digest":
        config_bytes = canonical_json({**config, "os": "freebsd"})
    with pytest.raises(CorruptImageError, match=message):
        Image.from_json(manifest_bytes, config_bytes, layers)
    # The same parts, consistent, are accepted.
    good_manifest, good_config = _oci(layers)
    Image.from_json(canonical_json(good_manifest), canonical_json(good_config), layers)


def test_from_json_gives_layers_the_manifest_media_types(make_layer: LayerFactory) -> None:
    layer = make_layer({"f": b"f"})
    manifest_bytes, config_bytes = docker_image(layer)
    image = Image.from_json(manifest_bytes, config_bytes, [layer])
    assert layer.media_type == OCI_LAYER_GZIP
    assert image.layers[0].media_type == DOCKER_LAYER_GZIP
    assert image.layers[0].digest == layer.digest


# -- Docker v2s2 --------------------------------------------------------------------------------


def test_docker_v2s2_images_load_and_convert_to_oci_on_change(make_layer: LayerFactory) -> None:
    layer = make_layer({"bin/tool": b"tool"})
    manifest_bytes, config_bytes = docker_image(layer)
    image = Image.from_json(manifest_bytes, config_bytes, [layer])
    assert image.media_type == DOCKER_MANIFEST
    assert image.manifest_descriptor.media_type == DOCKER_MANIFEST
    assert image.stack.read("bin/tool") == b"tool"

    changed = image.with_config(user="nobody", created=0)
    manifest = changed.manifest
    assert changed.media_type == manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert manifest["layers"] == [
        {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
    ]
    assert changed.layers[0].media_type == OCI_LAYER_GZIP
    assert changed.layers[0].path == layer.path
    assert changed.diff_ids == image.diff_ids
    assert changed.stack.read("bin/tool") == b"tool"


# -- flatten and squash -------------------------------------------------------------------------


def _three_layer_image(make_layer: LayerFactory) -> Image:
    return (
        Image.scratch(created=0)
        .append(
            make_layer({"etc/a": b"a0", "etc/b": b"b0", "usr/bin/x": b"x"}),
            created_by="L0",
            created=1,
        )
        .with_config(env={"A": "1"}, created=2)
        .append(make_layer({"etc/a": b"a1", "var/log/": None}), created_by="L1", created=3)
        .append(
            make_layer({"etc/b": b"b2", "usr/bin/.wh.x": b"", "srv/new": b"n"}),
            created_by="L2",
            created=4,
        )
        .with_config(cmd=["sh"], created=5)
    )


def test_flatten_makes_one_layer_with_the_same_tree_and_keeps_the_history(
    make_layer: LayerFactory, tmp_path: Path
) -> None:
    image = _three_layer_image(make_layer)
    flat = image.flatten(tmp_path / "flat.tar.gz", source_date_epoch=100)
    assert len(flat.layers) == 1 and flat.layers[0].path == tmp_path / "flat.tar.gz"
    assert flat.diff_ids == (flat.layers[0].diff_id,)
    assert tree(flat.stack) == tree(image.stack)
    assert [(h.created_by, h.empty_layer) for h in flat.history] == [
        ("L0", True),
        ("ENV A=1", True),
        ("L1", True),
        ("L2", True),
        ('CMD ["sh"]', True),
        ("layercore flatten", False),
    ]
    assert flat.history[-1].created == flat.created == "1970-01-01T00:01:40Z"
    assert flat.runtime_config == image.runtime_config
    assert flat.layer_history()[-1] == (flat.layers[0], flat.history[-1])
    named = image.flatten(tmp_path / "named.tar", compression=None, created_by="squashed all")
    assert named.history[-1].created_by == "squashed all"
    assert named.layers[0].media_type == OCI_LAYER_TAR


def test_squash_merges_a_range_and_inserts_its_entry_after_the_last_squashed_layer(
    make_layer: LayerFactory, tmp_path: Path
) -> None:
    image = _three_layer_image(make_layer).append(
        make_layer({"top": b"t"}), created_by="L3", created=6
    )
    squashed = image.squash(1, 3, tmp_path / "sq.tar.gz", source_date_epoch=9)
    assert len(squashed.layers) == 3
    assert squashed.layers[0] == image.layers[0] and squashed.layers[2] == image.layers[3]
    assert squashed.diff_ids == (
        image.diff_ids[0],
        squashed.layers[1].diff_id,
        image.diff_ids[3],
    )
    assert tree(squashed.stack) == tree(image.stack)
    assert [(h.created_by, h.empty_layer) for h in squashed.history] == [
        ("L0", False),
        ("ENV A=1", True),
        ("L1", True),
        ("L2", True),
        ("layercore squash 1..3", False),
        ('CMD ["sh"]', True),
        ("L3", False),
    ]
    # Entry i with a layer still describes layer i.
    pairs = [(layer, h.created_by) for layer, h in squashed.layer_history() if layer is not None]
    assert pairs == [
        (squashed.layers[0], "L0"),
        (squashed.layers[1], "layercore squash 1..3"),
        (squashed.layers[2], "L3"),
    ]
    with pytest.raises(ValueError, match="range"):
        image.squash(2, 2, tmp_path / "empty.tar")


def test_layer_history_pairs_entries_with_layers_and_fills_missing_ones(
    make_layer: LayerFactory,
) -> None:
    one, two = make_layer({"a": b"1"}), make_layer({"b": b"2"})
    manifest, config = _oci([one, two], history=[{"created_by": "ENV X=1", "empty_layer": True}])
    image = Image.from_json(canonical_json(manifest), canonical_json(config), [one, two])
    assert image.layer_history() == [
        (None, HistoryEntry(created_by="ENV X=1", empty_layer=True)),
        (one, HistoryEntry()),
        (two, HistoryEntry()),
    ]
    # A change pads the history first, so its new entry is not taken for a layer's.
    appended = image.append(make_layer({"c": b"3"}), created_by="L2", created=0)
    assert [(layer is not None, h.created_by) for layer, h in appended.layer_history()] == [
        (False, "ENV X=1"),
        (True, None),
        (True, None),
        (True, "L2"),
    ]
    assert appended.layer_history()[-1][0] == appended.layers[2]


def test_descriptor_and_history_json_round_trip() -> None:
    d = Descriptor(OCI_LAYER_TAR, sha256(b"x"), 1, {"org.example": "v"})
    assert d.to_json() == {
        "mediaType": OCI_LAYER_TAR,
        "digest": sha256(b"x"),
        "size": 1,
        "annotations": {"org.example": "v"},
    }
    assert Descriptor.from_json(d.to_json()) == d
    assert "annotations" not in Descriptor(OCI_LAYER_TAR, sha256(b""), 0).to_json()
    with pytest.raises(CorruptImageError, match="size"):
        Descriptor.from_json({"mediaType": OCI_LAYER_TAR, "digest": sha256(b""), "size": "0"})
    h = HistoryEntry("2020-01-01T00:00:00Z", "RUN x", "c", "a", empty_layer=True)
    assert HistoryEntry.from_json(h.to_json()) == h
    assert HistoryEntry().to_json() == {}
    with pytest.raises(CorruptImageError, match="empty_layer"):
        HistoryEntry.from_json({"empty_layer": "yes"})
