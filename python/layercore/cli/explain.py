"""``layercore explain A B``: why two images, or two layers, have different digests.

A and B are images of the store (a tag or a digest), layers of them (``IMAGE@N``) or layer
blob files. The comparison is ``layercore.analysis.explain``; this module only prints it: the
verdict first, then the config fields and layers that differ (images) or the entries, header
layout and compression that differ (layers). ``--json`` prints ``Explanation.to_json()``.

It may import ``layercore.analysis.explain``, ``cli.session``, ``cli.output`` and ``cli.parser``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layercore.cli.output import short_digest
from layercore.cli.parser import Commands
from layercore.cli.session import Session

if TYPE_CHECKING:
    from layercore.analysis.explain import Difference, Explanation

__all__ = ["register"]

#: Lines a section shows before "... N more" (all of them with --all, every one in --json).
_SHOWN = 20


def register(commands: Commands) -> None:
    """Adds ``explain``."""
    p = commands.add(
        "explain",
        _cmd_explain,
        "explain why two images' or layers' digests differ",
        """
        Compares two images, or two layers, without extracting anything, and says why their
        digests differ. A and B are images (a tag or a digest), layers of images (IMAGE@N:
        layer N, 0 the bottom, -1 the top) or layer blob files (tar, gzip, zstd).

        Images: the config fields that differ (created, history, env, labels, ...), then
        each pair of layers whose digests differ, explained. Layers: the paths only one
        has; for each path both have, the fields that differ (content, mode, uid/gid,
        uname/gname, mtime, xattrs, link target, header layout); the entry order; the tar
        format (PAX, GNU, ustar; PAX records) and end-of-archive padding; the compression
        (gzip member headers and layout, zstd frame headers). The first line is the
        verdict, e.g. "only mtimes differ: set SOURCE_DATE_EPOCH".
        """,
        [
            "layercore explain app:1 app:2",
            "layercore explain app:1@-1 app:2@-1 --json",
            "layercore explain layer-a.tar.gz layer-b.tar.gz",
        ],
        json=True,
    )
    p.add_argument("a", metavar="A", help="IMAGE, IMAGE@N or a layer blob file")
    p.add_argument("b", metavar="B", help="IMAGE, IMAGE@N or a layer blob file")
    p.add_argument("--all", action="store_true", help="list every path (default: the first 20)")


def _cmd_explain(args: argparse.Namespace, session: Session) -> int:
    from layercore.analysis.explain import explain

    # Two blob files need no store: do not create one for them.
    files = os.path.isfile(args.a) and os.path.isfile(args.b)
    with session.progress("comparing"):
        explanation = explain(args.a, args.b, store=None if files else session.store)
    if session.json:
        session.emit_json(explanation.to_json())
        return 0
    for line in _lines(explanation, limit=None if args.all else _SHOWN):
        session.print(line)
    return 0


def _lines(
    x: Explanation, *, limit: int | None, indent: str = "", nested: bool = False
) -> list[str]:
    """The explanation as text: the verdict, the two digests (not for a layer of an image,
    whose line already names them), then each section that has something."""
    from layercore.analysis.explain import describe_value

    out = [f"{indent}verdict: {x.verdict}"]
    if not nested:
        out += [f"{indent}a: {x.a}", f"{indent}b: {x.b}"]
    if x.identical:
        return out
    if x.diff_ids is not None and x.kind == "layers" and x.diff_ids[0] != x.diff_ids[1]:
        a, b = (short_digest(d) for d in x.diff_ids)
        out.append(f"{indent}diff_id: {a} -> {b}")
    if x.config:
        out.append(f"{indent}config:")
        out += _capped([f"{indent}  {_change(d, describe_value)}" for d in x.config], limit, indent)
    for layer in x.layers:
        out.append(
            f"{indent}layer {layer.index}: {short_digest(layer.a)} -> {short_digest(layer.b)}"
        )
        if layer.explanation is not None:
            out += _lines(layer.explanation, limit=limit, indent=indent + "  ", nested=True)
    for title, paths in (("only in a", x.only_in_a), ("only in b", x.only_in_b)):
        if paths:
            out.append(f"{indent}{title} ({len(paths)}):")
            out += _capped([f"{indent}  /{p}" for p in paths], limit, indent)
    if x.changed:
        out.append(f"{indent}changed ({len(x.changed)}):")
        rows = [
            f"{indent}  /{c.path}: " + "; ".join(_change(d, describe_value) for d in c.fields)
            for c in x.changed
        ]
        out += _capped(rows, limit, indent)
    if x.order_differs:
        out.append(f"{indent}order: the paths both have come in a different order")
    for title, differences in (("header", x.header), ("compression", x.compression)):
        if differences:
            out.append(f"{indent}{title}:")
            out += [f"{indent}  {_change(d, describe_value)}" for d in differences]
    return out


def _change(d: Difference, show: Callable[[str, Any], str]) -> str:
    return f"{d.field}: {show(d.field, d.a)} -> {show(d.field, d.b)}"


def _capped(rows: list[str], limit: int | None, indent: str) -> list[str]:
    if limit is None or len(rows) <= limit:
        return rows
    return [*rows[:limit], f"{indent}  ... {len(rows) - limit} more (--all, or --json)"]
