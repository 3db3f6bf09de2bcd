"""``layercore.explain`` of two 20,000-entry layers against indexing them, in this process,
alternating round by round (A B B A ...).

The two gzip layers are made from one tree (20,000 files in 200 directories, log-normal sizes
up to 100 KiB, half text-like and half random, ~75 MB) before and after a small change: the
mtimes of 200 files, the mode of one, the content of one (same size). The baseline indexes
both blobs the way a program reads a layer: ``Layer.open`` (both digests) and every entry of
``Layer.entries()``. Both sides start cold the same way: no ``.lcidx`` index cache exists
beside the blobs (each round deletes any), and the blobs are in the page cache for both.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trees
from layercore import Layer, explain
from processes import SMOKE, paired

EPOCH = 1_700_000_000
FILES = 200 if SMOKE else 20_000
DIRS = 20 if SMOKE else 200
TOUCHED = FILES // 100


@dataclass
class Pair:
    root: Path
    a: Path
    b: Path
    entries: int
    bytes_in: int


def _tree(root: Path) -> list[Path]:
    rnd = random.Random(trees.SEED)
    words = [bytes(rnd.choice(b"abcdefghij ") for _ in range(7)) for _ in range(500)]
    paths: list[Path] = []
    for i in range(FILES):
        path = root / f"d{i % DIRS:03d}" / f"f{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = min(int(rnd.lognormvariate(7.5, 1.2)), 100 * 1024)
        if i % 2:
            body = rnd.randbytes(size)
        else:
            body = b" ".join(rnd.choice(words) for _ in range(size // 8 + 1))[:size]
        path.write_bytes(body)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    root = trees.scratch_dir() / f"explain-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    src = root / "src"
    src.mkdir(parents=True)
    paths = _tree(src)
    a = Layer.from_dir(src, root / "a.tgz", source_date_epoch=EPOCH)
    for path in paths[:: FILES // TOUCHED][:TOUCHED]:
        os.utime(path, (EPOCH - 3600, EPOCH - 3600))
    paths[1].chmod(0o600)
    body = bytearray(paths[3].read_bytes())
    body[0] ^= 0xFF
    paths[3].write_bytes(bytes(body))
    b = Layer.from_dir(src, root / "b.tgz", source_date_epoch=EPOCH)
    entries = sum(1 for _ in a.entries())
    shutil.rmtree(src)
    yield Pair(root, a.path, b.path, entries, a.size + b.size)
    shutil.rmtree(root, ignore_errors=True)


def test_explain_20k(benchmark: Any, pair: Pair) -> None:
    results: list[int] = []

    def cold() -> None:
        for index in pair.root.glob("*.lcidx"):
            index.unlink()

    def ours() -> None:
        x = explain(pair.a, pair.b)
        results.append(len(x.changed))
        assert x.only_in_a == x.only_in_b == ()

    def index_both() -> None:
        for blob in (pair.a, pair.b):
            layer = Layer.open(blob)
            count = sum(1 for _ in layer.entries())
            assert count == pair.entries

    def setup(_who: str) -> tuple[Any, Any]:
        cold()
        return ours, index_both

    def check() -> None:
        # the touched files (and their directories), the chmod-ed one, the changed one
        assert results and TOUCHED + 2 <= results[-1] <= TOUCHED + 2 + DIRS

    for blob in (pair.a, pair.b):
        blob.read_bytes()  # into the page cache, for both contenders
    paired(
        benchmark,
        "analysis/explain-20k",
        "Layer.open + entries() of both",
        pair.bytes_in,
        setup,
        dict(os.environ),
        check=check,
        pairs=None if SMOKE else 5,
    )
    benchmark.extra_info["entries"] = pair.entries
