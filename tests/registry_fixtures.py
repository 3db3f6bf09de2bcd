"""Pytest fixtures around ``registry_harness``; loaded by ``pytest_plugins`` in conftest.py.

Every registry, token issuer and proxy is per test and torn down after it; when a test fails, the
tails of its registries' logs are added to the report. A missing ``docker-registry`` fails the
test (it is part of the test environment: ``make debs``), it never skips.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from registry_harness import (
    REGISTRY_BINARY,
    FaultProxy,
    GrantPolicy,
    LocationBase,
    Registry,
    TlsMaterial,
    TokenIssuer,
    stop_all,
)

SKOPEO_BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
"""Where skopeo (as root) remembers which registry holds which blob, across runs."""

_REGISTRIES = pytest.StashKey[list[Registry]]()


def require_registry() -> None:
    """Fail (never skip) the calling test when distribution's server is not installed."""
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.fail(
            f"{REGISTRY_BINARY} (CNCF distribution 2.8) is not installed: run `make debs`",
            pytrace=False,
        )


def require_tool(name: str, package: str) -> str:
    """The path of a command-line tool the tests need, or a failure naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} (Debian package {package}) is not installed: run `make debs`")
    return path


class RegistryFactory(Protocol):
    """Starts a registry under the test's tmp_path; all are stopped after the test."""

    def __call__(
        self,
        *,
        tls: TlsMaterial | None = None,
        htpasswd: Mapping[str, str] | None = None,
        token: TokenIssuer | None = None,
        location_base: LocationBase = "self",
        extra_config: Mapping[str, object] | None = None,
        storage_dir: Path | None = None,
    ) -> Registry: ...


class TokenIssuerFactory(Protocol):
    """Starts a token issuer under the test's tmp_path; all are closed after the test."""

    def __call__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        anonymous: bool = True,
        grants: GrantPolicy | None = None,
        expires_in: int = 300,
        oauth: bool = True,
    ) -> TokenIssuer: ...


class FaultProxyFactory(Protocol):
    """Puts a fault proxy in front of a registry; all are closed after the test."""

    def __call__(self, registry: Registry) -> FaultProxy: ...


@dataclass(frozen=True)
class TlsRegistry:
    """A registry serving https with a certificate signed by ``tls.ca_cert``."""

    registry: Registry
    tls: TlsMaterial


@dataclass(frozen=True)
class BasicRegistry:
    """A registry with htpasswd (Basic) auth and one user."""

    registry: Registry
    username: str
    password: str


@dataclass(frozen=True)
class TokenRegistry:
    """A registry with token auth; ``issuer`` knows ``users`` and refuses anonymous callers."""

    registry: Registry
    issuer: TokenIssuer
    users: dict[str, str]


@pytest.fixture
def registry_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Generator[RegistryFactory, None, None]:
    """Start registries (each in its own directory under tmp_path) and stop them afterwards."""
    require_registry()
    started: list[Registry] = []
    request.node.stash[_REGISTRIES] = started

    def make(
        *,
        tls: TlsMaterial | None = None,
        htpasswd: Mapping[str, str] | None = None,
        token: TokenIssuer | None = None,
        location_base: LocationBase = "self",
        extra_config: Mapping[str, object] | None = None,
        storage_dir: Path | None = None,
    ) -> Registry:
        if htpasswd is not None:
            require_tool("htpasswd", "apache2-utils")
        registry = Registry(
            tmp_path / f"registry-{len(started)}",
            storage_dir=storage_dir,
            tls=tls,
            htpasswd=htpasswd,
            token=token,
            location_base=location_base,
            extra_config=extra_config,
        )
        started.append(registry)
        return registry.start()

    yield make
    for registry in reversed(started):
        registry.stop()


@pytest.fixture
def token_issuer_factory(tmp_path: Path) -> Iterator[TokenIssuerFactory]:
    """Start token issuers (each in its own directory under tmp_path), closed afterwards."""
    issuers: list[TokenIssuer] = []

    def make(
        *,
        users: Mapping[str, str] | None = None,
        anonymous: bool = True,
        grants: GrantPolicy | None = None,
        expires_in: int = 300,
        oauth: bool = True,
    ) -> TokenIssuer:
        issuer = TokenIssuer(
            tmp_path / f"token-{len(issuers)}",
            users=users,
            anonymous=anonymous,
            grants=grants,
            expires_in=expires_in,
            oauth=oauth,
        )
        issuers.append(issuer)
        return issuer

    yield make
    for issuer in issuers:
        issuer.close()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> Registry:
    """A running plain-HTTP registry without auth."""
    return registry_factory()


@pytest.fixture
def tls_registry(registry_factory: RegistryFactory, tmp_path: Path) -> TlsRegistry:
    """A running https registry and its TLS material (trust ``tls.ca_cert``)."""
    tls = TlsMaterial.create(tmp_path / "tls")
    return TlsRegistry(registry_factory(tls=tls), tls)


@pytest.fixture
def basic_registry(registry_factory: RegistryFactory) -> BasicRegistry:
    """A running plain-HTTP registry with htpasswd auth for ``alice`` and a random password."""
    password = secrets.token_urlsafe(12)
    return BasicRegistry(registry_factory(htpasswd={"alice": password}), "alice", password)


@pytest.fixture
def token_registry(
    registry_factory: RegistryFactory, token_issuer_factory: TokenIssuerFactory
) -> TokenRegistry:
    """A running plain-HTTP registry with token auth; users ``alice`` and ``bob`` (random
    passwords) get every action they ask for, anonymous callers get no token."""
    users = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
    issuer = token_issuer_factory(users=users, anonymous=False)
    return TokenRegistry(registry_factory(token=issuer), issuer, users)


@pytest.fixture
def fault_proxy() -> Iterator[FaultProxyFactory]:
    """A factory: ``fault_proxy(registry)`` starts a ``FaultProxy`` in front of ``registry``."""
    proxies: list[FaultProxy] = []

    def make(registry: Registry) -> FaultProxy:
        proxy = FaultProxy(registry)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


class Skopeo(Protocol):
    """Runs ``skopeo ARGS`` with a private HOME, auth file and registries.conf."""

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


def _remove_blob_info_cache() -> None:
    SKOPEO_BLOB_INFO_CACHE.unlink(missing_ok=True)


@pytest.fixture
def skopeo(tmp_path: Path) -> Iterator[Skopeo]:
    """``skopeo(*args)``: skopeo isolated from the machine's configuration and caches.

    HOME, ``REGISTRY_AUTH_FILE``, ``CONTAINERS_REGISTRIES_CONF`` and the policy are private to
    the test, and skopeo's blob-info cache (which as root lives at a fixed path) is deleted before
    and after, so no run depends on what an earlier one pushed. Failures carry skopeo's stderr.
    """
    tool = require_tool("skopeo", "skopeo")
    home = tmp_path / "skopeo-home"
    home.mkdir()
    (home / "registries.conf").write_text("")
    (home / "policy.json").write_text(
        json.dumps({"default": [{"type": "insecureAcceptAnything"}]}) + "\n"
    )
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        REGISTRY_AUTH_FILE=str(home / "auth.json"),
        CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"),
        TMPDIR=str(home),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    _remove_blob_info_cache()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [tool, "--policy", str(home / "policy.json"), *args]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited with {done.returncode}\n{done.stdout}{done.stderr}",
                pytrace=False,
            )
        return done

    yield run
    _remove_blob_info_cache()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tails of a failed test's registry logs to its report."""
    report = yield
    registries = item.stash.get(_REGISTRIES, [])
    if report.failed and registries:
        for registry in registries:
            report.sections.append(
                (f"docker-registry {registry.workdir.name} log", registry.log_tail())
            )
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A safety net: no registry process outlives the session."""
    stop_all()
