"""Where an image's bytes go: per layer, what the final image still shows and what later layers
hide, by cause and by the layer that hid it; and what squashing a range of layers would save.

Everything is computed from the layers' entries (one streaming pass over each blob, in order,
bottom first): nothing is extracted, and file bodies are read only to tell whether a copy
re-adds the content it replaces (attribute-only copies).

**Bytes** are regular-file content bytes: the sizes of the layers' regular-file entries, without
tar headers, padding or compression. A hardlink carries no body, so a file and its links are
counted once; their bytes stay visible while any of their names is visible in the final image.
Directories, symlinks, devices, whiteouts and opaque markers have no bytes.

A copy is **hidden** (wasted) when the final image does not show it, with one cause, the first
that applies to its last visible name, and the layer that did it:

- ``deleted``: a whiteout of the path or of a directory above it;
- ``overwritten``: a later entry at the same path (a new body, new attributes, another kind);
- ``opaque``: an opaque marker on a directory above it;
- ``replaced_by_file``: a directory above it replaced by a non-directory.

The copy that the final image shows is never waste. The OCI rules are the merged view's
(:class:`~layercore.stack.Stack`): a layer's whiteouts and opaque markers hide lower layers only,
wherever they stand in its archive.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from layercore import _core
from layercore.layer import Layer

if TYPE_CHECKING:
    from layercore.image import Image

__all__ = [
    "BASE_DIGEST_ANNOTATION",
    "BASE_NAME_ANNOTATION",
    "CAUSES",
    "Analysis",
    "Cause",
    "LayerWaste",
    "SquashSavings",
    "WastedCopy",
    "WastedPath",
    "analyze",
    "squash_savings",
]

#: The manifest annotations that name the image a build started from (OCI image-spec).
BASE_DIGEST_ANNOTATION = "org.opencontainers.image.base.digest"
BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"

Cause = Literal["deleted", "overwritten", "opaque", "replaced_by_file"]
#: Why a copy is hidden, in the order tables and JSON list them.
CAUSES: tuple[Cause, ...] = ("deleted", "overwritten", "opaque", "replaced_by_file")


@dataclass(frozen=True)
class WastedCopy:
    """One copy of a file (a body and its hardlinks) that the final image does not show:
    ``path`` is where its body is in ``layer``, ``hidden_by`` the layer that hid its last
    visible name."""

    path: str
    layer: int
    bytes: int
    cause: Cause
    hidden_by: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "layer": self.layer,
            "bytes": self.bytes,
            "cause": self.cause,
            "hidden_by": self.hidden_by,
        }


@dataclass(frozen=True)
class WastedPath:
    """A path whose hidden copies waste ``bytes`` in all; ``layer``, ``cause`` and
    ``hidden_by`` are those of its largest hidden copy (the lowest layer among equals), and
    ``history`` is what :meth:`Stack.history <layercore.stack.Stack.history>` says of it."""

    path: str
    bytes: int
    copies: tuple[WastedCopy, ...]
    history: tuple[tuple[int, str], ...]

    @property
    def layer(self) -> int:
        return self._largest.layer

    @property
    def cause(self) -> Cause:
        return self._largest.cause

    @property
    def hidden_by(self) -> int:
        return self._largest.hidden_by

    @property
    def _largest(self) -> WastedCopy:
        return max(self.copies, key=lambda c: (c.bytes, -c.layer))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "bytes": self.bytes,
            "layer": self.layer,
            "cause": self.cause,
            "hidden_by": self.hidden_by,
            "copies": [{k: v for k, v in c.to_json().items() if k != "path"} for c in self.copies],
            "history": [{"layer": i, "change": change} for i, change in self.history],
        }


@dataclass(frozen=True)
class LayerWaste:
    """One layer's figures (bytes as the module docstring defines them).

    ``added_bytes`` = ``visible_bytes`` + ``wasted_bytes``; ``hidden`` splits ``wasted_bytes``
    by cause and ``hidden_by`` by the layer that hid them. ``attribute_only_bytes`` are this
    layer's files whose body is the one they replace (a ``chmod -R`` or ``chown -R`` layer: only
    mode, owner, mtime or xattrs changed); the replaced copies are waste of the lower layer.
    ``added``, ``modified`` and ``deleted`` count paths: new ones, visible ones this layer
    replaced (a directory only when its mode, owner or mtime changed), and visible ones its
    whiteouts and opaque markers removed (directories' contents included).
    """

    index: int
    digest: str
    diff_id: str
    created_by: str | None
    entries: int
    added_bytes: int
    visible_bytes: int
    wasted_bytes: int
    hidden: dict[Cause, int]
    hidden_by: dict[int, int]
    attribute_only_bytes: int
    compressed_size: int
    base: bool
    added: int
    modified: int
    deleted: int

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "digest": self.digest,
            "diff_id": self.diff_id,
            "created_by": self.created_by,
            "entries": self.entries,
            "added_bytes": self.added_bytes,
            "visible_bytes": self.visible_bytes,
            "wasted_bytes": self.wasted_bytes,
            "hidden": {cause: self.hidden[cause] for cause in CAUSES},
            "hidden_by": {str(k): v for k, v in sorted(self.hidden_by.items())},
            "attribute_only_bytes": self.attribute_only_bytes,
            "compressed_size": self.compressed_size,
            "base": self.base,
            "added": self.added,
            "modified": self.modified,
            "deleted": self.deleted,
        }


@dataclass(frozen=True)
class Analysis:
    """Where an image's bytes go (see the module docstring for what is counted).

    ``layer_bytes`` is every layer's ``added_bytes``, ``visible_bytes`` what the final image
    shows, ``reclaimable_bytes`` = ``layer_bytes - visible_bytes`` (what rewriting the layers
    could save, uncompressed), ``efficiency`` = ``visible_bytes / layer_bytes`` (1.0 for an
    image without bytes). ``layers`` are bottom first; ``top`` the paths that waste most;
    ``wasted`` every hidden copy. ``base_layers`` is how many bottom layers belong to the base
    image (0 when it is not known), ``base_digest`` the base the manifest names, if any.
    """

    digest: str
    layer_bytes: int
    visible_bytes: int
    reclaimable_bytes: int
    efficiency: float
    layers: list[LayerWaste]
    top: list[WastedPath]
    wasted: list[WastedCopy] = field(repr=False)
    base_layers: int = 0
    base_digest: str | None = None
    base_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "layer_bytes": self.layer_bytes,
            "visible_bytes": self.visible_bytes,
            "reclaimable_bytes": self.reclaimable_bytes,
            "efficiency": self.efficiency,
            "base_layers": self.base_layers,
            "base_digest": self.base_digest,
            "base_name": self.base_name,
            "layers": [layer.to_json() for layer in self.layers],
            "top": [path.to_json() for path in self.top],
        }

    def squash_savings(self, start: int, end: int) -> SquashSavings:
        """What squashing layers ``start..end`` (end exclusive) would remove: the copies in
        those layers hidden by a layer of the range. Copies hidden from above the range stay
        in the squashed layer (it shows what the range showed)."""
        if not 0 <= start < end <= len(self.layers):
            raise ValueError(
                f"squash range {start}..{end} must satisfy 0 <= start < end <= {len(self.layers)}"
            )
        saved = [c for c in self.wasted if start <= c.layer < end and c.hidden_by < end]
        saved.sort(key=lambda c: (-c.bytes, c.path, c.layer))
        return SquashSavings(
            start=start,
            end=end,
            layer_bytes=sum(x.added_bytes for x in self.layers[start:end]),
            saved_bytes=sum(c.bytes for c in saved),
            paths=saved,
        )


@dataclass(frozen=True)
class SquashSavings:
    """What :meth:`Image.squash(start, end, ...) <layercore.image.Image.squash>` would save,
    found without writing anything: ``saved_bytes`` of the range's ``layer_bytes`` (regular-file
    content bytes, uncompressed) would be gone, and ``paths`` are the copies that make them,
    largest first."""

    start: int
    end: int
    layer_bytes: int
    saved_bytes: int
    paths: list[WastedCopy]

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "layer_bytes": self.layer_bytes,
            "saved_bytes": self.saved_bytes,
            "squashed_bytes": self.layer_bytes - self.saved_bytes,
            "paths": [c.to_json() for c in self.paths],
        }


def squash_savings(image: Image, start: int, end: int) -> SquashSavings:
    """:meth:`Analysis.squash_savings` of ``image`` (its history is not looked up)."""
    return analyze(image, top=0).squash_savings(start, end)


# --- the pass --------------------------------------------------------------------------------

_FILE, _HARDLINK, _DIR = "file", "hardlink", "dir"


class _Walk:
    """The merged tree as the layers are applied bottom first, and every body ever added.

    A visible path maps to ``(layer, kind, inode, mode, uid, gid, mtime)``; ``inode`` indexes
    the body lists (-1 for an entry without a body). A body is hidden when its last visible
    name is."""

    def __init__(self, count: int) -> None:
        self.nodes: dict[str, tuple[int, str, int, int, int, int, int]] = {}
        self.children: dict[str, set[str]] = {"": set()}
        self.body_layer: list[int] = []
        self.body_size: list[int] = []
        self.body_path: list[str] = []
        self.body_offset: list[int] = []
        self.body_names: list[int] = []
        self.body_cause: list[Cause | None] = []
        self.body_by: list[int] = []
        self.added = [0] * count
        self.modified = [0] * count
        self.deleted = [0] * count
        #: (new body, old body) pairs of the same size: attribute-only copies if equal.
        self.same_size: list[tuple[int, int]] = []

    def new_body(self, layer: int, path: str, size: int, offset: int) -> int:
        self.body_layer.append(layer)
        self.body_size.append(size)
        self.body_path.append(path)
        self.body_offset.append(offset)
        self.body_names.append(0)
        self.body_cause.append(None)
        self.body_by.append(-1)
        return len(self.body_size) - 1

    def hide(self, path: str, cause: Cause, by: int, *, below: Cause | None = None) -> int:
        """Removes ``path`` and everything under it from the tree; the contents take
        ``below`` as their cause (default ``cause``). Returns how many paths went."""
        nodes, children = self.nodes, self.children
        parent = path.rpartition("/")[0]
        siblings = children.get(parent)
        if siblings is not None:
            siblings.discard(path)
        removed = 0
        todo = [(path, cause)]
        while todo:
            p, why = todo.pop()
            node = nodes.pop(p)
            removed += 1
            inode = node[2]
            if inode >= 0:
                self.body_names[inode] -= 1
                if self.body_names[inode] == 0:
                    self.body_cause[inode] = why
                    self.body_by[inode] = by
            if node[1] == _DIR:
                under = below or why
                todo.extend((c, under) for c in children.pop(p, ()))
        return removed

    def make_dirs(self, parent: str, layer: int) -> None:
        """Gives ``parent`` and its ancestors a directory, as the merged view implies one for
        an entry whose parent no layer carries (a non-directory there is replaced)."""
        nodes, children = self.nodes, self.children
        missing: list[str] = []
        p = parent
        while p:
            node = nodes.get(p)
            if node is not None:
                if node[1] == _DIR:
                    break
                self.hide(p, "overwritten", layer)
                self.modified[layer] += 1
            missing.append(p)
            p = p.rpartition("/")[0]
        for p in reversed(missing):
            nodes[p] = (layer, _DIR, -1, 0o755, 0, 0, 0)
            children.setdefault(p.rpartition("/")[0], set()).add(p)
            children.setdefault(p, set())

    def apply(self, index: int, entries: Iterable[_core.Entry]) -> tuple[int, int]:
        """Applies layer ``index``; returns its entry count and regular-file bytes."""
        nodes, children = self.nodes, self.children
        whiteouts: list[str] = []
        opaque: list[str] = []
        others: list[tuple[str, str, int, int, int, int, int, str | None, int]] = []
        count = added_bytes = 0
        for e in entries:
            count += 1
            kind = e.kind
            if kind == "whiteout":
                parent, _, name = e.path.rpartition("/")
                whiteouts.append(f"{parent}/{name[4:]}" if parent else name[4:])
            elif kind == "opaque":
                opaque.append(e.path.rpartition("/")[0])
            else:
                size = e.size if kind == _FILE else 0
                added_bytes += size
                link = e.linkname if kind == _HARDLINK else None
                others.append((e.path, kind, size, e.mode, e.uid, e.gid, e.mtime, link, e.offset))
        # A layer's whiteouts and opaque markers hide lower layers only: apply them first.
        for path in whiteouts:
            if path in nodes:
                self.deleted[index] += self.hide(path, "deleted", index)
        for directory in opaque:
            node = nodes.get(directory)
            if not directory or (node is not None and node[1] == _DIR):
                for child in list(children.get(directory, ())):
                    self.deleted[index] += self.hide(child, "opaque", index)
        # Hardlinks name a body of this layer (the last entry of that path), wherever it is.
        bodies: dict[str, int] = {}
        inodes = [
            self.new_body(index, path, size, offset) if kind == _FILE else -1
            for path, kind, size, _mode, _uid, _gid, _mtime, _link, offset in others
        ]
        for (path, *_), inode in zip(others, inodes, strict=True):
            if inode >= 0:
                bodies[path] = inode
        for (path, kind, size, mode, uid, gid, mtime, link, _offset), inode in zip(
            others, inodes, strict=True
        ):
            parent = path.rpartition("/")[0]
            if parent:
                above = nodes.get(parent)
                if above is None or above[1] != _DIR:
                    self.make_dirs(parent, index)
            old = nodes.get(path)
            if kind == _HARDLINK and link is not None:
                target = _clean(link)
                inode = bodies.get(target, -1)
                if inode < 0:
                    lower = nodes.get(target)
                    inode = lower[2] if lower is not None else -1
            if old is None:
                self.added[index] += 1
                children[parent].add(path)
            elif kind == _DIR and old[1] == _DIR:
                if old[3:] != (mode, uid, gid, mtime):
                    self.modified[index] += 1
            else:
                if old[1] == _DIR:
                    for child in list(children.get(path, ())):
                        self.hide(child, "replaced_by_file", index)
                if kind == old[1] == _FILE and size > 0 and self.body_size[old[2]] == size:
                    self.same_size.append((inode, old[2]))
                self.hide(path, "overwritten", index)
                self.modified[index] += 1
                children[parent].add(path)
            if inode >= 0:
                self.body_names[inode] += 1
            nodes[path] = (index, kind, inode, mode, uid, gid, mtime)
            if kind == _DIR:
                children.setdefault(path, set())
        return count, added_bytes


def _clean(path: str) -> str:
    """A hardlink target as entry paths are spelled (no leading ``./`` or ``/``)."""
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/")


def analyze(image: Image, base: Image | None = None, *, top: int = 10) -> Analysis:
    """Where ``image``'s bytes go, from its layers' entries (see the module docstring).

    ``base`` is the image it was built from: its layers must be the bottom of ``image``'s
    (``ValueError`` otherwise), and they are marked ``base``. Without it the manifest's
    ``org.opencontainers.image.base.digest`` annotation is reported in ``base_digest``, and
    nothing is marked (the caller resolves the digest: the image has no store). ``top`` is how
    many wasting paths to list with their history (0: none, and no merged view is built)."""
    layers = image.layers
    walk = _Walk(len(layers))
    totals = [walk.apply(i, layer.entries()) for i, layer in enumerate(layers)]

    base_layers = 0
    if base is not None:
        if tuple(image.diff_ids[: len(base.diff_ids)]) != tuple(base.diff_ids):
            raise ValueError(
                f"image {image.digest} is not built on {base.digest}: its bottom layers are "
                "not the base image's layers"
            )
        base_layers = len(base.diff_ids)
    annotations = image.manifest.get("annotations") or {}

    hidden: list[dict[Cause, int]] = [dict.fromkeys(CAUSES, 0) for _ in layers]
    hidden_by: list[dict[int, int]] = [{} for _ in layers]
    visible = [0] * len(layers)
    wasted: list[WastedCopy] = []
    for inode, size in enumerate(walk.body_size):
        layer = walk.body_layer[inode]
        cause = walk.body_cause[inode]
        if cause is None:
            visible[layer] += size
            continue
        by = walk.body_by[inode]
        hidden[layer][cause] += size
        hidden_by[layer][by] = hidden_by[layer].get(by, 0) + size
        wasted.append(WastedCopy(walk.body_path[inode], layer, size, cause, by))

    attribute_only = [0] * len(layers)
    for new in _same_bodies(layers, walk):
        attribute_only[walk.body_layer[new]] += walk.body_size[new]

    created_by = [entry.created_by for layer, entry in image.layer_history() if layer is not None]
    result_layers = [
        LayerWaste(
            index=i,
            digest=layer.digest,
            diff_id=layer.diff_id,
            created_by=created_by[i] if i < len(created_by) else None,
            entries=totals[i][0],
            added_bytes=totals[i][1],
            visible_bytes=visible[i],
            wasted_bytes=totals[i][1] - visible[i],
            hidden=hidden[i],
            hidden_by=hidden_by[i],
            attribute_only_bytes=attribute_only[i],
            compressed_size=layer.size,
            base=i < base_layers,
            added=walk.added[i],
            modified=walk.modified[i],
            deleted=walk.deleted[i],
        )
        for i, layer in enumerate(layers)
    ]
    layer_bytes = sum(t[1] for t in totals)
    visible_bytes = sum(visible)
    return Analysis(
        digest=image.digest,
        layer_bytes=layer_bytes,
        visible_bytes=visible_bytes,
        reclaimable_bytes=layer_bytes - visible_bytes,
        efficiency=visible_bytes / layer_bytes if layer_bytes else 1.0,
        layers=result_layers,
        top=_top_paths(image, wasted, top),
        wasted=wasted,
        base_layers=base_layers,
        base_digest=annotations.get(BASE_DIGEST_ANNOTATION),
        base_name=annotations.get(BASE_NAME_ANNOTATION),
    )


def _top_paths(image: Image, wasted: Sequence[WastedCopy], count: int) -> list[WastedPath]:
    if count <= 0 or not wasted:
        return []
    by_path: dict[str, list[WastedCopy]] = {}
    for copy in wasted:
        by_path.setdefault(copy.path, []).append(copy)
    totals = sorted(
        ((sum(c.bytes for c in cs), p) for p, cs in by_path.items()), key=lambda t: (-t[0], t[1])
    )[:count]
    stack = image.stack
    return [
        WastedPath(
            path=path,
            bytes=total,
            copies=tuple(sorted(by_path[path], key=lambda c: c.layer)),
            history=tuple(stack.history(path)),
        )
        for total, path in totals
    ]


# --- attribute-only copies -------------------------------------------------------------------


def _same_bodies(layers: Sequence[Layer], walk: _Walk) -> list[int]:
    """The new bodies of the same-size pairs whose bytes are equal, found by hashing
    both in one forward pass over each blob concerned."""
    if not walk.same_size:
        return []
    wanted: dict[int, set[int]] = {}
    for pair in walk.same_size:
        for inode in pair:
            wanted.setdefault(walk.body_layer[inode], set()).add(inode)
    digests: dict[int, str] = {}
    for index, inodes in sorted(wanted.items()):
        ranges = sorted((walk.body_offset[i], walk.body_size[i], i) for i in inodes)
        digests.update(_hash_bodies(layers[index], ranges))
    return [new for new, old in walk.same_size if digests[new] == digests[old]]


def _hash_bodies(layer: Layer, ranges: Sequence[tuple[int, int, int]]) -> dict[int, str]:
    """The sha256 of each ``(offset, size, key)`` range of the layer's tar stream, by key;
    ranges in offset order, read in one forward pass (decompressing on the fly)."""
    result: dict[int, str] = {}
    with open(os.fspath(layer.path), "rb") as raw:
        stream = _decompressed(raw, layer.compression)
        position = 0
        for offset, size, key in ranges:
            if offset > position:
                _skip(stream, offset - position)
            position = offset
            digester = _core.Digester()
            left = size
            while left:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    raise EOFError(f"{layer.path}: the tar stream ends inside a file body")
                digester.update(chunk)
                left -= len(chunk)
            position += size
            result[key] = digester.digest()
    return result


def _decompressed(raw: BinaryIO, compression: str | None) -> BinaryIO:
    if compression == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


def _skip(stream: BinaryIO, count: int) -> None:
    if stream.seekable():
        stream.seek(count, os.SEEK_CUR)
        return
    while count:
        chunk = stream.read(min(count, 1 << 20))
        if not chunk:
            raise EOFError("the tar stream ends before a file body")
        count -= len(chunk)
