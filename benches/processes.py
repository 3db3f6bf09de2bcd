"""Whole-process benchmarks run side by side: layercore's command and a peer's (skopeo, curl,
buildah), alternating round by round (A B B A ...), and a child's peak RSS.

Shared by the registry and builder benches; not a test module.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import trees

SMOKE = trees.smoke_mode()
PAIRS = 1 if SMOKE else 3
PARENT = r"""
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], check=False, stdout=subprocess.DEVNULL).returncode
print(json.dumps({"rc": rc, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


#: A failure of a peer's own machinery, not of the work it was given: buildah's runtime
#: sealing its memfd copy of itself races with another process's open of it under load
#: (`Close_Fd sealing memfd copy: Device or resource busy`). Such a run is run again, once.
_TRANSIENT = ("sealing memfd copy",)


def run(cmd: list[str], env: dict[str, str]) -> float:
    """Runs ``cmd``; the seconds its successful attempt took (a retried one is not counted)."""
    for attempt in (1, 2):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return time.perf_counter() - start
        if attempt == 1 and any(mark in done.stderr for mark in _TRANSIENT):
            continue
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    raise AssertionError("unreachable")


#: A contender's command: argv of a whole process, or a function called in this one.
Command = list[str] | Callable[[], object]


def paired(
    benchmark: Any,
    group: str,
    baseline: str,
    bytes_in: int,
    setup: Callable[[str], tuple[Command, Command]],
    env: dict[str, str],
    check: Callable[[], None] | None = None,
    pairs: int | None = None,
) -> None:
    """Alternates layercore's and the baseline's command, A B B A ...; ``setup(who)`` prepares
    a round (untimed) and returns ``(layercore command, baseline command)``. A command is a
    process's argv, or a function called in this process (for a contender that is layercore
    itself, where the interpreter's start would only add the same time to both)."""
    times: dict[str, list[float]] = {"layercore": [], "baseline": []}
    order = [("layercore", "baseline"), ("baseline", "layercore")]
    sequence = [who for i in range(pairs or PAIRS) for who in order[i % 2]]
    state = {"round": 0}

    def one_round() -> None:
        who = sequence[state["round"]]
        state["round"] += 1
        ours, theirs = setup(who)
        if not SMOKE:
            os.sync()
        cmd = ours if who == "layercore" else theirs
        if callable(cmd):
            start = time.perf_counter()
            cmd()
            times[who].append(time.perf_counter() - start)
        else:
            times[who].append(run(cmd, env))
        if who == "layercore" and check is not None:
            check()

    benchmark.group = group
    benchmark.pedantic(one_round, rounds=len(sequence), iterations=1)
    while state["round"] < len(sequence):
        one_round()
    benchmark.extra_info.update(
        tool="layercore",
        subject=True,
        bytes_in=bytes_in,
        bytes_out=None,
        paired={
            "baseline": baseline,
            "subject_times": times["layercore"],
            "baseline_times": times["baseline"],
        },
        ratio=statistics.median(
            b / s for s, b in zip(times["layercore"], times["baseline"], strict=True) if s > 0
        ),
    )


def peak_rss(cmd: list[str], env: dict[str, str]) -> int:
    """Peak RSS (KiB) of ``cmd`` run as a child of a fresh Python process."""
    done = subprocess.run(
        [sys.executable, "-c", PARENT, *cmd], env=env, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, cmd
    return int(result["maxrss_kib"])
