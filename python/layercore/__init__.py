"""layercore: build, stack, merge and inspect OCI / Docker image layers, fast and to the spec."""

from layercore import errors
from layercore._core import Digester, Entry, __version__, build_profile, chain_id, sha256_file
from layercore.container import Container, ContainerEntry
from layercore.diff import from_diff, from_overlay_upper
from layercore.errors import (
    CorruptLayerError,
    DigestMismatchError,
    LayerError,
    LayerIOError,
    LayerWarning,
    SourceChangedError,
    SourceNotFoundError,
    TruncatedLayerError,
    UnsupportedEntryError,
)
from layercore.layer import Layer
from layercore.stack import Change, Stack

__all__ = [
    "Change",
    "Container",
    "ContainerEntry",
    "CorruptLayerError",
    "DigestMismatchError",
    "Digester",
    "Entry",
    "Layer",
    "LayerError",
    "LayerIOError",
    "LayerWarning",
    "SourceChangedError",
    "SourceNotFoundError",
    "Stack",
    "TruncatedLayerError",
    "UnsupportedEntryError",
    "__version__",
    "build_profile",
    "chain_id",
    "errors",
    "from_diff",
    "from_overlay_upper",
    "sha256_file",
]
