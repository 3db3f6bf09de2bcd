"""The build cache in a registry: ``--cache-to`` exports a build's cache records there, and
``--cache-from`` lets a build in another store hit them.

The cache is one OCI image manifest (``artifactType`` :data:`CACHE_ARTIFACT_TYPE`) whose config
(:data:`CACHE_CONFIG_TYPE`) is JSON holding the records, ``{"mode": "min"|"max", "records":
[...]}``, each ``{key, parent, stage, line, keyword, instruction, layer: {digest, diff_id,
size, mediaType}, inputs}``, and whose ``layers`` are the records' layer blobs themselves,
with their usual media types: a registry stores each once and mounts it across
repositories, and a cache blob is the very blob an image pushed later needs.

A build reads each ``--cache-from`` manifest and config up front (small); a layer moves only
when its step hits and something reads the layer (:meth:`RemoteCache.fetch`), and an export
to the same registry mounts a layer it never fetched. A cache that is missing or cannot be read is
a warning, never a failed build, as in BuildKit.

It may import ``layercore.store``, ``image``, ``imageref``, ``registry`` and ``errors``; only
the executor imports it (when a build is given cache references).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from layercore.errors import CorruptImageError, LayerError
from layercore.image import OCI_MANIFEST, canonical_json, sha256_digest
from layercore.imageref import Reference
from layercore.registry.client import RegistryClient
from layercore.registry.transfer import (
    PushResult,
    RemoteBlob,
    client_for,
    fetch_blob,
    json_object,
    push_artifact,
)
from layercore.store import Store

__all__ = [
    "CACHE_ARTIFACT_TYPE",
    "CACHE_CONFIG_TYPE",
    "CacheExport",
    "CacheMode",
    "CacheRef",
    "RemoteCache",
    "export_cache",
]

#: The ``artifactType`` of a build cache manifest.
CACHE_ARTIFACT_TYPE = "application/vnd.layercore.buildcache.v1"
#: The media type of a build cache's config: the records, as JSON.
CACHE_CONFIG_TYPE = "application/vnd.layercore.buildcache.config.v1+json"
#: A cache config bigger than this is refused (a record per step; a COPY's lists its files).
MAX_CONFIG_BYTES = 64 << 20

CacheMode = Literal["min", "max"]
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_DIGEST_LEN = len("sha256:") + 64


@dataclass(frozen=True)
class CacheRef:
    """Where a build's cache goes (``--cache-to``) or comes from (``--cache-from``): a registry
    ``reference``; for an export its ``mode`` (``min``, the default as in BuildKit: the records
    of the steps whose layers are in the final image; ``max``: every step of every stage the
    build ran or hit) and ``ignore_error`` (a failed export is a warning, not a failed build);
    ``insecure`` allows plain HTTP and unverified TLS (loopback registries need no flag)."""

    reference: str
    mode: CacheMode = "min"
    ignore_error: bool = False
    insecure: bool = False

    @classmethod
    def parse(cls, text: str, *, export: bool) -> CacheRef:
        """``REF[,mode=min|max]``, or BuildKit's ``type=registry,ref=REF[,mode=max]``; also
        ``ignore-error=true`` (export) and ``registry.insecure=true``. BuildKit's
        ``image-manifest`` and ``oci-mediatypes`` are accepted: this cache always is an OCI
        image manifest. Raises ValueError saying what is wrong."""
        flag = "--cache-to" if export else "--cache-from"
        usage = "write REF[,mode=min|max] or type=registry,ref=REF[,mode=max]"
        if not export:
            usage = "write REF or type=registry,ref=REF"
        ref: str | None = None
        options: dict[str, str] = {}
        for n, part in enumerate(text.split(",")):
            part = part.strip()
            key, sep, value = part.partition("=")
            if not sep:
                if n == 0 and part:
                    ref = part
                    continue
                raise ValueError(f"{flag} {text!r}: {part!r} is not KEY=VALUE; {usage}")
            key = key.strip().lower()
            if key in options or (key == "ref" and ref is not None):
                raise ValueError(f"{flag} {text!r}: {key} is given twice")
            if key == "ref":
                ref = value.strip()
            else:
                options[key] = value.strip()
        kind = options.pop("type", "registry")
        if kind != "registry":
            raise ValueError(
                f"{flag} {text!r}: type={kind} is not supported; layercore keeps a build cache "
                "in a registry (type=registry)"
            )
        if not ref:
            raise ValueError(f"{flag} {text!r}: no registry reference; {usage}")
        try:
            parsed = Reference.parse(ref)
        except ValueError as e:
            raise ValueError(f"{flag} {text!r}: {e}") from None
        if export and parsed.digest is not None:
            raise ValueError(f"{flag} {text!r}: the cache is pushed under a tag, not a digest")

        def flag_value(name: str) -> bool:
            value = options.pop(name, "false").lower()
            if value not in (*_TRUE, *_FALSE):
                raise ValueError(f"{flag} {text!r}: {name} must be true or false, not {value!r}")
            return value in _TRUE

        insecure = flag_value("registry.insecure")
        for ignored in ("image-manifest", "oci-mediatypes"):
            flag_value(ignored)
        mode: CacheMode = "min"
        ignore_error = False
        if export:
            chosen = options.pop("mode", "min").lower()
            if chosen not in ("min", "max"):
                raise ValueError(f"{flag} {text!r}: mode must be min or max, not {chosen!r}")
            mode = "max" if chosen == "max" else "min"
            ignore_error = flag_value("ignore-error")
        if options:
            known = "type, ref, mode, ignore-error, " if export else "type, ref, "
            raise ValueError(
                f"{flag} {text!r}: unknown option {sorted(options)[0]!r} (known: {known}"
                "registry.insecure, image-manifest, oci-mediatypes)"
            )
        return cls(ref, mode, ignore_error, insecure)


@dataclass(frozen=True)
class CacheExport:
    """What ``--cache-to`` pushed: the ``reference``, the manifest's ``digest``, the ``mode``,
    how many ``records`` and ``layers`` it holds, and the push itself (blobs uploaded, mounted
    or already there)."""

    reference: str
    digest: str
    mode: CacheMode
    records: int
    layers: int
    push: PushResult

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "mode": self.mode,
            "records": self.records,
            "layers": self.layers,
            "uploaded": self.push.count("uploaded"),
            "mounted": self.push.count("mounted"),
            "present": self.push.count("present"),
            "bytes_sent": self.push.bytes_sent,
        }


def export_cache(
    store: Store,
    records: Sequence[Mapping[str, Any]],
    ref: CacheRef,
    *,
    remote: Mapping[str, RemoteBlob] | None = None,
) -> CacheExport:
    """Pushes ``records`` (each with ``key``, ``parent``, ``stage``, ``line``, ``keyword``,
    ``instruction``, ``layer`` with ``digest``, ``diff_id``, ``size``, ``mediaType``, and
    ``inputs``; their layer blobs in ``store``, or in ``remote`` for those another repository
    holds) as a build cache to ``ref``: the layers (each skipped when the repository has it,
    mounted when another repository of that registry is known to hold it, else uploaded), the
    config, then the manifest under the tag. The same records give the same bytes, so
    pushing an unchanged cache again sends nothing."""
    kept = [_exported(r) for r in records]
    config = canonical_json({"mode": ref.mode, "records": kept})
    layers: dict[str, dict[str, Any]] = {}
    for record in kept:
        d = record["layer"]
        layers.setdefault(
            d["digest"], {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
        )
    config_digest = sha256_digest(config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": CACHE_ARTIFACT_TYPE,
            "config": {
                "mediaType": CACHE_CONFIG_TYPE,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": list(layers.values()),
        }
    )
    with store.workspace("cache-export") as scratch:
        path = scratch / "config.json"
        path.write_bytes(config)
        pushed = push_artifact(
            store,
            manifest,
            ref.reference,
            files={config_digest: path},
            remote=remote,
            insecure=ref.insecure,
        )
    return CacheExport(ref.reference, pushed.digest, ref.mode, len(kept), len(layers), pushed)


def _exported(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as the cache config holds it: only the documented fields."""
    layer = record["layer"]
    return {
        "key": record["key"],
        "parent": record["parent"],
        "stage": record.get("stage"),
        "line": record.get("line"),
        "keyword": record.get("keyword"),
        "instruction": record.get("instruction"),
        "layer": {
            "digest": layer["digest"],
            "diff_id": layer["diff_id"],
            "size": layer["size"],
            "mediaType": layer["mediaType"],
        },
        "inputs": dict(record.get("inputs") or {}),
    }


@dataclass(frozen=True)
class _Source:
    """One ``--cache-from`` reference, read."""

    shown: str
    repository: str
    client: RegistryClient

    @property
    def location(self) -> str:
        return f"{self.client.registry}/{self.repository}"


class RemoteCache:
    """The records of a build's ``--cache-from`` references, in memory for the build: by key
    (a hit) and by parent (the siblings that explain a miss). The first reference that has a
    key wins."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[_Source, dict[str, Any]]] = {}
        self._by_parent: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    @classmethod
    def load(
        cls, store: Store, refs: Sequence[CacheRef], warn: Callable[[str], None]
    ) -> RemoteCache:
        """Reads each reference's manifest and config. One that does not exist, cannot be
        reached or read, or is not a layercore build cache is skipped with ``warn(message)``
        (the message names the reference and never a credential)."""
        cache = cls()
        for ref in refs:
            try:
                cache._add(store, ref)
            except LayerError as e:
                warn(f"cache from {ref.reference} not used: {e.message}")
        return cache

    def __len__(self) -> int:
        return len(self._by_key)

    def _add(self, store: Store, ref: CacheRef) -> None:
        reference = Reference.parse(ref.reference)
        shown = str(reference)
        client = client_for(reference, insecure=ref.insecure)
        repo = reference.repository
        data, media_type, _digest = client.get_manifest(
            repo, reference.target, what="reading the build cache"
        )
        manifest = json_object(data, "its manifest", shown)
        config = manifest.get("config")
        if media_type != OCI_MANIFEST or not isinstance(config, dict):
            raise CorruptImageError(f"is a {media_type}, not a layercore build cache", shown)
        if config.get("mediaType") != CACHE_CONFIG_TYPE:
            raise CorruptImageError(
                f"is not a layercore build cache (its config is a {config.get('mediaType')})",
                shown,
            )
        digest, size = config.get("digest"), config.get("size")
        if not (_is_digest(digest) and isinstance(size, int) and 0 <= size <= MAX_CONFIG_BYTES):
            raise CorruptImageError("its config descriptor is not valid or too big", shown)
        assert isinstance(digest, str)
        layers = {
            d.get("digest"): d.get("size")
            for d in manifest.get("layers") or []
            if isinstance(d, dict)
        }
        with store.ingest() as scratch:  # a temp file, never committed
            path = scratch.new_path("cache-config")
            got = client.download_blob(repo, digest, path, size=size)
            if got != size:
                raise CorruptImageError(f"its config is {got} bytes, not {size}", shown)
            body = json_object(path.read_bytes(), "its config", shown)
        records = body.get("records")
        if not isinstance(records, list):
            raise CorruptImageError("its config has no list of records", shown)
        checked = [_checked(r, n, layers, shown) for n, r in enumerate(records)]
        source = _Source(shown, repo, client)
        with self._lock:
            for record in checked:
                if record["key"] in self._by_key:
                    continue
                self._by_key[record["key"]] = (source, record)
                self._by_parent.setdefault(record["parent"], []).append(record)

    def record(self, key: str) -> dict[str, Any] | None:
        """The record of the step key ``key``, if a reference has it."""
        found = self._by_key.get(key)
        return None if found is None else found[1]

    def origin(self, key: str) -> str:
        """The reference the record of ``key`` came from."""
        return self._by_key[key][0].shown

    def location(self, key: str) -> str:
        """The repository (``host/path``) that holds the layer of the record of ``key``."""
        return self._by_key[key][0].location

    def children(self, parent: str) -> list[dict[str, Any]]:
        """The records that followed the step key ``parent``."""
        return list(self._by_parent.get(parent, ()))

    def fetch(self, store: Store, key: str) -> dict[str, Any]:
        """The record of ``key`` with its layer blob in ``store``: downloaded from the reference
        unless the store has it, verified against its digest and size, and committed. Raises
        :class:`~layercore.errors.LayerError` (a registry or digest error) if it cannot be."""
        source, record = self._by_key[key]
        layer = record["layer"]
        with self._lock:
            lock = self._fetching.setdefault(layer["digest"], threading.Lock())
        with lock:  # two stages hitting one layer fetch it once
            fetch_blob(store, source.client, source.repository, layer["digest"], layer["size"])
        return record


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("sha256:")
        and len(value) == _DIGEST_LEN
        and all(c in "0123456789abcdef" for c in value[7:])
    )


def _checked(record: object, n: int, layers: Mapping[Any, Any], origin: str) -> dict[str, Any]:
    """A record of a cache config, with every field a hit relies on checked."""

    def bad(why: str) -> CorruptImageError:
        return CorruptImageError(f"record {n} of its config {why}", origin)

    if not isinstance(record, dict):
        raise bad("is not an object")
    for name in ("key", "parent"):
        if not _is_digest(record.get(name)):
            raise bad(f"has no valid {name}")
    layer = record.get("layer")
    if not isinstance(layer, dict):
        raise bad("has no layer")
    if not (_is_digest(layer.get("digest")) and _is_digest(layer.get("diff_id"))):
        raise bad("has no valid layer digest and diff_id")
    if not isinstance(layer.get("mediaType"), str):
        raise bad("has no layer media type")
    size = layer.get("size")
    if not isinstance(size, int) or size < 0 or layers.get(layer["digest"]) != size:
        raise bad(f"names the layer {layer['digest']}, which its manifest does not list")
    if not isinstance(record.get("inputs", {}), dict):
        raise bad("has inputs that are not an object")
    for name, kind in (("keyword", str), ("line", int), ("instruction", str), ("stage", str)):
        if not isinstance(record.get(name), kind):
            raise bad(f"has no {name}")
    return record
