"""Fixtures for the layercore benchmarks (run explicitly: ``pytest benches``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import trees

# Only the benchmark modules are test files; the helpers are imported by them.
collect_ignore = ["trees.py", "rss.py", "report.py"]


def _build_profile() -> str:
    from layercore import _core

    return str(_core.build_profile)


@pytest.fixture(scope="session", autouse=True)
def _require_release_build() -> None:
    """Refuse to time a debug build (its figures would be meaningless); smoke runs may."""
    if trees.smoke_mode():
        return
    try:
        profile = _build_profile()
    except ImportError as exc:
        pytest.exit(
            f"layercore benchmarks: cannot import the extension layercore._core ({exc}). "
            "Build it first: `.venv/bin/maturin develop --release`.",
            returncode=4,
        )
    if profile != "release":
        pytest.exit(
            f"layercore benchmarks: layercore._core is a {profile!r} build; timings of a debug "
            "build are meaningless. Rebuild with `.venv/bin/maturin develop --release`, or set "
            "LAYERCORE_BENCH_SMOKE=1 to only exercise the benchmark code.",
            returncode=4,
        )


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
    try:
        profile = _build_profile()
    except ImportError:
        profile = "not built"
    machine_info["layercore"] = {
        "build_profile": profile,
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
