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
    sha256_digest,
)
from layercore.imageref import Reference
from layercore.layer import StrPath
from layercore.registry.auth import Credentials, credentials_for
from layercore.registry.client import RegistryClient, RetryPolicy
from layercore.store import check_tag

if TYPE_CHECKING:
    from layercore.store import Ingest, Store

__all__ = [
    "BlobResult",
    "BlobTransfer",
    "PushResult",
    "RemoteBlob",
    "Transfers",
    "client_for",
    "copy",
    "fetch_blob",
    "parse_platform",
    "pull",
    "push",
    "push_artifact",
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
class RemoteBlob:
    """A blob the store does not hold (yet) but a registry repository does: ``location``
    (``host/repository``). A push to that registry mounts it from there without it ever
    reaching this machine; only when that cannot be done is ``fetch()`` called to bring it
    into the store, and it is uploaded from there."""

    location: str
    fetch: Callable[[], object]


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


def client_for(
    ref: Reference,
    *,
    insecure: bool = False,
    ca_file: StrPath | None = None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
) -> RegistryClient:
    """A client for the registry ``ref`` names, with ``credentials`` or else those the Docker
    config holds for it (see :mod:`layercore.registry.auth`)."""
    creds = credentials if credentials is not None else credentials_for(ref.registry)
    return RegistryClient(
        ref.registry,
        api_host=ref.api_host,
        credentials=creds,
        insecure=insecure,
        ca_file=ca_file,
        retry=retry,
    )


def json_object(data: bytes, what: str, origin: str) -> dict[str, Any]:
    """``data`` as a JSON object, else :class:`CorruptImageError` naming ``what`` and
    ``origin``."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
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
    client = client_for(
        ref, insecure=insecure, ca_file=ca_file, credentials=credentials, retry=retry
    )
    transfers = transfers or Transfers()
    repo = ref.repository
    origin = str(ref)
    data, media_type, top_digest = client.get_manifest(repo, ref.target)
    # (digest, bytes) of each manifest to store, children first.
    manifests: list[tuple[str, bytes]] = []
    blobs: dict[str, tuple[int, str]] = {}
    if media_type in _INDEX_TYPES:
        index = json_object(data, "the image index", origin)
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
        manifest = json_object(manifest_bytes, f"manifest {digest}", origin)
        config_digest, config_size, _ = _descriptor(
            manifest.get("config"), f"manifest {digest}", origin
        )
        blobs.setdefault(config_digest, (config_size, "config"))
        for layer in manifest.get("layers") or []:
            layer_digest, layer_size, _ = _descriptor(layer, f"manifest {digest}", origin)
            blobs.setdefault(layer_digest, (layer_size, "layer"))
    location = f"{ref.registry}/{repo}"
    with store.ingest() as ingest:
        work = []
        for digest, (size, kind) in blobs.items():
            item = transfers.add(digest, size, kind)
            if ingest.find(digest) is not None:
                item.state = "stored"
                continue
            work.append(functools.partial(_download, client, ingest, repo, item, origin))
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


def _download(
    client: RegistryClient, ingest: Ingest, repo: str, item: BlobTransfer, origin: str
) -> None:
    """Streams one blob into the batch, hashed on arrival; its size must be the manifest's."""
    dest = ingest.new_path("pull")
    item.state = "downloading"
    try:
        size = client.download_blob(repo, item.digest, dest, counter=item.counter, size=item.size)
    except BaseException:
        item.state = "failed"
        raise
    if size != item.size:
        item.state = "failed"
        raise CorruptImageError(
            f"blob {item.digest} is {size} bytes, but the manifest says {item.size}", origin
        )
    ingest.add(dest, item.digest)
    item.state = "downloaded"


def fetch_blob(
    store: Store,
    client: RegistryClient,
    repository: str,
    digest: str,
    size: int,
    *,
    kind: str = "layer",
    transfers: Transfers | None = None,
) -> Path:
    """One blob of ``repository`` into the store, as :func:`pull` fetches each: nothing moves
    when the store has it; else it streams in hashed on arrival (resumed after a dropped
    connection), must be ``digest`` and ``size`` bytes, and is synced and renamed in only
    then. The repository is remembered as a location of the blob (a later push to the same
    registry mounts it). Returns the blob's path in the store."""
    if store.has_blob(digest):
        return store.blob_path(digest)
    item = (transfers or Transfers()).add(digest, size, kind)
    origin = f"{client.registry}/{repository}@{digest}"
    with store.ingest() as ingest:
        _download(client, ingest, repository, item, origin)
        ingest.commit()
    store.record_location(digest, f"{client.registry}/{repository}")
    return store.blob_path(digest)


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
    client = client_for(
        ref, insecure=insecure, ca_file=ca_file, credentials=credentials, retry=retry
    )
    transfers = transfers or Transfers()
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
            index = json_object(data, "the image index", image)
            for entry in index.get("manifests") or []:
                child, _size, child_type = _descriptor(entry, "the image index", image)
                if child_type in ("", *_MANIFEST_TYPES):
                    add_image(store.load(child))
            manifests.append((digest, data, media_type))
        else:
            add_image(store.load(digest))
    top_digest = manifests[-1][0]
    if ref.digest is not None and ref.digest != top_digest:
        raise ValueError(
            f"{reference}: the reference's digest is not the image's ({top_digest}); push to "
            "a tag, or to the image's own digest"
        )
    return _send(client, store, ref, manifests, blob_paths, jobs, transfers)


def push_artifact(
    store: Store,
    manifest: bytes,
    reference: str,
    *,
    files: Mapping[str, Path] | None = None,
    remote: Mapping[str, RemoteBlob] | None = None,
    insecure: bool = False,
    ca_file: StrPath | None = None,
    jobs: int | None = None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    transfers: Transfers | None = None,
) -> PushResult:
    """Pushes one OCI image manifest that is not an image of the store (an artifact such as
    the build cache, whose config is no image config) to ``reference``, as :func:`push` pushes
    an image: nothing if the registry has the manifest; per blob HEAD, mount from a repository
    of the same registry the store knows holds it, else upload; the manifest last. Its blobs
    come from ``files`` (digest to a file the caller vouches for: the registry checks it on
    upload), from ``remote`` (blobs a repository holds: mounted when it is one of the same
    registry, else fetched and uploaded), or else from the store."""
    ref = Reference.parse(reference)
    origin = str(ref)
    obj = json_object(manifest, "the manifest", origin)
    blob_paths: dict[str, tuple[Path, int, str]] = {}
    described = [("config", obj.get("config"))]
    described += [("layer", layer) for layer in obj.get("layers") or []]
    for kind, descriptor in described:
        digest, size, _media_type = _descriptor(descriptor, "the manifest", origin)
        path = (files or {}).get(digest) or store.blob_path(digest)
        if not path.is_file() and digest not in (remote or {}):
            raise ImageNotFoundError(f"the blob {digest} is not in the store", path)
        blob_paths.setdefault(digest, (path, size, kind))
    client = client_for(
        ref, insecure=insecure, ca_file=ca_file, credentials=credentials, retry=retry
    )
    media_type = obj.get("mediaType")
    manifests = [(sha256_digest(manifest), manifest, str(media_type or OCI_MANIFEST))]
    transfers = transfers or Transfers()
    return _send(client, store, ref, manifests, blob_paths, jobs, transfers, files, remote)


def _send(
    client: RegistryClient,
    store: Store,
    ref: Reference,
    manifests: list[tuple[str, bytes, str]],
    blob_paths: dict[str, tuple[Path, int, str]],
    jobs: int | None,
    transfers: Transfers,
    files: Mapping[str, Path] | None = None,
    remote: Mapping[str, RemoteBlob] | None = None,
) -> PushResult:
    """Sends the blobs (each unless present: mounted or uploaded; from the store, from
    ``files`` or ``remote`` for the digests they have) and then the manifests, children
    first; the last goes under the reference's tag."""
    files, remote = files or {}, remote or {}
    repo = ref.repository
    target = ref.tag or ref.target
    top_digest, top_bytes, top_type = manifests[-1]
    shown = str(ref)
    if client.head_manifest(repo, target) == top_digest:
        results = [
            BlobResult(d, size, kind, "present") for d, (_p, size, kind) in blob_paths.items()
        ]
        for d in blob_paths:
            if store.has_blob(d):
                store.record_location(d, f"{ref.registry}/{repo}")
        return PushResult(shown, top_digest, "present", results)
    location = f"{ref.registry}/{repo}"
    results_by_digest: dict[str, BlobResult] = {}
    lock = threading.Lock()

    def send(digest: str, size: int, kind: str, item: BlobTransfer) -> None:
        item.state = "checking"
        try:
            file, elsewhere = files.get(digest), remote.get(digest)
            result = _push_blob(
                client, store, repo, ref.registry, digest, file, elsewhere, size, kind, item
            )
        except BaseException:
            item.state = "failed"
            raise
        item.state = result.action
        if store.has_blob(digest):
            store.record_location(digest, location)
        with lock:
            results_by_digest[digest] = result

    work = []
    for digest, (_path, size, kind) in blob_paths.items():
        item = transfers.add(digest, size, kind)
        work.append(functools.partial(send, digest, size, kind, item))
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
    file: Path | None,
    elsewhere: RemoteBlob | None,
    size: int,
    kind: str,
    item: BlobTransfer,
) -> BlobResult:
    """HEAD, then mount from a repository the store (or ``elsewhere``) knows holds it, else
    upload: ``file``, or the store's blob (fetched first when ``elsewhere`` has it)."""
    if client.has_blob(repo, digest, push=True):
        return BlobResult(digest, size, kind, "present")
    upload_at: str | None = None
    prefix = f"{registry}/"
    holders = store.blob_locations(digest)
    if elsewhere is not None and elsewhere.location not in holders:
        holders.append(elsewhere.location)
    for known in holders:
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
    if file is None and elsewhere is not None and not store.has_blob(digest):
        elsewhere.fetch()
    # A blob of the store is checked before it is sent; a caller's file goes as it is.
    blob = file if file is not None else store.open_blob(digest)
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
