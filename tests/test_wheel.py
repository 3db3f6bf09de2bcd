"""What `make wheel` ships in dist/: the two manylinux2014 wheels and the sdist.

auditwheel must find each wheel consistent with its tag (glibc 2.17, no library outside the
manylinux policy: libdeflate and zstd are linked in), and the archives must hold what users
need and nothing of the checkout's clutter. The aarch64 wheel cannot run here; these checks
(and auditwheel's) are what stands for it.
"""

from __future__ import annotations

import configparser
import email
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "dist"
VERSION = str(tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"])
ARCHES = {"x86_64": 62, "aarch64": 183}  # ELF e_machine
SIZE_LIMIT = 10_000_000

# What the package is made of, from the source tree (the wheel and the sdist must carry it all).
PYTHON_FILES = sorted(
    p.relative_to(REPO / "python").as_posix()
    for p in (REPO / "python" / "layercore").rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
)
RUST_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "rust").rglob("*.rs"))


def artifact(name: str) -> Path:
    path = DIST / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: `make wheel` builds it")
    return path


def wheel(arch: str) -> Path:
    return artifact(
        f"layercore-{VERSION}-cp311-abi3-manylinux2014_{arch}.manylinux_2_17_{arch}.whl"
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_auditwheel_accepts_the_wheel(arch: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", "--json", wheel(arch)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["overall_tag"] == f"manylinux_2_17_{arch}"
    assert report["external_libs"] == {}, "a shared library outside the manylinux policy"
    assert not report["unsupported_isa"]
    glibc = {
        v for versions in report["versioned_symbols"].values() for v in versions if "GLIBC" in v
    }
    newest = max(tuple(int(x) for x in v.split("_")[1].split(".")) for v in glibc)
    assert newest <= (2, 17), f"needs GLIBC_{'.'.join(map(str, newest))}"


@pytest.mark.parametrize("arch", ARCHES)
def test_wheel_contents(arch: str) -> None:
    path = wheel(arch)
    assert path.stat().st_size < SIZE_LIMIT
    dist_info = f"layercore-{VERSION}.dist-info"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        so = zf.read("layercore/_core.abi3.so")
        tags = [
            line.split(":", 1)[1].strip()
            for line in zf.read(f"{dist_info}/WHEEL").decode().splitlines()
            if line.startswith("Tag:")
        ]
        meta = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert set(PYTHON_FILES) <= names
    assert {n.split("/")[0] for n in names} == {"layercore", dist_info}
    # No library grafted in by a repair step: everything is in the one extension.
    assert [n for n in names if n.endswith(".so") or ".so." in n] == ["layercore/_core.abi3.so"]
    assert so[:4] == b"\x7fELF" and int.from_bytes(so[18:20], "little") == ARCHES[arch]
    assert sorted(tags) == sorted(
        [f"cp311-abi3-manylinux2014_{arch}", f"cp311-abi3-manylinux_2_17_{arch}"]
    )
    assert meta["Version"] == VERSION
    assert meta["Requires-Python"] == ">=3.11"
    assert "rich>=13" in meta.get_all("Requires-Dist", [])
    assert "zstd" in meta.get_all("Provides-Extra", [])
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {"layercore": "layercore.cli:main"}


def test_sdist_carries_the_sources_and_only_them() -> None:
    path = artifact(f"layercore-{VERSION}.tar.gz")
    top = f"layercore-{VERSION}"
    with tarfile.open(path) as tf:
        names = {m.name.removeprefix(f"{top}/") for m in tf.getmembers() if m.isfile()}
        pkg_info = tf.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        meta = email.message_from_bytes(pkg_info.read())
    needed = {"Cargo.toml", "Cargo.lock", "build.rs", "pyproject.toml", "README.md", "PKG-INFO"}
    needed |= set(RUST_FILES) | {f"python/{p}" for p in PYTHON_FILES}
    assert needed <= names, sorted(needed - names)
    extra = names - needed
    assert not extra, f"the sdist carries what no build needs: {sorted(extra)[:10]}"
    assert meta["Version"] == VERSION
