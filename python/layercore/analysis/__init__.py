"""Analyses of an image read from its layer indexes, never from extracted files.

This subpackage sits above the store: it may import ``layercore.image``, ``layer``, ``stack``,
``store`` and ``errors``; nothing below it imports it (``Image.analyze`` and
``Image.squash_savings`` are entry points that import it when called).

- ``waste``: where an image's bytes go: per layer, the bytes still visible in the final image and
  the bytes hidden later, by cause and by the layer that hid them (``analyze``, ``Analysis``,
  ``LayerWaste``); what squashing a range of layers would save (``squash_savings``,
  ``SquashSavings``);
- ``explain``: why two images' or two layers' digests differ: config fields, entries, header
  layout, compression, and a verdict (``Explanation``; the function is
  ``layercore.explain`` or ``layercore.analysis.explain.explain``: in this package the name
  ``explain`` is its module);
- ``report``: a self-contained HTML report of an image (``write_report``).

Importing the package loads none of them; each name below is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layercore.analysis.explain import Explanation
    from layercore.analysis.report import write_report
    from layercore.analysis.waste import (
        Analysis,
        LayerWaste,
        SquashSavings,
        WastedPath,
        analyze,
        squash_savings,
    )

__all__ = [
    "Analysis",
    "Explanation",
    "LayerWaste",
    "SquashSavings",
    "WastedPath",
    "analyze",
    "squash_savings",
    "write_report",
]

_WHERE = {
    "Analysis": "waste",
    "LayerWaste": "waste",
    "SquashSavings": "waste",
    "WastedPath": "waste",
    "analyze": "waste",
    "squash_savings": "waste",
    "Explanation": "explain",
    "write_report": "report",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'layercore.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"layercore.analysis.{module}"), name)
