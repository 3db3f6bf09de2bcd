"""layercore build against buildah (`bud --layers --isolation chroot`, vfs storage) on the same
Dockerfile and context, whole processes on both sides, alternating round by round, each round
cold: a new store for layercore, a new storage root for buildah, both holding only the base
image (put there outside the timed part). Outputs go to the benchmark scratch directory.

- a two-stage build: COPY of 5,000 files (60 MB), three RUN steps that add, delete and modify
  files, metadata, and a final stage that copies from the first;
- COPY of a 30,000-file directory;
- peak RSS of the two-stage `layercore build`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trees

sys.path.insert(0, str(trees.REPO_ROOT / "tests"))
from layercore import Image, Store
from layercore.build.checksum import SourceTree, checksum_sources
from processes import SMOKE, paired, peak_rss, run

EPOCH = 1_700_000_000
FILES = 50 if SMOKE else 5_000
FILE_BYTES = 12_000
MANY = 300 if SMOKE else 30_000
BASE_TAG = "localhost/busybox:bench"
TWO_STAGES = f"""\
FROM {BASE_TAG} AS build
COPY src/ /src/
RUN mkdir -p /out && cp -r /src/d0 /src/d1 /out/
RUN rm -rf /src/d2 /out/d1/f0 && echo changed > /out/d0/f1
RUN echo modified >> /src/d3/f0 && chmod 0600 /src/d3/f1
ENV MODE=bench
LABEL org.example.bench=yes
WORKDIR /out
FROM {BASE_TAG}
COPY --from=build /out /out
COPY --from=build /src/d3 /d3
CMD ["sh"]
"""
MANY_FILES = f"FROM {BASE_TAG}\nCOPY many/ /many/\n"
RUN_TRUE = f"FROM {BASE_TAG}\nRUN true\n"
NO_RUN = f"FROM {BASE_TAG}\nENV X=1\n"


@dataclass
class Prepared:
    root: Path
    base_layout: Path  # an OCI layout holding the base, as layercore's store and for buildah
    two_stages: Path
    many_files: Path
    run_true: Path
    no_run: Path
    env: dict[str, str]


def _busybox_rootfs(root: Path) -> None:
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox-static is missing (make installs it)"
    for d in ("bin", "etc", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "cp", "rm", "mkdir", "echo", "chmod", "cat", "ls", "true"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")


@pytest.fixture(scope="module")
def prepared() -> Iterator[Prepared]:
    root = trees.scratch_dir() / f"build-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    _busybox_rootfs(root / "rootfs")
    base_store = Store(root / "base")
    layer = base_store.build_layer(root / "rootfs", source_date_epoch=EPOCH)
    base = Image.scratch(created=EPOCH).append(layer).with_config(env={"PATH": "/bin"})
    base_store.save(base, BASE_TAG)
    two = root / "two-stages"
    per_dir = max(FILES // 10, 1)
    for i in range(FILES):
        path = two / "src" / f"d{i // per_dir}" / f"f{i % per_dir}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(FILE_BYTES))
    (two / "Dockerfile").write_text(TWO_STAGES)
    many = root / "many-files"
    for i in range(MANY):
        path = many / "many" / f"d{i // 1000:02d}" / f"f{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {i}\n")
    (many / "Dockerfile").write_text(MANY_FILES)
    run_true, no_run = root / "run-true", root / "no-run"
    for path, text in ((run_true, RUN_TRUE), (no_run, NO_RUN)):
        path.mkdir()
        (path / "Dockerfile").write_text(text)
    (root / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {**os.environ, "TMPDIR": str(root)}
    yield Prepared(root, base_store.root, two, many, run_true, no_run, env)
    shutil.rmtree(root, ignore_errors=True)


class Rounds:
    """A new store (layercore) or storage root (buildah) per round, seeded with the base."""

    def __init__(self, p: Prepared, name: str) -> None:
        self.p = p
        self.base = p.root / name
        self.count = 0

    def layercore_store(self) -> Path:
        self.count += 1
        store = self.base / f"store-{self.count}"
        shutil.copytree(self.p.base_layout, store, symlinks=True)
        return store

    def buildah_root(self) -> list[str]:
        self.count += 1
        work = self.base / f"buildah-{self.count}"
        args = ["buildah", "--root", str(work / "root"), "--runroot", str(work / "run")]
        args += ["--storage-driver", "vfs"]
        # buildah names an image pulled from a layout after its path: skopeo names it.
        storage = f"containers-storage:[vfs@{work / 'root'}+{work / 'run'}]{BASE_TAG}"
        policy = self.p.root / "policy.json"
        run(
            ["skopeo", "--policy", str(policy), "copy", "-q",
             f"oci:{self.p.base_layout}:{BASE_TAG}", storage],
            self.p.env,
        )  # fmt: skip
        return args

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _layercore_build(store: Path, context: Path) -> list[str]:
    return [
        sys.executable, "-m", "layercore", "--store", str(store), "build", "-t", "bench:1",
        "--progress", "plain", "--source-date-epoch", str(EPOCH), str(context),
    ]  # fmt: skip


def _buildah_bud(args: list[str], context: Path) -> list[str]:
    return [*args, "bud", "-q", "--layers", "--isolation", "chroot", "-t", "bench:1", str(context)]


def _paired_build(
    benchmark: Any, p: Prepared, group: str, context: Path, bytes_in: int, pairs: int | None = None
) -> None:
    rounds = Rounds(p, group.replace("/", "-"))

    def setup(who: str) -> tuple[list[str], list[str]]:
        if who == "layercore":
            return _layercore_build(rounds.layercore_store(), context), []
        return [], _buildah_bud(rounds.buildah_root(), context)

    try:
        paired(benchmark, group, "buildah bud --layers", bytes_in, setup, p.env, pairs=pairs)
    finally:
        rounds.close()


def test_cold_two_stage_build(benchmark: Any, prepared: Prepared) -> None:
    # buildah's time on this build swings from 13 s to 56 s between rounds: five pairs.
    _paired_build(
        benchmark, prepared, "build/two-stages", prepared.two_stages, FILES * FILE_BYTES,
        pairs=None if SMOKE else 5,
    )  # fmt: skip


def test_copy_of_many_files(benchmark: Any, prepared: Prepared) -> None:
    _paired_build(benchmark, prepared, "build/copy-30k-files", prepared.many_files, MANY * 10)


def test_memory_two_stage_build(benchmark: Any, prepared: Prepared) -> None:
    """Peak RSS of the whole two-stage `layercore build` process."""
    rounds = Rounds(prepared, "build-rss")
    results: dict[str, int] = {}

    def probe() -> None:
        store = rounds.layercore_store()
        results["build"] = peak_rss(_layercore_build(store, prepared.two_stages), prepared.env)

    benchmark.group = "build-rss/two-stages"
    benchmark.pedantic(probe, rounds=1, iterations=1)
    if not results:
        probe()
    benchmark.extra_info.update(
        tool="layercore", subject=True, bytes_in=FILES * FILE_BYTES, bytes_out=None,
        rss_kib=results,
    )  # fmt: skip
    rounds.close()


def _seeded(store: Path) -> Path:
    """``store`` with the base's overlay snapshot made (untimed), as any store holds it once a
    build has run over that base."""
    s = Store(store)
    s.snapshots(s.load(BASE_TAG).layers)
    return store


@pytest.mark.parametrize("first", [False, True], ids=["snapshot-kept", "first-use"])
def test_run_true_overhead(benchmark: Any, prepared: Prepared, first: bool) -> None:
    """What one `RUN true` adds to a build: `layercore build` of FROM + RUN true against
    FROM + ENV, whole processes, alternating, each on a fresh copy of the base store. The RUN
    mounts the base's snapshot, starts the sandbox and writes an empty layer from the upper
    dir; ``first-use`` rounds also extract the base's snapshot (what only the first build
    over a base pays), ``snapshot-kept`` rounds find it, as every later build does."""
    name = "build-run-true-first" if first else "build-run-true"
    rounds = Rounds(prepared, name)

    def store() -> Path:
        path = rounds.layercore_store()
        return path if first else _seeded(path)

    def setup(_who: str) -> tuple[list[str], list[str]]:
        return (
            _layercore_build(store(), prepared.run_true),
            _layercore_build(store(), prepared.no_run),
        )

    try:
        paired(
            benchmark, "build/run-true-first" if first else "build/run-true",
            "layercore build without the RUN", 0, setup, prepared.env,
            pairs=1 if SMOKE else 30,
        )  # fmt: skip
    finally:
        rounds.close()


CHECKSUM = (
    "import sys\n"
    "from layercore.build.checksum import SourceTree, checksum_sources\n"
    "cache = sys.argv[2] if len(sys.argv) > 2 else None\n"
    "print(checksum_sources([SourceTree(sys.argv[1])], cache=cache).digest)\n"
)


def test_context_checksum_cold(benchmark: Any, prepared: Prepared) -> None:
    """The content checksum of the two-stage build's sources (5,000 files, 60 MB) with no stat
    cache yet (it is written), against `tar -cf - src | openssl dgst -sha256`, whole processes,
    alternating, page cache warm."""
    src = prepared.two_stages / "src"
    cache = prepared.root / "checksum-cold.cache"

    def setup(_who: str) -> tuple[list[str], list[str]]:
        cache.unlink(missing_ok=True)
        tar = f"tar -cf - -C {prepared.two_stages} src | openssl dgst -sha256"
        return [sys.executable, "-c", CHECKSUM, str(src), str(cache)], ["sh", "-c", tar]

    paired(
        benchmark, "build/checksum-cold", "tar -cf - | openssl dgst -sha256",
        FILES * FILE_BYTES, setup, prepared.env, pairs=1 if SMOKE else 5,
    )  # fmt: skip


def test_context_checksum_warm(benchmark: Any, prepared: Prepared) -> None:
    """The same checksum with its stat cache in place (nothing changed since it was written)
    against the cold one, in this process (both are layercore: an interpreter's start would
    add the same 60 ms to each), alternating. Warm, each entry costs one ``lstat``."""
    src = prepared.two_stages / "src"
    warm, cold = prepared.root / "checksum-warm.cache", prepared.root / "checksum-cold.cache"
    expected = checksum_sources([SourceTree(src)], cache=warm).digest

    def ours() -> None:
        assert checksum_sources([SourceTree(src)], cache=warm).digest == expected

    def theirs() -> None:
        assert checksum_sources([SourceTree(src)], cache=cold).digest == expected

    def setup(_who: str) -> tuple[Callable[[], None], Callable[[], None]]:
        cold.unlink(missing_ok=True)
        return ours, theirs

    paired(
        benchmark, "build/checksum-warm", "the checksum with no stat cache",
        FILES * FILE_BYTES, setup, prepared.env, pairs=1 if SMOKE else 15,
    )  # fmt: skip


class Warm:
    """One layercore store and one buildah storage root that keep their caches across rounds
    (both primed by a first build, untimed)."""

    def __init__(self, p: Prepared, name: str, context: Path) -> None:
        self.rounds = Rounds(p, name)
        self.store = self.rounds.layercore_store()
        self.buildah = self.rounds.buildah_root()
        run(_layercore_build(self.store, context), p.env)
        run(_buildah_bud(self.buildah, context), p.env)


def test_cached_rebuild_nothing_changed(benchmark: Any, prepared: Prepared) -> None:
    """A rebuild of the unchanged two-stage build, every step from the cache, against
    buildah's cached rebuild (`--layers`), whole processes, alternating."""
    warm = Warm(prepared, "build-cached", prepared.two_stages)

    def setup(_who: str) -> tuple[list[str], list[str]]:
        return (
            _layercore_build(warm.store, prepared.two_stages),
            _buildah_bud(warm.buildah, prepared.two_stages),
        )

    try:
        paired(
            benchmark, "build/cached-nothing-changed", "buildah bud --layers (cached)",
            FILES * FILE_BYTES, setup, prepared.env, pairs=1 if SMOKE else 5,
        )  # fmt: skip
    finally:
        warm.rounds.close()


def test_cached_rebuild_one_file_changed(benchmark: Any, prepared: Prepared) -> None:
    """A rebuild after one source file's content changed (a new content before each round):
    the COPY and everything after it run again; against buildah's, alternating."""
    context = prepared.root / "one-changed"
    shutil.copytree(prepared.two_stages, context)
    warm = Warm(prepared, "build-one-changed", context)
    target = context / "src" / "d3" / "f0"

    def setup(_who: str) -> tuple[list[str], list[str]]:
        target.write_bytes(os.urandom(FILE_BYTES))
        return _layercore_build(warm.store, context), _buildah_bud(warm.buildah, context)

    try:
        paired(
            benchmark, "build/cached-one-file-changed", "buildah bud --layers (cached)",
            FILES * FILE_BYTES, setup, prepared.env, pairs=1 if SMOKE else 3,
        )  # fmt: skip
    finally:
        warm.rounds.close()
        shutil.rmtree(context, ignore_errors=True)


def test_cache_from_in_a_fresh_store(benchmark: Any, prepared: Prepared) -> None:
    """`layercore build --cache-from REF` of the two-stage build in a fresh store (the base
    only), every step a hit on a cache a first build pushed with `--cache-to REF,mode=max`,
    against `layercore pull` of that build's image into another fresh store, whole
    processes, alternating, on one loopback registry (distribution 2.8); both stores on the
    benchmark's file system. The pull is the limit: the build must move the same layers."""
    from registry_harness import Registry

    rounds = Rounds(prepared, "build-cache-from")
    registry = Registry(prepared.root / "cache-registry").start()
    cache, pushed = f"{registry.host}/bench/cache:1", f"{registry.host}/bench/app:1"
    try:
        first = rounds.layercore_store()
        export = _layercore_build(first, prepared.two_stages)
        export[-1:-1] = ["--cache-to", f"{cache},mode=max"]
        run(export, prepared.env)
        run([sys.executable, "-m", "layercore", "--store", str(first), "push", "bench:1", pushed],
            prepared.env)  # fmt: skip
        digest = Store(first).load("bench:1").digest
        built: dict[str, Path] = {}

        def setup(_who: str) -> tuple[list[str], list[str]]:
            built["store"] = rounds.layercore_store()
            build = _layercore_build(built["store"], prepared.two_stages)
            build[-1:-1] = ["--cache-from", cache]
            pull = [sys.executable, "-m", "layercore", "--store", str(rounds.layercore_store()),
                    "pull", pushed]  # fmt: skip
            return build, pull

        def check() -> None:
            assert Store(built["store"]).load("bench:1").digest == digest

        paired(
            benchmark, "build/cache-from-fresh", "layercore pull of the image",
            FILES * FILE_BYTES, setup, prepared.env, check, pairs=1 if SMOKE else 5,
        )  # fmt: skip
    finally:
        registry.stop()
        rounds.close()
