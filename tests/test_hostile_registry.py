"""Hostile registries (docs/RELIABILITY.md, "Hostile registries").

A small threaded responder speaks just enough of the distribution API, over raw sockets so it
can break HTTP as a hostile or broken registry would: bodies that never end, redirect loops,
manifests that are not the one asked for, oversized manifests, a ``Content-Length`` that
lies, and slow-loris trickles. The client must answer each with a typed error within a
bound, store nothing, and never hang.
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layercore import Store
from layercore.errors import CorruptImageError, DigestMismatchError, NetworkError, RegistryError
from layercore.registry.client import RegistryClient, RetryPolicy

REPO = "hostile/app"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "0" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = b"the real blob\n" * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
#: The client's timeouts in these tests (seconds): short, so every case ends quickly.
IO_TIMEOUT = 1.0
REQUEST_TIMEOUT = 3.0

Behaviour = Callable[[socket.socket, str, str], None]


def head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def answer(sock: socket.socket, status: str, body: bytes, **headers: str) -> None:
    sock.sendall(head(status, {"Content-Length": str(len(body)), **headers}) + body)


class Responder(socketserver.ThreadingTCPServer):
    """Answers ``GET /v2/`` itself and hands every other request to ``behaviour``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour: Behaviour = lambda sock, method, path: answer(sock, "404 Not Found", b"")
        self.requests: list[str] = []
        self.stop = threading.Event()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.BaseRequestHandler):
    server: Responder

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        try:
            while not self.server.stop.is_set():
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk or data[:1] == b"\x16" or chunk[:1] == b"\x16":
                        return  # closed, or a TLS hello: this responder speaks plain HTTP
                    data += chunk
                method, path, _ = data.split(b"\r\n", 1)[0].decode().split(" ", 2)
                self.server.requests.append(f"{method} {path}")
                if path == "/v2/":
                    answer(sock, "200 OK", b"{}", **{"Content-Type": "application/json"})
                    continue
                self.server.behaviour(sock, method, path)
        except OSError:
            return


@pytest.fixture
def responder() -> Iterator[Responder]:
    server = Responder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def client_for(responder: Responder, attempts: int = 2) -> RegistryClient:
    return RegistryClient(
        responder.host,
        retry=RetryPolicy(attempts=attempts, base=0.01, cap=0.05),
        connect_timeout=IO_TIMEOUT,
        io_timeout=IO_TIMEOUT,
        request_timeout=REQUEST_TIMEOUT,
    )


def timed(run: Callable[[], object], bound: float) -> float:
    started = time.monotonic()
    run()
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"took {elapsed:.1f} s, more than {bound} s"
    return elapsed


def trickle(sock: socket.socket, data: bytes, every: float = 0.1) -> None:
    """Sends ``data`` a byte at a time, forever if need be (until the client hangs up)."""
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        time.sleep(every)


def endless(sock: socket.socket, chunk: bytes = b"{" * 65536) -> None:
    """A chunked body that never ends."""
    while True:
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")


# ----- bodies that never end -------------------------------------------------------------------


def test_a_manifest_that_never_ends_is_cut_at_the_manifest_limit(responder: Responder) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        manifest_type = "application/vnd.oci.image.manifest.v1+json"
        sock.sendall(
            head("200 OK", {"Transfer-Encoding": "chunked", "Content-Type": manifest_type})
        )
        endless(sock)

    responder.behaviour = behaviour
    client = client_for(responder)
    with pytest.raises(RegistryError, match="larger than") as info:
        timed(lambda: client.get_manifest(REPO, "latest"), 10)
    assert isinstance(info.value, NetworkError) and not info.value.retriable
    # Not retried: the same answer would come again.
    assert responder.requests.count(f"GET /v2/{REPO}/manifests/latest") == 1


def test_a_blob_that_never_ends_is_cut_at_its_descriptor_size(
    responder: Responder, tmp_path: Path
) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        sock.sendall(head("200 OK", {"Transfer-Encoding": "chunked"}))
        endless(sock, BLOB)

    responder.behaviour = behaviour
    dest = tmp_path / "blob"
    client = client_for(responder)
    with pytest.raises(DigestMismatchError, match="does not end") as info:
        timed(lambda: client.download_blob(REPO, BLOB_DIGEST, dest, size=len(BLOB)), 10)
    assert info.value.what == "size"
    assert not dest.exists(), "nothing is kept"


# ----- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["self", "ping-pong"])
def test_a_redirect_loop_fails_without_retrying(responder: Responder, kind: str) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        target = path if kind == "self" else (path + "x" if not path.endswith("x") else path[:-1])
        answer(sock, "307 Temporary Redirect", b"", Location=target)

    responder.behaviour = behaviour
    client = client_for(responder, attempts=5)
    with pytest.raises(NetworkError, match="redirect") as info:
        timed(lambda: client.get_manifest(REPO, "latest"), 10)
    assert not info.value.retriable
    assert len(responder.requests) <= 1 + 11, "one ping, then at most the redirect limit"


# ----- wrong or oversized manifests ------------------------------------------------------------


def test_a_manifest_that_is_not_the_digest_asked_for(responder: Responder) -> None:
    other = MANIFEST.replace(b'"layers": []', b'"layers": [ ]')
    responder.behaviour = lambda sock, method, path: answer(
        sock, "200 OK", other, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    )
    client = client_for(responder)
    with pytest.raises(DigestMismatchError, match="hash to") as info:
        client.get_manifest(REPO, MANIFEST_DIGEST)
    assert info.value.expected == MANIFEST_DIGEST


def test_a_manifest_whose_docker_content_digest_lies(responder: Responder) -> None:
    responder.behaviour = lambda sock, method, path: answer(
        sock,
        "200 OK",
        MANIFEST,
        **{
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": "sha256:" + "f" * 64,
        },
    )
    with pytest.raises(DigestMismatchError, match="hash to"):
        client_for(responder).get_manifest(REPO, "latest")


def test_an_oversized_manifest_is_refused(responder: Responder) -> None:
    big = MANIFEST[:-1] + b', "annotations": {"pad": "' + b"p" * (5 << 20) + b'"}}'
    responder.behaviour = lambda sock, method, path: answer(
        sock, "200 OK", big, **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    )
    with pytest.raises(RegistryError, match="larger than"):
        timed(lambda: client_for(responder).get_manifest(REPO, "latest"), 10)


def test_a_pull_of_a_hostile_manifest_stores_nothing(responder: Responder, tmp_path: Path) -> None:
    responder.behaviour = lambda sock, method, path: answer(
        sock,
        "200 OK",
        b"[" * 100_000,
        **{"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    store = Store(tmp_path / "store")
    with pytest.raises(CorruptImageError, match="not valid JSON"):
        store.pull(f"{responder.host}/{REPO}:latest")
    blobs = store.root / "blobs" / "sha256"
    assert not blobs.exists() or not any(blobs.iterdir())


# ----- Content-Length that lies ----------------------------------------------------------------


def test_a_content_length_longer_than_the_body(responder: Responder, tmp_path: Path) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        body = MANIFEST if "/manifests/" in path else BLOB
        sock.sendall(head("200 OK", {"Content-Length": str(len(body) * 2)}) + body)
        sock.close()

    responder.behaviour = behaviour
    client = client_for(responder)
    with pytest.raises(NetworkError):
        timed(lambda: client.get_manifest(REPO, "latest"), 10)
    dest = tmp_path / "blob"
    with pytest.raises(NetworkError):
        timed(lambda: client.download_blob(REPO, BLOB_DIGEST, dest, size=len(BLOB)), 20)


def test_a_content_length_shorter_than_the_body(responder: Responder, tmp_path: Path) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        body = MANIFEST if "/manifests/" in path else BLOB
        sock.sendall(head("200 OK", {"Content-Length": str(len(body) // 2)}) + body)

    responder.behaviour = behaviour
    client = client_for(responder)
    with pytest.raises(DigestMismatchError):
        client.get_manifest(REPO, MANIFEST_DIGEST)
    dest = tmp_path / "blob"
    with pytest.raises(DigestMismatchError):
        client.download_blob(REPO, BLOB_DIGEST, dest, size=len(BLOB))
    assert not dest.exists()


# ----- slow loris ------------------------------------------------------------------------------


def test_a_reply_head_trickled_a_byte_at_a_time_times_out(responder: Responder) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        trickle(sock, head("200 OK", {"X-Pad": "p" * 10_000}), every=0.05)

    responder.behaviour = behaviour
    client = client_for(responder, attempts=1)
    with pytest.raises(NetworkError, match=r"timed out|timeout"):
        timed(lambda: client.get_manifest(REPO, "latest"), REQUEST_TIMEOUT + 3)


def test_a_manifest_body_trickled_a_byte_at_a_time_times_out(responder: Responder) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        sock.sendall(head("200 OK", {"Content-Length": str(len(MANIFEST))}))
        trickle(sock, MANIFEST, every=0.05)

    responder.behaviour = behaviour
    client = client_for(responder, attempts=1)
    with pytest.raises(NetworkError, match=r"timed out|timeout"):
        timed(lambda: client.get_manifest(REPO, "latest"), REQUEST_TIMEOUT + 3)


def test_a_blob_trickled_below_the_minimum_rate_fails(responder: Responder, tmp_path: Path) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        sock.sendall(head("200 OK", {"Content-Length": str(len(BLOB))}))
        trickle(sock, BLOB, every=0.05)

    responder.behaviour = behaviour
    client = client_for(responder, attempts=1)
    with pytest.raises(NetworkError, match="too slowly") as info:
        timed(lambda: client.download_blob(REPO, BLOB_DIGEST, tmp_path / "b", size=len(BLOB)),
              IO_TIMEOUT + 3)  # fmt: skip
    assert not info.value.retriable


def test_a_blob_whose_head_is_trickled_times_out(responder: Responder, tmp_path: Path) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        trickle(sock, head("200 OK", {"X-Pad": "p" * 10_000}), every=0.05)

    responder.behaviour = behaviour
    client = client_for(responder, attempts=1)
    with pytest.raises(NetworkError, match=r"timed out|timeout"):
        timed(lambda: client.download_blob(REPO, BLOB_DIGEST, tmp_path / "b", size=len(BLOB)),
              REQUEST_TIMEOUT + 3)  # fmt: skip


def test_a_registry_that_stops_answering_times_out(responder: Responder, tmp_path: Path) -> None:
    def behaviour(sock: socket.socket, method: str, path: str) -> None:
        sock.sendall(head("200 OK", {"Content-Length": str(len(BLOB))}))
        time.sleep(30)

    responder.behaviour = behaviour
    client = client_for(responder, attempts=1)
    with pytest.raises(NetworkError, match=r"timed out|connection lost"):
        timed(lambda: client.download_blob(REPO, BLOB_DIGEST, tmp_path / "b", size=len(BLOB)),
              IO_TIMEOUT + 3)  # fmt: skip
    with pytest.raises(NetworkError, match=r"timed out|timeout"):
        timed(lambda: client.get_manifest(REPO, "latest"), IO_TIMEOUT + 3)
