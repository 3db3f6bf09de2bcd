"""The distribution-spec conformance cases that concern a client, against the real registry.

The spec's own suite (opencontainers/distribution-spec ``conformance/``) is Go and needs module
downloads, so its workflows that a client takes part in are written here, each driving
:class:`~layercore.registry.RegistryClient` (and through it the store) and checking both what
the client returns and what the registry's access log shows it sent:

- pull: manifests by tag and by digest (GET and HEAD), blobs (GET and HEAD), unknown names;
- push: monolithic (POST + PUT) and chunked (POST + PATCH... + PUT) uploads,
  ``OCI-Chunk-Min-Length``, relative ``Location`` headers, a mount (201) and a refused mount
  (202: upload there), manifests by digest and under several tags, a manifest whose blobs are
  missing, an upload whose bytes are not its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from layercore import Image, Store
from layercore.errors import ReferenceNotFoundError, RegistryError
from layercore.image import OCI_MANIFEST
from layercore.registry import RetryPolicy, client
from layercore.registry.client import RegistryClient
from registry_fixtures import FaultProxyFactory, RegistryFactory
from registry_harness import Registry

FAST_RETRY = RetryPolicy(attempts=2, base=0.05, cap=0.2)


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the machine's Docker logins."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


def _blob(tmp_path: Path, name: str, data: bytes) -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


def _pushed_image(store: Store, tmp_path: Path, registry: Registry, ref: str) -> Image:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True, exist_ok=True)
    (src / "etc" / "conformance").write_bytes(os.urandom(30_000))
    image = store.save(
        Image.scratch().append(store.build_layer(src, source_date_epoch=0)), "conf:1"
    )
    store.push("conf:1", f"{registry.host}/{ref}")
    return image


# -- pull -----------------------------------------------------------------------------------------


def test_pull_manifests_by_tag_and_digest(registry: Registry, tmp_path: Path) -> None:
    image = _pushed_image(Store(tmp_path / "store"), tmp_path, registry, "conf/pull:v1")
    rc = RegistryClient(registry.host)
    by_tag = rc.get_manifest("conf/pull", "v1")
    by_digest = rc.get_manifest("conf/pull", image.digest)
    assert by_tag == by_digest == (image.manifest_bytes, OCI_MANIFEST, image.digest)
    assert rc.head_manifest("conf/pull", "v1") == image.digest
    assert rc.head_manifest("conf/pull", image.digest) == image.digest
    mark = registry.mark()
    assert rc.head_manifest("conf/pull", "nope") is None
    with pytest.raises(ReferenceNotFoundError) as e:
        rc.get_manifest("conf/pull", "nope")
    assert e.value.status == 404 and e.value.code == "MANIFEST_UNKNOWN"
    assert e.value.path == f"{registry.host}/conf/pull:nope"
    with pytest.raises(ReferenceNotFoundError) as n:
        rc.get_manifest("conf/no-such-repo", "v1")
    assert n.value.code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
    # Every manifest request asked for the OCI and Docker types: the registry saw them all.
    assert [(e.method, e.status) for e in registry.requests(mark)] == [
        ("HEAD", 404),
        ("GET", 404),
        ("GET", 404),
    ]


def test_pull_blobs_and_unknown_blobs(registry: Registry, tmp_path: Path) -> None:
    image = _pushed_image(Store(tmp_path / "store"), tmp_path, registry, "conf/blobs:v1")
    rc = RegistryClient(registry.host)
    layer = image.layers[0]
    assert rc.has_blob("conf/blobs", layer.digest)
    dest = tmp_path / "download"
    assert rc.download_blob("conf/blobs", layer.digest, dest) == layer.size
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == layer.digest.removeprefix("sha256:")
    config = rc.get_small_blob("conf/blobs", image.config_digest, what="reading the config")
    assert config == image.config_bytes
    unknown = "sha256:" + "0" * 64
    assert not rc.has_blob("conf/blobs", unknown)
    missing = tmp_path / "missing"
    with pytest.raises(ReferenceNotFoundError) as e:
        rc.download_blob("conf/blobs", unknown, missing)
    assert e.value.code == "BLOB_UNKNOWN"
    assert e.value.path == f"{registry.host}/conf/blobs@{unknown}"
    assert not missing.exists()


# -- push -----------------------------------------------------------------------------------------


def test_monolithic_upload_is_post_then_put(registry: Registry, tmp_path: Path) -> None:
    path, digest = _blob(tmp_path, "small", os.urandom(70_000))
    rc = RegistryClient(registry.host)
    mark = registry.mark()
    rc.upload_blob("conf/mono", digest, path, 70_000)
    calls = [(e.method, e.status) for e in registry.requests(mark)]
    assert calls == [("GET", 200), ("POST", 202), ("PUT", 201)]
    put = registry.requests(mark)[-1]
    assert put.params["digest"] == [digest]
    assert rc.has_blob("conf/mono", digest)


def test_chunked_upload_is_post_patches_put(registry: Registry, tmp_path: Path) -> None:
    data = os.urandom(700_000)
    path, digest = _blob(tmp_path, "chunked", data)
    rc = RegistryClient(registry.host, chunk_size=300_000)
    mark = registry.mark()
    rc.upload_blob("conf/chunked", digest, path, len(data))
    calls = [e.method for e in registry.requests(mark) if "/blobs/uploads/" in e.path]
    assert calls == ["POST", "PATCH", "PATCH", "PATCH", "PUT"]
    out = tmp_path / "back"
    assert rc.download_blob("conf/chunked", digest, out) == len(data)
    assert out.read_bytes() == data


def test_chunks_honour_oci_chunk_min_length(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    """A registry that asks for chunks of at least N bytes gets no smaller one (but the last)."""
    data = os.urandom(1_000_000)
    path, digest = _blob(tmp_path, "min-length", data)
    proxy = fault_proxy(registry)
    rule = proxy.add_headers("POST", "/blobs/uploads/$", {"OCI-Chunk-Min-Length": "400000"})
    rc = RegistryClient(proxy.host, chunk_size=100_000)
    rc.upload_blob("conf/min", digest, path, len(data))
    assert proxy.fired(rule) == 1
    spans = [r.header("content-range") for r in proxy.requests if r.method == "PATCH"]
    assert spans == ["0-399999", "400000-799999", "800000-999999"]


def test_relative_locations_are_resolved(
    registry_factory: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Location`` may be a path (``http.relativeurls``): uploads still follow it."""
    monkeypatch.setattr(client, "CHUNK_SIZE", 200_000)
    reg = registry_factory(location_base="relative")
    store = Store(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(500_000))
    image = store.save(Image.scratch().append(store.build_layer(src, compression=None)), "rel:1")
    mark = reg.mark()
    store.push("rel:1", f"{reg.host}/conf/relative:1")
    assert sum(1 for e in reg.requests(mark) if e.method == "PATCH") == 3
    assert Store(tmp_path / "d").pull(f"{reg.host}/conf/relative:1").digest == image.digest


def test_mount_and_refused_mount(registry: Registry, tmp_path: Path) -> None:
    path, digest = _blob(tmp_path, "mounted", os.urandom(20_000))
    rc = RegistryClient(registry.host)
    rc.upload_blob("conf/source", digest, path, 20_000)
    mark = registry.mark()
    assert rc.mount_blob("conf/target", digest, "conf/source") is None
    assert [(e.method, e.status) for e in registry.requests(mark)] == [("POST", 201)]
    assert rc.has_blob("conf/target", digest)
    # A source that lacks the blob: the registry opens an upload instead (202), and the blob
    # goes up there.
    other_path, other = _blob(tmp_path, "other", os.urandom(20_000))
    location = rc.mount_blob("conf/target", other, "conf/source")
    assert location is not None and "/v2/conf/target/blobs/uploads/" in location
    mark = registry.mark()
    rc.upload_blob("conf/target", other, other_path, 20_000, location=location)
    assert [e.method for e in registry.requests(mark)] == ["PUT"]
    assert rc.has_blob("conf/target", other)


def test_store_push_uploads_when_a_known_location_no_longer_holds_the_blob(
    registry: Registry, tmp_path: Path
) -> None:
    """The store's record names a repository that lost the blob: the mount is refused (202)
    and the blob goes up through the upload the registry opened instead."""
    store = Store(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(10_000))
    image = store.save(Image.scratch().append(store.build_layer(src)), "conf:1")
    layer = image.layers[0].digest
    store.record_location(layer, f"{registry.host}/conf/gone")
    store.record_location(layer, "elsewhere.example/conf/first")
    mark = registry.mark()
    result = store.push("conf:1", f"{registry.host}/conf/second:1")
    assert {b.digest: b.action for b in result.blobs}[layer] == "uploaded"
    posts = [e for e in registry.requests(mark) if e.method == "POST"]
    mounts = [e for e in posts if "mount" in e.params]
    assert [(e.params["from"], e.status) for e in mounts] == [(["conf/gone"], 202)]
    # The layer's upload used the session the refused mount opened: two POSTs in all (the
    # mount, the config's upload), not three.
    assert len(posts) == 2
    assert f"{registry.host}/conf/second" in store.blob_locations(layer)


def test_manifest_by_digest_and_under_several_tags(registry: Registry, tmp_path: Path) -> None:
    image = _pushed_image(Store(tmp_path / "store"), tmp_path, registry, "conf/tags:v1")
    rc = RegistryClient(registry.host)
    data = image.manifest_bytes
    assert rc.put_manifest("conf/tags", image.digest, data, OCI_MANIFEST) == image.digest
    for tag in ("v2", "latest"):
        assert rc.put_manifest("conf/tags", tag, data, OCI_MANIFEST) == image.digest
        assert rc.get_manifest("conf/tags", tag)[0] == data


def test_manifest_whose_blobs_are_missing_is_refused(registry: Registry, tmp_path: Path) -> None:
    rc = RegistryClient(registry.host)
    missing = "sha256:" + "1" * 64
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": missing,
            "size": 2,
        },
        "layers": [],
    }
    with pytest.raises(RegistryError) as e:
        rc.put_manifest("conf/broken", "v1", json.dumps(manifest).encode(), OCI_MANIFEST)
    assert e.value.status == 400 and e.value.code == "MANIFEST_BLOB_UNKNOWN"
    assert "uploading the manifest" in str(e.value) and registry.host in str(e.value)
    assert e.value.path == f"{registry.host}/conf/broken:v1"


def test_upload_whose_bytes_are_not_its_digest_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    path, _digest = _blob(tmp_path, "liar", os.urandom(5_000))
    claimed = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    rc = RegistryClient(registry.host, retry=FAST_RETRY)
    with pytest.raises(RegistryError) as e:
        rc.upload_blob("conf/liar", claimed, path, 5_000)
    assert e.value.code == "DIGEST_INVALID" and e.value.status == 400
    assert f"{registry.host}/conf/liar@{claimed}" == e.value.path
    assert "DIGEST_INVALID" in str(e.value)
    assert not rc.has_blob("conf/liar", claimed)
