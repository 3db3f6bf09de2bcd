"""Fixtures for the layercore benchmarks (run explicitly: ``pytest benches``)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import trees

if TYPE_CHECKING:
    from layercore import BuildInfo

# Only the benchmark modules are test files; the helpers are imported by them.
collect_ignore = ["trees.py", "rss.py", "report.py", "processes.py"]


def _build_info() -> BuildInfo | None:
    """``layercore.build_info()``, or None when the package cannot be imported."""
    try:
        import layercore
    except ImportError:
        return None
    return layercore.build_info()


def release_build_problem(info: BuildInfo | None) -> str | None:
    """Why a full run must not time this build (None when it may): timings of a debug core, or
    of none at all, are meaningless. Smoke runs only exercise the code and take any build."""
    if info is None:
        return (
            "layercore benchmarks: cannot import layercore. Install the wheel first: "
            "`make bench` runs them in .venv, where `make` installs it."
        )
    if not info.release:
        return (
            f"layercore benchmarks: the core at {info.location} is a {info.profile!r} build; "
            "timings of a debug build are meaningless. `make bench` builds and installs the "
            "release wheel; LAYERCORE_BENCH_SMOKE=1 only exercises the benchmark code."
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a full run on anything but a release build, before a tree is generated."""
    if trees.smoke_mode():
        return
    problem = release_build_problem(_build_info())
    if problem is not None:
        pytest.exit(problem, returncode=4)


def _wheel_sizes() -> dict[str, int]:
    """The sizes of the wheels and the sdist in dist/ (what `make wheel` built for this run)."""
    dist = trees.REPO_ROOT / "dist"
    if not dist.is_dir():
        return {}
    return {
        p.name: p.stat().st_size
        for p in sorted(dist.iterdir())
        if p.name.startswith("layercore-") and p.name.endswith((".whl", ".tar.gz"))
    }


@pytest.fixture(scope="session")
def tree() -> Callable[[str], trees.Tree]:
    """``tree(name)``: the cached tree, generated on first use and read once into the page cache."""
    warmed: dict[str, trees.Tree] = {}

    def get(name: str) -> trees.Tree:
        if name not in warmed:
            t = trees.get_tree(name)
            trees.warm(t)
            warmed[name] = t
        return warmed[name]

    return get


@pytest.fixture(scope="session")
def _scratch_root() -> Iterator[Path]:
    root = trees.scratch_dir() / f"run-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outdir(_scratch_root: Path) -> Iterator[Path]:
    """An empty directory for one benchmark's outputs, beside the trees; removed afterwards."""
    d = _scratch_root / f"t{len(list(_scratch_root.iterdir()))}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _tool_version(name: str, cmd: list[str]) -> str:
    """``name`` and the first version number the tool prints, e.g. ``zstd 1.5.4``."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return f"{name} (not found)"
    m = re.search(r"\d+\.\d+(?:\.\d+)?[a-z]?", res.stdout or res.stderr)
    return f"{name} {m.group(0)}" if m else f"{name} (unknown version)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _loadavg() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _git_commit() -> str:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=trees.REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    """Record what report.py needs about this run in the JSON's machine_info."""
    info = _build_info()
    machine_info["layercore"] = {
        "build_profile": info.profile if info is not None else "not installed",
        "build": None if info is None else dataclasses.asdict(info),
        "dist": _wheel_sizes(),
        "smoke": trees.smoke_mode(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "commit": _git_commit(),
        "loadavg": _loadavg(),
        "tools": {
            "tar": _tool_version("GNU tar", ["tar", "--version"]),
            "pigz": _tool_version("pigz", ["pigz", "--version"]),
            "zstd": _tool_version("zstd", ["zstd", "--version"]),
            "openssl": _tool_version("OpenSSL", ["openssl", "version"]),
        },
    }
