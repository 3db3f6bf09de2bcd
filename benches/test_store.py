"""Store and transport benchmarks: the verified blob copy, saving an image whose layers are
already stored, and export/import in the three formats, each against ``cp`` of the same bytes.

Every layercore call here fsyncs what it writes (the store's and the exports' promise), which on
this machine's disk costs more than the copy itself, so each ``cp`` baseline is measured twice in
the same run: bare (the page-cache copy) and followed by coreutils ``sync FILE...`` on everything
it wrote (the same durability). Export and import meet ``cp`` + ``sync`` in ``test_paired``,
round by round in alternation, since the disk's speed drifts more between separate runs than
the two differ. Data: ``blob-1g`` is a plain-tar layer of one 10^9-byte random
file; ``image-1g`` an image of four plain-tar layers of 250 MB random files each (smoke mode:
4 MB and 4 x 1 MB). They are generated once from a fixed seed and cached like the trees.
Timings are never asserted; the assertions are correctness checks (digests, diff_ids).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trees
from layercore import Image, Layer, Store, _core
from layercore.transport import Format
from report import (
    CP,
    CP_R,
    CP_R_SYNC,
    CP_SYNC,
    LC_COPY,
    LC_COPY_UNVERIFIED,
    SAVE_LARGE,
    SAVE_SMALL,
)

SMOKE = trees.smoke_mode()
LC_ROUNDS = 1 if SMOKE else 5
CLI_ROUNDS = 1 if SMOKE else 3
SAVE_ROUNDS = 1 if SMOKE else 20
SAVE_COPY_ROUNDS = 1 if SMOKE else 3
PAIRS = 1 if SMOKE else 6

# contender names, as report.py reads them from extra_info["tool"] (the ones its targets use
# come from it)
SAVE_COPY = "save, large layer copied in"
LC_EXPORT = "layercore export_image"
LC_IMPORT = "layercore import_image"

FORMATS: tuple[Format, ...] = ("oci", "oci-archive", "docker-archive")
TAG = "bench:image"
SAVE_TAGS = {SAVE_LARGE: "bench:large", SAVE_SMALL: "bench:small", SAVE_COPY: "bench:copied"}

# Bump when the generator changes what it writes: a cache with another version is rebuilt.
DATA_VERSION = 1
SEED = 0x5704_E000


# --------------------------------------------------------------------------------------------
# data: layer blobs generated once, cached under .bench-data/<mode>/store/


def _params() -> dict[str, Any]:
    if SMOKE:
        return {"large": 4_000_000, "small": 64_000, "image": [1_000_000] * 4}
    return {"large": 1_000_000_000, "small": 1_000_000, "image": [250_000_000] * 4}


@dataclass(frozen=True)
class StoreData:
    large: Layer  # blob-1g
    small: Layer
    image_layers: tuple[Layer, ...]  # image-1g

    @property
    def image_bytes(self) -> int:
        return sum(layer.size for layer in self.image_layers)


def _random_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, trees.MiB)
            f.write(rng.randbytes(n))
            left -= n
    os.utime(path, (trees.BASE_MTIME, trees.BASE_MTIME))


def _generate(base: Path, params: dict[str, Any]) -> dict[str, dict[str, str]]:
    sizes = {"large": params["large"], "small": params["small"]}
    sizes.update({f"image-{i}": s for i, s in enumerate(params["image"])})
    described: dict[str, dict[str, str]] = {}
    for i, (name, size) in enumerate(sizes.items()):
        src = base / f"{name}.src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir()
        _random_file(src / "data.bin", size, SEED + i)
        layer = Layer.from_dir(
            src, base / f"{name}.tar", compression=None, source_date_epoch=trees.BASE_MTIME
        )
        shutil.rmtree(src)
        described[name] = {"digest": layer.digest, "diff_id": layer.diff_id}
    return described


def _warm(path: Path) -> None:
    buf = memoryview(bytearray(trees.MiB))
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def get_store_data() -> StoreData:
    """The cached layers, generated first unless a complete copy with these parameters exists;
    read once so the page cache holds them."""
    params = _params()
    base = trees.cache_dir() / "store"
    marker = trees.cache_dir() / "store.json"
    try:
        cached = json.loads(marker.read_text())
    except (OSError, ValueError):
        cached = None
    if not (
        isinstance(cached, dict)
        and cached.get("version") == DATA_VERSION
        and cached.get("params") == params
        and all((base / f"{n}.tar").is_file() for n in cached.get("layers", {}))
    ):
        marker.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        cached = {"version": DATA_VERSION, "params": params, "layers": _generate(base, params)}
        tmp = marker.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.rename(marker)
    layers = {
        name: Layer.open(base / f"{name}.tar", digest=d["digest"], diff_id=d["diff_id"])
        for name, d in cached["layers"].items()
    }
    for layer in layers.values():
        _warm(layer.path)
    return StoreData(
        large=layers["large"],
        small=layers["small"],
        image_layers=tuple(layers[f"image-{i}"] for i in range(len(params["image"]))),
    )


def _image(layers: tuple[Layer, ...] | list[Layer]) -> Image:
    image = Image.scratch(architecture="amd64", os="linux", created=trees.BASE_MTIME)
    for i, layer in enumerate(layers):
        image = image.append(layer, created_by=f"layer {i}", created=trees.BASE_MTIME)
    return image


@dataclass(frozen=True)
class Prepared:
    data: StoreData
    store: Store  # holds image-1g under TAG and the large and small layers
    image: Image  # image-1g as stored
    exported: dict[Format, Path]  # an export of image-1g in each format: the import sources


@pytest.fixture(scope="module")
def prepared(_scratch_root: Path) -> Iterator[Prepared]:
    data = get_store_data()
    root = _scratch_root / "store-bench"
    store = Store(root / "store")
    image = store.save(_image(data.image_layers), TAG)
    store.put_layer(data.large)
    store.put_layer(data.small)
    exported: dict[Format, Path] = {}
    for fmt in FORMATS:
        dest = root / "exported" / (fmt if fmt == "oci" else f"{fmt}.tar")
        exported[fmt] = store.export_image(TAG, dest, fmt)
    for path in exported.values():
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            _warm(f)
    yield Prepared(data, store, image, exported)
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# timing helpers


def _info(benchmark: Any, group: str, tool: str, subject: bool, **kw: Any) -> None:
    benchmark.group = group
    benchmark.extra_info.update(tool=tool, subject=subject, bytes_out=None)
    benchmark.extra_info.update(kw)


def _run(
    benchmark: Any,
    fn: Callable[[], Any],
    rounds: int,
    setup: Callable[[], None],
    written: Path | None = None,
) -> Any:
    """pedantic timing of ``fn``; ``setup`` runs (untimed) before every round, then
    ``os.sync()`` flushes the previous round's writes, so no round pays for another's.
    ``written`` (what each round writes, measured after the last one) goes to ``bytes_out``."""

    def before() -> None:
        setup()
        if not SMOKE:
            os.sync()

    result = benchmark.pedantic(fn, setup=before, rounds=rounds, iterations=1)
    if written is not None:
        benchmark.extra_info["bytes_out"] = _bytes_of(written)
    return result


def _sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


def _cp_command(src: Path, dest: Path, fsync: bool) -> str:
    """``cp`` (``cp -r`` for a directory), optionally followed by an fsync of every file and
    directory written (coreutils ``sync FILE...`` fsyncs each argument)."""
    s, d = shlex.quote(str(src)), shlex.quote(str(dest))
    cmd = f"cp -r {s} {d}" if src.is_dir() else f"cp {s} {d}"
    if fsync:
        cmd += f" && find {d} -print0 | xargs -0 sync --"
    return cmd


def _bytes_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> Callable[[], None]:
    def clean() -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    return clean


# --------------------------------------------------------------------------------------------
# copy_blob


@pytest.mark.parametrize("tool", [LC_COPY, LC_COPY_UNVERIFIED, CP, CP_SYNC])
def test_copy_blob(benchmark: Any, prepared: Prepared, outdir: Path, tool: str) -> None:
    blob = prepared.data.large
    dest = outdir / "copy"
    _info(benchmark, "copy_blob/blob-1g", tool, tool == LC_COPY, bytes_in=blob.size)
    fn: Callable[[], Any]
    if tool == LC_COPY:
        fn = lambda: _core.copy_blob(blob.path, dest, expected_digest=blob.digest)  # noqa: E731
    elif tool == LC_COPY_UNVERIFIED:
        fn = lambda: _core.copy_blob(blob.path, dest, verify=False)  # noqa: E731
    else:
        cmd = _cp_command(blob.path, dest, fsync=tool == CP_SYNC)
        benchmark.extra_info["command"] = cmd
        fn = lambda: _sh(cmd)  # noqa: E731
    rounds = CLI_ROUNDS if tool in (CP, CP_SYNC) else LC_ROUNDS
    result = _run(benchmark, fn, rounds, _remove(dest), written=dest)
    assert benchmark.extra_info["bytes_out"] == blob.size
    if tool == LC_COPY:
        assert result == (blob.digest, blob.size)
    elif tool == LC_COPY_UNVERIFIED:
        assert result == (None, blob.size)
    _remove(dest)()


# --------------------------------------------------------------------------------------------
# Store.save when the layers are present


@pytest.mark.parametrize("tool", [SAVE_LARGE, SAVE_SMALL, SAVE_COPY])
def test_save_present_layers(benchmark: Any, prepared: Prepared, outdir: Path, tool: str) -> None:
    data = prepared.data
    layer = data.small if tool == SAVE_SMALL else data.large
    base = _image([layer])
    copied = tool == SAVE_COPY
    _info(
        benchmark,
        "save/present-layers",
        tool,
        tool == SAVE_LARGE,
        layer_bytes=layer.size,
        bytes_in=layer.size if copied else None,
        writes_output=copied,
    )
    # Each round saves a new image (a new config and manifest) over the same layer, as a
    # change of configuration would; SAVE_COPY starts each round from an empty store, so the
    # layer is copied in (verified) every time.
    state: dict[str, Any] = {"n": 0, "store": prepared.store, "image": base}

    def next_round() -> None:
        state["n"] += 1
        state["image"] = base.with_config(labels={"round": str(state["n"])}, created=0)
        if copied:
            shutil.rmtree(outdir / "store", ignore_errors=True)
            state["store"] = Store(outdir / "store")

    def save() -> Image:
        saved: Image = state["store"].save(state["image"], SAVE_TAGS[tool])
        return saved

    rounds = SAVE_COPY_ROUNDS if copied else SAVE_ROUNDS
    saved: Image = _run(benchmark, save, rounds, next_round)
    assert saved.layers[0].digest == layer.digest
    assert state["store"].load(SAVE_TAGS[tool]).digest == state["image"].digest
    if copied:
        benchmark.extra_info["bytes_out"] = layer.size


# --------------------------------------------------------------------------------------------
# export and import


def _cp_name(fmt: Format, fsync: bool) -> str:
    if fmt == "oci":
        return CP_R_SYNC if fsync else CP_R
    return CP_SYNC if fsync else CP


# `cp` + `sync` is measured in test_paired, alternating with layercore.
_CONTENDERS = [
    pytest.param(fmt, tool, id=f"{fmt}-{tool}") for fmt in FORMATS for tool in ("layercore", "cp")
]


@pytest.mark.parametrize(("fmt", "tool"), _CONTENDERS)
def test_export(benchmark: Any, prepared: Prepared, outdir: Path, fmt: Format, tool: str) -> None:
    src = prepared.exported[fmt]
    dest = outdir / ("layout" if fmt == "oci" else "image.tar")
    size = _bytes_of(src)
    group = f"export-{fmt}/image-1g"
    fn: Callable[[], Any]
    if tool == "layercore":
        _info(benchmark, group, LC_EXPORT, True, bytes_in=size)
        fn = lambda: prepared.store.export_image(TAG, dest, fmt)  # noqa: E731
    else:
        cmd = _cp_command(src, dest, fsync=tool == "cp + sync")
        _info(benchmark, group, _cp_name(fmt, tool == "cp + sync"), False, bytes_in=size)
        benchmark.extra_info["command"] = cmd
        fn = lambda: _sh(cmd)  # noqa: E731
    rounds = LC_ROUNDS if tool == "layercore" else CLI_ROUNDS
    _run(benchmark, fn, rounds, _remove(dest), written=dest)
    # Exports are reproducible: the same image gives the same bytes as the prepared export.
    assert benchmark.extra_info["bytes_out"] == size
    _remove(dest)()


@pytest.mark.parametrize(("fmt", "tool"), _CONTENDERS)
def test_import(benchmark: Any, prepared: Prepared, outdir: Path, fmt: Format, tool: str) -> None:
    src = prepared.exported[fmt]
    size = _bytes_of(src)
    group = f"import-{fmt}/image-1g"
    if tool == "layercore":
        _info(benchmark, group, LC_IMPORT, True, bytes_in=size)
        root = outdir / "store"
        state: dict[str, Store] = {}

        def fresh_store() -> None:
            shutil.rmtree(root, ignore_errors=True)
            state["store"] = Store(root)

        imported: Image = _run(
            benchmark, lambda: state["store"].import_image(src, TAG), LC_ROUNDS, fresh_store
        )
        assert imported.diff_ids == prepared.image.diff_ids
        assert imported.digest == prepared.image.digest
        benchmark.extra_info["bytes_out"] = _bytes_of(root / "blobs")
        shutil.rmtree(root, ignore_errors=True)
    else:
        dest = outdir / "copy"
        cmd = _cp_command(src, dest, fsync=tool == "cp + sync")
        _info(benchmark, group, _cp_name(fmt, tool == "cp + sync"), False, bytes_in=size)
        benchmark.extra_info["command"] = cmd
        _run(benchmark, lambda: _sh(cmd), CLI_ROUNDS, _remove(dest), written=dest)
        _remove(dest)()


# --------------------------------------------------------------------------------------------
# export and import against `cp` + `sync`, alternating


@pytest.mark.parametrize(
    ("op", "fmt"), [(op, fmt) for op in ("export", "import") for fmt in FORMATS]
)
def test_paired(benchmark: Any, prepared: Prepared, outdir: Path, op: str, fmt: Format) -> None:
    """layercore's export (import) and `cp` + `sync` of the same bytes, alternating round by
    round in the order A B B A A B ..., each round after an ``os.sync()``.

    Both write 1 GB to disk and wait for it, so the disk's state decides much of their time,
    and separate runs of the two drift apart by ±30 %: alternating gives both the same disk.
    Every round writes to a new path, and all of them are deleted after the last round: this
    filesystem is mounted with online discard, and deleting the previous round's gigabyte just
    before a round made that round's speed depend on what had been deleted (layercore was
    0.7x of `cp` + `sync` that way, and 1.0x when nothing was deleted between rounds).
    Each round's time goes to ``extra_info["paired"]``; report.py compares the two medians and
    the pairs. pytest-benchmark's own statistics mix both contenders and are not reported."""
    src = prepared.exported[fmt]
    size = _bytes_of(src)
    baseline = _cp_name(fmt, fsync=True)
    rounds_dir = outdir / "paired"
    shutil.rmtree(rounds_dir, ignore_errors=True)
    rounds_dir.mkdir()
    times: dict[str, list[float]] = {"layercore": [], "baseline": []}
    order = [("layercore", "baseline"), ("baseline", "layercore")]
    sequence = [who for i in range(PAIRS) for who in order[i % 2]]
    state: dict[str, Any] = {"round": 0}

    def setup() -> None:
        # A new path for each round, nothing deleted (see above).
        state["out"] = rounds_dir / f"round-{state['round']}"
        state["dest"] = state["out"] / ("layout" if fmt == "oci" else "image.tar")
        state["out"].mkdir()
        if op == "import":
            state["store"] = Store(state["out"] / "store")
        if not SMOKE:
            os.sync()

    def one_round() -> None:
        who = sequence[state["round"]]
        state["round"] += 1
        dest = state["dest"]
        start = time.perf_counter()
        if who == "baseline":
            _sh(_cp_command(src, dest, fsync=True))
        elif op == "export":
            prepared.store.export_image(TAG, dest, fmt)
        else:
            imported = state["store"].import_image(src, TAG)
        times[who].append(time.perf_counter() - start)
        if who == "layercore" and op == "export":
            # Exports are reproducible: the same bytes as the prepared export.
            assert _bytes_of(dest) == size
        elif who == "layercore":
            assert imported.digest == prepared.image.digest

    benchmark.group = f"paired-{op}-{fmt}/image-1g"
    try:
        benchmark.pedantic(one_round, setup=setup, rounds=len(sequence), iterations=1)
        # With --benchmark-disable (make test's smoke run) pedantic runs one round only.
        while state["round"] < len(sequence):
            setup()
            one_round()
    finally:
        shutil.rmtree(rounds_dir, ignore_errors=True)
    benchmark.extra_info.update(
        tool=LC_EXPORT if op == "export" else LC_IMPORT,
        subject=True,
        bytes_in=size,
        bytes_out=None,
        command=_cp_command(src, rounds_dir / "round-N" / state["dest"].name, fsync=True),
        paired={
            "baseline": baseline,
            "subject_times": times["layercore"],
            "baseline_times": times["baseline"],
        },
    )
    assert len(times["layercore"]) == len(times["baseline"]) == PAIRS
