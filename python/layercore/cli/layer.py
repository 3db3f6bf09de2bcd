"""``layercore layer create``, and the options of every command that writes a layer
(``--compression``, ``--level``, ``--source-date-epoch``): ``image append``, ``flatten`` and
``squash`` add them with ``add_build_options`` and read them with ``layer_options`` (or
``build_options``, which adds the owner policy of a layer built from a directory).

It may import the layer engine, the errors, and ``cli.session``, ``cli.output``, ``cli.parser``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from layercore.cli.output import borderless_table, human_size, layer_json
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError
from layercore.errors import SourceNotFoundError
from layercore.layer import Compression, Layer

__all__ = ["add_build_options", "build_options", "layer_options", "register"]

_COMPRESSIONS: dict[str, Compression] = {"gzip": "gzip", "zstd": "zstd", "none": None}


def register(commands: Commands) -> None:
    """Adds ``layer create`` (under ``layer``)."""
    group = commands.group("layer", "build layer blobs", "Build layer blobs from directories.")
    p = group.add(
        "create",
        _cmd_layer_create,
        "build a layer from a directory",
        """
        Writes the directory DIR as a layer blob (a deterministic tar, compressed) into the
        store, or to OUT with -o, and prints its descriptor: media type, digest (of the blob),
        size, diff_id (of the uncompressed tar). A layer in the store that no image uses yet is
        removed by the next `layercore gc`; `image append` builds and adds one in one step.
        """,
        [
            "layercore layer create ./rootfs",
            "layercore layer create ./app --compression zstd --source-date-epoch 0",
            "layercore layer create ./app -o app.tar.gz --json",
        ],
        json=True,
    )
    p.add_argument("dir", metavar="DIR", help="the directory to pack")
    add_build_options(p)
    p.add_argument(
        "--owner",
        choices=("root", "keep"),
        default="root",
        help="root: every entry 0:0 (default); keep: the files' own uid/gid and names",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write the blob here, not to the store")


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--compression``, ``--level`` and ``--source-date-epoch`` to a command that writes
    a layer; ``layer_options`` reads them."""
    parser.add_argument(
        "--compression",
        choices=sorted(_COMPRESSIONS),
        default="gzip",
        help="layer compression (default: gzip; none writes a plain tar)",
    )
    parser.add_argument(
        "--level", type=int, metavar="N", help="compression level (default: 1 gzip, 3 zstd)"
    )
    parser.add_argument(
        "--source-date-epoch",
        type=int,
        metavar="N",
        help="clamp file mtimes to this Unix time, for reproducible layers "
        "(default: $SOURCE_DATE_EPOCH when set)",
    )


def layer_options(args: argparse.Namespace) -> dict[str, Any]:
    """How the layer is written: compression, level, and the mtime clamp."""
    return {
        "compression": _COMPRESSIONS[args.compression],
        "level": args.level,
        "source_date_epoch": _source_date_epoch(args),
    }


def build_options(args: argparse.Namespace) -> dict[str, Any]:
    """``layer_options`` and ``--owner``: how a layer is built from a directory."""
    return {**layer_options(args), "owner": args.owner}


def _source_date_epoch(args: argparse.Namespace) -> int | None:
    """``--source-date-epoch``, else ``$SOURCE_DATE_EPOCH`` (the reproducible-builds
    convention), else None."""
    if args.source_date_epoch is not None:
        return int(args.source_date_epoch)
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH must be a Unix time, not {value!r}") from None


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise SourceNotFoundError("no such directory", path)
    if not path.is_dir():
        raise SourceNotFoundError("not a directory", path)


def _cmd_layer_create(args: argparse.Namespace, session: Session) -> int:
    src = Path(args.dir)
    _check_dir(src)
    with session.progress(f"building a layer from {src}"):
        if args.output is not None:
            layer = Layer.from_dir(src, args.output, **build_options(args))
        else:
            layer = session.store.build_layer(src, **build_options(args))
    if session.json:
        session.emit_json(layer_json(layer))
        return 0
    table = borderless_table("FIELD", "VALUE")
    table.show_header = False
    for key, value in layer_json(layer).items():
        shown = human_size(value) if key in ("size", "uncompressed_size") else value
        table.add_row(key, "-" if shown is None else str(shown))
    session.print_table(table)
    return 0
