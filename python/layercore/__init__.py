"""layercore: build, stack, merge and inspect OCI / Docker image layers, fast and to the spec.

Importing the package stays cheap: it loads the engine and the image model, never the
command line (argparse, rich), which ``layercore.cli`` imports when it runs.
"""

from layercore import build, errors
from layercore._core import Digester, Entry, build_profile, chain_id, sha256_file
from layercore.container import Container, ContainerEntry
from layercore.diff import from_diff, from_overlay_upper
from layercore.errors import (
    CorruptImageError,
    CorruptLayerError,
    DigestMismatchError,
    ImageNotFoundError,
    LayerError,
    LayerIOError,
    LayerWarning,
    SourceChangedError,
    SourceNotFoundError,
    TruncatedLayerError,
    UnsupportedEntryError,
)
from layercore.image import Descriptor, HistoryEntry, Image, RuntimeConfig
from layercore.layer import DirAttrs, Layer
from layercore.stack import Change, Stack
from layercore.store import DiskUsage, GcReport, ImageUsage, Store
from layercore.version import BuildInfo, __version__, build_info

__all__ = [
    "BuildInfo",
    "Change",
    "Container",
    "ContainerEntry",
    "CorruptImageError",
    "CorruptLayerError",
    "Descriptor",
    "DigestMismatchError",
    "Digester",
    "DirAttrs",
    "DiskUsage",
    "Entry",
    "GcReport",
    "HistoryEntry",
    "Image",
    "ImageNotFoundError",
    "ImageUsage",
    "Layer",
    "LayerError",
    "LayerIOError",
    "LayerWarning",
    "RuntimeConfig",
    "SourceChangedError",
    "SourceNotFoundError",
    "Stack",
    "Store",
    "TruncatedLayerError",
    "UnsupportedEntryError",
    "__version__",
    "build",
    "build_info",
    "build_profile",
    "chain_id",
    "errors",
    "from_diff",
    "from_overlay_upper",
    "sha256_file",
]
