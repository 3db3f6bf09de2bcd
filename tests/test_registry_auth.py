"""Credentials as docker, skopeo and crane keep them, and the challenges registries send."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from layercore.errors import AuthenticationError, RegistryError
from layercore.registry.auth import (
    DOCKER_HUB_KEY,
    Credentials,
    config_path,
    credentials_for,
    login,
    logout,
    parse_challenges,
)


def test_bearer_challenge_with_quoted_params() -> None:
    (c,) = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scopes == ["repository:library/ubuntu:pull,push"]


def test_insufficient_scope_challenge_names_every_scope() -> None:
    (c,) = parse_challenges(
        'Bearer realm="https://r/token", service="r", error="insufficient_scope", '
        'scope="repository:a:pull repository:b:pull,push"'
    )
    assert c.error == "insufficient_scope"
    assert c.scopes == ["repository:a:pull", "repository:b:pull,push"]


def test_several_challenges_and_escapes() -> None:
    cs = parse_challenges('Basic realm="Registry \\"Realm\\"", Bearer realm="https://t",x=y')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].realm == 'Registry "Realm"'
    assert cs[1].params == {"realm": "https://t", "x": "y"}


def test_malformed_challenge_gives_what_was_read() -> None:
    assert parse_challenges("") == []
    assert parse_challenges("=== nonsense") == []
    assert [c.scheme for c in parse_challenges('Bearer realm="https://t", ,')] == ["bearer"]


def test_credentials_never_show_their_secret() -> None:
    creds = Credentials("alice", "hunter2-secret", identity_token="tok-secret")
    for text in (repr(creds), str(creds)):
        assert "hunter2" not in text and "tok-secret" not in text
    assert creds.basic_header() == "Basic " + base64.b64encode(b"alice:hunter2-secret").decode()


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path / "docker" / "config.json"


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_config_path_follows_docker_config(
    docker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config_path() == docker_config
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", "/home/someone")
    assert config_path() == Path("/home/someone/.docker/config.json")


def test_auths_entries_by_host_and_docker_hub_key(docker_config: Path) -> None:
    _write(
        docker_config,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
                "reg.example:5000": {"auth": base64.b64encode(b"bob:p:w:2").decode()},
                "https://other.example/v2/": {"username": "carol", "password": "pw3"},
                "tok.example": {"identitytoken": "refresh-me"},
            }
        },
    )
    assert credentials_for("docker.io") == Credentials("hub", "pw1")
    assert credentials_for("registry-1.docker.io") == Credentials("hub", "pw1")
    # The password may hold colons; the user name may not.
    assert credentials_for("reg.example:5000") == Credentials("bob", "p:w:2")
    assert credentials_for("other.example") == Credentials("carol", "pw3")
    assert credentials_for("tok.example") == Credentials(identity_token="refresh-me")
    assert credentials_for("unknown.example").anonymous


def test_broken_config_names_the_file(docker_config: Path) -> None:
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON") as e:
        credentials_for("reg.example")
    assert e.value.path == str(docker_config)
    _write(docker_config, {"auths": {"reg.example": {"auth": "!!!notbase64"}}})
    with pytest.raises(RegistryError, match=r"reg\.example"):
        credentials_for("reg.example")


@pytest.fixture
def helper_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A docker-credential-test helper that keeps its secrets in a JSON file, as the real
    ones keep them in a keyring."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    store = tmp_path / "helper-store.json"
    store.write_text("{}")
    script = bin_dir / "docker-credential-test"
    script.write_text(
        f"""#!/usr/bin/env python3
import json, sys
path = {str(store)!r}
data = json.load(open(path))
action = sys.argv[1]
if action == "get":
    server = sys.stdin.read().strip()
    if server not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(data[server]))
elif action == "store":
    entry = json.loads(sys.stdin.read())
    data[entry["ServerURL"]] = entry
    json.dump(data, open(path, "w"))
elif action == "erase":
    server = sys.stdin.read().strip()
    if server not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    del data[server]
    json.dump(data, open(path, "w"))
"""
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return store


def test_login_and_logout_through_a_credential_helper(
    docker_config: Path, helper_bin: Path
) -> None:
    _write(docker_config, {"credsStore": "test", "currentContext": "default"})
    path, helper = login("reg.example:5000", Credentials("alice", "s3cret"))
    assert (path, helper) == (docker_config, "test")
    kept = json.loads(helper_bin.read_text())
    assert kept["reg.example:5000"]["Secret"] == "s3cret"
    config = json.loads(docker_config.read_text())
    assert config["currentContext"] == "default"  # other settings survive
    assert config["auths"] == {"reg.example:5000": {}}  # no secret in the file
    assert "s3cret" not in docker_config.read_text()
    assert credentials_for("reg.example:5000") == Credentials("alice", "s3cret")
    assert logout("reg.example:5000") is True
    assert credentials_for("reg.example:5000").anonymous
    assert logout("reg.example:5000") is False


def test_cred_helpers_win_over_creds_store_and_tokens_come_back(
    docker_config: Path, helper_bin: Path
) -> None:
    helper_bin.write_text(
        json.dumps({"ghcr.example": {"Username": "<token>", "Secret": "id-token"}})
    )
    _write(
        docker_config,
        {
            "credsStore": "missing-helper",
            "credHelpers": {"ghcr.example": "test"},
            "auths": {"ghcr.example": {"auth": base64.b64encode(b"x:y").decode()}},
        },
    )
    assert credentials_for("ghcr.example") == Credentials(identity_token="id-token")
    with pytest.raises(RegistryError, match="docker-credential-missing-helper"):
        credentials_for("elsewhere.example")


def test_login_without_helper_writes_auths_privately(docker_config: Path) -> None:
    _write(docker_config, {"auths": {"https://reg.example/v1/": {"auth": "b2xkOm9sZA=="}}})
    login("reg.example", Credentials("alice", "pw"))
    config = json.loads(docker_config.read_text())
    # The old entry for the same host is replaced, not duplicated.
    assert config["auths"] == {"reg.example": {"auth": base64.b64encode(b"alice:pw").decode()}}
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    login("docker.io", Credentials("hub", "pw"))
    assert DOCKER_HUB_KEY in json.loads(docker_config.read_text())["auths"]
    assert credentials_for("docker.io") == Credentials("hub", "pw")
    assert logout("docker.io") is True
    assert credentials_for("docker.io").anonymous
    assert credentials_for("reg.example") == Credentials("alice", "pw")
    with pytest.raises(AuthenticationError):
        login("reg.example", Credentials())
