"""layercore: build, stack, merge and inspect OCI / Docker image layers, fast and to the spec."""

from layercore import errors
from layercore._core import Digester, Entry, __version__, build_profile, chain_id, sha256_file
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

__all__ = [
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
    "TruncatedLayerError",
    "UnsupportedEntryError",
    "__version__",
    "build_profile",
    "chain_id",
    "errors",
    "sha256_file",
]
