"""Byte counts for people: one spelling for the command line and the HTML report.

Imports nothing; everything in the package may import it.
"""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(size: int) -> str:
    """A byte count in binary units with one decimal: ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    if size < 1024:
        return f"{size} B"
    value, units = size / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"
