"""Layer-building benchmarks: layercore against the pure-Python reference and the CLI pipelines.

Every row of a group is measured in the same run, one after the other on the same warm tree, so
the ratios between rows are what the report trusts (absolute times on a shared machine are not).
Groups are ``<what>/<tree>``; ``extra_info`` carries ``tool``, ``subject`` (the layercore row the
others are compared with), ``bytes_in`` (file content bytes read) and ``bytes_out``.

Timings are never asserted; the only assertions are correctness checks (equal digests).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import layercore
import rss
import trees
from layercore import reference

SMOKE = trees.smoke_mode()

# Rounds per contender. The reference is slow on 250 MB, so it gets fewer; medians are reported.
LC_ROUNDS = 1 if SMOKE else 5
CLI_ROUNDS = 1 if SMOKE else 3
REF_ROUNDS = 1 if SMOKE else 2
REF_GZIP_ROUNDS = 1 if SMOKE else 2

LC = "layercore"
REF = "reference"

TreeGetter = Callable[[str], trees.Tree]

# short test ids for the contenders
_IDS = {
    LC: "layercore",
    REF: "reference",
    "tar | openssl dgst": "tar-openssl",
    "tar | pigz -1": "tar-pigz",
    "tar | zstd -1 -T0": "tar-zstd",
}


def _tar(tree: trees.Tree) -> str:
    return f"tar --sort=name --format=posix -cf - -C {shlex.quote(str(tree.path))} ."


def _sh(cmd: str) -> str:
    """Run a shell pipeline; any failing stage fails the benchmark."""
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.PIPE, text=True
    )
    return res.stdout


def _bench(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    group: str,
    tree: trees.Tree,
    tool: str,
    rounds: int,
    subject: bool = False,
    out: Path | None = None,
    bytes_in: int | None = None,
    **extra: Any,
) -> Any:
    """Time ``fn`` with pytest-benchmark (or run it once when benchmarks are disabled).

    ``out`` is deleted before every round (outside the timing) and after the last one. Every
    round starts from a clean page cache state: ``os.sync()`` in the untimed setup flushes the
    previous round's output, so no round pays for another's writeback (the outputs are up to
    800 MB; on this machine's disk that writeback otherwise lands in whichever round comes next).
    """
    benchmark.group = f"{group}/{tree.name}"
    info = benchmark.extra_info
    info.update(
        tool=tool,
        subject=subject,
        tree=tree.name,
        tree_info={k: v for k, v in tree.info().items() if k not in ("name", "path")},
        bytes_in=tree.bytes if bytes_in is None else bytes_in,
        bytes_out=None,
    )
    info.update(extra)

    def setup() -> None:
        if out is not None:
            out.unlink(missing_ok=True)
        if not SMOKE:
            os.sync()

    try:
        result = benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1)
        if isinstance(result, (layercore.Layer, reference.Layer)):
            info.update(
                bytes_out=result.size,
                tar_bytes=result.uncompressed_size,
                digest=result.digest,
                diff_id=result.diff_id,
            )
        elif out is not None and out.exists():
            info["bytes_out"] = out.stat().st_size
        return result
    finally:
        setup()


def _build(
    cls: Any, tree: trees.Tree, out: Path, compression: str | None, **kw: Any
) -> Callable[[], Any]:
    level = None if compression is None else 1
    return lambda: cls.from_dir(tree.path, out, compression=compression, level=level, **kw)


# --------------------------------------------------------------------------------------------
# tar + diff_id, no compression


@pytest.mark.parametrize(
    ("tree_name", "tool"),
    [
        pytest.param(t, tool, id=f"{t}-{_IDS[tool]}")
        for t in ("small", "stdlib")
        for tool in (LC, REF, "tar | openssl dgst")
    ],
)
def test_tar_diff_id(
    benchmark: Any, tree: TreeGetter, outdir: Path, tree_name: str, tool: str
) -> None:
    t = tree(tree_name)
    out = outdir / "layer.tar"
    group = "tar+diff_id"
    if tool == LC:
        fn = _build(layercore.Layer, t, out, None)
        _bench(
            benchmark, fn, group=group, tree=t, tool=tool, rounds=LC_ROUNDS, subject=True, out=out
        )
    elif tool == REF:
        fn = _build(reference.Layer, t, out, None)
        _bench(benchmark, fn, group=group, tree=t, tool=tool, rounds=REF_ROUNDS, out=out)
    else:
        # The CLI pipeline hashes the tar stream without writing it anywhere.
        cmd = f"{_tar(t)} | openssl dgst -sha256"
        _bench(
            benchmark,
            lambda: _sh(cmd),
            group=group,
            tree=t,
            tool=tool,
            rounds=CLI_ROUNDS,
            command=cmd,
            writes_output=False,
        )


# --------------------------------------------------------------------------------------------
# gzip level 1

# digest of every gzip-1 layer of `big`, by thread setting: all must be equal
_GZIP_BIG_DIGESTS: dict[int | None, str] = {}


@pytest.mark.parametrize(
    ("tree_name", "tool"),
    [
        pytest.param(t, tool, id=f"{t}-{_IDS[tool]}")
        for t in ("small", "big", "stdlib")
        for tool in (LC, "tar | pigz -1", REF)
        if not (t == "big" and tool == REF)  # far too slow on 768 MiB, and says nothing new
    ],
)
def test_gzip1(benchmark: Any, tree: TreeGetter, outdir: Path, tree_name: str, tool: str) -> None:
    t = tree(tree_name)
    out = outdir / "layer.tar.gz"
    group = "gzip-1"
    if tool == LC:
        fn = _build(layercore.Layer, t, out, "gzip")
        layer = _bench(
            benchmark, fn, group=group, tree=t, tool=tool, rounds=LC_ROUNDS, subject=True, out=out
        )
        if tree_name == "big":
            _GZIP_BIG_DIGESTS[None] = layer.digest
    elif tool == REF:
        fn = _build(reference.Layer, t, out, "gzip")
        _bench(benchmark, fn, group=group, tree=t, tool=tool, rounds=REF_GZIP_ROUNDS, out=out)
    else:
        cmd = f"{_tar(t)} | pigz -1 > {shlex.quote(str(out))}"
        _bench(
            benchmark,
            lambda: _sh(cmd),
            group=group,
            tree=t,
            tool=tool,
            rounds=CLI_ROUNDS,
            out=out,
            command=cmd,
        )


# --------------------------------------------------------------------------------------------
# zstd level 1


@pytest.mark.parametrize(
    ("tree_name", "tool"),
    [
        pytest.param(t, tool, id=f"{t}-{_IDS[tool]}")
        for t in ("small", "big", "stdlib")
        for tool in (LC, "tar | zstd -1 -T0")
    ],
)
def test_zstd1(benchmark: Any, tree: TreeGetter, outdir: Path, tree_name: str, tool: str) -> None:
    t = tree(tree_name)
    out = outdir / "layer.tar.zst"
    group = "zstd-1"
    if tool == LC:
        fn = _build(layercore.Layer, t, out, "zstd")
        _bench(
            benchmark, fn, group=group, tree=t, tool=tool, rounds=LC_ROUNDS, subject=True, out=out
        )
    else:
        cmd = f"{_tar(t)} | zstd -1 -T0 -q > {shlex.quote(str(out))}"
        _bench(
            benchmark,
            lambda: _sh(cmd),
            group=group,
            tree=t,
            tool=tool,
            rounds=CLI_ROUNDS,
            out=out,
            command=cmd,
        )


# --------------------------------------------------------------------------------------------
# SHA-256 throughput on big files


@pytest.mark.parametrize("tool", [LC, "openssl dgst -sha256"], ids=["layercore", "openssl"])
def test_sha256_layer(benchmark: Any, tree: TreeGetter, outdir: Path, tool: str) -> None:
    """An uncompressed layer of `big` (diff_id = digest) against openssl hashing the same files."""
    t = tree("big")
    if tool == LC:
        out = outdir / "layer.tar"
        fn = _build(layercore.Layer, t, out, None)
        _bench(
            benchmark,
            fn,
            group="sha256",
            tree=t,
            tool=tool,
            rounds=LC_ROUNDS,
            subject=True,
            out=out,
        )
    else:
        files = " ".join(shlex.quote(str(p)) for p in trees.regular_files(t))
        cmd = f"openssl dgst -sha256 {files}"
        _bench(
            benchmark,
            lambda: _sh(cmd),
            group="sha256",
            tree=t,
            tool=tool,
            rounds=CLI_ROUNDS,
            command=cmd,
            writes_output=False,
        )


@pytest.mark.parametrize(
    "tool", ["layercore.sha256_file", "openssl dgst -sha256"], ids=["layercore", "openssl"]
)
def test_sha256_file(benchmark: Any, tree: TreeGetter, tool: str) -> None:
    """layercore.sha256_file on one big file against openssl on that file."""
    t = tree("big")
    path = trees.regular_files(t)[0]
    size = path.stat().st_size
    group = "sha256-file"
    if tool == "layercore.sha256_file":
        digest = _bench(
            benchmark,
            lambda: layercore.sha256_file(path),
            group=group,
            tree=t,
            tool=tool,
            rounds=LC_ROUNDS,
            subject=True,
            bytes_in=size,
            file=path.name,
            writes_output=False,
        )
        assert digest.startswith("sha256:")
    else:
        cmd = f"openssl dgst -sha256 {shlex.quote(str(path))}"
        _bench(
            benchmark,
            lambda: _sh(cmd),
            group=group,
            tree=t,
            tool=tool,
            rounds=CLI_ROUNDS,
            bytes_in=size,
            command=cmd,
            file=path.name,
            writes_output=False,
        )


# --------------------------------------------------------------------------------------------
# thread scaling (gzip-1 on big)


@pytest.mark.parametrize("threads", [1, 2], ids=["threads1", "threads2"])
def test_threads_gzip(benchmark: Any, tree: TreeGetter, outdir: Path, threads: int) -> None:
    t = tree("big")
    out = outdir / "layer.tar.gz"
    fn = _build(layercore.Layer, t, out, "gzip", threads=threads)
    layer = _bench(
        benchmark,
        fn,
        group="threads-gzip-1",
        tree=t,
        tool=f"layercore threads={threads}",
        rounds=LC_ROUNDS,
        subject=threads == 2,
        out=out,
        threads=threads,
    )
    _GZIP_BIG_DIGESTS[threads] = layer.digest
    # Correctness, not timing: the gzip bytes must not depend on the thread count.
    other = 2 if threads == 1 else 1
    if other not in _GZIP_BIG_DIGESTS:
        try:
            _GZIP_BIG_DIGESTS[other] = layercore.Layer.from_dir(
                t.path, out, compression="gzip", level=1, threads=other
            ).digest
        finally:
            out.unlink(missing_ok=True)
    assert len(set(_GZIP_BIG_DIGESTS.values())) == 1, _GZIP_BIG_DIGESTS


# --------------------------------------------------------------------------------------------
# peak RSS


def test_peak_rss(benchmark: Any, tree: TreeGetter, outdir: Path) -> None:
    """Peak RSS of child processes building layers (see rss.py); the time is meaningless."""
    paths = {name: tree(name).path for name in ("small", "big")}
    benchmark.group = "rss"
    results = benchmark.pedantic(rss.run_probes, args=(paths, outdir), rounds=1, iterations=1)
    benchmark.extra_info.update(
        tool="rss probes", subject=False, rss=[r.as_dict() for r in results]
    )
