"""The build cache: a step whose key (its parent's key and its inputs, COPY's by content) has a
record is taken from it; every miss says why. Each rule has a test here that fails without it:
no false hit on content (same size and mtime), mode, owner, xattr or name; a touched mtime
hits; an ARG invalidates where it is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import layercore
from layercore import Store
from layercore.build import BuildResult
from test_build import EPOCH, busybox_store, context

DOCKERFILE = """
    FROM busybox:test
    ARG VERSION=1
    WORKDIR /app
    COPY app/ ./
    RUN echo "v$VERSION" > version.txt && cat a.txt > copy.txt
    LABEL stage=one
    RUN echo done > done.txt
    """
FILES = {"app/a.txt": "alpha\n", "app/sub/b.txt": "beta\n"}
TWO_STAGES = """
    FROM busybox:test AS build
    COPY app/ /app/
    RUN echo built > /app/out.txt
    FROM busybox:test
    COPY --from=build /app /srv
    """


def steps(result: BuildResult) -> list[tuple[int, bool, str | None]]:
    return [(s.line, s.cached, s.reason) for s in result.steps if s.layer is not None]


def test_an_unchanged_rebuild_takes_every_step_from_the_cache(tmp_path: Path) -> None:
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    first = layercore.build(ctx, store=store, tags=["app:1"], source_date_epoch=EPOCH)
    assert [(line, cached) for line, cached, _ in steps(first)] == [
        (3, False), (4, False), (5, False), (7, False)
    ]  # fmt: skip
    assert {reason for _, _, reason in steps(first)} == {"no cache record for this step"}
    again = layercore.build(ctx, store=store, tags=["app:2"], source_date_epoch=EPOCH)
    assert all(cached for _, cached, _ in steps(again))
    assert again.digest == first.digest
    # A touched mtime is no change.
    os.utime(ctx / "app" / "a.txt", (1, 1))
    touched = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert all(cached for _, cached, _ in steps(touched))
    # --no-cache runs everything, and says so.
    forced = layercore.build(ctx, store=store, no_cache=True, source_date_epoch=EPOCH)
    assert {(cached, reason) for _, cached, reason in steps(forced)} == {(False, "--no-cache")}
    # gc keeps the layers the cache records name, though no tag does.
    store.remove("app:1")
    store.remove("app:2")
    store.gc()
    rebuilt = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert all(cached for _, cached, _ in steps(rebuilt))


def test_every_change_to_a_source_misses_and_says_what(tmp_path: Path) -> None:
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    a = ctx / "app" / "a.txt"

    def rebuild() -> list[tuple[int, bool, str | None]]:
        return steps(layercore.build(ctx, store=store, source_date_epoch=EPOCH))

    # Same size, same mtime, new content: a miss, named, and the steps after it follow.
    st = a.stat()
    a.write_text("ALPHA\n")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = rebuild()
    assert result[0][1] is True  # WORKDIR
    assert result[1] == (4, False, "COPY app/ ./: 1 file changed: a.txt (content)")
    assert result[2] == (5, False, "parent changed (line 4)")
    assert result[3] == (7, False, "parent changed (line 4)")
    assert all(cached for _, cached, _ in rebuild())
    # Mode, owner, xattr, name: each a miss.
    os.chmod(a, 0o600)
    assert rebuild()[1] == (4, False, "COPY app/ ./: 1 file changed: a.txt (mode)")
    if os.geteuid() == 0:
        os.chown(a, 7, 7)
        assert rebuild()[1] == (4, False, "COPY app/ ./: 1 file changed: a.txt (owner)")
    os.setxattr(a, "user.tag", b"1")
    assert rebuild()[1] == (4, False, "COPY app/ ./: 1 file changed: a.txt (xattrs)")
    (ctx / "app" / "sub" / "b.txt").rename(ctx / "app" / "sub" / "c.txt")
    assert rebuild()[1] == (4, False, "COPY app/ ./: 1 file added, 1 removed")
    # One mode change over many files is named as such.
    os.chmod(a, 0o644)
    rebuild()
    for name in ("a.txt", "sub/c.txt"):
        os.chmod(ctx / "app" / name, 0o664)
    _line, _cached, reason = rebuild()[1]
    assert reason is not None and "on 2 files (umask?)" in reason


def test_build_args_and_instructions(tmp_path: Path) -> None:
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    layercore.build(ctx, store=store, build_args={"VERSION": "1.2"}, source_date_epoch=EPOCH)
    # The ARG changes where it is used (the RUN), not where it is defined.
    result = layercore.build(
        ctx, store=store, build_args={"VERSION": "1.3"}, source_date_epoch=EPOCH
    )
    assert steps(result)[:3] == [
        (3, True, None), (4, True, None), (5, False, "build arg VERSION changed: 1.2 → 1.3")
    ]  # fmt: skip
    image = store.load(result.digest)
    assert image.stack.read("app/version.txt") == b"v1.3\n"
    # A changed instruction names the old and the new text; a LABEL changes no key.
    (ctx / "Dockerfile").write_text(
        (ctx / "Dockerfile").read_text().replace("echo done", "echo finished")
        .replace("stage=one", "stage=two")
    )  # fmt: skip
    result = layercore.build(
        ctx, store=store, build_args={"VERSION": "1.3"}, source_date_epoch=EPOCH
    )
    assert steps(result)[:3] == [(3, True, None), (4, True, None), (5, True, None)]
    assert steps(result)[3] == (
        7, False, "instruction changed: RUN echo done > done.txt → RUN echo finished > done.txt"
    )  # fmt: skip


def test_explain_and_json_on_the_command_line(tmp_path: Path) -> None:
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    command = [sys.executable, "-m", "layercore", "--store", str(store.root), "build"]
    assert subprocess.run([*command, str(ctx)], capture_output=True).returncode == 0
    (ctx / "app" / "new.txt").write_text("n\n")
    done = subprocess.run(
        [*command, "--explain", "--progress", "plain", str(ctx)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "COPY app/ ./: 1 file added, 0 removed" in done.stderr
    assert "new.txt (added)" in done.stderr and "parent changed (line 4)" in done.stderr
    assert "CACHED" in done.stderr  # the WORKDIR step, in the progress lines
    as_json = subprocess.run(
        [*command, "--json", "--progress", "plain", str(ctx)], capture_output=True, text=True
    )
    steps_json = json.loads(as_json.stdout)["steps"]
    assert [s["cached"] for s in steps_json if s["layer"]] == [True, True, True, True]
    assert all("evidence" in s and "evidence_count" in s for s in steps_json)


def test_records_live_in_the_store(tmp_path: Path) -> None:
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    layercore.build(ctx, store=store)
    records = list((store.root / ".layercore" / "buildcache" / "steps").iterdir())
    assert len(records) == 4
    one = json.loads(records[0].read_text())
    assert {"key", "parent", "layer", "instruction", "line", "inputs"} <= set(one)
    assert Store(store.root).cache_record(one["key"]) is not None


def test_copy_from_a_stage_is_keyed_by_its_tree(tmp_path: Path) -> None:
    """COPY --from a stage hits while the stage's tree (its chain_id) is the same, without
    looking at it, and misses when the stage changed."""
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, TWO_STAGES, FILES)
    first = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    again = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert all(cached for _, cached, _ in steps(again)) and again.digest == first.digest
    (ctx / "app" / "a.txt").write_text("changed\n")
    changed = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    final = [s for s in changed.steps if s.stage == "1"]
    assert [(s.cached, s.reason) for s in final] == [(False, "from changed")]
    assert store.load(changed.digest).stack.read("srv/a.txt") == b"changed\n"


def test_compression_and_source_date_epoch_are_part_of_the_key(tmp_path: Path) -> None:
    """A layer written with other compression, or clamped to another epoch, has other bytes:
    no hit across them."""
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, DOCKERFILE, FILES)
    gz = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    zst = layercore.build(ctx, store=store, source_date_epoch=EPOCH, compression="zstd")
    assert not any(cached for _, cached, _ in steps(zst))
    assert {layer.compression for layer in store.load(zst.digest).layers[1:]} == {"zstd"}
    later = layercore.build(ctx, store=store, source_date_epoch=EPOCH + 100)
    assert not any(cached for _, cached, _ in steps(later))
    assert layercore.build(ctx, store=store, source_date_epoch=EPOCH).digest == gz.digest


def test_a_locked_cache_mount_serialises_concurrent_builds(tmp_path: Path) -> None:
    """Two builds in two processes share a cache mount with ``sharing=locked``: the second
    step waits for the first, so their lines in the shared file never interleave; the file
    persists in the store."""
    store = busybox_store(tmp_path)
    contexts = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        contexts.append(
            context(
                tmp_path / name,
                f"""
                FROM busybox:test
                RUN --mount=type=cache,id=shared,target=/cache,sharing=locked \\
                    echo {name}-start >> /cache/log && sleep 1 && echo {name}-end >> /cache/log
                """,
            )
        )
    command = [sys.executable, "-m", "layercore", "--store", str(store.root), "build"]
    procs = [subprocess.Popen([*command, str(c)], stderr=subprocess.PIPE) for c in contexts]
    assert [p.wait(60) for p in procs] == [0, 0]
    cache = store.cache_mount("shared")
    lines = (cache / "log").read_text().split()
    assert sorted(lines) == ["one-end", "one-start", "two-end", "two-start"]
    first = lines[0].split("-")[0]
    assert lines[:2] == [f"{first}-start", f"{first}-end"]


def test_no_cache_filter_reruns_one_stage(tmp_path: Path) -> None:
    """--no-cache-filter STAGE runs that stage's steps again and leaves the others to the
    cache; a stage rebuilt to the same tree keeps the COPY --from after it a hit."""
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, TWO_STAGES, FILES)
    first = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    again = layercore.build(ctx, store=store, source_date_epoch=EPOCH, no_cache=["build"])
    assert [(s.stage, s.cached, s.reason) for s in again.steps if s.layer] == [
        ("build", False, "--no-cache-filter build"),
        ("build", False, "--no-cache-filter build"),
        ("1", True, None),
    ]
    assert again.digest == first.digest
    command = [sys.executable, "-m", "layercore", "--store", str(store.root), "build"]
    done = subprocess.run(
        [*command, "--no-cache-filter", "1", "--json", str(ctx)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    final = [s for s in json.loads(done.stdout)["steps"] if s["stage"] == "1"]
    assert [s["reason"] for s in final] == ["--no-cache-filter 1"]


def test_copy_link_does_not_depend_on_the_layers_below(tmp_path: Path) -> None:
    """COPY --link's layer is made without looking at the image below, so it stays a hit when
    a step before it changes (a plain COPY misses with "parent changed")."""
    store = busybox_store(tmp_path)
    dockerfile = """
        FROM busybox:test
        RUN echo {word} > /word
        COPY --link app/ /srv/app/
        COPY app/a.txt /plain.txt
        """
    ctx = context(tmp_path, dockerfile.format(word="one"), FILES)
    layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile.format(word="two")).lstrip())
    result = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert [(s.line, s.cached, s.reason) for s in result.steps if s.layer] == [
        (2, False, "instruction changed: RUN echo one > /word → RUN echo two > /word"),
        (3, True, None),
        (4, False, "parent changed (line 2)"),
    ]
    image = store.load(result.digest)
    assert image.stack.read("srv/app/a.txt") == b"alpha\n" and image.stack.read("word") == b"two\n"
    srv = image.stack.lookup("srv")
    assert srv is not None and (srv.kind, srv.mode & 0o777, srv.uid) == ("dir", 0o755, 0)


def test_prune_trims_the_cache(tmp_path: Path) -> None:
    """prune removes records (least recently used first) and then the layers nothing uses:
    by default only records whose layer no image has; --until spares recent ones;
    --keep-storage stops at a size; --all takes the rest."""
    store = busybox_store(tmp_path)
    ctx = context(tmp_path, TWO_STAGES, FILES)
    layercore.build(ctx, store=store, tags=["app:1"], source_date_epoch=EPOCH)
    records = store.root / ".layercore" / "buildcache" / "steps"
    assert len(list(records.iterdir())) == 3
    assert store.prune_cache(until=3600).records == 0  # all used just now
    assert store.prune_cache(all_records=True, keep_storage=10**9).records == 0
    # Default: the build stage's two records (their layers are in no image) go, with them.
    report = store.prune_cache()
    assert report.records == 2 and report.bytes_freed > 0 and len(list(records.iterdir())) == 1
    again = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert [(s.stage, s.cached) for s in again.steps if s.layer] == [
        ("build", False), ("build", False), ("1", True)
    ]  # fmt: skip
    command = [sys.executable, "-m", "layercore", "--store", str(store.root), "prune"]
    done = subprocess.run([*command, "--all", "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["records"] == 3
    assert list(records.iterdir()) == []
    assert store.load("app:1").stack.read("srv/out.txt") == b"built\n"  # images keep theirs
    for bad in (["--keep-storage", "lots"], ["--until", "soon"]):
        assert subprocess.run([*command, *bad], capture_output=True).returncode == 2
    plain = subprocess.run([*command, "--keep-storage", "1.5GiB", "--until", "1h30m"],
                           capture_output=True, text=True)  # fmt: skip
    assert plain.returncode == 0 and "removed 0 cache records" in plain.stdout


def test_add_with_checksum_is_keyed_by_it_and_without_by_the_download(
    tmp_path: Path, web: str
) -> None:
    """`ADD --checksum URL`: the checksum is the key, so a rebuild hits without downloading
    (the server now sends other bytes, which would fail the checksum). Without --checksum
    the downloaded content is the key: new bytes at the URL miss, and say which file."""
    import hashlib

    store = busybox_store(tmp_path)
    served = tmp_path / "www" / "tool.bin"
    served.write_bytes(b"version one\n")
    digest = "sha256:" + hashlib.sha256(b"version one\n").hexdigest()
    ctx = context(
        tmp_path,
        f"""
        FROM busybox:test
        ADD --checksum={digest} {web}/tool.bin /pinned.bin
        ADD {web}/tool.bin /opt/
        """,
    )
    first = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    assert [cached for _, cached, _ in steps(first)] == [False, False]
    served.write_bytes(b"version TWO\n")
    again = layercore.build(ctx, store=store, source_date_epoch=EPOCH)
    (pinned, _, _), (line, cached, reason) = steps(again)
    assert [s.cached for s in again.steps if s.line == pinned] == [True]
    assert (line, cached) == (3, False)
    assert reason == f"ADD {web}/tool.bin /opt/: 1 file changed: tool.bin (content)"
    image = store.load(again.digest)
    assert image.stack.read("pinned.bin") == b"version one\n"
    assert image.stack.read("opt/tool.bin") == b"version TWO\n"


def test_run_mounts_in_the_key_and_in_the_reasons(tmp_path: Path) -> None:
    """A bind mount adds the checksum of what it binds (a change names the mount); a cache
    mount's contents never enter the key; a changed --mount spec is a changed instruction."""
    store = busybox_store(tmp_path)
    run = (
        "RUN --mount=type=bind,source=conf,target=/conf "
        "--mount=type=cache,target=/cache "
        "cat /conf/x > /y && echo ran >> /cache/log"
    )
    ctx = context(tmp_path, f"FROM busybox:test\n{run}\n", {"conf/x": "one\n"})

    def rebuild() -> tuple[bool, str | None]:
        ((_, cached, reason),) = steps(layercore.build(ctx, store=store))
        return cached, reason

    assert rebuild() == (False, "no cache record for this step")
    # The cache mount's contents changed (the step appended to it): still a hit.
    assert len(store.cache_mount("/cache").joinpath("log").read_text().split()) == 1
    assert rebuild() == (True, None)
    (ctx / "conf" / "x").write_text("two\n")
    assert rebuild() == (
        False,
        "bind mount /conf changed: what it binds (conf) changed",
    )
    assert rebuild() == (True, None)
    (ctx / "Dockerfile").write_text(
        f"FROM busybox:test\n{run.replace('target=/conf', 'target=/conf,ro')}\n"
    )
    cached, reason = rebuild()
    assert not cached and reason is not None
    assert reason.startswith("instruction changed: RUN --mount=type=bind,source=conf,target=/conf ")
