"""How the command line shows things: sizes and digests for people, borderless tables, and the
JSON of layers and images (stable keys, exact byte counts).

It may import the image model and rich's tables (when a table is made: a command that prints
no table does not pay for importing rich); it knows nothing of the store, the session or the
parser.
"""

from __future__ import annotations

from layercore import units

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from rich.table import Table

    from layercore.image import Image
    from layercore.layer import Layer

__all__ = [
    "borderless_table",
    "human_size",
    "image_json",
    "image_size",
    "layer_json",
    "plural",
    "short_digest",
    "show_path",
]


def human_size(size: int | None) -> str:
    """A byte count for people (binary units, one decimal); ``-`` for none."""
    return "-" if size is None else units.human_size(size)


def show_path(name: str) -> str:
    """A path as a terminal can show it: undecodable bytes and control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.translate(_CONTROL)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def short_digest(digest: str | None) -> str:
    """The first 12 hex digits of a digest, as listings show it."""
    return "-" if digest is None else digest.partition(":")[2][:12]


def plural(count: int, noun: str) -> str:
    """``1 blob``, ``2 blobs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def borderless_table(*columns: str, right: Sequence[str] = ()) -> Table:
    """A borderless table with an upper-case header, ``docker images`` style."""
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table


def plain_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = ()
) -> str:
    """:func:`borderless_table`'s layout as plain text, for a stream that is not a terminal
    (a CI log): columns two spaces apart, nothing wrapped, a cell's further lines (after a
    newline) on lines of their own under it. Costs no rich import."""
    split = [[cell.split("\n") for cell in row] for row in rows]
    widths = [
        max([len(name)] + [len(line) for row in split for line in row[i]])
        for i, name in enumerate(columns)
    ]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if name in right else c.ljust(w)
            for c, w, name in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(out).rstrip()

    lines = [line(columns)]
    for row in split:
        for k in range(max(len(cell) for cell in row)):
            lines.append(line([cell[k] if k < len(cell) else "" for cell in row]))
    return "\n".join(lines)


def layer_json(layer: Layer) -> dict[str, Any]:
    """A layer's descriptor and where its blob is, as ``--json`` prints it."""
    return {
        "media_type": layer.media_type,
        "digest": layer.digest,
        "size": layer.size,
        "diff_id": layer.diff_id,
        "uncompressed_size": layer.uncompressed_size,
        "compression": layer.compression,
        "path": str(layer.path),
    }


def image_size(image: Image) -> int:
    """Bytes of every blob the image is made of: manifest, config and layers."""
    return len(image.manifest_bytes) + len(image.config_bytes) + sum(x.size for x in image.layers)


def image_json(tag: str | None, image: Image) -> dict[str, Any]:
    """An image (and the tag it is known by, or None) as ``--json`` prints it."""
    return {
        "tag": tag,
        "digest": image.digest,
        "media_type": image.media_type,
        "config_digest": image.config_digest,
        "architecture": image.architecture,
        "os": image.os,
        "created": image.created,
        "size": image_size(image),
        "layers": [
            {
                "media_type": x.media_type,
                "digest": x.digest,
                "diff_id": x.diff_id,
                "size": x.size,
            }
            for x in image.layers
        ],
    }
