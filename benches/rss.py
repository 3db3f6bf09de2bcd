"""Peak resident set size of layer builds, each measured in its own child process.

``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the high-water mark over *every* child a process has
waited for, so reading it in the benchmark process would report the largest of all earlier
children (tar, pigz, ...). Each probe therefore starts a fresh, tiny parent (``PARENT``) whose only
child is ``python -c CODE``; the parent reads its RUSAGE_CHILDREN and prints it. The figure is the
child's peak RSS: interpreter + imports + the build. A child that only imports layercore gives the
baseline, so the report can show what the build itself adds.

``python benches/rss.py`` runs the probes on the cached trees and prints them (no pytest needed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PARENT = r"""
import json, resource, subprocess, sys
rc = subprocess.run([sys.executable, "-c", *sys.argv[1:]], check=False).returncode
print(json.dumps({"rc": rc, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""

IMPORT_LAYERCORE = "import layercore"
IMPORT_REFERENCE = "import layercore, layercore.reference"
BUILD = """\
import sys
from {module} import Layer
Layer.from_dir(sys.argv[1], sys.argv[2], compression={compression!r}, level=1)
"""


@dataclass(frozen=True)
class Probe:
    name: str
    tool: str  # "layercore" or "reference"
    tree: str | None  # None for the import-only baselines
    compression: str | None
    baseline: str | None  # name of the import-only probe this one is compared with


@dataclass(frozen=True)
class Result:
    probe: Probe
    maxrss_kib: int

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = asdict(self.probe)
        d["maxrss_kib"] = self.maxrss_kib
        return d


BASELINE_LC = Probe("import layercore", "layercore", None, None, None)
BASELINE_REF = Probe("import layercore.reference", "reference", None, None, None)

PROBES = (
    BASELINE_LC,
    Probe("layercore gzip-1 small", "layercore", "small", "gzip", BASELINE_LC.name),
    Probe("layercore gzip-1 big", "layercore", "big", "gzip", BASELINE_LC.name),
    Probe("layercore zstd-1 big", "layercore", "big", "zstd", BASELINE_LC.name),
    BASELINE_REF,
    Probe("reference gzip-1 small", "reference", "small", "gzip", BASELINE_REF.name),
    Probe("reference gzip-1 big", "reference", "big", "gzip", BASELINE_REF.name),
)


def peak_rss_kib(code: str, *args: str) -> int:
    """Peak RSS (KiB) of ``python -c code *args``, run as the only child of a fresh parent."""
    res = subprocess.run(
        [sys.executable, "-c", PARENT, code, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        report = None
    if res.returncode != 0 or not report or report["rc"] != 0:
        raise RuntimeError(
            f"RSS probe failed (exit {res.returncode}):\n{code}\n--- stderr ---\n{res.stderr}"
        )
    return int(report["maxrss_kib"])


def probe_code(probe: Probe) -> str:
    if probe.tree is None:
        return IMPORT_LAYERCORE if probe.tool == "layercore" else IMPORT_REFERENCE
    module = "layercore" if probe.tool == "layercore" else "layercore.reference"
    return BUILD.format(module=module, compression=probe.compression)


def run_probes(tree_paths: dict[str, Path], outdir: Path) -> list[Result]:
    """Run every probe whose tree is in ``tree_paths``; outputs go to ``outdir`` and are removed."""
    results = []
    for probe in PROBES:
        if probe.tree is not None and probe.tree not in tree_paths:
            continue
        out = outdir / "rss-probe.layer"
        args = () if probe.tree is None else (str(tree_paths[probe.tree]), str(out))
        try:
            kib = peak_rss_kib(probe_code(probe), *args)
        finally:
            out.unlink(missing_ok=True)
        results.append(Result(probe, kib))
    return results


def main() -> None:
    import tempfile

    import trees

    paths = {name: trees.get_tree(name).path for name in ("small", "big")}
    scratch = trees.scratch_dir()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        results = run_probes(paths, Path(tmp))
    base = {r.probe.name: r.maxrss_kib for r in results if r.probe.baseline is None}
    for r in results:
        extra = ""
        if r.probe.baseline in base:
            extra = f"  (+{(r.maxrss_kib - base[r.probe.baseline]) / 1024:.1f} MiB over import)"
        print(f"{r.probe.name:32} {r.maxrss_kib / 1024:8.1f} MiB{extra}")


if __name__ == "__main__":
    main()
