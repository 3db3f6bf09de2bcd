"""Why two digests differ: two images, or two layers, compared from their entry indexes and
their raw tar and compression headers, never extracted.

``explain(a, b)`` answers "why did my layer's digest change?" (moby#12641, buildkit#2383,
nixpkgs#254421). For two layers, the engine's index of each blob (``Stack``) gives every
entry's metadata and data offset, and one pass over the decompressed stream (Python's ``zlib``,
or ``zstandard`` for zstd) gives what the index does not keep: each regular file's content
digest, each entry's header bytes and layout (ustar, GNU, PAX records in order), the
end-of-archive padding, and the compression's own parameters (gzip member headers and layout,
zstd frame headers). The four reads run at once on threads (the indexes, the decompression
and the hashing run without the GIL). For two images it compares the configs field by field
and explains each pair of layers whose digests differ. Every explanation ends with a
``verdict``: the most specific cause, and what to do about it.

It may import ``layercore.layer``, ``image``, ``stack``, ``store`` and ``errors``; nothing of
the command line.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from layercore.errors import CorruptLayerError, ImageNotFoundError
from layercore.image import Image
from layercore.layer import Layer

if TYPE_CHECKING:
    from layercore.stack import Stack
    from layercore.store import Store

__all__ = ["Difference", "EntryChange", "Explanation", "LayerChange", "explain"]

#: What ``explain`` compares: an image, a layer, a layer blob's path, or a string the store
#: resolves (``IMAGE``, ``IMAGE@N`` for layer N of an image) or naming a blob file.
Subject = Image | Layer | str | os.PathLike[str]

_BLOCK = 512
_CHUNK = 1 << 20
#: ustar ``magic`` + ``version`` -> the header family.
_MAGIC = {b"ustar\x0000": "ustar", b"ustar  \x00": "gnu"}
#: The ustar header's fields: name, start, end (for "which bytes differ").
_USTAR_FIELDS = (
    ("name", 0, 100),
    ("mode", 100, 108),
    ("uid", 108, 116),
    ("gid", 116, 124),
    ("size", 124, 136),
    ("mtime", 136, 148),
    ("typeflag", 156, 157),
    ("linkname", 157, 257),
    ("magic", 257, 265),
    ("uname", 265, 297),
    ("gname", 297, 329),
    ("devmajor", 329, 337),
    ("devminor", 337, 345),
    ("prefix", 345, 500),
    ("padding", 500, 512),
)
#: Per-entry fields in the order an explanation lists them.
_FIELDS = (
    "kind",
    "content",
    "size",
    "mode",
    "uid",
    "gid",
    "uname",
    "gname",
    "mtime",
    "xattrs",
    "linkname",
    "device",
    "header",
    "header_encoding",
)
_OWNER_FIELDS = frozenset({"uid", "gid", "uname", "gname"})
_GZIP_FLAGS = ("FTEXT", "FHCRC", "FEXTRA", "FNAME", "FCOMMENT")
_GZIP_LEVEL_HINTS = {2: "best (XFL=2)", 4: "fastest (XFL=4)"}
_EMPTY_SHA256 = "sha256:" + hashlib.sha256(b"").hexdigest()


# --- the answer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One thing that differs: what (``field``), its value in ``a`` and in ``b`` (None when
    one side has none)."""

    field: str
    a: Any
    b: Any

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "a": _jsonable(self.a), "b": _jsonable(self.b)}


@dataclass(frozen=True)
class EntryChange:
    """A path both layers carry, and the fields in which its two entries differ."""

    path: str
    fields: tuple[Difference, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.field for d in self.fields)

    def get(self, name: str) -> Difference | None:
        return next((d for d in self.fields if d.field == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "fields": [d.to_json() for d in self.fields]}


@dataclass(frozen=True)
class LayerChange:
    """Layer ``index`` of two images: the two digests (None where an image has no such layer)
    and, when both exist, why they differ."""

    index: int
    a: str | None
    b: str | None
    explanation: Explanation | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "a": self.a,
            "b": self.b,
            "explanation": None if self.explanation is None else self.explanation.to_json(),
        }


@dataclass(frozen=True)
class Explanation:
    """Why the digests ``a`` and ``b`` differ (or that they do not).

    ``kind="images"``: ``config`` lists the differing config (and manifest) fields, dotted
    (``created``, ``config.Env.PATH``, ``config.Labels.x``, ``history[2].created_by``), and
    ``layers`` the layer pairs whose digests differ, each explained. ``kind="layers"``:
    ``only_in_a``/``only_in_b`` are paths one layer lacks; ``changed`` the paths in both
    whose entries differ, with the fields that do (``content``, ``mode``, ``uid``, ``mtime``,
    ``header``, ...); ``order_differs`` whether the shared paths come in another order;
    ``header`` the layer-wide tar layout (``format``: header families and the PAX records
    used; ``end_of_archive``: the zero padding after the last entry); ``compression`` the
    compression parameters that differ. ``diff_ids`` are the two uncompressed digests.
    ``verdict`` is the most specific cause found."""

    kind: Literal["images", "layers"]
    a: str
    b: str
    verdict: str
    config: tuple[Difference, ...] = ()
    layers: tuple[LayerChange, ...] = ()
    only_in_a: tuple[str, ...] = ()
    only_in_b: tuple[str, ...] = ()
    changed: tuple[EntryChange, ...] = ()
    order_differs: bool = False
    header: tuple[Difference, ...] = ()
    compression: tuple[Difference, ...] = ()
    diff_ids: tuple[str, str] | None = None

    @property
    def identical(self) -> bool:
        return self.a == self.b

    def to_json(self) -> dict[str, Any]:
        """A JSON object with stable keys (every field, ``identical`` and ``verdict``)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "verdict": self.verdict,
        }
        if self.kind == "images":
            out["config"] = [d.to_json() for d in self.config]
            out["layers"] = [c.to_json() for c in self.layers]
            return out
        out.update(
            diff_ids=list(self.diff_ids) if self.diff_ids is not None else None,
            only_in_a=list(self.only_in_a),
            only_in_b=list(self.only_in_b),
            changed=[c.to_json() for c in self.changed],
            order_differs=self.order_differs,
            header=[d.to_json() for d in self.header],
            compression=[d.to_json() for d in self.compression],
        )
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- the entry point --------------------------------------------------------------------------


def explain(a: Subject, b: Subject, *, store: Store | None = None) -> Explanation:
    """Why ``a`` and ``b`` have different digests: two images, or two layers.

    Each is an :class:`~layercore.image.Image`, a :class:`~layercore.layer.Layer`, the path of
    a layer blob, or a string: a blob file's path, an image the store resolves (a tag or a
    digest), or ``IMAGE@N`` for layer N of one (0 is the bottom, -1 the top). ``store``
    defaults to ``Store()``; it is opened only to resolve a string. Nothing is extracted:
    layers are read once each, from their blobs. Comparing an image with a layer is a
    ``ValueError``."""
    left = _resolve(a, store)
    right = _resolve(b, store)
    if isinstance(left, Image) != isinstance(right, Image):
        raise ValueError("cannot compare an image with a layer: give two images or two layers")
    if isinstance(left, Image) and isinstance(right, Image):
        if store is None and (isinstance(a, str) or isinstance(b, str)):
            store = _store(None)  # the default store resolved them: its index cache serves
        return _explain_images(left, right, store)
    assert isinstance(left, _Blob) and isinstance(right, _Blob)
    return _explain_layers(left, right)


@dataclass(frozen=True)
class _Blob:
    """A layer blob to read: its path, and its digests when already known (from a manifest)."""

    path: Path
    compression: str | None
    digest: str | None = None
    diff_id: str | None = None
    #: the store holding the blob, whose index cache then serves (and keeps) its index
    store: Store | None = None


def _resolve(subject: Subject, store: Store | None) -> Image | _Blob:
    if isinstance(subject, Image):
        return subject
    if isinstance(subject, Layer):
        return _layer_blob(subject, store)
    if not isinstance(subject, str):
        return _blob_file(Path(subject))
    if os.path.isfile(subject):
        return _blob_file(Path(subject))
    store = _store(store)
    ref, at, index = subject.rpartition("@")
    if at and ref and index.lstrip("-").isdigit():
        image = store.load(ref)
        n = int(index)
        if not -len(image.layers) <= n < len(image.layers):
            raise ValueError(
                f"{subject}: {ref} has {len(image.layers)} layers (0 to {len(image.layers) - 1})"
            )
        return _layer_blob(image.layers[n], store)
    try:
        return store.load(subject)
    except ImageNotFoundError as e:
        raise ImageNotFoundError(f"{e}, and no file {subject!r} exists", e.path) from None


def _layer_blob(layer: Layer, store: Store | None) -> _Blob:
    """A layer to read, with the store whose blob it is (if it is one of its blobs)."""
    if store is not None and store.blob_path(layer.digest) != layer.path:
        store = None
    return _Blob(layer.path, layer.compression, layer.digest, layer.diff_id, store)


def _store(store: Store | None) -> Store:
    if store is not None:
        return store
    from layercore.store import Store

    return Store()


def _blob_file(path: Path) -> _Blob:
    if not path.is_file():
        from layercore.errors import SourceNotFoundError

        raise SourceNotFoundError("no such layer blob", path)
    with path.open("rb") as f:
        magic = f.read(4)
    compression = (
        "gzip"
        if magic.startswith(b"\x1f\x8b")
        else "zstd"
        if magic.startswith(b"\x28\xb5\x2f\xfd")
        else None
    )
    return _Blob(path, compression)


# --- images -----------------------------------------------------------------------------------


def _explain_images(a: Image, b: Image, store: Store | None) -> Explanation:
    config = tuple(_config_differences(a, b))
    layers: list[LayerChange] = []
    for i in range(max(len(a.layers), len(b.layers))):
        la = a.layers[i] if i < len(a.layers) else None
        lb = b.layers[i] if i < len(b.layers) else None
        if la is not None and lb is not None:
            if la.digest == lb.digest:
                continue
            explanation = _explain_layers(_layer_blob(la, store), _layer_blob(lb, store))
            layers.append(LayerChange(i, la.digest, lb.digest, explanation))
        else:
            layers.append(
                LayerChange(i, la.digest if la else None, lb.digest if lb else None, None)
            )
    verdict = _image_verdict(a, b, config, layers)
    return Explanation(
        kind="images", a=a.digest, b=b.digest, verdict=verdict, config=config, layers=tuple(layers)
    )


def _config_differences(a: Image, b: Image) -> Iterator[Difference]:
    ca, cb = a.config, b.config
    for c in (ca, cb):
        c.pop("rootfs", None)  # the layers, compared one by one
    fa, fb = _flatten(ca), _flatten(cb)
    for key in sorted(_union(fa, fb), key=_natural):
        if fa.get(key) != fb.get(key):
            yield Difference(key, fa.get(key), fb.get(key))
    ma, mb = a.manifest, b.manifest
    for m in (ma, mb):
        m.pop("config", None)
        m.pop("layers", None)
    fa, fb = _flatten(ma, "manifest."), _flatten(mb, "manifest.")
    for key in sorted(_union(fa, fb), key=_natural):
        if fa.get(key) != fb.get(key):
            yield Difference(key, fa.get(key), fb.get(key))


def _union(fa: Mapping[str, Any], fb: Mapping[str, Any]) -> list[str]:
    return [*fa, *(k for k in fb if k not in fa)]


def _natural(key: str) -> tuple[Any, ...]:
    """Sorts ``history[10]`` after ``history[9]``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values: objects by key, ``Env`` by variable name, ``history`` by
    index; other lists are one value."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if key == "Env" and isinstance(value, list):
                for item in value:
                    var, _, val = str(item).partition("=")
                    out[f"{name}.{var}"] = val
            elif key == "history" and isinstance(value, list):
                for i, item in enumerate(value):
                    out.update(_flatten(item, f"{name}[{i}]."))
            elif isinstance(value, dict):
                out.update(_flatten(value, f"{name}."))  # {} is no value: absent
            else:
                out[name] = value
    else:
        out[prefix.rstrip(".")] = obj
    return out


def _topic(key: str) -> str:
    """What a config key is about, in a verdict: ``config.Env.PATH`` -> ``env``."""
    if key.startswith("history["):
        return "history"
    parts = key.split(".")
    if parts[0] == "config" and len(parts) > 1:
        return {"Env": "env", "Labels": "labels", "ExposedPorts": "ports"}.get(
            parts[1], parts[1].lower()
        )
    if parts[0] == "manifest" and len(parts) > 1:
        return f"manifest {parts[1]}"
    return parts[0]


def _is_timestamp(key: str) -> bool:
    return key == "created" or (key.startswith("history[") and key.endswith("].created"))


def _image_verdict(
    a: Image, b: Image, config: tuple[Difference, ...], layers: list[LayerChange]
) -> str:
    if a.digest == b.digest:
        return "identical"
    topics = list(dict.fromkeys(_topic(d.field) for d in config))
    if not layers:
        if not config:
            if a.config_digest != b.config_digest:
                return "same layers, same config values, different config JSON encoding"
            return "same config and layers, different manifest encoding"
        if all(_is_timestamp(d.field) for d in config):
            return "same layers, only the config's timestamps differ: set SOURCE_DATE_EPOCH"
        return "same layers, different config: " + ", ".join(topics)
    parts = []
    if len(a.layers) != len(b.layers):
        parts.append(f"{len(a.layers)} layers vs {len(b.layers)}")
    for change in layers:
        if change.explanation is not None:
            parts.append(f"layer {change.index}: {change.explanation.verdict}")
    if topics:
        parts.append("config: " + ", ".join(topics))
    return "; ".join(parts)


# --- layers -----------------------------------------------------------------------------------


def _explain_layers(a: _Blob, b: _Blob) -> Explanation:
    same_tar = a.diff_id is not None and a.diff_id == b.diff_id
    if a.digest is not None and a.digest == b.digest:
        return Explanation(
            kind="layers",
            a=a.digest,
            b=b.digest,
            verdict="identical",
            diff_ids=(a.diff_id, a.diff_id) if a.diff_id is not None else None,
        )
    # The Python scans and the engine's indexes all at once (the indexes, the decompression
    # and the hashing run without the GIL), the longer scans first; each side is joined as
    # soon as its two halves are done.
    with ThreadPoolExecutor(max_workers=4) as pool:
        scan_a = pool.submit(_scan, a, not same_tar)
        scan_b = pool.submit(_scan, b, not same_tar)
        index_a, index_b = pool.submit(_index, a), pool.submit(_index, b)
        side_a = pool.submit(lambda: _side(index_a.result(), scan_a.result()))
        side_b = pool.submit(lambda: _side(index_b.result(), scan_b.result()))
        sa, sb = side_a.result(), side_b.result()
    if sa.diff_id == sb.diff_id and sa.compression["type"] == sb.compression["type"] == "gzip":
        # the same tar: which deflate made each is what is left to tell
        sa.compression["deflate"] = _zlib_level(sa.sample)
        sb.compression["deflate"] = _zlib_level(sb.sample)
    compression = tuple(_compression_differences(sa.compression, sb.compression))
    if sa.digest == sb.digest:
        return Explanation(
            "layers", sa.digest, sb.digest, "identical", diff_ids=(sa.diff_id, sb.diff_id)
        )
    if sa.diff_id == sb.diff_id:
        verdict = _compression_verdict(sa.compression, sb.compression)
        return Explanation(
            "layers",
            sa.digest,
            sb.digest,
            verdict,
            compression=compression,
            diff_ids=(sa.diff_id, sb.diff_id),
        )
    only_a = tuple(p for p in sa.order if p not in sb.meta)
    only_b = tuple(p for p in sb.order if p not in sa.meta)
    changed = tuple(_entry_changes(sa, sb))
    common_a = [p for p in sa.order if p in sb.meta]
    common_b = [p for p in sb.order if p in sa.meta]
    order_differs = common_a != common_b
    header = tuple(_header_differences(sa, sb))
    verdict = _layer_verdict(only_a, only_b, changed, order_differs, header, sa, sb)
    return Explanation(
        kind="layers",
        a=sa.digest,
        b=sb.digest,
        verdict=verdict,
        only_in_a=only_a,
        only_in_b=only_b,
        changed=changed,
        order_differs=order_differs,
        header=header,
        compression=compression,
        diff_ids=(sa.diff_id, sb.diff_id),
    )


@dataclass
class _Side:
    """One layer as read for a comparison."""

    digest: str
    diff_id: str
    compression: dict[str, Any]
    #: path -> (kind, content, size, mode, uid, gid, uname, gname, mtime, xattrs, linkname,
    #: device, header layout) of its (last) entry
    meta: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: path -> the bytes of its headers (extended headers included)
    raw: dict[str, bytes] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    #: bytes of the stream after the last entry's data (the end-of-archive zeros)
    trailer: int = 0
    #: bytes of the whole tar stream
    length: int = 0
    sample: dict[str, Any] = field(default_factory=dict)


def _index(blob: _Blob) -> Stack:
    """The engine's index of ``blob`` (its digests and entries; built without the GIL), and
    the diff_id checked against the manifest's when there is one."""
    from layercore.stack import Stack

    if blob.digest is None or blob.diff_id is None:
        return Stack([blob.path])
    layer = Layer.open(blob.path, digest=blob.digest, diff_id=blob.diff_id)
    return Stack([layer]) if blob.store is None else blob.store.stack([layer])


@dataclass
class _Scan:
    """What one pass over a blob's decompressed stream finds."""

    compression: dict[str, Any]
    #: per entry header, in archive order: data offset, layout, content digest (entries
    #: with a body), the header bytes, and (path, fields) for a whiteout or opaque marker
    headers: list[tuple[int, str, str | None, bytes, tuple[str, tuple[Any, ...]] | None]]
    trailer: int = 0
    length: int = 0
    #: the start of the first gzip member, compressed and not (see :func:`_zlib_level`)
    sample: dict[str, Any] = field(default_factory=dict)


def _scan(blob: _Blob, tar: bool) -> _Scan:
    """One pass over ``blob``: its compression parameters and, with ``tar``, every entry's
    header layout and content digest (the engine's index, built at the same time on another
    thread, gives the rest)."""
    scan = _Scan({"type": blob.compression or "none"}, [])
    with blob.path.open("rb") as f:
        if blob.compression == "zstd":
            scan.compression.update(_zstd_frames(f, blob.path))
            f.seek(0)
        chunks = _decompressed(f, blob, scan.compression, scan.sample)
        if tar:
            _walk_tar(blob.path, chunks, scan)
        for _ in chunks:  # the compression's layout needs every member
            pass
    return scan


def _side(stack: Stack, scan: _Scan) -> _Side:
    """Joins the index's entries (by data offset) with the headers the scan read."""
    layer = stack.layers[0]
    side = _Side(digest=layer.digest, diff_id=layer.diff_id, compression=scan.compression)
    side.sample = scan.sample
    side.trailer, side.length = scan.trailer, scan.length
    if not scan.headers:
        return side
    by_offset = {e.offset: e for e in stack.walk() if e.offset}
    meta, raw, order = side.meta, side.raw, side.order
    for offset, layout, content, region, marker in scan.headers:
        e = by_offset.get(offset)
        if e is not None:
            kind = e.kind
            path = e.path
            fields: tuple[Any, ...] = (
                kind,
                content if kind == "file" else None,
                e.size,
                e.mode,
                e.uid,
                e.gid,
                e.uname,
                e.gname,
                e.mtime,
                e.xattrs,
                e.linkname,
                (e.devmajor, e.devminor) if kind in ("char", "block") else None,
                layout,
            )
        elif marker is not None:
            path, values = marker
            fields = (values[0], None, *values[1:], layout)
        else:
            continue  # the archive root, or a path named again later
        if path in meta:
            order.remove(path)  # named twice: the last entry counts, where it stands
        order.append(path)
        meta[path] = fields
        raw[path] = region
    return side


def _walk_tar(path: Path, chunks: Iterator[bytes], scan: _Scan) -> None:
    """Walks the tar headers of the decompressed stream: each entry's header bytes and
    layout, its body's digest, and the whiteouts and opaque markers read from their headers
    (the index's merged view does not show them). The loop reads the window's buffer in
    place: it runs once per entry, and its cost is most of what explain adds to indexing."""
    window = _Window(chunks, path)
    buf = window.buffer  # the same bytearray throughout; window.base moves on release
    base = 0
    append = scan.headers.append
    sha256 = hashlib.sha256
    magic = _MAGIC
    pos = start = 0
    extensions: list[tuple[bytes, bytes]] = []
    while True:
        end = pos + _BLOCK
        if base + len(buf) < end:
            window.take(pos, end)
        block = bytes(buf[pos - base : end - base])
        if block == _ZERO_BLOCK:
            break  # the end-of-archive marker
        flag = block[156]
        try:
            size = int(block[124:135], 8) if block[135] in (0, 32) else _octal(block[124:136])
        except ValueError:
            size = _octal(block[124:136])
        padded = (size + _BLOCK - 1) & ~(_BLOCK - 1)
        if flag in _EXTENSIONS:
            extensions.append((bytes((flag,)), window.take(end, end + size)))
            pos = end + padded
            continue
        region = block if start == pos else window.take(start, end)
        layout = magic.get(block[257:265], "v7")
        if extensions:
            layout = "+".join([layout, *(_extension(f, d) for f, d in extensions)])
        content: str | None = None
        has_data = flag in _DATA_FLAGS
        if has_data:
            stop = end + size
            if not size:
                content = _EMPTY_SHA256
            elif stop <= base + len(buf):
                with memoryview(buf) as view:
                    content = "sha256:" + sha256(view[end - base : stop - base]).hexdigest()
            else:
                content = window.digest(end, stop)
                base = window.base
        marker = None
        if extensions or block[:100].find(b".wh.") >= 0:
            marker = _marker(block, extensions)
            extensions = []
        append((end, layout, content, region, marker))
        pos = start = end + padded if has_data else end
        if pos - base >= _CHUNK:
            window.release(pos)
            base = window.base
    scan.trailer = window.drain(pos)
    scan.length = pos + scan.trailer


_ZERO_BLOCK = bytes(_BLOCK)
_EXTENSIONS = frozenset(b"xgLK")
#: Typeflags whose entries have a body (regular files, old-style and contiguous).
_DATA_FLAGS = frozenset(b"0\x007")


def _extension(flag: bytes, data: bytes) -> str:
    if flag == b"x":
        return f"pax({','.join(_pax_names(data))})"
    if flag == b"g":
        return f"global({','.join(_pax_names(data))})"
    return "longname" if flag == b"L" else "longlink"


def _marker(
    block: bytes, extensions: list[tuple[bytes, bytes]]
) -> tuple[str, tuple[Any, ...]] | None:
    """A whiteout or opaque marker read from its headers (path, then the fields of an entry
    but its content and layout), or None for any other entry the index does not show."""
    name = (block[345:500].rstrip(b"\0") + b"/" if block[345] else b"") + block[:100].rstrip(b"\0")
    records: dict[bytes, bytes] = {}
    for flag, data in extensions:
        if flag == b"L":
            name = data.rstrip(b"\0")
        elif flag == b"x":
            records.update(_pax_records(data))
    name = records.get(b"path", name)
    while name.startswith((b"./", b"/")):
        name = name[2:] if name.startswith(b"./") else name[1:]
    name = name.rstrip(b"/")
    base = name.rpartition(b"/")[2]
    if not base.startswith(b".wh."):
        return None
    kind = "opaque" if base == b".wh..wh..opq" else "whiteout"

    def number(key: bytes, start: int, end: int) -> int:
        value = records.get(key)
        return int(value.split(b".")[0]) if value is not None else _octal(block[start:end])

    def text(key: bytes, start: int, end: int) -> str:
        value = records.get(key, block[start:end].rstrip(b"\0"))
        return value.decode("utf-8", "surrogateescape")

    return name.decode("utf-8", "surrogateescape"), (
        kind,
        0,
        _octal(block[100:108]) & 0o7777,
        number(b"uid", 108, 116),
        number(b"gid", 116, 124),
        text(b"uname", 265, 297),
        text(b"gname", 297, 329),
        number(b"mtime", 136, 148),
        {},
        None,
        None,
    )


def _pax_records(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            return
        try:
            length = int(data[pos:space])
        except ValueError:
            return
        if length <= 0:
            return
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        yield key, value
        pos += length


def _pax_names(data: bytes) -> Iterator[str]:
    for key, _ in _pax_records(data):
        yield key.decode("utf-8", "backslashreplace")


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return 0


class _Window:
    """A sliding window over a stream given as chunks: ``take`` a byte range, ``hash`` one of
    any length, ``release`` what lies before a position. Memory stays at a few chunks."""

    def __init__(self, chunks: Iterator[bytes], path: Path) -> None:
        self._chunks = chunks
        self._path = path
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]

    @property
    def buffer(self) -> bytearray:
        """The window's bytes (one object for the window's life, resized in place)."""
        return self._buf

    @property
    def base(self) -> int:
        """The stream offset of ``buffer[0]``."""
        return self._base

    def _more(self) -> None:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise CorruptLayerError(
                f"the tar stream ends at byte {self._base + len(self._buf)}, inside an entry",
                self._path,
            )
        self._buf += chunk

    def take(self, start: int, end: int) -> bytes:
        while self._base + len(self._buf) < end:
            self._more()
        return bytes(self._buf[start - self._base : end - self._base])

    def digest(self, start: int, end: int) -> str:
        """``sha256:<hex>`` of the bytes from ``start`` to ``end``."""
        if end <= self._base + len(self._buf):
            with memoryview(self._buf) as view:
                return (
                    "sha256:"
                    + hashlib.sha256(view[start - self._base : end - self._base]).hexdigest()
                )
        h = hashlib.sha256()
        self.hash(start, end, h)
        return "sha256:" + h.hexdigest()

    def hash(self, start: int, end: int, h: Any) -> None:
        pos = start
        while pos < end:
            available = self._base + len(self._buf)
            if available <= pos:
                self._more()
                continue
            stop = min(end, available)
            with memoryview(self._buf) as view:
                h.update(view[pos - self._base : stop - self._base])
            pos = stop
            if stop == available:
                self.release(stop)

    def release(self, upto: int) -> None:
        k = upto - self._base
        if k >= _CHUNK or k == len(self._buf):
            del self._buf[:k]  # bytearray drops a prefix without moving the rest
            self._base = upto

    def drain(self, upto: int) -> int:
        """Reads to the end of the stream; returns how many bytes follow ``upto``."""
        end = self._base + len(self._buf)
        for chunk in self._chunks:
            end += len(chunk)
        self._buf.clear()
        return end - upto


# --- compression ------------------------------------------------------------------------------


def _decompressed(
    f: BinaryIO, blob: _Blob, info: dict[str, Any], sample: dict[str, Any]
) -> Iterator[bytes]:
    if blob.compression == "gzip":
        return _gzip_stream(f, blob.path, info, sample)
    if blob.compression == "zstd":
        return _zstd_stream(f, blob.path)
    return _plain_stream(f, info)


def _plain_stream(f: BinaryIO, info: dict[str, Any]) -> Iterator[bytes]:
    size = 0
    while chunk := f.read(_CHUNK):
        size += len(chunk)
        yield chunk
    info["size"] = size


def _gzip_stream(
    f: BinaryIO, path: Path, info: dict[str, Any], sample: dict[str, Any]
) -> Iterator[bytes]:
    """The members' bytes one after another; records in ``info`` the members' count, their
    uncompressed sizes and header fields, and in ``sample`` the start of the first member,
    compressed and not (for :func:`_zlib_level`)."""
    headers: Counter[tuple[Any, ...]] = Counter()
    sizes: list[int] = []
    first: dict[str, Any] | None = None
    size = 0
    pending = b""
    decompressor: Any = None
    member_out = 0
    eof = False
    while True:
        if decompressor is None:
            # a member starts: its header first (read whole, however it is split)
            while not eof and len(pending) < 4096:
                chunk = f.read(_CHUNK)
                if not chunk:
                    eof = True
                    break
                size += len(chunk)
                pending += chunk
            if not pending:
                break
            parsed = _gzip_header(pending)
            if parsed is None:
                raise CorruptLayerError(
                    f"bytes after gzip member {len(sizes)} are not a gzip member", path
                )
            header, length = parsed
            if first is None:
                first = header
                sample["deflate"] = pending[length : length + _SAMPLE_IN]
            headers[tuple(header.values())] += 1
            decompressor = zlib.decompressobj(31)
            member_out = 0
        try:
            out = decompressor.decompress(pending, _CHUNK)
        except zlib.error as e:
            raise CorruptLayerError(
                f"cannot decompress gzip member {len(sizes)}: {e}", path
            ) from None
        if not sizes and member_out < _SAMPLE_OUT:
            sample["data"] = sample.get("data", b"") + out[: _SAMPLE_OUT - member_out]
        member_out += len(out)
        if out:
            yield out
        if decompressor.eof:
            if not sizes:
                sample["whole"] = member_out <= _SAMPLE_OUT
            pending = decompressor.unused_data
            sizes.append(member_out)
            decompressor = None
            continue
        pending = decompressor.unconsumed_tail
        if not pending and len(out) < _CHUNK:
            chunk = f.read(_CHUNK)
            if not chunk:
                raise CorruptLayerError(f"gzip member {len(sizes)} is truncated", path)
            size += len(chunk)
            pending = chunk
    info["size"] = size
    info["members"] = len(sizes)
    if len(sizes) > 1:
        body = set(sizes[:-1])
        info["member_size"] = sizes[0] if len(body) == 1 else "varied"
    else:
        info["member_size"] = sizes[0] if sizes else 0
    if first is not None:
        for key, value in first.items():
            info[f"header.{key}"] = value
        if len(headers) > 1:
            info["header.varies"] = f"{len(headers)} different member headers"


def _gzip_header(data: bytes) -> tuple[dict[str, Any], int] | None:
    """The fields of the gzip member header at the start of ``data`` (RFC 1952 §2.3) and its
    length, or None when it is not one."""
    if len(data) < 10 or data[:3] != b"\x1f\x8b\x08":
        return None
    flg, mtime, xfl, os_byte = struct.unpack_from("<BIBB", data, 3)
    pos = 10
    extra = None
    if flg & 4 and len(data) >= pos + 2:
        (xlen,) = struct.unpack_from("<H", data, pos)
        extra = data[pos + 2 : pos + 2 + xlen].hex()
        pos += 2 + xlen
    name = None
    if flg & 8:
        end = data.find(b"\0", pos)
        name = data[pos : end if end >= 0 else len(data)].decode("latin-1")
        pos = end + 1
    comment = None
    if flg & 16:
        end = data.find(b"\0", pos)
        comment = data[pos : end if end >= 0 else len(data)].decode("latin-1")
        pos = end + 1
    if flg & 2:
        pos += 2  # the header's CRC16
    return {
        "flags": ",".join(n for i, n in enumerate(_GZIP_FLAGS) if flg & (1 << i)) or "none",
        "mtime": mtime,
        "xfl": xfl,
        "level_hint": _GZIP_LEVEL_HINTS.get(xfl, f"unknown (XFL={xfl})"),
        "os": os_byte,
        "name": name,
        "comment": comment,
        "extra": extra,
    }, pos


#: How much of the first gzip member :func:`_zlib_level` compares.
_SAMPLE_IN = 512 << 10
_SAMPLE_OUT = 1 << 20


def _zlib_level(sample: Mapping[str, Any]) -> str:
    """Which zlib level (1-9) wrote the first member's deflate stream, found by compressing
    the start of its data again at each level: ``"zlib level 6"``, ``"zlib level 4-9"`` when
    several give the same bytes, or ``"not zlib"`` (libdeflate, Go, pigz's own blocks...).
    Deflate emits what it has decided without seeing further input, so a prefix compares."""
    data, deflate = sample.get("data", b""), sample.get("deflate", b"")
    if not data or not deflate:
        return "unknown"
    levels = []
    undecided = False
    for level in range(1, 10):
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        out = c.compress(data) + (c.flush() if sample.get("whole") else b"")
        n = min(len(out), len(deflate))
        if n < min(len(deflate), 64):
            undecided = True  # too little came out to tell
        elif out[:n] == deflate[:n]:
            levels.append(level)
    if not levels:
        return "unknown" if undecided else "not zlib"
    if len(levels) == 1:
        return f"zlib level {levels[0]}"
    return f"zlib level {levels[0]}-{levels[-1]}"


def _zstd_stream(f: BinaryIO, path: Path) -> Iterator[bytes]:
    try:
        import zstandard
    except ImportError as e:
        raise ImportError(
            "explaining a zstd layer needs the 'zstandard' package (pip install 'layercore[zstd]')"
        ) from e

    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    try:
        while chunk := reader.read(_CHUNK):
            yield chunk
    except zstandard.ZstdError as e:
        raise CorruptLayerError(f"cannot decompress the zstd layer: {e}", path) from None


def _zstd_frames(f: BinaryIO, path: Path) -> dict[str, Any]:
    """The frame layout of a zstd blob, walked from frame and block headers without
    decompressing (RFC 8878 §3.1): frames, skippable frames, and the first frame's header."""
    frames = skippable = 0
    first: dict[str, Any] | None = None
    headers: set[tuple[Any, ...]] = set()
    size = 0
    while True:
        magic = f.read(4)
        if not magic:
            break
        if len(magic) < 4:
            raise CorruptLayerError("the zstd stream ends inside a frame's magic number", path)
        (number,) = struct.unpack("<I", magic)
        if number & 0xFFFFFFF0 == 0x184D2A50:
            (length,) = struct.unpack("<I", f.read(4))
            f.seek(length, os.SEEK_CUR)
            skippable += 1
            continue
        if number != 0xFD2FB528:
            raise CorruptLayerError(f"bytes after zstd frame {frames} are not a zstd frame", path)
        (descriptor,) = f.read(1)
        fcs_flag = descriptor >> 6
        single = bool(descriptor & 0x20)
        checksum = bool(descriptor & 0x04)
        did_flag = descriptor & 0x03
        window = None
        if not single:
            (wd,) = f.read(1)
            base = 1 << (10 + (wd >> 3))
            window = base + (base // 8) * (wd & 7)
        did_size = (0, 1, 2, 4)[did_flag]
        dictionary = int.from_bytes(f.read(did_size), "little") if did_size else None
        fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
        content = int.from_bytes(f.read(fcs_size), "little") if fcs_size else None
        if fcs_size == 2 and content is not None:
            content += 256
        header = {
            "window_size": window,
            "single_segment": single,
            "content_size": "recorded" if content is not None else "absent",
            "checksum": checksum,
            "dictionary_id": dictionary,
        }
        if first is None:
            first = header
        headers.add(tuple(header.values()))
        while True:
            block = f.read(3)
            if len(block) < 3:
                raise CorruptLayerError("the zstd stream ends inside a block header", path)
            value = int.from_bytes(block, "little")
            last, kind, length = value & 1, (value >> 1) & 3, value >> 3
            f.seek(1 if kind == 1 else length, os.SEEK_CUR)
            if last:
                break
        if checksum:
            f.seek(4, os.SEEK_CUR)
        frames += 1
        size = f.tell()
    info: dict[str, Any] = {"frames": frames, "skippable_frames": skippable}
    if first is not None:
        for key, value in first.items():
            info[f"frame.{key}"] = value
        if len(headers) > 1:
            info["frame.varies"] = f"{len(headers)} different frame headers"
    info["size"] = size
    return info


def _compression_differences(a: dict[str, Any], b: dict[str, Any]) -> Iterator[Difference]:
    for key in _union(a, b):
        if a.get(key) != b.get(key):
            yield Difference(key, a.get(key), b.get(key))


def _compression_verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    if a["type"] != b["type"]:
        return f"same tar, different compression ({a['type']} vs {b['type']})"
    return f"same tar, different {a['type']} settings"


# --- entries ----------------------------------------------------------------------------------


def _entry_changes(sa: _Side, sb: _Side) -> Iterator[EntryChange]:
    ma, mb = sa.meta, sb.meta
    for path in sa.order:
        ta = ma[path]
        tb = mb.get(path)
        if tb is None or (ta == tb and sa.raw.get(path) == sb.raw.get(path)):
            continue
        if ta[0] == "skipped" or tb[0] == "skipped":
            continue
        fields = [
            Difference(name, va, vb)
            for name, va, vb in zip(_FIELDS, ta, tb, strict=False)
            if va != vb and not (name == "content" and ta[0] != tb[0])
        ]
        if not fields:
            encoding = _encoding_difference(sa.raw[path], sb.raw[path])
            if encoding is None:
                continue
            fields.append(encoding)
        yield EntryChange(path, tuple(fields))


def _encoding_difference(ra: bytes, rb: bytes) -> Difference:
    """Headers that say the same things in different bytes: the ustar fields that differ
    (number formatting, padding, device fields), or the extended headers'."""
    ha, hb = ra[-_BLOCK:], rb[-_BLOCK:]
    fa: dict[str, str] = {}
    fb: dict[str, str] = {}
    for name, start, end in _USTAR_FIELDS:
        if ha[start:end] != hb[start:end]:
            fa[name] = ha[start:end].decode("latin-1")
            fb[name] = hb[start:end].decode("latin-1")
    if not fa:
        fa["extended headers"] = ra[:-_BLOCK].rstrip(b"\0").decode("latin-1")
        fb["extended headers"] = rb[:-_BLOCK].rstrip(b"\0").decode("latin-1")
    return Difference("header_encoding", fa, fb)


def _header_differences(sa: _Side, sb: _Side) -> Iterator[Difference]:
    """The layer-wide layout: the header families used (counted, when they are not the same
    families), and how the archive ends."""
    fa, fb = _formats(sa), _formats(sb)
    if fa.keys() != fb.keys():
        yield Difference("format", fa, fb)
    ea, eb = _end_of_archive(sa), _end_of_archive(sb)
    if ea != eb:
        yield Difference("end_of_archive", ea, eb)


def _end_of_archive(side: _Side) -> str:
    """How the archive ends after its last entry: tar's 10240-byte records (GNU tar, Python's
    tarfile, layercore) make the padding depend on the content, so only the rule is compared."""
    if side.length % 10240 == 0 and side.trailer >= 1024:
        return "zeros to a multiple of 10240 bytes"
    if side.trailer == 1024:
        return "two zero blocks"
    return f"{side.trailer} bytes of zeros"


def _formats(side: _Side) -> dict[str, int]:
    """How many entries use each header layout family (``ustar``, ``ustar+pax``, ``gnu``,
    ``gnu+longname``, ...), PAX record names left out."""
    counts: Counter[str] = Counter()
    for meta in side.meta.values():
        if meta[0] != "skipped":
            counts["+".join(part.split("(")[0] for part in meta[-1].split("+"))] += 1
    return dict(sorted(counts.items()))


def _family(formats: Mapping[str, int]) -> str:
    """A layer's tar format in one word: GNU, PAX, ustar or v7 (or several, joined)."""
    names = set()
    for layout in formats:
        if layout.startswith("gnu"):
            names.add("GNU")
        elif "pax" in layout or "global" in layout:
            names.add("PAX")
        elif layout.startswith("ustar"):
            names.add("ustar")
        else:
            names.add("v7")
    if "PAX" in names:
        names.discard("ustar")  # a PAX archive writes plain ustar headers where nothing overflows
    return "+".join(sorted(names))


def _layer_verdict(
    only_a: tuple[str, ...],
    only_b: tuple[str, ...],
    changed: tuple[EntryChange, ...],
    order_differs: bool,
    header: tuple[Difference, ...],
    sa: _Side,
    sb: _Side,
) -> str:
    counts: Counter[str] = Counter(name for c in changed for name in c.names)
    fields = set(counts)
    header_fields = {d.field for d in header}
    n = len(changed)
    if not only_a and not only_b and not order_differs:
        if not header_fields:
            if fields == {"mtime"}:
                return "only mtimes differ: set SOURCE_DATE_EPOCH"
            if fields == {"mode"}:
                bits = 0
                for c in changed:
                    d = c.fields[0]
                    bits |= int(d.a) ^ int(d.b)
                if bits and not bits & ~0o022:
                    who = {0o020: "group", 0o002: "other", 0o022: "group- and other"}[bits]
                    return f"{who}-write bits differ on {n} {_noun(n)}: umask"
                return f"only modes differ on {n} {_noun(n)}"
            if fields and fields <= _OWNER_FIELDS:
                return f"only owners differ on {n} {_noun(n)}: set the owner when building"
        if fields <= {"header", "header_encoding"}:
            if "header" in fields or "format" in header_fields:
                fa = _family(_formats(sa))
                fb = _family(_formats(sb))
                if fa != fb:
                    return f"same files, different tar header layout ({fa} vs {fb})"
                return "same files, different tar header layout"
            if fields:
                return "same files, different tar header encoding"
            if header_fields == {"end_of_archive"}:
                return "same entries, different end-of-archive padding"
    if not only_a and not only_b and order_differs and not fields and not header_fields:
        return "same entries in a different order: sort them by name"
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} only in a")
    if only_b:
        parts.append(f"{len(only_b)} only in b")
    if changed:
        detail = ", ".join(f"{name} {counts[name]}" for name in _FIELDS if name in counts)
        parts.append(f"{n} changed ({detail})")
    if order_differs:
        parts.append("entry order differs")
    if header_fields:
        parts.append("header layout differs")
    return "; ".join(parts) or "different tar bytes"


def _noun(n: int) -> str:
    return "file" if n == 1 else "files"


#: For the command line: how a difference's value reads in text.
def describe_value(name: str, value: Any) -> str:
    """A field's value as the command line prints it (modes in octal, digests short)."""
    if value is None:
        return "-"
    if name == "mode" and isinstance(value, int):
        return f"{value:04o}"
    if isinstance(value, str) and value.startswith("sha256:") and len(value) == 71:
        return value[:19]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={describe_value('', v)}" for k, v in value.items()) + "}"
    return str(value)
