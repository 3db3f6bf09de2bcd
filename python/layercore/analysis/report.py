"""A self-contained HTML report of an image's waste analysis (``layercore report``).

One file a person can open anywhere: inline CSS, inline SVG (a stacked bar per layer, a
squarified treemap of the final filesystem) and one small inline script; a Content Security
Policy forbids every load, so the page cannot reach the network even by mistake. Every figure
it shows carries its exact value in a ``data-*`` attribute, and the whole ``Analysis`` is
embedded as ``<script type="application/json" id="analysis">``, so a program (the browser test)
can compare what is shown with what was computed. Layouts are computed here, in Python; the
script only links the tables to the treemap on click.

It may import ``layercore.image`` and ``layercore.durable`` (``Analysis`` is only a type here)
and the standard library.
"""

from __future__ import annotations

import base64
import heapq
import html
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from layercore.durable import write_atomic
from layercore.image import sha256_digest
from layercore.units import human_size

if TYPE_CHECKING:
    from layercore.analysis.waste import Analysis
    from layercore.image import Image

__all__ = ["MAX_TREEMAP_RECTS", "render_report", "squarify", "write_report"]

StrPath = str | os.PathLike[str]

#: At most this many rectangles in the treemap (files and directories shown, plus one "other"
#: per directory that holds the rest); keeps the page to a few hundred kilobytes at most.
MAX_TREEMAP_RECTS = 300

_TREEMAP_WIDTH = 1120.0
_TREEMAP_HEIGHT = 640.0
#: A directory smaller than this share of the treemap is one rectangle, not opened.
_MIN_OPEN_SHARE = 0.002
#: A path smaller than this share goes into its directory's "other" rectangle.
_MIN_RECT_SHARE = 0.0002
_DIR_HEADER = 14.0
_DIR_PAD = 2.0

_BAR_WIDTH = 600.0
_BAR_ROW = 26.0
_BAR_LABEL = 280.0

#: Treemap colours by the layer that provides a file (cycled); base layers are drawn in greys.
_LAYER_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#ff9da7",
    "#9c755f",
    "#e15759",
    "#8cd17d",
)
_BASE_COLOURS = ("#8c8c8c", "#a8a8a8", "#767676", "#bdbdbd")
_OTHER_COLOUR = "#d9d9d9"
#: The layer bars' segments: a layer's visible bytes (a base layer's in grey), its wasted bytes.
_SEGMENT_COLOURS = {"visible": "#4e79a7", "wasted": "#e15759", "base": "#a8a8a8"}

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;
max-width:1180px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
.sub{color:#666;margin:0 0 12px;word-break:break-all}
dl.totals{display:flex;flex-wrap:wrap;gap:8px 28px;margin:12px 0}
dl.totals div{min-width:120px}dl.totals dt{color:#666;font-size:12px}
dl.totals dd{margin:0;font-size:20px;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600;font-size:12px}
td.n,th.n{text-align:right;white-space:nowrap}
td.cmd{max-width:420px;word-break:break-all}td.when{white-space:nowrap}
tr.empty td{color:#888}tr.sel td{background:#fff6d6}
tr[data-layer]{cursor:pointer}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
.legend span{margin-right:16px}
svg text{font:11px system-ui,sans-serif;fill:#222}
svg .lbl{fill:#fff;pointer-events:none}
svg rect.dim{opacity:.15}
.note{color:#666;font-size:12px}
"""

#: Clicking a layer's row or bar highlights what it provides in the treemap; the body's
#: ``data-ready`` says the script ran (the browser test reads it from the DOM).
_SCRIPT = """
(function(){
var figures=JSON.parse(document.getElementById("analysis").textContent);
var rects=document.querySelectorAll("#treemap rect[data-layer]");
var rows=document.querySelectorAll("[data-layer].pick");
var current=null;
function pick(layer){
current=(current===layer)?null:layer;
rects.forEach(function(r){r.classList.toggle("dim",current!==null&&r.dataset.layer!==current);});
rows.forEach(function(r){r.classList.toggle("sel",current!==null&&r.dataset.layer===current);});
}
rows.forEach(function(r){r.addEventListener("click",function(){pick(r.dataset.layer);});});
document.body.dataset.ready=String(figures.layers.length);
})();
"""


def write_report(
    image: Image,
    path: StrPath,
    *,
    analysis: Analysis | None = None,
    title: str | None = None,
) -> Path:
    """Writes the HTML report of ``image`` to ``path`` and returns the path.

    ``analysis`` is ``image.analyze()`` when not given (pass one made with ``base=`` to mark
    the base image's layers); ``title`` defaults to the image's digest. The file appears whole
    or not at all (a temp file beside it, synced, renamed over it)."""
    text = render_report(image, analysis=analysis, title=title)
    target = Path(path)
    write_atomic(target, text.encode())
    return target


def render_report(
    image: Image, *, analysis: Analysis | None = None, title: str | None = None
) -> str:
    """The report's HTML, as :func:`write_report` writes it."""
    if analysis is None:
        analysis = image.analyze()
    title = title or image.digest
    script_hash = base64.b64encode(
        bytes.fromhex(sha256_digest(_SCRIPT.encode()).partition(":")[2])
    ).decode()
    # Nothing may load: no fetch, image, font or frame; only this page's style and script.
    policy = (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
    )
    treemap = _treemap(image, analysis)
    parts = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_attr(policy)}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_text(title)} \u2014 layercore report</title>",
        f"<style>{_CSS}</style></head>\n<body>",
        _header(image, analysis, title),
        _layer_bars(analysis),
        _history_table(image, analysis),
        _top_waste_table(analysis),
        treemap,
        '<script type="application/json" id="analysis">',
        _json_for_script(analysis.to_json()),
        "</script>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


# --- sections -------------------------------------------------------------------------------


def _header(image: Image, analysis: Analysis, title: str) -> str:
    totals = [
        ("layer_bytes", "Layer bytes", analysis.layer_bytes),
        ("visible_bytes", "Visible in the image", analysis.visible_bytes),
        ("reclaimable_bytes", "Reclaimable", analysis.reclaimable_bytes),
    ]
    cells = [
        f'<div><dt>{label}</dt><dd data-figure="{key}" data-bytes="{value}" '
        f'title="{_exact(value)}">{human_size(value)}</dd></div>'
        for key, label, value in totals
    ]
    cells.append(
        f'<div><dt>Efficiency</dt><dd data-figure="efficiency" '
        f'data-value="{analysis.efficiency!r}">{_percent(analysis.efficiency)}</dd></div>'
    )
    cells.append(
        f'<div><dt>Layers</dt><dd data-figure="layers" data-value="{len(analysis.layers)}">'
        f"{len(analysis.layers)}</dd></div>"
    )
    if analysis.base_layers:
        base = f"the bottom {analysis.base_layers} layer(s) are the base image's"
    elif analysis.base_name or analysis.base_digest:
        named = analysis.base_name or analysis.base_digest or ""
        base = f"built from {named} (pass --base to mark its layers)"
    else:
        base = "no base image given"
    return (
        f"<header><h1>{_text(title)}</h1>"
        f'<p class="sub"><span class="mono">{_text(image.digest)}</span><br>'
        f'<span data-figure="base_layers" data-value="{analysis.base_layers}">{_text(base)}'
        "</span></p>"
        f'<dl class="totals">{"".join(cells)}</dl></header>'
    )


def _layer_bars(analysis: Analysis) -> str:
    """One horizontal bar per layer, bottom layer first, its length the layer's bytes: the part
    still visible (grey for a base layer's), then the part hidden by later layers."""
    widest = max((layer.added_bytes for layer in analysis.layers), default=0) or 1
    rows = []
    height = _BAR_ROW * len(analysis.layers) + 4
    for row, layer in enumerate(analysis.layers):
        y = row * _BAR_ROW + 2
        label = f"#{layer.index} {layer.created_by or _short(layer.digest)}"
        kept = "base" if layer.base else "visible"
        x = _BAR_LABEL
        segments = []
        for kind, value in ((kept, layer.visible_bytes), ("wasted", layer.wasted_bytes)):
            width = _BAR_WIDTH * value / widest
            segments.append(
                f'<rect class="seg {kind}" data-kind="{kind}" data-bytes="{value}" '
                f'x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{_BAR_ROW - 8:.0f}" '
                f'fill="{_SEGMENT_COLOURS[kind]}"><title>{_text(kind)}: {_exact(value)}</title>'
                "</rect>"
            )
            x += width
        wasted = f" ({human_size(layer.wasted_bytes)} wasted)" if layer.wasted_bytes else ""
        rows.append(
            f'<g class="bar pick" data-layer="{layer.index}" '
            f'data-added-bytes="{layer.added_bytes}">'
            f'<text x="0" y="{y + 13:.1f}">{_text(_clip(label, 46))}<title>{_text(label)}</title>'
            f"</text>{''.join(segments)}"
            f'<text x="{x + 6:.1f}" y="{y + 13:.1f}">{human_size(layer.added_bytes)}'
            f"{wasted}</text></g>"
        )
    legend = "".join(
        f'<span><i class="swatch" style="background:{colour}"></i>{name}</span>'
        for name, colour in (
            ("visible in the final image", _SEGMENT_COLOURS["visible"]),
            ("hidden by a later layer (wasted)", _SEGMENT_COLOURS["wasted"]),
            ("base image", _SEGMENT_COLOURS["base"]),
        )
    )
    return (
        '<section id="layers"><h2>Layers</h2>'
        f'<p class="legend">{legend}</p>'
        f'<svg width="{_BAR_LABEL + _BAR_WIDTH + 240:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="bytes per layer">{"".join(rows)}</svg></section>'
    )


def _history_table(image: Image, analysis: Analysis) -> str:
    """The config's history, empty-layer steps included; each layer's row carries its figures
    and its counts of added, modified and deleted paths."""
    by_index = {layer.index: layer for layer in analysis.layers}
    head = (
        "<tr><th>#</th><th>Created by</th><th>Created</th><th>Digest</th>"
        '<th class="n">Compressed</th><th class="n">Layer bytes</th>'
        '<th class="n">Visible</th><th class="n">Wasted</th>'
        '<th class="n">Added</th><th class="n">Modified</th><th class="n">Deleted</th></tr>'
    )
    rows = []
    index = 0
    for layer_obj, entry in image.layer_history():
        created_by = _text(entry.created_by or "")
        created = _text(entry.created or "")
        if layer_obj is None:
            rows.append(
                f'<tr class="empty"><td></td><td class="cmd mono">{created_by}</td>'
                f'<td class="when">{created}</td><td colspan="8">no layer</td></tr>'
            )
            continue
        layer = by_index[index]
        index += 1
        colour = _layer_colour(layer.index, layer.base)
        wasted_title = "; ".join(
            [f"{cause}: {_exact(value)}" for cause, value in layer.hidden.items() if value]
            + [f"hidden by #{by}: {_exact(value)}" for by, value in sorted(layer.hidden_by.items())]
        )
        attribute_only = (
            f"{_exact(layer.attribute_only_bytes)} only changed attributes of lower files"
            if layer.attribute_only_bytes
            else ""
        )
        rows.append(
            f'<tr class="pick" data-layer="{layer.index}"><td class="n">'
            f'<i class="swatch" style="background:{colour}"></i>{layer.index}'
            f"{' <small>base</small>' if layer.base else ''}</td>"
            f'<td class="cmd mono">{created_by}</td><td class="when">{created}</td>'
            f'<td class="mono" title="{_attr(layer.digest)}">{_short(layer.digest)}</td>'
            f"{_bytes_cell('compressed_size', layer.compressed_size)}"
            f"{_bytes_cell('added_bytes', layer.added_bytes, attribute_only)}"
            f"{_bytes_cell('visible_bytes', layer.visible_bytes)}"
            f"{_bytes_cell('wasted_bytes', layer.wasted_bytes, wasted_title)}"
            f"{_count_cell('added', layer.added)}"
            f"{_count_cell('modified', layer.modified)}"
            f"{_count_cell('deleted', layer.deleted)}</tr>"
        )
    return (
        '<section id="history"><h2>History</h2>'
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Added, modified and deleted count the paths each layer changed. '
        "Wasted bytes are the layer's bytes that a later layer deleted or replaced "
        "(the cell's tooltip says how and by which layer).</p></section>"
    )


def _top_waste_table(analysis: Analysis) -> str:
    head = (
        '<tr><th>Path</th><th class="n">Bytes</th><th class="n">Layer</th>'
        '<th>Cause</th><th class="n">Hidden by</th><th>History</th></tr>'
    )
    rows = []
    for rank, item in enumerate(analysis.top):
        history = ", ".join(f"#{layer} {change}" for layer, change in item.history)
        rows.append(
            f'<tr data-rank="{rank}" data-path="{_attr(item.path)}">'
            f'<td class="mono">{_text(item.path)}</td>'
            f"{_bytes_cell('bytes', item.bytes)}"
            f'<td class="n" data-field="layer" data-value="{item.layer}">#{item.layer}</td>'
            f'<td data-field="cause">{_text(item.cause.replace("_", " "))}</td>'
            f'<td class="n" data-field="hidden_by" data-value="{item.hidden_by}">'
            f'#{item.hidden_by}</td><td class="mono">{_text(history)}</td></tr>'
        )
    body = "".join(rows) or '<tr><td colspan="6">nothing is wasted</td></tr>'
    return (
        '<section id="top-waste"><h2>Paths that waste most</h2>'
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table></section>"
    )


# --- the treemap ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Node:
    """A path of the final filesystem, directories holding their descendants' bytes."""

    name: str
    path: str
    size: int = 0
    layer: int | None = None
    children: dict[str, _Node] | None = None
    by_layer: Counter[int] = field(default_factory=Counter)
    #: What the treemap shows of a directory it opens: the children drawn, the bytes and
    #: number of paths lumped into "other".
    shown: list[_Node] | None = None
    other_bytes: int = 0
    other_paths: int = 0


def _file_tree(image: Image) -> _Node:
    root = _Node("/", "", children={})
    dirs: dict[str, _Node] = {"": root}
    for entry in image.stack.walk():
        if entry.kind == "dir":
            _directory(dirs, entry.path)
            continue
        parent_path, _, name = entry.path.rpartition("/")
        parent = _directory(dirs, parent_path)
        # A hardlink's body is its first name's; symlinks and devices hold no bytes.
        size = entry.size if entry.kind == "file" else 0
        assert parent.children is not None
        parent.children[name] = _Node(name, entry.path, size, entry.layer)
        if size:
            for ancestor in _ancestors(dirs, parent_path):
                ancestor.size += size
                if entry.layer is not None:
                    ancestor.by_layer[entry.layer] += size
    return root


def _directory(dirs: dict[str, _Node], path: str) -> _Node:
    node = dirs.get(path)
    if node is None:
        parent_path, _, name = path.rpartition("/")
        parent = _directory(dirs, parent_path)
        node = _Node(name, path, children={})
        assert parent.children is not None
        parent.children[name] = node
        dirs[path] = node
    return node


def _ancestors(dirs: dict[str, _Node], path: str) -> Iterator[_Node]:
    while True:
        yield dirs[path]
        if not path:
            return
        path = path.rpartition("/")[0]


def _plan(root: _Node, limit: int) -> int:
    """Chooses what the treemap opens: the largest directories first, each showing its
    largest children (the rest as one "other"), until ``limit`` rectangles are used (an opened
    directory keeps its own as a frame). Returns the rectangles used."""
    total = root.size or 1
    used = 0
    queue: list[tuple[int, int, _Node]] = [(-root.size, 0, root)]
    order = 1
    while queue:
        _, _, node = heapq.heappop(queue)
        assert node.children is not None
        children = sorted(
            (child for child in node.children.values() if child.size),
            key=lambda child: (-child.size, child.name),
        )
        shown = [child for child in children if child.size / total >= _MIN_RECT_SHARE]
        room = limit - used
        if len(shown) + (len(shown) < len(children)) > room:
            if room < 2:
                continue
            shown = shown[: room - 1]
        if not shown and node is not root:
            continue
        node.shown = shown
        node.other_paths = len(children) - len(shown)
        node.other_bytes = sum(child.size for child in children[len(shown) :])
        used += len(shown) + (1 if node.other_paths else 0)
        for child in shown:
            if child.children is not None and child.size / total >= _MIN_OPEN_SHARE:
                heapq.heappush(queue, (-child.size, order, child))
                order += 1
    return used


def _treemap(image: Image, analysis: Analysis) -> str:
    root = _file_tree(image)
    _plan(root, MAX_TREEMAP_RECTS)
    bases = {layer.index for layer in analysis.layers if layer.base}
    out: list[str] = []
    if root.size:
        _draw(root, 0.0, 0.0, _TREEMAP_WIDTH, _TREEMAP_HEIGHT, bases, out, top=True)
    else:
        out.append('<text x="8" y="20">the final filesystem holds no file bytes</text>')
    legend = "".join(
        f'<span class="pick" data-layer="{layer.index}"><i class="swatch" '
        f'style="background:{_layer_colour(layer.index, layer.base)}"></i>#{layer.index}</span>'
        for layer in analysis.layers
    )
    return (
        f'<section id="treemap" data-bytes="{root.size}"><h2>Final filesystem by size</h2>'
        f'<p class="legend">{legend} <span class="note">colour: the layer that provides the '
        "file (a directory: the layer providing most of its bytes); click a layer to "
        "highlight it</span></p>"
        f'<svg width="{_TREEMAP_WIDTH:.0f}" height="{_TREEMAP_HEIGHT:.0f}" role="img" '
        f'aria-label="treemap of the final filesystem">{"".join(out)}</svg></section>'
    )


def _draw(
    node: _Node,
    x: float,
    y: float,
    w: float,
    h: float,
    bases: set[int],
    out: list[str],
    *,
    top: bool = False,
    prefix: str = "",
) -> None:
    """Draws ``node`` in the rectangle: a leaf, or a directory's frame (with its name when
    there is room) around its contents. A directory holding just one thing gives its name to
    that thing's label instead of a frame (``doc/pkg/README``)."""
    if node.shown is None:
        _leaf(node, x, y, w, h, bases, out, prefix)
        return
    if not top and len(node.shown) == 1 and not node.other_bytes:
        _draw(node.shown[0], x, y, w, h, bases, out, prefix=f"{prefix}{node.name}/")
        return
    if not top:
        out.append(
            f'<rect class="dir" data-dir="{_attr(node.path)}" data-bytes="{node.size}" '
            f'x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#5f5f5f">'
            f"<title>{_text(node.path)}/ {_exact(node.size)}</title></rect>"
        )
        header = _DIR_HEADER if h > 3 * _DIR_HEADER and w > 40 else 0.0
        if header:
            out.append(
                f'<text class="lbl" x="{x + 3:.1f}" y="{y + 11:.1f}">'
                f"{_text(_fit(prefix + node.name + '/', w - 6))}</text>"
            )
        x, y, w, h = (
            x + _DIR_PAD,
            y + _DIR_PAD + header,
            w - 2 * _DIR_PAD,
            h - 2 * _DIR_PAD - header,
        )
        if w <= 0 or h <= 0:
            return
    items: list[_Node | None] = [*node.shown]
    sizes = [float(child.size) for child in node.shown]
    if node.other_bytes:
        items.append(None)
        sizes.append(float(node.other_bytes))
    for item, (rx, ry, rw, rh) in zip(items, squarify(sizes, x, y, w, h), strict=True):
        if item is None:
            out.append(
                f'<rect class="other" data-other="{_attr(node.path)}" '
                f'data-bytes="{node.other_bytes}" data-paths="{node.other_paths}" '
                f'x="{rx:.1f}" y="{ry:.1f}" width="{rw:.1f}" height="{rh:.1f}" '
                f'fill="{_OTHER_COLOUR}" stroke="#fff" stroke-width="0.5"><title>'
                f"{_text(node.path or '/')}: {node.other_paths} smaller entries, "
                f"{_exact(node.other_bytes)}</title></rect>"
            )
            _label(f"{node.other_paths} more", rx, ry, rw, rh, out, dark=True)
        else:
            _draw(item, rx, ry, rw, rh, bases, out)


def _leaf(
    node: _Node,
    x: float,
    y: float,
    w: float,
    h: float,
    bases: set[int],
    out: list[str],
    prefix: str,
) -> None:
    layer = node.layer if node.children is None else _dominant(node.by_layer)
    what = "file" if node.children is None else "dir"
    name = node.name if node.children is None else node.name + "/"
    colour = _OTHER_COLOUR if layer is None else _layer_colour(layer, layer in bases)
    out.append(
        f'<rect class="{what}" data-path="{_attr(node.path)}" data-bytes="{node.size}" '
        f'data-layer="{"" if layer is None else layer}" '
        f'x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}" '
        f'stroke="#fff" stroke-width="0.5"><title>{_text(node.path)}'
        f"{'/' if what == 'dir' else ''} {_exact(node.size)}"
        f"{'' if layer is None else f' (layer #{layer})'}</title></rect>"
    )
    _label(prefix + name, x, y, w, h, out)


def _label(
    text: str, x: float, y: float, w: float, h: float, out: list[str], *, dark: bool = False
) -> None:
    if w < 36 or h < 14:
        return
    style = "" if dark else ' class="lbl"'
    out.append(f'<text{style} x="{x + 3:.1f}" y="{y + 11:.1f}">{_text(_fit(text, w - 6))}</text>')


def _dominant(by_layer: Counter[int]) -> int | None:
    return by_layer.most_common(1)[0][0] if by_layer else None


def squarify(
    sizes: Sequence[float], x: float, y: float, w: float, h: float
) -> list[tuple[float, float, float, float]]:
    """Bruls, Huizing and van Wijk's squarified layout of ``sizes`` (largest first) in the
    rectangle: rows are laid along the shorter side while adding a rectangle does not make
    the row's worst aspect ratio worse."""
    total = sum(sizes)
    if total <= 0:
        return [(x, y, 0.0, 0.0) for _ in sizes]
    scale = w * h / total
    areas = [size * scale for size in sizes]
    rects: list[tuple[float, float, float, float]] = []
    start = 0
    while start < len(areas):
        side = min(w, h)
        end = start + 1
        while end < len(areas) and _worst(areas[start : end + 1], side) <= _worst(
            areas[start:end], side
        ):
            end += 1
        row = areas[start:end]
        row_area = sum(row)
        if w >= h:  # a column at the left
            thickness = row_area / h if h else 0.0
            cy = y
            for area in row:
                length = area / thickness if thickness else 0.0
                rects.append((x, cy, thickness, length))
                cy += length
            x, w = x + thickness, max(w - thickness, 0.0)
        else:  # a row at the top
            thickness = row_area / w if w else 0.0
            cx = x
            for area in row:
                length = area / thickness if thickness else 0.0
                rects.append((cx, y, length, thickness))
                cx += length
            y, h = y + thickness, max(h - thickness, 0.0)
        start = end
    return rects


def _worst(row: Sequence[float], side: float) -> float:
    total = sum(row)
    if total <= 0 or side <= 0:
        return float("inf")
    s2, total2 = side * side, total * total
    return max(max(s2 * area / total2, total2 / (s2 * area)) for area in row)


# --- formatting -------------------------------------------------------------------------------


def _layer_colour(index: int, base: bool) -> str:
    palette = _BASE_COLOURS if base else _LAYER_COLOURS
    return palette[index % len(palette)]


def _exact(size: int) -> str:
    return f"{size:,} bytes"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _bytes_cell(name: str, size: int, title: str = "") -> str:
    tip = f"{_exact(size)}; {title}" if title else _exact(size)
    return (
        f'<td class="n" data-field="{name}" data-bytes="{size}" title="{_attr(tip)}">'
        f"{human_size(size)}</td>"
    )


def _count_cell(name: str, count: int) -> str:
    return f'<td class="n" data-field="{name}" data-value="{count}">{count:,}</td>'


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _fit(text: str, width: float) -> str:
    """``text`` cut to what an 11px label shows in ``width`` pixels (about 6.8px a character)."""
    return _clip(text, max(int(width / 6.8), 1))


def _text(value: str) -> str:
    return html.escape(value, quote=False)


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _json_for_script(obj: object) -> str:
    """JSON that cannot end its ``<script>`` element early or open a comment in it."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
