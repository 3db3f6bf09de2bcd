"""The registry harness against real clients only (curl, skopeo, http.client): a registry that
works, TLS, both kinds of auth, the token issuer's JWTs, and the fault proxy's faults."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import re
import shutil
import subprocess
import tarfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

import registry_fixtures
from registry_fixtures import (
    BasicRegistry,
    FaultProxyFactory,
    RegistryFactory,
    Skopeo,
    TlsRegistry,
    TokenIssuerFactory,
    TokenRegistry,
)
from registry_harness import Access, Registry, RegistryError, TlsMaterial

# ------------------------------------------------------------------------------------------
# helpers


@dataclass
class CurlResult:
    returncode: int
    status: int | None
    headers: dict[str, list[str]]
    body: bytes
    stderr: str

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def curl(*args: str, tmp: Path) -> CurlResult:
    """curl without any proxy from the environment; the last response's head is parsed."""
    require = shutil.which("curl")
    assert require, "curl is not installed"
    head_file = tmp / "curl-head.txt"
    done = subprocess.run(
        [require, "-sS", "--noproxy", "*", "-D", str(head_file), "-o", "-", *args],
        capture_output=True,
        timeout=60,
    )
    status: int | None = None
    headers: dict[str, list[str]] = {}
    if head_file.exists():
        # -D writes every response head (100 Continue, redirects...): keep the last one.
        blocks = [b for b in re.split(r"\r?\n\r?\n", head_file.read_text("latin-1")) if b.strip()]
        if blocks:
            lines = blocks[-1].splitlines()
            status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
        head_file.unlink()
    return CurlResult(done.returncode, status, headers, done.stdout, done.stderr.decode())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layout:
    path: Path
    tag: str
    manifest_digest: str
    layer: bytes
    layer_digest: str


def write_oci_layout(path: Path, tag: str = "t", payload: bytes = b"hello\n") -> Layout:
    """A one-layer OCI image layout, written by hand (deterministic bytes)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    raw_tar = io.BytesIO()
    with tarfile.open(fileobj=raw_tar, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        tar.addfile(info, io.BytesIO(payload))
    layer = gzip.compress(raw_tar.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(raw_tar.getvalue())]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    manifest_digest = put(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return Layout(path, tag, manifest_digest, layer, sha256(layer))


def push_blob(url: str, repo: str, data: bytes, tmp: Path, *extra: str) -> str:
    """POST then a single PUT ?digest= with the body (distribution 2.8 answers a monolithic
    ``POST ?digest=`` with 202 and ignores the body); returns the digest."""
    digest = sha256(data)
    started = curl("-X", "POST", *extra, f"{url}/v2/{repo}/blobs/uploads/", tmp=tmp)
    location = started.header("Location")
    assert started.status == 202 and location, (started.status, started.body)
    body = tmp / "blob.bin"
    body.write_bytes(data)
    separator = "&" if "?" in location else "?"
    result = curl(
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        f"@{body}",
        *extra,
        f"{location}{separator}digest={digest}",
        tmp=tmp,
    )
    assert result.status == 201, (result.status, result.body, result.stderr)
    return digest


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return write_oci_layout(tmp_path / "layout")


# ------------------------------------------------------------------------------------------
# the registry itself


def test_plain_registry_answers_v2(registry: Registry, tmp_path: Path) -> None:
    result = curl(f"{registry.url}/v2/", tmp=tmp_path)
    assert result.returncode == 0
    assert result.status == 200
    assert result.header("Docker-Distribution-Api-Version") == "registry/2.0"
    assert registry.url == f"http://{registry.host}"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", registry.host)
    assert [(e.method, e.path, e.status) for e in registry.requests()][-1] == ("GET", "/v2/", 200)


def test_skopeo_copy_inspect_and_access_log(
    registry: Registry, layout: Layout, skopeo: Skopeo
) -> None:
    mark = registry.mark()
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout.path}:{layout.tag}",
        f"docker://{registry.host}/demo/hello:v1",
    )
    inspected = json.loads(
        skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/demo/hello:v1").stdout
    )
    assert inspected["Digest"] == layout.manifest_digest
    assert inspected["Layers"] == [layout.layer_digest]

    entries = registry.requests(since=mark)
    puts = [(e.path, e.status) for e in entries if e.method == "PUT"]
    assert ("/v2/demo/hello/manifests/v1", 201) in puts
    assert any(p.startswith("/v2/demo/hello/blobs/uploads/") and s == 201 for p, s in puts)
    upload = next(e for e in entries if e.method == "PUT" and "/blobs/uploads/" in e.path)
    assert "digest" in upload.params and "_state" in upload.params
    assert (registry.storage_dir / "docker" / "registry" / "v2" / "repositories" / "demo").is_dir()
    assert registry.mark() == len(registry.requests())
    assert registry.requests(since=registry.mark()) == []


def test_restart_keeps_storage_and_upload_state(registry: Registry, tmp_path: Path) -> None:
    started = curl("-X", "POST", f"{registry.url}/v2/demo/up/blobs/uploads/", tmp=tmp_path)
    assert started.status == 202
    location = started.header("Location")
    assert location is not None and location.startswith(registry.url)  # location_base="self"
    chunk = tmp_path / "chunk"
    chunk.write_bytes(b"x" * 1000)
    patched = curl(
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        f"@{chunk}",
        location,
        tmp=tmp_path,
    )
    assert patched.status == 202, patched.body
    newest = patched.header("Location")
    assert newest is not None

    port, pid = registry.port, registry.pid
    registry.kill()
    assert not registry.running
    assert registry.pid is None
    registry.restart()
    assert registry.running and registry.port == port and registry.pid != pid

    status = curl(newest, tmp=tmp_path)  # GET on the upload URL: 204 + Range
    assert status.status == 204, status.body
    assert status.header("Range") == "0-999"
    registry.stop()
    registry.stop()  # idempotent
    assert not registry.running


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    registry_fixtures.require_registry()
    broken = Registry(tmp_path / "broken", extra_config={"storage": {"nosuchdriver": {}}})
    with pytest.raises(RegistryError) as failure:
        broken.start()
    message = str(failure.value)
    assert "exited with status" in message
    assert "nosuchdriver" in message  # the registry's own complaint, from its log
    assert not broken.running


def test_missing_registry_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_fixtures, "REGISTRY_BINARY", "no-such-docker-registry")
    with pytest.raises(pytest.fail.Exception, match="make debs"):
        registry_fixtures.require_registry()


# ------------------------------------------------------------------------------------------
# TLS and Basic auth


def test_tls_registry_needs_its_ca(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    registry, tls = tls_registry.registry, tls_registry.tls
    assert registry.url.startswith("https://127.0.0.1:")
    trusted = curl("--cacert", str(tls.ca_cert), f"{registry.url}/v2/", tmp=tmp_path)
    assert trusted.returncode == 0 and trusted.status == 200
    by_name = curl(
        "--cacert", str(tls.ca_cert), f"https://localhost:{registry.port}/v2/", tmp=tmp_path
    )
    assert by_name.status == 200  # the SAN names localhost too
    untrusted = curl(f"{registry.url}/v2/", tmp=tmp_path)
    assert untrusted.returncode == 60  # peer certificate cannot be authenticated
    plain = curl(f"http://{registry.host}/v2/", tmp=tmp_path)
    assert plain.status == 400  # Go's answer to plain HTTP on a TLS port

    conn = http.client.HTTPSConnection(
        "127.0.0.1", registry.port, context=tls.client_context(), timeout=10
    )
    conn.request("GET", "/v2/")
    assert conn.getresponse().status == 200
    conn.close()


def test_basic_auth(basic_registry: BasicRegistry, tmp_path: Path) -> None:
    registry = basic_registry.registry
    anonymous = curl(f"{registry.url}/v2/", tmp=tmp_path)
    assert anonymous.status == 401
    assert (anonymous.header("WWW-Authenticate") or "").startswith("Basic realm=")
    wrong = curl("-u", f"{basic_registry.username}:nope", f"{registry.url}/v2/", tmp=tmp_path)
    assert wrong.status == 401
    user = f"{basic_registry.username}:{basic_registry.password}"
    assert curl("-u", user, f"{registry.url}/v2/", tmp=tmp_path).status == 200
    assert curl("-u", user, f"{registry.url}/v2/_catalog", tmp=tmp_path).status == 200


# ------------------------------------------------------------------------------------------
# token auth


def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def test_token_challenge_and_signed_jwt(token_registry: TokenRegistry, tmp_path: Path) -> None:
    registry, issuer = token_registry.registry, token_registry.issuer
    password = token_registry.users["alice"]

    challenged = curl(f"{registry.url}/v2/", tmp=tmp_path)
    assert challenged.status == 401
    challenge = _challenge(challenged.header("WWW-Authenticate") or "")
    assert challenge == {"realm": issuer.realm, "service": issuer.service}

    refused = curl(f"{issuer.realm}?service={issuer.service}", tmp=tmp_path)
    assert refused.status == 401  # the fixture's issuer wants credentials
    assert curl("-u", "alice:wrong", issuer.realm, tmp=tmp_path).status == 401

    scopes = "scope=registry:catalog:*&scope=repository:demo/app:pull"
    answer = curl(
        "-u", f"alice:{password}", f"{issuer.realm}?service={issuer.service}&{scopes}", tmp=tmp_path
    )
    assert answer.status == 200
    body = json.loads(answer.body)
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    header_b64, claims_b64, _ = body["token"].split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=="))
    assert header["alg"] == "RS256" and len(header["x5c"]) == 1
    assert claims["aud"] == issuer.service and claims["iss"] == issuer.issuer
    assert claims["sub"] == "alice"
    assert claims["access"] == [
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        {"type": "repository", "name": "demo/app", "actions": ["pull"]},
    ]

    bearer = f"Authorization: Bearer {body['token']}"
    catalog = curl("-H", bearer, f"{registry.url}/v2/_catalog", tmp=tmp_path)
    assert catalog.status == 200, catalog.body  # the real registry verified the JWT
    tags = curl("-H", bearer, f"{registry.url}/v2/demo/app/tags/list", tmp=tmp_path)
    assert tags.status == 404 and b"NAME_UNKNOWN" in tags.body
    push = curl(
        "-X", "POST", "-H", bearer, f"{registry.url}/v2/demo/app/blobs/uploads/", tmp=tmp_path
    )
    assert push.status == 401  # pull only
    assert 'error="insufficient_scope"' in (push.header("WWW-Authenticate") or "")

    everything = [Access("registry", "catalog", ("*",))]
    for forged in (
        issuer.make_token("alice", everything, audience="another-registry"),
        issuer.make_token("alice", everything, issuer="another-issuer"),
        issuer.make_token("alice", everything, expires_in=-3600),
    ):
        rejected = curl(
            "-H", f"Authorization: Bearer {forged}", f"{registry.url}/v2/_catalog", tmp=tmp_path
        )
        assert rejected.status == 401

    recorded = issuer.requests
    assert [r.status for r in recorded] == [401, 401, 200]
    assert recorded[-1].user == "alice"
    assert recorded[-1].scopes == ["registry:catalog:*", "repository:demo/app:pull"]
    assert password not in repr(recorded)


def test_skopeo_copy_through_token_flow(
    token_registry: TokenRegistry, layout: Layout, skopeo: Skopeo
) -> None:
    registry, issuer = token_registry.registry, token_registry.issuer
    password = token_registry.users["bob"]
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"--dest-creds=bob:{password}",
        f"oci:{layout.path}:{layout.tag}",
        f"docker://{registry.host}/team/app:1",
    )
    inspected = skopeo(
        "inspect",
        "--tls-verify=false",
        f"--creds=bob:{password}",
        f"docker://{registry.host}/team/app:1",
    )
    assert json.loads(inspected.stdout)["Digest"] == layout.manifest_digest
    anonymous = skopeo(
        "inspect", "--tls-verify=false", f"docker://{registry.host}/team/app:1", check=False
    )
    assert anonymous.returncode != 0

    granted = [r for r in issuer.requests if r.status == 200]
    assert granted and all(r.user == "bob" for r in granted)
    assert any("repository:team/app:pull,push" in r.scopes for r in granted)
    assert password not in repr(issuer.requests)
    manifests = [e for e in registry.requests() if e.path == "/v2/team/app/manifests/1"]
    assert ("PUT", 201) in [(e.method, e.status) for e in manifests]


def test_token_grant_policy_denies_push(
    registry_factory: RegistryFactory,
    token_issuer_factory: TokenIssuerFactory,
    layout: Layout,
    skopeo: Skopeo,
) -> None:
    def grants(user: str | None, kind: str, name: str, actions: list[str]) -> list[str]:
        return [a for a in actions if a == "pull"] if name.startswith("locked/") else actions

    issuer = token_issuer_factory(anonymous=True, grants=grants)
    registry = registry_factory(token=issuer)
    source = f"oci:{layout.path}:{layout.tag}"
    skopeo("copy", "--dest-tls-verify=false", source, f"docker://{registry.host}/open/app:1")
    denied = skopeo(
        "copy",
        "--dest-tls-verify=false",
        source,
        f"docker://{registry.host}/locked/app:1",
        check=False,
    )
    assert denied.returncode != 0
    assert "denied" in denied.stderr.lower() or "unauthorized" in denied.stderr.lower()
    locked = [r for r in issuer.requests if any("locked/app" in s for s in r.scopes)]
    assert locked and all(r.user is None for r in locked)
    assert all(a.actions == ("pull",) for r in locked for a in r.granted if a.name == "locked/app")


def test_token_refresh_flows(token_registry: TokenRegistry, tmp_path: Path) -> None:
    registry, issuer = token_registry.registry, token_registry.issuer
    password = token_registry.users["alice"]
    form = ["-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded"]

    def post(*fields: str) -> CurlResult:
        data = [arg for f in fields for arg in ("--data-urlencode", f)]
        return curl(*form, *data, issuer.realm, tmp=tmp_path)

    first = post(
        "grant_type=password",
        "username=alice",
        f"password={password}",
        f"service={issuer.service}",
        "client_id=layercore-tests",
        "access_type=offline",
        "scope=registry:catalog:*",
    )
    assert first.status == 200, first.body
    refresh_token = json.loads(first.body)["refresh_token"]
    again = post(
        "grant_type=refresh_token",
        f"refresh_token={refresh_token}",
        f"service={issuer.service}",
        "scope=registry:catalog:* repository:demo/app:pull",
    )
    assert again.status == 200, again.body
    refreshed = json.loads(again.body)
    assert refreshed["refresh_token"] == refresh_token
    bearer = f"Authorization: Bearer {refreshed['access_token']}"
    assert curl("-H", bearer, f"{registry.url}/v2/_catalog", tmp=tmp_path).status == 200
    assert post("grant_type=refresh_token", "refresh_token=bogus").status == 400
    assert post("grant_type=password", "username=alice", "password=bad").status == 400

    offline = curl(
        "-u",
        f"alice:{password}",
        f"{issuer.realm}?service={issuer.service}&offline_token=true&client_id=x",
        tmp=tmp_path,
    )
    assert offline.status == 200 and "refresh_token" in json.loads(offline.body)
    online = curl(
        "-u", f"alice:{password}", f"{issuer.realm}?service={issuer.service}", tmp=tmp_path
    )
    assert "refresh_token" not in json.loads(online.body)

    recorded = issuer.requests
    assert recorded[1].scopes == ["registry:catalog:*", "repository:demo/app:pull"]
    assert recorded[1].params["refresh_token"] == ["<redacted>"]
    assert recorded[0].params["password"] == ["<redacted>"]
    assert password not in repr(recorded) and refresh_token not in repr(recorded)


def test_token_issuer_without_oauth_answers_post_with_404(
    token_issuer_factory: TokenIssuerFactory, tmp_path: Path
) -> None:
    issuer = token_issuer_factory(users={"u": "p"}, oauth=False)
    posted = curl(
        "-X", "POST", "-d", "grant_type=password&username=u&password=p", issuer.realm, tmp=tmp_path
    )
    assert posted.status == 404  # docker then falls back to GET with offline_token=true
    assert curl("-u", "u:p", f"{issuer.realm}?offline_token=true", tmp=tmp_path).status == 200


# ------------------------------------------------------------------------------------------
# the fault proxy


def test_proxy_respond_fires_once_then_passes(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    rule = proxy.respond("GET", r"^/v2/$", 429, {"Retry-After": "1"}, b"slow down")
    limited = curl(f"{proxy.url}/v2/", tmp=tmp_path)
    assert limited.status == 429 and limited.header("Retry-After") == "1"
    assert limited.body == b"slow down"
    assert proxy.fired(rule) == 1
    passed = curl(f"{proxy.url}/v2/", tmp=tmp_path)
    assert passed.status == 200 and passed.header("Docker-Distribution-Api-Version")
    assert proxy.fired(rule) == 1
    assert [(r.method, r.status, r.rule) for r in proxy.requests] == [
        ("GET", 429, rule),
        ("GET", 200, None),
    ]
    assert [e.status for e in registry.requests()].count(429) == 0  # never reached the registry


def test_proxy_keeps_connections_alive(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    blob = b"keep-alive blob " * 5000
    digest = push_blob(registry.url, "demo/ka", blob, tmp_path)
    proxy.respond("GET", r"/v2/nowhere", 500, times=None)
    conn = http.client.HTTPConnection("127.0.0.1", int(proxy.host.split(":")[1]), timeout=10)
    try:
        answers = []
        for method, path in [
            ("GET", "/v2/"),
            ("HEAD", f"/v2/demo/ka/blobs/{digest}"),
            ("GET", f"/v2/demo/ka/blobs/{digest}"),
            ("GET", "/v2/demo/ka/blobs/sha256:" + "0" * 64),  # 404 with a body
            ("GET", "/v2/nowhere"),
        ]:
            conn.request(method, path)
            response = conn.getresponse()
            answers.append((response.status, response.read()))
        conn.request(
            "POST", "/v2/demo/ka/blobs/uploads/", body=iter([b"ignored"]), encode_chunked=True
        )
        posted = conn.getresponse()
        posted.read()
        location = posted.getheader("Location") or ""
        conn.request(
            "PATCH",
            urlpath(location),
            body=iter([b"a" * 70_000, b"b" * 10]),
            headers={"Content-Type": "application/octet-stream"},
            encode_chunked=True,
        )
        patched = conn.getresponse()
        patched.read()
    finally:
        conn.close()
    assert [status for status, _ in answers] == [200, 200, 200, 404, 500]
    assert answers[1][1] == b"" and answers[2][1] == blob
    assert posted.status == 202 and location.startswith(proxy.url)
    assert patched.status == 202 and patched.getheader("Range") == "0-70009"
    assert proxy.connections == 1


def urlpath(url: str) -> str:
    """The path and query of an absolute URL."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def test_proxy_relays_expect_100_continue(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    big = b"\x01\x02" * 1_500_000  # curl sends "Expect: 100-continue" above 1 MiB
    digest = push_blob(proxy.url, "demo/big", big, tmp_path)
    fetched = curl(f"{proxy.url}/v2/demo/big/blobs/{digest}", tmp=tmp_path)
    assert sha256(fetched.body) == digest
    put = next(r for r in proxy.requests if r.method == "PUT")
    assert put.header("expect") == "100-continue" and put.status == 201

    refuse = proxy.respond("PUT", r"/blobs/uploads/", 507, body=b"full")
    started = curl("-X", "POST", f"{proxy.url}/v2/demo/big/blobs/uploads/", tmp=tmp_path)
    body = tmp_path / "big.bin"
    body.write_bytes(big)
    refused = curl(
        "-X",
        "PUT",
        "--data-binary",
        f"@{body}",
        f"{started.header('Location')}&digest={digest}",
        tmp=tmp_path,
    )
    assert refused.status == 507 and refused.body == b"full"
    assert proxy.fired(refuse) == 1


def test_proxy_cut_response_truncates_the_body(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    blob = bytes(range(256)) * 400
    digest = push_blob(registry.url, "demo/cut", blob, tmp_path)
    proxy = fault_proxy(registry)
    rule = proxy.cut_response("GET", r"/blobs/sha256:", after_bytes=1000)
    cut = curl(f"{proxy.url}/v2/demo/cut/blobs/{digest}", tmp=tmp_path)
    assert cut.returncode == 18, cut.stderr  # CURLE_PARTIAL_FILE
    assert cut.status == 200 and cut.body == blob[:1000]
    assert proxy.fired(rule) == 1
    whole = curl(f"{proxy.url}/v2/demo/cut/blobs/{digest}", tmp=tmp_path)
    assert whole.returncode == 0 and whole.body == blob

    reset = proxy.cut_response("GET", r"/blobs/sha256:", after_bytes=10, reset=True)
    aborted = curl(f"{proxy.url}/v2/demo/cut/blobs/{digest}", tmp=tmp_path)
    assert aborted.returncode in (18, 56), aborted.stderr  # partial file / recv failure
    assert proxy.fired(reset) == 1
    assert proxy.requests[0].status == 200 and proxy.requests[0].rule is rule


def test_proxy_cut_request_leaves_a_partial_upload(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    proxy = fault_proxy(registry)
    rule = proxy.cut_request("PATCH", r"/blobs/uploads/", after_bytes=4096)
    started = curl("-X", "POST", f"{proxy.url}/v2/demo/cutreq/blobs/uploads/", tmp=tmp_path)
    location = started.header("Location")
    assert started.status == 202 and location is not None
    chunk = tmp_path / "chunk"
    chunk.write_bytes(b"z" * 100_000)
    patched = curl(
        "-X",
        "PATCH",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        f"@{chunk}",
        location,
        tmp=tmp_path,
    )
    assert patched.returncode != 0 and patched.status is None  # no answer at all
    assert proxy.fired(rule) == 1
    assert proxy.requests[-1].method == "PATCH" and proxy.requests[-1].status is None
    logged = registry.wait_for_request("PATCH", r"/v2/demo/cutreq/blobs/uploads/")
    assert logged.status == 500  # distribution: "client disconnected during blob PATCH"
    # The bytes that arrived stay in the upload, but the offset in the Location's _state does
    # not move: distribution 2.8 then refuses the upload ("upload resumed at wrong offset").
    kept = curl(location, tmp=tmp_path)
    assert kept.status == 404 and b"BLOB_UPLOAD_INVALID" in kept.body


def test_proxy_corrupt_response_breaks_the_digest(
    registry: Registry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    blob = b"precious bytes\n" * 1000
    digest = push_blob(registry.url, "demo/bad", blob, tmp_path)
    proxy = fault_proxy(registry)
    rule = proxy.corrupt_response("GET", r"/blobs/")
    bad = curl(f"{proxy.url}/v2/demo/bad/blobs/{digest}", tmp=tmp_path)
    assert bad.returncode == 0 and len(bad.body) == len(blob)
    assert sha256(bad.body) != digest
    assert bad.header("Docker-Content-Digest") == digest  # the head is untouched
    good = curl(f"{proxy.url}/v2/demo/bad/blobs/{digest}", tmp=tmp_path)
    assert sha256(good.body) == digest
    assert proxy.fired(rule) == 1


def test_skopeo_copy_through_the_proxy(
    registry: Registry,
    fault_proxy: FaultProxyFactory,
    layout: Layout,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(registry)
    direct = curl("-X", "POST", f"{registry.url}/v2/demo/loc/blobs/uploads/", tmp=tmp_path)
    assert (direct.header("Location") or "").startswith(f"{registry.url}/")
    via_proxy = curl("-X", "POST", f"{proxy.url}/v2/demo/loc/blobs/uploads/", tmp=tmp_path)
    assert (via_proxy.header("Location") or "").startswith(f"{proxy.url}/")  # rewritten

    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{layout.path}:{layout.tag}",
        f"docker://{proxy.host}/demo/proxied:v1",
    )
    seen = [(r.method, r.path, r.status) for r in proxy.requests]
    assert any(m in ("PATCH", "PUT") and "/blobs/uploads/" in p for m, p, _ in seen), seen
    assert ("PUT", "/v2/demo/proxied/manifests/v1", 201) in seen
    inspected = skopeo("inspect", "--tls-verify=false", f"docker://{registry.host}/demo/proxied:v1")
    assert json.loads(inspected.stdout)["Digest"] == layout.manifest_digest


def test_proxy_in_front_of_tls(
    tls_registry: TlsRegistry, fault_proxy: FaultProxyFactory, tmp_path: Path
) -> None:
    registry, tls = tls_registry.registry, tls_registry.tls
    proxy = fault_proxy(registry)
    assert proxy.url.startswith("https://")
    answer = curl(
        "--cacert", str(tls.ca_cert), "-X", "POST", f"{proxy.url}/v2/x/blobs/uploads/", tmp=tmp_path
    )
    assert answer.status == 202
    assert (answer.header("Location") or "").startswith(f"{proxy.url}/")


def test_tls_material_files(tmp_path: Path) -> None:
    tls = TlsMaterial.create(tmp_path / "pki")
    for path in (tls.ca_cert, tls.server_cert):
        assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert tls.server_key.stat().st_mode & 0o077 == 0
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(tls.server_cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tls.ca_cert), str(tls.server_cert)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
