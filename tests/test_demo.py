"""`make demo` runs the main job on the embedded default store: it must keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from layercore import Store


def run_demo(home: Path, cwd: Path) -> str:
    env = dict(os.environ, LAYERCORE_HOME=str(home), COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "layercore._demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_shares_the_base_and_is_reproducible(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = run_demo(home, tmp_path)
    store = Store(home)
    assert sorted(store.tags()) == ["demo/app:1", "demo/base:1", "demo/worker:1"]

    base = store.load("demo/base:1")
    app = store.load("demo/app:1")
    worker = store.load("demo/worker:1")
    assert app.layers[0].digest == worker.layers[0].digest == base.layers[0].digest
    assert app.stack.lookup("/bin/sh") is not None
    assert app.stack.read("/app/main.sh").startswith(b"#!/bin/sh")
    assert app.runtime_config.cmd == ("/app/main.sh",)

    # The base layer is stored once though three images use it.
    usage = store.du()
    assert usage.saved_bytes >= 2 * base.layers[0].size
    blobs = list((home / "blobs" / "sha256").iterdir())
    assert sum(1 for b in blobs if b.name == base.layers[0].digest.removeprefix("sha256:")) == 1

    # The app ran in a container over the image's snapshots, and the container is gone.
    assert "$ layercore run --rm demo/app:1\nhello from app\n" in first
    assert store.containers() == []

    # The exports are there, and name the image.
    index = json.loads((tmp_path / "demo-export" / "app-oci" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == app.digest
    assert (tmp_path / "demo-export" / "app-docker.tar").stat().st_size > base.layers[0].size

    # A second run rebuilds the same images: same digests, nothing new in the store.
    before = {b.name: b.stat().st_ino for b in blobs}
    tags = store.tags()
    second = run_demo(home, tmp_path)
    assert Store(home).tags() == tags
    after = {b.name: b.stat().st_ino for b in (home / "blobs" / "sha256").iterdir()}
    assert after == before
    for tag in ("demo/base:1", "demo/app:1", "demo/worker:1"):
        assert tag in first and tag in second
