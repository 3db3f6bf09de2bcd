"""Push and pull against the real registry (distribution 2.8 on 127.0.0.1), side by side with
skopeo and curl on the same registry, whole processes on both sides, alternating round by round
(A B B A ...).

- push to an empty registry: one 1 MB base layer and one 200 MB incompressible layer;
- push of a second image sharing those layers to the same repository;
- push to another repository of the same registry (skopeo's blob-info cache deleted: it
  re-uploads; layercore mounts what the store knows is there);
- pull into an empty store (skopeo: into an empty OCI directory), and with the big layer stored;
- one 1 GB blob up and down, against curl moving the same bytes to and from the same registry;
- peak RSS of layercore pushing and pulling a 2 GB layer.

Every round that needs an empty registry gets a fresh one (a new port and storage), started
outside the timed part. Outputs go to the benchmark scratch directory (one filesystem for both).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import trees

sys.path.insert(0, str(trees.REPO_ROOT / "tests"))
from layercore import Image, Store
from processes import paired, peak_rss, run
from registry_harness import Registry

SMOKE = trees.smoke_mode()
MB = 1_000_000
BASE_BYTES = 1 * MB
BIG_BYTES = 2 * MB if SMOKE else 200 * MB
BLOB_BYTES = 3 * MB if SMOKE else 1000 * MB
RSS_BYTES = 4 * MB if SMOKE else 2000 * MB
PAIRS = 1 if SMOKE else 3
SKOPEO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")


def _random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


@dataclass
class Prepared:
    root: Path
    store: Store
    layout: Path  # the store is an OCI layout: skopeo reads it as oci:<root>:<tag>
    policy: Path
    env: dict[str, str]
    big: Image
    second: Image
    blob_image: Image
    rss_image: Image


@pytest.fixture(scope="module")
def prepared() -> Iterator[Prepared]:
    root = trees.scratch_dir() / f"registry-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    store = Store(root / "store")
    _random_file(root / "src" / "base" / "base.bin", BASE_BYTES)
    _random_file(root / "src" / "big" / "big.bin", BIG_BYTES)
    _random_file(root / "src" / "blob" / "blob.bin", BLOB_BYTES)
    _random_file(root / "src" / "rss" / "rss.bin", RSS_BYTES)
    # Incompressible data: stored as plain tar layers (gzip would only cost time).
    layers = {
        name: store.build_layer(root / "src" / name, compression=None, source_date_epoch=0)
        for name in ("base", "big", "blob", "rss")
    }
    big = store.save(Image.scratch().append(layers["base"]).append(layers["big"]), "bench1")
    second = store.save(big.with_config(labels={"second": "yes"}), "bench2")
    blob_image = store.save(Image.scratch().append(layers["blob"]), "blob1")
    rss_image = store.save(Image.scratch().append(layers["rss"]), "rss1")
    home = root / "skopeo-home"
    home.mkdir()
    policy = home / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (home / "registries.conf").write_text("")
    env = {
        **os.environ,
        "HOME": str(home),
        "TMPDIR": str(root),
        "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "DOCKER_CONFIG": str(home / "docker"),
    }
    yield Prepared(root, store, store.root, policy, env, big, second, blob_image, rss_image)
    shutil.rmtree(root, ignore_errors=True)


class Registries:
    """Fresh registries for the rounds, each stopped (and its storage removed) after use."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.live: list[Registry] = []

    def new(self) -> Registry:
        for old in self.live:
            old.stop()
            shutil.rmtree(old.workdir, ignore_errors=True)
        self.live = [Registry(self.base / f"registry-{time.monotonic_ns()}").start()]
        return self.live[0]

    def close(self) -> None:
        for old in self.live:
            old.stop()
            shutil.rmtree(old.workdir, ignore_errors=True)


class Rounds:
    """A new directory for each round, all removed after the last: deleting a gigabyte just
    before a round made that round's time depend on the deletion (this filesystem discards
    online; see benches/test_store.py)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.count = 0
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)

    @property
    def current(self) -> Path:
        return self.base / f"round-{self.count}"

    def next(self) -> Path:
        self.count += 1
        self.current.mkdir()
        return self.current

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def registries(prepared: Prepared) -> Iterator[Registries]:
    r = Registries(prepared.root)
    yield r
    r.close()


def layercore(p: Prepared, *args: str, store: Path | None = None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "layercore",
        "--store",
        str(store or p.store.root),
        *args,
    ]


def skopeo(p: Prepared, *args: str) -> list[str]:
    return ["skopeo", "--policy", str(p.policy), "copy", "--quiet", *args]


def _push_bytes(image: Image) -> int:
    return sum(layer.size for layer in image.layers) + len(image.config_bytes)


def test_push_to_empty_registry(benchmark: Any, prepared: Prepared, registries: Registries) -> None:
    p = prepared

    def setup(_who: str) -> tuple[list[str], list[str]]:
        reg = registries.new()
        SKOPEO_CACHE.unlink(missing_ok=True)
        return (
            layercore(p, "push", "bench1", f"{reg.host}/bench:1"),
            skopeo(
                p,
                "--dest-tls-verify=false",
                f"oci:{p.layout}:bench1",
                f"docker://{reg.host}/bench:1",
            ),
        )

    paired(benchmark, "registry-push/empty", "skopeo copy", _push_bytes(p.big), setup, p.env)


def test_push_second_image_same_repository(
    benchmark: Any, prepared: Prepared, registries: Registries
) -> None:
    p = prepared

    def setup(who: str) -> tuple[list[str], list[str]]:
        reg = registries.new()
        SKOPEO_CACHE.unlink(missing_ok=True)
        if who == "layercore":
            run(layercore(p, "push", "bench1", f"{reg.host}/bench:1"), p.env)
        else:
            run(
                skopeo(
                    p,
                    "--dest-tls-verify=false",
                    f"oci:{p.layout}:bench1",
                    f"docker://{reg.host}/bench:1",
                ),
                p.env,
            )
        return (
            layercore(p, "push", "bench2", f"{reg.host}/bench:2"),
            skopeo(
                p,
                "--dest-tls-verify=false",
                f"oci:{p.layout}:bench2",
                f"docker://{reg.host}/bench:2",
            ),
        )

    paired(
        benchmark, "registry-push/shared-layers", "skopeo copy", _push_bytes(p.second), setup, p.env
    )


def test_push_to_another_repository(
    benchmark: Any, prepared: Prepared, registries: Registries
) -> None:
    p = prepared

    def setup(who: str) -> tuple[list[str], list[str]]:
        reg = registries.new()
        if who == "layercore":
            run(layercore(p, "push", "bench1", f"{reg.host}/one/bench:1"), p.env)
        else:
            run(
                skopeo(
                    p,
                    "--dest-tls-verify=false",
                    f"oci:{p.layout}:bench1",
                    f"docker://{reg.host}/one/bench:1",
                ),
                p.env,
            )
        # skopeo's memory of where blobs are is this side file; without it, it re-uploads.
        SKOPEO_CACHE.unlink(missing_ok=True)
        return (
            layercore(p, "push", "bench1", f"{reg.host}/two/bench:1"),
            skopeo(
                p,
                "--dest-tls-verify=false",
                f"oci:{p.layout}:bench1",
                f"docker://{reg.host}/two/bench:1",
            ),
        )

    paired(
        benchmark,
        "registry-push/other-repository",
        "skopeo copy (cache gone)",
        _push_bytes(p.big),
        setup,
        p.env,
    )


def test_pull_into_empty_store(benchmark: Any, prepared: Prepared, registries: Registries) -> None:
    p = prepared
    reg = registries.new()
    run(layercore(p, "push", "bench1", f"{reg.host}/bench:1"), p.env)
    rounds = Rounds(p.root / "pull-out")

    def setup(_who: str) -> tuple[list[str], list[str]]:
        out = rounds.next()
        return (
            layercore(p, "pull", f"{reg.host}/bench:1", store=out / "store"),
            skopeo(
                p,
                "--src-tls-verify=false",
                f"docker://{reg.host}/bench:1",
                f"oci:{out / 'layout'}:bench1",
            ),
        )

    def check() -> None:
        store = Store(rounds.current / "store")
        assert store.load(f"{reg.host}/bench:1").digest == p.big.digest

    paired(benchmark, "registry-pull/empty", "skopeo copy", _push_bytes(p.big), setup, p.env, check)
    rounds.close()


def test_pull_with_big_layer_stored(
    benchmark: Any, prepared: Prepared, registries: Registries
) -> None:
    p = prepared
    reg = registries.new()
    run(layercore(p, "push", "bench1", f"{reg.host}/bench:1"), p.env)
    run(layercore(p, "push", "bench2", f"{reg.host}/bench:2"), p.env)
    rounds = Rounds(p.root / "pull-stored")

    def setup(who: str) -> tuple[list[str], list[str]]:
        out = rounds.next()
        if who == "layercore":
            run(layercore(p, "pull", f"{reg.host}/bench:1", store=out / "store"), p.env)
        else:
            run(
                skopeo(
                    p,
                    "--src-tls-verify=false",
                    f"docker://{reg.host}/bench:1",
                    f"oci:{out / 'layout'}:bench1",
                ),
                p.env,
            )
        return (
            layercore(p, "pull", f"{reg.host}/bench:2", store=out / "store"),
            skopeo(
                p,
                "--src-tls-verify=false",
                f"docker://{reg.host}/bench:2",
                f"oci:{out / 'layout'}:bench2",
            ),
        )

    paired(
        benchmark,
        "registry-pull/big-layer-stored",
        "skopeo copy",
        len(p.second.config_bytes),
        setup,
        p.env,
    )
    rounds.close()


def _curl_put(host: str, repo: str, blob: Path, digest: str) -> list[str]:
    script = (
        'loc=$(curl -sS -o /dev/null -D - -X POST "http://$1/v2/$2/blobs/uploads/" '
        "| tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'); "
        'curl -sS -f -o /dev/null -X PUT -H "Content-Type: application/octet-stream" '
        '-T "$3" "$loc&digest=$4"'
    )
    return ["sh", "-c", script, "curl-put", host, repo, str(blob), digest]


def test_one_big_blob_push(benchmark: Any, prepared: Prepared, registries: Registries) -> None:
    """layercore pushes the image of one 1 GB layer (its HEADs, config and manifest included);
    curl POSTs an upload and PUTs the layer blob: the limit for those bytes."""
    p = prepared
    layer = p.blob_image.layers[0]

    def setup(_who: str) -> tuple[list[str], list[str]]:
        reg = registries.new()
        return (
            layercore(p, "push", "blob1", f"{reg.host}/blob:1"),
            _curl_put(reg.host, "blob", p.store.blob_path(layer.digest), layer.digest),
        )

    paired(benchmark, "registry-blob/push-1g", "curl PUT", layer.size, setup, p.env)


def test_one_big_blob_pull(benchmark: Any, prepared: Prepared, registries: Registries) -> None:
    p = prepared
    layer = p.blob_image.layers[0]
    reg = registries.new()
    run(layercore(p, "push", "blob1", f"{reg.host}/blob:1"), p.env)
    rounds = Rounds(p.root / "blob-out")

    def setup(_who: str) -> tuple[list[str], list[str]]:
        out = rounds.next()
        url = f"http://{reg.host}/v2/blob/blobs/{layer.digest}"
        return (
            layercore(p, "pull", f"{reg.host}/blob:1", store=out / "store"),
            # The store syncs what it pulls before it shows it; so does this side.
            ["sh", "-c", 'curl -sS -f -o "$1" "$2" && sync "$1"', "curl", str(out / "blob"), url],
        )

    paired(benchmark, "registry-blob/pull-1g", "curl GET + sync FILE", layer.size, setup, p.env)
    rounds.close()


def test_memory_push_and_pull_2g(
    benchmark: Any, prepared: Prepared, registries: Registries
) -> None:
    """Peak RSS of the whole `layercore push` and `layercore pull` processes moving a 2 GB
    layer, beside the process that only imports layercore and starts the CLI (`--version`)."""
    p = prepared
    reg = registries.new()
    out = p.root / "rss-out"
    shutil.rmtree(out, ignore_errors=True)
    results: dict[str, int] = {}

    def probe() -> None:
        results["baseline"] = peak_rss(layercore(p, "--version"), p.env)
        results["push"] = peak_rss(layercore(p, "push", "rss1", f"{reg.host}/rss:1"), p.env)
        results["pull"] = peak_rss(
            layercore(p, "pull", f"{reg.host}/rss:1", store=out / "store"), p.env
        )

    benchmark.group = "registry-rss/2g"
    benchmark.pedantic(probe, rounds=1, iterations=1)
    if not results:
        probe()
    benchmark.extra_info.update(
        tool="layercore",
        subject=True,
        bytes_in=p.rss_image.layers[0].size,
        bytes_out=None,
        rss_kib=results,
    )
    shutil.rmtree(out, ignore_errors=True)
