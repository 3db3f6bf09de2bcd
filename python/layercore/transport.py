"""Moving images between the store and the formats other tools read and write.

Three formats, each written and read here:

* ``oci``: an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``),
  what ``skopeo copy ... oci:DIR:REF``, ``buildah commit ... oci:DIR:REF`` and ``umoci`` use.
* ``oci-archive``: a tar of such a layout (members ``oci-layout``, ``index.json``, ``blobs/``,
  ``blobs/sha256/``, ``blobs/sha256/<hex>``; ``skopeo``/``buildah`` write them that way,
  without a ``./`` prefix).
* ``docker-archive``: the ``docker save`` format. Docker >= 25 writes an OCI layout plus
  ``manifest.json`` (``[{"Config": "blobs/sha256/<hex>", "RepoTags": ["app:1.0"], "Layers":
  ["blobs/sha256/<hex>", ...]}]``) and ``repositories`` (which Docker reads only when there is
  no ``manifest.json``, so the export leaves it out); its ``index.json`` entries carry
  ``io.containerd.image.name`` (``docker.io/library/app:1.0``) and
  ``org.opencontainers.image.ref.name`` (the tag alone, ``1.0``). Older Docker, and skopeo 1.9
  and buildah 1.28 today, write the legacy layout: ``<config hex>.json``, ``<diff_id hex>.tar``
  (skopeo) or ``<id>/layer.tar`` (Docker), ``<id>/json``, ``<id>/VERSION``, ``repositories``,
  and ``manifest.json`` naming those files; skopeo makes ``<id>/layer.tar`` a symlink member to
  ``../<diff_id hex>.tar`` and writes ``RepoTags`` fully qualified
  (``docker.io/library/app:1.0``). Their layers are always uncompressed tars, so their digest is
  the diff_id. Export writes either layout (``docker_layout="oci"`` or ``"legacy"``).

How ``docker save`` wrote the legacy layout (moby ``image/tarexport/save.go`` before Docker 25),
which the legacy export follows:

* One directory per layer, named by a v1 id: ``VERSION`` (``1.0``), ``json`` and ``layer.tar``
  (the uncompressed tar; a diff_id met again is a symlink ``../<first id>/layer.tar``). The v1
  id (``image/v1.CreateID``) is the sha256 of the layer's v1 JSON with ``"layer_id"`` (the chain
  id of the layers up to it) and ``"parent"`` (``sha256:<parent v1 id>``) added, keys sorted,
  Go's compact encoding. Below the top, that v1 JSON is ``created`` at the Unix epoch and an
  empty ``container_config``; the ``json`` file adds ``id``, ``parent`` and ``os``. The top
  layer's carries the image config's ``comment``, ``created``, ``container``,
  ``container_config``, ``docker_version``, ``author``, ``config``, ``architecture``,
  ``variant`` and ``os``. (Docker re-encodes these through its structs, filling in zero
  fields; the export keeps the config's values as they are, so its top id is its own. Docker
  >= 1.10 does not use v1 ids when loading and skopeo derives its own from the layers alone:
  they only have to be unique, and stable for the same image.)
* ``<config hex>.json`` is the config byte for byte; ``manifest.json`` is
  ``[{"Config": ..., "RepoTags": [...], "Layers": ["<id>/layer.tar", ...]}]`` and
  ``repositories`` ``{"app": {"1.0": "<top id>"}}``, both with a trailing newline (Go's
  ``json.Encoder``). Members come in ``filepath.Walk`` order (names sorted, each directory
  before its files).

What the tools do with these, and what this module relies on:

* ``skopeo`` parses ``oci:DIR:REF`` and ``oci-archive:FILE:REF`` at the *first* colon: DIR is
  everything before it and REF everything after, so ``oci:out:app:1.0`` finds the entry whose
  ``org.opencontainers.image.ref.name`` is ``app:1.0``. ``umoci --image DIR:REF`` does the same.
  An export therefore names its entry with the whole tag (``app:1.0``), as skopeo and buildah do.
* ``skopeo copy`` to ``oci:`` and ``oci-archive:`` keeps compressed layers and the config
  byte for byte but gzips uncompressed layers (then writing a new manifest); to
  ``docker-archive:`` it decompresses every layer (and refuses zstd ones); from
  ``docker-archive:`` to ``oci:`` it gzips the layers and rewrites the config. Digests change
  there, diff_ids stay. It selects ``oci:DIR:REF`` entries by ref name among OCI media types
  only, so a Docker v2s2 manifest in a layout is found only as the sole entry.
* ``skopeo`` and ``docker load`` accept compressed layer files in a docker-archive (they sniff
  the compression), so our export of Docker >= 25's form writes layers exactly as stored.
  ``oci-image-tool`` 1.0.0-rc1 validates layouts (not archives) and does not know the zstd
  media type; ``umoci`` 0.4 reads gzip and plain layers only.
* ``buildah commit`` writes uncompressed layers (``application/vnd.oci.image.layer.v1.tar``)
  to ``oci:`` and ``oci-archive:``, with a ``created`` carrying nanoseconds.

Import copies blob bodies with :func:`layercore._core.copy_blob`: straight from the directory,
or from a plain tar archive by offset and length (no extraction, no Python-level copy loop); a
gzip-compressed archive is decompressed once to a plain tar in the store's scratch space first.
Every blob is verified against its digest while it is copied to a staging file in the store's
``.layercore/tmp/`` (where :meth:`Store.gc` clears what a killed import leaves). Only when the
whole image checks out are the staged blobs renamed into ``blobs/``, so a failed import leaves
nothing there, and an import costs one local copy of each new blob. Export writes tar headers with
:class:`tarfile.TarInfo` and copies bodies with ``copy_file_range``/``sendfile``; archives are
reproducible (mtime 0, owner 0:0, fixed order). The legacy docker-archive's ``layer.tar`` of a
gzip or zstd layer is decompressed (``zlib``, ``zstandard``) straight into the archive, 1 MiB at a
time, and hashed on the way against its diff_id; its header is written last, into a block
reserved before the body.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import errno
import fcntl
import functools
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, get_args

from layercore._core import copy_blob, verify_layer
from layercore.durable import fsync_dir, fsync_path, write_atomic
from layercore.errors import (
    CorruptImageError,
    CorruptLayerError,
    DigestMismatchError,
    ImageNotFoundError,
    InvalidReferenceError,
    LayerIOError,
    SourceNotFoundError,
    TruncatedLayerError,
)
from layercore.image import (
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Image,
    canonical_json,
    host_architecture,
)
from layercore.imageref import Reference
from layercore.layer import Compression, Layer, StrPath
from layercore.store import REF_NAME, Ingest, check_tag

if TYPE_CHECKING:
    from layercore.store import Store

__all__ = [
    "DOCKER_LAYOUTS",
    "FORMATS",
    "DockerLayout",
    "Format",
    "detect_format",
    "export_image",
    "import_image",
]

Format = Literal["oci", "oci-archive", "docker-archive"]
#: Every format :func:`export_image` writes and :func:`import_image` reads.
FORMATS: tuple[Format, ...] = get_args(Format)
#: The two forms of a docker-archive: Docker >= 25's OCI layout, or the legacy one before it.
DockerLayout = Literal["oci", "legacy"]
DOCKER_LAYOUTS: tuple[DockerLayout, ...] = get_args(DockerLayout)

OCI_LAYOUT = "oci-layout"
OCI_INDEX_FILE = "index.json"
DOCKER_MANIFEST_FILE = "manifest.json"
#: The fully qualified image name containerd (and Docker >= 25) put beside the ref name.
IMAGE_NAME = "io.containerd.image.name"

_LAYOUT_VERSION = "1.0.0"
_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_BLOB_MEMBER_RE = re.compile(r"blobs/sha256/([0-9a-f]{64})")
#: Manifests, configs and indexes are read whole; anything bigger is not one.
_MAX_JSON_BYTES = 64 << 20
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
#: The largest member size an octal ustar size field holds, plus one (8 GiB).
_USTAR_MAX_SIZE = 8**11
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_LINK_HOPS = 16
_MAX_INDEX_DEPTH = 4


# --- import ---------------------------------------------------------------------------------


def detect_format(src: StrPath) -> Format:
    """The format of ``src``: a directory holding ``oci-layout`` is ``"oci"``; a tar archive
    (plain or gzip-compressed) holding ``oci-layout`` and ``index.json`` is ``"oci-archive"``
    (Docker >= 25 archives, which have both and ``manifest.json``, included), one holding
    ``manifest.json`` without them is ``"docker-archive"``.

    Raises :class:`~layercore.errors.SourceNotFoundError` if ``src`` does not exist and
    :class:`~layercore.errors.CorruptImageError` if it is none of these (naming what is
    missing), or if an archive member has an absolute name or a ``..`` component.
    """
    path = Path(src)
    if path.is_dir():
        if (path / OCI_LAYOUT).is_file():
            return "oci"
        raise CorruptImageError(f"not an OCI image layout: no {OCI_LAYOUT} file", path)
    if not path.exists():
        raise SourceNotFoundError("does not exist", path)
    names = _gzip_tar_names(path) if _is_gzip(path) else set(_PlainTar(path).members)
    return _archive_format(path, names)


def import_image(
    store: Store,
    src: StrPath,
    tag: str | None = None,
    *,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Image:
    """Reads the image in ``src`` (any :data:`Format`, see :func:`detect_format`) into
    ``store`` and returns it as saved there. ``progress``, if given, is called with ``(bytes
    copied, bytes in all)`` as blobs are copied; ``bytes in all`` is None until it is known.

    ``name`` selects one image in a source holding several: in an OCI layout an index ref
    name (``app:1.0``), a containerd/Docker image name or a manifest digest; in a
    docker-archive a ``RepoTag`` (``app:1.0`` and ``docker.io/library/app:1.0`` are the same).
    A source holding one image needs none. An image index (multi-platform) resolves to its
    ``linux`` manifest for this machine's architecture. The image is saved under ``tag``, by
    default under the source's own name for it (the ref name, or a Docker name in its short
    form ``app:1.0``), else untagged.

    OCI sources keep their manifest and config bytes, hence their digests. A docker-archive
    keeps its config bytes; its manifest is rebuilt in OCI form, each layer's media type
    following its compression (sniffed). Every blob is verified against its digest (and in a
    docker-archive each layer against the config's diff_id) before anything reaches the
    store's ``blobs/``: a mismatch raises :class:`~layercore.errors.DigestMismatchError`
    naming the blob and leaves the store as it was. Missing or malformed parts raise
    :class:`~layercore.errors.CorruptImageError`; an image ``name`` (or this platform) the
    source does not have raises :class:`~layercore.errors.ImageNotFoundError` listing what it
    has.
    """
    src_path = Path(src)
    if tag is not None:
        check_tag(tag)
    if src_path.is_dir():
        detect_format(src_path)
    elif not src_path.exists():
        raise SourceNotFoundError("does not exist", src_path)
    with store.ingest() as ingest:
        source: _Source
        if src_path.is_dir():
            fmt: Format = "oci"
            source = _DirSource(src_path)
        else:
            archive = src_path
            if _is_gzip(src_path):
                archive = ingest.new_path("archive.tar")
                _gunzip(src_path, archive)
            tar = _PlainTar(archive, origin=src_path)
            fmt = _archive_format(src_path, set(tar.members))
            source = _TarSource(tar)
        importer = _Importer(store, source, ingest, _Meter(progress))
        picked: tuple[Image, str | None] | None = None
        if fmt != "docker-archive":
            picked = importer.oci(name, docker_fallback=source.exists(DOCKER_MANIFEST_FILE))
        if picked is None:
            picked = importer.docker(name)
        image, own_name = picked
        if tag is None and own_name is not None:
            try:
                tag = check_tag(own_name)
            except ValueError:
                # The source's fault, not the caller's: typed, with the source as its path.
                raise CorruptImageError(
                    f"the image's own name {own_name!r} is not a valid tag; "
                    "pass a tag to import it under",
                    src_path,
                ) from None
        # Every staged blob was verified as it was copied in: sync them and move them into
        # blobs/ rather than have save() copy them a second time.
        ingest.commit()
        saved = store.save(image, tag)
    # Blobs the store already had were not copied; the count still ends at the total.
    importer.meter.finish()
    return saved


#: Called with ``(bytes done, bytes in all)`` as blobs are copied; ``bytes in all`` is None
#: until it is known (a docker-archive import learns its layers' sizes one at a time).
ProgressCallback = Callable[[int, int | None], None]


class _Meter:
    """Counts the blob bytes an export or import has moved and reports them to a callback."""

    def __init__(self, callback: ProgressCallback | None, total: int | None = None) -> None:
        self._callback = callback
        self.done = 0
        self.total = total

    def expect(self, total: int) -> None:
        """Sets the byte count the operation will reach, once it is known."""
        self.total = total
        self.advance(0)

    def finish(self) -> None:
        """Reports the total as reached (what was counted, when no total was known)."""
        if self.total is None:
            self.total = self.done
        self.advance(self.total - self.done)

    def advance(self, n: int) -> None:
        """``n`` more bytes were moved."""
        self.done += n
        if self._callback is not None:
            self._callback(self.done, self.total)


class _Source(abc.ABC):
    """The files of an image source, by slash-separated names relative to its root."""

    origin: Path

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the source has a file (or archive member) ``name``."""

    @abc.abstractmethod
    def read(self, name: str, *, limit: int = _MAX_JSON_BYTES) -> bytes:
        """The whole file ``name`` (a manifest, config or index, so at most ``limit`` bytes)."""

    @abc.abstractmethod
    def copy(self, name: str, dest: Path, expected_digest: str | None) -> tuple[str, int]:
        """Copies ``name`` to the new file ``dest`` with :func:`copy_blob`, hashing it on the
        way; returns ``(digest, size)``. A digest other than ``expected_digest`` removes
        ``dest`` and raises :class:`~layercore.errors.DigestMismatchError` naming ``name``."""


class _DirSource(_Source):
    """An OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.origin = root

    def _path(self, name: str) -> Path:
        path = self.origin / _relative_name(name, self.origin)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise CorruptImageError(f"{name} is missing", self.origin) from None
        except OSError as e:
            raise LayerIOError(f"cannot read {name}: {e.strerror}", self.origin) from e
        if not stat.S_ISREG(st.st_mode):
            raise CorruptImageError(f"{name} is not a regular file", self.origin)
        return path

    def exists(self, name: str) -> bool:
        return (self.origin / _relative_name(name, self.origin)).is_file()

    def read(self, name: str, *, limit: int = _MAX_JSON_BYTES) -> bytes:
        with self._path(name).open("rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CorruptImageError(f"{name} is larger than {limit} bytes", self.origin)
        return data

    def copy(self, name: str, dest: Path, expected_digest: str | None) -> tuple[str, int]:
        path = self._path(name)
        try:
            digest, size = copy_blob(
                os.fspath(path), os.fspath(dest), expected_digest=expected_digest, sync=False
            )
        except DigestMismatchError as e:
            raise _blob_mismatch(name, e, self.origin) from None
        assert digest is not None
        return digest, size


@dataclass(frozen=True)
class _Member:
    """A regular file of a plain tar archive: where its body is."""

    name: str
    offset: int
    size: int


class _PlainTar:
    """The members of an uncompressed tar archive: regular files by normalised name, with
    symlink and hardlink members resolved inside the archive (skopeo's docker-archive makes
    ``<id>/layer.tar`` a symlink to ``../<hex>.tar``; old ``docker save`` links repeated
    layers the same way).

    Headers are read with :mod:`tarfile`, which seeks over bodies, so listing costs one small
    read per member whatever the archive's size, and memory is O(members). Member names must
    be relative without ``..``; a member ``blobs/sha256/X`` must be named by a digest; a name
    may appear only once. Anything else is :class:`~layercore.errors.CorruptImageError`.
    """

    def __init__(self, path: Path, *, origin: Path | None = None) -> None:
        self.path = path
        #: The file errors name: the archive as given (maybe the gzip-compressed original).
        self.origin = origin if origin is not None else path
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    member = _relative_name(info.name, self.origin)
                    if not member or info.isdir():
                        continue
                    _check_blob_member(member, self.origin)
                    if member in self.members:
                        raise CorruptImageError(
                            f"archive member {info.name!r} appears more than once", self.origin
                        )
                    self.members[member] = info
        except tarfile.TarError as e:
            raise CorruptImageError(f"not a readable tar archive: {e}", self.origin) from None
        except OSError as e:
            raise LayerIOError(f"cannot read: {e.strerror or e}", self.origin) from e

    def resolve(self, name: str) -> _Member:
        """The regular file ``name`` designates, following links inside the archive."""
        current = _relative_name(name, self.origin)
        for _ in range(_MAX_LINK_HOPS):
            info = self.members.get(current)
            if info is None:
                raise CorruptImageError(f"{current} is missing from the archive", self.origin)
            if info.isfile() and not info.issparse():
                return _Member(current, info.offset_data, info.size)
            if info.issym():
                parent = current.rpartition("/")[0]
                target = info.linkname
                joined = target if target.startswith("/") else f"{parent}/{target}"
                current = _resolve_dots(joined, info.name, self.origin)
            elif info.islnk():
                current = _relative_name(info.linkname, self.origin)
            else:
                raise CorruptImageError(
                    f"archive member {info.name!r} is not a regular file", self.origin
                )
        raise CorruptImageError(f"{name}: too many levels of links in the archive", self.origin)


class _TarSource(_Source):
    """A plain tar archive read in place: bodies are copied out by offset and length."""

    def __init__(self, tar: _PlainTar) -> None:
        self.tar = tar
        self.origin = tar.origin

    def exists(self, name: str) -> bool:
        return _relative_name(name, self.origin) in self.tar.members

    def read(self, name: str, *, limit: int = _MAX_JSON_BYTES) -> bytes:
        member = self.tar.resolve(name)
        if member.size > limit:
            raise CorruptImageError(f"{name} is larger than {limit} bytes", self.origin)
        with self.tar.path.open("rb") as f:
            f.seek(member.offset)
            data = f.read(member.size)
        if len(data) != member.size:
            raise CorruptImageError(f"the archive ends inside {name}", self.origin)
        return data

    def copy(self, name: str, dest: Path, expected_digest: str | None) -> tuple[str, int]:
        member = self.tar.resolve(name)
        try:
            digest, size = copy_blob(
                os.fspath(self.tar.path),
                os.fspath(dest),
                offset=member.offset,
                length=member.size,
                expected_digest=expected_digest,
                sync=False,
            )
        except DigestMismatchError as e:
            raise _blob_mismatch(name, e, self.origin) from None
        except TruncatedLayerError:
            raise CorruptImageError(f"the archive ends inside {name}", self.origin) from None
        assert digest is not None
        return digest, size


class _Importer:
    """One import: blobs verified into the store's ``ingest`` batch, then one image built
    from them."""

    def __init__(self, store: Store, source: _Source, ingest: Ingest, meter: _Meter) -> None:
        self.store = store
        self.meter = meter
        self.source = source
        self.origin = source.origin
        self.ingest = ingest

    # OCI layouts, directories and archives --------------------------------------------------

    def oci(self, name: str | None, *, docker_fallback: bool) -> tuple[Image, str | None] | None:
        """The image ``name`` selects in ``index.json``, and its own name.

        None when ``docker_fallback`` (the source also has ``manifest.json``) and the OCI side
        is unusable the way some Docker 25 releases wrote it: an untagged image missing from
        ``index.json``, or a manifest listing only the foreign layers."""
        self._check_layout()
        index = _json_object(self.source.read(OCI_INDEX_FILE), OCI_INDEX_FILE, self.origin)
        entries = _index_entries(index, OCI_INDEX_FILE, self.origin)
        try:
            entry = self._choose_entry(entries, name)
        except ImageNotFoundError:
            if docker_fallback:
                return None
            raise
        own_name = _entry_name(entry)
        desc = self._platform_manifest(entry, depth=0)
        manifest_bytes = self._read_blob(desc, OCI_INDEX_FILE)
        what = _blob_name(str(desc["digest"]))
        manifest = _json_object(manifest_bytes, what, self.origin)
        config_desc = manifest.get("config")
        layer_descs = manifest.get("layers")
        if not isinstance(config_desc, Mapping) or not isinstance(layer_descs, list):
            raise CorruptImageError(
                f"{what}: not an image manifest (it has no config or no layers)", self.origin
            )
        config_bytes = self._read_blob(config_desc, what)
        config_what = _blob_name(str(config_desc["digest"]))
        config = _json_object(config_bytes, config_what, self.origin)
        diff_ids = _diff_ids(config, config_what, self.origin)
        if len(layer_descs) != len(diff_ids):
            if docker_fallback:
                return None
            raise CorruptImageError(
                f"{what}: the manifest lists {len(layer_descs)} layers and the config "
                f"{len(diff_ids)} diff_ids",
                self.origin,
            )
        described = [_descriptor(d, what, self.origin) for d in layer_descs]
        self.meter.expect(sum(size for _digest, size, _media_type in described))
        layers = []
        for (digest, size, media_type), diff_id in zip(described, diff_ids, strict=True):
            path, _ = self._stage(_blob_name(digest), digest, size)
            layers.append(_layer(path, digest, diff_id, media_type))
        return _image(manifest_bytes, config_bytes, layers, what, self.origin), own_name

    def _check_layout(self) -> None:
        layout = _json_object(self.source.read(OCI_LAYOUT, limit=4096), OCI_LAYOUT, self.origin)
        version = layout.get("imageLayoutVersion")
        if version != _LAYOUT_VERSION:
            raise CorruptImageError(
                f"{OCI_LAYOUT}: unsupported imageLayoutVersion {version!r} "
                f"(expected {_LAYOUT_VERSION!r})",
                self.origin,
            )

    def _choose_entry(
        self, entries: list[Mapping[str, Any]], name: str | None
    ) -> Mapping[str, Any]:
        if name is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                raise ImageNotFoundError("holds no image (index.json lists none)", self.origin)
            raise ImageNotFoundError(
                f"holds {len(entries)} images ({_entry_list(entries)}); name the one to import",
                self.origin,
            )
        found = [e for e in entries if _entry_matches(e, name)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ImageNotFoundError(
                f"has no image named {name!r} (it holds {_entry_list(entries) or 'none'})",
                self.origin,
            )
        raise ImageNotFoundError(f"holds {len(found)} images named {name!r}", self.origin)

    def _platform_manifest(self, desc: Mapping[str, Any], *, depth: int) -> Mapping[str, Any]:
        """``desc`` itself if it is a manifest; for an image index (or a Docker manifest
        list), the manifest in it for ``linux`` on this machine's architecture."""
        if desc.get("mediaType") not in (OCI_INDEX, DOCKER_MANIFEST_LIST):
            return desc
        index_bytes = self._read_blob(desc, OCI_INDEX_FILE)
        what = _blob_name(str(desc["digest"]))
        if depth >= _MAX_INDEX_DEPTH:
            raise CorruptImageError(f"{what}: image indexes nested too deeply", self.origin)
        entries = _index_entries(_json_object(index_bytes, what, self.origin), what, self.origin)
        arch, variant = host_architecture()
        matching = [e for e in entries if _platform_matches(e.get("platform"), arch, None)]
        if variant is not None and len(matching) > 1:
            matching = [e for e in matching if _platform_matches(e["platform"], arch, variant)]
        if not matching:
            platforms = ", ".join(dict.fromkeys(_platform_text(e.get("platform")) for e in entries))
            raise ImageNotFoundError(
                f"{what}: the image index has no manifest for linux/{arch} "
                f"(its platforms: {platforms or 'none'})",
                self.origin,
            )
        return self._platform_manifest(matching[0], depth=depth + 1)

    def _read_blob(self, desc: object, what: str) -> bytes:
        """A small blob (manifest, config, index), checked against its descriptor in ``what``."""
        digest, size, _ = _descriptor(desc, what, self.origin)
        name = _blob_name(digest)
        data = self.source.read(name)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DigestMismatchError(
                f"{name}: the blob's bytes do not match its name (they hash to {actual})",
                self.origin,
                what="digest",
                expected=digest,
                actual=actual,
            )
        if len(data) != size:
            raise CorruptImageError(
                f"{name} is {len(data)} bytes, but {what} says {size}", self.origin
            )
        return data

    # docker-archive -----------------------------------------------------------------------

    def docker(self, name: str | None) -> tuple[Image, str | None]:
        """The image ``name`` selects in ``manifest.json`` (by RepoTag), and its own name.

        The config keeps its bytes and an OCI manifest is built. Each layer is copied and
        hashed, then checked against the config's diff_id: a plain tar's digest is its
        diff_id; a compressed layer is decompressed once to check it."""
        items = _json_value(
            self.source.read(DOCKER_MANIFEST_FILE), DOCKER_MANIFEST_FILE, self.origin
        )
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise CorruptImageError(
                f"{DOCKER_MANIFEST_FILE}: not a list of image entries", self.origin
            )
        item, own_name = self._choose_item(items, name)
        config_name = item.get("Config")
        layer_names = item.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list):
            raise CorruptImageError(
                f"{DOCKER_MANIFEST_FILE}: an entry lacks its 'Config' or 'Layers'", self.origin
            )
        config_bytes = self.source.read(config_name)
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        named = _named_digest(config_name)
        if named is not None and named != config_digest:
            raise DigestMismatchError(
                f"{config_name}: the blob's bytes do not match its name (they hash to "
                f"{config_digest})",
                self.origin,
                what="digest",
                expected=named,
                actual=config_digest,
            )
        config = _json_object(config_bytes, config_name, self.origin)
        diff_ids = _diff_ids(config, config_name, self.origin)
        if len(diff_ids) != len(layer_names):
            raise CorruptImageError(
                f"{DOCKER_MANIFEST_FILE}: the image lists {len(layer_names)} layers and its "
                f"config {config_name} {len(diff_ids)} diff_ids",
                self.origin,
            )
        layers: list[Layer] = []
        for i, (layer_name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True)):
            if not isinstance(layer_name, str):
                raise CorruptImageError(
                    f"{DOCKER_MANIFEST_FILE}: layer {i} is not a file name", self.origin
                )
            layers.append(self._docker_layer(i, layer_name, diff_id))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
        image = _image(canonical_json(manifest), config_bytes, layers, config_name, self.origin)
        return image, own_name

    def _choose_item(
        self, items: Sequence[Mapping[str, Any]], name: str | None
    ) -> tuple[Mapping[str, Any], str | None]:
        listing = "; ".join(", ".join(_repo_tags(i)) or "untagged" for i in items)
        if name is None:
            if len(items) != 1:
                raise ImageNotFoundError(
                    f"holds {len(items)} images ({listing}); name the one to import", self.origin
                )
            tags = _repo_tags(items[0])
            return items[0], _familiar(tags[0]) if tags else None
        wanted = _familiar(name)
        for item in items:
            for tag in _repo_tags(item):
                if _familiar(tag) == wanted:
                    return item, _familiar(tag)
        raise ImageNotFoundError(
            f"has no image named {name!r} (it holds {listing or 'none'})", self.origin
        )

    def _docker_layer(self, index: int, name: str, diff_id: str) -> Layer:
        named = _named_digest(name)
        what = f"layer {index} ({name})"
        path, digest = self._stage(name, named, None)
        compression = _sniff(path)
        if compression is None:
            if digest != diff_id:
                raise DigestMismatchError(
                    f"{what} does not match the config: its diff_id is {digest}, the config "
                    f"lists {diff_id}",
                    self.origin,
                    what="diff_id",
                    expected=diff_id,
                    actual=digest,
                )
        elif self.ingest.is_staged(path):
            try:
                verify_layer(os.fspath(path), digest, diff_id)
            except DigestMismatchError as e:
                raise DigestMismatchError(
                    f"{what} does not match the config: its diff_id is {e.actual}, the config "
                    f"lists {diff_id}",
                    self.origin,
                    what="diff_id",
                    expected=diff_id,
                    actual=e.actual,
                ) from None
            except CorruptLayerError as e:
                raise type(e)(f"{what}: {e.message}", self.origin) from None
        media_type = {None: OCI_LAYER_TAR, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}
        return _layer(path, digest, diff_id, media_type[compression])

    # blobs ----------------------------------------------------------------------------------

    def _stage(self, name: str, digest: str | None, size: int | None) -> tuple[Path, str]:
        """Where the blob ``name`` is once verified, and its digest: the store's own copy
        when it already has the blob (trusted, as :meth:`Store.save` trusts it), else a
        staged copy. ``digest`` and ``size``, when known, are checked."""
        if digest is not None:
            held = self.ingest.find(digest)
            if held is not None:
                return held, digest
        tmp = self.ingest.new_path("incoming")
        actual, actual_size = self.source.copy(name, tmp, digest)
        self.meter.advance(actual_size)
        if size is not None and actual_size != size:
            tmp.unlink()
            raise CorruptImageError(
                f"{name} is {actual_size} bytes, but its descriptor says {size}", self.origin
            )
        return self.ingest.add(tmp, actual), actual


def _image(
    manifest_bytes: bytes, config_bytes: bytes, layers: list[Layer], what: str, origin: Path
) -> Image:
    """:meth:`Image.from_json`, its complaints naming the source and ``what`` it read."""
    try:
        return Image.from_json(manifest_bytes, config_bytes, layers)
    except CorruptImageError as e:
        raise CorruptImageError(f"{what}: {e.message}", origin) from None


def _layer(path: Path, digest: str, diff_id: str, media_type: str) -> Layer:
    """The Layer for a verified blob at ``path`` (its diff_id taken from the config)."""
    layer = Layer.open(path, digest=digest, diff_id=diff_id)
    return dataclasses.replace(layer, media_type=media_type)


# --- export ---------------------------------------------------------------------------------


def export_image(
    store: Store,
    ref: str,
    dest: StrPath,
    format: Format = "oci",
    *,
    name: str | None = None,
    docker_layout: DockerLayout = "oci",
    progress: ProgressCallback | None = None,
) -> Path:
    """Writes the image ``ref`` (a tag or digest, as :meth:`Store.load` takes) to ``dest`` in
    ``format``; returns ``dest``. ``progress``, if given, is called with ``(bytes written,
    bytes in all)`` as the blobs are copied (the command line draws its progress bar from it).

    ``"oci"``: ``dest`` is a directory, created if missing; an existing OCI layout gets the
    image added (an entry with the same ref name is replaced; blobs already there with the
    right size are kept). ``"oci-archive"``: a tar of such a layout. ``"docker-archive"``:
    what ``docker save`` writes, which ``docker load``, ``podman load`` and ``skopeo`` read;
    by default as Docker >= 25 writes it (an OCI layout plus ``manifest.json``), with
    ``docker_layout="legacy"`` as Docker wrote it before (``<id>/layer.tar``, ``<id>/json``,
    ``<id>/VERSION``, ``<config hex>.json``, ``manifest.json``, ``repositories``: see the
    module docstring), for tools that know only that form. Archives appear at ``dest`` only
    once complete, and the same image always gives the same bytes.

    The image is named ``name``, by default the tag ``ref`` (exported by digest: unnamed). In
    an OCI layout the ref name is the whole tag, ``app:1.0``, which is what
    ``skopeo ... oci:DIR:app:1.0`` and ``umoci --image DIR:app:1.0`` look for. A
    docker-archive holds it as a Docker reference in ``RepoTags`` (``app`` becomes
    ``app:latest``; a name Docker cannot parse, such as one with capitals, is a
    ``ValueError``). Blobs come from :meth:`Store.open_blob`, which re-hashes a blob whose file
    changed since it was verified, and are copied as stored, layers keeping their compression;
    except in the legacy form, whose ``layer.tar`` members are uncompressed tars (gzip and zstd
    layers are decompressed as they are written, and checked against their diff_id: a layer
    that does not match raises :class:`~layercore.errors.DigestMismatchError`). zstd layers
    need the ``zstandard`` package there.

    ``docker_layout`` other than ``"oci"`` with a format other than ``"docker-archive"`` is a
    ``ValueError``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    if docker_layout not in DOCKER_LAYOUTS:
        raise ValueError(
            f"unknown docker_layout {docker_layout!r}: expected one of {', '.join(DOCKER_LAYOUTS)}"
        )
    if docker_layout != "oci" and format != "docker-archive":
        raise ValueError(
            f"docker_layout={docker_layout!r} applies to the docker-archive format only, "
            f"not to {format!r}"
        )
    image = store.load(ref)
    if name is None and ref in store.tags():
        name = ref
    if name is not None:
        check_tag(name)
    docker_ref = _docker_reference(name) if format == "docker-archive" and name else None
    blobs = _image_blobs(store, image)
    meter = _Meter(progress, sum(blob.size for blob in blobs))
    meter.advance(0)
    dest_path = Path(dest)
    if format == "oci":
        _write_layout(dest_path, image, name, blobs, meter)
        return dest_path
    if docker_layout == "legacy":
        _write_legacy_archive(dest_path, image, docker_ref, blobs, meter)
        return dest_path
    manifest_json: list[dict[str, Any]] | None = None
    annotations: dict[str, str] = {}
    if format == "docker-archive":
        manifest_json = [
            {
                "Config": _blob_name(image.config_digest),
                "RepoTags": [] if docker_ref is None else [docker_ref],
                "Layers": [_blob_name(layer.digest) for layer in image.layers],
            }
        ]
        if docker_ref is not None:
            # As Docker writes them: the full name for containerd, the tag alone as ref name.
            annotations = {
                IMAGE_NAME: _qualified(docker_ref),
                REF_NAME: _split_tag(docker_ref)[1] or "latest",
            }
    elif name is not None:
        annotations = {REF_NAME: name}
    _write_archive(dest_path, _index_entry(image, annotations), blobs, manifest_json, meter)
    return dest_path


@dataclass(frozen=True)
class _Blob:
    """A blob to export: its digest, size and the file the store serves it from."""

    digest: str
    size: int
    path: Path


def _image_blobs(store: Store, image: Image) -> list[_Blob]:
    """The manifest, config and layer blobs of ``image``, each once, in that order."""
    wanted = [
        (image.digest, len(image.manifest_bytes)),
        (image.config_digest, len(image.config_bytes)),
        *((layer.digest, layer.size) for layer in image.layers),
    ]
    blobs: dict[str, _Blob] = {}
    for digest, size in wanted:
        if digest not in blobs:
            blobs[digest] = _Blob(digest, size, store.open_blob(digest))
    return list(blobs.values())


def _index_entry(image: Image, annotations: Mapping[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": image.media_type,
        "digest": image.digest,
        "size": len(image.manifest_bytes),
    }
    if annotations:
        entry["annotations"] = dict(annotations)
    return entry


def _write_layout(
    dest: Path, image: Image, name: str | None, blobs: list[_Blob], meter: _Meter
) -> None:
    """Adds ``image`` to the OCI layout ``dest``: blobs first, then ``index.json`` replaced
    atomically, all under an exclusive lock on the directory (concurrent exports to one
    layout each keep their entry)."""
    if dest.exists() and not dest.is_dir():
        raise LayerIOError("exists and is not a directory", dest)
    dest.mkdir(parents=True, exist_ok=True)
    with _locked_dir(dest):
        layout = dest / OCI_LAYOUT
        if layout.exists():
            _check_layout_file(layout, dest)
        elif any(dest.iterdir()):
            raise LayerIOError(
                f"not an OCI image layout (no {OCI_LAYOUT} file) and not empty; "
                "export to a new or empty directory",
                dest,
            )
        else:
            write_atomic(layout, _LAYOUT_BYTES)
        blob_dir = dest / "blobs" / "sha256"
        blob_dir.mkdir(parents=True, exist_ok=True)
        # Every blob is copied first and fsync'd after: each copy overlaps the writeback of the
        # ones before it. Only synced blobs are renamed into place.
        pending: list[tuple[Path, Path]] = []
        try:
            for blob in blobs:
                target = dest / _blob_name(blob.digest)
                with contextlib.suppress(FileNotFoundError):
                    st = target.stat()
                    if stat.S_ISREG(st.st_mode) and st.st_size == blob.size:
                        meter.advance(blob.size)
                        continue
                tmp = blob_dir / f".{target.name}.{secrets.token_hex(8)}.tmp"
                pending.append((tmp, target))
                copy_blob(os.fspath(blob.path), os.fspath(tmp), verify=False, sync=False)
                meter.advance(blob.size)
            for tmp, _target in pending:
                fsync_path(tmp)
            for tmp, target in pending:
                os.replace(tmp, target)
        except BaseException:
            for tmp, _target in pending:
                tmp.unlink(missing_ok=True)
            raise
        fsync_dir(blob_dir)
        index_path = dest / OCI_INDEX_FILE
        if index_path.exists():
            index = _json_object(_read_small_file(index_path), OCI_INDEX_FILE, dest)
            manifests = _index_entries(index, OCI_INDEX_FILE, dest)
        else:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX}
            manifests = []
        if name is not None:
            kept = [e for e in manifests if _annotations(e).get(REF_NAME) != name]
            entry = _index_entry(image, {REF_NAME: name})
        else:
            kept = [
                e for e in manifests if REF_NAME in _annotations(e) or e["digest"] != image.digest
            ]
            entry = _index_entry(image, {})
        write_atomic(index_path, canonical_json({**index, "manifests": [*kept, entry]}))


def _write_archive(
    dest: Path,
    entry: Mapping[str, Any],
    blobs: list[_Blob],
    docker_manifest: list[dict[str, Any]] | None,
    meter: _Meter,
) -> None:
    """A tar of an OCI layout holding one image (plus ``manifest.json`` for Docker), written
    to a temp file beside ``dest`` and renamed over it once complete."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    with _new_archive(dest) as writer:
        writer.add_bytes(OCI_LAYOUT, _LAYOUT_BYTES)
        writer.add_bytes(OCI_INDEX_FILE, canonical_json(index))
        if docker_manifest is not None:
            writer.add_bytes(DOCKER_MANIFEST_FILE, canonical_json(docker_manifest))
        writer.add_directory("blobs")
        writer.add_directory("blobs/sha256")
        for blob in blobs:
            writer.add_file(_blob_name(blob.digest), blob.path, blob.size)
            meter.advance(blob.size)


@contextlib.contextmanager
def _new_archive(dest: Path) -> Iterator[_TarWriter]:
    """A :class:`_TarWriter` on a temp file beside ``dest``; once the body of the ``with``
    succeeds, the archive is finished, fsync'd and renamed over ``dest``, else removed."""
    if dest.is_dir():
        raise LayerIOError("is a directory; an archive needs a file name", dest)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        writer = _TarWriter(fd)
        yield writer
        writer.finish()
        os.fchmod(fd, 0o644)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(parent)


# --- export: the legacy docker-archive ------------------------------------------------------

_LEGACY_VERSION_FILE = "VERSION"
_LEGACY_CONFIG_FILE = "json"
_LEGACY_LAYER_FILE = "layer.tar"
_LEGACY_REPOSITORIES_FILE = "repositories"
#: What Docker's ``json.Marshal`` made of an empty ``container.Config`` (its fields in order).
_EMPTY_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}
#: ``created`` of every layer below the top (``time.Unix(0, 0)``, written in UTC).
_EPOCH_CREATED = "1970-01-01T00:00:00Z"
#: Go's zero ``time.Time``, what Docker wrote for a config without ``created``.
_ZERO_CREATED = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class _LegacyLayer:
    """One layer directory of a legacy docker-archive."""

    v1_id: str  # 64 hex digits, the directory's name
    json: bytes  # the <id>/json file
    diff_id: str
    digest: str  # of the stored blob


def _write_legacy_archive(
    dest: Path, image: Image, docker_ref: str | None, blobs: list[_Blob], meter: _Meter
) -> None:
    """The legacy ``docker save`` archive of ``image`` (see the module docstring), written to a
    temp file beside ``dest`` and renamed over it once complete."""
    by_digest = {blob.digest: blob for blob in blobs}
    compression = {layer.digest: _sniff(by_digest[layer.digest].path) for layer in image.layers}
    for stored in image.layers:
        if compression[stored.digest] is None and stored.digest != stored.diff_id:
            raise DigestMismatchError(
                f"the uncompressed layer {stored.digest} is listed in the config with diff_id "
                f"{stored.diff_id}; an uncompressed layer's diff_id is its digest",
                by_digest[stored.digest].path,
                what="diff_id",
                expected=stored.diff_id,
                actual=stored.digest,
            )
    if "zstd" in compression.values():
        _zstandard("exporting a zstd layer in the legacy docker-archive form")
    layers = _legacy_layers(image)
    config_file = image.config_digest.removeprefix("sha256:") + ".json"
    manifest = [
        {
            "Config": config_file,
            "RepoTags": [] if docker_ref is None else [docker_ref],
            "Layers": [f"{layer.v1_id}/{_LEGACY_LAYER_FILE}" for layer in layers],
        }
    ]
    # Each diff_id's tar is written once, in the directory of its first layer; a repeat is a
    # symlink to it, as Docker made it.
    first_dir: dict[str, str] = {}
    for layer in layers:
        first_dir.setdefault(layer.diff_id, layer.v1_id)
    members: dict[str, _LegacyLayer | bytes] = {
        config_file: image.config_bytes,
        DOCKER_MANIFEST_FILE: _go_json(manifest) + b"\n",
        **{layer.v1_id: layer for layer in layers},
    }
    if docker_ref is not None and layers:
        repository, tag = _split_tag(docker_ref)
        repositories = {repository: {tag or "latest": layers[-1].v1_id}}
        members[_LEGACY_REPOSITORIES_FILE] = _go_json(repositories) + b"\n"
    with _new_archive(dest) as writer:
        for name in sorted(members):
            member = members[name]
            if isinstance(member, bytes):
                writer.add_bytes(name, member)
                continue
            writer.add_directory(name)
            writer.add_bytes(f"{name}/{_LEGACY_VERSION_FILE}", b"1.0")
            writer.add_bytes(f"{name}/{_LEGACY_CONFIG_FILE}", member.json)
            tar_name = f"{name}/{_LEGACY_LAYER_FILE}"
            first = first_dir[member.diff_id]
            blob = by_digest[member.digest]
            kind = compression[member.digest]
            if first != name:
                writer.add_symlink(tar_name, f"../{first}/{_LEGACY_LAYER_FILE}")
            elif kind is None:
                writer.add_file(tar_name, blob.path, blob.size)
            else:
                fill = functools.partial(_decompress_into, blob.path, kind, member.diff_id)
                writer.add_streamed(tar_name, fill)
            meter.advance(blob.size)
    # The manifest blob has no member in this form; the count still ends at the total.
    meter.finish()


def _legacy_layers(image: Image) -> list[_LegacyLayer]:
    """The layer directories of ``image`` bottom first: v1 ids chained as Docker's
    ``v1.CreateID`` chains them (each from the layer's v1 JSON, its chain id and its parent's
    id), and the ``json`` file of each."""
    diff_ids = image.diff_ids
    layers: list[_LegacyLayer] = []
    chain_id = ""
    parent = ""
    for i, (layer, diff_id) in enumerate(zip(image.layers, diff_ids, strict=True)):
        chain_id = (
            diff_id
            if not chain_id
            else "sha256:" + hashlib.sha256(f"{chain_id} {diff_id}".encode()).hexdigest()
        )
        top = i == len(diff_ids) - 1
        if top:
            fields = _v1_top_fields(image.config)
        else:
            fields = {"created": _EPOCH_CREATED, "container_config": _EMPTY_CONTAINER_CONFIG}
        hashed = {**fields, "layer_id": chain_id}
        if parent:
            hashed["parent"] = f"sha256:{parent}"
        v1_id = hashlib.sha256(_go_json_sorted(hashed)).hexdigest()
        written: dict[str, Any] = {"id": v1_id}
        if parent:
            written["parent"] = parent
        written.update(fields)
        if not top and image.os:
            # Docker sets the os of the layers below the top after computing their id.
            written["os"] = image.os
        layers.append(_LegacyLayer(v1_id, _go_json(written), diff_id, layer.digest))
        parent = v1_id
    return layers


def _v1_top_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The top layer's v1 JSON after ``id`` and ``parent``: the config's own values, in the
    order of Docker's ``V1Image`` fields; ``created`` and ``container_config`` always (Go's
    zero time and an empty container config when the config has none), the others only when
    the config has them (``omitempty``)."""

    def text(key: str) -> str | None:
        value = config.get(key)
        return value if isinstance(value, str) and value else None

    fields: dict[str, Any] = {}
    if comment := text("comment"):
        fields["comment"] = comment
    fields["created"] = text("created") or _ZERO_CREATED
    if container := text("container"):
        fields["container"] = container
    container_config = config.get("container_config")
    fields["container_config"] = (
        container_config if isinstance(container_config, Mapping) else _EMPTY_CONTAINER_CONFIG
    )
    for key in ("docker_version", "author"):
        if value := text(key):
            fields[key] = value
    if isinstance(config.get("config"), Mapping):
        fields["config"] = config["config"]
    for key in ("architecture", "variant", "os"):
        if value := text(key):
            fields[key] = value
    return fields


#: Go's ``json.Marshal`` escapes these inside strings (they appear nowhere else in JSON).
_GO_JSON_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def _go_json(value: object) -> bytes:
    """``value`` as Go's ``json.Marshal`` writes it: compact, keys in the given order, UTF-8,
    ``<``, ``>``, ``&``, U+2028 and U+2029 escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in _GO_JSON_ESCAPES:
        text = text.replace(char, escape)
    return text.encode("utf-8")


def _go_json_sorted(fields: Mapping[str, Any]) -> bytes:
    """A Go ``map[string]*json.RawMessage`` marshalled: top-level keys sorted, the values
    (compacted) keeping their own key order."""
    items = (_go_json(key) + b":" + _go_json(fields[key]) for key in sorted(fields))
    return b"{" + b",".join(items) + b"}"


def _zstandard(purpose: str) -> Any:
    """The ``zstandard`` module (an optional dependency: the ``zstd`` extra)."""
    try:
        import zstandard
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs the 'zstandard' package (pip install 'layercore[zstd]')"
        ) from e
    return zstandard


_DECOMPRESS_CHUNK = 1 << 20


def _decompress_into(path: Path, compression: Compression, diff_id: str, out_fd: int) -> int:
    """Appends the uncompressed tar of the gzip or zstd layer blob ``path`` at the position of
    ``out_fd``, 1 MiB at a time (memory stays constant whatever the layer's size), hashing it
    on the way; returns its size. A tar whose sha256 is not ``diff_id`` raises
    :class:`~layercore.errors.DigestMismatchError`, an undecodable stream
    :class:`~layercore.errors.CorruptLayerError`."""
    stream_errors: tuple[type[Exception], ...] = (EOFError, zlib.error)
    if compression == "zstd":
        stream_errors += (_zstandard("decompressing a zstd layer").ZstdError,)
    hasher = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            chunks = _gunzip_chunks(f) if compression == "gzip" else _unzstd_chunks(f)
            for chunk in chunks:
                hasher.update(chunk)
                _write_all(out_fd, chunk)
                size += len(chunk)
    except stream_errors as e:
        raise CorruptLayerError(f"cannot decompress the {compression} layer: {e}", path) from None
    actual = "sha256:" + hasher.hexdigest()
    if actual != diff_id:
        raise DigestMismatchError(
            f"the layer decompresses to a tar whose sha256 is {actual}, not the diff_id "
            f"{diff_id} the image's config lists",
            path,
            what="diff_id",
            expected=diff_id,
            actual=actual,
        )
    return size


def _gunzip_chunks(f: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (members one after another) in pieces of at
    most 1 MiB. A stream that ends inside a member is ``EOFError``."""
    decompressor = zlib.decompressobj(wbits=31)
    pending = b""
    while True:
        if not pending:
            pending = f.read(_DECOMPRESS_CHUNK)
            if not pending:
                tail = decompressor.flush()
                if tail:
                    yield tail
                if not decompressor.eof:
                    raise EOFError("the gzip stream ends inside a member")
                return
        if decompressor.eof:
            decompressor = zlib.decompressobj(wbits=31)
        out = decompressor.decompress(pending, _DECOMPRESS_CHUNK)
        pending = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
        if out:
            yield out


def _unzstd_chunks(f: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of a zstd stream (frames one after another) in pieces of at most
    1 MiB."""
    zstandard = _zstandard("decompressing a zstd layer")
    reader = zstandard.ZstdDecompressor().stream_reader(
        f, read_size=_DECOMPRESS_CHUNK, read_across_frames=True, closefd=False
    )
    while chunk := reader.read(_DECOMPRESS_CHUNK):
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _TarWriter:
    """Writes a reproducible tar to a file descriptor: headers from :class:`tarfile.TarInfo`
    (PAX format, mtime 0, owner 0:0 without names), bodies copied by the kernel."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = 0

    def _write(self, data: bytes) -> None:
        _write_all(self._fd, data)
        self._written += len(data)

    def _header(self, name: str, size: int, kind: bytes, mode: int, linkname: str = "") -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type, info.mode, info.mtime = size, kind, mode, 0
        info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
        info.linkname = linkname
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def _pad(self, size: int) -> None:
        if size % _BLOCK:
            self._write(bytes(_BLOCK - size % _BLOCK))

    def add_directory(self, name: str) -> None:
        self._write(self._header(name + "/", 0, tarfile.DIRTYPE, 0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._write(self._header(name, len(data), tarfile.REGTYPE, 0o644))
        self._write(data)
        self._pad(len(data))

    def add_symlink(self, name: str, target: str) -> None:
        self._write(self._header(name, 0, tarfile.SYMTYPE, 0o777, target))

    def add_file(self, name: str, path: Path, size: int) -> None:
        self._write(self._header(name, size, tarfile.REGTYPE, 0o644))
        _copy_file_into(path, self._fd, size)
        self._written += size
        self._pad(size)

    def add_streamed(self, name: str, fill: Callable[[int], int]) -> int:
        """A regular file whose size is known only once its body is written: a header block
        is reserved, ``fill(fd)`` appends the body at the descriptor's position and returns
        its size, and the header then goes into the reserved block. ``name`` must fit one
        ustar header (ASCII, under 100 bytes). A body of 8 GiB or more has its size in the
        base-256 form of GNU tar (which Go's archive/tar, GNU tar, bsdtar and Python's tarfile
        read): the PAX record that would otherwise carry it needs blocks before the header."""
        start = self._written
        self._write(bytes(_BLOCK))
        size = fill(self._fd)
        self._written += size
        header = self._header(name, size, tarfile.REGTYPE, 0o644)
        if size >= _USTAR_MAX_SIZE:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, 0, "", ""
            header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        if len(header) != _BLOCK:
            raise ValueError(f"archive member name {name!r} does not fit one tar header")
        view = memoryview(header)
        offset = start
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        self._pad(size)
        return size

    def finish(self) -> None:
        """The end-of-archive zero blocks, then zeros up to a whole record (as tar does)."""
        end = self._written + 2 * _BLOCK
        self._write(bytes(2 * _BLOCK + (-end) % _RECORD))


def _copy_file_into(path: Path, out_fd: int, size: int) -> None:
    """Appends the ``size`` bytes of ``path`` at the position of ``out_fd`` with
    ``copy_file_range`` (``sendfile`` where the kernel refuses it, across some file systems):
    the bytes never pass through Python. Writeback of each 64 MiB written is started at once
    (``POSIX_FADV_DONTNEED`` starts it on Linux without waiting), so the archive's final fsync
    overlaps the copy instead of following it."""
    in_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        actual = os.fstat(in_fd).st_size
        if actual != size:
            raise LayerIOError(f"blob is {actual} bytes, expected {size}", path)
        offset = 0
        kernel_copy = True
        while offset < size:
            count = min(size - offset, _WRITEBACK_STEP)
            start = os.lseek(out_fd, 0, os.SEEK_CUR)
            if kernel_copy:
                try:
                    n = os.copy_file_range(in_fd, out_fd, count, offset)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    kernel_copy = False
                    continue
            else:
                n = os.sendfile(out_fd, in_fd, offset, count)
            if n == 0:
                raise LayerIOError(f"blob ended after {offset} of {size} bytes", path)
            os.posix_fadvise(out_fd, start, n, os.POSIX_FADV_DONTNEED)
            offset += n
    finally:
        os.close(in_fd)


#: Bytes copied between two starts of writeback in :func:`_copy_file_into`.
_WRITEBACK_STEP = 64 << 20


# --- names, references, JSON ----------------------------------------------------------------


def _split_tag(ref: str) -> tuple[str, str | None]:
    """``repo:tag`` into ``(repo, tag)``; the tag is after the last colon past the last slash
    (``localhost:5000/app`` has none)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, None
    return name, tag


def _familiar(ref: str) -> str:
    """A Docker reference in Docker's short form with its tag: ``docker.io/library/app:1.0``
    and ``app`` become ``app:1.0`` and ``app:latest``."""
    name, tag = _split_tag(ref)
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name.removeprefix(prefix)
            break
    else:
        first = name.partition("/")[0]
        if "/" in name and ("." in first or ":" in first or first == "localhost"):
            return f"{name}:{tag or 'latest'}"
    if name.startswith("library/") and name.count("/") == 1:
        name = name.removeprefix("library/")
    return f"{name}:{tag or 'latest'}"


def _qualified(ref: str) -> str:
    """A Docker reference in full: ``app:1.0`` is ``docker.io/library/app:1.0``."""
    return Reference.parse(ref).qualified


def _docker_reference(name: str) -> str:
    """``name`` as a docker-archive ``RepoTags`` item: a Docker reference with a tag, in
    Docker's short form."""
    try:
        ref = Reference.parse(name)
    except InvalidReferenceError as e:
        raise ValueError(
            f"{name!r} is not a Docker image reference ([domain/]repository[:tag], repository "
            f"in lowercase), which a docker-archive's RepoTags needs ({e.message}); pass a "
            "name that is"
        ) from None
    if ref.digest is not None:
        raise ValueError(
            f"{name!r} has a digest, which a docker-archive's RepoTags cannot carry; pass "
            "repository[:tag]"
        )
    return ref.familiar


def _repo_tags(item: Mapping[str, Any]) -> list[str]:
    tags = item.get("RepoTags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _annotations(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    annotations = entry.get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def _entry_name(entry: Mapping[str, Any]) -> str | None:
    """The name an index entry gives its image: Docker's short form of a containerd image
    name (Docker >= 25 archives), else the ref name."""
    annotations = _annotations(entry)
    image_name = annotations.get(IMAGE_NAME)
    if isinstance(image_name, str) and image_name:
        return _familiar(image_name)
    ref_name = annotations.get(REF_NAME)
    return ref_name if isinstance(ref_name, str) and ref_name else None


def _entry_matches(entry: Mapping[str, Any], name: str) -> bool:
    annotations = _annotations(entry)
    if name in (entry.get("digest"), annotations.get(REF_NAME)):
        return True
    image_name = annotations.get(IMAGE_NAME)
    return isinstance(image_name, str) and _familiar(image_name) == _familiar(name)


def _entry_list(entries: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(_entry_name(e) or str(e.get("digest")) for e in entries)


def _platform_matches(platform: object, arch: str, variant: str | None) -> bool:
    return (
        isinstance(platform, Mapping)
        and platform.get("os") == "linux"
        and platform.get("architecture") == arch
        and (variant is None or platform.get("variant") == variant)
    )


def _platform_text(platform: object) -> str:
    if not isinstance(platform, Mapping):
        return "unknown"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)


def _relative_name(raw: str, origin: Path) -> str:
    """An archive member or layout file name normalised (``./`` and ``//`` dropped);
    absolute names and ``..`` components are refused."""
    if raw.startswith("/"):
        raise CorruptImageError(f"{raw!r} is an absolute name", origin)
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CorruptImageError(f"{raw!r} has a '..' component", origin)
    return "/".join(parts)


def _resolve_dots(joined: str, member: str, origin: Path) -> str:
    """A link target joined to its member's directory, with ``..`` applied; it may not climb
    out of the archive."""
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise CorruptImageError(
                    f"archive member {member!r} links outside the archive", origin
                )
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _check_blob_member(name: str, origin: Path) -> None:
    if name.startswith("blobs/sha256/") and not _BLOB_MEMBER_RE.fullmatch(name):
        raise CorruptImageError(
            f"{name!r} is not named by a sha256 digest (blobs/sha256/<64 hex digits>)", origin
        )


def _blob_name(digest: str) -> str:
    """Where a blob lives in an OCI layout; ``digest`` was checked to be sha256."""
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _named_digest(name: str) -> str | None:
    """The digest a member name promises: ``blobs/sha256/<hex>``, and nothing else (tools
    name legacy members by diff_id or by image id, so those names promise nothing)."""
    m = _BLOB_MEMBER_RE.fullmatch(name.removeprefix("./"))
    return None if m is None else "sha256:" + m.group(1)


def _descriptor(desc: object, what: str, origin: Path) -> tuple[str, int, str]:
    """``(digest, size, mediaType)`` of a descriptor found in ``what``, checked."""
    if not isinstance(desc, Mapping):
        raise CorruptImageError(f"{what}: a descriptor is not a JSON object", origin)
    digest, size, media_type = desc.get("digest"), desc.get("size"), desc.get("mediaType")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise CorruptImageError(
            f"{what}: descriptor digest {digest!r} is not a sha256 digest (sha256:<64 hex digits>)",
            origin,
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CorruptImageError(f"{what}: descriptor of {digest} has size {size!r}", origin)
    if not isinstance(media_type, str):
        raise CorruptImageError(f"{what}: descriptor of {digest} has no mediaType", origin)
    return digest, size, media_type


def _index_entries(index: Mapping[str, Any], what: str, origin: Path) -> list[Mapping[str, Any]]:
    manifests = index.get("manifests")
    if index.get("schemaVersion") != 2 or not isinstance(manifests, list):
        raise CorruptImageError(
            f"{what}: not an image index (schemaVersion 2 with a manifests list)", origin
        )
    for entry in manifests:
        _descriptor(entry, what, origin)
    return manifests


def _diff_ids(config: Mapping[str, Any], what: str, origin: Path) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if diff_ids is None and isinstance(rootfs, Mapping) and rootfs.get("type") == "layers":
        diff_ids = []
    if not isinstance(diff_ids, list):
        raise CorruptImageError(f"{what}: the config has no rootfs.diff_ids list", origin)
    for d in diff_ids:
        if not isinstance(d, str) or not _DIGEST_RE.fullmatch(d):
            raise CorruptImageError(f"{what}: diff_id {d!r} is not a sha256 digest", origin)
    return diff_ids


def _json_value(data: bytes, what: str, origin: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    # RecursionError: arrays or objects nested deeper than the parser's stack.
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptImageError(f"{what} is not valid JSON: {e}", origin) from None


def _json_object(data: bytes, what: str, origin: Path) -> dict[str, Any]:
    value = _json_value(data, what, origin)
    if not isinstance(value, dict):
        raise CorruptImageError(f"{what} is not a JSON object", origin)
    return value


def _blob_mismatch(name: str, e: DigestMismatchError, origin: Path) -> DigestMismatchError:
    return DigestMismatchError(
        f"{name}: the blob's bytes do not match its name (they hash to {e.actual})",
        origin,
        what="digest",
        expected=e.expected,
        actual=e.actual,
    )


# --- files ----------------------------------------------------------------------------------


def _archive_format(path: Path, names: set[str]) -> Format:
    if OCI_LAYOUT in names and OCI_INDEX_FILE in names:
        return "oci-archive"
    if DOCKER_MANIFEST_FILE in names:
        return "docker-archive"
    raise CorruptImageError(
        f"not an image archive: it has neither {OCI_LAYOUT} and {OCI_INDEX_FILE} (an OCI "
        f"archive) nor {DOCKER_MANIFEST_FILE} (a docker-archive)",
        path,
    )


def _is_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(2) == _GZIP_MAGIC
    except OSError as e:
        raise LayerIOError(f"cannot read: {e.strerror or e}", path) from e


def _sniff(path: Path) -> Compression:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic == _ZSTD_MAGIC:
        return "zstd"
    return None


def _gzip_tar_names(path: Path) -> set[str]:
    """The member names of a gzip-compressed tar, streamed (nothing written)."""
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for info in tar:
                name = _relative_name(info.name, path)
                if name and not info.isdir():
                    _check_blob_member(name, path)
                    names.add(name)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptImageError(f"not a readable gzip-compressed tar archive: {e}", path) from None
    return names


def _gunzip(src: Path, dest: Path) -> None:
    """Decompresses ``src`` into the new file ``dest`` (the one import path where bytes go
    through Python: zlib hands them over in 1 MiB pieces)."""
    try:
        with gzip.open(src, "rb") as compressed, dest.open("xb") as out:
            shutil.copyfileobj(compressed, out, 1 << 20)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptImageError(f"not a valid gzip stream: {e}", src) from None


@contextlib.contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_layout_file(layout: Path, dest: Path) -> None:
    data = _json_object(_read_small_file(layout), OCI_LAYOUT, dest)
    if data.get("imageLayoutVersion") != _LAYOUT_VERSION:
        raise CorruptImageError(
            f"{OCI_LAYOUT}: unsupported imageLayoutVersion {data.get('imageLayoutVersion')!r}",
            dest,
        )


def _read_small_file(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(_MAX_JSON_BYTES + 1)
    if len(data) > _MAX_JSON_BYTES:
        raise CorruptImageError(f"larger than {_MAX_JSON_BYTES} bytes", path)
    return data
