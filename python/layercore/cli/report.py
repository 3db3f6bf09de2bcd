"""``layercore report``: the waste analysis of an image as one self-contained HTML file.

It may import ``layercore.analysis``, ``cli.output``, ``cli.session`` and ``cli.parser``.
"""

from __future__ import annotations

import argparse
import sys

from layercore.cli.output import human_size
from layercore.cli.parser import Commands
from layercore.cli.session import Session

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Adds ``report``."""
    p = commands.add(
        "report",
        _cmd_report,
        "write an HTML report of where an image's bytes go",
        """
        Writes PATH: one self-contained HTML page (inline SVG and styles, no network loads)
        with a stacked bar per layer (bytes still visible, bytes hidden by later layers, base
        layers), the history with each layer's added, modified and deleted paths, the paths
        that waste most, and a treemap of the final filesystem by size. With --base, the
        layers IMAGE shares with BASE count as the base image's.
        """,
        [
            "layercore report app:1 -o report.html",
            "layercore report app:1 -o report.html --base debian:12",
        ],
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("-o", "--output", metavar="PATH", required=True, help="the HTML file to write")
    p.add_argument("--base", metavar="IMAGE", help="the image IMAGE was built from")
    p.add_argument("--title", help="the page's title (default: IMAGE as given)")


def _cmd_report(args: argparse.Namespace, session: Session) -> int:
    from layercore.analysis import write_report

    image = session.load(args.image)
    base = None if args.base is None else session.load(args.base)
    with session.progress(f"analysing {args.image}"):
        analysis = image.analyze(base=base)
        path = write_report(image, args.output, analysis=analysis, title=args.title or args.image)
    print(
        f"{path}: {len(analysis.layers)} layers, {human_size(analysis.layer_bytes)}, "
        f"{human_size(analysis.reclaimable_bytes)} reclaimable",
        file=sys.stdout,
    )
    return 0
