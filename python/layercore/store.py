"""The embedded image store: a plain OCI image layout directory, safe to share between processes.

```
<root>/oci-layout                {"imageLayoutVersion": "1.0.0"}
<root>/index.json                one entry per image; the tag in org.opencontainers.image.ref.name
<root>/blobs/sha256/<hex>        manifests, configs and layers, each stored once
<root>/.layercore/tmp/           blobs being written (same file system, renamed into blobs/)
<root>/.layercore/stamps/<hex>   the stat of a blob when it was last known good
<root>/.layercore/seen/<hex>     the registry repositories the blob was pulled from or pushed to
<root>/.layercore/index/         merged-view index caches of layer blobs
<root>/.layercore/gc.lock        shared while blobs are added and referenced, exclusive for gc
<root>/.layercore/gc.intent      exclusive while gc waits and runs: new writers queue behind it
<root>/.layercore/index.lock     exclusive while index.json is rewritten
```

Blobs are written to a temp file, fsync'd, checked against their digest and renamed into
``blobs/``; nothing partial is ever visible there. Blobs are immutable, so a blob whose stat is
still the one stamped when it was verified is served without hashing it again, and any other is
re-hashed first. Other tools (skopeo, umoci) read the directory as the OCI layout it is.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from layercore import _core
from layercore.durable import fsync_dir, fsync_path, remove_tree
from layercore.errors import (
    CorruptImageError,
    DigestMismatchError,
    ImageNotFoundError,
    LayerError,
    LayerIOError,
    SourceNotFoundError,
)
from layercore.image import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Image,
    canonical_json,
    host_architecture,
    layer_compression,
    sha256_digest,
)
from layercore.layer import Compression, DirAttrs, Layer, Owner, StrPath
from layercore.layout import PRIVATE, REF_NAME, chains, snapshot_path, tag_of
from layercore.layout import default_root as layout_default_root

if TYPE_CHECKING:
    from layercore.registry.transfer import PushResult, Transfers
    from layercore.runtime.containers import (
        BindMount,
        ContainerChange,
        ContainerInfo,
        Network,
        RunResult,
    )
    from layercore.stack import Stack

__all__ = [
    "REF_NAME",
    "DiskUsage",
    "ExportFormat",
    "GcReport",
    "ImageUsage",
    "Ingest",
    "Store",
    "check_tag",
    "default_root",
]

#: The formats :meth:`Store.export_image` writes (see :mod:`layercore.transport`).
ExportFormat = Literal["oci", "oci-archive", "docker-archive"]
#: The index.json annotation that holds an image's tag.
_TAG = re.compile(r"[A-Za-z0-9]+(?:(?:[-._:@/+]|--)[A-Za-z0-9]+)*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
_INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
_EMPTY_INDEX = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
#: Per store root: how many :meth:`Store.writing` scopes of this process hold the gc lock.
_SHARED: Counter[str] = Counter()
_SHARED_LOCK = threading.Lock()


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`Store.prune_cache` removed: build cache records, and the bytes it freed."""

    records: int
    bytes_freed: int


@dataclass(frozen=True)
class GcReport:
    """What :meth:`Store.gc` removed: the blobs' digests and the bytes it freed."""

    removed: list[str]
    bytes_freed: int


@dataclass(frozen=True)
class ImageUsage:
    """The disk use of one image of the store.

    ``size`` is the sum of its blobs (manifest, config, layers); ``unique_bytes`` those no
    other image uses, ``shared_bytes`` those at least one other image uses too. Several tags of
    one image count as one image."""

    tag: str | None
    digest: str
    size: int
    unique_bytes: int
    shared_bytes: int


@dataclass(frozen=True)
class DiskUsage:
    """The disk use of the store (see :meth:`Store.du`).

    ``total_bytes``: every blob on disk; ``shared_bytes``: blobs used by more than one image,
    each counted once; ``saved_bytes``: what sharing saves, the sum of the image sizes minus the
    bytes of the blobs they reference; ``unreferenced_bytes``: blobs no image reaches (what
    :meth:`Store.gc` would free)."""

    total_bytes: int
    images: list[ImageUsage]
    shared_bytes: int
    saved_bytes: int
    unreferenced_bytes: int


class Ingest:
    """One batch of blobs entering the store (see :meth:`Store.ingest`).

    Each blob is written to a path from :meth:`new_path` by whatever fetches it (a copy out of
    an archive, a registry download), hashed as it is written and checked against the digest
    it was asked for; :meth:`add` then records the file as that blob. Until :meth:`commit`
    nothing is visible in ``blobs/``; :meth:`find` serves staged blobs and stored ones alike,
    so a batch can read what it has fetched so far."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._prefix = f"{os.getpid()}-{os.urandom(8).hex()}-"
        self._paths: list[Path] = []
        self._staged: dict[str, Path] = {}
        self._lock = threading.Lock()

    def new_path(self, name: str) -> Path:
        """A fresh path (nothing is created) in the store's temp area, on the file system of
        ``blobs/``; removed when the batch ends unless committed."""
        with self._lock:
            path = self.store._tmp / f"{self._prefix}{len(self._paths)}-{name}"
            self._paths.append(path)
        return path

    def add(self, path: Path, digest: str) -> Path:
        """Records the complete file ``path`` (from :meth:`new_path`), whose bytes the caller
        has verified to be ``digest``; returns where the blob is to be read from now. A blob
        the batch or the store already has keeps that copy, and ``path`` is removed."""
        _hex(digest)
        with self._lock:
            held = self._staged.get(digest)
            if held is None and not self.store.has_blob(digest):
                self._staged[digest] = path
                return path
        path.unlink(missing_ok=True)
        return held if held is not None else self.store.blob_path(digest)

    def find(self, digest: str) -> Path | None:
        """Where the blob is, staged in this batch or stored; None if neither has it."""
        with self._lock:
            held = self._staged.get(digest)
        if held is not None:
            return held
        return self.store.blob_path(digest) if self.store.has_blob(digest) else None

    def is_staged(self, path: Path) -> bool:
        """Whether ``path`` is a file this batch staged (not yet verified as a layer by the
        store, unlike the blobs it already holds)."""
        with self._lock:
            return path in self._staged.values()

    @property
    def staged(self) -> dict[str, Path]:
        """The blobs staged so far, by digest."""
        with self._lock:
            return dict(self._staged)

    def commit(self) -> None:
        """Syncs every staged blob and renames it into ``blobs/``."""
        with self._lock:
            staged = list(self._staged.items())
        # Written without a per-blob fsync (one write overlaps the writeback of those before
        # it); each is synced here, before it becomes visible.
        for _digest, path in staged:
            with _io_errors(path, "cannot sync the new blob"):
                fsync_path(path)
        for digest, path in staged:
            self.store._install(path, digest)
        with self._lock:
            for digest, _path in staged:
                self._staged.pop(digest, None)

    def discard(self) -> None:
        """Removes every file of the batch that was not committed."""
        with self._lock:
            paths, self._paths = self._paths, []
            self._staged.clear()
        for path in paths:
            path.unlink(missing_ok=True)


def default_root() -> Path:
    """``$LAYERCORE_HOME`` if set, else ``~/.local/share/layercore``."""
    return Path(layout_default_root())


class Store:
    """An OCI image layout on local disk holding images under tags.

    Any number of processes may use one store at once: blobs appear atomically and verified,
    ``index.json`` is rewritten under a lock, and :meth:`gc` waits for writers to finish (and
    they for it) so it never deletes a blob a concurrent :meth:`save` is about to reference.
    """

    root: Path

    def __init__(self, root: StrPath | None = None) -> None:
        """Opens the store at ``root`` (default: :func:`default_root`), creating the layout if
        it is missing; if no process is writing to it, removes the temp files of writes a
        crash cut short."""
        self.root = (default_root() if root is None else Path(root).expanduser()).absolute()
        self._blobs = self.root / "blobs" / "sha256"
        self._private = self.root / PRIVATE
        self._tmp = self._private / "tmp"
        self._stamps = self._private / "stamps"
        self._seen = self._private / "seen"
        self._index_dir = self._private / "index"
        self._records = self._private / "buildcache" / "steps"
        self._index_json = self.root / "index.json"
        # Per thread: how deep in writing() it is (the scope may be left on another thread, as
        # a build's workspace is: the depth is restored on the thread that entered it).
        self._depths: dict[int, int] = {}
        self._depth_lock = threading.Lock()
        with _io_errors(self.root, "cannot create the store"):
            for d in (self._blobs, self._tmp, self._stamps, self._seen, self._index_dir):
                d.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not (layout.exists() and self._index_json.exists()):
            with self.writing(), self._index_lock():
                if not layout.exists():
                    self._write_atomic(layout, canonical_json({"imageLayoutVersion": "1.0.0"}))
                if not self._index_json.exists():
                    self._write_atomic(self._index_json, canonical_json(_EMPTY_INDEX))
        self._remove_leftovers_if_idle()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- blobs ---------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` (``sha256:<hex>``) lives; no I/O."""
        return self._blobs / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is present (not whether it is intact: see :meth:`open_blob`)."""
        return self.blob_path(digest).is_file()

    def put_blob(self, src: StrPath | bytes, *, digest: str | None = None) -> tuple[str, int]:
        """Adds a blob, the file ``src`` (copied) or the bytes ``src``; returns its
        ``(digest, size)``.

        With ``digest`` the bytes must hash to it, else
        :class:`~layercore.errors.DigestMismatchError` and nothing is added. A blob already
        present and known good is neither read nor written again. Note that a blob nothing in
        ``index.json`` references is removed by the next :meth:`gc` unless the caller holds
        :meth:`writing` until it is referenced."""
        if digest is not None:
            _hex(digest)
        with self.writing():
            if isinstance(src, bytes | bytearray | memoryview):
                return self._put_bytes(bytes(src), digest)
            return self._put_file(Path(src), digest)

    def put_layer(self, layer: Layer) -> Layer:
        """Adds the blob of ``layer`` (verified against its digest) unless present; returns the
        layer with ``path`` in the store (same media type, digest and diff_id)."""
        digest, size = self.put_blob(layer.path, digest=layer.digest)
        return replace(layer, path=self.blob_path(digest), size=size)

    def build_layer(
        self,
        src: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: Owner | tuple[int, int] = "root",
        threads: int | None = None,
        under: str | None = None,
        under_dirs: Sequence[DirAttrs] | None = None,
        chmod: int | None = None,
    ) -> Layer:
        """Writes the directory ``src`` as a layer straight into the store (see
        :meth:`Layer.from_dir <layercore.Layer.from_dir>` for the options); an identical blob
        already present is kept and the new one dropped."""
        return self._write_layer(
            lambda out: Layer.from_dir(
                src,
                out,
                compression=compression,
                level=level,
                source_date_epoch=source_date_epoch,
                owner=owner,
                threads=threads,
                under=under,
                under_dirs=under_dirs,
                chmod=chmod,
            )
        )

    def flatten(
        self,
        image: Image | str,
        tag: str | None = None,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        threads: int | None = None,
        source_date_epoch: int | None = None,
        created_by: str | None = None,
    ) -> Image:
        """:meth:`Image.flatten <layercore.Image.flatten>` of ``image`` (an image or a ref), the
        new layer written straight into the store (never copied in afterwards); the result is
        saved under ``tag`` (untagged when None) and returned."""
        if tag is not None:
            check_tag(tag)
        source = self.load(image) if isinstance(image, str) else image
        with self.writing(), self._new_layer() as tmp:
            flat = source.flatten(
                tmp,
                compression=compression,
                level=level,
                threads=threads,
                source_date_epoch=source_date_epoch,
                created_by=created_by,
            )
            self._adopt(tmp, flat.layers[0])
            return self.save(flat, tag)

    def squash(
        self,
        image: Image | str,
        start: int,
        end: int,
        tag: str | None = None,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        threads: int | None = None,
        source_date_epoch: int | None = None,
        created_by: str | None = None,
    ) -> Image:
        """:meth:`Image.squash <layercore.Image.squash>` of ``image`` (an image or a ref), the
        merged layer written straight into the store; saved under ``tag`` (untagged when None)
        and returned."""
        if tag is not None:
            check_tag(tag)
        source = self.load(image) if isinstance(image, str) else image
        with self.writing(), self._new_layer() as tmp:
            squashed = source.squash(
                start,
                end,
                tmp,
                compression=compression,
                level=level,
                threads=threads,
                source_date_epoch=source_date_epoch,
                created_by=created_by,
            )
            self._adopt(tmp, squashed.layers[start])
            return self.save(squashed, tag)

    def open_blob(self, digest: str) -> Path:
        """The path of the blob ``digest``, checked safe to serve.

        A blob whose stat is no longer the one stamped when it was written or last verified is
        re-hashed first: :class:`~layercore.errors.DigestMismatchError` if its bytes are not
        ``digest``, :class:`~layercore.errors.SourceNotFoundError` if it is missing."""
        self._check_blob(digest, force=False)
        return self.blob_path(digest)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Holds off :meth:`gc` (a shared lock on ``.layercore/gc.lock``) while blobs are added
        and referenced. :meth:`save`, :meth:`put_blob` and :meth:`build_layer` take it
        themselves; hold it around several calls (``build_layer`` then ``save``) so that a
        concurrent gc cannot remove a blob in between. Re-entrant, and a scope may be left on
        another thread than the one that entered it."""
        # Each scope holds its own shared lock (on its own open file description), so one
        # that outlives the scope it was opened in, on whatever thread, stays protected.
        ident = threading.get_ident()
        key = os.fspath(self.root)
        with _SHARED_LOCK:
            holding = _SHARED[key] > 0
        if not holding:
            # A gc waiting for the lock holds gc.intent: new writers queue behind it, else a
            # steady stream of overlapping writers would keep it waiting for ever. A process
            # that holds the lock shared already goes straight on (the gc is waiting for it).
            with _flock(self._private / "gc.intent", fcntl.LOCK_SH):
                pass
        with _flock(self._private / "gc.lock", fcntl.LOCK_SH):
            with _SHARED_LOCK:
                _SHARED[key] += 1
            with self._depth_lock:
                self._depths[ident] = self._depths.get(ident, 0) + 1
            try:
                yield
            finally:
                with self._depth_lock:
                    left = self._depths.pop(ident, 1) - 1
                    if left:
                        self._depths[ident] = left
                with _SHARED_LOCK:
                    _SHARED[key] -= 1

    @contextmanager
    def ingest(self) -> Iterator[Ingest]:
        """The one way blobs from outside enter the store (archive import, registry pull, the
        builder): a batch of temp files in the store's file system, each hashed and verified
        as it is written, then synced and renamed into ``blobs/`` by :meth:`Ingest.commit`.
        Holds :meth:`writing` throughout; whatever was not committed is removed on exit, so
        a failed or interrupted batch leaves the store as it was."""
        with self.writing():
            batch = Ingest(self)
            try:
                yield batch
            finally:
                batch.discard()

    # -- where blobs were seen -----------------------------------------------------------------

    def record_location(self, digest: str, repository: str) -> None:
        """Remembers that the registry repository ``repository`` (``host/path``) holds the blob
        ``digest``, so a later push to another repository of that registry can mount it
        rather than upload it. Kept in ``.layercore/seen/`` for as long as the blob is."""
        hex_digest = _hex(digest)
        if repository in self.blob_locations(digest):
            return
        line = (repository.replace("\n", " ") + "\n").encode()
        try:
            # One short O_APPEND write per record: concurrent writers never interleave.
            fd = os.open(
                self._seen / hex_digest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            )
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            # A record only spares an upload; failing to write one is not an error.
            pass

    def blob_locations(self, digest: str) -> list[str]:
        """The registry repositories (``host/path``) known to hold the blob, oldest first."""
        try:
            text = (self._seen / _hex(digest)).read_text(errors="replace")
        except OSError:
            return []
        return list(dict.fromkeys(line for line in text.splitlines() if line))

    # -- images --------------------------------------------------------------------------------

    def save(self, image: Image, tag: str | None = None) -> Image:
        """Stores ``image`` (its layer blobs unless present, config and manifest) and records it
        in ``index.json`` under ``tag``, which moves to it from any other image; untagged, it is
        recorded once. Returns the image with its layers' paths in the store."""
        if tag is not None:
            check_tag(tag)
        with self.writing():
            layers = [self.put_layer(layer) for layer in image.layers]
            self.put_blob(image.config_bytes, digest=image.config_digest)
            self.put_blob(image.manifest_bytes, digest=image.digest)
            self._add_entry(image.manifest_descriptor.to_json(), tag)
        return Image(image.manifest_bytes, image.config_bytes, layers, index_dir=self._index_dir)

    def cache_mount(self, cache_id: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Path:
        """The directory that holds a build's ``RUN --mount=type=cache,id=ID`` between builds,
        in ``.layercore/cache/``: created empty on first use with ``mode`` and owner ``uid``:
        ``gid`` (the owner only when root), then kept as the builds leave it."""
        name = sha256_digest(cache_id.encode()).removeprefix("sha256:")[:32]
        path = self._private / "cache" / name
        if not path.is_dir():
            path.parent.mkdir(exist_ok=True)
            staging = self._tmp_path(".cache.d")
            staging.mkdir()
            os.chmod(staging, mode)
            if os.geteuid() == 0:
                os.chown(staging, uid, gid)
            try:
                staging.rename(path)
            except OSError:
                remove_tree(staging)  # another build made it first
        return path

    @contextmanager
    def cache_lock(self, cache_id: str) -> Iterator[None]:
        """Holds a cache mount for one step (``sharing=locked``): other processes wait."""
        path = self.cache_mount(cache_id)
        with _flock(path.with_name(path.name + ".lock"), fcntl.LOCK_EX):
            yield

    # -- build cache records --------------------------------------------------------------------

    def stat_cache_path(self) -> Path:
        """The build's stat cache of source content digests (see
        :func:`layercore.build.checksum.checksum_sources`)."""
        return self._private / "buildcache" / "stat-cache"

    def cache_record(self, key: str) -> dict[str, Any] | None:
        """The build cache record of the step key ``key`` (``sha256:<hex>``), if there is one
        and the layer it names is in the store; else ``None``."""
        try:
            record = json.loads((self._records / _hex(key)).read_text())
        except (OSError, ValueError):
            return None
        layer = record.get("layer") if isinstance(record, dict) else None
        if layer is not None and not (isinstance(layer, dict) and self.has_blob(layer["digest"])):
            return None
        if not isinstance(record, dict):
            return None
        with suppress(OSError):
            os.utime(self._records / _hex(key))  # last used: prune trims the oldest first
        return record

    def put_cache_record(self, key: str, parent: str, record: Mapping[str, Any]) -> None:
        """Keeps ``record`` (a step's result: its layer, its inputs for explaining a later
        miss) under the step key ``key``, and files it under its ``parent`` key so the steps
        that followed a parent can be found. Written atomically; gc keeps the layers records
        name."""
        self._records.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**record, "key": key, "parent": parent}, sort_keys=True)
        tmp = self._tmp_path(".record")
        tmp.write_text(data)
        tmp.replace(self._records / _hex(key))
        children = self._private / "buildcache" / "children" / _hex(parent)
        children.mkdir(parents=True, exist_ok=True)
        (children / _hex(key)).touch()

    def cache_children(self, parent: str) -> list[dict[str, Any]]:
        """The records of the steps that followed the step key ``parent`` in earlier builds,
        newest first."""
        children = self._private / "buildcache" / "children" / _hex(parent)
        try:
            names = sorted(children.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            return []
        out = []
        for name in names:
            try:
                record = json.loads((self._records / name.name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def prune_cache(
        self,
        *,
        all_records: bool = False,
        keep_storage: int | None = None,
        until: float | None = None,
    ) -> PruneReport:
        """Removes build cache records, least recently used first, then the layers nothing
        uses any more (:meth:`gc`). By default only records whose layer no image in the
        index has; ``all_records`` takes every record. ``until`` (seconds) spares records used more
        recently than that; ``keep_storage`` (bytes) stops once the records left name at most
        that many bytes of layers."""
        found = sorted(self._records_and_layers(), key=lambda item: item[0])
        in_images = set(self._reachable(self._read_index()["manifests"]))
        left = Counter(digest for *_, digest in found)  # records per layer
        sizes = {d: self._blob_size(d) for d in left}
        kept_bytes = sum(sizes.values())
        now = time.time()
        removed = 0
        for used, path, record, digest in found:
            if keep_storage is not None and kept_bytes <= keep_storage:
                break
            if not all_records and digest in in_images:
                continue
            if until is not None and now - used < until:
                continue
            path.unlink(missing_ok=True)
            parent = record.get("parent")
            if isinstance(parent, str) and _DIGEST.fullmatch(parent):
                child = self._private / "buildcache" / "children" / _hex(parent) / path.name
                child.unlink(missing_ok=True)
            removed += 1
            left[digest] -= 1
            if not left[digest]:
                kept_bytes -= sizes[digest]
        report = self.gc()
        return PruneReport(removed, report.bytes_freed)

    def _blob_size(self, digest: str) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except (OSError, ValueError):
            return 0

    def _cached_layers(self) -> set[str]:
        """The layer digests build cache records name (gc keeps them)."""
        return {digest for *_, digest in self._records_and_layers()}

    def _records_and_layers(self) -> Iterator[tuple[float, Path, dict[str, Any], str]]:
        """Each build cache record: when it was last used, its file, itself, its layer."""
        try:
            paths = list(self._records.iterdir())
        except OSError:
            return
        for path in paths:
            try:
                record = json.loads(path.read_text())
                used = path.stat().st_mtime
            except (OSError, ValueError):
                continue
            layer = record.get("layer") if isinstance(record, dict) else None
            digest = layer.get("digest") if isinstance(layer, dict) else None
            if isinstance(digest, str):
                yield used, path, record, digest

    # -- overlay snapshots --------------------------------------------------------------------

    def snapshots(
        self,
        layers: Sequence[Layer],
        *,
        xattrs: Literal["trusted", "user"] = "trusted",
        given: Mapping[str, Path] | None = None,
    ) -> list[Path]:
        """The overlay snapshot of each layer of the stack ``layers`` (bottom first), as
        containerd's overlay snapshotter keeps them: one directory per layer in
        ``.layercore/snapshots/``, named by the chain_id of the stack up to that layer, holding
        that layer alone in overlayfs lower-directory form (:func:`layercore.extract.snapshot`;
        ``xattrs="user"`` for mounts with ``userxattr``, kept apart). A missing one is extracted
        into a temp directory and renamed into place, so a snapshot is there whole or not at
        all, and two processes making the same one keep the first. Mount them as
        ``lowerdir=`` top first. Hold :meth:`writing` while they are in use: :meth:`gc` removes
        the snapshots of layers no image in the index uses. ``given`` maps chain_ids to
        snapshots the caller made itself (a build's COPY layers, linked from its staging),
        used instead of the store's."""
        from layercore.extract import snapshot

        with self.writing():
            places = self._snapshot_places(layers, xattrs, given)
            for layer, final in zip(layers, places, strict=True):
                if final.is_dir():
                    continue
                final.parent.mkdir(exist_ok=True)
                tmp = self._tmp_path(".snapshot.d")
                try:
                    snapshot(layer, tmp, xattrs=xattrs)
                    self._place_snapshot(tmp, final)
                finally:
                    if tmp.exists():
                        remove_tree(tmp)
            return places

    def existing_snapshots(
        self,
        layers: Sequence[Layer],
        *,
        xattrs: Literal["trusted", "user"] = "trusted",
        given: Mapping[str, Path] | None = None,
    ) -> list[Path] | None:
        """The snapshots :meth:`snapshots` would give, if every one of them exists already (none
        is made); else ``None``."""
        places = self._snapshot_places(layers, xattrs, given)
        return places if all(path.is_dir() for path in places) else None

    def _snapshot_places(
        self, layers: Sequence[Layer], xattrs: str, given: Mapping[str, Path] | None
    ) -> list[Path]:
        """Where each layer's snapshot is: ``given`` by its chain_id, else in the store."""
        return [
            given[c] if given and c in given else self._snapshot_path(c, xattrs)
            for c in chains([layer.diff_id for layer in layers])
        ]

    def commit_snapshot(
        self,
        upper: Path,
        layers: Sequence[Layer],
        *,
        xattrs: Literal["trusted", "user"] = "trusted",
    ) -> Path:
        """Keeps the overlay upper directory ``upper`` (in the store's file system; moved, not
        copied) as the snapshot of the top layer of ``layers``, the layer written from it, as
        containerd commits an active snapshot; if that snapshot exists already, ``upper`` is
        removed. Returns the snapshot's path."""
        final = self._snapshot_path(self._chain(layers), xattrs)
        if final.is_dir():
            remove_tree(upper)
            return final
        final.parent.mkdir(exist_ok=True)
        self._place_snapshot(upper, final)
        if upper.exists():
            remove_tree(upper)
        return final

    def overlay_layer(
        self,
        upper: StrPath,
        *,
        lower: Stack | None = None,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: Owner = "root",
        threads: int | None = None,
    ) -> Layer:
        """Writes the overlayfs upper directory ``upper`` as a layer straight into the store
        (see :meth:`Layer.from_overlay_upper <layercore.Layer.from_overlay_upper>`)."""
        return self._write_layer(
            lambda out: Layer.from_overlay_upper(
                upper,
                out,
                compression=compression,
                level=level,
                source_date_epoch=source_date_epoch,
                owner=owner,
                threads=threads,
                lower=lower,
            )
        )

    # -- containers ---------------------------------------------------------------------------

    def containers_dir(self) -> Path:
        """Where the store keeps containers, one directory each (their layout is
        :mod:`layercore.runtime.containers`'s). :meth:`gc` keeps the image and the snapshots
        of every container there."""
        return self._private / "containers"

    def run(
        self,
        image: str,
        cmd: Sequence[str] | None = None,
        *,
        name: str | None = None,
        env: Mapping[str, str] | Sequence[str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        mounts: Sequence[BindMount | str] = (),
        network: Network = "none",
        entrypoint: Sequence[str] | None = None,
        rm: bool = False,
        tty: bool = False,
        interactive: bool = False,
        stdout: Any = None,
        stderr: Any = None,
        stdin: Any = None,
    ) -> RunResult:
        """Runs ``image``'s command (or ``cmd``) in a new container over the image's shared
        snapshots with a thin writable layer, kept in the store under ``name`` (``docker
        run``); returns the exit code and the container. See
        :func:`layercore.runtime.containers.create` and :func:`~layercore.runtime.containers.start`
        for every argument."""
        from layercore.runtime import containers

        return containers.run(
            self,
            image,
            cmd,
            name=name,
            env=env,
            workdir=workdir,
            user=user,
            mounts=mounts,
            network=network,
            entrypoint=entrypoint,
            rm=rm,
            tty=tty,
            interactive=interactive,
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
        )

    def start(
        self,
        name: str,
        *,
        interactive: bool = False,
        stdout: Any = None,
        stderr: Any = None,
        stdin: Any = None,
    ) -> RunResult:
        """Runs the container ``name`` again on its writable layer (``docker start -a``)."""
        from layercore.runtime import containers

        return containers.start(
            self, name, interactive=interactive, stdout=stdout, stderr=stderr, stdin=stdin
        )

    def containers(self) -> list[ContainerInfo]:
        """The store's containers, oldest first (``docker ps -a``)."""
        from layercore.runtime import containers

        return containers.containers(self)

    def container(self, name: str) -> ContainerInfo:
        """The container ``name``; :class:`~layercore.errors.ContainerNotFoundError` if none."""
        from layercore.runtime import containers

        return containers.inspect(self, name)

    def container_changes(self, name: str) -> list[ContainerChange]:
        """What the container ``name`` changed, as ``docker diff`` lists it."""
        from layercore.runtime import containers

        return containers.changes(self, name)

    def commit_container(
        self,
        name: str,
        tag: str | None = None,
        *,
        message: str | None = None,
        author: str | None = None,
    ) -> Image:
        """The container's image with its writable layer on top, saved (``docker commit``)."""
        from layercore.runtime import containers

        return containers.commit(self, name, tag, message=message, author=author)

    def remove_container(self, name: str, *, force: bool = False) -> None:
        """Removes the container ``name`` and its writable layer (``docker rm``)."""
        from layercore.runtime import containers

        containers.remove(self, name, force=force)

    def _container_images(self) -> list[str]:
        """The manifest digests of the containers' images (gc keeps them)."""
        out = []
        with suppress(OSError):
            for entry in os.scandir(self.containers_dir()):
                with suppress(OSError, ValueError, AttributeError):
                    record = json.loads(Path(entry.path, "container.json").read_bytes())
                    digest = record.get("image_digest")
                    if isinstance(digest, str) and _DIGEST.fullmatch(digest):
                        out.append(digest)
        return out

    @staticmethod
    def _chain(layers: Sequence[Layer]) -> str:
        return _core.chain_id([layer.diff_id for layer in layers])

    def _snapshot_path(self, chain: str, xattrs: str) -> Path:
        return Path(snapshot_path(os.fspath(self.root), _hex(chain), xattrs))

    @staticmethod
    def _place_snapshot(tmp: Path, final: Path) -> None:
        try:
            tmp.rename(final)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise

    def stack(self, layers: Sequence[Layer]) -> Stack:
        """The merged view of ``layers`` with their indexes cached in the store, as a loaded
        image's are: each layer is read once to index it, however often it is looked at."""
        from layercore.stack import Stack

        return Stack(layers, save_index=True, index_dir=self._index_dir)

    def attach(self, image: Image) -> Image:
        """``image`` with its merged view's layer indexes cached in the store, as a loaded
        image's are: for an image made of the store's layers but not saved yet (a build's
        intermediate images), so each layer is indexed once however often it is looked at."""
        return Image(
            image.manifest_bytes, image.config_bytes, image.layers, index_dir=self._index_dir
        )

    def load(self, ref: str) -> Image:
        """The image under the tag ``ref``, or with the manifest digest ``ref`` (``sha256:<hex>``,
        or a prefix of at least 12 hex digits that only one image of the index has).

        The manifest and config are read and checked against their digests every time; the
        layers are described from them without being read. An image index gives its manifest
        for linux and this machine's architecture. Raises
        :class:`~layercore.errors.ImageNotFoundError` for an unknown ref,
        :class:`~layercore.errors.DigestMismatchError` for a damaged manifest or config and
        :class:`~layercore.errors.CorruptImageError` for an invalid one."""
        return self._load_entry(self._resolve(ref), ref)

    def read_manifest(self, ref: str) -> tuple[bytes, str, str]:
        """The manifest or image index ``ref`` names (a tag or digest, as :meth:`load` takes),
        exactly as stored: ``(bytes, media type, digest)``. Unlike :meth:`load` it does not
        resolve an index to one platform; a push sends what this returns."""
        entry = self._resolve(ref)
        digest: str = entry["digest"]
        data = self._read_blob(digest, f"manifest of {ref}")
        manifest = _parse(data, self.blob_path(digest), f"manifest of {ref}")
        media_type = manifest.get("mediaType", entry.get("mediaType"))
        if not isinstance(media_type, str):
            media_type = OCI_INDEX if "manifests" in manifest else OCI_MANIFEST
        return data, media_type, digest

    def save_index(self, index_bytes: bytes, tag: str | None = None) -> str:
        """Records an image index (a multi-platform image) whose child manifests, configs and
        layers are all in the store already, under ``tag``; returns its digest. The bytes are
        kept exactly. :meth:`load` of the tag gives this machine's platform, :meth:`read_manifest`
        the index itself. Raises :class:`~layercore.errors.CorruptImageError` if it is not an
        index or a blob it reaches is missing."""
        if tag is not None:
            check_tag(tag)
        digest = sha256_digest(index_bytes)
        index = _parse(index_bytes, self.blob_path(digest), "image index")
        media_type = index.get("mediaType", OCI_INDEX)
        if media_type not in _INDEX_TYPES or not isinstance(index.get("manifests"), list):
            raise CorruptImageError("not an image index", self.blob_path(digest))
        with self.writing():
            for child in index["manifests"]:
                child_digest = child.get("digest") if isinstance(child, dict) else None
                if not (isinstance(child_digest, str) and self.has_blob(child_digest)):
                    raise CorruptImageError(
                        f"the index names manifest {child_digest}, which is not in the store",
                        self.blob_path(digest),
                    )
                child_type = child.get("mediaType", OCI_MANIFEST)
                if child_type in _MANIFEST_TYPES:
                    for layer in self.load(child_digest).layers:
                        if not self.has_blob(layer.digest):
                            raise CorruptImageError(
                                f"manifest {child_digest} names layer {layer.digest}, which "
                                "is not in the store",
                                self.blob_path(digest),
                            )
            self.put_blob(index_bytes, digest=digest)
            descriptor = Descriptor(media_type, digest, len(index_bytes))
            self._add_entry(descriptor.to_json(), tag)
        return digest

    def tags(self) -> dict[str, str]:
        """Every tag and the manifest digest it names, sorted by tag."""
        tags = {}
        for entry in self._read_index()["manifests"]:
            tag = tag_of(entry)
            if tag is not None:
                tags[tag] = entry["digest"]
        return dict(sorted(tags.items()))

    def images(self) -> list[tuple[str | None, Image]]:
        """Every image of ``index.json`` with its tag (None when untagged), in index order."""
        return [
            (tag_of(entry), self._load_entry(entry, entry["digest"]))
            for entry in self._read_index()["manifests"]
        ]

    def tag(self, ref: str, new_tag: str) -> None:
        """Gives the image ``ref`` (as :meth:`load` takes it) the tag ``new_tag``, moving it from
        any other image."""
        check_tag(new_tag)
        with self.writing():
            entry = self._resolve(ref)
            if "mediaType" not in entry:
                entry["mediaType"] = self._media_type_of(entry["digest"])
            descriptor = {k: entry[k] for k in ("mediaType", "digest", "size")}
            self._add_entry(descriptor, new_tag)

    def remove(self, tag: str) -> None:
        """Drops the tag ``tag`` (or, given a digest or digest prefix, every entry of that
        image); the blobs stay until :meth:`gc`. :class:`~layercore.errors.ImageNotFoundError`
        if there is no such tag or image."""
        with self.writing(), self._index_update() as index:
            entries = index["manifests"]
            kept = [e for e in entries if tag_of(e) != tag]
            if len(kept) == len(entries):
                digest = self._match_digest(tag, entries)
                if digest is None:
                    raise ImageNotFoundError(f"no tag or image {tag!r} in the store", self.root)
                kept = [e for e in entries if e["digest"] != digest]
            index["manifests"] = kept

    def gc(self) -> GcReport:
        """Deletes every blob that no entry of ``index.json`` reaches (image index -> manifests
        -> config and layers), with its stamp and index cache, and the leftovers of interrupted
        writes. Waits for concurrent writers (see :meth:`writing`) and holds them off while it
        runs. Raises (deleting nothing) if a reachable manifest is missing, damaged or invalid,
        since the blobs it names could not be known."""
        if self._depths.get(threading.get_ident(), 0):
            raise RuntimeError("Store.gc() cannot run inside Store.writing() in the same thread")
        with (
            _flock(self._private / "gc.intent", fcntl.LOCK_EX),
            _flock(self._private / "gc.lock", fcntl.LOCK_EX),
        ):
            configs: set[str] = set()
            roots = self._read_index()["manifests"]
            roots += [{"digest": d} for d in self._container_images()]
            reachable = self._reachable(roots, configs=configs)
            for digest in self._cached_layers():
                reachable.setdefault(digest, 0)
            removed: list[str] = []
            freed = 0
            for name, size in _files(self._blobs):
                if not _HEX.fullmatch(name) or f"sha256:{name}" in reachable:
                    continue
                with _io_errors(self._blobs / name, "cannot remove unreferenced blob"):
                    (self._blobs / name).unlink(missing_ok=True)
                self._forget(name)
                removed.append(f"sha256:{name}")
                freed += size
            for name, _size in _files(self._stamps):
                if _HEX.fullmatch(name) and not (self._blobs / name).exists():
                    self._forget(name)
            freed += self._remove_leftovers()
            freed += self._gc_snapshots(configs)
            if removed:
                fsync_dir(self._blobs)
        return GcReport(sorted(removed), freed)

    def _remove_leftovers_if_idle(self) -> None:
        """At open: :meth:`_remove_leftovers` if no process is writing to the store now (the gc
        lock is free at once); else the next open or :meth:`gc` does it. Best effort: a store
        this process may not lock or change (read-only, another user's) opens as it is."""
        # BlockingIOError (an OSError) when a writer holds the lock.
        with suppress(OSError), _flock(self._private / "gc.lock", fcntl.LOCK_EX | fcntl.LOCK_NB):
            self._remove_leftovers()

    def _remove_leftovers(self) -> int:
        """Removes what writes cut short by a crash left behind: everything in ``tmp/`` (a
        build's read-only stage view unmounted first), the temp files of stamps and of the
        build's stat cache, containers half made or half removed, and index-cache temp files an
        hour old (readers write those without the gc lock, so a younger one may be in use). Only
        with the gc lock held exclusive: every writer holds it shared, so what is left in those
        places belongs to a process that died. Returns the bytes freed."""
        freed = 0
        for name, size in _files(self._tmp):
            (self._tmp / name).unlink(missing_ok=True)
            freed += size
        leftovers = list(self._tmp.glob("*.d"))
        if leftovers:
            _unmount_below(self._tmp)
        for leftover in leftovers:
            # One that cannot go now (a sandbox of the dead process still dying in it) does
            # not keep the others: the next open or gc removes it.
            with suppress(OSError):
                remove_tree(leftover)
        for name, size in _files(self._stamps):
            if name.endswith(".tmp"):
                (self._stamps / name).unlink(missing_ok=True)
                freed += size
        # A container being made (``.NAME....tmp``) or removed (``.NAME....rm``), and the temp
        # files of containers' records.
        containers = self.containers_dir()
        for leftover in [*containers.glob(".*.tmp"), *containers.glob(".*.rm")]:
            freed += _tree_size(leftover)
            remove_tree(leftover)
        for leftover in containers.glob("*/.*.tmp"):
            leftover.unlink(missing_ok=True)
        buildcache = self._private / "buildcache"
        for name, size in _files(buildcache):
            if name.startswith(".tmp"):
                (buildcache / name).unlink(missing_ok=True)
                freed += size
        stale = time.time() - 3600
        for name, size in _files(self._index_dir):
            path = self._index_dir / name
            with suppress(OSError):
                if name.startswith(".lcidx-") and path.stat().st_mtime < stale:
                    path.unlink()
                    freed += size
        return freed

    def _gc_snapshots(self, configs: Iterable[str]) -> int:
        """Removes the snapshots of stacks that no image config in ``configs`` has (see
        :meth:`snapshots`); returns the bytes freed."""
        root = self._private / "snapshots"
        if not root.is_dir():
            return 0
        keep: set[str] = set()
        for digest in configs:
            try:
                config = json.loads(self._read_blob(digest, "config"))
                diff_ids = config["rootfs"]["diff_ids"]
            except (LayerError, ValueError, KeyError, TypeError):
                continue  # not an image config (an artifact's)
            if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
                continue
            with suppress(ValueError):
                keep.update(_hex(chain) for chain in chains(diff_ids))
        freed = 0
        for entry in root.iterdir():
            if entry.name.removesuffix(".user") in keep:
                continue
            freed += _tree_size(entry)
            remove_tree(entry)
        return freed

    def du(self) -> DiskUsage:
        """How the store's bytes are used: per image, and what sharing blobs saves."""
        entries = self._read_index()["manifests"]
        on_disk = dict(_files(self._blobs))
        blobs_of: dict[str, dict[str, int]] = {}
        for entry in entries:
            if entry["digest"] not in blobs_of:
                reached = self._reachable([entry])
                blobs_of[entry["digest"]] = {
                    d: on_disk.get(_hex(d), size) for d, size in reached.items()
                }
        users: dict[str, int] = {}
        for blobs in blobs_of.values():
            for d in blobs:
                users[d] = users.get(d, 0) + 1
        images = []
        for entry in entries:
            blobs = blobs_of[entry["digest"]]
            size = sum(blobs.values())
            unique = sum(s for d, s in blobs.items() if users[d] == 1)
            images.append(ImageUsage(tag_of(entry), entry["digest"], size, unique, size - unique))
        referenced: dict[str, int] = {}
        for blobs in blobs_of.values():
            referenced.update(blobs)
        image_bytes = sum(sum(blobs.values()) for blobs in blobs_of.values())
        return DiskUsage(
            total_bytes=sum(on_disk.values()),
            images=images,
            shared_bytes=sum(s for d, s in referenced.items() if users[d] > 1),
            saved_bytes=image_bytes - sum(referenced.values()),
            unreferenced_bytes=sum(
                s for name, s in on_disk.items() if f"sha256:{name}" not in referenced
            ),
        )

    def verify(self, ref: str | None = None) -> list[str]:
        """Re-hashes the blobs of the image ``ref``, or every blob of the store and every blob
        an image references; returns the digests that are damaged or missing (sorted), and
        raises nothing for them. Good blobs get a fresh stamp."""
        damaged: set[str] = set()
        if ref is None:
            entries = self._read_index()["manifests"]
            digests = {f"sha256:{name}" for name, _ in _files(self._blobs) if _HEX.fullmatch(name)}
        else:
            entries = [self._resolve(ref)]
            digests = set()
        digests.update(self._reachable(entries, damaged=damaged))
        for digest in sorted(digests - damaged):
            try:
                self._check_blob(digest, force=True)
            except (DigestMismatchError, SourceNotFoundError):
                damaged.add(digest)
        return sorted(damaged)

    def export_image(
        self,
        ref: str,
        dest: StrPath,
        format: ExportFormat = "oci",
        *,
        name: str | None = None,
        docker_layout: Literal["oci", "legacy"] = "oci",
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Writes the image ``ref`` to ``dest`` as an OCI layout, an OCI archive or a
        ``docker save`` archive, in Docker >= 25's form or (``docker_layout="legacy"``) the
        one before it (see :func:`layercore.transport.export_image`). ``progress`` is called
        with ``(bytes written, bytes in all)`` as blobs are copied."""
        from layercore import transport

        return transport.export_image(
            self, ref, dest, format, name=name, docker_layout=docker_layout, progress=progress
        )

    def import_image(
        self,
        src: StrPath,
        tag: str | None = None,
        *,
        name: str | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Image:
        """Reads an image from an OCI layout, an OCI archive or a ``docker save`` archive into
        the store (see :func:`layercore.transport.import_image`). ``progress`` is called with
        ``(bytes copied, bytes in all or None)`` as blobs are copied."""
        from layercore import transport

        return transport.import_image(self, src, tag, name=name, progress=progress)

    # -- registries (layercore.registry does the work; the store's own code never uses it) ---

    def pull(
        self,
        reference: str,
        *,
        tag: str | None = None,
        platform: str | None = None,
        all_platforms: bool = False,
        insecure: bool = False,
        ca_file: StrPath | None = None,
        jobs: int | None = None,
        transfers: Transfers | None = None,
    ) -> Image:
        """Pulls ``reference`` (``[host[:port]/]repo[:tag|@sha256:...]``, Docker's defaults:
        ``docker.io``, ``library/``, ``latest``) from its registry and saves it under ``tag``
        (default: the reference as written). Blobs the store has are not fetched; the others
        stream in, ``jobs`` at once (default 4), hashed on arrival, resumed after a dropped
        connection, and verified before they are stored. An image index resolves to linux on
        this machine's architecture or to ``platform`` (``"linux/arm64"``, ``"linux/arm/v7"``);
        ``all_platforms`` keeps the index and every child. Credentials come from the Docker
        config (see :mod:`layercore.registry.auth`). ``insecure`` allows plain HTTP and
        unverified TLS; ``ca_file`` adds a CA (default: the ``certs.d`` directories).
        ``transfers`` (a :class:`layercore.registry.Transfers`) shows progress as it runs.
        Raises :class:`~layercore.errors.RegistryError` and its kinds, and
        :class:`~layercore.errors.DigestMismatchError` for wrong bytes; a failed pull stores
        and tags nothing."""
        from layercore.registry import transfer

        return transfer.pull(
            self,
            reference,
            tag=tag,
            platform=platform,
            all_platforms=all_platforms,
            insecure=insecure,
            ca_file=ca_file,
            jobs=jobs,
            transfers=transfers,
        )

    def push(
        self,
        image: Image | str,
        reference: str,
        *,
        insecure: bool = False,
        ca_file: StrPath | None = None,
        jobs: int | None = None,
        transfers: Transfers | None = None,
    ) -> PushResult:
        """Pushes ``image`` (an :class:`Image`, or a tag or digest of the store, which may name
        an image index) to ``reference``. Nothing is sent if the registry has the manifest
        already; each blob the repository has is skipped, one another repository of that
        registry is known to hold is mounted, and the rest are uploaded, ``jobs`` at once
        (big ones in chunks, resumed after a dropped connection where the registry allows).
        Returns a :class:`layercore.registry.PushResult` saying what happened to each blob."""
        from layercore.registry import transfer

        return transfer.push(
            self,
            image,
            reference,
            insecure=insecure,
            ca_file=ca_file,
            jobs=jobs,
            transfers=transfers,
        )

    def copy(
        self,
        src: str,
        dest: str,
        *,
        platform: str | None = None,
        all_platforms: bool = False,
        insecure: bool = False,
        ca_file: StrPath | None = None,
        jobs: int | None = None,
        transfers: Transfers | None = None,
    ) -> PushResult:
        """Copies ``src`` to ``dest`` (both registry references) through the store: a
        :meth:`pull` (blobs the store holds are not downloaded) then a :meth:`push` (blobs on
        the destination registry are mounted, not uploaded)."""
        from layercore.registry import transfer

        return transfer.copy(
            self,
            src,
            dest,
            platform=platform,
            all_platforms=all_platforms,
            insecure=insecure,
            ca_file=ca_file,
            jobs=jobs,
            transfers=transfers,
        )

    # -- blob internals ------------------------------------------------------------------------

    def _put_bytes(self, data: bytes, digest: str | None) -> tuple[str, int]:
        actual = sha256_digest(data)
        if digest is not None and actual != digest:
            raise DigestMismatchError(
                f"the bytes given for blob {digest} hash to {actual}",
                self.blob_path(digest),
                what="digest",
                expected=digest,
                actual=actual,
            )
        if self._known_good(actual):
            return actual, len(data)
        tmp = self._tmp_path(".blob")
        try:
            with _io_errors(tmp, "cannot write a new blob"):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    os.fchmod(fd, 0o644)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._install(tmp, actual)
        finally:
            tmp.unlink(missing_ok=True)
        return actual, len(data)

    def _put_file(self, src: Path, digest: str | None) -> tuple[str, int]:
        if digest is not None and self._known_good(digest):
            return digest, self.blob_path(digest).stat().st_size
        tmp = self._tmp_path(".blob")
        try:
            actual, size = _core.copy_blob(os.fspath(src), os.fspath(tmp), expected_digest=digest)
            assert actual is not None
            self._install(tmp, actual)
        finally:
            tmp.unlink(missing_ok=True)
        return actual, size

    @contextmanager
    def workspace(self, name: str = "work") -> Iterator[Path]:
        """A new empty directory in the store's file system for a build step's scratch files
        (a staged copy, a root filesystem), removed with everything in it on exit; one left by
        a process that died is removed by :meth:`gc`. Holds :meth:`writing` throughout."""
        with self.writing():
            path = self._tmp_path(f".{name}.d")
            path.mkdir()
            try:
                yield path
            finally:
                remove_tree(path)

    def diff_layer(
        self,
        lower: StrPath | Stack,
        upper: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        source_date_epoch: int | None = None,
        owner: Owner = "root",
        threads: int | None = None,
    ) -> Layer:
        """Writes the changeset from ``lower`` to the directory ``upper`` as a layer straight
        into the store (see :meth:`Layer.from_diff <layercore.Layer.from_diff>`)."""
        return self._write_layer(
            lambda out: Layer.from_diff(
                lower,
                upper,
                out,
                compression=compression,
                level=level,
                source_date_epoch=source_date_epoch,
                owner=owner,
                threads=threads,
            )
        )

    def _write_layer(self, write: Callable[[Path], Layer]) -> Layer:
        """The layer ``write`` makes at a temp path of the store (layercore's writer computes
        the digest as it writes), moved into ``blobs/``."""
        with self.writing(), self._new_layer() as tmp:
            return self._adopt(tmp, write(tmp))

    @contextmanager
    def _new_layer(self) -> Iterator[Path]:
        """A temp path in the store for a layer that layercore's writer is about to produce (it
        computes the digest as it writes); removed unless :meth:`_adopt` moved it in."""
        tmp = self._tmp_path(".layer")
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def _adopt(self, tmp: Path, layer: Layer) -> Layer:
        """Moves the layer just written at ``tmp`` (its digest computed while writing) into
        ``blobs/``; an identical blob already there is kept."""
        with _io_errors(tmp, "cannot sync the new layer"):
            fsync_path(tmp)
        return replace(layer, path=self._install(tmp, layer.digest))

    def _install(self, tmp: Path, digest: str) -> Path:
        """Renames the complete, verified, synced file ``tmp`` into ``blobs/`` as ``digest``,
        unless a blob known to be good is already there."""
        final = self.blob_path(digest)
        if self._known_good(digest):
            return final
        with _io_errors(final, "cannot add blob"):
            os.rename(tmp, final)
            fsync_dir(self._blobs)
            self._write_stamp(_hex(digest), os.stat(final))
        return final

    def _known_good(self, digest: str) -> bool:
        """Present, and its stat still the one stamped when it was verified."""
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return self._stamp_matches(_hex(digest), st)

    def _check_blob(self, digest: str, *, force: bool) -> os.stat_result:
        """Stat of the blob ``digest`` once known good: re-hashed unless (``force`` is off and)
        its stamp matches. Retries when the blob is replaced while being hashed (a concurrent
        writer renaming an identical blob over it)."""
        path = self.blob_path(digest)
        for _attempt in range(3):
            try:
                before = os.stat(path)
            except FileNotFoundError:
                raise SourceNotFoundError(f"blob {digest} is not in the store", path) from None
            if not force and self._stamp_matches(_hex(digest), before):
                return before
            actual = _core.sha256_file(os.fspath(path))
            after = os.stat(path)
            if _stat_key(after) != _stat_key(before):
                continue
            if actual != digest:
                raise DigestMismatchError(
                    f"blob is damaged: its bytes hash to {actual}, not to its name {digest}",
                    path,
                    what="digest",
                    expected=digest,
                    actual=actual,
                )
            self._write_stamp(_hex(digest), after)
            return after
        raise LayerIOError(f"blob {digest} kept changing while it was verified", path)

    def _read_blob(self, digest: str, what: str) -> bytes:
        """The bytes of a small blob (manifest, config, index), hashed every time."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SourceNotFoundError(f"{what} blob {digest} is not in the store", path) from None
        except OSError as e:
            raise LayerIOError(f"cannot read {what} blob: {e.strerror}", path) from None
        actual = sha256_digest(data)
        if actual != digest:
            raise DigestMismatchError(
                f"{what} blob is damaged: its bytes hash to {actual}, not to its name {digest}",
                path,
                what="digest",
                expected=digest,
                actual=actual,
            )
        return data

    def _stamp_matches(self, hex_digest: str, st: os.stat_result) -> bool:
        try:
            recorded = (self._stamps / hex_digest).read_text()
        except OSError:
            return False
        return recorded == _stamp_text(st)

    def _write_stamp(self, hex_digest: str, st: os.stat_result) -> None:
        """Records a verified blob's stat. A stamp only spares a re-hash, so failing to write
        one is not an error; its temp file lives beside it, out of gc's way."""
        if self._stamp_matches(hex_digest, st):
            return  # verify() re-hashes blobs whose stamps stand: no rewrite for each
        stamp = self._stamps / hex_digest
        tmp = stamp.with_name(f"{hex_digest}.{os.urandom(6).hex()}.tmp")
        try:
            tmp.write_text(_stamp_text(st))
            os.replace(tmp, stamp)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _forget(self, hex_digest: str) -> None:
        """Removes what the store keeps about a blob besides the blob itself."""
        (self._stamps / hex_digest).unlink(missing_ok=True)
        (self._seen / hex_digest).unlink(missing_ok=True)
        for cache in self._index_dir.glob(f"{hex_digest}*"):
            cache.unlink(missing_ok=True)

    def _tmp_path(self, suffix: str) -> Path:
        return self._tmp / f"{os.getpid()}-{os.urandom(8).hex()}{suffix}"

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = self._tmp_path(".json")
        try:
            with _io_errors(path, "cannot write"):
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
                fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    # -- index internals -----------------------------------------------------------------------

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        with _flock(self._private / "index.lock", fcntl.LOCK_EX):
            yield

    @contextmanager
    def _index_update(self) -> Iterator[dict[str, Any]]:
        """index.json read, changed by the caller and written back atomically, under the lock;
        nothing is written if the caller raises."""
        with self._index_lock():
            index = self._read_index()
            yield index
            self._write_atomic(self._index_json, canonical_json(index))

    def _read_index(self) -> dict[str, Any]:
        path = self._index_json
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptImageError("the store's index.json is missing", path) from None
        try:
            index = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CorruptImageError(f"not valid JSON: {e}", path) from None
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise CorruptImageError("not an image index: no 'manifests' list", path)
        for entry in manifests:
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("digest"), str)
                or not _DIGEST.fullmatch(entry["digest"])
            ):
                raise CorruptImageError(f"entry without a sha256 digest: {entry!r}", path)
        assert isinstance(index, dict)
        return index

    def _add_entry(self, descriptor: dict[str, Any], tag: str | None) -> None:
        """Records an image in index.json: a tag moves to it; untagged, it is added once."""
        digest = descriptor["digest"]
        with self._index_update() as index:
            entries: list[dict[str, Any]] = index["manifests"]
            if tag is None:
                if any(e["digest"] == digest for e in entries):
                    return
                entries.append(descriptor)
                return
            index["manifests"] = [
                e
                for e in entries
                if tag_of(e) != tag and not (e["digest"] == digest and tag_of(e) is None)
            ]
            index["manifests"].append({**descriptor, "annotations": {REF_NAME: tag}})

    def _resolve(self, ref: str) -> dict[str, Any]:
        """The index.json entry ``ref`` names (a copy); a full digest of a manifest that is in
        the store but not in the index gives an entry without media type."""
        entries = self._read_index()["manifests"]
        if _DIGEST.fullmatch(ref):
            for entry in entries:
                if entry["digest"] == ref:
                    return dict(entry)
            if self.has_blob(ref):
                return {"digest": ref, "size": self.blob_path(ref).stat().st_size}
        for entry in entries:
            if tag_of(entry) == ref:
                return dict(entry)
        digest = self._match_digest(ref, entries)
        if digest is not None:
            return dict(next(e for e in entries if e["digest"] == digest))
        raise ImageNotFoundError(f"no image {ref!r} in the store", self.root)

    def _match_digest(self, ref: str, entries: list[dict[str, Any]]) -> str | None:
        match = _PREFIX.fullmatch(ref)
        if match is None:
            return None
        prefix = "sha256:" + match.group(1)
        found = sorted({e["digest"] for e in entries if e["digest"].startswith(prefix)})
        if len(found) > 1:
            raise ImageNotFoundError(
                f"{ref!r} is ambiguous: it starts {', '.join(found)}", self.root
            )
        return found[0] if found else None

    def _media_type_of(self, digest: str) -> str:
        obj = _parse(self._read_blob(digest, "manifest"), self.blob_path(digest), "manifest")
        media_type = obj.get("mediaType", OCI_MANIFEST)
        return media_type if isinstance(media_type, str) else OCI_MANIFEST

    def _load_entry(self, entry: Mapping[str, Any], ref: str) -> Image:
        digest: str = entry["digest"]
        path = self.blob_path(digest)
        data = self._read_blob(digest, f"manifest of {ref}")
        manifest = _parse(data, path, f"manifest of {ref}")
        media_type = manifest.get("mediaType", entry.get("mediaType", OCI_MANIFEST))
        if media_type in _INDEX_TYPES:
            return self._load_entry(self._platform_manifest(manifest, path, ref), ref)
        try:
            config_desc = Descriptor.from_json(manifest.get("config") or {})
            _hex(config_desc.digest)
            descriptors = [Descriptor.from_json(d) for d in manifest.get("layers") or []]
            for d in descriptors:
                _hex(d.digest)
        except (CorruptImageError, ValueError) as e:
            raise CorruptImageError(f"invalid manifest of {ref}: {e}", path) from None
        config_path = self.blob_path(config_desc.digest)
        config_bytes = self._read_blob(config_desc.digest, f"config of {ref}")
        config = _parse(config_bytes, config_path, f"config of {ref}")
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            diff_ids = []
        layers = [
            Layer(
                path=self.blob_path(d.digest),
                media_type=d.media_type,
                digest=d.digest,
                diff_id=str(diff_ids[i]) if i < len(diff_ids) else "",
                size=d.size,
                uncompressed_size=None,
                compression=layer_compression(d.media_type),
            )
            for i, d in enumerate(descriptors)
        ]
        try:
            return Image(data, config_bytes, layers, index_dir=self._index_dir)
        except CorruptImageError as e:
            raise CorruptImageError(f"image {ref}: {e.message}", path) from None

    def _platform_manifest(self, index: dict[str, Any], path: Path, ref: str) -> dict[str, Any]:
        """The manifest of an image index for linux on this machine's architecture."""
        arch, variant = host_architecture()
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise CorruptImageError(f"image index of {ref} has no 'manifests' list", path)
        platforms = []
        for entry in manifests:
            platform = entry.get("platform") if isinstance(entry, dict) else None
            if not isinstance(platform, dict):
                continue
            os_arch = f"{platform.get('os')}/{platform.get('architecture')}"
            platforms.append(os_arch + (f"/{platform['variant']}" if "variant" in platform else ""))
            if (
                os_arch == f"linux/{arch}"
                and (variant is None or platform.get("variant") in (None, variant))
                and isinstance(entry.get("digest"), str)
                and _DIGEST.fullmatch(entry["digest"])
            ):
                return dict(entry)
        raise ImageNotFoundError(
            f"{ref} is a multi-platform image without a manifest for linux/{arch} "
            f"(it has: {', '.join(platforms) or 'no platforms'})",
            self.root,
        )

    def _reachable(
        self,
        roots: Iterable[Mapping[str, Any]],
        *,
        damaged: set[str] | None = None,
        configs: set[str] | None = None,
    ) -> dict[str, int]:
        """Every blob reachable from the descriptors ``roots`` -> its size per its descriptor.

        Manifests and indexes are read (and hashed) to follow them. Without ``damaged`` a
        missing, damaged or invalid one raises; with it, its digest is added there and it is
        not followed. The manifests' config digests are added to ``configs``."""
        found: dict[str, int] = {}
        queue: list[Mapping[str, Any]] = list(roots)
        while queue:
            desc = queue.pop()
            digest = desc.get("digest")
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or digest in found:
                continue
            size = desc.get("size")
            found[digest] = size if isinstance(size, int) else 0
            media_type = desc.get("mediaType")
            if media_type is not None and media_type not in _MANIFEST_TYPES + _INDEX_TYPES:
                continue
            try:
                obj = _parse(self._read_blob(digest, "manifest"), self.blob_path(digest), "blob")
            except LayerError:
                if damaged is None:
                    raise
                damaged.add(digest)
                continue
            kind = obj.get("mediaType", media_type)
            if kind in _INDEX_TYPES or (kind is None and "manifests" in obj):
                children = obj.get("manifests")
            else:
                config = obj.get("config")
                children = [config, *(obj.get("layers") or [])]
                if configs is not None and isinstance(config, dict):
                    configs.add(str(config.get("digest")))
            if isinstance(children, list):
                queue.extend(c for c in children if isinstance(c, dict))
        return found


def check_tag(tag: str) -> str:
    """``tag`` if it is a valid OCI ref name (``app:1.0``, ``example.com/app:v1``), else
    ``ValueError`` naming it. A digest (``sha256:<hex>``) is not a tag."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag) or _DIGEST.fullmatch(tag):
        raise ValueError(
            f"invalid tag {tag!r}: a tag is letters and digits joined by single '-._:@/+' "
            "characters or '--' (for example app:1.0 or example.com/app:v1)"
        )
    return tag


def _hex(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256 digest (sha256:<64 lowercase hex>): {digest!r}")
    return digest[7:]


def _parse(data: bytes, path: Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptImageError(f"{what} is not valid JSON: {e}", path) from None
    if not isinstance(obj, dict):
        raise CorruptImageError(f"{what} is not a JSON object", path)
    return obj


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stamp_text(st: os.stat_result) -> str:
    return " ".join(str(v) for v in _stat_key(st)) + "\n"


def _unmount_below(path: Path) -> None:
    """Detaches every mount of this mount namespace below ``path`` (deepest first)."""
    prefix = os.path.realpath(path) + "/"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            points = [line.split()[4] for line in f if len(line.split()) > 4]
    except OSError:
        return
    decoded = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in points]
    for point in sorted((p for p in decoded if p.startswith(prefix)), key=len, reverse=True):
        with suppress(OSError):
            import subprocess  # only a crashed build leaves mounts

            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _tree_size(path: Path) -> int:
    """The bytes of the regular files below ``path``."""
    total = 0
    for base, _dirs, names in os.walk(path):
        for name in names:
            with suppress(OSError):
                st = os.lstat(os.path.join(base, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _files(directory: Path) -> Iterator[tuple[str, int]]:
    """``(name, size)`` of each regular file directly in ``directory``."""
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        yield entry.name, entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        return


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with _io_errors(path, "cannot open lock file"):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


@contextmanager
def _io_errors(path: Path, what: str) -> Iterator[None]:
    """Turns a plain OSError into a :class:`~layercore.errors.LayerIOError` naming ``path``."""
    try:
        yield
    except LayerError:
        raise
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise SourceNotFoundError(f"{what}: {e.strerror}", e.filename or path) from e
        error = LayerIOError(f"{what}: {e.strerror or e}", e.filename or path)
        error.errno = e.errno  # ENOSPC, EACCES...: what a caller may act on
        raise error from e
