"""Images: a manifest, a config and a stack of layer blobs, changed without mutation.

An :class:`Image` is immutable; :meth:`Image.append`, :meth:`Image.with_config`,
:meth:`Image.flatten` and :meth:`Image.squash` return new images. Every manifest and config that
layercore writes is canonical JSON (sorted keys, no spaces, UTF-8), so the same content always
has the same digest. An image read with :meth:`Image.from_json` keeps its bytes exactly, so an
imported image keeps its digests until it is changed; the first change of a Docker v2s2 image
rewrites it with OCI media types (the blobs stay the same).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias

from layercore import _core
from layercore.errors import CorruptImageError
from layercore.flatten import flatten as _flatten
from layercore.flatten import squash as _squash
from layercore.layer import Compression, Layer, StrPath

if TYPE_CHECKING:
    from datetime import datetime

    from layercore.analysis.waste import Analysis, SquashSavings
    from layercore.stack import Stack

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "Descriptor",
    "HistoryEntry",
    "Image",
    "RuntimeConfig",
    "canonical_json",
    "host_architecture",
    "layer_compression",
    "sha256_digest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: Docker v2s2 media types and the OCI types an image changed by layercore uses instead.
_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_TAR: OCI_LAYER_TAR,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": OCI_LAYER_ZSTD,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
}
_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
_CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)

#: The kernel's machine names (``os.uname().machine``, which ``platform.machine()`` returns)
#: and the GOARCH names images use.
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "loongarch64": "loong64",
}

#: When an image or a history entry was made. ``datetime`` is imported only where one is
#: formatted, to keep ``import layercore`` cheap.
Created: TypeAlias = "str | int | datetime | None"


def canonical_json(obj: Any) -> bytes:
    """The bytes layercore writes for a JSON document: sorted keys, no whitespace, UTF-8.

    Equal documents give equal bytes, hence equal digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def host_architecture() -> tuple[str, str | None]:
    """The host's ``(architecture, variant)`` as image platforms spell them (GOARCH names:
    ``amd64``, ``arm64``, ...; the variant is only known for 32-bit ARM)."""
    machine = os.uname().machine.lower()
    arch = _GOARCH.get(machine, machine)
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
    return arch, variant


def layer_compression(media_type: str) -> Compression:
    """The compression a layer media type names (OCI ``+gzip``/``+zstd``, Docker ``.gzip``)."""
    if media_type.endswith(("+gzip", ".gzip")):
        return "gzip"
    if media_type.endswith(("+zstd", ".zstd")):
        return "zstd"
    return None


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of a document in memory (a config, a manifest), by the Rust core."""
    digester = _core.Digester()
    digester.update(data)
    return digester.digest()


def _timestamp(created: Created) -> str:
    """RFC 3339 in UTC, whole seconds: None means ``$SOURCE_DATE_EPOCH`` if set, else now."""
    from datetime import UTC, datetime

    if isinstance(created, str):
        return created
    if isinstance(created, datetime):
        return created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if created is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch:
            try:
                created = int(epoch)
            except ValueError:
                raise ValueError(
                    f"SOURCE_DATE_EPOCH must be a Unix time in whole seconds, not {epoch!r}"
                ) from None
        else:
            created = int(time.time())
    if isinstance(created, bool) or not isinstance(created, int):
        raise TypeError(f"created must be a str, int, datetime or None, not {created!r}")
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


def _reduce(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """Pickle (and deepcopy) support for a dataclass holding read-only mapping proxies, which
    cannot be pickled themselves: the mappings travel as plain dicts."""
    values = (getattr(obj, f.name) for f in dataclasses.fields(obj))
    return type(obj), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest or index says about a blob it points to."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen_mapping(self.annotations))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reduce(self)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as OCI JSON (``annotations`` only when there are some)."""
        obj: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Descriptor:
        """Reads an OCI descriptor; :class:`~layercore.errors.CorruptImageError` if a field is
        missing or has the wrong type."""
        if not isinstance(obj, Mapping):
            raise CorruptImageError(f"a descriptor must be a JSON object, not {obj!r}")
        media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(media_type, str):
            raise CorruptImageError(f"descriptor without a string mediaType: {dict(obj)!r}")
        if not isinstance(digest, str) or ":" not in digest:
            raise CorruptImageError(f"descriptor without a valid digest: {dict(obj)!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CorruptImageError(f"descriptor without a valid size: {dict(obj)!r}")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise CorruptImageError(f"descriptor annotations must map strings to strings: {obj!r}")
        return cls(media_type, digest, size, annotations)


@dataclass(frozen=True)
class HistoryEntry:
    """One entry of a config's ``history``: a build step, with or without a layer."""

    created: str | None = None
    created_by: str | None = None
    comment: str | None = None
    author: str | None = None
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        """The entry as config JSON; absent fields and ``empty_layer=False`` are left out."""
        obj: dict[str, Any] = {}
        for key, value in (
            ("created", self.created),
            ("created_by", self.created_by),
            ("comment", self.comment),
            ("author", self.author),
        ):
            if value is not None:
                obj[key] = value
        if self.empty_layer:
            obj["empty_layer"] = True
        return obj

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HistoryEntry:
        """Reads a config history entry; :class:`~layercore.errors.CorruptImageError` if it is
        not an object or a field has the wrong type."""
        if not isinstance(obj, Mapping):
            raise CorruptImageError(f"a history entry must be a JSON object, not {obj!r}")
        values: dict[str, str | None] = {}
        for key in ("created", "created_by", "comment", "author"):
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise CorruptImageError(f"history entry field {key!r} is not a string: {value!r}")
            values[key] = value
        empty = obj.get("empty_layer", False)
        if not isinstance(empty, bool):
            raise CorruptImageError(f"history entry empty_layer is not a boolean: {empty!r}")
        return cls(empty_layer=empty, **values)


@dataclass(frozen=True)
class RuntimeConfig:
    """The config's ``config`` object (what a container runs with), typed."""

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_mapping(self.labels))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _reduce(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> RuntimeConfig:
        """Reads the Go-style object (``Env``, ``Cmd``, ``Labels``, ...); null fields count as
        absent. :class:`~layercore.errors.CorruptImageError` for a field of the wrong type."""
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise CorruptImageError(f"the config's 'config' must be a JSON object, not {obj!r}")

        def strings(key: str) -> tuple[str, ...] | None:
            value = obj.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CorruptImageError(f"config {key} must be a list of strings, not {value!r}")
            return tuple(value)

        def string(key: str) -> str | None:
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise CorruptImageError(f"config {key} must be a string, not {value!r}")
            return value or None

        def keys(key: str) -> tuple[str, ...]:
            value = obj.get(key)
            if value is None:
                return ()
            if not isinstance(value, Mapping):
                raise CorruptImageError(f"config {key} must be a JSON object, not {value!r}")
            return tuple(value)

        labels = obj.get("Labels") or {}
        if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
            raise CorruptImageError(f"config Labels must map strings to strings, not {labels!r}")
        return cls(
            env=strings("Env") or (),
            cmd=strings("Cmd"),
            entrypoint=strings("Entrypoint"),
            working_dir=string("WorkingDir"),
            user=string("User"),
            labels=labels,
            exposed_ports=keys("ExposedPorts"),
            volumes=keys("Volumes"),
            stop_signal=string("StopSignal"),
        )

    def env_dict(self) -> dict[str, str]:
        """``env`` as a mapping (a ``KEY`` without ``=`` maps to the empty string)."""
        return dict(_split_env(item) for item in self.env)


def _split_env(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key, value


class Image:
    """An OCI (or Docker v2s2) image: manifest, config and layer blobs. Immutable: every change
    returns a new image.

    Build one with :meth:`scratch` and :meth:`append`, or read one with :meth:`from_json` (what
    :class:`~layercore.store.Store` and the transports do). ``Image(manifest_bytes,
    config_bytes, layers)`` is the same as :meth:`from_json`. Two images are equal when their
    manifest digests are.
    """

    __slots__ = (
        "_config",
        "_index_dir",
        "_manifest",
        "_stack",
        "architecture",
        "config_bytes",
        "config_digest",
        "created",
        "diff_ids",
        "digest",
        "history",
        "layers",
        "manifest_bytes",
        "manifest_descriptor",
        "media_type",
        "os",
        "runtime_config",
    )

    #: The layers, bottom first; each ``path`` is where its blob is.
    layers: tuple[Layer, ...]
    #: Exactly the config blob's bytes.
    config_bytes: bytes
    #: Exactly the manifest blob's bytes.
    manifest_bytes: bytes
    #: sha256 of ``manifest_bytes``: the image's identity.
    digest: str
    #: sha256 of ``config_bytes``.
    config_digest: str
    #: Media type, digest and size of the manifest (what an index entry points with).
    manifest_descriptor: Descriptor
    history: tuple[HistoryEntry, ...]
    runtime_config: RuntimeConfig
    architecture: str
    os: str
    #: The config's ``created`` timestamp (RFC 3339), if it has one.
    created: str | None
    #: The layers' diff_ids, from the config's ``rootfs``.
    diff_ids: tuple[str, ...]
    #: The manifest's media type (OCI or Docker v2s2).
    media_type: str
    _config: dict[str, Any]
    _manifest: dict[str, Any]
    _index_dir: Path | None
    _stack: Stack | None

    def __init__(
        self,
        manifest_bytes: bytes,
        config_bytes: bytes,
        layers: Sequence[Layer],
        *,
        index_dir: StrPath | None = None,
    ) -> None:
        manifest = _parse_json(manifest_bytes, "manifest")
        config = _parse_json(config_bytes, "config")
        media_type = manifest.get("mediaType", OCI_MANIFEST)
        if manifest.get("schemaVersion") != 2:
            raise CorruptImageError(
                f"manifest schemaVersion must be 2, not {manifest.get('schemaVersion')!r}"
            )
        if media_type not in _MANIFEST_TYPES:
            raise CorruptImageError(
                f"manifest media type {media_type!r} is not an image manifest "
                f"(expected {OCI_MANIFEST} or {DOCKER_MANIFEST})"
            )
        if not isinstance(manifest.get("config"), dict):
            raise CorruptImageError("manifest has no 'config' descriptor")
        config_desc = Descriptor.from_json(manifest["config"])
        if config_desc.media_type not in _CONFIG_TYPES:
            raise CorruptImageError(
                f"manifest config media type {config_desc.media_type!r} is not an image config"
            )
        config_digest = sha256_digest(config_bytes)
        if config_desc.digest != config_digest or config_desc.size != len(config_bytes):
            raise CorruptImageError(
                f"manifest names config {config_desc.digest} ({config_desc.size} bytes), but the "
                f"config is {config_digest} ({len(config_bytes)} bytes)"
            )
        raw_layers = manifest.get("layers")
        if not isinstance(raw_layers, list):
            raise CorruptImageError("manifest has no 'layers' list")
        descriptors = [Descriptor.from_json(d) for d in raw_layers]
        rootfs = config.get("rootfs")
        if not isinstance(rootfs, Mapping) or rootfs.get("type") != "layers":
            raise CorruptImageError(f"config rootfs must be of type 'layers', not {rootfs!r}")
        diff_ids = rootfs.get("diff_ids") or []
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise CorruptImageError(f"config rootfs.diff_ids is not a list of strings: {diff_ids}")
        layers = list(layers)
        if not len(layers) == len(descriptors) == len(diff_ids):
            raise CorruptImageError(
                f"{len(layers)} layers given, the manifest lists {len(descriptors)} and the "
                f"config {len(diff_ids)} diff_ids"
            )
        checked: list[Layer] = []
        for i, (layer, desc, diff_id) in enumerate(zip(layers, descriptors, diff_ids, strict=True)):
            if layer.digest != desc.digest or layer.size != desc.size:
                raise CorruptImageError(
                    f"layer {i} ({layer.path}) is {layer.digest} ({layer.size} bytes), but the "
                    f"manifest lists {desc.digest} ({desc.size} bytes)"
                )
            if layer.diff_id != diff_id:
                raise CorruptImageError(
                    f"layer {i} ({layer.path}) has diff_id {layer.diff_id}, but the config "
                    f"lists {diff_id}"
                )
            if layer.media_type != desc.media_type:
                layer = dataclasses.replace(layer, media_type=desc.media_type)
            checked.append(layer)
        history_json = config.get("history") or []
        if not isinstance(history_json, list):
            raise CorruptImageError(f"config history is not a list: {history_json!r}")
        history = tuple(HistoryEntry.from_json(h) for h in history_json)
        with_layer = sum(1 for h in history if not h.empty_layer)
        if with_layer > len(checked):
            raise CorruptImageError(
                f"config history has {with_layer} entries with a layer, but the image has "
                f"{len(checked)} layers"
            )
        architecture, os_name = config.get("architecture"), config.get("os")
        if not isinstance(architecture, str) or not isinstance(os_name, str):
            raise CorruptImageError(
                f"config needs string 'architecture' and 'os', not {architecture!r}, {os_name!r}"
            )
        created = config.get("created")
        if created is not None and not isinstance(created, str):
            raise CorruptImageError(f"config 'created' is not a string: {created!r}")

        def init(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        init("_manifest", manifest)
        init("_config", config)
        init("_index_dir", None if index_dir is None else Path(index_dir))
        init("_stack", None)
        init("layers", tuple(checked))
        init("config_bytes", bytes(config_bytes))
        init("manifest_bytes", bytes(manifest_bytes))
        init("config_digest", config_digest)
        init("digest", sha256_digest(manifest_bytes))
        init("manifest_descriptor", Descriptor(media_type, self.digest, len(manifest_bytes)))
        init("media_type", media_type)
        init("history", history)
        init("runtime_config", RuntimeConfig.from_json(config.get("config")))
        init("architecture", architecture)
        init("os", os_name)
        init("created", created)
        init("diff_ids", tuple(diff_ids))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Image is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Image is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _restore_image, (
            self.manifest_bytes,
            self.config_bytes,
            self.layers,
            self._index_dir,
        )

    def __repr__(self) -> str:
        return f"Image({self.digest}, {len(self.layers)} layers, {self.os}/{self.architecture})"

    @property
    def config(self) -> dict[str, Any]:
        """A deep copy of the config JSON object."""
        return copy.deepcopy(self._config)

    @property
    def manifest(self) -> dict[str, Any]:
        """A deep copy of the manifest JSON object."""
        return copy.deepcopy(self._manifest)

    @property
    def stack(self) -> Stack:
        """The merged view of the layers (built on first use, then kept). The layers' indexes
        are cached in the image's index directory (a store's ``.layercore/index``) when it has
        one and it is writable."""
        if self._stack is None:
            from layercore.stack import Stack

            index_dir = self._index_dir
            save = index_dir is not None and os.access(index_dir, os.W_OK)
            stack = Stack(self.layers, save_index=save, index_dir=index_dir)
            object.__setattr__(self, "_stack", stack)
        assert self._stack is not None
        return self._stack

    @classmethod
    def scratch(
        cls,
        *,
        architecture: str | None = None,
        os: str = "linux",
        variant: str | None = None,
        created: Created = None,
    ) -> Image:
        """An image without layers. ``architecture`` defaults to the host's (GOARCH spelling,
        with the host's variant on 32-bit ARM); ``created`` is an RFC 3339 string, a Unix
        time, a datetime, or None for ``$SOURCE_DATE_EPOCH`` (else now)."""
        if architecture is None:
            architecture, host_variant = host_architecture()
            variant = variant if variant is not None else host_variant
        config: dict[str, Any] = {
            "architecture": architecture,
            "os": os,
            "created": _timestamp(created),
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        }
        if variant is not None:
            config["variant"] = variant
        return cls._build(config, [], [], {})

    @classmethod
    def from_json(
        cls, manifest_bytes: bytes, config_bytes: bytes, layers: Sequence[Layer]
    ) -> Image:
        """An image from its manifest and config bytes (kept exactly, so digests are preserved)
        and its layers, bottom first.

        Raises :class:`~layercore.errors.CorruptImageError` if either is not valid JSON, if the
        manifest's config descriptor does not match ``config_bytes``, or if the layers, the
        manifest's layer descriptors and the config's diff_ids disagree in number, digest, size
        or diff_id. The layers take the manifest's media types."""
        return cls(manifest_bytes, config_bytes, layers)

    def append(
        self,
        layer: Layer,
        *,
        created_by: str | None = None,
        comment: str | None = None,
        created: Created = None,
        author: str | None = None,
    ) -> Image:
        """This image with ``layer`` on top and a history entry for it."""
        config = self._config_for_change()
        timestamp = _timestamp(created)
        history = self._padded_history(config)
        history.append(
            HistoryEntry(timestamp, created_by, comment, author, empty_layer=False).to_json()
        )
        config["history"] = history
        config["created"] = timestamp
        config["rootfs"]["diff_ids"] = [*self.diff_ids, layer.diff_id]
        layer = _oci_layer(layer)
        return self._build(
            config,
            [*self._layer_descriptors(), _layer_descriptor(layer)],
            [*self.layers, layer],
            self._manifest,
        )

    def with_config(
        self,
        *,
        env: Mapping[str, str | None] | Sequence[str] | None = None,
        cmd: Sequence[str] | None = None,
        entrypoint: Sequence[str] | None = None,
        working_dir: str | None = None,
        user: str | None = None,
        labels: Mapping[str, str | None] | None = None,
        exposed_ports: Sequence[str] | None = None,
        volumes: Sequence[str] | None = None,
        stop_signal: str | None = None,
        created_by: str | None = None,
        comment: str | None = None,
        created: Created = None,
    ) -> Image:
        """This image with its runtime config changed, and one ``empty_layer`` history entry.

        None leaves a setting unchanged. ``env`` (a mapping, or ``KEY=VALUE`` strings) and
        ``labels`` are merged into what is there: a value of None deletes the key, existing
        keys keep their place, new ones are appended. ``cmd``, ``entrypoint``,
        ``exposed_ports`` (``"80"`` means ``"80/tcp"``) and ``volumes`` (sets: the JSON keeps
        them sorted) replace what is there; an empty sequence clears them. An empty string
        clears ``working_dir``, ``user`` or ``stop_signal``. ``created_by`` defaults to a
        Dockerfile-like line (``ENV A=1 B=2; CMD ["sh"]``). ``ValueError`` if nothing is to
        change.
        """
        config = self._config_for_change()
        run = config.get("config")
        if not isinstance(run, dict):
            run = {}
            config["config"] = run
        steps: list[str] = []
        if env is not None:
            steps.extend(_merge_env(run, env))
        if entrypoint is not None:
            _set_list(run, "Entrypoint", _strings(entrypoint, "entrypoint"))
            steps.append(f"ENTRYPOINT {_json_line(list(entrypoint))}")
        if cmd is not None:
            _set_list(run, "Cmd", _strings(cmd, "cmd"))
            steps.append(f"CMD {_json_line(list(cmd))}")
        for key, instruction, value in (
            ("WorkingDir", "WORKDIR", working_dir),
            ("User", "USER", user),
            ("StopSignal", "STOPSIGNAL", stop_signal),
        ):
            if value is not None:
                if value:
                    run[key] = value
                else:
                    run.pop(key, None)
                steps.append(f"{instruction} {value}".rstrip())
        if labels is not None:
            steps.extend(_merge_labels(run, labels))
        if exposed_ports is not None:
            ports = [p if "/" in p else f"{p}/tcp" for p in _strings(exposed_ports, "ports")]
            _set_set(run, "ExposedPorts", ports)
            steps.append(f"EXPOSE {' '.join(ports)}".rstrip())
        if volumes is not None:
            vols = _strings(volumes, "volumes")
            _set_set(run, "Volumes", vols)
            steps.append(f"VOLUME {_json_line(vols)}")
        if not steps:
            raise ValueError("with_config: nothing to change (every setting is None)")
        timestamp = _timestamp(created)
        history = self._padded_history(config)
        entry = HistoryEntry(
            timestamp,
            created_by if created_by is not None else "; ".join(steps),
            comment,
            empty_layer=True,
        )
        history.append(entry.to_json())
        config["history"] = history
        config["created"] = timestamp
        return self._build(config, self._layer_descriptors(), list(self.layers), self._manifest)

    def with_runtime_config(
        self,
        run: Mapping[str, Any],
        *,
        created_by: str | None = None,
        comment: str | None = None,
        created: Created = None,
        author: str | None = None,
        history: bool = True,
    ) -> Image:
        """This image with its runtime ``config`` object replaced by ``run`` as given (Go-style
        keys: ``Env``, ``Cmd``, ``Healthcheck``, ``OnBuild``, ``Shell`` ...; None values are
        dropped), what a Dockerfile builder computes for a metadata instruction. With
        ``history``, one ``empty_layer`` history entry is added; ``author`` sets the image's
        ``author``."""
        config = self._config_for_change()
        config["config"] = {k: v for k, v in run.items() if v is not None}
        if author is not None:
            config["author"] = author
        timestamp = _timestamp(created)
        if history:
            entries = self._padded_history(config)
            entries.append(HistoryEntry(timestamp, created_by, comment, empty_layer=True).to_json())
            config["history"] = entries
            config["created"] = timestamp
        return self._build(config, self._layer_descriptors(), list(self.layers), self._manifest)

    def flatten(
        self,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        threads: int | None = None,
        source_date_epoch: int | None = None,
        created_by: str | None = None,
    ) -> Image:
        """This image with its layers merged into one, written at ``out`` (see
        :func:`layercore.flatten.flatten`). Every old history entry is kept, marked
        ``empty_layer``, and one entry (``created_by`` default ``"layercore flatten"``) is
        added for the new layer; ``created`` is ``source_date_epoch`` when given."""
        layer = _flatten(
            self.layers,
            out,
            compression=compression,
            level=level,
            threads=threads,
            source_date_epoch=source_date_epoch,
        )
        config = self._config_for_change()
        timestamp = _timestamp(source_date_epoch)
        history = [{**h, "empty_layer": True} for h in self._padded_history(config)]
        history.append(HistoryEntry(timestamp, created_by or "layercore flatten").to_json())
        config["history"] = history
        config["created"] = timestamp
        config["rootfs"]["diff_ids"] = [layer.diff_id]
        layer = _oci_layer(layer)
        return self._build(config, [_layer_descriptor(layer)], [layer], self._manifest)

    def squash(
        self,
        start: int,
        end: int,
        out: StrPath,
        *,
        compression: Compression = "gzip",
        level: int | None = None,
        threads: int | None = None,
        source_date_epoch: int | None = None,
        created_by: str | None = None,
    ) -> Image:
        """This image with layers ``start..end`` (end exclusive) merged into one layer at
        ``out`` (see :func:`layercore.flatten.squash`); the result shows the same tree.

        The history entries of the squashed layers are kept, marked ``empty_layer``, and one
        entry for the new layer (``created_by`` default ``"layercore squash START..END"``) goes
        right after the entry of layer ``end - 1``, so the i-th history entry with a layer still
        describes layer i. ``ValueError`` for an empty or out-of-range ``start:end``."""
        new_layers = _squash(
            self.layers,
            start,
            end,
            out,
            compression=compression,
            level=level,
            threads=threads,
            source_date_epoch=source_date_epoch,
        )
        squashed = _oci_layer(new_layers[start])
        config = self._config_for_change()
        timestamp = _timestamp(source_date_epoch)
        history: list[dict[str, Any]] = []
        layer_index = 0
        for entry in self._padded_history(config):
            has_layer = not entry.get("empty_layer", False)
            if has_layer:
                if start <= layer_index < end:
                    entry = {**entry, "empty_layer": True}
                layer_index += 1
            history.append(entry)
            if has_layer and layer_index == end:
                history.append(
                    HistoryEntry(
                        timestamp, created_by or f"layercore squash {start}..{end}"
                    ).to_json()
                )
        config["history"] = history
        config["created"] = timestamp
        config["rootfs"]["diff_ids"] = [
            *self.diff_ids[:start],
            squashed.diff_id,
            *self.diff_ids[end:],
        ]
        descriptors = self._layer_descriptors()
        return self._build(
            config,
            [*descriptors[:start], _layer_descriptor(squashed), *descriptors[end:]],
            [*self.layers[:start], squashed, *self.layers[end:]],
            self._manifest,
        )

    def layer_history(self) -> list[tuple[Layer | None, HistoryEntry]]:
        """The history with the layers it describes: ``(layer, entry)`` for an entry with a
        layer, ``(None, entry)`` for an ``empty_layer`` one. Layers the history does not
        describe (the spec allows fewer entries than layers) come last with an empty entry."""
        result: list[tuple[Layer | None, HistoryEntry]] = []
        layers: Iterator[Layer] = iter(self.layers)
        for entry in self.history:
            result.append((None, entry) if entry.empty_layer else (next(layers), entry))
        result.extend((layer, HistoryEntry()) for layer in layers)
        return result

    def analyze(self, base: Image | None = None, *, top: int = 10) -> Analysis:
        """Where this image's bytes go, from its layers' entries without extracting anything:
        per layer the bytes the final image shows and those later layers hide (by cause and
        by hider), the totals, and the ``top`` paths that waste most (see
        :mod:`layercore.analysis.waste`). ``base``, the image this one was built from, marks
        its layers."""
        from layercore.analysis.waste import analyze

        return analyze(self, base, top=top)

    def squash_savings(self, start: int, end: int) -> SquashSavings:
        """What :meth:`squash` of layers ``start..end`` (end exclusive) would remove: exact
        uncompressed bytes and the paths they are, without writing a layer."""
        from layercore.analysis.waste import squash_savings

        return squash_savings(self, start, end)

    def with_annotations(self, annotations: Mapping[str, str | None]) -> Image:
        """This image with its manifest's annotations merged with ``annotations`` (None
        deletes a key); config, layers and history are unchanged."""
        merged = {**(self._manifest.get("annotations") or {}), **annotations}
        manifest = {k: v for k, v in self._manifest.items() if k != "annotations"}
        present = {k: v for k, v in merged.items() if v is not None}
        if present:
            manifest["annotations"] = present
        return Image(
            canonical_json(manifest), self.config_bytes, self.layers, index_dir=self._index_dir
        )

    # -- building changed images ---------------------------------------------------------------

    def _with_index_dir(self, index_dir: StrPath) -> Image:
        return Image(self.manifest_bytes, self.config_bytes, self.layers, index_dir=index_dir)

    def _config_for_change(self) -> dict[str, Any]:
        config = self.config
        config["rootfs"] = {**config["rootfs"], "diff_ids": list(self.diff_ids)}
        return config

    def _padded_history(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The config's history entries (unknown keys kept), with an empty entry appended for
        each layer they do not describe, so that entry i with a layer describes layer i."""
        missing = len(self.layers) - sum(1 for h in self.history if not h.empty_layer)
        return [*(config.get("history") or []), *({} for _ in range(missing))]

    def _layer_descriptors(self) -> list[dict[str, Any]]:
        """The manifest's layer descriptors (annotations, urls kept) with OCI media types."""
        descriptors = []
        for d in self._manifest["layers"]:
            d = dict(d)
            d["mediaType"] = _DOCKER_TO_OCI.get(d["mediaType"], d["mediaType"])
            descriptors.append(d)
        return descriptors

    @classmethod
    def _build(
        cls,
        config: dict[str, Any],
        layer_descriptors: list[dict[str, Any]],
        layers: list[Layer],
        old_manifest: Mapping[str, Any],
    ) -> Image:
        config_bytes = canonical_json(config)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Descriptor(
                OCI_CONFIG, sha256_digest(config_bytes), len(config_bytes)
            ).to_json(),
            "layers": layer_descriptors,
        }
        if "annotations" in old_manifest:
            manifest["annotations"] = old_manifest["annotations"]
        return cls(canonical_json(manifest), config_bytes, [_oci_layer(x) for x in layers])


def _restore_image(
    manifest_bytes: bytes, config_bytes: bytes, layers: Sequence[Layer], index_dir: Path | None
) -> Image:
    return Image(manifest_bytes, config_bytes, layers, index_dir=index_dir)


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptImageError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CorruptImageError(f"{what} is not a JSON object")
    return obj


def _oci_layer(layer: Layer) -> Layer:
    media_type = _DOCKER_TO_OCI.get(layer.media_type, layer.media_type)
    if media_type == layer.media_type:
        return layer
    return dataclasses.replace(layer, media_type=media_type)


def _layer_descriptor(layer: Layer) -> dict[str, Any]:
    return Descriptor(layer.media_type, layer.digest, layer.size).to_json()


def _strings(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str | bytes) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{what} must be a sequence of strings, not {values!r}")
    return list(values)


def _set_list(run: dict[str, Any], key: str, values: list[str]) -> None:
    if values:
        run[key] = values
    else:
        run.pop(key, None)


def _set_set(run: dict[str, Any], key: str, values: list[str]) -> None:
    if values:
        run[key] = {v: {} for v in values}
    else:
        run.pop(key, None)


def _json_line(values: list[str]) -> str:
    return json.dumps(values, ensure_ascii=False)


def _word(value: str) -> str:
    """A value as a Dockerfile writes it: bare when it is one plain word, else JSON-quoted."""
    if value and not any(c.isspace() or c in "\"'\\$" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _merge_env(run: dict[str, Any], env: Mapping[str, str | None] | Sequence[str]) -> list[str]:
    if isinstance(env, Mapping):
        changes: list[tuple[str, str | None]] = list(env.items())
    else:
        changes = []
        for item in _strings(env, "env"):
            if "=" not in item:
                raise ValueError(f"env item {item!r} is not KEY=VALUE")
            changes.append(_split_env(item))
    current = list(run.get("Env") or [])
    keys = [_split_env(item)[0] for item in current]
    set_parts: list[str] = []
    unset: list[str] = []
    for key, value in changes:
        if not key or "=" in key:
            raise ValueError(f"invalid environment variable name {key!r}")
        if value is None:
            if key in keys:
                i = keys.index(key)
                del current[i], keys[i]
            unset.append(key)
            continue
        if key in keys:
            current[keys.index(key)] = f"{key}={value}"
        else:
            current.append(f"{key}={value}")
            keys.append(key)
        set_parts.append(f"{key}={_word(value)}")
    _set_list(run, "Env", current)
    return _steps("ENV", set_parts, "UNSETENV", unset)


def _merge_labels(run: dict[str, Any], labels: Mapping[str, str | None]) -> list[str]:
    current = dict(run.get("Labels") or {})
    set_parts: list[str] = []
    unset: list[str] = []
    for key, value in labels.items():
        if value is None:
            current.pop(key, None)
            unset.append(key)
        else:
            current[key] = value
            set_parts.append(f"{_word(key)}={_word(value)}")
    if current:
        run["Labels"] = current
    else:
        run.pop("Labels", None)
    return _steps("LABEL", set_parts, "UNSETLABEL", unset)


def _steps(set_word: str, set_parts: list[str], unset_word: str, unset: list[str]) -> list[str]:
    steps = []
    if set_parts:
        steps.append(f"{set_word} {' '.join(set_parts)}")
    if unset:
        steps.append(f"{unset_word} {' '.join(unset)}")
    return steps
