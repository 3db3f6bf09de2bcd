"""``layercore waste``: where an image's bytes go, layer by layer, as a table and a bar chart
(``--json`` for programs); and the ``--dry-run`` of ``squash``, what a squash would save.

It may import the image model, ``layercore.analysis``, the errors, ``cli.session``,
``cli.output`` and ``cli.parser``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from layercore.cli.output import borderless_table, human_size, plural, short_digest
from layercore.cli.parser import Commands
from layercore.cli.session import Session, UsageError
from layercore.errors import ImageNotFoundError
from layercore.image import Image

if TYPE_CHECKING:
    from layercore.analysis.waste import Analysis, Cause, SquashSavings

__all__ = ["print_squash_savings", "register"]

#: Width of the bar chart's bars, in characters.
_BAR = 40
_CAUSE_COLUMNS: tuple[tuple[Cause, str], ...] = (
    ("deleted", "DELETED"),
    ("overwritten", "OVERWRITTEN"),
    ("opaque", "OPAQUE"),
    ("replaced_by_file", "REPLACED"),
)


def register(commands: Commands) -> None:
    """Adds ``waste``."""
    p = commands.add(
        "waste",
        _cmd_waste,
        "show the bytes each layer adds that the final image does not show",
        """
        Reads every layer's entries (nothing is extracted) and shows, per layer, the bytes it
        adds, those still visible in the final image, and those hidden by a later layer:
        deleted (a whiteout), overwritten (a later copy of the path), opaque (an opaque
        directory above), replaced (a directory above turned into a file); the bytes of files
        re-added with only new attributes (chmod/chown layers); and whether the layer comes
        from the base image (--base, or the manifest's org.opencontainers.image.base.digest
        annotation when that image is in the store). Then the totals and the paths that waste
        most, with their history.

        Bytes are regular-file content bytes, uncompressed (hardlinks count once);
        reclaimable = layer bytes - visible bytes.
        """,
        ["layercore waste app:1", "layercore waste app:1 --base debian:12 --top 20 --json"],
        json=True,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a digest")
    p.add_argument("--base", metavar="IMAGE", help="the image IMAGE was built from")
    p.add_argument(
        "--top",
        metavar="N",
        type=int,
        default=10,
        help="list the N paths that waste most (default 10; 0: none)",
    )


def _base_of(session: Session, image: Image, ref: str | None) -> tuple[Image | None, str | None]:
    """The base image (``--base``, else the one the manifest's annotation names, if the store
    has it) and a note for people when the annotation names an image the store lacks."""
    if ref is not None:
        return session.load(ref), None
    from layercore.analysis.waste import BASE_DIGEST_ANNOTATION

    digest = (image.manifest.get("annotations") or {}).get(BASE_DIGEST_ANNOTATION)
    if not isinstance(digest, str):
        return None, None
    try:
        return session.load(digest), None
    except ImageNotFoundError:
        return None, f"base image {digest} is not in the store: its layers are not marked"


def _cmd_waste(args: argparse.Namespace, session: Session) -> int:
    if args.top < 0:
        raise UsageError(f"waste: --top must be 0 or more, not {args.top}")
    image = session.load(args.image)
    base, note = _base_of(session, image, args.base)
    with session.progress(f"analysing {plural(len(image.layers), 'layer')} of {args.image}"):
        analysis = image.analyze(base, top=args.top)
    if session.json:
        session.emit_json(analysis.to_json())
        return 0
    _print_layers(session, analysis)
    session.print()
    _print_chart(session, analysis)
    session.print()
    session.print(
        f"layer bytes {human_size(analysis.layer_bytes)}, visible "
        f"{human_size(analysis.visible_bytes)}, reclaimable "
        f"{human_size(analysis.reclaimable_bytes)}, efficiency {analysis.efficiency:.1%}"
    )
    if note is not None:
        session.print(note)
    if analysis.top:
        session.print()
        _print_top(session, analysis)
    return 0


def _print_layers(session: Session, analysis: Analysis) -> None:
    figures = ("ENTRIES", "ADDED", "VISIBLE", "WASTED", *(t for _, t in _CAUSE_COLUMNS))
    figures += ("ATTR-ONLY", "COMPRESSED")
    table = borderless_table("LAYER", "DIGEST", *figures, "CREATED BY", right=("LAYER", *figures))
    for x in analysis.layers:
        table.add_row(
            f"{x.index} base" if x.base else str(x.index),
            short_digest(x.digest),
            str(x.entries),
            human_size(x.added_bytes),
            human_size(x.visible_bytes),
            human_size(x.wasted_bytes),
            *(_size_or_dash(x.hidden[cause]) for cause, _ in _CAUSE_COLUMNS),
            _size_or_dash(x.attribute_only_bytes),
            human_size(x.compressed_size),
            _one_line(x.created_by or ""),
        )
    session.print_table(table)


def _print_chart(session: Session, analysis: Analysis) -> None:
    """One bar per layer, scaled to the largest: visible bytes solid, wasted bytes shaded."""
    largest = max((x.added_bytes for x in analysis.layers), default=0)
    lines: list[tuple[str, str, str]] = []
    for x in analysis.layers:
        # Any bytes at all get at least one character.
        visible = _width(x.visible_bytes, largest)
        wasted = _width(x.wasted_bytes, largest)
        label = f"{x.index:>3} {'base' if x.base else '    '} "
        tail = f" {human_size(x.added_bytes)}" + (
            f" ({human_size(x.wasted_bytes)} wasted)" if x.wasted_bytes else ""
        )
        lines.append((label, "█" * visible + "░" * wasted, tail))
    if session.console.is_terminal:
        from rich.text import Text

        for label, bar, tail in lines:
            text = Text(label)
            solid = bar.count("█")
            text.append(bar[:solid], style="green")
            text.append(bar[solid:], style="red")
            text.append(tail)
            session.console.print(text)
    else:
        for label, bar, tail in lines:
            session.print(f"{label}{bar.ljust(_BAR)}{tail}")
    session.print(f"{'':9}█ visible  ░ wasted")


def _print_top(session: Session, analysis: Analysis) -> None:
    table = borderless_table("PATH", "WASTED", "LAYER", "CAUSE", "BY", "HISTORY", right=("WASTED",))
    for p in analysis.top:
        table.add_row(
            "/" + p.path,
            human_size(p.bytes),
            str(p.layer),
            p.cause,
            str(p.hidden_by),
            ", ".join(f"{i} {change}" for i, change in p.history),
        )
    session.print_table(table)


def print_squash_savings(session: Session, ref: str, savings: SquashSavings) -> int:
    """``squash --dry-run``: the saving and the copies that make it (``--json``: its JSON)."""
    if session.json:
        session.emit_json(savings.to_json())
        return 0
    session.print(
        f"squashing layers {savings.start}..{savings.end} of {ref} would remove "
        f"{human_size(savings.saved_bytes)} ({savings.saved_bytes} bytes) of "
        f"{human_size(savings.layer_bytes)}, uncompressed"
    )
    if savings.paths:
        table = borderless_table("PATH", "BYTES", "LAYER", "HIDDEN BY", right=("BYTES",))
        for c in savings.paths:
            table.add_row("/" + c.path, human_size(c.bytes), str(c.layer), str(c.hidden_by))
        session.print_table(table)
    return 0


def _width(size: int, largest: int) -> int:
    return max(1, round(_BAR * size / largest)) if size else 0


def _size_or_dash(size: int) -> str:
    return human_size(size) if size else "-"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"
