"""Registry credentials and challenges: Docker's config file, credential helpers, and the
``WWW-Authenticate`` header.

Credentials come from where docker, skopeo and crane look (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``): ``auths`` entries, and the ``docker-credential-NAME`` helpers that
``credHelpers`` (per registry) and ``credsStore`` (for all) name. :func:`login` and
:func:`logout` write that same file (or hand the secret to the helper), so a login made with
any of those tools serves the others.

A :class:`Credentials` never shows its secret: ``repr`` and ``str`` mask it, and no message
this package writes contains one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layercore.errors import AuthenticationError, RegistryError

__all__ = [
    "Challenge",
    "Credentials",
    "config_path",
    "credentials_for",
    "login",
    "logout",
    "parse_challenges",
]

#: The key Docker files Docker Hub's login under.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
#: A credential helper's Username for a Secret that is an identity (refresh) token.
_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 60


@dataclass(frozen=True)
class Credentials:
    """A user name with a password, or an identity token (an OAuth2 refresh token some
    registries hand out at login). Secrets are kept out of ``repr``."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


ANONYMOUS = Credentials()


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: the scheme (lowercase) and its
    parameters (names lowercase)."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> list[str]:
        scope = self.params.get("scope")
        return scope.split(" ") if scope else []

    @property
    def error(self) -> str | None:
        return self.params.get("error")


_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` value (RFC 9110 §11.6.1): ``Bearer
    realm="https://auth",service="reg",scope="repository:a:pull"``, several possibly
    comma-separated. A malformed header gives the challenges read before the fault."""
    challenges: list[Challenge] = []
    i, n = 0, len(header)

    def skip_ws(j: int) -> int:
        while j < n and header[j] in " \t":
            j += 1
        return j

    while i < n:
        i = skip_ws(i)
        while i < n and header[i] == ",":
            i = skip_ws(i + 1)
        m = _TOKEN.match(header, i)
        if not m:
            break
        scheme = m.group().lower()
        i = skip_ws(m.end())
        params: dict[str, str] = {}
        while i < n:
            m = _TOKEN.match(header, i)
            if not m:
                break
            j = skip_ws(m.end())
            if j >= n or header[j] != "=":
                # The next challenge's scheme, or a token68 of this one.
                break
            name = m.group().lower()
            j = skip_ws(j + 1)
            if j < n and header[j] == '"':
                j += 1
                value = []
                while j < n and header[j] != '"':
                    if header[j] == "\\" and j + 1 < n:
                        j += 1
                    value.append(header[j])
                    j += 1
                j += 1
                params[name] = "".join(value)
            else:
                v = _TOKEN68.match(header, j) or _TOKEN.match(header, j)
                params[name] = v.group() if v else ""
                j = v.end() if v else j
            i = skip_ws(j)
            if i < n and header[i] == ",":
                i = skip_ws(i + 1)
        challenges.append(Challenge(scheme, params))
    return challenges


# -- the Docker config file ---------------------------------------------------------------------


def config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RegistryError(f"cannot read the Docker config: {e.strerror}", path) from None
    if not data.strip():
        return {}
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegistryError(f"the Docker config is not valid JSON: {e}", path) from None
    if not isinstance(obj, dict):
        raise RegistryError("the Docker config is not a JSON object", path)
    return obj


def _write_config(path: Path, config: Mapping[str, Any]) -> None:
    """Rewrites the config atomically, readable by its owner only (it may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(config, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_host(key: str) -> str:
    """The registry host of an ``auths`` key: ``https://index.docker.io/v1/`` is
    ``index.docker.io``, ``http://reg:5000`` is ``reg:5000``."""
    host = key.split("://", 1)[1] if "://" in key else key
    return host.split("/", 1)[0]


def _same_registry(key: str, registry: str) -> bool:
    host = _key_host(key)
    if registry in _DOCKER_HUB_HOSTS:
        return host in _DOCKER_HUB_HOSTS
    return host == registry


def _login_key(registry: str) -> str:
    return DOCKER_HUB_KEY if registry in _DOCKER_HUB_HOSTS else registry


def _helper_for(config: Mapping[str, Any], registry: str) -> str | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, Mapping):
        for key, name in helpers.items():
            if isinstance(name, str) and name and _same_registry(key, registry):
                return name
    store = config.get("credsStore")
    return store if isinstance(store, str) and store else None


def _run_helper(name: str, action: str, stdin: str, registry: str) -> str:
    """Runs ``docker-credential-NAME ACTION`` with ``stdin``; its output on success. The
    helper's output may hold the secret, so no message quotes it."""
    import subprocess  # only when a helper runs: most commands never start one

    program = f"docker-credential-{name}"
    try:
        done = subprocess.run(
            [program, action],
            input=stdin.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise RegistryError(
            f"the credential helper {program} (credsStore/credHelpers in the Docker config) "
            "is not on PATH",
            registry,
        ) from None
    except subprocess.TimeoutExpired:
        raise RegistryError(
            f"the credential helper {program} did not answer in {_HELPER_TIMEOUT} s", registry
        ) from None
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        if action == "get" and "credentials not found" in out.lower():
            return ""
        # Helpers print "credentials not found" and other fixed sentences on failure; the
        # first line is shown, cut short.
        said = (out.strip() or done.stderr.decode(errors="replace").strip()).splitlines()
        reason = said[0][:200] if said else f"exit status {done.returncode}"
        raise RegistryError(f"the credential helper {program} {action} failed: {reason}", registry)
    return out


def credentials_for(registry: str, *, path: Path | None = None) -> Credentials:
    """The credentials docker would use for ``registry`` (a host[:port]; ``docker.io`` for
    Docker Hub): the credential helper's when one is configured for it, else the ``auths``
    entry's, else anonymous."""
    config_file = path or config_path()
    config = _read_config(config_file)
    helper = _helper_for(config, registry)
    if helper is not None:
        for server in (_login_key(registry), registry):
            out = _run_helper(helper, "get", server, registry)
            if not out.strip():
                continue
            try:
                reply = json.loads(out)
            except json.JSONDecodeError:
                raise RegistryError(
                    f"the credential helper docker-credential-{helper} gave an answer that is "
                    "not JSON",
                    registry,
                ) from None
            helper_user = str(reply.get("Username", ""))
            secret = str(reply.get("Secret", ""))
            if helper_user == _TOKEN_USER:
                return Credentials(identity_token=secret)
            return Credentials(helper_user, secret)
    auths = config.get("auths")
    if isinstance(auths, Mapping):
        for key, entry in auths.items():
            if not (isinstance(entry, Mapping) and _same_registry(key, registry)):
                continue
            token = entry.get("identitytoken")
            user: Any = entry.get("username")
            password: Any = entry.get("password")
            encoded = entry.get("auth")
            if isinstance(encoded, str) and encoded:
                try:
                    decoded = base64.b64decode(encoded, validate=False).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise RegistryError(
                        f"the 'auth' of {key!r} in the Docker config is not base64 of "
                        "user:password",
                        config_file,
                    ) from None
                user, sep, password = decoded.partition(":")
                if not sep:
                    raise RegistryError(
                        f"the 'auth' of {key!r} in the Docker config is not user:password",
                        config_file,
                    )
            if isinstance(token, str) and token:
                return Credentials(
                    username=user if isinstance(user, str) else "", identity_token=token
                )
            if isinstance(user, str) and isinstance(password, str) and (user or password):
                return Credentials(user, password)
    return ANONYMOUS


def login(
    registry: str, credentials: Credentials, *, path: Path | None = None
) -> tuple[Path, str | None]:
    """Stores ``credentials`` for ``registry`` as ``docker login`` does: with the credential
    helper the config names for it, else base64 in ``auths`` of the config file (mode 0600).
    Returns the config file and the helper used, if any. Does not check the credentials;
    :func:`layercore.registry.client.RegistryClient.check_login` does."""
    if credentials.anonymous:
        raise AuthenticationError("no credentials to store", registry)
    config_file = path or config_path()
    config = _read_config(config_file)
    helper = _helper_for(config, registry)
    key = _login_key(registry)
    if helper is not None:
        if credentials.identity_token:
            user, secret = _TOKEN_USER, credentials.identity_token
        else:
            user, secret = credentials.username, credentials.password
        payload = json.dumps({"ServerURL": key, "Username": user, "Secret": secret})
        _run_helper(helper, "store", payload, registry)
        # Docker leaves an empty entry in auths so `docker info`-style listings see the login.
        auths = config.setdefault("auths", {})
        if isinstance(auths, dict):
            for old in [k for k in auths if _same_registry(k, registry)]:
                del auths[old]
            auths[key] = {}
            _write_config(config_file, config)
        return config_file, helper
    auths = config.get("auths")
    if not isinstance(auths, dict):
        auths = config["auths"] = {}
    for old in [k for k in auths if _same_registry(k, registry)]:
        del auths[old]
    entry: dict[str, str] = {}
    if credentials.identity_token:
        entry["identitytoken"] = credentials.identity_token
        if credentials.username:
            entry["auth"] = base64.b64encode(f"{credentials.username}:".encode()).decode()
    else:
        raw = f"{credentials.username}:{credentials.password}".encode()
        entry["auth"] = base64.b64encode(raw).decode("ascii")
    auths[key] = entry
    _write_config(config_file, config)
    return config_file, None


def logout(registry: str, *, path: Path | None = None) -> bool:
    """Removes the stored login for ``registry`` (from its credential helper and from
    ``auths``); whether there was one."""
    config_file = path or config_path()
    config = _read_config(config_file)
    found = False
    helper = _helper_for(config, registry)
    if helper is not None:
        for server in (_login_key(registry), registry):
            try:
                _run_helper(helper, "erase", server, registry)
                found = True
            except RegistryError:
                continue
    auths = config.get("auths")
    if isinstance(auths, dict):
        stale = [k for k in auths if _same_registry(k, registry)]
        for key in stale:
            del auths[key]
        if stale:
            found = True
            _write_config(config_file, config)
    return found
