"""What the installed package costs before it does anything: ``import layercore`` against
``python -c pass``, as whole processes of the same interpreter and venv.

The two alternate round by round (A B B A ...), since a new interpreter's start-up time drifts
with the page cache and the other core's load more than the import costs. The target is on the
difference of the medians (report.py): under 50 ms. The wheels' sizes are recorded in
``machine_info`` by conftest.py. Timings are never asserted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import trees
from report import LC_IMPORT_PACKAGE, PYTHON_PASS

SMOKE = trees.smoke_mode()
PAIRS = 2 if SMOKE else 40

COMMANDS = {
    LC_IMPORT_PACKAGE: [sys.executable, "-c", "import layercore"],
    PYTHON_PASS: [sys.executable, "-c", "pass"],
}


def test_import_cost(benchmark: Any) -> None:
    times: dict[str, list[float]] = {LC_IMPORT_PACKAGE: [], PYTHON_PASS: []}
    order = [(LC_IMPORT_PACKAGE, PYTHON_PASS), (PYTHON_PASS, LC_IMPORT_PACKAGE)]
    sequence = [who for i in range(PAIRS) for who in order[i % 2]]
    state = {"round": 0}

    def one_round() -> None:
        who = sequence[state["round"]]
        state["round"] += 1
        start = time.perf_counter()
        subprocess.run(COMMANDS[who], check=True)
        times[who].append(time.perf_counter() - start)

    benchmark.group = "paired-import/package"
    benchmark.pedantic(one_round, rounds=len(sequence), iterations=1)
    # With --benchmark-disable (make test's smoke run) pedantic runs one round only.
    while state["round"] < len(sequence):
        one_round()
    benchmark.extra_info.update(
        tool=LC_IMPORT_PACKAGE,
        subject=True,
        bytes_in=None,
        bytes_out=None,
        command=" ".join(COMMANDS[LC_IMPORT_PACKAGE]),
        paired={
            "baseline": PYTHON_PASS,
            "subject_times": times[LC_IMPORT_PACKAGE],
            "baseline_times": times[PYTHON_PASS],
        },
    )
    assert len(times[LC_IMPORT_PACKAGE]) == len(times[PYTHON_PASS]) == PAIRS
