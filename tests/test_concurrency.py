"""Concurrency: processes save, load, pull, build and gc one store at once; none meets an error
beyond the documented ones, no tag is lost, no blob is damaged (docs/RELIABILITY.md).

Runs 20 s; ``LAYERCORE_STRESS_SECONDS=N`` runs longer by hand.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from layercore import Store
from registry_harness import Registry
from test_crash import WORKER, check_store, prepare

#: One process each. The loader reads every tag and every blob it needs while the others
#: write, move and remove tags and gc deletes what they no longer reach.
ROLES = ("save", "save", "load", "pull", "build", "gc")


def test_processes_racing_on_one_store_lose_nothing(tmp_path: Path, registry: Registry) -> None:
    seconds = float(os.environ.get("LAYERCORE_STRESS_SECONDS") or 20)
    seed = int(os.environ.get("LAYERCORE_STRESS_SEED") or random.randrange(1 << 32))
    print(f"LAYERCORE_STRESS_SEED={seed} LAYERCORE_STRESS_SECONDS={seconds}")
    host = registry.host
    store, work = prepare(tmp_path, host)
    keep = {tag: store.tags()[tag] for tag in ("busybox:test", "src:1")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--race",
                op,
                str(store.root),
                str(work),
                host,
                str(seconds),
                str(seed + i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, op in enumerate(ROLES)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.splitlines()[-1]))
    done: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for result in results:
        assert result["failures"] == [], "\n".join(result["failures"])
        done[result["op"]] += result["done"]
        errors.update({f"{result['op']}: {k}": v for k, v in result["errors"].items()})
        keep.update(result["tags"])
    print(f"{len(ROLES)} processes, {seconds:.0f}s: done {dict(done)}; errors {dict(errors)}")
    assert all(done[op] > 0 for op in ROLES), done
    # Every tag a worker wrote last (and did not remove) names what it wrote; all verify.
    check_store(store.root, keep)


HOLD_WRITING = """
import sys, time
from layercore import Store
store = Store(sys.argv[1])
print("ready", flush=True)
while True:
    with store.writing():
        time.sleep(0.05)
"""


def test_gc_is_not_starved_by_overlapping_writers(tmp_path: Path) -> None:
    # Two processes whose writing() scopes overlap without a gap: flock lets shared holders in
    # ahead of a waiting exclusive one, so before gc.intent the gc waited for as long as they ran.
    store = Store(tmp_path / "store")
    writers = [
        subprocess.Popen([sys.executable, "-c", HOLD_WRITING, str(store.root)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        time.sleep(0.2)
        started = time.monotonic()
        for _ in range(3):
            store.gc()
        assert time.monotonic() - started < 5
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
