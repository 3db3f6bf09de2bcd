"""``layercore run``: a container's start-up, the disk twenty containers add, and an image's first
run, whole processes of the installed ``.venv/bin/layercore`` (what a user types).

Images (built once per session, untimed, in the benchmark scratch directory, layers gzip as the
store writes them by default): a busybox-static root file system (``test_build``'s) plus filler
of random files from a fixed seed: ``10mb``, one layer of ten 1 MB files; ``1gb``, four layers
of five 50 MB files each (smoke mode: a few hundred kB in all).

- ``run/startup-10mb``, ``run/startup-1gb``: ``layercore --store S run --rm IMAGE true``, the
  image's snapshots made before (one untimed run), against its floor: ``python -c "import
  layercore"`` and then ``bwrap --bind ROOTFS / --proc /proc --dev /dev --unshare-pid
  --unshare-ipc --unshare-uts --unshare-net --die-with-parent -- /bin/true`` on the image
  extracted (``Stack.extract``, untimed), two whole processes run back to back by one callable
  and timed together (no shell between them, so the floor has no process layercore's lacks;
  it pays one more spawn from the benchmark's process, ~1 ms, which only lowers the overhead
  figure).
  They alternate, A B B A ...; ``extra_info["overhead_ms"]`` is the median of the pairs'
  differences (layercore minus floor), ``overhead_iqr_ms`` their interquartile range, and
  ``imports_ms`` what importing the run's modules (``RUN_MODULES``) costs a process over
  ``import layercore``, measured the same way (the rest is the sandbox and the run's work).
- ``run/disk-20``: twenty ``layercore run --name cN IMAGE true`` of ``1gb`` (kept, not
  ``--rm``), timed once as the body; ``extra_info["disk_added"]`` (also ``bytes_out``) is the
  store's disk use after minus before (``st_blocks * 512`` over the whole store directory,
  each hardlinked inode once; the snapshots exist before).
- ``run/first-run``: ``layercore run --rm IMAGE true`` of ``1gb`` with no snapshots yet (the
  store's ``.layercore/snapshots`` removed, untimed, before every round), which extracts its
  five gzip layers, against ``sh -c 'mkdir D && for b; do tar -xzf "$b" -C D; done'`` on the
  same five blobs (gzip, as stored), alternating; both write to the scratch directory, both
  outputs are removed before every round, neither fsyncs.

Timings are never asserted; the assertions are correctness checks.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trees
from layercore import Image, Stack, Store
from processes import SMOKE, paired, run
from test_build import _busybox_rootfs

EPOCH = 1_700_000_000
MB = 1_000_000
#: name -> (layers, files per layer, bytes per file) of random filler above the busybox layer
FILLER = {
    "10mb": (1, 4, 50_000) if SMOKE else (1, 10, 1 * MB),
    "1gb": (4, 4, 25_000) if SMOKE else (4, 5, 50 * MB),
}
STARTUP_PAIRS = 1 if SMOKE else 30
FIRST_RUN_PAIRS = 1 if SMOKE else 3
CONTAINERS = 20
LAYERCORE = str(Path(sys.executable).with_name("layercore"))
BWRAP = [
    "bwrap", "--bind", "ROOTFS", "/", "--proc", "/proc", "--dev", "/dev",
    "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent",
    "--", "/bin/true",
]  # fmt: skip
#: What `layercore run` of an image whose snapshots exist imports beyond `import layercore`
#: (the command line, the runtime, the store's layout; not the store and image modules):
#: ``extra_info["imports_ms"]`` is their cost as a process.
RUN_MODULES = ("layercore.cli.container", "layercore.runtime.containers", "layercore.layout")
TAR_X = 'mkdir "$0" && for b; do tar -xzf "$b" -C "$0" || exit 1; done'


@dataclass
class Prepared:
    root: Path
    store: Path  # both images, snapshots made
    rootfs: dict[str, Path]  # each image extracted, for the bwrap floor
    content: dict[str, int]  # file-content bytes of each image
    env: dict[str, str]


def _filler(path: Path, seed: int, files: int, size: int) -> None:
    rng = random.Random(seed)
    path.mkdir(parents=True)
    chunk = 8 * 1024 * 1024
    for i in range(files):
        with open(path / f"f{i}.bin", "wb") as f:
            left = size
            while left:
                n = min(chunk, left)
                f.write(rng.randbytes(n))
                left -= n


def _layercore(store: Path, *args: str) -> list[str]:
    return [LAYERCORE, "--store", str(store), *args]


@pytest.fixture(scope="module")
def prepared() -> Iterator[Prepared]:
    root = trees.scratch_dir() / f"run-bench-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        env = {**os.environ, "TMPDIR": str(root)}
        _busybox_rootfs(root / "busybox")
        store = Store(root / "store")
        base = store.build_layer(root / "busybox", source_date_epoch=EPOCH)
        busybox_bytes = sum(p.stat().st_size for p in (root / "busybox").rglob("*") if p.is_file())
        rootfs, content = {}, {}
        for seed, (name, (layers, files, size)) in enumerate(FILLER.items()):
            image = Image.scratch(created=EPOCH).append(base)
            for k in range(layers):
                src = root / "filler" / f"{name}-{k}"
                _filler(src / "data", trees.SEED + 100 * seed + k, files, size)
                image = image.append(store.build_layer(src, source_date_epoch=EPOCH))
                shutil.rmtree(src)
            store.save(image.with_config(env={"PATH": "/bin"}), f"bench:{name}")
            content[name] = busybox_bytes + layers * files * size
            rootfs[name] = root / f"rootfs-{name}"
            Stack(store.load(f"bench:{name}").layers).extract(rootfs[name])
            for point in ("proc", "dev"):
                (rootfs[name] / point).mkdir(exist_ok=True)
            # the snapshots, made once; then the floor once, so that neither round is the first
            run(_layercore(store.root, "run", "--rm", f"bench:{name}", "true"), env)
            run(_bwrap(rootfs[name]), env)
        yield Prepared(root, store.root, rootfs, content, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _bwrap(rootfs: Path) -> list[str]:
    return [str(rootfs) if a == "ROOTFS" else a for a in BWRAP]


@pytest.mark.parametrize("image", ["10mb", "1gb"])
def test_startup(benchmark: Any, prepared: Prepared, image: str) -> None:
    """`layercore run --rm IMAGE true` against `python -c "import layercore"` followed by
    `bwrap ... /bin/true` on the extracted image (see the module docstring)."""
    ours = _layercore(prepared.store, "run", "--rm", f"bench:{image}", "true")
    importing = [sys.executable, "-c", "import layercore"]
    bwrap = _bwrap(prepared.rootfs[image])

    def floor() -> None:
        run(importing, prepared.env)
        run(bwrap, prepared.env)

    def setup(_who: str) -> tuple[list[str], Callable[[], None]]:
        return ours, floor

    def check() -> None:
        assert Store(prepared.store).containers() == [], "--rm left a container"

    paired(
        benchmark, f"run/startup-{image}", "import layercore + bwrap /bin/true", 0, setup,
        prepared.env, check, pairs=STARTUP_PAIRS,
    )  # fmt: skip
    p = benchmark.extra_info["paired"]
    diffs = [s - b for s, b in zip(p["subject_times"], p["baseline_times"], strict=True)]
    q = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
    # What bounds the overhead: the modules a run imports, as a process of their own against
    # the floor's interpreter, alternating (A B B A ...).
    run_imports = [sys.executable, "-c", f"import {', '.join(RUN_MODULES)}"]
    costs: list[float] = []
    for i in range(STARTUP_PAIRS):
        pair = [(run_imports, 1), (importing, -1)]
        for cmd, sign in pair if i % 2 == 0 else reversed(pair):
            costs.append(sign * run(cmd, prepared.env))
    imports = [costs[k] + costs[k + 1] for k in range(0, len(costs), 2)]
    benchmark.extra_info.update(
        image=image,
        image_bytes=prepared.content[image],
        overhead_ms=1000 * statistics.median(diffs),
        overhead_iqr_ms=1000 * (q[2] - q[0]),
        imports_ms=1000 * statistics.median(imports),
    )


def disk_use(root: Path) -> int:
    """Bytes allocated below ``root`` (``st_blocks * 512``), each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for base, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            st = os.lstat(os.path.join(base, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def test_disk_of_twenty_containers(benchmark: Any, prepared: Prepared) -> None:
    """The disk twenty kept containers of the 1 GB image add to the store (its snapshots exist
    already); the body, twenty `layercore run --name cN bench:1gb true`, is timed once."""
    names = [f"c{i}" for i in range(CONTAINERS)]
    before = disk_use(prepared.store)
    done: list[bool] = []

    def twenty() -> None:
        for name in names:
            cmd = _layercore(prepared.store, "run", "--name", name, "bench:1gb", "true")
            run(cmd, prepared.env)
        done.append(True)

    benchmark.group = "run/disk-20"
    benchmark.pedantic(twenty, rounds=1, iterations=1)
    if not done:
        twenty()
    added = disk_use(prepared.store) - before
    store = Store(prepared.store)
    kept = {c.name: c for c in store.containers()}
    assert sorted(kept) == sorted(names)
    assert all(c.status == "exited" and c.exit_code == 0 for c in kept.values())
    benchmark.extra_info.update(
        tool=f"layercore run, {CONTAINERS} containers kept",
        subject=True,
        bytes_in=None,
        bytes_out=added,
        containers=CONTAINERS,
        disk_before=before,
        disk_added=added,
        disk_per_container=added / CONTAINERS,
        image_bytes=prepared.content["1gb"],
    )
    for name in names:
        store.remove_container(name)


def test_first_run(benchmark: Any, prepared: Prepared) -> None:
    """`layercore run --rm bench:1gb true` with no snapshots (it extracts the five layers)
    against `tar -xzf` of the same five gzip blobs into one directory, alternating."""
    store = Store(prepared.store)
    layers = store.load("bench:1gb").layers
    blobs = [str(store.blob_path(layer.digest)) for layer in layers]
    snapshots = store.root / ".layercore" / "snapshots"
    dest = prepared.root / "tar-x"
    ours = _layercore(store.root, "run", "--rm", "bench:1gb", "true")
    tar = ["sh", "-c", TAR_X, str(dest), *blobs]

    def setup(_who: str) -> tuple[list[str], list[str]]:
        # the same start for both: no snapshot of any image, no tar output
        shutil.rmtree(snapshots, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        return ours, tar

    def check() -> None:
        assert store.existing_snapshots(layers) is not None, "the snapshots were not made"
        assert store.containers() == [], "--rm left a container"

    try:
        paired(
            benchmark, "run/first-run", "tar -xzf of the layer blobs", prepared.content["1gb"],
            setup, prepared.env, check, pairs=FIRST_RUN_PAIRS,
        )  # fmt: skip
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    benchmark.extra_info.update(image="1gb", layers=len(layers), compression="gzip")
