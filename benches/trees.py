"""Deterministic source trees for the benchmarks, generated once and cached.

Three trees live under ``<repo>/.bench-data/<mode>/<name>/`` (mode ``full`` or ``smoke``):

* ``small``  -- many small files (20,000 files, ~250 MB) in a few hundred nested directories, half
  text-like (compressible) and half random (incompressible) by bytes, plus symlinks (some with
  absolute targets) and hardlinks;
* ``big``    -- six 128 MiB files, three random and three text-like;
* ``stdlib`` -- a copy of the running Python's stdlib without site-packages, dist-packages and
  ``__pycache__``.

A tree is complete when its marker ``<name>.json`` (beside the tree, not inside it) exists and
names the current ``GENERATOR_VERSION`` and parameters; anything else is deleted and regenerated.
Set ``LAYERCORE_BENCH_SMOKE=1`` for tiny trees (separate cache directory) that only keep the
benchmark code working.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import random
import shutil
import stat
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Bump when a generator changes what it writes: cached trees with another version are rebuilt.
GENERATOR_VERSION = 1
SEED = 0x1A7E_C0DE

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / ".bench-data"

KiB = 1024
MiB = 1024 * KiB

TREE_NAMES = ("small", "big", "stdlib")

# Fixed mtimes, so regenerated trees give byte-identical layers.
BASE_MTIME = 1_700_000_000


def smoke_mode() -> bool:
    """True when ``LAYERCORE_BENCH_SMOKE`` asks for the tiny trees."""
    return os.environ.get("LAYERCORE_BENCH_SMOKE", "").strip() not in ("", "0")


def cache_dir() -> Path:
    return DATA_DIR / ("smoke" if smoke_mode() else "full")


def scratch_dir() -> Path:
    """Where benchmark outputs go: the same filesystem as the trees (never /dev/shm)."""
    return DATA_DIR / "tmp"


@dataclass(frozen=True)
class Tree:
    name: str
    path: Path
    files: int  # regular files, each inode once
    dirs: int  # directories below the root
    symlinks: int
    hardlinks: int  # extra names of regular files already counted in `files`
    bytes: int  # content bytes of the regular files, each inode once

    def info(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --------------------------------------------------------------------------------------------
# parameters


def _params(name: str) -> dict[str, Any]:
    smoke = smoke_mode()
    if name == "small":
        if smoke:
            return {"files": 200, "total": 2_500_000, "dirs": 20, "symlinks": 10, "hardlinks": 10}
        return {
            "files": 20_000,
            "total": 250_000_000,
            "dirs": 300,
            "symlinks": 500,
            "hardlinks": 500,
        }
    if name == "big":
        return {"count": 6, "size": (1 if smoke else 128) * MiB}
    if name == "stdlib":
        return {
            "stdlib": _stdlib_dir(),
            "python": sys.version.split()[0],
            "subset": smoke,
        }
    raise KeyError(f"unknown benchmark tree {name!r} (known: {', '.join(TREE_NAMES)})")


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


# --------------------------------------------------------------------------------------------
# public entry point


def get_tree(name: str) -> Tree:
    """Return tree ``name``, generating it first unless a complete copy is cached."""
    params = _params(name)
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    marker = base / f"{name}.json"
    with _lock(base / ".lock"):
        cached = _read_marker(marker)
        if (
            cached is not None
            and cached.get("generator") == GENERATOR_VERSION
            and cached.get("params") == params
            and path.is_dir()
        ):
            return Tree(name=name, path=path, **cached["stats"])

        marker.unlink(missing_ok=True)
        partial = base / f"{name}.partial"
        for stale in (path, partial):
            if stale.exists() or stale.is_symlink():
                shutil.rmtree(stale)
        print(f"\n[layercore benches] generating tree {name!r} in {path} ...", file=sys.stderr)
        _GENERATORS[name](partial, params)
        stats = _stats(partial)
        partial.rename(path)
        tmp_marker = marker.with_suffix(".json.tmp")
        tmp_marker.write_text(
            json.dumps({"generator": GENERATOR_VERSION, "params": params, "stats": stats}, indent=1)
        )
        tmp_marker.rename(marker)
        return Tree(name=name, path=path, **stats)


def warm(tree: Tree) -> None:
    """Read every regular file once so the page cache holds the tree (all rows start warm)."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    for dirpath, _dirnames, filenames in os.walk(tree.path):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            with open(p, "rb", buffering=0) as f:
                while f.readinto(view):
                    pass


def regular_files(tree: Tree) -> list[Path]:
    """The tree's regular files in sorted order (the six files of ``big``)."""
    return sorted(p for p in tree.path.rglob("*") if p.is_file() and not p.is_symlink())


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stats(root: Path) -> dict[str, int]:
    files = dirs = symlinks = hardlinks = size = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in itertools.chain(dirnames, filenames):
            st = os.lstat(os.path.join(dirpath, n))
            if stat.S_ISDIR(st.st_mode):
                dirs += 1
            elif stat.S_ISLNK(st.st_mode):
                symlinks += 1
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    hardlinks += 1
                else:
                    seen.add(key)
                    files += 1
                    size += st.st_size
    return {
        "files": files,
        "dirs": dirs,
        "symlinks": symlinks,
        "hardlinks": hardlinks,
        "bytes": size,
    }


# --------------------------------------------------------------------------------------------
# content pools


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Text-like bytes: Zipf-distributed pseudo-words, punctuation, newlines and indentation.

    Compresses to roughly a third with gzip -1, like source code or logs.
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(5000)]
    vocab += ["def", "return", "self", "import", "(", ")", "=", "==", "{", "}", ":", ",", "0", "1"]
    rng.shuffle(vocab)
    vocab += ["\n", "\n    ", "\n        ", ".", ";"]
    weights = [1.0 / (i + 1) ** 1.05 for i in range(len(vocab) - 5)] + [0.9, 0.5, 0.3, 0.4, 0.2]
    cum = list(itertools.accumulate(weights))
    out = bytearray()
    while len(out) < size:
        toks = rng.choices(vocab, cum_weights=cum, k=200_000)
        out += " ".join(toks).encode()
    return bytes(out[:size])


# --------------------------------------------------------------------------------------------
# generators


def _lognormal_sizes(rng: random.Random, n: int, total: int, cap: int) -> list[int]:
    """n sizes, log-normal clamped to [0, cap], with mu solved so that they sum to ~total."""
    sigma = 1.6
    zs = [rng.gauss(0.0, 1.0) for _ in range(n)]

    def sizes(mu: float) -> list[int]:
        return [min(cap, int(math.exp(mu + sigma * z))) for z in zs]

    lo, hi = 0.0, math.log(cap)
    for _ in range(50):
        mid = (lo + hi) / 2
        if sum(sizes(mid)) < total:
            lo = mid
        else:
            hi = mid
    return sizes((lo + hi) / 2)


def _gen_small(root: Path, p: dict[str, Any]) -> None:
    rng = random.Random(SEED)
    n_files, total, n_dirs = int(p["files"]), int(p["total"]), int(p["dirs"])
    n_symlinks, n_hardlinks = int(p["symlinks"]), int(p["hardlinks"])
    text = _text_pool(rng, (1 if smoke_mode() else 8) * MiB)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"

    def word() -> str:
        return "".join(rng.choices(letters, k=rng.randint(3, 10)))

    root.mkdir(parents=True)
    # nested directories: each new one goes below a random existing one, depth at most 8
    dirs: list[tuple[Path, int]] = [(root, 0)]
    for i in range(n_dirs):
        parent, depth = rng.choice([d for d in dirs if d[1] < 8])
        d = parent / f"{word()}{i}"
        d.mkdir()
        dirs.append((d, depth + 1))
    dir_paths = [d for d, _ in dirs]

    exts = [".txt", ".py", ".json", ".log", ".bin", ".so", ".dat", ".md", ""]
    files: list[Path] = []
    for i, size in enumerate(_lognormal_sizes(rng, n_files, total, 100 * KiB)):
        d = rng.choice(dir_paths)
        r = rng.random()
        if r < 0.01:  # long names (PAX path records)
            name = f"{'long-' * 24}{word()}-{i}.txt"
        elif r < 0.015:  # non-ASCII names
            name = f"caf\u00e9-\u65e5\u672c-{i}.txt"
        else:
            name = f"{word()}-{i}{rng.choice(exts)}"
        f = d / name
        if rng.random() < 0.5:
            off = rng.randrange(0, len(text) - size + 1)
            f.write_bytes(text[off : off + size])
        else:
            f.write_bytes(rng.randbytes(size))
        os.chmod(f, 0o755 if rng.random() < 0.1 else 0o644)
        os.utime(f, (BASE_MTIME, BASE_MTIME + rng.randrange(10_000_000)))
        files.append(f)

    for i in range(n_hardlinks):
        src = rng.choice(files)
        os.link(src, rng.choice(dir_paths) / f"hl-{word()}-{i}")

    abs_targets = ["/etc/passwd", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/bin/sh", "/nonexistent"]
    for i in range(n_symlinks):
        d = rng.choice(dir_paths)
        r = rng.random()
        if r < 0.15:
            target = rng.choice(abs_targets)
        elif r < 0.25:
            target = os.path.relpath(rng.choice(dir_paths), d)
        elif r < 0.30:
            target = f"../dangling-{i}"
        else:
            target = os.path.relpath(rng.choice(files), d)
        link = d / f"ln-{word()}-{i}"
        os.symlink(target, link)
        os.utime(link, (BASE_MTIME, BASE_MTIME), follow_symlinks=False)

    for d in sorted(dir_paths, key=lambda x: len(x.parts), reverse=True):
        os.chmod(d, 0o755)
        os.utime(d, (BASE_MTIME, BASE_MTIME + rng.randrange(10_000_000)))


def _gen_big(root: Path, p: dict[str, Any]) -> None:
    rng = random.Random(SEED + 1)
    count, size = int(p["count"]), int(p["size"])
    text = _text_pool(rng, min(size, 8 * MiB))
    root.mkdir(parents=True)
    chunk = 8 * MiB
    for i in range(count // 2):
        with open(root / f"random-{i}.bin", "wb") as f:
            left = size
            while left:
                n = min(chunk, left)
                f.write(rng.randbytes(n))
                left -= n
    for i in range(count - count // 2):
        # slices of the text pool at random offsets: compressible, not a repeating pattern
        with open(root / f"text-{i}.txt", "wb") as f:
            left = size
            while left:
                n = min(left, rng.randint(64 * KiB, MiB), len(text))
                off = rng.randrange(0, len(text) - n + 1)
                f.write(text[off : off + n])
                left -= n
    for path in root.iterdir():
        os.chmod(path, 0o644)
        os.utime(path, (BASE_MTIME, BASE_MTIME))
    os.utime(root, (BASE_MTIME, BASE_MTIME))


_SMOKE_STDLIB = {"json", "email", "collections", "importlib", "encodings"}


def _gen_stdlib(root: Path, p: dict[str, Any]) -> None:
    src = Path(str(p["stdlib"]))
    skip = {"site-packages", "dist-packages", "__pycache__"}
    subset = bool(p["subset"])

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = {n for n in names if n in skip}
        if subset and Path(directory) == src:
            ignored |= {n for n in names if n not in _SMOKE_STDLIB and not n.endswith(".py")}
        return ignored

    shutil.copytree(src, root, symlinks=True, ignore=ignore)


_GENERATORS = {"small": _gen_small, "big": _gen_big, "stdlib": _gen_stdlib}


# --------------------------------------------------------------------------------------------
# changeset benchmarks: `small-b` (a changed copy of `small`) and `stack5` (five layer blobs)

# Bump when the changeset generators change what they write (independent of GENERATOR_VERSION,
# so the trees above stay valid).
CHANGESET_GENERATOR_VERSION = 3


def _changeset_params(name: str) -> dict[str, Any]:
    smoke = smoke_mode()
    if name == "small-b":
        return {"base": _params("small"), "changed": 0.10}
    if name == "stack5":
        base = (
            {"files": 40, "total": 200_000, "dirs": 6, "symlinks": 4, "hardlinks": 4}
            if smoke
            else {
                "files": 10_000,
                "total": 50_000_000,
                "dirs": 200,
                "symlinks": 250,
                "hardlinks": 250,
            }
        )
        return {"base": base, "change_layers": 4, "replaced_dirs": 1 if smoke else 6}
    raise KeyError(f"unknown changeset tree {name!r} (known: small-b, stack5)")


@dataclass(frozen=True)
class StackTree:
    """The five layer blobs of ``stack5`` (bottom first) and the stats of the merged tree."""

    tree: Tree  # path: the directory holding the blobs; stats: the final (merged) tree
    layers: tuple[Path, ...]


def get_changed_small() -> Tree:
    """``small-b``: a copy of ``small`` with ~10 % of its entries changed (for ``diff/small``)."""
    params = _changeset_params("small-b")
    small = get_tree("small")
    stats = _cached("small-b", params, lambda partial: _gen_small_b(small.path, partial))
    return Tree(name="small-b", path=cache_dir() / "small-b", **stats)


def get_stack5() -> StackTree:
    """``stack5``: a gzip layer of a ~10,000-file tree and four gzip changeset layers above it."""
    params = _changeset_params("stack5")
    stats = _cached("stack5", params, lambda partial: _gen_stack5(partial, params))
    path = cache_dir() / "stack5"
    layers = tuple(path / f"layer-{i}.tar.gz" for i in range(1 + int(params["change_layers"])))
    return StackTree(Tree(name="stack5", path=path, **stats), layers)


def _cached(name: str, params: dict[str, Any], generate: Any) -> dict[str, int]:
    """Like :func:`get_tree`: reuse ``<name>`` if its marker matches, else regenerate it.

    ``generate(partial)`` fills the directory ``partial`` and returns the stats to record.
    """
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    marker = base / f"{name}.json"
    with _lock(base / f".{name}.lock"):
        cached = _read_marker(marker)
        if (
            cached is not None
            and cached.get("generator") == CHANGESET_GENERATOR_VERSION
            and cached.get("params") == params
            and path.is_dir()
        ):
            return dict(cached["stats"])
        marker.unlink(missing_ok=True)
        partial = base / f"{name}.partial"
        for stale in (path, partial):
            if stale.exists() or stale.is_symlink():
                shutil.rmtree(stale)
        print(f"\n[layercore benches] generating {name!r} in {path} ...", file=sys.stderr)
        stats: dict[str, int] = generate(partial)
        partial.rename(path)
        tmp_marker = marker.with_suffix(".json.tmp")
        tmp_marker.write_text(
            json.dumps(
                {"generator": CHANGESET_GENERATOR_VERSION, "params": params, "stats": stats},
                indent=1,
            )
        )
        tmp_marker.rename(marker)
        return stats


def _copy_tree(src: Path, dst: Path) -> None:
    """``cp -a``: keeps hardlinks, symlinks, modes and mtimes (shutil.copytree splits links)."""
    import subprocess

    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def _mutate(root: Path, rng: random.Random, fraction: float, replaced_dirs: int, tag: str) -> None:
    """Change about ``fraction`` of the entries below ``root``, deterministically: modify,
    delete, add and chmod files, turn files into symlinks and replace whole leaf directories
    (deleted and re-created with new contents). Directory mtimes are restored afterwards, new
    ones get fixed mtimes, so the result depends only on the seed."""
    dirs: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames:  # os.walk lists symlinks to directories as directories
            (others if os.path.islink(os.path.join(dirpath, name)) else dirs).append(
                Path(dirpath) / name
            )
        others += [Path(dirpath) / f for f in sorted(filenames)]
    dir_mtimes = {d: os.lstat(d).st_mtime_ns for d in [root, *dirs]}
    mtime = BASE_MTIME + 20_000_000 + rng.randrange(1_000_000)
    text = _text_pool(rng, 256 * KiB)

    def body(size: int) -> bytes:
        if rng.random() < 0.5:
            off = rng.randrange(0, len(text) - size + 1)
            return text[off : off + size]
        return rng.randbytes(size)

    # directories replaced whole: deleted with everything below, re-created with new files
    replaced: list[Path] = []
    # only leaf directories, so a replacement near the root does not wipe out half the tree
    leaves = [d for d in dirs if not any(d in o.parents for o in dirs)]
    for d in rng.sample(leaves, min(replaced_dirs, len(leaves))):
        if any(d == r or r in d.parents or d in r.parents for r in replaced):
            continue
        shutil.rmtree(d)
        d.mkdir()
        for i in range(rng.randint(2, 6)):
            f = d / f"new-{tag}-{i}.txt"
            f.write_bytes(body(rng.randint(0, 20 * KiB)))
            os.utime(f, (mtime, mtime))
        os.utime(d, (mtime, mtime))
        replaced.append(d)

    def alive(p: Path) -> bool:
        return not any(r in p.parents for r in replaced) and os.path.lexists(p)

    candidates = [p for p in others if alive(p)]
    n = max(1, int(len(candidates) * fraction))
    picked = rng.sample(candidates, min(len(candidates), n))
    live_dirs = [d for d in [root, *dirs] if d.is_dir() and not d.is_symlink()]
    for i, p in enumerate(picked):
        if not os.path.lexists(p):
            continue
        r = rng.random()
        if r < 0.35 and p.is_file() and not p.is_symlink():  # modify in place (keeps hardlinks)
            with open(p, "r+b") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.truncate(0)
                fh.write(body(min(size, len(text)) if size else rng.randint(1, 4 * KiB)))
            os.utime(p, (mtime, mtime + i))
        elif r < 0.60:  # delete
            p.unlink()
        elif r < 0.70 and p.is_file() and not p.is_symlink():  # chmod
            os.chmod(p, 0o600 if (p.stat().st_mode & 0o777) != 0o600 else 0o644)
        elif r < 0.75:  # a file becomes a symlink
            p.unlink()
            os.symlink(f"../target-{tag}-{i}", p)
            os.utime(p, (mtime, mtime), follow_symlinks=False)
        else:  # a new file next to a random directory's contents
            f = rng.choice(live_dirs) / f"added-{tag}-{i}.dat"
            f.write_bytes(body(rng.randint(0, 30 * KiB)))
            os.utime(f, (mtime, mtime + i))
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for d in [Path(dirpath) / n for n in dirnames]:
            if d.is_symlink():
                continue
            ns = dir_mtimes.get(d)
            if d in replaced or ns is None:
                os.utime(d, (mtime, mtime))
            else:
                os.utime(d, ns=(ns, ns))
    os.utime(root, ns=(dir_mtimes[root], dir_mtimes[root]))


def _gen_small_b(small: Path, partial: Path) -> dict[str, int]:
    _copy_tree(small, partial)
    params = _changeset_params("small-b")
    _mutate(partial, random.Random(SEED + 100), float(params["changed"]), 3, "b")
    return _stats(partial)


def _gen_stack5(partial: Path, p: dict[str, Any]) -> dict[str, int]:
    import layercore  # only the changeset trees need the extension

    partial.mkdir(parents=True)
    work = partial / "states"
    prev = work / "state-0"
    _gen_small(prev, dict(p["base"]))
    layercore.Layer.from_dir(prev, partial / "layer-0.tar.gz", compression="gzip", level=1)
    for k in range(1, 1 + int(p["change_layers"])):
        nxt = work / f"state-{k}"
        _copy_tree(prev, nxt)
        _mutate(nxt, random.Random(SEED + 10 + k), 0.04, int(p["replaced_dirs"]), f"l{k}")
        layercore.Layer.from_diff(
            prev, nxt, partial / f"layer-{k}.tar.gz", compression="gzip", level=1
        )
        shutil.rmtree(prev)
        prev = nxt
    stats = _stats(prev)
    shutil.rmtree(work)
    return stats


if __name__ == "__main__":
    # `python benches/trees.py [NAME...]`: generate (or confirm) the trees and print their stats.
    for tree_name in sys.argv[1:] or TREE_NAMES:
        print(json.dumps(get_tree(tree_name).info()))
