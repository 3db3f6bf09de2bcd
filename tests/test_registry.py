"""Push, pull and copy against the real registry (CNCF distribution 2.8, started per test).

What the registry's access log shows is the proof of reuse: a second push sends no blob body,
a push to another repository mounts, a pull of an image whose base is stored fetches only what
is new. Faults come from a loopback proxy that cuts connections, answers 429/500 or corrupts
bodies, and from killing the registry mid-push.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from layercore import Image, Store
from layercore.errors import (
    AuthenticationError,
    DigestMismatchError,
    NetworkError,
    ReferenceNotFoundError,
)
from layercore.image import DOCKER_MANIFEST, OCI_INDEX
from layercore.registry import RetryPolicy, client, transfer
from registry_fixtures import (
    BasicRegistry,
    FaultProxyFactory,
    RegistryFactory,
    Skopeo,
    TlsRegistry,
    TokenIssuerFactory,
    TokenRegistry,
)
from registry_harness import Registry

FAST_RETRY = RetryPolicy(attempts=3, base=0.05, cap=0.5)


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the machine's Docker logins."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return tmp_path / "docker-config" / "config.json"


def write_auth(config: Path, host: str, user: str, password: str) -> None:
    config.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config.write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def make_image(store: Store, tmp_path: Path, name: str, files: dict[str, bytes]) -> Image:
    """An image of one base layer (shared by every image made here) and one of ``files``."""
    base_dir = tmp_path / "base-src"
    if not base_dir.exists():
        (base_dir / "etc").mkdir(parents=True)
        (base_dir / "etc" / "os-release").write_text("ID=layercore-test\n")
        (base_dir / "bin").mkdir()
        (base_dir / "bin" / "tool").write_bytes(os.urandom(200_000))
    src = tmp_path / f"src-{name}"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    base = store.build_layer(base_dir, source_date_epoch=0)
    top = store.build_layer(src, source_date_epoch=0)
    image = Image.scratch().append(base).append(top).with_config(labels={"name": name})
    return store.save(image, name)


def blob_requests(registry: Registry, since: int, method: str) -> list[str]:
    return [e.path for e in registry.requests(since) if e.method == method and "/blobs/" in e.path]


def upload_bodies(registry: Registry, since: int) -> list[str]:
    """The requests that carry blob bytes: PATCH, and PUT of an upload (not of a manifest)."""
    return [
        f"{e.method} {e.path}"
        for e in registry.requests(since)
        if e.method in ("PATCH", "PUT") and "/blobs/uploads/" in e.path
    ]


# -- push, pull, reuse ---------------------------------------------------------------------------


def test_push_then_pull_keeps_every_digest(registry: Registry, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"app/data": os.urandom(300_000)})
    result = store.push("app:1", f"{registry.host}/team/app:1")
    assert result.digest == image.digest and result.manifest == "uploaded"
    assert sorted(b.action for b in result.blobs) == ["uploaded"] * 3
    assert result.bytes_sent == sum(layer.size for layer in image.layers) + len(image.config_bytes)
    other = Store(tmp_path / "other")
    pulled = other.pull(f"{registry.host}/team/app:1")
    assert pulled.digest == image.digest
    assert pulled.manifest_bytes == image.manifest_bytes
    assert pulled.config_bytes == image.config_bytes
    assert other.tags() == {f"{registry.host}/team/app:1": image.digest}
    assert other.verify() == []
    by_digest = other.pull(f"{registry.host}/team/app@{image.digest}", tag="pinned")
    assert by_digest.digest == image.digest


def test_second_push_sends_no_blob_and_another_repository_mounts(
    registry: Registry, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    make_image(store, tmp_path, "app:1", {"a": os.urandom(100_000)})
    store.push("app:1", f"{registry.host}/team/app:1")
    mark = registry.mark()
    again = store.push("app:1", f"{registry.host}/team/app:1")
    assert again.manifest == "present" and again.bytes_sent == 0
    assert upload_bodies(registry, mark) == []
    assert [e.method for e in registry.requests(mark) if "/manifests/" in e.path] == ["HEAD"]

    # A second image sharing the base: only its own layer and config go up.
    make_image(store, tmp_path, "app:2", {"b": os.urandom(100_000)})
    mark = registry.mark()
    second = store.push("app:2", f"{registry.host}/team/app:2")
    actions = {b.kind + ":" + b.action for b in second.blobs}
    assert actions == {"layer:present", "layer:uploaded", "config:uploaded"}
    assert len(upload_bodies(registry, mark)) == 2

    mark = registry.mark()
    moved = store.push("app:1", f"{registry.host}/elsewhere/app:1")
    assert {b.action for b in moved.blobs} == {"mounted"}
    assert {b.mounted_from for b in moved.blobs} == {"team/app"}
    assert moved.bytes_sent == 0
    assert upload_bodies(registry, mark) == []
    mounts = [e for e in registry.requests(mark) if e.method == "POST"]
    assert len(mounts) == 3 and all(e.status == 201 and "mount" in e.params for e in mounts)


def test_locations_survive_a_new_store_process(registry: Registry, tmp_path: Path) -> None:
    """The store's record of where blobs are is on disk, not in a side cache of the process."""
    root = tmp_path / "store"
    make_image(Store(root), tmp_path, "app:1", {"a": b"x" * 50_000})
    Store(root).push("app:1", f"{registry.host}/one/app:1")
    mark = registry.mark()
    code = (
        "import sys; from layercore import Store; "
        "r = Store(sys.argv[1]).push('app:1', sys.argv[2]); print(r.summary())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root), f"{registry.host}/two/app:1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "3 mounted" in out
    assert upload_bodies(registry, mark) == []


def test_pull_fetches_only_blobs_the_store_lacks(registry: Registry, tmp_path: Path) -> None:
    source = Store(tmp_path / "source")
    first = make_image(source, tmp_path, "app:1", {"a": os.urandom(50_000)})
    second = make_image(source, tmp_path, "app:2", {"b": os.urandom(50_000)})
    source.push("app:1", f"{registry.host}/app:1")
    source.push("app:2", f"{registry.host}/app:2")
    dest = Store(tmp_path / "dest")
    dest.pull(f"{registry.host}/app:1")
    mark = registry.mark()
    dest.pull(f"{registry.host}/app:2")
    fetched = {p.rsplit("/", 1)[1] for p in blob_requests(registry, mark, "GET")}
    shared = first.layers[0].digest
    assert shared == second.layers[0].digest
    assert fetched == {second.layers[1].digest, second.config_digest}
    mark = registry.mark()
    dest.pull(f"{registry.host}/app:2", tag="again")
    assert blob_requests(registry, mark, "GET") == []


def test_chunked_upload_follows_each_location(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "CHUNK_SIZE", 256 * 1024)
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "big:1", {"blob": os.urandom(1_100_000)})
    mark = registry.mark()
    store.push("big:1", f"{registry.host}/big:1")
    patches = [e for e in registry.requests(mark) if e.method == "PATCH"]
    assert len(patches) == 5 and all(e.status == 202 for e in patches)
    # Each PATCH went to the Location the one before returned (a new upload state each time).
    assert len({e.query for e in patches}) == 5
    assert Store(tmp_path / "copy").pull(f"{registry.host}/big:1").digest == image.digest


# -- faults --------------------------------------------------------------------------------------


def test_pull_resumes_a_download_cut_mid_blob(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"data": os.urandom(800_000)})
    store.push("app:1", f"{registry.host}/app:1")
    proxy = fault_proxy(registry)
    big = max(image.layers, key=lambda layer: layer.size)
    rule = proxy.cut_response("GET", f"/blobs/{big.digest}$", 300_000, times=2)
    dest = Store(tmp_path / "dest")
    pulled = transfer.pull(dest, f"{proxy.host}/app:1", retry=FAST_RETRY)
    assert pulled.digest == image.digest
    assert proxy.fired(rule) == 2
    gets = [r for r in proxy.requests if r.method == "GET" and big.digest in r.path]
    assert len(gets) == 3
    assert gets[0].header("range") is None
    assert gets[1].header("range") is not None and gets[1].header("range") != "bytes=0-"
    assert dest.verify() == []


def test_push_resumes_an_upload_from_the_registry_offset(
    registry: Registry,
    fault_proxy: FaultProxyFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The third chunk's connection drops before the registry got any of it: the client asks
    where the upload stands (GET, 204 + Range) and goes on from there, sending no chunk twice."""
    monkeypatch.setattr(client, "CHUNK_SIZE", 256 * 1024)
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "big:1", {"blob": os.urandom(1_100_000)})
    proxy = fault_proxy(registry)
    done_patches = [0]

    rule = proxy.cut_request("PATCH", "/blobs/uploads/", 0, times=None)
    rule.times = 0  # armed below, once two chunks are in

    def arm() -> None:
        while done_patches[0] < 2:
            done_patches[0] = sum(
                1 for r in proxy.requests if r.method == "PATCH" and r.status == 202
            )
            time.sleep(0.001)
        rule.times = 1

    mark = registry.mark()
    watcher = threading.Thread(target=arm)
    watcher.start()
    # Pushes big:1's chunks at the pace of the watcher: one blob, one job.
    transfer.push(store, "big:1", f"{proxy.host}/big:1", retry=FAST_RETRY, jobs=1)
    watcher.join()
    entries = registry.requests(mark)
    statuses = [e for e in entries if e.method == "GET" and "/blobs/uploads/" in e.path]
    assert proxy.fired(rule) == 1
    assert statuses and statuses[0].status == 204
    patches = [r for r in proxy.requests if r.method == "PATCH"]
    cut = [r for r in patches if r.rule is rule]
    sent = [r.header("content-range") for r in patches if r.rule is None]
    # The cut chunk is sent again from where it started; no chunk is sent twice.
    assert len(cut) == 1
    spans = [tuple(int(x) for x in str(r).split("-")) for r in sent]
    assert len(spans) == 5 and spans[0][0] == 0
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
    assert Store(tmp_path / "copy").pull(f"{registry.host}/big:1").digest == image.digest


def test_push_cut_mid_chunk_starts_the_upload_again_and_finishes(
    registry: Registry,
    fault_proxy: FaultProxyFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """distribution 2.8 keeps the part of a PATCH it received but not the offset: its upload
    is then lost (BLOB_UPLOAD_INVALID on the status GET), and the client starts it anew."""
    monkeypatch.setattr(client, "CHUNK_SIZE", 256 * 1024)
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "big:1", {"blob": os.urandom(1_100_000)})
    proxy = fault_proxy(registry)
    rule = proxy.cut_request("PATCH", "/blobs/uploads/", 100_000, times=1)
    transfer.push(store, "big:1", f"{proxy.host}/big:1", retry=FAST_RETRY)
    assert proxy.fired(rule) == 1
    assert Store(tmp_path / "copy").pull(f"{registry.host}/big:1").digest == image.digest


def test_429_and_500_are_retried(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": b"1" * 1000})
    proxy = fault_proxy(registry)
    slow = proxy.respond("HEAD", "/manifests/", 429, {"Retry-After": "1"}, times=1)
    broken = proxy.respond("POST", "/blobs/uploads/", 500, times=2)
    started = time.monotonic()
    patient = RetryPolicy(attempts=3, base=0.05, cap=5.0)
    result = transfer.push(store, "app:1", f"{proxy.host}/app:1", retry=patient)
    assert time.monotonic() - started >= 0.9  # Retry-After: 1 was honoured
    assert proxy.fired(slow) == 1 and proxy.fired(broken) == 2
    assert result.digest == image.digest
    pull_fault = proxy.respond("GET", "/manifests/", 503, times=1)
    assert transfer.pull(Store(tmp_path / "d"), f"{proxy.host}/app:1", retry=FAST_RETRY)
    assert proxy.fired(pull_fault) == 1


def test_retries_run_out_with_a_clear_error(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    make_image(store, tmp_path, "app:1", {"a": b"1"})
    proxy = fault_proxy(registry)
    proxy.respond(
        "POST",
        "/blobs/uploads/",
        503,
        {"Content-Type": "application/json"},
        b'{"errors":[{"code":"UNAVAILABLE","message":"down for maintenance"}]}',
        times=None,
    )
    with pytest.raises(Exception) as e:
        transfer.push(store, "app:1", f"{proxy.host}/app:1", retry=FAST_RETRY)
    message = str(e.value)
    assert proxy.host in message and "503" in message and "UNAVAILABLE" in message
    assert "uploading the blob" in message


def test_wrong_bytes_are_refused_and_nothing_is_stored(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    source = Store(tmp_path / "source")
    image = make_image(source, tmp_path, "app:1", {"a": os.urandom(10_000)})
    source.push("app:1", f"{registry.host}/app:1")
    proxy = fault_proxy(registry)
    proxy.corrupt_response("GET", f"/blobs/{image.layers[1].digest}$", times=None)
    dest = Store(tmp_path / "dest")
    before = sorted(os.listdir(dest.root / "blobs" / "sha256"))
    with pytest.raises(DigestMismatchError) as e:
        transfer.pull(dest, f"{proxy.host}/app:1", retry=FAST_RETRY)
    assert e.value.expected == image.layers[1].digest
    assert sorted(os.listdir(dest.root / "blobs" / "sha256")) == before
    assert dest.tags() == {}
    assert os.listdir(dest.root / ".layercore" / "tmp") == []
    proxy.clear_rules()
    proxy.corrupt_response("GET", "/manifests/", times=None)
    with pytest.raises(DigestMismatchError):
        transfer.pull(dest, f"{proxy.host}/app:1", retry=FAST_RETRY)


def test_registry_killed_mid_push_then_next_push_completes(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "CHUNK_SIZE", 256 * 1024)
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "big:1", {"blob": os.urandom(3_000_000)})
    before = (sorted(os.listdir(store.root / "blobs" / "sha256")), store.tags())

    def killer() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e.method == "PATCH" for e in registry.requests()):
                registry.kill()
                return
            time.sleep(0.002)

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(NetworkError) as e:
        transfer.push(store, "big:1", f"{registry.host}/big:1", retry=FAST_RETRY, jobs=1)
    thread.join()
    assert registry.host in str(e.value)
    assert (sorted(os.listdir(store.root / "blobs" / "sha256")), store.tags()) == before
    registry.restart()
    result = transfer.push(store, "big:1", f"{registry.host}/big:1", retry=FAST_RETRY)
    assert result.digest == image.digest
    assert Store(tmp_path / "copy").pull(f"{registry.host}/big:1").digest == image.digest


def test_missing_manifest_and_unreachable_registry(registry: Registry, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(ReferenceNotFoundError, match=r"MANIFEST_UNKNOWN|NAME_UNKNOWN") as e:
        store.pull(f"{registry.host}/nothing:here")
    assert e.value.path == f"{registry.host}/nothing:here"
    assert store.tags() == {}
    registry.stop()
    with pytest.raises(NetworkError, match="cannot reach") as n:
        transfer.pull(store, f"{registry.host}/nothing:here", retry=FAST_RETRY)
    assert registry.host in str(n.value)


# -- auth ----------------------------------------------------------------------------------------


def test_basic_auth_from_the_docker_config(
    basic_registry: BasicRegistry, tmp_path: Path, docker_config: Path
) -> None:
    reg = basic_registry.registry
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": b"1"})
    with pytest.raises(AuthenticationError, match="401") as anon:
        store.push("app:1", f"{reg.host}/app:1")
    assert "layercore login" in str(anon.value)
    write_auth(docker_config, reg.host, "alice", "wrong-" + basic_registry.password)
    with pytest.raises(AuthenticationError) as bad:
        store.push("app:1", f"{reg.host}/app:1")
    assert basic_registry.password not in str(bad.value) and "wrong-" not in str(bad.value)
    write_auth(docker_config, reg.host, "alice", basic_registry.password)
    assert store.push("app:1", f"{reg.host}/app:1").digest == image.digest
    assert Store(tmp_path / "d").pull(f"{reg.host}/app:1").digest == image.digest


def test_token_auth_scopes_and_mount_source(
    token_registry: TokenRegistry, tmp_path: Path, docker_config: Path
) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    write_auth(docker_config, reg.host, "alice", token_registry.users["alice"])
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": os.urandom(5000)})
    store.push("app:1", f"{reg.host}/team/app:1")
    scopes = {s for r in issuer.requests for s in r.scopes}
    assert "repository:team/app:pull,push" in scopes
    assert all(r.user == "alice" for r in issuer.requests)
    issuer.clear()
    moved = store.push("app:1", f"{reg.host}/other/app:1")
    assert {b.action for b in moved.blobs} == {"mounted"}
    scopes = {s for r in issuer.requests for s in r.scopes}
    assert {"repository:other/app:pull,push", "repository:team/app:pull"} <= scopes
    assert Store(tmp_path / "d").pull(f"{reg.host}/other/app:1").digest == image.digest


def test_token_auth_refuses_bad_and_missing_credentials(
    token_registry: TokenRegistry, tmp_path: Path, docker_config: Path
) -> None:
    reg = token_registry.registry
    store = Store(tmp_path / "store")
    with pytest.raises(AuthenticationError, match="anonymous"):
        store.pull(f"{reg.host}/team/app:1")
    secret = "not-" + token_registry.users["bob"]
    write_auth(docker_config, reg.host, "bob", secret)
    with pytest.raises(AuthenticationError, match="'bob'") as e:
        store.pull(f"{reg.host}/team/app:1")
    assert secret not in str(e.value)


def test_identity_token_uses_the_refresh_grant(
    token_issuer_factory: TokenIssuerFactory,
    registry_factory: RegistryFactory,
    tmp_path: Path,
    docker_config: Path,
) -> None:
    issuer = token_issuer_factory(users={"carol": "pw"}, anonymous=False)
    reg = registry_factory(token=issuer)
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "username": "carol",
            "password": "pw",
            "service": issuer.service,
            "client_id": "test",
            "access_type": "offline",
        }
    ).encode()
    with urllib.request.urlopen(issuer.realm, data=form) as answer:
        refresh = json.load(answer)["refresh_token"]
    issuer.clear()
    docker_config.parent.mkdir(parents=True, exist_ok=True)
    docker_config.write_text(json.dumps({"auths": {reg.host: {"identitytoken": refresh}}}))
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": b"z"})
    assert store.push("app:1", f"{reg.host}/app:1").digest == image.digest
    grants = {g for r in issuer.requests for g in r.params.get("grant_type", [])}
    assert grants == {"refresh_token"}
    assert all(r.method == "POST" for r in issuer.requests)
    assert all(r.user == "carol" for r in issuer.requests)


def test_tls_with_a_ca_file_and_insecure(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    reg, tls = tls_registry.registry, tls_registry.tls
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": b"tls"})
    # 127.0.0.1 may fall back to plain HTTP, but this registry speaks only TLS: the certificate
    # failure is what the error reports.
    with pytest.raises(NetworkError, match=r"(?i)certificate|TLS|cannot reach"):
        transfer.push(store, "app:1", f"{reg.host}/app:1", retry=FAST_RETRY)
    result = store.push("app:1", f"{reg.host}/app:1", ca_file=tls.ca_cert)
    assert result.digest == image.digest
    pulled = Store(tmp_path / "d").pull(f"{reg.host}/app:1", insecure=True)
    assert pulled.digest == image.digest


def test_tls_ca_from_certs_d(
    tls_registry: TlsRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CA Docker and podman would trust for the host: ``certs.d/HOST/*.crt`` in either
    place (searched here under tmp_path instead of /etc)."""
    reg, tls = tls_registry.registry, tls_registry.tls
    containers, docker = tmp_path / "containers-certs.d", tmp_path / "docker-certs.d"
    monkeypatch.setattr(client, "_CERTS_DIRS", (containers, docker))
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": b"certs.d"})
    with pytest.raises(NetworkError):
        transfer.push(store, "app:1", f"{reg.host}/app:1", retry=FAST_RETRY)
    (docker / reg.host).mkdir(parents=True)
    (docker / reg.host / "ca.crt").write_bytes(Path(tls.ca_cert).read_bytes())
    assert client.ca_files_for(reg.host) == [docker / reg.host / "ca.crt"]
    assert store.push("app:1", f"{reg.host}/app:1").digest == image.digest
    (docker / reg.host / "ca.crt").rename(tmp_path / "moved.crt")
    (containers / reg.host).mkdir(parents=True)
    (containers / reg.host / "registry-ca.crt").write_bytes((tmp_path / "moved.crt").read_bytes())
    assert Store(tmp_path / "d").pull(f"{reg.host}/app:1").digest == image.digest


# -- indexes and Docker manifests ---------------------------------------------------------------


def test_index_push_and_pull_by_platform_or_whole(registry: Registry, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer_dir = tmp_path / "src"
    children = []
    for arch, variant in (("amd64", None), ("arm64", "v8"), ("arm", "v7")):
        (layer_dir / arch).mkdir(parents=True)
        (layer_dir / arch / "arch").write_text(arch)
        layer = store.build_layer(layer_dir / arch, source_date_epoch=0)
        image = store.save(Image.scratch(architecture=arch, variant=variant).append(layer))
        platform = {
            "os": "linux",
            "architecture": arch,
            **({"variant": variant} if variant else {}),
        }
        children.append((image, platform))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{**img.manifest_descriptor.to_json(), "platform": p} for img, p in children],
    }
    index_bytes = json.dumps(index).encode()
    store.save_index(index_bytes, "multi:1")
    result = store.push("multi:1", f"{registry.host}/multi:1")
    assert len(result.blobs) == 6
    dest = Store(tmp_path / "dest")
    arm = dest.pull(f"{registry.host}/multi:1", platform="linux/arm/v7", tag="arm")
    assert arm.digest == children[2][0].digest
    assert len(os.listdir(dest.root / "blobs" / "sha256")) == 3
    with pytest.raises(LookupError, match="linux/s390x"):
        dest.pull(f"{registry.host}/multi:1", platform="linux/s390x")
    whole = Store(tmp_path / "whole")
    whole.pull(f"{registry.host}/multi:1", all_platforms=True, tag="all")
    data, media_type, _digest = whole.read_manifest("all")
    assert (data, media_type) == (index_bytes, OCI_INDEX)
    assert len(os.listdir(whole.root / "blobs" / "sha256")) == 10  # index + 3 x 3


def test_docker_schema2_manifest_keeps_its_bytes(registry: Registry, tmp_path: Path) -> None:
    """A manifest in Docker's media types, not canonically formatted (as docker push writes
    them), round-trips byte for byte: its digest survives the pull and the next push."""
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"a": b"docker"})
    store.push("app:1", f"{registry.host}/app:1")
    manifest = json.loads(image.manifest_bytes)
    manifest["mediaType"] = DOCKER_MANIFEST
    manifest["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    for d in manifest["layers"]:
        d["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    data = json.dumps(manifest, indent=3).encode()
    rc = client.RegistryClient(registry.host)
    digest = rc.put_manifest("app", "docker", data, DOCKER_MANIFEST)
    dest = Store(tmp_path / "dest")
    pulled = dest.pull(f"{registry.host}/app:docker")
    assert pulled.digest == digest and pulled.manifest_bytes == data
    assert dest.read_manifest(f"{registry.host}/app:docker")[1] == DOCKER_MANIFEST
    again = dest.push(f"{registry.host}/app:docker", f"{registry.host}/copy:docker")
    assert again.digest == digest
    assert rc.get_manifest("copy", "docker")[0] == data


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p.relative_to(root))] = (0, os.readlink(p).encode())
            else:
                out[str(p.relative_to(root))] = (p.stat().st_mode & 0o7777, p.read_bytes())
    return out


# -- interop with skopeo and umoci ---------------------------------------------------------------


def test_skopeo_pulls_what_layercore_pushed(
    registry: Registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    image = make_image(store, tmp_path, "app:1", {"usr/share/doc": b"pushed by layercore\n"})
    store.push("app:1", f"{registry.host}/interop/app:1")
    info = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/interop/app:1").stdout
    )
    assert info["Digest"] == image.digest
    assert info["Layers"] == [layer.digest for layer in image.layers]
    layout = tmp_path / "skopeo-layout"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/interop/app:1",
        f"oci:{layout}:app",
    )
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest


def test_layercore_pulls_what_skopeo_pushed_and_umoci_agrees(
    registry: Registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    layout = tmp_path / "umoci-layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:app"], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:app", str(bundle)], check=True
    )
    (bundle / "rootfs" / "hello.txt").write_text("made by umoci\n")
    (bundle / "rootfs" / "bin").mkdir()
    (bundle / "rootfs" / "bin" / "tool").write_bytes(os.urandom(40_000))
    subprocess.run(["umoci", "repack", "--image", f"{layout}:app", str(bundle)], check=True)
    skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{layout}:app", f"docker://{registry.host}/u/app:1"
    )
    pushed = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/u/app:1").stdout
    )["Digest"]
    store = Store(tmp_path / "store")
    pulled = store.pull(f"{registry.host}/u/app:1", tag="app")
    assert pulled.digest == pushed
    ours = tmp_path / "ours"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{store.root}:app", str(ours)],
        check=True,
        capture_output=True,
    )
    assert _tree(ours / "rootfs") == _tree(bundle / "rootfs")


# -- copy and the command line --------------------------------------------------------------------


def test_copy_mounts_on_the_same_registry_and_moves_between_registries(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    one, two = registry_factory(), registry_factory()
    source = Store(tmp_path / "source")
    image = make_image(source, tmp_path, "app:1", {"a": os.urandom(20_000)})
    source.push("app:1", f"{one.host}/src/app:1")
    store = Store(tmp_path / "store")
    mark = one.mark()
    same = store.copy(f"{one.host}/src/app:1", f"{one.host}/dst/app:1")
    assert {b.action for b in same.blobs} == {"mounted"}
    assert upload_bodies(one, mark) == []
    mark = one.mark()
    across = store.copy(f"{one.host}/src/app:1", f"{two.host}/app:1")
    assert {b.action for b in across.blobs} == {"uploaded"}
    # The store already held every blob: nothing was downloaded again.
    assert blob_requests(one, mark, "GET") == []
    assert across.digest == image.digest


def run_cli(
    store: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layercore", "--store", str(store), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_login_push_pull_logout(
    basic_registry: BasicRegistry, tmp_path: Path, docker_config: Path
) -> None:
    reg, password = basic_registry.registry, basic_registry.password
    root = tmp_path / "store"
    make_image(Store(root), tmp_path, "app:1", {"a": b"cli"})
    bad = run_cli(root, "login", reg.host, "-u", "alice", "--password-stdin", stdin="nope\n")
    assert bad.returncode == 1 and "login failed" in bad.stderr
    assert not docker_config.exists()
    ok = run_cli(root, "login", reg.host, "-u", "alice", "--password-stdin", stdin=password)
    assert ok.returncode == 0, ok.stderr
    assert "Login Succeeded" in ok.stdout
    assert reg.host in json.loads(docker_config.read_text())["auths"]
    pushed = run_cli(root, "push", "app:1", f"{reg.host}/app:1", "--json")
    assert pushed.returncode == 0, pushed.stderr
    report = json.loads(pushed.stdout)
    assert report["uploaded"] == 3 and report["bytes_sent"] > 0
    again = run_cli(root, "push", "app:1", f"{reg.host}/app:1")
    assert "0 uploaded, 0 mounted, 3 already there" in again.stderr
    pulled = run_cli(tmp_path / "d", "pull", f"{reg.host}/app:1", "--tag", "got", "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["digest"] == report["digest"]
    for out in (bad, ok, pushed, again, pulled):
        assert password not in out.stdout + out.stderr
    assert run_cli(root, "logout", reg.host).returncode == 0
    assert reg.host not in json.loads(docker_config.read_text()).get("auths", {})
    denied = run_cli(root, "push", "app:1", f"{reg.host}/app:2")
    assert denied.returncode == 1 and "401" in denied.stderr


def test_cli_usage_errors(tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert run_cli(root, "pull", "Not A Ref").returncode == 2
    assert run_cli(root, "pull", "x:1", "--platform", "linux").returncode == 2
    assert run_cli(root, "push", "x:1", "y:1", "--jobs", "0").returncode == 2
    login = run_cli(root, "login", "127.0.0.1:1", "--password-stdin", stdin="pw")
    assert login.returncode == 2 and "--username" in login.stderr
