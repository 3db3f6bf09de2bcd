"""layercore: build, stack, merge and inspect OCI / Docker image layers, fast and to the spec.

Importing the package stays cheap: each name below is loaded on first use (PEP 562), so
``import layercore`` or ``from layercore.build.checksum import ...`` loads only what it
names; the command line (argparse, rich) loads only when ``layercore.cli`` runs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing itself costs an import
if TYPE_CHECKING:
    from typing import Any

    from layercore import build, errors
    from layercore._core import Digester, Entry, build_profile, chain_id, sha256_file
    from layercore.analysis.explain import Explanation, explain
    from layercore.container import Container, ContainerEntry
    from layercore.diff import from_diff, from_overlay_upper
    from layercore.errors import (
        ContainerError,
        ContainerNotFoundError,
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
    from layercore.runtime.containers import BindMount, ContainerChange, ContainerInfo, RunResult
    from layercore.stack import Change, Stack
    from layercore.store import DiskUsage, GcReport, ImageUsage, Store
    from layercore.version import BuildInfo, __version__, build_info

#: Where each public name lives (a module of the package, or the package's own submodule).
_WHERE = {
    "build": None,
    "errors": None,
    **dict.fromkeys(["Digester", "Entry", "build_profile", "chain_id", "sha256_file"], "_core"),
    **dict.fromkeys(["Container", "ContainerEntry"], "container"),
    **dict.fromkeys(["Explanation", "explain"], "analysis.explain"),
    **dict.fromkeys(["from_diff", "from_overlay_upper"], "diff"),
    **dict.fromkeys(
        [
            "ContainerError",
            "ContainerNotFoundError",
            "CorruptImageError",
            "CorruptLayerError",
            "DigestMismatchError",
            "ImageNotFoundError",
            "LayerError",
            "LayerIOError",
            "LayerWarning",
            "SourceChangedError",
            "SourceNotFoundError",
            "TruncatedLayerError",
            "UnsupportedEntryError",
        ],
        "errors",
    ),
    **dict.fromkeys(["Descriptor", "HistoryEntry", "Image", "RuntimeConfig"], "image"),
    **dict.fromkeys(["DirAttrs", "Layer"], "layer"),
    **dict.fromkeys(
        ["BindMount", "ContainerChange", "ContainerInfo", "RunResult"], "runtime.containers"
    ),
    **dict.fromkeys(["Change", "Stack"], "stack"),
    **dict.fromkeys(["DiskUsage", "GcReport", "ImageUsage", "Store"], "store"),
    **dict.fromkeys(["BuildInfo", "__version__", "build_info"], "version"),
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'layercore' has no attribute {name!r}")
    module = _WHERE[name]
    if module is None:
        value: Any = importlib.import_module(f"layercore.{name}")
    else:
        value = getattr(importlib.import_module(f"layercore.{module}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "BindMount",
    "BuildInfo",
    "Change",
    "Container",
    "ContainerChange",
    "ContainerEntry",
    "ContainerError",
    "ContainerInfo",
    "ContainerNotFoundError",
    "CorruptImageError",
    "CorruptLayerError",
    "Descriptor",
    "DigestMismatchError",
    "Digester",
    "DirAttrs",
    "DiskUsage",
    "Entry",
    "Explanation",
    "GcReport",
    "HistoryEntry",
    "Image",
    "ImageNotFoundError",
    "ImageUsage",
    "Layer",
    "LayerError",
    "LayerIOError",
    "LayerWarning",
    "RunResult",
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
    "explain",
    "from_diff",
    "from_overlay_upper",
    "sha256_file",
]
