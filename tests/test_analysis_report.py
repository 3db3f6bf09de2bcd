"""The HTML report (``write_report``, ``layercore report``): what it shows equals the
``Analysis``, it loads nothing, and it renders in a real browser.

The browser test runs Debian's headless ``chromium`` (``make debs`` installs it; a missing one
is a failure, not a skip). It keeps its screenshot and the page it loaded as test artifacts:
``test-artifacts/report.png`` and ``test-artifacts/report.html`` at the top of the repository
(ignored by git), overwritten by every run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest

from layercore import Image, Store
from layercore.analysis import Analysis, write_report
from layercore.analysis.report import MAX_TREEMAP_RECTS, render_report, squarify
from layercore.cli import main
from layercore.units import human_size

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
EPOCH = 1_700_000_000
ODD_NAME = "srv/<b>&amp; \"q\" 'x'.txt"

#: The bytes the test image's layers hide, by layer: the tool that layer 1 rebuilds and the log
#: under the directory layer 2 makes opaque (layer 0), the cache that layer 2 deletes (layer 1).
WASTED = {0: 40_000 + 8_000, 1: 120_000, 2: 0}


# --- the page as a program reads it -----------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    ancestors: tuple[int, ...] = ()

    def text_content(self) -> str:
        return "".join(self.text)


class Page(HTMLParser):
    """Every element of a page with its attributes and text (its descendants' text included,
    as the DOM's ``textContent``)."""

    VOID: ClassVar[set[str]] = {"meta", "br", "link", "img", "input", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        element = Element(
            tag,
            values,
            classes=set(values.get("class", "").split()),
            ancestors=tuple(id(e) for e in self._open),
        )
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text.append(data)

    def find(self, tag: str | None = None, **attrs: str) -> Iterator[Element]:
        for element in self.elements:
            if tag is not None and element.tag != tag:
                continue
            if all(element.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()):
                yield element

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = list(self.find(tag, **attrs))
        assert len(found) == 1, (tag, attrs, found)
        return found[0]

    def within(self, parent: Element) -> list[Element]:
        """The elements inside ``parent``."""
        return [e for e in self.elements if id(parent) in e.ancestors]


def check_page_against(page: Page, image: Image, analysis: Analysis) -> None:
    """Every figure the page shows, in its ``data-*`` attribute and in its text, is the
    analysis's; the embedded JSON is ``analysis.to_json()``."""
    for key in ("layer_bytes", "visible_bytes", "reclaimable_bytes"):
        shown = page.one("dd", data_figure=key)
        assert int(shown.attrs["data-bytes"]) == getattr(analysis, key), key
        assert shown.text_content() == human_size(getattr(analysis, key)), key
    efficiency = page.one("dd", data_figure="efficiency")
    assert float(efficiency.attrs["data-value"]) == analysis.efficiency
    assert efficiency.text_content() == f"{analysis.efficiency * 100:.1f}%"
    assert page.one(data_figure="base_layers").attrs["data-value"] == str(analysis.base_layers)

    bars = list(page.find("g", **{"class": "bar pick"}))
    assert [int(b.attrs["data-layer"]) for b in bars] == [x.index for x in analysis.layers]
    for bar, layer in zip(bars, analysis.layers, strict=True):
        segments = {
            e.attrs["data-kind"]: int(e.attrs["data-bytes"])
            for e in page.within(bar)
            if e.tag == "rect"
        }
        kept = "base" if layer.base else "visible"
        assert segments == {kept: layer.visible_bytes, "wasted": layer.wasted_bytes}
        assert int(bar.attrs["data-added-bytes"]) == layer.added_bytes

    rows = [r for r in page.find("tr") if "data-layer" in r.attrs]
    assert [int(r.attrs["data-layer"]) for r in rows] == [x.index for x in analysis.layers]
    for row, layer in zip(rows, analysis.layers, strict=True):
        cells = {e.attrs["data-field"]: e for e in page.within(row) if "data-field" in e.attrs}
        for name in ("compressed_size", "added_bytes", "visible_bytes", "wasted_bytes"):
            assert int(cells[name].attrs["data-bytes"]) == getattr(layer, name), name
            assert cells[name].text_content() == human_size(getattr(layer, name)), name
        for name in ("added", "modified", "deleted"):
            assert int(cells[name].attrs["data-value"]) == getattr(layer, name), name
            assert cells[name].text_content() == f"{getattr(layer, name):,}", name
    history = [e for e in page.find("tr") if {"pick", "empty"} & e.classes]
    assert len(history) == len(image.history)

    top = [r for r in page.find("tr") if "data-rank" in r.attrs]
    assert [r.attrs["data-path"] for r in top] == [t.path for t in analysis.top]
    for row, item in zip(top, analysis.top, strict=True):
        cells = {e.attrs["data-field"]: e for e in page.within(row) if "data-field" in e.attrs}
        assert int(cells["bytes"].attrs["data-bytes"]) == item.bytes
        assert cells["bytes"].text_content() == human_size(item.bytes)
        assert int(cells["layer"].attrs["data-value"]) == item.layer
        assert int(cells["hidden_by"].attrs["data-value"]) == item.hidden_by
        assert cells["cause"].text_content() == item.cause.replace("_", " ")

    # The treemap's rectangles (files, unopened directories, "other") cover the final
    # filesystem's bytes exactly once.
    treemap = page.one("section", id="treemap")
    rects = [e for e in page.within(treemap) if e.tag == "rect"]
    leaves = [e for e in rects if "data-dir" not in e.attrs]  # frames of opened directories
    assert sum(int(e.attrs["data-bytes"]) for e in leaves) == analysis.visible_bytes
    assert int(treemap.attrs["data-bytes"]) == analysis.visible_bytes
    assert len(rects) <= MAX_TREEMAP_RECTS

    embedded = page.one("script", id="analysis").text_content()
    assert json.loads(embedded) == json.loads(json.dumps(analysis.to_json()))


# --- images with known waste ------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return root


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def base(store: Store, tmp_path: Path) -> Image:
    """A base layer: a tool, a library, a log and forty small documents."""
    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
        "usr/bin/tool": os.urandom(40_000),
        "usr/lib/libfoo.so": os.urandom(30_000),
        "var/log/old.log": os.urandom(8_000),
        **{f"usr/share/doc/pkg{i:02d}/README": os.urandom(1_000 + 37 * i) for i in range(40)},
    }
    layer = store.build_layer(write_tree(tmp_path / "base", files), source_date_epoch=EPOCH)
    image = Image.scratch(architecture="amd64", created=EPOCH).append(
        layer, created_by="ADD rootfs.tar /", created=EPOCH
    )
    return store.save(image, "base:1")


@pytest.fixture
def image(store: Store, tmp_path: Path, base: Image) -> Image:
    """On ``base``: a config-only step; a layer that rebuilds the tool and leaves a cache; a
    layer that deletes the cache (whiteout) and empties ``var/log`` (opaque marker)."""
    one = write_tree(
        tmp_path / "one",
        {
            "usr/bin/tool": os.urandom(45_000),
            "tmp/cache.bin": os.urandom(120_000),
            ODD_NAME: b"escaped?\n" * 500,
        },
    )
    two = write_tree(
        tmp_path / "two",
        {"tmp/.wh.cache.bin": b"", "var/log/.wh..wh..opq": b"", "var/log/new.log": b"n\n"},
    )
    built = (
        base.with_config(env={"PATH": "/usr/bin"}, created=EPOCH)
        .append(
            store.build_layer(one, source_date_epoch=EPOCH),
            created_by="RUN make tool </dev/null && cp tool /usr/bin",
            created=EPOCH,
        )
        .append(
            store.build_layer(two, source_date_epoch=EPOCH),
            created_by="RUN rm /tmp/cache.bin",
            created=EPOCH,
        )
    )
    return store.save(built, "app:1")


# --- the browser ------------------------------------------------------------------------------


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: the report test needs Debian's headless browser; "
            "`make debs` installs it (apt-get install --no-install-recommends chromium)"
        )
    return path


def run_chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr}"
    return result


def console_lines(stderr: str) -> list[str]:
    """What the page wrote to its console (errors, CSP violations, uncaught exceptions):
    Chromium logs each as ``[...:INFO:CONSOLE(line)] "message", source: URL (line)``."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_the_report_renders_in_chromium_and_shows_the_analysis(
    image: Image, base: Image, tmp_path: Path
) -> None:
    """Headless Chromium loads the page with no console message at all (the page logs
    nothing, so any line is an error or a blocked load), runs its script, and the DOM it
    ends with shows the analysis's figures. The screenshot goes to
    ``test-artifacts/report.png`` (with the page beside it as ``report.html``)."""
    analysis = image.analyze(base=base)
    assert analysis.layers[0].base and not analysis.layers[1].base
    assert {x.index: x.wasted_bytes for x in analysis.layers} == WASTED
    path = write_report(image, tmp_path / "report.html", analysis=analysis, title="app:1")

    started = time.monotonic()
    dom = run_chromium(path, "--dump-dom")
    shot = tmp_path / "report.png"
    screenshot = run_chromium(path, f"--screenshot={shot}", "--window-size=1200,1600")
    elapsed = time.monotonic() - started

    assert console_lines(dom.stderr) == [], dom.stderr
    assert console_lines(screenshot.stderr) == [], screenshot.stderr
    page = Page(dom.stdout)
    # The script ran to its end: it parsed the embedded JSON and counted the layers.
    assert page.one("body").attrs.get("data-ready") == str(len(analysis.layers))
    check_page_against(page, image, analysis)
    assert page.one("h1").text_content() == "app:1"
    assert ODD_NAME in {e.attrs.get("data-path") for e in page.find("rect")}

    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 1600)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
    shutil.copyfile(path, ARTIFACTS / "report.html")
    assert elapsed < 60, f"chromium took {elapsed:.1f}s"


# --- the page without a browser ---------------------------------------------------------------


def test_the_page_loads_nothing_and_escapes_what_it_shows(image: Image, tmp_path: Path) -> None:
    path = write_report(image, tmp_path / "r.html", title="<script>alert(1)</script>")
    text = path.read_text()
    for needle in ("http:", "https:", "src=", "href=", "<link", "url(", "@import", "<iframe"):
        assert needle not in text, needle
    policy = Page(text).one("meta", http_equiv="Content-Security-Policy").attrs["content"]
    assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1]
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # A path that could close the JSON's script element stays inside it.
    assert text.count("</script>") == 2
    page = Page(text)
    check_page_against(page, image, image.analyze())
    assert page.one("h1").text_content() == "<script>alert(1)</script>"


def test_the_title_defaults_to_the_digest_and_nothing_is_wasted_in_the_base(
    base: Image, tmp_path: Path
) -> None:
    page = Page(write_report(base, tmp_path / "r.html").read_text())
    assert page.one("h1").text_content() == base.digest
    assert "nothing is wasted" in page.one("section", id="top-waste").text_content()
    check_page_against(page, base, base.analyze())


def test_the_treemap_is_capped_with_an_other_remainder(store: Store, tmp_path: Path) -> None:
    files = {f"lib/d{i % 25:02d}/f{i:04d}": b"x" * (10 + i) for i in range(1500)}
    files["big/one"] = b"y" * 400_000
    layer = store.build_layer(write_tree(tmp_path / "many", files), source_date_epoch=EPOCH)
    image = Image.scratch(created=EPOCH).append(layer, created_by="ADD many /")
    text = render_report(image)
    page = Page(text)
    rects = [e for e in page.within(page.one("section", id="treemap")) if e.tag == "rect"]
    assert MAX_TREEMAP_RECTS - 10 < len(rects) <= MAX_TREEMAP_RECTS
    others = [e for e in rects if "other" in e.classes]
    assert others and sum(int(e.attrs["data-paths"]) for e in others) > 0
    check_page_against(page, image, image.analyze())
    assert page.one("rect", data_path="big/one").attrs["data-bytes"] == "400000"
    assert len(text) < 200_000


def test_squarified_rectangles_tile_the_area_in_proportion() -> None:
    sizes = [500.0, 300.0, 120.0, 60.0, 10.0, 9.0, 1.0]
    rects = squarify(sizes, 10.0, 20.0, 400.0, 300.0)
    total = sum(sizes)
    for (x, y, w, h), size in zip(rects, sizes, strict=True):
        assert w * h == pytest.approx(400 * 300 * size / total)
        assert x >= 10 - 1e-9 and x + w <= 410 + 1e-9
        assert y >= 20 - 1e-9 and y + h <= 320 + 1e-9
    for i, (x1, y1, w1, h1) in enumerate(rects):
        for x2, y2, w2, h2 in rects[i + 1 :]:
            overlap_w = min(x1 + w1, x2 + w2) - max(x1, x2)
            overlap_h = min(y1 + h1, y2 + h2) - max(y1, y2)
            assert overlap_w <= 1e-6 or overlap_h <= 1e-6
    # Squarified: the largest rectangles are close to squares.
    x, y, w, h = rects[0]
    assert max(w / h, h / w) < 2


def test_write_report_replaces_the_file_atomically(image: Image, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "report.html"
    target.write_text("old")
    assert write_report(image, target) == target
    assert target.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (target.stat().st_mode & 0o777) == 0o644
    with pytest.raises(FileNotFoundError):
        write_report(image, tmp_path / "missing" / "report.html")


def test_cli_report(
    image: Image, base: Image, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.html"
    argv = ["--store", str(store.root), "report", "app:1", "-o", str(out), "--base", "base:1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    analysis = image.analyze(base=base)
    assert captured.out == (
        f"{out}: 3 layers, {human_size(analysis.layer_bytes)}, "
        f"{human_size(analysis.reclaimable_bytes)} reclaimable\n"
    )
    page = Page(out.read_text())
    assert page.one("h1").text_content() == "app:1"
    check_page_against(page, image, analysis)
    assert main(["--store", str(store.root), "report", "nope:1", "-o", str(out)]) == 1
    assert "nope:1" in capsys.readouterr().err
