"""Build containment (docs/RELIABILITY.md, "Build containment").

RUN cannot write outside its root filesystem nor read the host's files beyond what is mounted;
COPY never reads outside its context (or the stage it copies from), even through a symlink; a
``--mount=type=secret`` value reaches no layer (decompressed), no config or history, no build
cache record or key, and no file of the store.
"""

from __future__ import annotations

import gzip
import os
import secrets
import uuid
from pathlib import Path

import pytest

import layercore
from layercore import Store
from layercore.build import DockerfileError
from test_build import busybox_store, context

# ----- helpers ---------------------------------------------------------------------------------


def host_sentinel(base: Path) -> tuple[Path, dict[str, bytes]]:
    """A directory of the host the build must neither write nor read, and its contents."""
    sentinel = base / "host-sentinel"
    sentinel.mkdir()
    files = {"secret.txt": b"host-only " + secrets.token_hex(8).encode() + b"\n"}
    for name, data in files.items():
        (sentinel / name).write_bytes(data)
    return sentinel, files


def unchanged(sentinel: Path, files: dict[str, bytes]) -> None:
    assert sorted(p.name for p in sentinel.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (sentinel / name).read_bytes() == data


def layer_bytes(store: Store, image: layercore.Image) -> list[bytes]:
    """Every layer's uncompressed tar stream."""
    out = []
    for layer in image.layers:
        data = layer.path.read_bytes()
        out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return busybox_store(tmp_path)


# ----- RUN -------------------------------------------------------------------------------------


def test_run_cannot_write_outside_its_rootfs(store: Store, tmp_path: Path) -> None:
    sentinel, files = host_sentinel(tmp_path)
    host_file = f"/layercore-containment-{uuid.uuid4().hex}"
    ctx = context(
        tmp_path,
        f"""
        FROM busybox:test
        RUN touch {host_file}
        RUN mkdir -p {sentinel} && echo pwned > {sentinel}/secret.txt && echo pwned > {sentinel}/new
        RUN echo pwned > /proc/1/root/via-proc-root 2>/dev/null; ls /proc/1/root > /proc-root-ls
        RUN cat /proc/mounts > /mounts
        RUN (echo pwned > /proc/sys/kernel/hostname) 2>/dev/null; echo done > /sysctl
        """,
    )
    image = store.load(layercore.build(ctx, store=store).digest)
    assert not os.path.exists(host_file), "RUN wrote to the host's /"
    unchanged(sentinel, files)
    view = image.stack
    # What the commands wrote landed in the image's own tree instead.
    assert view.lookup(host_file.lstrip("/")) is not None
    assert view.read(f"{str(sentinel).lstrip('/')}/secret.txt") == b"pwned\n"
    # /proc/1 is the sandbox's own first process, whose root is the rootfs.
    assert view.read("via-proc-root") == b"pwned\n"
    assert b"bin" in view.read("proc-root-ls").split()
    assert os.uname().nodename != "pwned"
    # Nothing of the host is mounted but /proc, /dev and (with a network) /etc/hosts and
    # /etc/resolv.conf, read-only.
    mounted = {line.split()[1] for line in view.read("mounts").decode().splitlines()}
    assert str(tmp_path) not in " ".join(mounted)
    assert not any(m.startswith(("/home", "/root", "/work", "/tmp/")) for m in mounted), mounted


def test_run_cannot_read_host_files_that_are_not_mounted(store: Store, tmp_path: Path) -> None:
    sentinel, files = host_sentinel(tmp_path)
    ctx = context(
        tmp_path,
        f"""
        FROM busybox:test
        RUN (cat {sentinel}/secret.txt || echo absent) > /read 2>/dev/null
        RUN cat /etc/passwd > /passwd
        RUN (cat /proc/1/root{sentinel}/secret.txt || echo absent) > /via-proc 2>/dev/null
        RUN (ls /proc | grep -c '^[0-9]' || true) > /pids
        """,
    )
    image = store.load(layercore.build(ctx, store=store).digest)
    view = image.stack
    assert view.read("read") == b"absent\n"
    assert view.read("via-proc") == b"absent\n"
    # /etc/passwd is the image's, not the host's.
    assert view.read("passwd") == image.stack.read("etc/passwd")
    assert view.read("passwd") != Path("/etc/passwd").read_bytes()
    # A PID namespace: the sandbox sees its own few processes, not the host's.
    assert int(view.read("pids")) < 10
    for blob in layer_bytes(store, image):
        assert files["secret.txt"] not in blob
    unchanged(sentinel, files)


def test_run_with_network_none_sees_no_host_file_at_all(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        RUN --network=none (cat /etc/resolv.conf || echo absent) > /resolv 2>/dev/null
        """,
    )
    view = store.load(layercore.build(ctx, store=store).digest).stack
    assert view.read("resolv") == b"absent\n"


# ----- COPY ------------------------------------------------------------------------------------


def outside_context(tmp_path: Path) -> tuple[Path, bytes]:
    """A directory beside the context with a file the context must not reach."""
    outside = tmp_path / "outside"
    outside.mkdir()
    data = b"outside " + secrets.token_hex(8).encode() + b"\n"
    (outside / "passwd").write_bytes(data)
    return outside, data


def test_copy_of_a_symlink_to_a_host_file_copies_the_link(store: Store, tmp_path: Path) -> None:
    outside, data = outside_context(tmp_path)
    ctx = context(tmp_path, "FROM busybox:test\nCOPY p rel /\nCOPY p /q\n")
    os.symlink(outside / "passwd", ctx / "p")
    os.symlink("../outside/passwd", ctx / "rel")
    image = store.load(layercore.build(ctx, store=store).digest)
    view = image.stack
    for name, target in [("p", str(outside / "passwd")), ("rel", "../outside/passwd"),
                         ("q", str(outside / "passwd"))]:  # fmt: skip
        entry = view.lookup(name)
        assert entry is not None and entry.kind == "symlink" and entry.linkname == target
    assert all(data not in blob for blob in layer_bytes(store, image))


@pytest.mark.parametrize(
    "dockerfile",
    [
        "COPY dir/passwd /x",  # a file below a symlinked directory
        "COPY dir/pass* /x/",  # a wildcard below it
        "COPY dir/* /x/",
        "COPY */passwd /x/",  # a wildcard in the directory part
        "COPY rel/passwd /x",  # a relative link that climbs out
        "COPY --parents dir/passwd /x/",
    ],
)
def test_copy_never_reads_through_a_symlinked_directory_out_of_the_context(
    store: Store, tmp_path: Path, dockerfile: str
) -> None:
    outside, data = outside_context(tmp_path)
    ctx = context(tmp_path, f"FROM busybox:test\n{dockerfile}\n")
    os.symlink(outside, ctx / "dir")
    os.symlink("../outside", ctx / "rel")
    # The links resolve inside the context, where there is no such file.
    with pytest.raises(DockerfileError, match=r"not in the build context|matches no file"):
        layercore.build(ctx, store=store)
    assert not any(data in p.read_bytes() for p in store.root.rglob("*") if p.is_file())


def test_copy_follows_a_symlinked_directory_that_stays_inside(store: Store, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        "FROM busybox:test\nCOPY link/file /a\nCOPY link/* /b/\nCOPY abs/file /c\n",
        {"real/file": "inside\n"},
    )
    os.symlink("real", ctx / "link")
    os.symlink("/real", ctx / "abs")  # absolute: resolved from the context's root, as BuildKit
    view = store.load(layercore.build(ctx, store=store).digest).stack
    assert view.read("a") == view.read("b/file") == view.read("c") == b"inside\n"


def test_copy_from_a_stage_never_reads_the_host_through_its_symlinks(
    store: Store, tmp_path: Path
) -> None:
    outside, data = outside_context(tmp_path)
    ctx = context(
        tmp_path,
        f"""
        FROM busybox:test AS planted
        RUN ln -s {outside} /dir
        FROM busybox:test
        COPY --from=planted /dir/passwd /x
        """,
    )
    # The link resolves inside the stage's tree, where there is no such file.
    with pytest.raises(DockerfileError, match="not in the build context"):
        layercore.build(ctx, store=store)
    assert not any(data in p.read_bytes() for p in store.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("source", ["../outside/passwd", "/../outside/passwd", "a/../../x"])
def test_copy_sources_with_dot_dot_are_refused(store: Store, tmp_path: Path, source: str) -> None:
    outside_context(tmp_path)
    ctx = context(tmp_path, f"FROM busybox:test\nCOPY {source} /x\n", {"a/f": "f"})
    with pytest.raises(layercore.errors.LayerError, match="outside the build context"):
        layercore.build(ctx, store=store)


# ----- secrets ---------------------------------------------------------------------------------


def test_a_secret_reaches_no_layer_history_cache_record_or_key(
    store: Store, tmp_path: Path
) -> None:
    value = "s3cr3t-" + secrets.token_hex(12)
    secret_file = tmp_path / "token"
    secret_file.write_text(value)
    ctx = context(
        tmp_path,
        """
        FROM busybox:test
        RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /length
        RUN --mount=type=secret,id=tok,target=/etc/tok cp /etc/tok /dev/null && echo ok > /ok
        """,
    )
    result = layercore.build(ctx, store=store, secrets={"tok": secret_file})
    image = store.load(result.digest)
    assert image.stack.read("length").strip() == str(len(value)).encode()
    needle = value.encode()
    for blob in layer_bytes(store, image):
        assert needle not in blob
    assert needle not in image.config_bytes and needle not in image.manifest_bytes
    assert all(value not in (h.created_by or "") for h in image.history)
    # Every file of the store: blobs (compressed ones decompressed), cache records and keys,
    # indexes, snapshots.
    for path in store.root.rglob("*"):
        assert value not in path.name
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            assert needle not in data, path
    records = store.root / ".layercore" / "buildcache"
    assert records.exists() and any(records.rglob("*")), "the steps were recorded"
    # The secret's value is no input of a cache key: another value hits the same records.
    secret_file.write_text("another-" + secrets.token_hex(12))
    again = layercore.build(ctx, store=store, secrets={"tok": secret_file})
    assert again.digest == result.digest


def test_a_secret_file_outside_the_context_is_not_copyable(store: Store, tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("s3cr3t")
    ctx = context(tmp_path, "FROM busybox:test\nCOPY ../token /t\n")
    with pytest.raises(layercore.errors.LayerError, match="outside the build context"):
        layercore.build(ctx, store=store, secrets={"tok": secret_file})
