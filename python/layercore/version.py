"""What this copy of layercore is: its version, and the build of the Rust core it runs on.

The version has one home, ``Cargo.toml``: maturin writes it into the wheel's metadata
(``pyproject.toml`` declares it dynamic) and the core reports it, so ``__version__``, the
installed distribution's metadata and ``layercore --version`` cannot disagree. Versions are
plain ``X.Y.Z``, which Cargo and PEP 440 spell alike.

This module imports only the extension at import time; the metadata look-up that finds the
wheel's tag happens when :func:`build_info` is called.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from layercore import _core

__all__ = ["BuildInfo", "__version__", "build_info"]

__version__: str = _core.__version__


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """The facts a bug report needs about the running layercore.

    ``wheel_tag`` is the tag of the wheel this package was installed from, with its platform in
    the PEP 600 spelling (``cp311-abi3-manylinux_2_17_x86_64``); it is None when the package
    was not installed from a wheel (an editable install, or ``python/`` on ``sys.path``).
    """

    version: str
    core_version: str
    profile: str
    target: str
    rustc: str
    wheel_tag: str | None
    location: str
    python: str

    @property
    def release(self) -> bool:
        """Whether the core is an optimised build; benchmarks refuse any other."""
        return self.profile == "release"

    @property
    def platform_tag(self) -> str | None:
        """The wheel's platform tag, e.g. ``manylinux_2_17_x86_64``; None when not from a wheel."""
        return None if self.wheel_tag is None else self.wheel_tag.split("-")[-1]

    def describe(self) -> str:
        """The text ``layercore --version`` prints: the version first, then the build."""
        return "\n".join(
            [
                f"layercore {self.version}",
                f"  core:     {self.core_version} ({self.profile}, {self.target})",
                f"  compiler: {self.rustc}",
                f"  wheel:    {self.wheel_tag or 'none (not installed from a wheel)'}",
                f"  python:   {self.python}",
                f"  location: {self.location}",
            ]
        )


def build_info() -> BuildInfo:
    """The version, the wheel's tag and the build of the Rust core, read from the running copy."""
    package = Path(__file__).resolve().parent
    return BuildInfo(
        version=__version__,
        core_version=_core.__version__,
        profile=_core.build_profile,
        target=_core.target,
        rustc=_core.rustc_version,
        wheel_tag=_wheel_tag(package),
        location=str(package),
        python=f"{sys.implementation.name} {sys.version.split()[0]}",
    )


def _wheel_tag(package: Path) -> str | None:
    """The tag in the WHEEL file of the distribution that installed ``package`` itself.

    Only a distribution whose files include this very ``__init__.py`` counts, so a stale
    install elsewhere on ``sys.path`` is never mistaken for this copy. Of a wheel's tags (maturin
    writes ``manylinux2014_x86_64`` and its alias ``manylinux_2_17_x86_64``) the PEP 600 one is
    preferred.
    """
    from importlib import metadata

    init = package / "__init__.py"
    for dist in metadata.distributions(name="layercore"):
        if Path(str(dist.locate_file("layercore/__init__.py"))).resolve() != init:
            continue
        text = dist.read_text("WHEEL")
        if text is None:
            continue
        tags = [
            line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("Tag:")
        ]
        if tags:
            return next((t for t in tags if "-manylinux_" in t), tags[0])
    return None
