"""A real OCI registry (CNCF distribution 2.8, Debian's ``docker-registry``) for tests.

``Registry`` runs ``docker-registry serve`` on a free loopback port with filesystem storage,
optionally behind TLS, htpasswd or token authentication. ``TlsMaterial`` makes a CA and a server
certificate, ``TokenIssuer`` is a token server that signs RS256 JWTs the registry accepts, and
``FaultProxy`` sits between a client and a registry and injects faults (cut responses and requests,
canned answers, corrupted bodies) into chosen requests.

Nothing here imports pytest: the fixtures live in ``registry_fixtures``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import functools
import http.client
import http.server
import io
import json
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "REGISTRY_BINARY",
    "Access",
    "AccessLogEntry",
    "FaultProxy",
    "FaultRule",
    "GrantPolicy",
    "ProxyRequest",
    "Registry",
    "RegistryError",
    "TlsMaterial",
    "TokenIssuer",
    "TokenRequest",
]

REGISTRY_BINARY = "docker-registry"
"""The distribution 2.8 server, from Debian's ``docker-registry`` package."""

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 40


class RegistryError(RuntimeError):
    """The registry did not start, or died; the message carries the tail of its logs."""


# --------------------------------------------------------------------------------------------
# TLS material


@dataclass(frozen=True)
class TlsMaterial:
    """PEM files: a self-signed CA and a server certificate it signed (for 127.0.0.1/localhost)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        ips: Sequence[str] = ("127.0.0.1",),
        dns_names: Sequence[str] = ("localhost",),
    ) -> TlsMaterial:
        """Write ``ca.pem``, ``ca-key.pem``, ``server.pem`` and ``server-key.pem`` in ``directory``.

        The server certificate's SAN holds every IP in ``ips`` and every name in ``dns_names``.
        """
        import ipaddress

        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=30)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "layercore test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns_names]
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "layercore test registry")])
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

        material = cls(
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca-key.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server-key.pem",
        )
        material.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        material.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private_key(material.ca_key, ca_key)
        _write_private_key(material.server_key, key)
        return material

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` that serves the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.server_cert), str(self.server_key))
        return context


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------
# Token issuer


@dataclass(frozen=True)
class Access:
    """One entry of a token's ``access`` claim: ``repository``/``registry``, a name, actions."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, object]:
        """The JSON form used in the JWT."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


GrantPolicy = Callable[[str | None, str, str, list[str]], list[str]]
"""``(user or None, resource type, resource name, requested actions) -> granted actions``."""


@dataclass(frozen=True)
class TokenRequest:
    """One request the token issuer answered. Passwords and refresh tokens are never recorded."""

    method: str
    path: str
    params: dict[str, list[str]]
    """Query (GET) or form (POST) parameters; ``password``/``refresh_token`` read ``<redacted>``."""
    scopes: list[str]
    """Every requested scope, in order (repeated ``scope=`` and space-separated values split)."""
    user: str | None
    """The authenticated user, or None for an anonymous (or refused) caller."""
    status: int
    granted: list[Access]
    offline: bool
    """Whether a refresh token was handed out."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    # One key per process: generating RSA keys is the slow part of a token registry's set-up.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    # TYPE:NAME:ACTIONS, where the name may itself contain ':' (a host:port prefix).
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


def _format_time(moment: float) -> str:
    return dt.datetime.fromtimestamp(int(moment), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenIssuer:
    """A Docker token server on 127.0.0.1, signing RS256 JWTs for a ``Registry(token=...)``.

    ``GET /token?service=&scope=&account=&offline_token=`` (Basic auth optional) and the OAuth2
    ``POST /token`` (``grant_type=password`` or ``refresh_token``). Callers with no credentials are
    served only if ``anonymous``; wrong credentials always get 401 (GET) or 400 (POST). What is
    granted is decided by ``grants`` (default: every requested action). It serves from the
    constructor until ``close()``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        anonymous: bool = True,
        grants: GrantPolicy | None = None,
        service: str = "layercore-test-registry",
        issuer: str = "layercore-test-issuer",
        expires_in: int = 300,
        oauth: bool = True,
    ) -> None:
        """``oauth=False`` makes ``POST /token`` answer 404, as servers without OAuth2 do."""
        self.workdir = workdir
        self.users = dict(users or {})
        self.anonymous = anonymous
        self.grants: GrantPolicy = grants or (lambda _user, _type, _name, actions: actions)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.oauth = oauth
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}
        self._key = _rsa_key()
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = workdir / "token-signer.pem"
        """The signing certificate (self-signed): the registry's ``rootcertbundle``."""
        self._cert_der = self._make_cert()
        self.cert_path.write_bytes(
            x509.load_der_x509_certificate(self._cert_der).public_bytes(serialization.Encoding.PEM)
        )
        self._server = _TokenServer(("127.0.0.1", 0), _TokenHandler)
        self._server.issuer = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="token-issuer", daemon=True
        )
        self._thread.start()

    def _make_cert(self) -> bytes:
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        address = self._server.server_address
        return f"{address[0]!s}:{address[1]}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def realm(self) -> str:
        """The token endpoint, as the registry advertises it in ``WWW-Authenticate``."""
        return f"{self.url}/token"

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of every request answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def registry_config(self) -> dict[str, object]:
        """The ``auth.token`` section of a registry configuration trusting this issuer."""
        return {
            "realm": self.realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.cert_path),
        }

    def make_token(
        self,
        user: str | None,
        access: Sequence[Access],
        *,
        expires_in: int | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        now: float | None = None,
    ) -> str:
        """Sign a JWT directly (e.g. an expired one, or one for another audience)."""
        issued = time.time() if now is None else now
        lifetime = self.expires_in if expires_in is None else expires_in
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": user or "",
            "aud": self.service if audience is None else audience,
            "exp": int(issued) + lifetime,
            "nbf": int(issued) - 10,
            "iat": int(issued),
            "jti": secrets.token_hex(16),
            "access": [a.claim() for a in access],
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _grant(self, user: str | None, scopes: list[str]) -> list[Access]:
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            wanted = merged.setdefault((kind, name), [])
            wanted += [a for a in actions if a not in wanted]
        granted = []
        for (kind, name), actions in merged.items():
            allowed = [a for a in self.grants(user, kind, name, list(actions)) if a in actions]
            granted.append(Access(kind, name, tuple(allowed)))
        return granted

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self._requests.append(entry)

    def _new_refresh_token(self, user: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = user
        return token

    def _refresh_user(self, token: str) -> str | None:
        with self._lock:
            return self._refresh_tokens.get(token)

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(_STOP_TIMEOUT)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_REDACTED = "<redacted>"


class _TokenServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    issuer: TokenIssuer


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "layercore-test-token/1"

    @property
    def issuer(self) -> TokenIssuer:
        server = self.server
        assert isinstance(server, _TokenServer)
        return server.issuer

    def log_message(self, format: str, *args: object) -> None:
        pass  # recorded in TokenIssuer.requests instead

    def _send_json(self, status: int, body: Mapping[str, object], *, basic: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if basic:
            self.send_header("WWW-Authenticate", 'Basic realm="layercore-test-token"')
        self.end_headers()
        self.wfile.write(data)

    def _basic_credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return ("", "")
        user, _, password = decoded.partition(":")
        return user, password

    def _check(self, user: str, password: str) -> bool:
        expected = self.issuer.users.get(user)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        self._answer("GET", url.path, params)

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        params = urllib.parse.parse_qs(body, keep_blank_values=True)
        self._answer("POST", url.path, params)

    def _answer(self, method: str, path: str, params: dict[str, list[str]]) -> None:
        issuer = self.issuer
        scopes = [s for value in params.get("scope", []) for s in value.split()]
        recorded = {
            k: ([_REDACTED] * len(v) if k in ("password", "refresh_token") else list(v))
            for k, v in params.items()
        }

        def first(name: str) -> str:
            return params.get(name, [""])[0]

        def finish(status: int, user: str | None, granted: list[Access], offline: bool) -> None:
            issuer._record(
                TokenRequest(method, path, recorded, scopes, user, status, granted, offline)
            )

        if path != "/token" or (method == "POST" and not issuer.oauth):
            finish(404, None, [], False)
            self._send_json(404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        service = first("service")
        if service and service != issuer.service:
            finish(400, None, [], False)
            self._send_json(400, {"error": "invalid_request", "detail": "unknown service"})
            return

        user: str | None
        if method == "GET":
            credentials = self._basic_credentials()
            if credentials is None:
                user = None
                if not issuer.anonymous:
                    finish(401, None, [], False)
                    self._send_json(401, {"errors": [{"code": "UNAUTHORIZED"}]}, basic=True)
                    return
            elif self._check(*credentials):
                user = credentials[0]
            else:
                finish(401, None, [], False)
                self._send_json(401, {"errors": [{"code": "UNAUTHORIZED"}]}, basic=True)
                return
            offline = user is not None and first("offline_token").lower() == "true"
        else:
            grant_type = first("grant_type")
            if grant_type == "password" and self._check(first("username"), first("password")):
                user = first("username")
            elif grant_type == "refresh_token":
                user = issuer._refresh_user(first("refresh_token"))
            else:
                user = None
            if user is None:
                finish(400, None, [], False)
                self._send_json(400, {"error": "invalid_grant"})
                return
            offline = True

        granted = issuer._grant(user, scopes)
        now = time.time()
        token = issuer.make_token(user, granted, now=now)
        body: dict[str, object] = {
            "token": token,
            "access_token": token,
            "expires_in": issuer.expires_in,
            "issued_at": _format_time(now),
        }
        if method == "POST":
            body["scope"] = " ".join(scopes)
        if offline and user is not None:
            presented = first("refresh_token") if method == "POST" else ""
            body["refresh_token"] = presented or issuer._new_refresh_token(user)
        finish(200, user, granted, offline)
        self._send_json(200, body)


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class AccessLogEntry:
    """One line of the registry's (Apache combined format) access log."""

    method: str
    path: str
    """The request path as sent (still percent-encoded), without the query."""
    query: str
    """The raw query string, '' if none."""
    status: int
    bytes: int
    """Response body bytes written (0 for '-')."""
    user_agent: str

    @property
    def params(self) -> dict[str, list[str]]:
        """The query, parsed."""
        return urllib.parse.parse_qs(self.query, keep_blank_values=True)


_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<target>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-)(?: "[^"]*" "(?P<ua>[^"]*)")?'
)

LocationBase = Literal["self", "request", "relative"]

_live_processes: set[subprocess.Popen[bytes]] = set()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _kill_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_STOP_TIMEOUT)


class Registry:
    """``docker-registry serve`` on 127.0.0.1 with filesystem storage under ``workdir``.

    The configuration, the htpasswd file and the logs are written in ``workdir``; blobs go to
    ``storage_dir`` (default ``workdir/storage``). Deletes are enabled, upload purging is off and
    ``http.secret`` is fixed, so ``restart()`` keeps uploads in progress valid. ``location_base``
    chooses what ``Location`` headers name: ``"self"`` (the default, ``http.host`` set to this
    registry's own URL, as behind a load balancer), ``"request"`` (the request's Host header) or
    ``"relative"`` (``http.relativeurls``). At most one of ``htpasswd`` and ``token``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        storage_dir: Path | None = None,
        tls: TlsMaterial | None = None,
        htpasswd: Mapping[str, str] | None = None,
        token: TokenIssuer | None = None,
        secret: str = "layercore-test-http-secret",
        location_base: LocationBase = "self",
        extra_config: Mapping[str, object] | None = None,
        binary: str = REGISTRY_BINARY,
    ) -> None:
        """``extra_config`` is merged (recursively) into the generated configuration."""
        if htpasswd is not None and token is not None:
            raise ValueError("distribution takes one auth method: htpasswd or token, not both")
        self.workdir = workdir
        self.storage_dir = storage_dir or workdir / "storage"
        self.tls = tls
        self.htpasswd = dict(htpasswd) if htpasswd is not None else None
        self.token = token
        self.secret = secret
        self.location_base: LocationBase = location_base
        self.extra_config = dict(extra_config or {})
        self.binary = binary
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        """The registry's own log (its stderr): logrus lines, one per response, and errors."""
        self.access_log_path = workdir / "access.log"
        """The access log (its stdout): one Apache combined-format line per request."""
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses

    @property
    def port(self) -> int:
        """The port; chosen at the first ``start()``, kept by ``restart()``."""
        if self._port is None:
            raise RegistryError("the registry has not been started")
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self.host}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- configuration

    def config(self) -> dict[str, object]:
        """The configuration ``start()`` writes (JSON, which YAML reads)."""
        http_section: dict[str, object] = {
            "addr": self.host,
            "secret": self.secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.location_base == "self":
            http_section["host"] = self.url
        elif self.location_base == "relative":
            http_section["relativeurls"] = True
        if self.tls is not None:
            http_section["tls"] = {
                "certificate": str(self.tls.server_cert),
                "key": str(self.tls.server_key),
            }
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_section,
        }
        if self.htpasswd is not None:
            config["auth"] = {
                "htpasswd": {"realm": "layercore-test", "path": str(self.workdir / "htpasswd")}
            }
        elif self.token is not None:
            config["auth"] = {"token": self.token.registry_config()}
        return _merge(config, self.extra_config)

    def _write_htpasswd(self) -> None:
        assert self.htpasswd is not None
        tool = shutil.which("htpasswd")
        if tool is None:
            raise RegistryError("htpasswd is not installed (Debian package apache2-utils)")
        lines = []
        for user, password in self.htpasswd.items():
            if ":" in user or not user:
                raise ValueError(f"invalid htpasswd user name {user!r}")
            out = subprocess.run(
                [tool, "-Bbn", user, password], check=True, capture_output=True, text=True
            ).stdout
            lines.append(out.strip())
        path = self.workdir / "htpasswd"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    # -- lifecycle

    def start(self) -> Self:
        """Start the server and return once ``/v2/`` answers 200 or 401.

        The first start picks a free port (retrying if another process takes it first).
        Raises ``RegistryError`` with the tail of the logs if the server exits or does not answer.
        """
        if self.running:
            return self
        if shutil.which(self.binary) is None:
            raise RegistryError(f"{self.binary} is not installed (Debian package docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if self.htpasswd is not None:
            self._write_htpasswd()
        fixed_port = self._port is not None
        attempts = 10 if fixed_port else 5
        for attempt in range(attempts):
            if not fixed_port:
                self._port = _free_port()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except _AddressInUse:
                self._reap()
                if attempt == attempts - 1:
                    raise RegistryError(self._failure("port stayed in use")) from None
                time.sleep(0.2 if fixed_port else 0)
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        with (
            open(self.access_log_path, "ab") as stdout,
            open(self.log_path, "ab") as stderr,
        ):
            self._log_offset = self.log_path.stat().st_size
            proc = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=self.workdir,
                start_new_session=True,  # a ^C to pytest reaches the harness, which stops it
            )
        self._proc = proc
        _live_processes.add(proc)
        weakref.finalize(self, _kill_process, proc)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT
        context = self.tls.client_context() if self.tls is not None else None
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                with open(self.log_path, "rb") as f:
                    f.seek(self._log_offset)
                    fresh = f.read().decode(errors="replace")
                if "address already in use" in fresh:
                    raise _AddressInUse
                raise RegistryError(self._failure(f"exited with status {self._proc.returncode}"))
            try:
                status = _probe(self.port, context)
            except OSError as e:
                last_error = repr(e)
            else:
                if status in (200, 401):
                    return
                last_error = f"/v2/ answered {status}"
            time.sleep(0.02)
        self._reap()
        raise RegistryError(self._failure(f"not ready after {_START_TIMEOUT}s ({last_error})"))

    def _failure(self, what: str) -> str:
        return (
            f"docker-registry on {self.host} {what}\n"
            f"--- {self.config_path}\n{_tail(self.config_path, 80)}\n"
            f"--- {self.log_path} (tail)\n{_tail(self.log_path)}\n"
            f"--- {self.access_log_path} (tail)\n{_tail(self.access_log_path, 10)}"
        )

    def _reap(self) -> None:
        if self._proc is not None:
            _kill_process(self._proc)
            _live_processes.discard(self._proc)
            self._proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds; idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_STOP_TIMEOUT)
        self._reap()

    def kill(self) -> None:
        """SIGKILL at once, as a registry dying mid-push would; ``restart()`` brings it back."""
        self._reap()

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port with the same storage."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access log

    def requests(self, since: int = 0) -> list[AccessLogEntry]:
        """The access log's entries (all runs of this registry), from entry number ``since`` on.

        Distribution writes a request's line before the response's last bytes leave the server,
        so every request whose answer a client has read is already here.
        """
        return self._entries()[since:]

    def mark(self) -> int:
        """A position in the access log, for ``requests(since=...)``."""
        return len(self._entries())

    def _entries(self) -> list[AccessLogEntry]:
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            m = _ACCESS_LINE.match(line)
            if m is None:
                continue
            path, _, query = m["target"].partition("?")
            size = m["bytes"]
            entries.append(
                AccessLogEntry(
                    method=m["method"],
                    path=path,
                    query=query,
                    status=int(m["status"]),
                    bytes=0 if size == "-" else int(size),
                    user_agent=m["ua"] or "",
                )
            )
        return entries

    def wait_for_request(
        self, method: str, path_regex: str, *, since: int = 0, timeout: float = 10.0
    ) -> AccessLogEntry:
        """The first entry from ``since`` on matching ``method`` and ``re.search(path_regex)``,
        waiting for it: a request whose client was cut off is logged only when the registry
        notices."""
        pattern = re.compile(path_regex)
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.requests(since):
                if entry.method == method and pattern.search(entry.path):
                    return entry
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"no {method} {path_regex} in the access log after {timeout}s\n"
                    f"{_tail(self.access_log_path, 10)}\n{self.log_tail(10)}"
                )
            time.sleep(0.02)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the registry's own log, for assertion messages."""
        return _tail(self.log_path, lines)


class _AddressInUse(Exception):
    pass


def _probe(port: int, context: ssl.SSLContext | None) -> int:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _merge(base: dict[str, object], extra: Mapping[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------------------------
# Fault proxy

FaultKind = Literal["cut_response", "cut_request", "respond", "corrupt_response", "add_headers"]


@dataclass(eq=False)
class FaultRule:
    """A fault for requests matching ``method`` (or ``*``) and ``re.search(path_regex, path)``.

    It fires on the first ``times`` matching requests (None: on all of them).
    """

    kind: FaultKind
    method: str
    path: re.Pattern[str]
    times: int | None
    after_bytes: int = 0
    reset: bool = False
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to a request (ignoring how often it has fired)."""
        return (self.method in ("*", method)) and self.path.search(path) is not None


@dataclass(frozen=True)
class ProxyRequest:
    """One request seen by the proxy: what was asked, what the client got, which rule fired."""

    method: str
    path: str
    query: str
    status: int | None
    """The status relayed (or invented) to the client; None if the exchange was cut first."""
    rule: FaultRule | None
    headers: tuple[tuple[str, str], ...] = ()
    """The request's headers as sent; an ``Authorization`` value keeps only its scheme."""

    def header(self, name: str) -> str | None:
        """The last value of a request header (case-insensitive), or None."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


class _Cut(Exception):
    """Stop relaying this exchange and close both connections."""


class _Closed(Exception):
    """A peer closed the connection (or it broke) mid-message."""


@dataclass
class _Head:
    start_line: str
    headers: list[tuple[str, str]]
    raw: bytes

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def has_token(self, name: str, token: str) -> bool:
        value = self.get(name) or ""
        return token in (t.strip().lower() for t in value.split(","))


_MAX_HEAD = 256 * 1024
_INVERT = bytes(255 - i for i in range(256))
_CHUNK = 64 * 1024


def _read_head(rfile: io.BufferedReader, *, allow_eof: bool) -> _Head | None:
    raw = bytearray()
    while True:
        line = rfile.readline(_MAX_HEAD)
        if not line:
            if allow_eof and not raw:
                return None
            raise _Closed("connection closed in a message head")
        if not raw and line in (b"\r\n", b"\n"):
            continue  # stray CRLF between messages (RFC 9112 2.2)
        raw += line
        if len(raw) > _MAX_HEAD:
            raise _Closed("message head too large")
        if line in (b"\r\n", b"\n"):
            break
    text = raw.decode("latin-1")
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    headers = []
    for line_text in lines[1:]:
        if not line_text:
            continue
        name, _, value = line_text.partition(":")
        headers.append((name.strip(), value.strip()))
    return _Head(lines[0], headers, bytes(raw))


class _Relay:
    """Copies a message body from ``src`` to ``dst`` under a byte budget and a transform."""

    def __init__(
        self, src: io.BufferedReader, dst: socket.socket | None, budget: int | None, corrupt: bool
    ) -> None:
        self.src, self.dst, self.budget, self.corrupt = src, dst, budget, corrupt
        self.sent = 0

    def _send(self, data: bytes, *, payload: bool) -> None:
        if payload and self.corrupt:
            data = data.translate(_INVERT)
        if self.budget is not None and self.sent + len(data) > self.budget:
            data = data[: self.budget - self.sent]
            self._write(data)
            raise _Cut
        self._write(data)

    def _write(self, data: bytes) -> None:
        self.sent += len(data)
        if self.dst is not None and data:
            try:
                self.dst.sendall(data)
            except OSError as e:
                raise _Closed(str(e)) from e

    def _read(self, n: int) -> bytes:
        try:
            return self.src.read1(n)
        except OSError as e:
            raise _Closed(str(e)) from e

    def _readline(self) -> bytes:
        try:
            line = self.src.readline(_MAX_HEAD)
        except OSError as e:
            raise _Closed(str(e)) from e
        if not line.endswith(b"\n"):
            raise _Closed("connection closed in chunk framing")
        return line

    def length(self, remaining: int) -> None:
        """A body of ``remaining`` bytes."""
        while remaining > 0:
            data = self._read(min(remaining, _CHUNK))
            if not data:
                raise _Closed("connection closed in a body")
            remaining -= len(data)
            self._send(data, payload=True)

    def until_close(self) -> None:
        """A body delimited by the connection closing."""
        while data := self._read(_CHUNK):
            self._send(data, payload=True)

    def chunked(self) -> None:
        """A chunked body, trailers included."""
        while True:
            size_line = self._readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Closed("bad chunk size") from None
            self._send(size_line, payload=False)
            if size == 0:
                while True:
                    trailer = self._readline()
                    self._send(trailer, payload=False)
                    if trailer in (b"\r\n", b"\n"):
                        return
            self.length(size)
            self._send(self._readline(), payload=False)


def _redacted_headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (k, v.split(" ", 1)[0] + " <redacted>" if k.lower() == "authorization" else v)
        for k, v in headers
    )


def _body_framing(head: _Head, *, request: bool, method: str) -> tuple[str, int]:
    """("none"|"length"|"chunked"|"close", length) per RFC 9112 section 6.3."""
    if not request:
        status = int(head.start_line.split()[1])
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            return "none", 0
    if head.has_token("Transfer-Encoding", "chunked"):
        return "chunked", 0
    length = head.get("Content-Length")
    if length is not None:
        n = int(length.split(",")[0])
        return ("length", n) if n > 0 else ("none", 0)
    return ("none", 0) if request else ("close", 0)


def _relay_body(relay: _Relay, framing: tuple[str, int]) -> None:
    kind, length = framing
    if kind == "length":
        relay.length(length)
    elif kind == "chunked":
        relay.chunked()
    elif kind == "close":
        relay.until_close()


_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of a ``Registry``, injecting faults by rule.

    Requests and responses are relayed byte for byte, one message at a time, so keep-alive
    connections carry many requests; the only rewrite is a ``Location`` header naming the
    registry's address, which is made to name the proxy's (so clients stay behind the proxy).
    In front of a TLS registry the proxy serves TLS with the registry's certificate. Rules are
    tried in the order added; the first whose budget is not spent fires. It serves from the
    constructor until ``close()``.
    """

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self._upstream_port = upstream.port
        self._tls = upstream.tls
        self._server_context = self._tls.server_context() if self._tls else None
        self._client_context = self._tls.client_context() if self._tls else None
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._requests: list[ProxyRequest] = []
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._port: int = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="fault-proxy", daemon=True
        )
        self._accept_thread.start()

    # -- addresses and records

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT`` (https when the registry serves TLS)."""
        return f"{self.upstream.scheme}://{self.host}"

    @property
    def requests(self) -> list[ProxyRequest]:
        """A copy of every request seen so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """How many client connections the proxy has accepted."""
        with self._lock:
            return self._connections

    def fired(self, rule: FaultRule) -> int:
        """How many times ``rule`` has fired."""
        with self._lock:
            return rule.fired

    # -- rules

    def _add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def cut_response(
        self,
        method: str,
        path_regex: str,
        after_bytes: int,
        *,
        times: int | None = 1,
        reset: bool = False,
    ) -> FaultRule:
        """Relay the response head and ``after_bytes`` of its body (as framed on the wire), then
        close both connections (with an RST if ``reset``, else a FIN)."""
        return self._add(
            FaultRule(
                "cut_response", method, re.compile(path_regex), times, after_bytes, reset=reset
            )
        )

    def cut_request(
        self,
        method: str,
        path_regex: str,
        after_bytes: int,
        *,
        times: int | None = 1,
        reset: bool = False,
    ) -> FaultRule:
        """Relay the request head and ``after_bytes`` of its body to the registry, then close
        both connections; the client gets no response."""
        return self._add(
            FaultRule(
                "cut_request", method, re.compile(path_regex), times, after_bytes, reset=reset
            )
        )

    def respond(
        self,
        method: str,
        path_regex: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        times: int | None = 1,
    ) -> FaultRule:
        """Answer without asking the registry (the request body is read and dropped)."""
        return self._add(
            FaultRule(
                "respond",
                method,
                re.compile(path_regex),
                times,
                status=status,
                headers=dict(headers or {}),
                body=body,
            )
        )

    def corrupt_response(self, method: str, path_regex: str, *, times: int | None = 1) -> FaultRule:
        """Relay the response with every body byte inverted (same length, so only a digest or
        parse check can notice)."""
        return self._add(FaultRule("corrupt_response", method, re.compile(path_regex), times))

    def add_headers(
        self, method: str, path_regex: str, headers: Mapping[str, str], *, times: int | None = 1
    ) -> FaultRule:
        """Relay the registry's response with ``headers`` added to its head (what a registry
        with features distribution 2.8 lacks would send, such as ``OCI-Chunk-Min-Length``)."""
        return self._add(
            FaultRule("add_headers", method, re.compile(path_regex), times, headers=dict(headers))
        )

    def clear_rules(self) -> None:
        """Drop every rule (their ``fired`` counts stay readable)."""
        with self._lock:
            self._rules.clear()

    def _pick(self, method: str, path: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if (rule.times is None or rule.fired < rule.times) and rule.matches(method, path):
                    rule.fired += 1
                    return rule
        return None

    def _record(self, entry: ProxyRequest) -> None:
        with self._lock:
            self._requests.append(entry)

    # -- serving

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                sock.close()
                raise _Closed("proxy closed")
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket | None, *, reset: bool = False) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.discard(sock)
        if reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self._threads.add(thread)
                self._connections += 1
            thread.start()

    def _connect_upstream(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=30)
        sock.settimeout(None)
        if self._client_context is not None:
            sock = self._client_context.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock

    def _serve(self, raw_client: socket.socket) -> None:
        client: socket.socket = raw_client
        upstream: socket.socket | None = None
        reset = False
        try:
            self._track(raw_client)
            if self._server_context is not None:
                client = self._server_context.wrap_socket(raw_client, server_side=True)
                self._untrack_quiet(raw_client)
                self._track(client)
            crfile = client.makefile("rb")
            urfile: io.BufferedReader | None = None
            while True:
                if crfile.peek(1)[:1] == b"\x16":
                    # A TLS ClientHello on a plain port (clients probing https first, as skopeo
                    # does): refuse it at once, as Go's server does, so they fall back quickly.
                    client.sendall(_BAD_REQUEST)
                    return
                request = _read_head(crfile, allow_eof=True)
                if request is None:
                    return
                parts = request.start_line.split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    client.sendall(_BAD_REQUEST)
                    return
                method, target = parts[0], parts[1]
                path, _, query = target.partition("?")
                rule = self._pick(method, path)
                seen = _redacted_headers(request.headers)
                req_framing = _body_framing(request, request=True, method=method)
                expect_continue = request.has_token("Expect", "100-continue")
                client_close = request.has_token("Connection", "close") or parts[2] == "HTTP/1.0"

                # Each exchange is recorded before the client can see its outcome, so a test that
                # has its answer (or its error) can already read it in `requests`.
                if rule is not None and rule.kind == "respond":
                    if not expect_continue:
                        _relay_body(_Relay(crfile, None, None, False), req_framing)
                    self._record(ProxyRequest(method, path, query, rule.status, rule, seen))
                    self._send_canned(client, method, rule, close=client_close or expect_continue)
                    if client_close or expect_continue:
                        return
                    continue

                if upstream is None:
                    try:
                        upstream = self._connect_upstream()
                    except OSError:  # the registry is down: the client sees the door shut
                        self._record(ProxyRequest(method, path, query, None, rule))
                        raise
                    self._track(upstream)
                    urfile = upstream.makefile("rb")
                assert urfile is not None
                try:
                    upstream.sendall(request.raw)
                except OSError as e:
                    raise _Closed(str(e)) from e

                recorded = False
                try:
                    sent_body = not expect_continue or req_framing[0] == "none"
                    if sent_body:
                        self._send_request_body(crfile, upstream, req_framing, rule)
                    while True:
                        response = _read_head(urfile, allow_eof=False)
                        assert response is not None
                        status = int(response.start_line.split()[1])
                        if not 100 <= status < 200 or status == 101:
                            self._record(ProxyRequest(method, path, query, status, rule, seen))
                            recorded = True
                        client.sendall(self._rewrite(response, rule))
                        if status == 100 and not sent_body:
                            self._send_request_body(crfile, upstream, req_framing, rule)
                            sent_body = True
                            continue
                        if 100 <= status < 200 and status != 101:
                            continue
                        break
                    resp_framing = _body_framing(response, request=False, method=method)
                    cutting = rule is not None and rule.kind == "cut_response"
                    relay = _Relay(
                        urfile,
                        client,
                        rule.after_bytes if cutting and rule is not None else None,
                        rule is not None and rule.kind == "corrupt_response",
                    )
                    _relay_body(relay, resp_framing)
                    if cutting:
                        raise _Cut
                except _Cut:
                    reset = rule is not None and rule.reset
                    if not recorded:
                        self._record(ProxyRequest(method, path, query, None, rule))
                    return
                except _Closed:
                    if not recorded:
                        self._record(ProxyRequest(method, path, query, None, rule))
                    raise
                upstream_close = (
                    response.has_token("Connection", "close") or resp_framing[0] == "close"
                )
                if client_close or upstream_close or not sent_body or status == 101:
                    return
        except (_Closed, OSError, ssl.SSLError, ValueError):
            return
        finally:
            self._untrack(upstream, reset=reset)
            self._untrack(client, reset=reset)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _untrack_quiet(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _send_request_body(
        self,
        crfile: io.BufferedReader,
        upstream: socket.socket,
        framing: tuple[str, int],
        rule: FaultRule | None,
    ) -> None:
        cutting = rule is not None and rule.kind == "cut_request"
        relay = _Relay(crfile, upstream, rule.after_bytes if cutting and rule else None, False)
        _relay_body(relay, framing)
        if cutting:
            raise _Cut

    def _rewrite(self, response: _Head, rule: FaultRule | None) -> bytes:
        adding = rule is not None and rule.kind == "add_headers"
        extra = list(rule.headers.items()) if rule is not None and adding else []
        location = response.get("Location")
        new: str | None = None
        if location is not None:
            parsed = urllib.parse.urlsplit(location)
            upstream = {f"127.0.0.1:{self._upstream_port}", f"localhost:{self._upstream_port}"}
            if parsed.netloc in upstream:
                new = urllib.parse.urlunsplit(parsed._replace(netloc=self.host))
        if new is None and not extra:
            return response.raw
        lines = [response.start_line]
        for name, value in response.headers:
            relocated = new is not None and name.lower() == "location"
            lines.append(f"{name}: {new if relocated else value}")
        lines += [f"{name}: {value}" for name, value in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_canned(
        self, client: socket.socket, method: str, rule: FaultRule, close: bool
    ) -> None:
        headers = dict(rule.headers)
        if not any(k.lower() == "content-length" for k in headers):
            headers["Content-Length"] = str(len(rule.body))
        if close:
            headers["Connection"] = "close"
        head = f"HTTP/1.1 {rule.status} {_REASONS.get(rule.status, 'Fault')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        client.sendall(head.encode("latin-1") + (b"" if method == "HEAD" else rule.body))

    def close(self) -> None:
        """Stop accepting, drop every open connection and wait for the workers (idempotent)."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
            threads = list(self._threads)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._accept_thread.join(_STOP_TIMEOUT)
        for thread in threads:
            thread.join(_STOP_TIMEOUT)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stop_all() -> None:
    """Kill every registry process this module started that still runs (an atexit safety net)."""
    for proc in list(_live_processes):
        _kill_process(proc)


atexit.register(stop_all)
