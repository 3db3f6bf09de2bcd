"""Pull, push and copy between the store and registries.

A **pull** reads the manifest (an index resolves to one platform, or keeps them all), then
fetches in parallel only the blobs the store lacks, each streamed into the store's ingest area,
hashed on arrival and renamed in once verified; the image is tagged last, so a failed pull
tags nothing. A **push** HEADs the manifest (the same digest: nothing to do), then per blob in
parallel: HEAD (present: skip), mount from another repository of the registry that the store
knows holds it, else upload; manifests go last, children before their index. The store
remembers which repositories each blob was pulled from or pushed to, and that record is what
makes mounts possible (:meth:`layercore.Store.blob_locations`). **Copy** is a pull into the
store and a push from it.

Progress is observable without callbacks into the transfer threads: a :class:`Transfers`
lists each blob with a counter the Rust core advances, for a display to poll.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from layercore import _core
from layercore.errors import CorruptImageError, ImageNotFoundError, RegistryError
from layercore.image import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    host_architecture,
)
from layercore.imageref import Reference
from layercore.layer import StrPath
from layercore.registry.auth import Credentials, credentials_for
from layercore.registry.client import RegistryClient, RetryPolicy
from layercore.store import check_tag

if TYPE_CHECKING:
    from layercore.store import Store

__all__ = [
    "BlobResult",
    "BlobTransfer",
    "PushResult",
    "Transfers",
    "copy",
    "parse_platform",
    "pull",
    "push",
]

DEFAULT_JOBS = 4
_INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

BlobAction = Literal["uploaded", "mounted", "present", "downloaded", "stored"]


@dataclass
class BlobTransfer:
    """One blob of a push or pull: ``state`` moves from ``waiting`` through ``checking``,
    ``downloading`` or ``uploading`` to a :data:`BlobAction` (or ``failed``); ``counter``
    holds the bytes moved so far."""

    digest: str
    size: int
    kind: str
    state: str = "waiting"
    counter: _core.TransferCounter = field(default_factory=_core.TransferCounter)

    @property
    def moved(self) -> int:
        return self.counter.value


class Transfers:
    """The blobs of one operation, readable from another thread while it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, BlobTransfer] = {}

    def add(self, digest: str, size: int, kind: str) -> BlobTransfer:
        with self._lock:
            item = self._items.get(digest)
            if item is None:
                item = self._items[digest] = BlobTransfer(digest, size, kind)
            return item

    def snapshot(self) -> list[BlobTransfer]:
        with self._lock:
            return list(self._items.values())


@dataclass(frozen=True)
class BlobResult:
    """What a push did with one blob: ``uploaded`` (``bytes_sent`` of it), ``mounted`` (from
    ``mounted_from``) or ``present`` (the repository had it)."""

    digest: str
    size: int
    kind: str
    action: BlobAction
    bytes_sent: int = 0
    mounted_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "digest": self.digest,
            "size": self.size,
            "kind": self.kind,
            "action": self.action,
            "bytes_sent": self.bytes_sent,
        }
        if self.mounted_from is not None:
            out["mounted_from"] = self.mounted_from
        return out


@dataclass(frozen=True)
class PushResult:
    """The outcome of a push: the reference and digest pushed, whether the manifest had to be
    sent, and each blob's :class:`BlobResult`."""

    reference: str
    digest: str
    manifest: Literal["uploaded", "present"]
    blobs: list[BlobResult]

    @property
    def bytes_sent(self) -> int:
        return sum(b.bytes_sent for b in self.blobs)

    def count(self, action: BlobAction) -> int:
        return sum(1 for b in self.blobs if b.action == action)

    def summary(self) -> str:
        return (
            f"{self.count('uploaded')} uploaded, {self.count('mounted')} mounted, "
            f"{self.count('present')} already there; {self.bytes_sent} bytes sent"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "manifest": self.manifest,
            "uploaded": self.count("uploaded"),
            "mounted": self.count("mounted"),
            "present": self.count("present"),
            "bytes_sent": self.bytes_sent,
            "blobs": [b.to_json() for b in self.blobs],
        }


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` (``linux/arm64``, ``linux/arm/v7``) as a triple."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"{text!r} is not a platform: write os/arch or os/arch/variant")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _client(
    ref: Reference,
    *,
    insecure: bool,
    ca_file: StrPath | None,
    credentials: Credentials | None,
    retry: RetryPolicy | None,
) -> RegistryClient:
    creds = credentials if credentials is not None else credentials_for(ref.registry)
    return RegistryClient(
        ref.registry,
        api_host=ref.api_host,
        credentials=creds,
        insecure=insecure,
        ca_file=ca_file,
        retry=retry,
    )


def _json(data: bytes, what: str, origin: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptImageError(f"{what} is not valid JSON: {e}", origin) from None
    if not isinstance(obj, dict):
        raise CorruptImageError(f"{what} is not a JSON object", origin)
    return obj


def _descriptor(obj: Any, what: str, origin: str) -> tuple[str, int, str]:
    """(digest, size, media type) of a manifest's descriptor, checked."""
    if not isinstance(obj, Mapping):
        raise CorruptImageError(f"{what}: a descriptor is not an object", origin)
    digest, size = obj.get("digest"), obj.get("size")
    if not (isinstance(digest, str) and digest.startswith("sha256:") and len(digest) == 71):
        raise CorruptImageError(f"{what}: {digest!r} is not a sha256 digest", origin)
    if not isinstance(size, int) or size < 0:
        raise CorruptImageError(f"{what}: the size of {digest} is not a count of bytes", origin)
    media_type = obj.get("mediaType")
    return digest, size, media_type if isinstance(media_type, str) else ""


def _select(index: dict[str, Any], platform: str | None, origin: str) -> list[str]:
    """The child manifest of an index for ``platform`` (default: linux on this machine)."""
    if platform is None:
        arch, variant = host_architecture()
        want_os, want_arch, want_variant = "linux", arch, variant
    else:
        want_os, want_arch, want_variant = parse_platform(platform)
    seen = []
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise CorruptImageError("the image index has no 'manifests' list", origin)
    for entry in manifests:
        p = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(p, dict):
            continue
        name = f"{p.get('os')}/{p.get('architecture')}" + (
            f"/{p['variant']}" if p.get("variant") else ""
        )
        seen.append(name)
        if p.get("os") != want_os or p.get("architecture") != want_arch:
            continue
        # No variant asked for (or none recorded) matches any; arm64's is v8 by default.
        if want_variant is not None and p.get("variant") not in (None, want_variant):
            continue
        digest, _size, _mt = _descriptor(entry, "the image index", origin)
        return [digest]
    want = f"{want_os}/{want_arch}" + (f"/{want_variant}" if want_variant else "")
    raise ImageNotFoundError(
        f"has no image for {want} (it has: {', '.join(seen) or 'no platforms'})", origin
    )


def _parallel(jobs: int, work: Iterable[Callable[[], None]]) -> None:
    """Runs each callable on ``jobs`` threads; the first failure is raised once all stop."""
    tasks = list(work)
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    from concurrent.futures import ThreadPoolExecutor  # only for more than one transfer

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="layercore-transfer") as pool:
        futures = [pool.submit(task) for task in tasks]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


# -- pull -------------------------------------------------------------------------------------


def pull(
    store: Store,
    reference: str,
    *,
    tag: str | None = None,
    platform: str | None = None,
    all_platforms: bool = False,
    insecure: bool = False,
    ca_file: StrPath | None = None,
    jobs: int | None = None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    transfers: Transfers | None = None,
) -> Image:
    """See :meth:`layercore.Store.pull`."""
    ref = Reference.parse(reference)
    save_tag = check_tag(reference if tag is None else tag)
    if platform is not None:
        parse_platform(platform)
    client = _client(ref, insecure=insecure, ca_file=ca_file, credentials=credentials, retry=retry)
    transfers = transfers or Transfers()
    repo = ref.repository
    origin = str(ref)
    data, media_type, top_digest = client.get_manifest(repo, ref.target)
    # (digest, bytes) of each manifest to store, children first.
    manifests: list[tuple[str, bytes]] = []
    blobs: dict[str, tuple[int, str]] = {}
    if media_type in _INDEX_TYPES:
        index = _json(data, "the image index", origin)
        if all_platforms:
            children = [
                _descriptor(e, "the image index", origin)[0]
                for e in index.get("manifests") or []
                if isinstance(e, dict) and e.get("mediaType", OCI_MANIFEST) in _MANIFEST_TYPES
            ]
        else:
            children = _select(index, platform, origin)
        for child in children:
            child_bytes, _child_type, child_digest = client.get_manifest(repo, child)
            manifests.append((child_digest, child_bytes))
    elif media_type in _MANIFEST_TYPES:
        manifests.append((top_digest, data))
    else:
        raise CorruptImageError(f"is a {media_type}, not an image manifest or index", origin)
    for digest, manifest_bytes in manifests:
        manifest = _json(manifest_bytes, f"manifest {digest}", origin)
        config_digest, config_size, _ = _descriptor(
            manifest.get("config"), f"manifest {digest}", origin
        )
        blobs.setdefault(config_digest, (config_size, "config"))
        for layer in manifest.get("layers") or []:
            layer_digest, layer_size, _ = _descriptor(layer, f"manifest {digest}", origin)
            blobs.setdefault(layer_digest, (layer_size, "layer"))
    location = f"{ref.registry}/{repo}"
    with store.ingest() as ingest:

        def fetch(digest: str, item: BlobTransfer) -> None:
            dest = ingest.new_path("pull")
            item.state = "downloading"
            try:
                size = client.download_blob(repo, digest, dest, counter=item.counter)
            except BaseException:
                item.state = "failed"
                raise
            if size != item.size:
                raise CorruptImageError(
                    f"blob {digest} is {size} bytes, but the manifest says {item.size}", origin
                )
            ingest.add(dest, digest)
            item.state = "downloaded"

        work = []
        for digest, (size, kind) in blobs.items():
            item = transfers.add(digest, size, kind)
            if ingest.find(digest) is not None:
                item.state = "stored"
                continue
            work.append(functools.partial(fetch, digest, item))
        _parallel(jobs or DEFAULT_JOBS, work)
        ingest.commit()
        for digest, manifest_bytes in manifests:
            store.put_blob(manifest_bytes, digest=digest)
        for digest in blobs:
            store.record_location(digest, location)
        if len(manifests) == 1 and media_type not in _INDEX_TYPES:
            image = store.load(top_digest)
            return store.save(image, save_tag)
        if not all_platforms:
            image = store.load(manifests[0][0])
            return store.save(image, save_tag)
        store.save_index(data, save_tag)
    try:
        return store.load(save_tag)
    except ImageNotFoundError:
        return store.load(manifests[0][0])


# -- push -------------------------------------------------------------------------------------


def push(
    store: Store,
    image: Image | str,
    reference: str,
    *,
    insecure: bool = False,
    ca_file: StrPath | None = None,
    jobs: int | None = None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    transfers: Transfers | None = None,
) -> PushResult:
    """See :meth:`layercore.Store.push`."""
    ref = Reference.parse(reference)
    client = _client(ref, insecure=insecure, ca_file=ca_file, credentials=credentials, retry=retry)
    transfers = transfers or Transfers()
    repo = ref.repository
    target = ref.tag or ref.target
    # (digest, bytes, media type) of each manifest to send, children first; the last is the
    # one the reference names.
    manifests: list[tuple[str, bytes, str]] = []
    blob_paths: dict[str, tuple[Path, int, str]] = {}

    def add_image(img: Image) -> None:
        manifests.append((img.digest, img.manifest_bytes, img.manifest_descriptor.media_type))
        config = store.blob_path(img.config_digest)
        if not store.has_blob(img.config_digest):
            raise ImageNotFoundError(f"the config {img.config_digest} is not in the store", config)
        blob_paths.setdefault(img.config_digest, (config, len(img.config_bytes), "config"))
        for layer in img.layers:
            blob_paths.setdefault(layer.digest, (layer.path, layer.size, "layer"))

    if isinstance(image, Image):
        add_image(image)
    else:
        data, media_type, digest = store.read_manifest(image)
        if media_type in _INDEX_TYPES:
            index = _json(data, "the image index", image)
            for entry in index.get("manifests") or []:
                child, _size, child_type = _descriptor(entry, "the image index", image)
                if child_type in ("", *_MANIFEST_TYPES):
                    add_image(store.load(child))
            manifests.append((digest, data, media_type))
        else:
            add_image(store.load(digest))
    top_digest, top_bytes, top_type = manifests[-1]
    if ref.digest is not None and ref.digest != top_digest:
        raise ValueError(
            f"{reference}: the reference's digest is not the image's ({top_digest}); push to "
            "a tag, or to the image's own digest"
        )
    shown = str(ref)
    if client.head_manifest(repo, target) == top_digest:
        results = [
            BlobResult(d, size, kind, "present") for d, (_p, size, kind) in blob_paths.items()
        ]
        for d in blob_paths:
            store.record_location(d, f"{ref.registry}/{repo}")
        return PushResult(shown, top_digest, "present", results)
    location = f"{ref.registry}/{repo}"
    results_by_digest: dict[str, BlobResult] = {}
    lock = threading.Lock()

    def send(digest: str, path: Path, size: int, kind: str, item: BlobTransfer) -> None:
        item.state = "checking"
        try:
            result = _push_blob(client, store, repo, ref.registry, digest, path, size, kind, item)
        except BaseException:
            item.state = "failed"
            raise
        item.state = result.action
        store.record_location(digest, location)
        with lock:
            results_by_digest[digest] = result

    work = []
    for digest, (path, size, kind) in blob_paths.items():
        item = transfers.add(digest, size, kind)
        work.append(functools.partial(send, digest, path, size, kind, item))
    with store.writing():
        _parallel(jobs or DEFAULT_JOBS, work)
        for digest, data, media_type in manifests[:-1]:
            client.put_manifest(repo, digest, data, media_type)
        client.put_manifest(repo, target, top_bytes, top_type)
    results = [results_by_digest[d] for d in blob_paths]
    return PushResult(shown, top_digest, "uploaded", results)


def _push_blob(
    client: RegistryClient,
    store: Store,
    repo: str,
    registry: str,
    digest: str,
    path: Path,
    size: int,
    kind: str,
    item: BlobTransfer,
) -> BlobResult:
    """HEAD, then mount from a repository the store knows holds it, else upload."""
    if client.has_blob(repo, digest, push=True):
        return BlobResult(digest, size, kind, "present")
    upload_at: str | None = None
    prefix = f"{registry}/"
    for known in store.blob_locations(digest):
        if not known.startswith(prefix) or known == f"{registry}/{repo}":
            continue
        source = known.removeprefix(prefix)
        try:
            upload_at = client.mount_blob(repo, digest, source)
        except RegistryError:
            # A refused mount (no pull access there, say) is no reason to fail the push.
            upload_at = None
            continue
        if upload_at is None:
            return BlobResult(digest, size, kind, "mounted", mounted_from=source)
        break
    item.state = "uploading"
    blob = store.open_blob(digest)
    before = item.counter.value
    client.upload_blob(repo, digest, blob, size, location=upload_at, counter=item.counter)
    return BlobResult(digest, size, kind, "uploaded", bytes_sent=item.counter.value - before)


# -- copy -------------------------------------------------------------------------------------


def copy(
    store: Store,
    src: str,
    dest: str,
    *,
    platform: str | None = None,
    all_platforms: bool = False,
    insecure: bool = False,
    ca_file: StrPath | None = None,
    jobs: int | None = None,
    retry: RetryPolicy | None = None,
    transfers: Transfers | None = None,
) -> PushResult:
    """See :meth:`layercore.Store.copy`."""
    Reference.parse(dest)
    pull(
        store,
        src,
        platform=platform,
        all_platforms=all_platforms,
        insecure=insecure,
        ca_file=ca_file,
        jobs=jobs,
        retry=retry,
        transfers=transfers,
    )
    return push(
        store,
        src,
        dest,
        insecure=insecure,
        ca_file=ca_file,
        jobs=jobs,
        retry=retry,
        transfers=transfers,
    )
