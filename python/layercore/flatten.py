"""Flattening a stack of layers into one layer, and squashing a range of a stack.

Both run in the Rust engine (``rust/flatten.rs``) without the GIL, in two streaming passes whose
memory grows with the number of entries, never with the size of the files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from layercore import _core
from layercore.layer import Compression, Layer, StrPath

__all__ = ["flatten", "squash"]

LayerLike = Layer | StrPath


def _path(layer: LayerLike) -> str:
    return os.fspath(layer.path if isinstance(layer, Layer) else layer)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")


def flatten(
    layers: Sequence[LayerLike],
    out: StrPath,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
) -> Layer:
    """Writes one layer at ``out`` whose contents are the merged view of ``layers`` (bottom first).

    The OCI rules hold whatever the order of entries inside a layer: a whiteout or opaque marker
    hides lower layers only, a non-directory hides everything below its path, a directory takes
    the attributes of the highest layer that has it, whiteouts never appear in the result, and
    hardlinks keep the content they were made from even when their first name is overwritten or
    deleted higher up. A directory no layer describes (``a/b`` with no ``a/``) comes out as mode
    0755, root-owned, mtime 0 (``source_date_epoch`` when given).

    The result is in canonical order (what :meth:`Layer.from_dir` writes), so the same layers and
    options give the same bytes with any ``threads``. ``source_date_epoch`` clamps mtimes.
    ``compression``, ``level`` and ``threads`` mean what they mean for :meth:`Layer.from_dir`.
    Hostile input (``..`` names, hardlinks to nothing) raises
    :class:`~layercore.errors.UnsupportedEntryError`; nothing is left at ``out`` on failure.
    """
    _check_threads(threads)
    out_path = Path(out)
    descriptor = _core.flatten_layers(
        [_path(layer) for layer in layers],
        os.fspath(out_path),
        compression=compression,
        level=level,
        threads=threads,
        source_date_epoch=source_date_epoch,
    )
    return Layer._from_descriptor(out_path, descriptor)


def squash(
    layers: Sequence[LayerLike],
    start: int,
    end: int,
    out: StrPath,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
) -> list[Layer]:
    """Merges ``layers[start:end]`` into one layer at ``out``; returns the new stack,
    ``layers[:start] + [squashed] + layers[end:]``.

    The new stack shows exactly what the old one showed. The squashed layer follows
    :func:`flatten`'s rules and keeps only the whiteouts still needed: a whiteout of something
    ``layers[:start]`` has, an opaque marker on a directory whose lower content must vanish, none
    below a path that is already hidden. With ``start == 0`` it is ``flatten(layers[:end])``.
    Layers of the result that were given as paths are opened with :meth:`Layer.open` (which
    reads them once to compute their digests). Raises :class:`ValueError` for an empty or
    out-of-range ``start:end``.
    """
    _check_threads(threads)
    if not 0 <= start < end <= len(layers):
        raise ValueError(
            f"cannot squash layers {start}:{end} of a stack of {len(layers)}: the range must be "
            "non-empty and within the stack"
        )
    out_path = Path(out)
    descriptor = _core.squash_layers(
        [_path(layer) for layer in layers[:end]],
        start,
        end,
        os.fspath(out_path),
        compression=compression,
        level=level,
        threads=threads,
        source_date_epoch=source_date_epoch,
    )
    squashed = Layer._from_descriptor(out_path, descriptor)
    return [
        *(_as_layer(layer) for layer in layers[:start]),
        squashed,
        *(_as_layer(layer) for layer in layers[end:]),
    ]


def _as_layer(layer: LayerLike) -> Layer:
    return layer if isinstance(layer, Layer) else Layer.open(layer)
