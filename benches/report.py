"""Write BENCHMARKS.md from a pytest-benchmark JSON file.

    python benches/report.py BENCH_JSON OUT_MD

Everything above the ``<!-- notes -->`` line of OUT_MD is regenerated; the marker and everything
after it are kept from the existing file (hand-written notes live there). Standard library only.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

NOTES_MARKER = "<!-- notes -->"

# contender names, as the benchmarks record them in extra_info["tool"]
LC = "layercore"
REF = "reference"
TAR_OPENSSL = "tar | openssl dgst"
TAR_PIGZ = "tar | pigz -1"
TAR_ZSTD = "tar | zstd -1 -T0"
OPENSSL = "openssl dgst -sha256"
SHA256_FILE = "layercore.sha256_file"
# contenders of the changeset groups (benches/test_changeset.py)
PY_FLATTEN = "pure-Python flatten"
REF_FLATTEN = "reference.Stack.flatten"
PY_INDEX = "pure-Python merged index"
LC_LOOKUP = "layercore lookup"
LC_LOOKUP_MANY = "layercore lookup_many"
PY_DIFF = "pure-Python diff"
FIND = "find -printf"
TAR_X = "tar -xf"
LC_SNAPSHOT = "layercore snapshot"
# contenders of the store and transport groups (benches/test_store.py)
LC_COPY = "layercore copy_blob"
LC_COPY_UNVERIFIED = "copy_blob(verify=False)"
CP = "cp"
CP_SYNC = "cp + sync"
CP_R = "cp -r"
CP_R_SYNC = "cp -r + sync"
SAVE_LARGE = "save, large layer present"
SAVE_SMALL = "save, small layer present"
TRANSPORT_FORMATS = ("oci", "oci-archive", "docker-archive")
# contenders of the package group (benches/test_package.py)
LC_IMPORT_PACKAGE = "python -c 'import layercore'"
PYTHON_PASS = "python -c pass"
IMPORT_GROUP = "paired-import/package"
WHEEL_LIMIT = 10_000_000
IMPORT_LIMIT = 0.050

# groups in reading order; anything else follows, sorted
GROUP_ORDER = [
    "tar+diff_id/small",
    "tar+diff_id/stdlib",
    "gzip-1/small",
    "gzip-1/big",
    "gzip-1/stdlib",
    "zstd-1/small",
    "zstd-1/big",
    "zstd-1/stdlib",
    "sha256/big",
    "sha256-file/big",
    "threads-gzip-1/big",
    "flatten/stack5",
    "index/stack5",
    "lookup/stack5",
    "diff/small",
    "extract/small",
    "copy_blob/blob-1g",
    "save/present-layers",
    *(
        f"{kind}{op}-{fmt}/image-1g"
        for op in ("export", "import")
        for fmt in TRANSPORT_FORMATS
        for kind in ("", "paired-")
    ),
    IMPORT_GROUP,
]
RSS_GROUP = "rss"
# groups whose single entry carries RSS probes (extra_info["rss"]) instead of a timing
RSS_GROUPS = (RSS_GROUP, "rss/stack5")
RSS_LIMIT_MIB = 100.0

PREAMBLE = """\
Every ratio below compares contenders measured side by side, one after the other, in the same
run, on a shared, noisy {cores}-core machine, with the source trees warm in the page cache.
Absolute times drift from run to run; the ratios are the figures to read.

In each table the first row (bold) is the subject, layercore; **speed-up** is the other row's
median time divided by the subject's (baseline_time / layercore_time, > 1 means layercore is
faster), **size ratio** is the subject's output bytes divided by the other row's. Ratios and
MB/s use the median over the rounds shown (the fastest round is listed beside it); MB/s is
file-content bytes read per second (1 MB = 10^6 bytes). The CLI pipeline `tar | openssl dgst`
only hashes the tar stream and writes nothing to disk; every other contender writes its layer to
a file on the same filesystem as the tree.
"""


@dataclass
class Bench:
    name: str
    group: str
    median: float
    minimum: float
    rounds: int
    info: dict[str, Any]

    @property
    def tool(self) -> str:
        return str(self.info.get("tool", self.name))

    @property
    def subject(self) -> bool:
        return bool(self.info.get("subject"))

    @property
    def bytes_in(self) -> int | None:
        v = self.info.get("bytes_in")
        return int(v) if v is not None else None

    @property
    def bytes_out(self) -> int | None:
        v = self.info.get("bytes_out")
        return int(v) if v is not None else None

    def mbps(self) -> float | None:
        if self.bytes_in is None or self.median <= 0:
            return None
        return self.bytes_in / self.median / 1e6


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.benches = [
            Bench(
                name=b["name"],
                group=b.get("group") or "",
                median=float(b["stats"]["median"]),
                minimum=float(b["stats"]["min"]),
                rounds=int(b["stats"]["rounds"]),
                info=b.get("extra_info") or {},
            )
            for b in data.get("benchmarks", [])
        ]

    def groups(self) -> list[str]:
        present = {b.group for b in self.benches if b.group not in RSS_GROUPS}
        ordered = [g for g in GROUP_ORDER if g in present]
        return ordered + sorted(present - set(ordered))

    def in_group(self, group: str) -> list[Bench]:
        rows = [b for b in self.benches if b.group == group]
        return sorted(rows, key=lambda b: not b.subject)  # stable: subject first, then run order

    def get(self, group: str, tool: str) -> Bench | None:
        return next((b for b in self.benches if b.group == group and b.tool == tool), None)

    def subject(self, group: str) -> Bench | None:
        return next((b for b in self.benches if b.group == group and b.subject), None)

    def rss(self) -> list[dict[str, Any]]:
        """The probes of every RSS group, each probe name once (the import baselines recur)."""
        probes: dict[str, dict[str, Any]] = {}
        for group in RSS_GROUPS:
            for b in self.benches:
                if b.group == group:
                    for p in b.info.get("rss") or []:
                        probes.setdefault(str(p["name"]), p)
        return list(probes.values())

    def rate(self, group: str, tool: str, key: str) -> float | None:
        """``extra_info[key]`` per second of the median time (e.g. lookups per second)."""
        b = self.get(group, tool)
        if b is None or b.median <= 0 or b.info.get(key) is None:
            return None
        return float(b.info[key]) / b.median


# --------------------------------------------------------------------------------------------
# formatting


def esc(text: str) -> str:
    return text.replace("|", "\\|")


def fmt_time(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


def fmt_rate(mbps: float | None) -> str:
    if mbps is None:
        return "—"
    return f"{mbps:.0f}" if mbps >= 100 else f"{mbps:.1f}"


def fmt_ratio(r: float | None, digits: int = 2) -> str:
    return "—" if r is None else f"{r:.{digits}f}x"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# --------------------------------------------------------------------------------------------
# sections


def _run(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_section(res: Results) -> list[str]:
    mi = res.data.get("machine_info") or {}
    lc = mi.get("layercore") or {}
    ci = res.data.get("commit_info") or {}
    commit = lc.get("commit")
    if not commit or commit == "unknown":
        commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown (no commit)"
    if ci.get("dirty"):
        commit += " (uncommitted changes)"
    try:
        when = datetime.fromisoformat(res.data["datetime"]).strftime("%Y-%m-%d %H:%M UTC")
    except (KeyError, ValueError):
        when = "unknown"
    cpu = lc.get("cpu_model") or _cpu_model()
    cores = lc.get("cores") or os.cpu_count()
    py = f"{mi.get('python_implementation', '')} {mi.get('python_version', '')}".strip()
    tools = lc.get("tools") or {}
    rows = [
        ["CPU", esc(str(cpu))],
        ["Cores", str(cores)],
        ["Date", when],
        ["Commit", esc(str(commit))],
        ["Python", py or "unknown"],
        ["layercore build", esc(_build_line(lc))],
        ["Load average at the end (1/5/15 min)", esc(str(lc.get("loadavg", "unknown")))],
        ["Kernel", f"{mi.get('system', '')} {mi.get('release', '')}".strip() or "unknown"],
        ["Tools", esc(" · ".join(str(v) for v in tools.values())) or "unknown"],
    ]
    return ["## Machine", "", *table(["", ""], rows)]


def _build_line(lc: dict[str, Any]) -> str:
    """The profile, target and wheel tag of the installed package that was timed."""
    build = lc.get("build") or {}
    if not build:
        return str(lc.get("build_profile", "unknown"))
    wheel = build.get("wheel_tag") or "not installed from a wheel"
    return f"{build['profile']}, {build['target']}, {build['rustc']}; wheel {wheel}"


def import_cost(res: Results) -> float | None:
    """Median ``import layercore`` time minus median ``python -c pass`` time, in seconds."""
    b = res.subject(IMPORT_GROUP)
    if b is None or "paired" not in b.info:
        return None
    p = b.info["paired"]
    if not p["subject_times"] or not p["baseline_times"]:
        return None
    return float(statistics.median(p["subject_times"]) - statistics.median(p["baseline_times"]))


def wheel_sizes(res: Results) -> dict[str, int]:
    """The wheels in dist/ when the run started, by file name."""
    lc = (res.data.get("machine_info") or {}).get("layercore") or {}
    return {k: v for k, v in (lc.get("dist") or {}).items() if k.endswith(".whl")}


def package_targets(res: Results, add: Any) -> None:
    """The package's targets: the import's cost over a bare interpreter, and each wheel's size."""
    cost = import_cost(res)
    add(
        "`import layercore` over `python -c pass` (alternating, difference of medians)",
        "—",
        "< 50 ms",
        cost,
        cost is not None and cost < IMPORT_LIMIT,
        f"{cost * 1000:.1f} ms" if cost is not None else "",
    )
    sizes = wheel_sizes(res)
    if not sizes:
        add("wheel size", "—", "< 10 MB", None, False, "")
    for name, size in sizes.items():
        arch = "aarch64" if "aarch64" in name else "x86_64" if "x86_64" in name else name
        add(f"{arch} wheel size", "—", "< 10 MB", size, size < WHEEL_LIMIT, fmt_bytes(size))


def package_section(res: Results) -> list[str]:
    """What `make wheel` had built when the run started: each artifact in dist/ and its size."""
    lc = (res.data.get("machine_info") or {}).get("layercore") or {}
    dist = lc.get("dist") or {}
    if not dist:
        return []
    rows = [[f"`{esc(name)}`", fmt_bytes(size)] for name, size in dist.items()]
    return ["## Package", "", *table(["Artifact (dist/)", "Size"], rows)]


def trees_section(res: Results) -> list[str]:
    seen: dict[str, dict[str, Any]] = {}
    for b in res.benches:
        tree, ti = b.info.get("tree"), b.info.get("tree_info")
        if tree and ti and tree not in seen:
            seen[str(tree)] = ti
    if not seen:
        return []
    order = [t for t in ("small", "big", "stdlib") if t in seen] + sorted(
        set(seen) - {"small", "big", "stdlib"}
    )
    rows = [
        [
            f"`{t}`",
            f"{seen[t].get('files', 0):,}",
            f"{seen[t].get('dirs', 0):,}",
            f"{seen[t].get('symlinks', 0):,}",
            f"{seen[t].get('hardlinks', 0):,}",
            fmt_bytes(seen[t].get("bytes")),
        ]
        for t in order
    ]
    return [
        "## Trees",
        "",
        *table(["Tree", "Regular files", "Directories", "Symlinks", "Hardlinks", "Content"], rows),
    ]


def paired_ratio(res: Results, group: str) -> float | None:
    """The median over the pairs of a paired group of baseline time / layercore time."""
    b = res.subject(group)
    if b is None or "paired" not in b.info:
        return None
    p = b.info["paired"]
    ratios = [t / s for s, t in zip(p["subject_times"], p["baseline_times"], strict=True) if s > 0]
    return statistics.median(ratios) if ratios else None


def paired_section(res: Results, group: str, b: Bench) -> list[str]:
    """A group whose one benchmark alternated layercore and a baseline (``extra_info["paired"]``):
    both sides' medians, and the ratio over the pairs."""
    p = b.info["paired"]
    rows = []
    for name, times in (
        (f"**{esc(b.tool)}**", p["subject_times"]),
        (esc(p["baseline"]), p["baseline_times"]),
    ):
        median = statistics.median(times) if times else 0.0
        mbps = b.bytes_in / median / 1e6 if b.bytes_in and median > 0 else None
        speed = "subject" if times is p["subject_times"] else fmt_ratio(paired_ratio(res, group))
        rows.append(
            [name, fmt_time(median), fmt_time(min(times)), str(len(times)), fmt_rate(mbps), speed]
        )
    header = ["Contender", "Median", "Min", "Rounds", "MB/s", "Speed-up (median of pairs)"]
    return [
        f"### {group}",
        "",
        "The two alternate round by round (A B B A ...); each pair's speed-up is baseline time /"
        " layercore time, and the table gives their median.",
        "",
        *table(header, rows),
    ]


def group_section(res: Results, group: str) -> list[str]:
    rows_in = res.in_group(group)
    if len(rows_in) == 1 and "paired" in rows_in[0].info:
        return paired_section(res, group, rows_in[0])
    subj = res.subject(group)
    rows = []
    for b in rows_in:
        speed = size = "—"
        if subj is not None and b is not subj:
            speed = fmt_ratio(b.median / subj.median if subj.median > 0 else None)
            if subj.bytes_out and b.bytes_out:
                size = f"{subj.bytes_out / b.bytes_out:.4f}"
        name = esc(b.tool)
        if b is subj:
            name, speed, size = f"**{name}**", "subject", "subject"
        out = fmt_bytes(b.bytes_out)
        if b.bytes_out is None and b.info.get("writes_output") is False:
            out = "not written"
        median, minimum = fmt_time(b.median), fmt_time(b.minimum)
        rows.append([name, median, minimum, str(b.rounds), fmt_rate(b.mbps()), out, speed, size])
    header = ["Contender", "Median", "Min", "Rounds", "MB/s", "Output", "Speed-up", "Size ratio"]
    return [f"### {group}", "", *table(header, rows)]


def rss_section(res: Results) -> list[str]:
    probes = res.rss()
    if not probes:
        return []
    base = {p["name"]: p["maxrss_kib"] for p in probes if not p.get("baseline")}
    rows = []
    for p in probes:
        mib = p["maxrss_kib"] / 1024
        over = "baseline"
        if p.get("baseline") in base:
            over = f"+{(p['maxrss_kib'] - base[p['baseline']]) / 1024:.1f} MiB"
        rows.append([esc(p["name"]), f"{mib:.1f} MiB", over])
    return [
        "### Peak RSS",
        "",
        "Each probe is a fresh `python -c` child; the baseline rows only import the package.",
        "",
        *table(["Probe", "Peak RSS", "Over import baseline"], rows),
    ]


@dataclass
class Target:
    target: str
    tree: str
    required: str
    measured: str
    met: bool | None  # None: not measured


def _speedup(res: Results, group: str, baseline_tool: str) -> float | None:
    s, b = res.subject(group), res.get(group, baseline_tool)
    if s is None or b is None or s.median <= 0:
        return None
    return b.median / s.median


def _size_ratio(res: Results, group: str, baseline_tool: str) -> float | None:
    s, b = res.subject(group), res.get(group, baseline_tool)
    if s is None or b is None or not s.bytes_out or not b.bytes_out:
        return None
    return s.bytes_out / b.bytes_out


def targets(res: Results) -> list[Target]:
    out: list[Target] = []

    def add(
        target: str, tree: str, required: str, value: float | None, ok: bool, shown: str
    ) -> None:
        out.append(
            Target(
                target,
                tree,
                required,
                "—" if value is None else shown,
                None if value is None else ok,
            )
        )

    r = _speedup(res, "tar+diff_id/small", REF)
    add(
        "plain tar + diff_id vs reference",
        "small",
        "≥ 10x faster",
        r,
        r is not None and r >= 10,
        fmt_ratio(r, 1),
    )
    r = _speedup(res, "tar+diff_id/small", TAR_OPENSSL)
    add(
        "plain tar + diff_id vs `tar \\| openssl dgst`",
        "small",
        "faster (> 1x)",
        r,
        r is not None and r > 1,
        fmt_ratio(r),
    )
    r = _speedup(res, "sha256/big", OPENSSL)  # same bytes: time ratio = throughput ratio
    add(
        "uncompressed layer vs `openssl dgst -sha256` on the files",
        "big",
        "≥ 95 % of throughput",
        r,
        r is not None and r >= 0.95,
        f"{r * 100:.0f} %" if r is not None else "",
    )
    r = _speedup(res, "sha256-file/big", OPENSSL)
    add(
        "`sha256_file` vs `openssl dgst -sha256`",
        "big (one file)",
        "≥ 95 % of throughput",
        r,
        r is not None and r >= 0.95,
        f"{r * 100:.0f} %" if r is not None else "",
    )
    for tree in ("small", "big", "stdlib"):
        r = _speedup(res, f"gzip-1/{tree}", TAR_PIGZ)
        add(
            "gzip-1 throughput vs `tar \\| pigz -1`",
            tree,
            "≥ 1.5x",
            r,
            r is not None and r >= 1.5,
            fmt_ratio(r),
        )
    for tree in ("small", "big", "stdlib"):
        r = _size_ratio(res, f"gzip-1/{tree}", TAR_PIGZ)
        add(
            "gzip-1 output size vs `tar \\| pigz -1`",
            tree,
            "≤ 1.03x (≤ 3 % larger)",
            r,
            r is not None and r <= 1.03,
            f"{r:.4f}x" if r is not None else "",
        )
    for tree in ("small", "big", "stdlib"):
        r = _speedup(res, f"zstd-1/{tree}", TAR_ZSTD)
        add(
            "zstd-1 throughput vs `tar \\| zstd -1 -T0`",
            tree,
            "≥ 1x",
            r,
            r is not None and r >= 1,
            fmt_ratio(r),
        )
    changeset_targets(res, add)
    store_targets(res, add)
    run_targets(res, add)
    package_targets(res, add)
    lc_probes = [p for p in res.rss() if p.get("tool") == LC and p.get("tree")]
    if lc_probes:
        for p in lc_probes:
            mib = p["maxrss_kib"] / 1024
            add(
                f"peak RSS, {p['name']}",
                str(p["tree"]),
                "< 100 MiB",
                mib,
                mib < RSS_LIMIT_MIB,
                f"{mib:.1f} MiB",
            )
    else:
        add("peak RSS, layercore builds", "small, big", "< 100 MiB", None, False, "")
    return out


def _fmt_rate(per_s: float) -> str:
    return f"{per_s / 1e6:.2f} M/s" if per_s >= 1e6 else f"{per_s / 1e3:.0f} k/s"


def changeset_targets(res: Results, add: Any) -> None:
    """The changeset engine's targets (groups of benches/test_changeset.py)."""
    # the pure-Python twin when it was measured, else the tarfile flatten of the benchmark
    baseline = REF_FLATTEN if res.get("flatten/stack5", REF_FLATTEN) else PY_FLATTEN
    r = _speedup(res, "flatten/stack5", baseline)
    add(
        f"flatten (gzip-1) vs {baseline}",
        "stack5",
        "≥ 10x faster",
        r,
        r is not None and r >= 10,
        fmt_ratio(r, 1),
    )
    r = _speedup(res, "index/stack5", PY_INDEX)
    add(
        "merged index (`Stack(layers)`, no cached index) vs pure-Python index",
        "stack5",
        "≥ 10x faster",
        r,
        r is not None and r >= 10,
        fmt_ratio(r, 1),
    )
    v = res.rate("lookup/stack5", LC_LOOKUP, "lookups")
    add(
        "`stack.lookup(p)` in a Python loop (half hits, half misses)",
        "stack5",
        "≥ 1,000,000 lookups/s",
        v,
        v is not None and v >= 1e6,
        _fmt_rate(v) if v is not None else "",
    )
    v = res.rate("lookup/stack5", LC_LOOKUP_MANY, "lookups")
    add(
        "`stack.lookup_many(paths)` (half hits, half misses)",
        "stack5",
        "≥ 5,000,000 lookups/s",
        v,
        v is not None and v >= 5e6,
        _fmt_rate(v) if v is not None else "",
    )
    r = _speedup(res, "diff/small", PY_DIFF)
    add(
        "`Layer.from_diff` (plain tar) vs pure-Python diff",
        "small → small-b",
        "≥ 8x faster",
        r,
        r is not None and r >= 8,
        fmt_ratio(r, 1),
    )
    r = _speedup(res, "diff/small", FIND)
    t = None if r is None or r <= 0 else 1 / r  # layercore's time in units of find's
    add(
        "`Layer.from_diff` time vs `find A B -printf` (metadata walk only)",
        "small → small-b",
        "≤ 2x find's time",
        t,
        t is not None and t <= 2,
        f"{t:.2f}x find's time" if t is not None else "",
    )
    r = _speedup(res, "extract/small", TAR_X)
    add(
        "extract (`Stack([layer]).extract`) vs `tar -xf`",
        "small",
        "no slower (≥ 1x)",
        r,
        r is not None and r >= 1,
        fmt_ratio(r),
    )
    r = _ratio(res, "extract/small", LC_SNAPSHOT, TAR_X)
    add(
        "extracting a layer into an overlay snapshot (`extract.snapshot`) vs `tar -xf`",
        "small",
        "no slower (≥ 1x)",
        r,
        r is not None and r >= 1,
        fmt_ratio(r),
    )


def _ratio(res: Results, group: str, tool: str, baseline_tool: str) -> float | None:
    """baseline time / ``tool``'s time in ``group`` (> 1: ``tool`` is faster)."""
    t, b = res.get(group, tool), res.get(group, baseline_tool)
    if t is None or b is None or t.median <= 0:
        return None
    return b.median / t.median


def store_targets(res: Results, add: Any) -> None:
    """The store's and the transports' targets (groups of benches/test_store.py). Every
    layercore row fsyncs what it writes, so the baseline is ``cp`` followed by ``sync FILE...``
    (the same durability); the bare ``cp`` rows stand beside them in the group tables. Export
    and import are compared in their paired groups, where the two alternate."""
    for tool, what in ((LC_COPY, "verified"), (LC_COPY_UNVERIFIED, "`verify=False`")):
        r = _ratio(res, "copy_blob/blob-1g", tool, CP_SYNC)
        add(
            f"`copy_blob` ({what}) vs `cp` + `sync FILE`",
            "blob-1g",
            "≥ 0.9x",
            r,
            r is not None and r >= 0.9,
            fmt_ratio(r),
        )
    r = _ratio(res, "save/present-layers", SAVE_SMALL, SAVE_LARGE)  # large time / small time
    add(
        "`Store.save`, layers present: time with a 1 GB layer / with a 1 MB layer",
        "blob-1g",
        "≤ 1.2x (about equal)",
        r,
        r is not None and r <= 1.2,
        fmt_ratio(r),
    )
    for op in ("export", "import"):
        for fmt in TRANSPORT_FORMATS:
            baseline = CP_R_SYNC if fmt == "oci" else CP_SYNC
            r = paired_ratio(res, f"paired-{op}-{fmt}/image-1g")
            add(
                f"{op} `{fmt}` vs `{baseline.replace(' + sync', '')}` + `sync FILE...`"
                " (alternating)",
                "image-1g",
                "≥ 0.9x",
                r,
                r is not None and r >= 0.9,
                fmt_ratio(r),
            )
    registry_targets = (
        ("push to an empty registry vs `skopeo copy`", "registry-push/empty", 1.5, "≥ 1.5x"),
        (
            "push of a second image sharing the layers, same repository, vs `skopeo copy`",
            "registry-push/shared-layers",
            1.0,
            "no slower (≥ 1x)",
        ),
        (
            "push to another repository of the registry vs `skopeo copy` (blob-info cache gone)",
            "registry-push/other-repository",
            10.0,
            "≥ 10x",
        ),
        (
            "pull into an empty store vs `skopeo copy` to an empty OCI dir",
            "registry-pull/empty",
            1.2,
            "≥ 1.2x",
        ),
        (
            "pull with the big layer already stored vs `skopeo copy` into a dir holding it",
            "registry-pull/big-layer-stored",
            1.0,
            "no slower (≥ 1x)",
        ),
        ("push of one 1 GB blob vs `curl` PUT", "registry-blob/push-1g", 0.8, "≥ 80 % of curl"),
        (
            "pull of one 1 GB blob vs `curl` GET + `sync FILE`",
            "registry-blob/pull-1g",
            0.8,
            "≥ 80 % of curl",
        ),
    )
    for name, group, needed, required in registry_targets:
        tree = (
            "image 1 MB + 200 MB"
            if group.startswith(("registry-push", "registry-pull"))
            else ("blob-1g")
        )
        r = paired_ratio(res, group)
        add(name, tree, required, r, r is not None and r >= needed, fmt_ratio(r))
    for name, group, needed, required in (
        ("cold two-stage build vs `buildah bud --layers`", "build/two-stages", 10.0, "≥ 10x"),
        ("COPY of a 30,000-file directory vs `buildah bud`", "build/copy-30k-files", 5.0, "≥ 5x"),
        (
            "context checksum (no stat cache) vs `tar -cf - \\| openssl dgst -sha256`",
            "build/checksum-cold",
            1 / 1.5,
            "within 1.5x (≥ 0.67x)",
        ),
        (
            "context checksum, stat cache warm, vs cold (in one process)",
            "build/checksum-warm",
            20.0,
            "≥ 20x",
        ),
        (
            "rebuild, nothing changed, vs buildah's cached rebuild",
            "build/cached-nothing-changed",
            50.0,
            "≥ 50x",
        ),
        (
            "rebuild after one file's content changed, vs buildah's",
            "build/cached-one-file-changed",
            10.0,
            "≥ 10x",
        ),
        (
            "fresh store, `--cache-from` a loopback registry, vs `layercore pull` of the image",
            "build/cache-from-fresh",
            0.5,
            "≤ 2x the pull's time (≥ 0.5x)",
        ),
    ):
        r = paired_ratio(res, group)
        add(name, "build context", required, r, r is not None and r >= needed, fmt_ratio(r))
    for group, what, required in (
        ("build/run-true", "busybox base, its snapshot kept", "≤ 30 ms"),
        ("build/run-true-first", "busybox base, first use (extracts its snapshot)", "—"),
    ):
        b = res.subject(group)
        extra = None
        if b is not None and "paired" in b.info:
            p = b.info["paired"]
            # The median of the pairs' differences: each pair ran back to back.
            extra = 1000 * statistics.median(
                s - t for s, t in zip(p["subject_times"], p["baseline_times"], strict=True)
            )
        add(
            "`RUN true` in a build, beyond the build without it (whole processes, alternating)",
            what,
            required,
            extra,
            extra is not None and (extra <= 30 or required == "—"),
            f"{extra:.0f} ms" if extra is not None else "",
        )
    for name, group, tree, needed, required in (
        (
            "waste analysis (`layercore waste --json`) vs `dive --ci`, whole processes",
            "analysis/waste-50k",
            "5 layers, 50,000 entries",
            5.0,
            "≥ 5x",
        ),
        (
            "`explain` of two layers vs indexing both (in one process)",
            "analysis/explain-20k",
            "2 layers of 20,000 entries",
            1.0,
            "no slower (≥ 1x)",
        ),
    ):
        r = paired_ratio(res, group)
        add(name, tree, required, r, r is not None and r >= needed, fmt_ratio(r))
    b = res.subject("analysis/waste-50k")
    rss = b.info.get("rss_kib") if b is not None else None
    kib = rss.get("waste") if isinstance(rss, dict) else None
    mib = None if kib is None else kib / 1024
    add(
        "peak RSS of `layercore waste` (whole process)",
        "5 layers, 50,000 entries",
        "< 100 MiB",
        mib,
        mib is not None and mib < 100,
        f"{mib:.0f} MiB" if mib is not None else "",
    )
    b = res.subject("build-rss/two-stages")
    rss = b.info.get("rss_kib") if b is not None else None
    kib = rss.get("build") if isinstance(rss, dict) else None
    mib = None if kib is None else kib / 1024
    add(
        "peak RSS of the two-stage `layercore build` (whole process)",
        "build context",
        "< 200 MiB",
        mib,
        mib is not None and mib < 200,
        f"{mib:.0f} MiB" if mib is not None else "",
    )
    b = res.subject("registry-rss/2g")
    rss = b.info.get("rss_kib") if b is not None else None
    for op in ("push", "pull"):
        kib = rss.get(op) if isinstance(rss, dict) else None
        mib = None if kib is None else kib / 1024
        add(
            f"peak RSS of `layercore {op}` moving a 2 GB layer (whole process)",
            "layer-2g",
            "< 100 MiB",
            mib,
            mib is not None and mib < 100,
            f"{mib:.0f} MiB" if mib is not None else "",
        )


def _overhead_text(ms: float | None, imports: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.1f} ms" + (f" ({imports:.0f} ms of it imports)" if imports is not None else "")


def run_targets(res: Results, add: Any) -> None:
    """The targets of ``layercore run`` (groups of benches/test_run.py): start-up over its floor
    (``import layercore`` + ``bwrap /bin/true``), the same for a 10 MB and a 1 GB image, the
    disk of twenty containers, and an image's first run against ``tar -xzf`` of its blobs."""
    overhead: dict[str, tuple[float, float]] = {}
    for image, what in (("10mb", "busybox + 10 MB"), ("1gb", "busybox + 1 GB (4 layers)")):
        b = res.subject(f"run/startup-{image}")
        ms = b.info.get("overhead_ms") if b is not None else None
        if b is not None and ms is not None:
            overhead[image] = (float(ms), float(b.info.get("overhead_iqr_ms") or 0.0))
        add(
            "`layercore run --rm IMAGE true` beyond `import layercore` + `bwrap /bin/true`"
            " (whole processes, alternating, median of pair differences)",
            what,
            "≤ 30 ms",
            ms,
            ms is not None and ms <= 30,
            _overhead_text(ms, b.info.get("imports_ms") if b is not None else None),
        )
    d = None
    noise = 0.0
    if len(overhead) == 2:
        d = overhead["1gb"][0] - overhead["10mb"][0]
        noise = max(overhead["1gb"][1], overhead["10mb"][1])  # the wider interquartile range
    add(
        "start-up overhead with the 1 GB image minus with the 10 MB one",
        "1 GB vs 10 MB",
        "same within noise (≤ the IQR of the pair differences)",
        d,
        d is not None and abs(d) <= noise,
        f"{d:+.1f} ms (IQR {noise:.1f} ms)" if d is not None else "",
    )
    b = res.subject("run/disk-20")
    added = b.info.get("disk_added") if b is not None else None
    add(
        "disk added by 20 containers of the 1 GB image (`st_blocks`, snapshots made before)",
        "busybox + 1 GB (4 layers)",
        "< 20 MB in all",
        added,
        added is not None and added < 20_000_000,
        f"{fmt_bytes(added)} ({fmt_bytes(added // 20)} each)" if added is not None else "",
    )
    r = paired_ratio(res, "run/first-run")
    add(
        "first run of an image (extracts its snapshots) vs `tar -xzf` of its blobs",
        "busybox + 1 GB (4 layers)",
        "no slower (≥ 1x)",
        r,
        r is not None and r >= 1,
        fmt_ratio(r),
    )


def targets_section(res: Results) -> list[str]:
    rows = []
    for t in targets(res):
        status = "not measured" if t.met is None else ("met" if t.met else "**not met**")
        if t.required == "—" and t.met is not None:
            status = "information"
        rows.append([t.target, t.tree, t.required, t.measured, status])
    return ["## Targets", "", *table(["Target", "Tree", "Required", "Measured", "Status"], rows)]


def render(res: Results) -> str:
    mi = res.data.get("machine_info") or {}
    lc = mi.get("layercore") or {}
    cores = lc.get("cores") or os.cpu_count()
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benches/report.py from pytest-benchmark JSON: do not edit above the "
        "notes marker; it is rewritten on every run. -->",
        "",
        PREAMBLE.format(cores=cores).rstrip(),
        "",
    ]
    if lc.get("smoke"):
        lines += [
            "> **Smoke run** (`LAYERCORE_BENCH_SMOKE=1`): tiny trees, one round each. These",
            "> figures only show that the benchmark code runs; they say nothing about performance.",
            "",
        ]
    lines += [*machine_section(res), ""]
    lines += [*targets_section(res), ""]
    package_lines = package_section(res)
    if package_lines:
        lines += [*package_lines, ""]
    tree_lines = trees_section(res)
    if tree_lines:
        lines += [*tree_lines, ""]
    lines += ["## Results", ""]
    for group in res.groups():
        lines += [*group_section(res, group), ""]
    rss_lines = rss_section(res)
    if rss_lines:
        lines += [*rss_lines, ""]
    return "\n".join(lines)


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one: the first run's machine info, every run's benchmarks, a group that
    recurs taken from the last run that has it (each group's contenders always come from one
    run, so its ratios stay side by side)."""
    merged = dict(runs[0])
    by_group: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups: dict[str, list[dict[str, Any]]] = {}
        for b in run.get("benchmarks", []):
            groups.setdefault(b.get("group") or "", []).append(b)
        by_group.update(groups)
    merged["benchmarks"] = [b for rows in by_group.values() for b in rows]
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python benches/report.py BENCH_JSON [MORE_JSON...] OUT_MD", file=sys.stderr)
        return 2
    inputs, out_md = [Path(a) for a in argv[1:-1]], Path(argv[-1])
    res = Results(merge([json.loads(p.read_text()) for p in inputs]))
    notes = NOTES_MARKER + "\n"
    if out_md.exists():
        old = out_md.read_text()
        i = old.find(NOTES_MARKER)
        if i >= 0:
            notes = old[i:]
    text = render(res) + "\n" + notes
    tmp = out_md.with_name(out_md.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out_md)
    print(f"wrote {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
