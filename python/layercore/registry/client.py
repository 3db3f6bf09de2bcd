"""One registry's distribution API (distribution-spec v1.1): requests, auth, retries, blobs.

:class:`RegistryClient` makes each request of the protocol and decides what to do with the
answer; the bytes move in the Rust core (``_core.HttpClient``), which keeps its connections
alive and releases the GIL, so several threads transfer blobs at once.

- **Scheme.** HTTPS. Plain HTTP only with ``insecure=True`` or for a loopback host, and only
  after HTTPS failed, as Docker does.
- **Auth.** The ``/v2/`` ping's challenge picks it: Basic sends the credentials; Bearer fetches a
  token from the realm for the scopes a request needs (``pull``, ``pull,push``, ``pull`` on a
  mount's source), anonymously when there are no credentials, by OAuth2 refresh grant with an
  identity token, and again with the scopes an ``insufficient_scope`` challenge adds.
- **Retries.** Connection failures, 408, 429 and 5xx are retried with exponential backoff and
  jitter, honouring ``Retry-After``; a download or upload that made progress before it was cut
  off resumes without spending a try. The last failure names the host, status, registry error
  code and what was being done.
"""

from __future__ import annotations

import ipaddress
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layercore import _core
from layercore.errors import (
    AuthenticationError,
    DigestMismatchError,
    NetworkError,
    ReferenceNotFoundError,
    RegistryError,
)
from layercore.image import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    sha256_digest,
)
from layercore.layer import StrPath
from layercore.registry.auth import ANONYMOUS, Challenge, Credentials, parse_challenges

__all__ = ["MANIFEST_TYPES", "RegistryClient", "RetryPolicy", "ca_files_for"]

#: What a manifest GET accepts, newest first.
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Manifests and indexes bigger than this are refused (the spec's suggested limit is 4 MiB).
MAX_MANIFEST_BYTES = 4 << 20
#: Blobs up to this size go up in one PUT; bigger ones as PATCHes of this size.
CHUNK_SIZE = 64 << 20
#: How often a cut-off transfer that made progress resumes before the client gives up.
_MAX_RESUMES = 20
_CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in all, the wait doubling from ``base`` seconds up to
    ``cap``, each wait with up to 50% jitter (``Retry-After`` overrides, up to ``cap``)."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                wait = float(retry_after)
                return min(max(wait, 0.0), self.cap)
            except ValueError:
                pass
        backoff: float = min(self.base * 2.0**attempt, self.cap)
        return backoff * (0.5 + random.random() / 2)


def ca_files_for(registry: str) -> list[Path]:
    """The CA certificates Docker and podman trust for ``registry``: ``*.crt`` in
    ``/etc/containers/certs.d/HOST/`` and ``/etc/docker/certs.d/HOST/``."""
    found: list[Path] = []
    for base in _CERTS_DIRS:
        directory = base / registry
        if directory.is_dir():
            found.extend(sorted(directory.glob("*.crt")))
    return found


def is_loopback(registry: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with or without a port."""
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # `[::1]:5000` split above only when there was one colon.
        return host.startswith("::1]")


def _error_code(body: bytes) -> tuple[str | None, str | None]:
    """The first ``errors[].code`` and ``message`` of a registry's error body."""
    try:
        obj = json.loads(body)
        first = obj["errors"][0]
        return str(first.get("code")), str(first.get("message") or "") or None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        return None, None


class RegistryClient:
    """The API of one registry host, shared by the threads of a push or pull.

    ``registry`` is the host[:port] of references (``docker.io`` for Docker Hub); requests go
    to ``api_host``. Credentials default to anonymous; pass them, or let the caller read them
    from the Docker config (:func:`layercore.registry.auth.credentials_for`).

    Timeouts, in seconds: ``connect_timeout`` to open a connection, ``io_timeout`` for any one
    read or write, ``request_timeout`` for a whole request with a small reply (API calls,
    manifests, tokens) and for the head of a blob's reply; a blob body must keep arriving at
    ``min_rate`` bytes a second or more, measured over ``io_timeout`` windows."""

    def __init__(
        self,
        registry: str,
        *,
        api_host: str | None = None,
        credentials: Credentials = ANONYMOUS,
        insecure: bool = False,
        ca_file: StrPath | None = None,
        retry: RetryPolicy | None = None,
        chunk_size: int | None = None,
        connect_timeout: float = 30.0,
        io_timeout: float = 60.0,
        request_timeout: float = 120.0,
        min_rate: int = 1024,
    ) -> None:
        self.registry = registry
        self.host = api_host or registry
        self.insecure = insecure
        self.retry = retry or RetryPolicy()
        self.chunk_size = chunk_size if chunk_size is not None else CHUNK_SIZE
        self._credentials = credentials
        ca_paths = [Path(ca_file)] if ca_file is not None else ca_files_for(self.host)
        pems = []
        for path in ca_paths:
            try:
                pems.append(path.read_bytes())
            except OSError as e:
                raise RegistryError(f"cannot read the CA file: {e.strerror}", path) from None
        self._http = _core.HttpClient(
            insecure=insecure,
            ca_pem=pems,
            connect_timeout=connect_timeout,
            io_timeout=io_timeout,
            request_timeout=request_timeout,
            min_rate=min_rate,
        )
        self._plain_allowed = insecure or is_loopback(self.host)
        self._base: str | None = None
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._scopes: set[str] = set()
        self._token: str | None = None
        self._token_expires = 0.0
        self._refresh_token: str | None = credentials.identity_token or None

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r})"

    # -- connection and auth -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``https://host`` or (insecure/loopback, after HTTPS failed) ``http://host``."""
        if self._base is None:
            self.ping()
        assert self._base is not None
        return self._base

    def ping(self) -> None:
        """``GET /v2/``: picks the scheme and learns the auth challenge."""
        with self._lock:
            if self._base is not None:
                return
            schemes = ["https", "http"] if self._plain_allowed else ["https"]
            failure: NetworkError | None = None
            for scheme in schemes:
                base = f"{scheme}://{self.host}"

                def get_v2(base: str = base) -> _core.HttpReply:
                    return self._http.request("GET", f"{base}/v2/")

                try:
                    reply = self._with_retries(
                        f"reaching {self.host}", get_v2, retry_network=scheme == schemes[-1]
                    )
                except NetworkError as e:
                    failure = e
                    continue
                ok = reply.status == 401 or 200 <= reply.status < 300
                if not ok and failure is not None:
                    # Plain HTTP reached something that is no registry API (an HTTPS-only
                    # registry answers 400): the HTTPS failure is the one worth reporting.
                    break
                if reply.status == 401:
                    self._challenge = self._pick_challenge(reply)
                elif not ok:
                    self._raise_for(reply, f"reaching {self.host}", self.host)
                self._base = base
                return
            assert failure is not None
            hint = "" if self._plain_allowed else " (pass insecure=True for a plain-HTTP registry)"
            raise NetworkError(
                f"cannot reach the registry: {failure.message}{hint}",
                self.host,
                retriable=failure.retriable,
            ) from None

    def _pick_challenge(self, reply: _core.HttpReply) -> Challenge | None:
        header = reply.header("www-authenticate") or ""
        challenges = parse_challenges(header)
        for scheme in ("bearer", "basic"):
            for c in challenges:
                if c.scheme == scheme:
                    return c
        return None

    def _authorization(self, scopes: Iterable[str]) -> list[tuple[str, str]]:
        challenge = self._challenge
        if challenge is None:
            return []
        if challenge.scheme == "basic":
            if self._credentials.anonymous or not self._credentials.username:
                return []
            return [("Authorization", self._credentials.basic_header())]
        with self._lock:
            wanted = set(scopes)
            fresh = self._token is not None and time.monotonic() < self._token_expires
            if not (fresh and wanted <= self._scopes):
                self._scopes |= wanted
                self._fetch_token(challenge)
            token = self._token
        return [("Authorization", f"Bearer {token}")] if token else []

    def _fetch_token(self, challenge: Challenge) -> None:
        """A Bearer token for every scope asked for so far (called with the lock held)."""
        realm = challenge.realm
        if not realm:
            raise AuthenticationError(
                "the registry asks for a Bearer token but names no realm to get it from",
                self.host,
            )
        scopes = sorted(self._scopes | set(challenge.scopes))
        service = challenge.service or ""
        creds = self._credentials
        what = f"getting a token from {realm}"
        if self._refresh_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self._refresh_token,
                "service": service,
                "client_id": "layercore",
                "scope": " ".join(scopes),
            }
            body = urllib.parse.urlencode(form).encode()
            reply = self._with_retries(
                what,
                lambda: self._http.request(
                    "POST",
                    realm,
                    [("Content-Type", "application/x-www-form-urlencoded")],
                    body,
                ),
            )
        else:
            query = [("service", service)] if service else []
            query += [("scope", s) for s in scopes]
            headers = []
            if not creds.anonymous:
                query.append(("account", creds.username))
                headers.append(("Authorization", creds.basic_header()))
            sep = "&" if "?" in realm else "?"
            url = realm + (sep + urllib.parse.urlencode(query) if query else "")
            reply = self._with_retries(what, lambda: self._http.request("GET", url, headers))
        if reply.status in (401, 403):
            who = (
                "anonymous access" if creds.anonymous else f"the credentials of {creds.username!r}"
            )
            code, message = _error_code(reply.body)
            raise AuthenticationError(
                f"the token server {realm} refused {who} (HTTP {reply.status}"
                + (f", {message}" if message else "")
                + ")",
                self.host,
                status=reply.status,
                code=code,
            )
        if not (200 <= reply.status < 300):
            self._raise_for(reply, what, self.host)
        try:
            answer = json.loads(reply.body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(f"the token server {realm} gave no token", self.host)
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
        self._token = token
        # Renewed a little before it runs out.
        self._token_expires = time.monotonic() + max(lifetime - 10.0, 1.0)
        refresh = answer.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self._refresh_token = refresh

    def check_login(self, repository: str | None = None) -> None:
        """Proves the credentials work (``layercore login``): the ping, then for Bearer a token
        (for ``repository``'s pull scope if given); raises :class:`AuthenticationError`."""
        self.ping()
        challenge = self._challenge
        if challenge is None:
            return
        if challenge.scheme == "basic":
            reply = self._with_retries(
                f"logging in to {self.host}",
                lambda: self._http.request("GET", f"{self.base_url}/v2/", self._authorization([])),
            )
            if reply.status == 401:
                raise AuthenticationError(
                    f"{self.host} refused the credentials (HTTP 401)", self.host, status=401
                )
            return
        scopes = [f"repository:{repository}:pull"] if repository else []
        with self._lock:
            self._scopes |= set(scopes)
            self._fetch_token(challenge)

    # -- requests ------------------------------------------------------------------------------

    def _with_retries(
        self,
        what: str,
        send: Callable[[], _core.HttpReply],
        *,
        retry_network: bool = True,
        resume: bool = False,
    ) -> _core.HttpReply:
        """``send()`` until it answers with something other than a retriable status, or the
        policy's tries run out (then the last answer is returned, or the last error raised).
        With ``resume`` (a download into a partial file) a try that moved bytes before it was
        cut off does not count; without it, such a failure is the caller's to handle (an
        upload must ask the registry where it stands rather than send the chunk again)."""
        attempt = 0
        resumes = 0
        while True:
            try:
                reply = send()
            except NetworkError as e:
                if e.transferred > 0 and not resume:
                    raise
                if e.retriable and e.transferred > 0 and resumes < _MAX_RESUMES:
                    resumes += 1
                    continue
                if not (retry_network and e.retriable) or attempt + 1 >= self.retry.attempts:
                    tries = f" (after {attempt + 1} tries)" if attempt else ""
                    raise NetworkError(
                        f"{what}: {e.message}{tries}",
                        e.path,
                        transferred=e.transferred,
                        retriable=e.retriable,
                    ) from None
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if reply.status in _RETRY_STATUSES and attempt + 1 < self.retry.attempts:
                time.sleep(self.retry.delay(attempt, reply.header("retry-after")))
                attempt += 1
                continue
            return reply

    def _call(
        self,
        what: str,
        scopes: list[str],
        send: Callable[[list[tuple[str, str]]], _core.HttpReply],
        *,
        resume: bool = False,
    ) -> _core.HttpReply:
        """A request with auth: on a 401 the challenge is taken up (new scopes, a new token)
        and the request made once more."""
        if self._base is None:
            self.ping()
        reauthed = False
        while True:
            auth = self._authorization(scopes)

            def attempt(auth: list[tuple[str, str]] = auth) -> _core.HttpReply:
                return send(auth)

            reply = self._with_retries(what, attempt, resume=resume)
            if reply.status != 401 or reauthed:
                return reply
            challenge = self._pick_challenge(reply)
            if challenge is None:
                return reply
            reauthed = True
            with self._lock:
                self._challenge = challenge
                self._scopes |= set(challenge.scopes)
                self._token = None

    def _raise_for(self, reply: _core.HttpReply, what: str, path: str) -> None:
        """Raises the error a failed reply means."""
        code, message = _error_code(reply.body)
        detail = f"HTTP {reply.status}" + (f" {code}" if code else "")
        if message:
            detail += f": {message}"
        text = f"{what}: {self.host} answered {detail}"
        if reply.status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
            if reply.status == 401 and self._credentials.anonymous:
                text += " (no credentials were found for it: run `layercore login`)"
            raise AuthenticationError(text, path, status=reply.status, code=code)
        if reply.status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            raise ReferenceNotFoundError(text, path, status=reply.status, code=code)
        raise RegistryError(text, path, status=reply.status, code=code)

    def _url(self, repository: str, kind: str, target: str = "") -> str:
        return f"{self.base_url}/v2/{repository}/{kind}/{target}"

    def _absolute(self, location: str) -> str:
        return urllib.parse.urljoin(self.base_url + "/", location)

    # -- manifests -----------------------------------------------------------------------------

    def get_manifest(
        self, repository: str, target: str, *, what: str | None = None
    ) -> tuple[bytes, str, str]:
        """The manifest or index ``target`` (tag or digest) names, as the registry stores it:
        ``(bytes, media type, digest)``. Its bytes are checked against ``target`` when that
        is a digest, and against the registry's ``Docker-Content-Digest``."""
        ref = f"{self.registry}/{repository}{'@' if ':' in target else ':'}{target}"
        what = what or "getting the manifest"
        accept = [("Accept", ", ".join(MANIFEST_TYPES))]
        reply = self._call(
            what,
            [f"repository:{repository}:pull"],
            lambda auth: self._http.request(
                "GET",
                self._url(repository, "manifests", target),
                accept + auth,
                max_body=MAX_MANIFEST_BYTES,
            ),
        )
        if not (200 <= reply.status < 300):
            self._raise_for(reply, what, ref)
        data = reply.body
        if len(data) >= MAX_MANIFEST_BYTES:
            raise RegistryError(f"{what}: larger than {MAX_MANIFEST_BYTES} bytes", ref)
        actual = sha256_digest(data)
        claimed = reply.header("docker-content-digest")
        for expected in (target if target.startswith("sha256:") else None, claimed):
            if expected is not None and expected.startswith("sha256:") and expected != actual:
                raise DigestMismatchError(
                    f"{what}: the registry's bytes hash to {actual}, not to {expected}",
                    ref,
                    what="digest",
                    expected=expected,
                    actual=actual,
                )
        media_type = _media_type(data, reply.header("content-type"))
        return data, media_type, actual

    def head_manifest(self, repository: str, target: str) -> str | None:
        """The digest of the manifest ``target`` names, or None if there is none."""
        ref = f"{self.registry}/{repository}:{target}"
        what = "checking for the manifest"
        accept = [("Accept", ", ".join(MANIFEST_TYPES))]
        reply = self._call(
            what,
            [f"repository:{repository}:pull,push"],
            lambda auth: self._http.request(
                "HEAD", self._url(repository, "manifests", target), accept + auth
            ),
        )
        if reply.status == 404:
            return None
        if not (200 <= reply.status < 300):
            self._raise_for(reply, what, ref)
        return reply.header("docker-content-digest")

    def put_manifest(self, repository: str, target: str, data: bytes, media_type: str) -> str:
        """Uploads a manifest or index under ``target`` (tag or digest); its digest."""
        ref = f"{self.registry}/{repository}{'@' if ':' in target else ':'}{target}"
        what = "uploading the manifest"
        reply = self._call(
            what,
            [f"repository:{repository}:pull,push"],
            lambda auth: self._http.request(
                "PUT",
                self._url(repository, "manifests", target),
                [("Content-Type", media_type), *auth],
                data,
            ),
        )
        if not (200 <= reply.status < 300):
            self._raise_for(reply, what, ref)
        digest = sha256_digest(data)
        claimed = reply.header("docker-content-digest")
        if claimed is not None and claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatchError(
                f"{what}: the registry stored it as {claimed}, but its bytes hash to {digest}",
                ref,
                what="digest",
                expected=digest,
                actual=claimed,
            )
        return digest

    # -- blobs ---------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str, *, push: bool = False) -> bool:
        """``HEAD`` the blob: whether the repository has it."""
        ref = f"{self.registry}/{repository}@{digest}"
        what = "checking for the blob"
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        reply = self._call(
            what,
            [scope],
            lambda auth: self._http.request("HEAD", self._url(repository, "blobs", digest), auth),
        )
        if reply.status == 404:
            return False
        if not (200 <= reply.status < 300):
            self._raise_for(reply, what, ref)
        return True

    def get_small_blob(self, repository: str, digest: str, *, what: str) -> bytes:
        """A config blob's bytes, verified."""
        ref = f"{self.registry}/{repository}@{digest}"
        reply = self._call(
            what,
            [f"repository:{repository}:pull"],
            lambda auth: self._http.request(
                "GET", self._url(repository, "blobs", digest), auth, max_body=MAX_MANIFEST_BYTES
            ),
        )
        if not (200 <= reply.status < 300):
            self._raise_for(reply, what, ref)
        actual = sha256_digest(reply.body)
        if actual != digest:
            raise DigestMismatchError(
                f"{what}: the registry's bytes hash to {actual}",
                ref,
                what="digest",
                expected=digest,
                actual=actual,
            )
        return reply.body

    def download_blob(
        self,
        repository: str,
        digest: str,
        dest: Path,
        *,
        counter: _core.TransferCounter | None = None,
        size: int | None = None,
    ) -> int:
        """Streams the blob into ``dest`` (a store ingest path), hashed on arrival; resumes
        with ``Range`` after a dropped connection. Returns its size; a blob whose bytes are
        not ``digest``, or that grows past ``size`` (its descriptor's) raises
        :class:`DigestMismatchError` and leaves no file."""
        ref = f"{self.registry}/{repository}@{digest}"
        what = "downloading the blob"
        url = self._url(repository, "blobs", digest)
        try:
            reply = self._call(
                what,
                [f"repository:{repository}:pull"],
                lambda auth: self._http.download(
                    url, auth, dest, expected_digest=digest, max_size=size, counter=counter
                ),
                resume=True,
            )
        except DigestMismatchError as e:
            if e.what == "size":
                raise DigestMismatchError(
                    f"{what}: the registry sent more than the {size} bytes the descriptor "
                    "declares (a reply that does not end); nothing was stored",
                    ref,
                    what="size",
                    expected=str(size),
                    actual=e.actual,
                ) from None
            raise DigestMismatchError(
                f"{what}: the registry sent bytes that hash to {e.actual}; nothing was stored",
                ref,
                what="digest",
                expected=digest,
                actual=e.actual,
            ) from None
        if reply.digest is None:
            self._raise_for(reply, what, ref)
        return reply.size

    def mount_blob(self, repository: str, digest: str, source: str) -> str | None:
        """Asks the registry to mount the blob from ``source`` (a repository of the same
        registry). None when it did; else the upload URL the registry opened instead (it
        declined the mount, so the blob has to be uploaded there)."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        url = f"{self.base_url}/v2/{repository}/blobs/uploads/?{query}"
        what = f"mounting {digest} from {self.registry}/{source} into {repository}"
        scopes = [f"repository:{repository}:pull,push", f"repository:{source}:pull"]
        reply = self._call(what, scopes, lambda auth: self._http.request("POST", url, auth, b""))
        if reply.status == 201:
            return None
        if reply.status == 202 and reply.header("location"):
            return self._absolute(reply.header("location") or "")
        self._raise_for(reply, what, f"{self.registry}/{repository}")
        raise AssertionError("unreachable")

    def upload_blob(
        self,
        repository: str,
        digest: str,
        path: Path,
        size: int,
        *,
        location: str | None = None,
        counter: _core.TransferCounter | None = None,
    ) -> None:
        """Uploads the blob at ``path``: one ``PUT`` when it is at most the chunk size, else
        ``PATCH`` chunks then a closing ``PUT``, following the newest ``Location`` each time.
        A chunk cut off mid-way resumes from the offset the registry reports for the upload
        (``GET`` on its URL); if the registry has lost the upload, it starts over."""
        ref = f"{self.registry}/{repository}@{digest}"
        what = "uploading the blob"
        scopes = [f"repository:{repository}:pull,push"]
        lost: _UploadLost | None = None
        for _restart in range(self.retry.attempts):
            if location is None:
                location, min_chunk = self._start_upload(repository, what, scopes)
            else:
                min_chunk = 0
            try:
                self._send_blob(
                    location, digest, path, size, (what, ref), scopes, min_chunk, counter
                )
                return
            except _UploadLost as e:
                lost = e
                location = None
                continue
        assert lost is not None
        raise RegistryError(
            f"{what}: {self.host} refused the upload {self.retry.attempts} times; last: "
            f"{lost.reason}",
            ref,
            status=lost.status,
            code=lost.code,
        )

    def _start_upload(self, repository: str, what: str, scopes: list[str]) -> tuple[str, int]:
        url = f"{self.base_url}/v2/{repository}/blobs/uploads/"
        reply = self._call(what, scopes, lambda auth: self._http.request("POST", url, auth, b""))
        location = reply.header("location")
        if reply.status != 202 or not location:
            self._raise_for(reply, what, f"{self.registry}/{repository}")
        assert location is not None
        try:
            min_chunk = int(reply.header("oci-chunk-min-length") or 0)
        except ValueError:
            min_chunk = 0
        return self._absolute(location), min_chunk

    def _send_blob(
        self,
        location: str,
        digest: str,
        path: Path,
        size: int,
        context: tuple[str, str],
        scopes: list[str],
        min_chunk: int,
        counter: _core.TransferCounter | None,
    ) -> None:
        what, ref = context
        chunk = max(self.chunk_size, min_chunk)
        if size <= chunk:
            put = _with_query(location, digest=digest)
            try:
                reply = self._call(
                    what,
                    scopes,
                    lambda auth: self._http.upload(
                        "PUT", put, auth, path, 0, size, counter=counter
                    ),
                )
            except NetworkError as e:
                if e.transferred == 0:
                    raise
                # The registry may keep part of a PUT it never finished; a fresh upload is
                # the only sure way on.
                raise _UploadLost("the connection was lost during the PUT") from None
            self._finish(reply, what, digest, ref)
            return
        offset = 0
        resumes = 0
        while offset < size:
            length = min(chunk, size - offset)

            def patch(
                auth: list[tuple[str, str]], o: int = offset, n: int = length, url: str = location
            ) -> _core.HttpReply:
                headers = [("Content-Range", f"{o}-{o + n - 1}"), *auth]
                return self._http.upload("PATCH", url, headers, path, o, n, counter=counter)

            try:
                reply = self._call(what, scopes, patch)
            except NetworkError:
                if resumes >= _MAX_RESUMES:
                    raise
                resumes += 1
                location, offset = self._upload_status(location, what, scopes)
                continue
            if reply.status == 416 or reply.status in (400, 404):
                raise _UploadLost.of(reply, "a PATCH was refused")
            if reply.status != 202:
                self._raise_for(reply, what, ref)
            location = self._absolute(reply.header("location") or location)
            offset = _range_end(reply.header("range"), offset + length)
        put = _with_query(location, digest=digest)
        reply = self._call(what, scopes, lambda auth: self._http.request("PUT", put, auth, b""))
        self._finish(reply, what, digest, ref)

    def _upload_status(self, location: str, what: str, scopes: list[str]) -> tuple[str, int]:
        """Where an interrupted upload stands: its newest URL and the next offset."""
        reply = self._call(what, scopes, lambda auth: self._http.request("GET", location, auth))
        if reply.status != 204 and not (200 <= reply.status < 300):
            # The registry no longer knows the upload (or refuses to resume it).
            raise _UploadLost.of(reply, "the upload's status could not be read")
        new_location = self._absolute(reply.header("location") or location)
        return new_location, _range_end(reply.header("range"), 0)

    def _finish(self, reply: _core.HttpReply, what: str, digest: str, ref: str) -> None:
        if reply.status in (200, 201, 204):
            claimed = reply.header("docker-content-digest")
            if claimed is not None and claimed != digest:
                raise DigestMismatchError(
                    f"{what}: the registry stored the blob as {claimed}",
                    ref,
                    what="digest",
                    expected=digest,
                    actual=claimed,
                )
            return
        code, _message = _error_code(reply.body)
        if code in ("BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID"):
            # DIGEST_INVALID: what the registry holds is not the blob (a cut-off request may
            # have left part of a chunk there); the upload starts again from nothing.
            raise _UploadLost.of(reply, "the closing PUT was refused")
        self._raise_for(reply, what, ref)


class _UploadLost(Exception):
    """The registry no longer has the upload session (or its bytes are not the blob's)."""

    def __init__(self, reason: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.code = reason, status, code

    @classmethod
    def of(cls, reply: _core.HttpReply, what: str) -> _UploadLost:
        code, message = _error_code(reply.body)
        detail = f"HTTP {reply.status}" + (f" {code}" if code else "")
        if message:
            detail += f": {message}"
        return cls(f"{what} ({detail})", reply.status, code)


def _range_end(value: str | None, default: int) -> int:
    """The next offset of an upload whose ``Range`` header is ``0-N`` (bytes 0..N held)."""
    if not value:
        return default
    _start, sep, end = value.removeprefix("bytes=").partition("-")
    try:
        return int(end) + 1 if sep else default
    except ValueError:
        return default


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


def _media_type(data: bytes, content_type: str | None) -> str:
    """A manifest's media type: its own ``mediaType`` field, else the reply's Content-Type."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        own = obj.get("mediaType")
        if isinstance(own, str) and own:
            return own
        if "manifests" in obj:
            return OCI_INDEX
    if content_type:
        return content_type.split(";", 1)[0].strip()
    return OCI_MANIFEST
