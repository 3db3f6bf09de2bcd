"""``layercore flatten`` and ``squash``: rewrite an image's layers into fewer that show the same
merged view, and save the result as a new image.

It may import ``cli.session``, ``cli.parser``, ``cli.layer`` for the options of the layer it
writes, and ``cli.analysis`` for ``squash --dry-run``.
"""

from __future__ import annotations

import argparse
from typing import Any

from layercore.cli.layer import add_build_options, layer_options
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError, out_tag, report_saved

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Adds ``flatten`` and ``squash``."""
    p = commands.add(
        "flatten",
        _cmd_flatten,
        "merge all of an image's layers into one",
        """
        Writes the image's merged view as a single layer and saves the image under IMAGE (if
        it is a tag) or NEW. The history keeps every old entry (as empty layers) and adds one.
        """,
        ["layercore flatten app:1 --tag app:1-flat"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of IMAGE")
    p.add_argument("--created-by", metavar="S", help="default: layercore flatten")
    add_build_options(p)
    p = commands.add(
        "squash",
        _cmd_squash,
        "merge a range of an image's layers into one",
        """
        Merges layers START..END (END exclusive, bottom = 0) into one layer that shows
        exactly what they showed, keeps the others, and saves the image under IMAGE (if it is
        a tag) or NEW. With --dry-run nothing is written: it prints the exact uncompressed
        bytes the squash would remove and the paths they are (saved_bytes in the JSON).
        """,
        ["layercore squash app:1 1 4 --tag app:1-squashed", "layercore squash app:1 1 4 --dry-run"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("start", metavar="START", type=int)
    p.add_argument("end", metavar="END", type=int)
    p.add_argument("--tag", metavar="NEW", help="save under NEW instead of IMAGE")
    p.add_argument("--created-by", metavar="S", help="default: layercore squash START..END")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing: show the bytes the squash would remove and which paths they are",
    )
    add_build_options(p)


def _rewrite_options(args: argparse.Namespace) -> dict[str, Any]:
    return {**layer_options(args), "created_by": args.created_by}


def _cmd_flatten(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    if not image.layers:
        raise UsageError(f"flatten: image {args.image} has no layers")
    tag = out_tag(session, args.image, args.tag)
    with session.progress(f"flattening {len(image.layers)} layers of {args.image}"):
        flat = session.store.flatten(image, tag, **_rewrite_options(args))
    return report_saved(session, tag, flat)


def _cmd_squash(args: argparse.Namespace, session: Session) -> int:
    image = session.load(args.image)
    count = len(image.layers)
    if not 0 <= args.start < args.end <= count:
        raise UsageError(
            f"squash: START..END must satisfy 0 <= START < END <= {count} "
            f"(image {args.image} has {count} layers), not {args.start}..{args.end}"
        )
    if args.dry_run:
        from layercore.cli.analysis import print_squash_savings

        savings = image.squash_savings(args.start, args.end)
        return print_squash_savings(session, args.image, savings)
    tag = out_tag(session, args.image, args.tag)
    with session.progress(f"squashing layers {args.start}..{args.end} of {args.image}"):
        squashed = session.store.squash(image, args.start, args.end, tag, **_rewrite_options(args))
    return report_saved(session, tag, squashed)
