"""Changeset-engine benchmarks: flatten, merged index, lookups, diff and extract.

Each group times layercore (the subject) against an honest pure-Python baseline (and the CLI
where one exists) in the same run, on the same warm inputs. ``stack5`` is a gzip layer of a
~10,000-file tree plus four changeset layers (see ``trees.get_stack5``); ``small-b`` is a copy of
``small`` with ~10 % of its entries changed. Timings are never asserted; the assertions are
correctness checks (the merged views agree).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import layercore
import rss
import trees
from layercore import reference

SMOKE = trees.smoke_mode()
LC_ROUNDS = 1 if SMOKE else 5
PY_ROUNDS = 1 if SMOKE else 2
CLI_ROUNDS = 1 if SMOKE else 3
LOOKUP_ROUNDS = 1 if SMOKE else 10

LC = "layercore"
PY_FLATTEN = "pure-Python flatten"
REF_FLATTEN = "reference.Stack.flatten"
PY_INDEX = "pure-Python merged index"
LC_LOOKUP = "layercore lookup"
LC_LOOKUP_MANY = "layercore lookup_many"
PY_LOOKUP = "dict lookup (pure-Python index)"
PY_DIFF = "pure-Python diff"
FIND = "find -printf"
TAR_X = "tar -xf"
LC_SNAPSHOT = "layercore snapshot"

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@pytest.fixture(scope="module")
def stack5() -> trees.StackTree:
    s = trees.get_stack5()
    for blob in s.layers:  # warm the page cache, like trees.warm
        blob.read_bytes()
    return s


def _info(
    benchmark: Any, group: str, tree: trees.Tree, tool: str, subject: bool, **kw: Any
) -> None:
    benchmark.group = f"{group}/{tree.name}"
    benchmark.extra_info.update(
        tool=tool,
        subject=subject,
        tree=tree.name,
        tree_info={k: v for k, v in tree.info().items() if k not in ("name", "path")},
        bytes_in=tree.bytes,
        bytes_out=None,
    )
    benchmark.extra_info.update(kw)


def _run(
    benchmark: Any,
    fn: Callable[[], Any],
    rounds: int,
    cleanup: Callable[[], None] | None = None,
    *,
    keep_last: bool = False,
) -> Any:
    """pedantic timing; ``cleanup`` runs (untimed) before every round and, unless
    ``keep_last``, after the last one too. ``os.sync()`` flushes the previous round's writes."""

    def setup() -> None:
        if cleanup is not None:
            cleanup()
        if not SMOKE:
            os.sync()

    try:
        return benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1)
    finally:
        if not keep_last:
            setup()


def _sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# pure-Python merge (top-down, like google/containerregistry's docker_image_.extract)


def _norm(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _parents(name: str) -> Iterator[str]:
    i = name.find("/")
    while i >= 0:
        yield name[:i]
        i = name.find("/", i + 1)


def _py_merge(
    layers: tuple[Path, ...], emit: Callable[[tarfile.TarFile, tarfile.TarInfo, int], None]
) -> dict[str, tuple[int, tarfile.TarInfo]]:
    """Visits the layers top layer first; ``emit`` gets each visible entry once (the highest).

    A whiteout hides the path and everything below it in lower layers, an opaque marker hides
    the directory's lower children, and a non-directory hides lower entries below its path. A
    layer's own whiteouts take effect only after the layer, so they never hide its own entries.
    """
    index: dict[str, tuple[int, tarfile.TarInfo]] = {}
    gone: set[str] = set()  # path and descendants hidden
    opaque: set[str] = set()  # descendants hidden
    for n in range(len(layers) - 1, -1, -1):
        new_gone: list[str] = []
        new_opaque: list[str] = []
        # "r:gz" (gzip.GzipFile), not the stream mode "r|gz": tarfile's stream reader stops
        # after the first gzip member, and multi-threaded gzip writers (pigz, layercore)
        # write several. It still reads each blob front to back once.
        with tarfile.open(layers[n], "r:gz") as tar:
            for m in tar:
                name = _norm(m.name)
                if not name:
                    continue
                parent, _, base = name.rpartition("/")
                if base == OPAQUE:
                    new_opaque.append(parent)
                    continue
                if base.startswith(WHITEOUT):
                    new_gone.append(f"{parent}/{base[4:]}" if parent else base[4:])
                    continue
                if name in index or name in gone:
                    continue
                hidden = False
                for a in _parents(name):
                    hit = index.get(a)
                    if a in gone or a in opaque or (hit is not None and not hit[1].isdir()):
                        hidden = True
                        break
                if hidden:
                    continue
                index[name] = (n, m)
                emit(tar, m, n)
        gone.update(new_gone)
        opaque.update(new_opaque)
    return index


def _py_index(layers: tuple[Path, ...]) -> dict[str, tuple[int, tarfile.TarInfo]]:
    return _py_merge(layers, lambda tar, m, n: None)


def _py_flatten(layers: tuple[Path, ...], out: Path) -> None:
    with tarfile.open(out, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as dst:

        def emit(tar: tarfile.TarFile, m: tarfile.TarInfo, n: int) -> None:
            dst.addfile(m, tar.extractfile(m) if m.isreg() else None)

        _py_merge(layers, emit)


# --------------------------------------------------------------------------------------------
# flatten


@pytest.mark.parametrize(
    "tool", [LC, REF_FLATTEN, PY_FLATTEN], ids=["layercore", "reference", "python"]
)
def test_flatten(benchmark: Any, stack5: trees.StackTree, outdir: Path, tool: str) -> None:
    """Every contender starts from the blobs: building the view is part of the time (the
    reference spools the bodies while it builds its view, layercore indexes the blobs and then
    streams them again, the pure-Python flatten does one pass)."""
    t, layers = stack5.tree, stack5.layers
    out = outdir / "flat.tar.gz"
    kw = {"bytes_in": sum(p.stat().st_size for p in layers), "layers": len(layers)}
    blobs = list(layers)
    if tool == LC:
        _info(benchmark, "flatten", t, LC, True, **kw)
        fn: Callable[[], Any] = lambda: layercore.Stack(blobs).flatten(  # noqa: E731
            out, compression="gzip", level=1
        )
    elif tool == REF_FLATTEN:
        if not hasattr(getattr(reference, "Stack", None), "flatten"):
            pytest.skip("layercore.reference has no Stack.flatten (yet)")
        _info(benchmark, "flatten", t, REF_FLATTEN, False, **kw)
        fn = lambda: reference.Stack(blobs).flatten(  # noqa: E731
            out, compression="gzip", level=1
        )
    else:
        _info(benchmark, "flatten", t, PY_FLATTEN, False, **kw)
        fn = lambda: _py_flatten(layers, out)  # noqa: E731

    def clean() -> None:
        out.unlink(missing_ok=True)

    try:
        rounds = LC_ROUNDS if tool == LC else PY_ROUNDS
        _run(benchmark, fn, rounds, clean, keep_last=True)
        # correctness: the last round's layer holds exactly the merged view's paths
        benchmark.extra_info["bytes_out"] = out.stat().st_size
        with tarfile.open(out, "r:gz") as tar:
            flat = {_norm(m.name) for m in tar} - {""}
        assert flat == set(_py_index(layers))
    finally:
        clean()


# --------------------------------------------------------------------------------------------
# merged index


@pytest.mark.parametrize("tool", [LC, PY_INDEX], ids=["layercore", "python"])
def test_index(benchmark: Any, stack5: trees.StackTree, tool: str) -> None:
    t, layers = stack5.tree, stack5.layers
    kw = {"bytes_in": sum(p.stat().st_size for p in layers), "layers": len(layers)}
    _info(benchmark, "index", t, tool, tool == LC, **kw)

    def drop_indexes() -> None:
        for p in t.path.glob("*.lcidx"):
            p.unlink()

    if tool == LC:
        stack = _run(benchmark, lambda: layercore.Stack(list(layers)), LC_ROUNDS, drop_indexes)
        visible = {e.path for e in stack.walk()}
        benchmark.extra_info["entries"] = len(visible)
        assert visible == set(_py_index(layers))
    else:
        index = _run(benchmark, lambda: _py_index(layers), PY_ROUNDS, drop_indexes)
        benchmark.extra_info["entries"] = len(index)


# --------------------------------------------------------------------------------------------
# lookups


@pytest.mark.parametrize(
    "tool", [LC_LOOKUP, LC_LOOKUP_MANY, PY_LOOKUP], ids=["layercore", "layercore-many", "python"]
)
def test_lookup(benchmark: Any, stack5: trees.StackTree, tool: str) -> None:
    t, layers = stack5.tree, stack5.layers
    index = _py_index(layers)
    visible = sorted(index)
    paths = visible + [f"{p}.missing" for p in visible]
    _info(
        benchmark,
        "lookup",
        t,
        tool,
        tool == LC_LOOKUP,
        bytes_in=None,
        lookups=len(paths),
        hits=len(visible),
        writes_output=False,
    )
    stack = layercore.Stack(list(layers))
    if tool == LC_LOOKUP:
        lookup = stack.lookup

        def fn() -> int:
            return sum(1 for p in paths if lookup(p) is not None)
    elif tool == LC_LOOKUP_MANY:

        def fn() -> int:
            return sum(1 for e in stack.lookup_many(paths) if e is not None)
    else:
        get = index.get

        def fn() -> int:
            return sum(1 for p in paths if get(p) is not None)

    found = _run(benchmark, fn, LOOKUP_ROUNDS)
    assert found == len(visible)
    if benchmark.stats is not None:
        benchmark.extra_info["lookups_per_s"] = len(paths) / benchmark.stats.stats.median


# --------------------------------------------------------------------------------------------
# diff of two directory trees


def _scan(root: str) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                out[r] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(r)
    return out


def _py_diff(lower: Path, upper: Path, out: Path) -> None:
    """os.scandir/lstat walk of both trees, then tarfile: changed/added entries whole, deleted
    ones (topmost only) as whiteouts."""
    a, b = _scan(str(lower)), _scan(str(upper))

    def same(x: os.stat_result, y: os.stat_result, rel: str) -> bool:
        if (x.st_mode, x.st_uid, x.st_gid, x.st_size, x.st_mtime_ns) != (
            y.st_mode,
            y.st_uid,
            y.st_gid,
            y.st_size,
            y.st_mtime_ns,
        ):
            return False
        if stat.S_ISLNK(x.st_mode):
            return os.readlink(lower / rel) == os.readlink(upper / rel)
        return True

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(a.keys() - b.keys()):
            parent = rel.rpartition("/")[0]
            if parent and parent not in b:
                continue  # below a deleted directory: its whiteout covers it
            wh = tarfile.TarInfo(
                f"{parent}/.wh.{rel.rpartition('/')[2]}" if parent else f".wh.{rel}"
            )
            tar.addfile(wh)
        for rel in sorted(b):
            if rel in a and same(a[rel], b[rel], rel):
                continue
            tar.add(upper / rel, arcname=rel, recursive=False)


def _entries(*ts: trees.Tree) -> int:
    """Directory entries of the trees together (what a diff has to stat)."""
    return sum(t.files + t.dirs + t.symlinks + t.hardlinks for t in ts)


@pytest.mark.parametrize("tool", [LC, PY_DIFF, FIND], ids=["layercore", "python", "find"])
def test_diff(benchmark: Any, tree: Callable[[str], trees.Tree], outdir: Path, tool: str) -> None:
    a = tree("small")
    b = trees.get_changed_small()
    trees.warm(b)
    out = outdir / "diff.tar"
    # metadata is compared, so content bytes say little here: no MB/s for this group
    kw = {"bytes_in": None, "lower": "small", "upper": b.name, "entries": _entries(a, b)}
    _info(benchmark, "diff", a, tool, tool == LC, **kw)

    def clean() -> None:
        out.unlink(missing_ok=True)

    if tool == LC:
        fn: Callable[[], Any] = lambda: layercore.Layer.from_diff(  # noqa: E731
            a.path, b.path, out, compression=None
        )
        layer = _run(benchmark, fn, LC_ROUNDS, clean)
        benchmark.extra_info.update(bytes_out=layer.size, digest=layer.digest)
    elif tool == PY_DIFF:
        _run(benchmark, lambda: _py_diff(a.path, b.path, out), PY_ROUNDS, clean, keep_last=True)
        benchmark.extra_info["bytes_out"] = out.stat().st_size
        clean()
    else:
        roots = f"{shlex.quote(str(a.path))} {shlex.quote(str(b.path))}"
        cmd = f"find {roots} -printf '%p %s %T@ %m\\n' > /dev/null"
        benchmark.extra_info.update(command=cmd, writes_output=False)
        _run(benchmark, lambda: _sh(cmd), CLI_ROUNDS)


# --------------------------------------------------------------------------------------------
# extract


@pytest.fixture(scope="module")
def small_layer(_scratch_root: Path) -> Iterator[tuple[trees.Tree, layercore.Layer]]:
    t = trees.get_tree("small")
    trees.warm(t)
    d = _scratch_root / "extract-layer"
    d.mkdir(exist_ok=True)
    layer = layercore.Layer.from_dir(t.path, d / "small.tar", compression=None)
    layer.path.read_bytes()
    yield t, layer
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(
    "tool", [LC, LC_SNAPSHOT, TAR_X], ids=["layercore", "layercore-snapshot", "tar"]
)
def test_extract(
    benchmark: Any, small_layer: tuple[trees.Tree, layercore.Layer], outdir: Path, tool: str
) -> None:
    t, layer = small_layer
    dest = outdir / "dest"
    # bytes_in: the tree's content bytes (what ends up written); the blob is extra_info
    _info(benchmark, "extract", t, tool, tool == LC, layer_bytes=layer.size, writes_output=True)

    def clean() -> None:
        shutil.rmtree(dest, ignore_errors=True)

    if tool == LC:
        # The view is built untimed: extract needs no index, only the blob.
        stack = layercore.Stack([layer])
        fn: Callable[[], Any] = lambda: stack.extract(dest)  # noqa: E731
    elif tool == LC_SNAPSHOT:
        # What a RUN's first use of a layer costs: the layer alone, in overlay lower form.
        from layercore.extract import snapshot

        fn = lambda: snapshot(layer, dest)  # noqa: E731
    else:
        q = shlex.quote(str(dest))
        cmd = f"mkdir -p {q} && tar -xf {shlex.quote(str(layer.path))} -C {q}"
        benchmark.extra_info["command"] = cmd
        fn = lambda: _sh(cmd)  # noqa: E731
    _run(benchmark, fn, LC_ROUNDS if tool in (LC, LC_SNAPSHOT) else CLI_ROUNDS, clean)


# --------------------------------------------------------------------------------------------
# peak RSS of flatten

FLATTEN = """\
import sys
import layercore
layercore.Stack(sys.argv[2:]).flatten(sys.argv[1], compression="gzip", level=1)
"""


def test_peak_rss_flatten(benchmark: Any, stack5: trees.StackTree, outdir: Path) -> None:
    """Peak RSS of a child flattening ``stack5`` (see rss.py); the time is meaningless."""
    out = outdir / "rss-flat.tar.gz"

    def probe() -> list[dict[str, object]]:
        base = rss.peak_rss_kib(rss.IMPORT_LAYERCORE)
        try:
            kib = rss.peak_rss_kib(FLATTEN, str(out), *map(str, stack5.layers))
        finally:
            out.unlink(missing_ok=True)
        return [
            {
                "name": rss.BASELINE_LC.name,
                "tool": LC,
                "tree": None,
                "compression": None,
                "baseline": None,
                "maxrss_kib": base,
            },
            {
                "name": "layercore flatten gzip-1 stack5",
                "tool": LC,
                "tree": "stack5",
                "compression": "gzip",
                "baseline": rss.BASELINE_LC.name,
                "maxrss_kib": kib,
            },
        ]

    benchmark.group = "rss/stack5"
    results = benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info.update(tool="rss probes", subject=False, rss=results)
