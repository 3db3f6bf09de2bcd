"""Crash safety: kill -9 a process at a random moment of save, import, pull, build, gc, flatten
or squash, then check every promise of the store (docs/RELIABILITY.md, Crash safety).

The kill schedule is random but seeded: the seed is printed, and ``LAYERCORE_CRASH_SEED=N``
replays it; ``LAYERCORE_CRASH_KILLS`` sets how many kills (default 210, 30 per operation).
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from layercore import Image, Layer, Store
from registry_harness import Registry
from test_build import EPOCH, busybox_store

WORKER = Path(__file__).with_name("crash_worker.py")
OPS = ("save", "import_image", "pull", "build", "gc", "flatten", "squash")
#: Longest wait before the kill, per operation: about one loop of it, so kills land anywhere.
MAX_DELAY = {"build": 0.6, "pull": 0.3, "import_image": 0.25}
_HEX = re.compile(r"[0-9a-f]{64}")


def prepare(base: Path, host: str | None) -> tuple[Store, Path]:
    """The store the workers use (``busybox:test`` and the three-layer ``src:1``) and their
    work directory: four one-layer images as OCI archives in ``archives/`` and, given a
    registry ``host``, pushed there as ``team/app:0..3``."""
    store = busybox_store(base)
    work = base / "work"
    (work / "archives").mkdir(parents=True)
    rng = random.Random(1)
    image = Image.scratch(created=EPOCH)
    for i in range(3):
        tree = work / f"src-{i}"
        tree.mkdir()
        (tree / "common").write_bytes(rng.randbytes(16 << 10))
        (tree / f"only-{i}").write_bytes(rng.randbytes(8 << 10))
        image = image.append(store.build_layer(tree, source_date_epoch=EPOCH))
    store.save(image, "src:1")
    for i in range(4):
        tree = work / f"app-{i}"
        tree.mkdir()
        (tree / "app").write_bytes(rng.randbytes(48 << 10))
        layer = Layer.from_dir(tree, work / f"app-{i}.tar.gz", source_date_epoch=EPOCH)
        store.save(Image.scratch(created=EPOCH).append(layer), f"app:{i}")
        store.export_image(f"app:{i}", work / "archives" / f"{i}.tar", "oci-archive")
        if host is not None:
            store.push(f"app:{i}", f"{host}/team/app:{i}")
        store.remove(f"app:{i}")
    store.gc()
    return store, work


def assert_unlocked(path: Path, timeout: float = 5.0) -> None:
    """The lock file ``path`` can be taken exclusive within ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{path} is still locked after {timeout}s"
                time.sleep(0.01)
    finally:
        os.close(fd)


def temp_files(root: Path) -> list[str]:
    """What interrupted writes leave: files in ``.layercore/tmp/``, stamps' temp files."""
    private = root / ".layercore"
    found = [f"tmp/{name}" for name in os.listdir(private / "tmp")]
    found += [f"stamps/{n}" for n in os.listdir(private / "stamps") if n.endswith(".tmp")]
    return sorted(found)


def check_store(root: Path, keep: Mapping[str, str]) -> list[str]:
    """Every promise after a crash; returns the temp files the crash left (now removed).

    No lock is held; opening the store removes the temp files; ``verify()`` is clean; every
    file in ``blobs/`` is a whole blob named by its digest; the tags in ``keep`` still name
    their images; every tag loads and every blob it needs is there and intact."""
    private = root / ".layercore"
    for lock in ("gc.intent", "gc.lock", "index.lock"):
        assert_unlocked(private / lock)
    left = temp_files(root)
    store = Store(root)
    still = temp_files(root)
    assert still == [], f"the next open did not remove the crash's temp files: {still}"
    assert store.verify() == []
    names = os.listdir(root / "blobs" / "sha256")
    assert all(_HEX.fullmatch(name) for name in names), names
    tags = store.tags()
    for tag, digest in keep.items():
        assert tags.get(tag) == digest, f"{tag} lost or moved"
    for tag in tags:
        image = store.load(tag)
        for layer in image.layers:
            store.open_blob(layer.digest)
    return left


def kill_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # killed before it made its own group, or it died by itself
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_kill_9_at_random_moments_keeps_every_promise(tmp_path: Path, registry: Registry) -> None:
    seed = int(os.environ.get("LAYERCORE_CRASH_SEED") or random.randrange(1 << 32))
    kills = int(os.environ.get("LAYERCORE_CRASH_KILLS") or 210)
    print(f"LAYERCORE_CRASH_SEED={seed} LAYERCORE_CRASH_KILLS={kills}")
    rng = random.Random(seed)
    host = registry.host
    store, work = prepare(tmp_path, host)
    keep = {tag: store.tags()[tag] for tag in ("busybox:test", "src:1")}
    plan = [OPS[i % len(OPS)] for i in range(kills)]
    rng.shuffle(plan)
    log = tmp_path / "worker.log"
    started = time.monotonic()
    with open(log, "w") as stderr:
        zygote = subprocess.Popen(
            [sys.executable, str(WORKER), str(store.root), str(work), host],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    assert zygote.stdin is not None and zygote.stdout is not None
    mid_write: Counter[str] = Counter()
    sleeping = checking = 0.0
    try:
        for n, op in enumerate(plan):
            child_seed = rng.randrange(1 << 32)
            delay = rng.uniform(0.005, MAX_DELAY.get(op, 0.2))
            where = f"kill {n} ({op}, worker seed {child_seed}, after {delay:.3f}s; seed {seed})"
            zygote.stdin.write(f"{op} {child_seed}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline().split()[1])
            time.sleep(delay)
            kill_process_group(pid)
            status = int(zygote.stdout.readline().split()[1])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                f"{where}: the worker ended by itself:\n{log.read_text()[-3000:]}"
            )
            checked = time.monotonic()
            try:
                if check_store(store.root, keep):
                    mid_write[op] += 1
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from e
            checking += time.monotonic() - checked
            sleeping += delay
            store.gc()  # refuses nothing after a crash, and keeps the next verify() cheap
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    elapsed = time.monotonic() - started
    print(
        f"{kills} kills in {elapsed:.1f}s ({sleeping:.1f}s waiting to kill, {checking:.1f}s "
        f"checking); kills that left temp files, by operation: "
        f"{dict(sorted(mid_write.items()))}"
    )
    assert sum(mid_write.values()) > kills // 10, "the kills hardly ever hit a write"


def test_opening_the_store_removes_temp_files_only_when_no_one_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    tmp = store.root / ".layercore" / "tmp"
    stamps = store.root / ".layercore" / "stamps"
    index = store.root / ".layercore" / "index"
    (tmp / "4242-dead.blob").write_bytes(b"half a blob")
    (tmp / "4242-dead.workdir.d" / "sub").mkdir(parents=True)
    (stamps / f"{'a' * 64}.0123456789ab.tmp").write_text("1 2 3 4 5\n")
    old_index_tmp = index / ".lcidx-old"
    old_index_tmp.write_bytes(b"x")
    os.utime(old_index_tmp, (time.time() - 7200,) * 2)
    young_index_tmp = index / ".lcidx-young"
    young_index_tmp.write_bytes(b"x")  # a reader may be writing it: kept
    with store.writing():
        Store(store.root)  # a writer is active: its temp files may be live, nothing goes
        assert sorted(os.listdir(tmp)) == ["4242-dead.blob", "4242-dead.workdir.d"]
    Store(store.root)
    assert os.listdir(tmp) == []
    assert os.listdir(stamps) == []
    assert sorted(os.listdir(index)) == [".lcidx-young"]
