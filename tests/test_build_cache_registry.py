"""The build cache shared through a registry (CNCF distribution 2.8, started per test):
``cache_to``/``--cache-to`` pushes a build's records and layers as one OCI manifest, and a
build in another store with ``cache_from``/``--cache-from`` hits them, fetching a layer only
for a step that hit and only when something reads it (a later step's look at the tree, a RUN,
the saved image). The access log and the stores' blobs are the evidence; a RUN writes random
bytes, so a step that ran again cannot pass for one that hit."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import layercore
from layercore import Store
from layercore.build import BuildError, BuildResult
from layercore.build.remote_cache import CACHE_ARTIFACT_TYPE, CACHE_CONFIG_TYPE, CacheRef
from layercore.errors import AuthenticationError
from layercore.image import OCI_LAYER_GZIP, OCI_MANIFEST, canonical_json, sha256_digest
from layercore.registry import transfer
from registry_fixtures import BasicRegistry
from registry_harness import Registry
from test_build import EPOCH, busybox_store, context

DOCKERFILE = """
    FROM busybox:test AS build
    WORKDIR /work
    COPY base.txt ./
    RUN busybox head -c 32 /dev/urandom > rand && echo ran >> /log
    COPY app/ ./app/
    RUN cat app/a.txt > out.txt
    FROM busybox:test
    COPY --from=build /work /srv
    """
FILES = {"base.txt": "base\n", "app/a.txt": "alpha\n", "app/sub/b.txt": "beta\n"}
BUILD_LINES = (2, 3, 4, 5, 6)  # the build stage's steps that write a layer
FINAL_LINE = 8


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the machine's Docker logins."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    return tmp_path / "docker-config" / "config.json"


def stores(tmp_path: Path) -> tuple[Store, Store]:
    """Store A with the base image, and store B holding the very same base and nothing else
    (a copy of A: the base's blobs, stamps and indexes as A has them)."""
    a = busybox_store(tmp_path / "a")
    return a, Store(shutil.copytree(a.root, tmp_path / "b" / "store", symlinks=True))


def layered(result: BuildResult) -> dict[int, tuple[bool, str | None, str]]:
    """line -> (cached, reason, layer) of each step that wrote a layer."""
    return {s.line: (s.cached, s.reason, s.layer) for s in result.steps if s.layer is not None}


def blob_gets(registry: Registry, since: int) -> list[str]:
    """The digests of the blobs fetched (GET) since the mark."""
    return [
        e.path.rsplit("/", 1)[-1]
        for e in registry.requests(since)
        if e.method == "GET" and "/blobs/sha256:" in e.path
    ]


def read_cache(registry: Registry, repo: str, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config of a cache, read with plain HTTP (no layercore code)."""
    accept = {"Accept": OCI_MANIFEST}
    url = f"{registry.url}/v2/{repo}"
    request = urllib.request.Request(f"{url}/manifests/{tag}", headers=accept)
    with urllib.request.urlopen(request) as reply:
        assert reply.headers["Content-Type"] == OCI_MANIFEST
        manifest = json.loads(reply.read())
    with urllib.request.urlopen(f"{url}/blobs/{manifest['config']['digest']}") as reply:
        config = json.loads(reply.read())
    return manifest, config


def test_a_fresh_store_takes_every_step_from_the_registry(
    tmp_path: Path, registry: Registry
) -> None:
    """Store A builds and exports (mode=max); store B, empty but for the base, builds the same
    context with the cache: every step hits, no RUN runs (the random bytes are A's), the
    image is A's to the digest. B fetched the layers of the build stage that its COPY steps
    looked below them, and the final image's; not the two the final stage's COPY --from
    hit over without reading. B keeps the records of what it fetched."""
    a, b = stores(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    ref = f"{registry.host}/cache/app:buildcache"
    first = layercore.build(ctx, store=a, source_date_epoch=EPOCH, cache_to=[f"{ref},mode=max"])
    assert [line for line, (cached, _, _) in layered(first).items() if not cached] == [
        *BUILD_LINES, FINAL_LINE
    ]  # fmt: skip
    [export] = first.cache_exports
    assert (export.mode, export.records, export.layers) == ("max", 6, 6)
    assert export.push.count("uploaded") == 7  # six layers and the config
    manifest, config = read_cache(registry, "cache/app", "buildcache")
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["artifactType"] == CACHE_ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == CACHE_CONFIG_TYPE
    steps = layered(first)
    assert [d["digest"] for d in manifest["layers"]] == [steps[n][2] for n in steps]
    assert {d["mediaType"] for d in manifest["layers"]} == {OCI_LAYER_GZIP}
    record = config["records"][2]
    assert set(record) == {
        "key", "parent", "stage", "line", "keyword", "instruction", "layer", "inputs"
    }  # fmt: skip
    assert (record["stage"], record["line"], record["keyword"]) == ("build", 4, "RUN")
    assert set(record["layer"]) == {"digest", "diff_id", "size", "mediaType"}

    mark = registry.mark()
    second = layercore.build(ctx, store=b, source_date_epoch=EPOCH, cache_from=[ref])
    assert all(cached for cached, _, _ in layered(second).values()), layered(second)
    assert second.digest == first.digest
    image_a, image_b = a.load(first.digest), b.load(second.digest)
    assert image_b.diff_ids == image_a.diff_ids
    assert image_b.stack.read("srv/rand") == image_a.stack.read("srv/rand")
    assert len(image_b.stack.read("srv/rand")) == 32
    # The manifest and config, then the layers read, each once.
    read = [steps[line][2] for line in (2, 3, 4, FINAL_LINE)]
    assert sorted(blob_gets(registry, mark)) == sorted([manifest["config"]["digest"], *read])
    assert all(b.has_blob(d) for d in read)
    assert not b.has_blob(steps[5][2]) and not b.has_blob(steps[6][2])
    # Again with the cache: nothing but the config moves.
    mark = registry.mark()
    again = layercore.build(ctx, store=b, source_date_epoch=EPOCH, cache_from=[ref])
    assert again.digest == first.digest
    assert blob_gets(registry, mark) == [manifest["config"]["digest"]]
    # The records of the fetched layers are B's: without the registry those steps hit.
    registry.stop()
    alone = layered(layercore.build(ctx, store=b, source_date_epoch=EPOCH))
    assert [alone[line][0] for line in (2, 3, 4)] == [True, True, True]


def test_a_changed_file_hits_up_to_its_copy_and_fetches_only_the_hits(
    tmp_path: Path, registry: Registry
) -> None:
    """One context file changed: the steps before its COPY hit (and only their layers are
    fetched), the COPY misses saying which file changed (the registry's record is its
    sibling), and the steps after it follow."""
    a, b = stores(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    ref = f"{registry.host}/cache/app:buildcache"
    first = layered(
        layercore.build(ctx, store=a, source_date_epoch=EPOCH, cache_to=[f"{ref},mode=max"])
    )
    (ctx / "app" / "a.txt").write_text("ALPHA!\n")
    mark = registry.mark()
    built = layercore.build(ctx, store=b, source_date_epoch=EPOCH, cache_from=[ref])
    result = layered(built)
    assert {line: (cached, reason) for line, (cached, reason, _) in result.items()} == {
        2: (True, None),
        3: (True, None),
        4: (True, None),
        5: (False, "COPY app/ ./app/: 1 file changed: a.txt (content)"),
        6: (False, "parent changed (line 5)"),
        8: (False, "from changed"),
    }
    for line in (2, 3, 4):
        assert b.has_blob(first[line][2]) and result[line][2] == first[line][2]
    for line in (5, 6, 8):
        assert not b.has_blob(first[line][2])
    fetched = set(blob_gets(registry, mark))
    assert {first[line][2] for line in (2, 3, 4)} <= fetched
    assert not fetched & {first[line][2] for line in (5, 6, 8)}
    # The RUN after the changed COPY ran over the fetched layers below it.
    assert b.load(built.digest).stack.read("srv/out.txt") == b"ALPHA!\n"


def test_min_exports_the_final_images_steps_and_max_every_stages(
    tmp_path: Path, registry: Registry
) -> None:
    """mode=min (the default) exports the records of the layers in the final image: the target
    stage's and those of the stages it is built on; mode=max every stage's."""
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    host = registry.host
    result = layercore.build(
        ctx,
        store=store,
        source_date_epoch=EPOCH,
        cache_to=[f"{host}/c/min:1", f"type=registry,ref={host}/c/max:1,mode=max"],
    )
    low, high = result.cache_exports
    assert (low.mode, low.records, high.mode, high.records) == ("min", 1, "max", 6)
    _, min_config = read_cache(registry, "c/min", "1")
    _, max_config = read_cache(registry, "c/max", "1")
    assert [(r["stage"], r["line"]) for r in min_config["records"]] == [("1", FINAL_LINE)]
    assert [(r["stage"], r["line"]) for r in max_config["records"]] == [
        *(("build", line) for line in BUILD_LINES), ("1", FINAL_LINE)
    ]  # fmt: skip
    # A target built FROM another stage carries that stage's layers: min exports its steps.
    chained = tmp_path / "chained"
    chained.mkdir()
    ctx2 = context(
        chained,
        """
        FROM busybox:test AS base
        RUN echo one > /one
        FROM base AS other
        RUN echo two > /two
        FROM base
        COPY --from=other /two /two
        """,
    )
    both = layercore.build(
        ctx2,
        store=store,
        source_date_epoch=EPOCH,
        cache_to=[f"{host}/c/chain:min", f"{host}/c/chain:max,mode=max"],
    )
    _, chain_min = read_cache(registry, "c/chain", "min")
    _, chain_max = read_cache(registry, "c/chain", "max")
    assert [r["line"] for r in chain_min["records"]] == [2, 6]
    assert [r["line"] for r in chain_max["records"]] == [2, 4, 6]
    assert [e.records for e in both.cache_exports] == [2, 3]


def test_an_unusable_cache_from_is_a_warning(tmp_path: Path, registry: Registry) -> None:
    """A reference that does not exist, an image that is no build cache, and a cache whose
    config is damaged: each a warning naming it; the build runs every step and succeeds."""
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    host = registry.host
    store.push("busybox:test", f"{host}/plain/image:1")
    bad_config = b'{"records": [{"key": "nope"}]}'
    damaged = store.root / "damaged-config.json"
    damaged.write_bytes(bad_config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": CACHE_ARTIFACT_TYPE,
            "config": {
                "mediaType": CACHE_CONFIG_TYPE,
                "digest": sha256_digest(bad_config),
                "size": len(bad_config),
            },
            "layers": [],
        }
    )
    transfer.push_artifact(
        store, manifest, f"{host}/bad/cache:1", files={sha256_digest(bad_config): damaged}
    )
    refs = [f"{host}/no/such:cache", f"{host}/plain/image:1", f"{host}/bad/cache:1"]
    result = layercore.build(ctx, store=store, source_date_epoch=EPOCH, cache_from=refs)
    assert len(result.warnings) == 3, result.warnings
    missing, plain, bad = result.warnings
    assert missing.startswith(f"cache from {host}/no/such:cache not used") and "404" in missing
    assert plain.startswith(f"cache from {host}/plain/image:1 not used")
    assert "not a layercore build cache" in plain
    assert bad.startswith(f"cache from {host}/bad/cache:1 not used")
    assert "record 0 of its config has no valid key" in bad
    assert {(c, r) for c, r, _ in layered(result).values()} == {
        (False, "no cache record for this step")
    }


def test_the_command_line_takes_both_spellings(tmp_path: Path, registry: Registry) -> None:
    """--cache-to REF,mode=max / type=registry,ref=REF and --cache-from REF /
    type=registry,ref=REF, as `layercore build` processes."""
    a, b = stores(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    host = registry.host

    def build(store: Store, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "layercore", "--store", str(store.root), "build", "--json",
             "--progress", "plain", "--source-date-epoch", str(EPOCH), *args, str(ctx)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    first = build(a, "--cache-to", f"{host}/c/one:1,mode=max",
                  "--cache-to", f"type=registry,ref={host}/c/two:1")  # fmt: skip
    assert [(e["reference"], e["mode"], e["records"]) for e in first["cache_exports"]] == [
        (f"{host}/c/one:1", "max", 6), (f"{host}/c/two:1", "min", 1)
    ]  # fmt: skip
    second = build(b, "--cache-from", f"type=registry,ref={host}/c/one:1",
                   "--cache-from", f"{host}/c/two:1")  # fmt: skip
    assert all(s["cached"] for s in second["steps"] if s["layer"])
    assert second["digest"] == first["digest"] and second["warnings"] == []
    done = subprocess.run(
        [sys.executable, "-m", "layercore", "--store", str(b.root), "build", "--progress",
         "plain", "--cache-from", f"{host}/c/absent:1", "--no-cache", str(ctx)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"warning: cache from {host}/c/absent:1 not used" in done.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--cache-to", "127.0.0.1:5000/c:1,mode=huge", "mode must be min or max, not 'huge'"),
        ("--cache-to", "type=local,dest=/tmp/x", "type=local is not supported"),
        ("--cache-to", "mode=max", "no registry reference"),
        ("--cache-to", "127.0.0.1:5000/c@sha256:" + "0" * 64, "under a tag, not a digest"),
        ("--cache-to", "127.0.0.1:5000/c:1,colour=red", "unknown option 'colour'"),
        ("--cache-from", "type=registry,ref=127.0.0.1:5000/c:1,mode=max", "unknown option"),
        ("--cache-from", "type=registry,ref=Bad/Name", "invalid image reference"),
    ],
)
def test_a_bad_cache_reference_is_a_usage_error(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    ctx = context(tmp_path, "FROM scratch\n")
    done = subprocess.run(
        [sys.executable, "-m", "layercore", "--store", str(tmp_path / "store"), "build", flag,
         value, str(ctx)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and flag in done.stderr
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        CacheRef.parse(value, export=flag == "--cache-to")


def test_secrets_reach_neither_the_cache_nor_any_message(
    tmp_path: Path, registry_factory: Any, docker_config: Path
) -> None:
    """A registry password (Basic auth from the Docker config) and a build secret are in no
    pushed blob, no warning and no error; a refused push fails the build unless
    ignore-error=true, which makes it a warning."""
    password = secrets.token_urlsafe(16)
    basic = BasicRegistry(registry_factory(htpasswd={"alice": password}), "alice", password)
    host = basic.registry.host
    docker_config.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"alice:{password}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    token = secrets.token_hex(16)
    (tmp_path / "token").write_text(token)
    store = busybox_store(tmp_path)
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && echo used > /used
        """,
    )
    result = layercore.build(
        ctx,
        store=store,
        secrets={"tok": tmp_path / "token"},
        cache_to=[f"{host}/c/secret:1,mode=max"],
    )
    assert result.cache_exports[0].records == 1
    stored = basic.registry.storage_dir / "docker" / "registry" / "v2" / "blobs"
    for blob in stored.rglob("data"):
        data = blob.read_bytes()
        assert password.encode() not in data and token.encode() not in data
    # A wrong password: the export fails without quoting either password.
    docker_config.write_text(
        json.dumps({"auths": {host: {"auth": base64.b64encode(b"alice:wrong-pw").decode()}}})
    )
    with pytest.raises(AuthenticationError) as caught:
        layercore.build(ctx, store=store, secrets={"tok": tmp_path / "token"},
                        cache_to=[f"{host}/c/secret:2"])  # fmt: skip
    assert "wrong-pw" not in str(caught.value) and password not in str(caught.value)
    ignored = layercore.build(
        ctx,
        store=store,
        secrets={"tok": tmp_path / "token"},
        cache_to=[f"{host}/c/secret:2,ignore-error=true"],
        cache_from=[f"{host}/c/secret:1"],
    )
    assert ignored.cache_exports == []
    assert len(ignored.warnings) == 2  # reading and writing the cache were both refused
    for warning in ignored.warnings:
        assert host in warning and "wrong-pw" not in warning and password not in warning
        assert token not in warning


def test_an_unchanged_cache_is_not_pushed_again(tmp_path: Path, registry: Registry) -> None:
    """The same records give the same manifest: a second export (from another store that
    hit them all, some layers never fetched) sends nothing; a RUN after a hit runs over the
    layers it fetches."""
    a, b = stores(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    ref = f"{registry.host}/cache/app:buildcache"
    first = layercore.build(ctx, store=a, source_date_epoch=EPOCH, cache_to=[f"{ref},mode=max"])
    again = layercore.build(
        ctx, store=b, source_date_epoch=EPOCH, cache_from=[ref], cache_to=[f"{ref},mode=max"]
    )
    assert again.cache_exports[0].digest == first.cache_exports[0].digest
    assert again.cache_exports[0].push.manifest == "present"
    # A RUN over the hits: it needs their layers' snapshots in B.
    (ctx / "Dockerfile").write_text(
        (ctx / "Dockerfile").read_text() + "RUN cat /srv/base.txt /srv/out.txt > /both\n"
    )
    more = layercore.build(ctx, store=b, source_date_epoch=EPOCH, cache_from=[ref])
    assert b.load(more.digest).stack.read("both") == b"base\nalpha\n"
    assert os.path.exists(b.blob_path(more.image.layers[-1].digest))


def test_an_export_mounts_or_fetches_the_layers_it_never_fetched(
    tmp_path: Path, registry_factory: Any
) -> None:
    """Store B hits every step of a cache and exports mode=max: to another repository of the
    same registry, the layers B never fetched are mounted from the cache's repository (B
    still lacks them); to another registry, they are fetched and uploaded."""
    one, two = registry_factory(), registry_factory()
    a, b = stores(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    source = f"{one.host}/cache/app:1"
    first = layercore.build(ctx, store=a, source_date_epoch=EPOCH, cache_to=[f"{source},mode=max"])
    unread = [layered(first)[line][2] for line in (5, 6)]
    mark = one.mark()
    same = layercore.build(
        ctx, store=b, source_date_epoch=EPOCH, cache_from=[source],
        cache_to=[f"{one.host}/other/app:1,mode=max"],
    )  # fmt: skip
    [export] = same.cache_exports
    mounted = {r.digest: r.mounted_from for r in export.push.blobs if r.action == "mounted"}
    assert {d: mounted.get(d) for d in unread} == {d: "cache/app" for d in unread}
    assert not any(b.has_blob(d) for d in unread)
    assert not set(blob_gets(one, mark)) & set(unread)
    away = layercore.build(
        ctx, store=b, source_date_epoch=EPOCH, cache_from=[source],
        cache_to=[f"{two.host}/cache/app:1,mode=max"],
    )  # fmt: skip
    assert away.cache_exports[0].push.count("uploaded") == 7
    assert all(b.has_blob(d) for d in unread)
    _, config = read_cache(two, "cache/app", "1")
    assert [r["layer"]["digest"] for r in config["records"]] == [
        s[2] for s in layered(first).values()
    ]


def test_a_layer_that_cannot_be_fetched_fails_the_build(tmp_path: Path, registry: Registry) -> None:
    """A step hit, but its layer is gone from the registry when a later step reads it: the
    build fails naming the cache, the layer and the step, and tags nothing."""
    a, b = stores(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    ref = f"{registry.host}/cache/app:1"
    first = layered(
        layercore.build(ctx, store=a, source_date_epoch=EPOCH, cache_to=[f"{ref},mode=max"])
    )
    gone = first[4][2]
    request = urllib.request.Request(f"{registry.url}/v2/cache/app/blobs/{gone}", method="DELETE")
    with urllib.request.urlopen(request) as reply:
        assert reply.status == 202
    with pytest.raises(BuildError) as caught:
        layercore.build(ctx, store=b, tags=["app:1"], source_date_epoch=EPOCH, cache_from=[ref])
    message = str(caught.value)
    assert f"cache from {ref}" in message and gone in message and "[build:4]" in message
    assert "app:1" not in b.tags()


def test_a_workdir_over_layers_not_fetched_takes_its_directories_from_the_record(
    tmp_path: Path, registry: Registry
) -> None:
    """A WORKDIR after steps that hit without their layers being read keys on the directory
    attributes its record holds (the parent key names the tree below), so those layers are
    not fetched just to look at it; the USER it makes the directories for is part of its key,
    so another user misses and gets its own."""
    a, b = stores(tmp_path)
    c = Store(shutil.copytree(a.root, tmp_path / "c" / "store", symlinks=True))
    dockerfile = """
        FROM busybox:test AS build
        RUN busybox head -c 32 /dev/urandom > /rand
        USER {user}
        WORKDIR /made/here
        FROM busybox:test
        COPY --from=build /made /made
        """
    ctx = context(tmp_path, dockerfile.format(user="1000"))
    ref = f"{registry.host}/cache/workdir:1"
    first = layered(
        layercore.build(ctx, store=a, source_date_epoch=EPOCH, cache_to=[f"{ref},mode=max"])
    )
    result = layered(layercore.build(ctx, store=b, source_date_epoch=EPOCH, cache_from=[ref]))
    assert [cached for cached, _, _ in result.values()] == [True, True, True]
    assert not b.has_blob(first[2][2]) and not b.has_blob(first[4][2])  # RUN, WORKDIR
    (ctx / "Dockerfile").write_text(
        (ctx / "Dockerfile").read_text().replace("USER 1000", "USER 1001")
    )
    other = layercore.build(ctx, store=c, source_date_epoch=EPOCH, cache_from=[ref])
    assert [(line, cached) for line, (cached, _, _) in layered(other).items()] == [
        (2, True), (4, False), (6, False)
    ]  # fmt: skip
    workdir = layercore.Layer.open(c.blob_path(layered(other)[4][2]))
    owners = {e.path.rstrip("/"): (e.uid, e.gid) for e in workdir.entries()}
    assert owners == {"made": (1001, 1001), "made/here": (1001, 1001)}
