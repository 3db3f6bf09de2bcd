"""Changeset layers: the difference between two directory trees (or a stack of layers and a
directory tree), or an overlayfs upper dir.

Both functions write a layer blob and return a :class:`~layercore.layer.Layer`; the work is done
by the Rust engine with the GIL released.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

from layercore import _core
from layercore.errors import LayerWarning
from layercore.layer import Compression, Layer, Owner, StrPath
from layercore.stack import Stack

__all__ = ["CompareMode", "from_diff", "from_overlay_upper"]

CompareMode = Literal["metadata", "content"]


def from_diff(
    lower: StrPath | Stack,
    upper: StrPath,
    out: StrPath,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    owner: Owner = "root",
    compare: CompareMode = "metadata",
    threads: int | None = None,
) -> Layer:
    """Writes the changeset that turns the tree ``lower`` into the tree ``upper`` as a layer.

    ``lower`` is a directory, or a :class:`~layercore.stack.Stack`, read through its merged
    view without extracting it: what a build step that changed a root filesystem needs (the
    image's stack as ``lower``, the root filesystem after the step as ``upper``). The result
    is the layer the two-directory diff gives against the stack extracted: the stack's mtimes
    are whole seconds, so an upper mtime with the same seconds is equal whatever its
    nanoseconds; a name the stack wrote as a hardlink shares its target's inode (metadata,
    body, link group); with ``compare="content"`` lower bodies are streamed from the blobs.

    Added and modified entries are written whole; a deleted path becomes a whiteout
    ``DIR/.wh.NAME`` (empty file, mode 0, owner 0, mtime 0). A directory that lost children gets
    explicit whiteouts or an opaque marker ``DIR/.wh..wh..opq`` with all its content, whichever
    takes fewer entries. Unchanged directories above a change are written too, so their modes and
    owners survive extraction. Within a directory, whiteouts come before the other entries.
    A hardlink group of ``upper`` is written whole or not at all, so its links survive.

    ``compare="metadata"`` counts an entry as unchanged when type, mode, owner (under ``owner``),
    size, mtime (nanoseconds too, when both sides have them), link target, xattrs and device
    numbers are equal; ``compare="content"`` ignores mtimes and compares file bodies instead.
    Applying the layer onto ``lower`` gives ``upper``. Other options are those of
    :meth:`Layer.from_dir <layercore.layer.Layer.from_dir>`; ``source_date_epoch`` clamps the
    mtimes written, never the comparison. Sockets in ``upper`` are skipped with a
    :class:`~layercore.errors.LayerWarning`.
    """
    _check_threads(threads)
    out_path = Path(out)
    if isinstance(lower, Stack):
        descriptor, skipped = _core.diff_stack_dir(
            lower._view,
            os.fspath(upper),
            os.fspath(out_path),
            compression=compression,
            level=level,
            threads=threads,
            owner=owner,
            source_date_epoch=source_date_epoch,
            compare=compare,
        )
    else:
        descriptor, skipped = _core.diff_dirs(
            os.fspath(lower),
            os.fspath(upper),
            os.fspath(out_path),
            compression=compression,
            level=level,
            threads=threads,
            owner=owner,
            source_date_epoch=source_date_epoch,
            compare=compare,
        )
    for message in skipped:
        warnings.warn(message, LayerWarning, stacklevel=2)
    return Layer._from_descriptor(out_path, descriptor)


def from_overlay_upper(
    upper: StrPath,
    out: StrPath,
    *,
    compression: Compression = "gzip",
    level: int | None = None,
    source_date_epoch: int | None = None,
    owner: Owner = "root",
    threads: int | None = None,
    lower: Stack | None = None,
) -> Layer:
    """Writes an overlayfs upper directory as a layer, as ``docker commit`` does on overlay2.

    A character device 0/0 is a whiteout of its name (``.wh.NAME``); a directory whose
    ``trusted.overlay.opaque`` or ``user.overlay.opaque`` xattr is ``y`` is written with an
    opaque marker ``DIR/.wh..wh..opq`` after it. The overlay's own xattrs are not copied. A
    metadata-only copy-up (``overlay.metacopy``) or a renamed directory (``overlay.redirect``)
    needs the lower layers and raises :class:`~layercore.errors.UnsupportedEntryError`.
    Options as for :func:`from_diff`; ``owner="inherit"`` takes the owners from ``lower``, the
    stack the upper dir lies over (a path it lacks is root's).
    """
    _check_threads(threads)
    if owner == "inherit" and lower is None:
        raise ValueError("owner='inherit' needs lower=, the stack below the upper directory")
    if owner == "inherit" and lower is not None and not lower.layers:
        owner = "root"  # nothing below: every path is new, and root's
    out_path = Path(out)
    descriptor, skipped = _core.overlay_upper_to_layer(
        os.fspath(upper),
        os.fspath(out_path),
        compression=compression,
        level=level,
        threads=threads,
        owner=owner,
        source_date_epoch=source_date_epoch,
        lower=None if lower is None or not lower.layers else lower._view,
    )
    for message in skipped:
        warnings.warn(message, LayerWarning, stacklevel=2)
    return Layer._from_descriptor(out_path, descriptor)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
