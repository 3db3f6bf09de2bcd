"""The package users install: where it is imported from, its one version, its build, and what
``import layercore`` drags in.

`make test` runs this suite in a venv made from the x86_64 wheel, so these tests check the
wheel as installed, not the source tree.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import layercore
from layercore import _core

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sysconfig.get_paths()["scripts"])


def cargo_version() -> str:
    return str(tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"])


def test_the_package_is_the_installed_one_not_the_source_tree() -> None:
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    package = Path(layercore.__file__).resolve().parent
    assert package == site / "layercore", f"layercore imported from {package}"
    assert not package.is_relative_to(REPO / "python")
    assert Path(_core.__file__).resolve().parent == package
    # No editable hook or path entry leads back to the checkout.
    assert str(REPO / "python") not in sys.path
    assert not list(site.glob("*layercore*.pth"))


def test_one_version_everywhere() -> None:
    version = cargo_version()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in pyproject and "version" in pyproject["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "Cargo and PEP 440 must spell it alike"
    assert layercore.__version__ == version
    assert metadata.version("layercore") == version
    info = layercore.build_info()
    assert info.version == info.core_version == version
    out = subprocess.run(
        [SCRIPTS / "layercore", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0] == f"layercore {version}"
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(version)}\]?\b", changelog, re.M), (
        f"CHANGELOG.md has no section for {version}"
    )


def test_build_info_describes_the_installed_wheel() -> None:
    info = layercore.build_info()
    machine = platform.machine()
    assert info.release and info.profile == "release"
    assert info.wheel_tag == f"cp311-abi3-manylinux_2_17_{machine}"
    assert info.platform_tag == f"manylinux_2_17_{machine}"
    assert info.target == f"{machine}-unknown-linux-gnu"
    assert info.rustc.startswith("rustc ")
    assert Path(info.location) == Path(layercore.__file__).resolve().parent
    text = info.describe()
    for line in (
        f"layercore {info.version}",
        f"core:     {info.version} (release, {info.target})",
        f"wheel:    {info.wheel_tag}",
        f"compiler: {info.rustc}",
    ):
        assert line in text


def test_version_option_prints_the_build(tmp_path: Path) -> None:
    env = dict(os.environ, LAYERCORE_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [SCRIPTS / "layercore", "--version"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == layercore.build_info().describe() + "\n"
    assert not (tmp_path / "home").exists(), "--version needs no store"
    as_module = subprocess.run(
        [sys.executable, "-m", "layercore", "--version"], capture_output=True, text=True, env=env
    )
    assert as_module.returncode == 0 and as_module.stdout == done.stdout


def test_a_copy_outside_any_install_reports_no_wheel(tmp_path: Path) -> None:
    """A package on PYTHONPATH (a checkout, a vendored copy) is not mistaken for the wheel
    installed beside it: only the distribution that owns the imported files counts."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(
        Path(layercore.__file__).parent,
        copy / "layercore",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    code = (
        "import json, layercore; i = layercore.build_info(); "
        "print(json.dumps([i.location, i.wheel_tag]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(copy)),
    ).stdout
    location, tag = json.loads(out)
    assert Path(location) == (copy / "layercore").resolve()
    assert tag is None


def test_import_loads_no_command_line() -> None:
    code = "import json, sys, layercore; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    heavy = {m for m in loaded if m.split(".")[0] in {"rich", "argparse"}}
    assert not heavy, f"import layercore loads {sorted(heavy)}"
    assert "layercore.cli" not in loaded
    # Nor what only some calls need: the metadata look-up, OpenSSL's hashlib, datetime.
    assert not loaded & {"importlib.metadata", "hashlib", "datetime", "platform"}


@pytest.mark.parametrize("profile", ["debug", "release"])
def test_benchmarks_refuse_a_debug_core(tmp_path: Path, profile: str) -> None:
    """A full benchmark run stops before any tree is generated when the core is not a release
    build; the core's profile is overridden through sitecustomize to stand for a debug wheel."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        f"import layercore._core\nlayercore._core.build_profile = {profile!r}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LAYERCORE_BENCH_SMOKE"}
    env["PYTHONPATH"] = str(hook)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benches", "--collect-only", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    if profile == "debug":
        assert done.returncode == 4, done.stdout + done.stderr
        assert "is a 'debug' build" in done.stdout + done.stderr
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "test_import_cost" in done.stdout
