"""Applying layers onto a directory, and extracting a stack of layers into a new one.

Both follow the OCI image-spec rules for applying changesets: whiteouts and opaque markers
remove what *lower* layers put there (never what the same layer writes, in any archive order),
a directory over a directory keeps its contents and takes the new attributes, any other
change of kind replaces the path, directory modes and mtimes are set after their contents.

Nothing is ever written outside ``dest``: every path is walked one component at a time from an
open descriptor of ``dest`` without following symlinks. A layer entry with a ``..`` component,
an entry whose parent is a symlink (``link -> /etc`` then ``link/passwd``), and a hardlink whose
target is missing or outside the tree are rejected with
:class:`~layercore.errors.UnsupportedEntryError` naming the entry.

Privileges: owners are restored where ``chown`` is permitted; where it is not (not root), files
belong to the extracting user and lose their setuid/setgid bits. Device nodes need root: they
are skipped (``devices="skip"``, the default) or fail the call (``devices="fail"``). xattrs the
kernel refuses (``security.*``/``trusted.*`` as non-root, unsupported filesystems) are skipped.
Each of these is reported as a :class:`~layercore.errors.LayerWarning` (one per kind and layer)
and returned.

Digests are not checked here: call :meth:`Layer.verify` first for blobs of unknown origin.
After an error, ``dest`` holds what was applied before the failing entry (never a half-written
file); it is not a valid image state and should be discarded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Literal

from layercore import _core
from layercore.errors import LayerWarning
from layercore.layer import Layer

__all__ = ["DevicePolicy", "apply", "extract"]

#: What to do with a device node when the process may not create one.
DevicePolicy = Literal["skip", "fail"]
StrPath = str | os.PathLike[str]


def apply(layer: Layer | StrPath, dest: StrPath, *, devices: DevicePolicy = "skip") -> list[str]:
    """Applies one layer (a :class:`Layer` or the path of a tar/gzip/zstd blob) onto the
    existing directory ``dest``, as the next layer of whatever ``dest`` holds.

    Returns the warnings (also emitted as :class:`~layercore.errors.LayerWarning`).
    """
    report = _core.apply_layer(_blob(layer), os.fspath(dest), devices=devices)
    return _warn(report)


def extract(
    layers: Sequence[Layer | StrPath], dest: StrPath, *, devices: DevicePolicy = "skip"
) -> list[str]:
    """Extracts a stack of layers, bottom first, into ``dest``, which must be an empty
    directory or not exist (it is then created, with its parents).

    Every blob must exist before anything is written. Returns the warnings of all layers (also
    emitted as :class:`~layercore.errors.LayerWarning`).
    """
    if isinstance(layers, str | bytes | os.PathLike):
        raise TypeError("extract() takes a sequence of layers, not a single path")
    report = _core.extract_layers(
        [_blob(layer) for layer in layers], os.fspath(dest), devices=devices
    )
    return _warn(report)


def snapshot(
    layer: Layer | StrPath, dest: StrPath, *, xattrs: Literal["trusted", "user"] = "trusted"
) -> list[str]:
    """Extracts one layer into ``dest`` (empty or missing) as an overlayfs lower directory, the
    form a snapshotter keeps per layer: its whiteouts become character devices 0/0 of their
    names, its opaque markers the directory's ``trusted.overlay.opaque=y`` (or, with
    ``xattrs="user"``, for a mount with ``userxattr``, ``user.overlay.opaque=y``); nothing is
    removed. Mounting such directories as lower dirs, the top layer first, shows the stack's
    merged tree. Returns the warnings, as :func:`extract` does."""
    report = _core.extract_layers([_blob(layer)], os.fspath(dest), overlay=xattrs)
    return _warn(report)


def _blob(layer: Layer | StrPath) -> str:
    return os.fspath(layer.path if isinstance(layer, Layer) else layer)


def _warn(report: dict[str, object]) -> list[str]:
    found = report["warnings"]
    assert isinstance(found, list)
    messages = [str(message) for message in found]
    for message in messages:
        warnings.warn(message, LayerWarning, stacklevel=3)
    return messages
