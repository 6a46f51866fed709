"""The calibration probes, registered in one line each, with their time budgets.

A new probe is a module exposing ``run(request: ProbeRequest) -> ProbeResult``, added here.
The budgets keep the three probes together under about 1 s of device time on a GPU and under
5 s on a two-core CPU (warm-up included; ``tests/test_probes.py`` checks the CPU total).
"""

from __future__ import annotations

from collections.abc import Callable

from scaleprobe.probes import compute, dispatch, memory
from scaleprobe.probes.request import ProbeRequest, ProbeResult
from scaleprobe.probes.timing import TimingRequest

CALIBRATION_PROBES: dict[str, Callable[[ProbeRequest], ProbeResult]] = {
    "compute": compute.run,
    "memory": memory.run,
    "dispatch": dispatch.run,
}

# Timing budget (wall seconds, warm-up included) per probe and device kind. A probe overshoots its
# budget by at most one sample, or by its minimum repeats when samples are slow (a loaded host).
# The CPU figures keep a calibration within 2% of the device time of measuring the default grid
# (bench/probe_cost.py on a Xeon guest: 1.85 s of 70.4 s at 1.2/0.6 s, 1.47 s of 71.6 s at
# 0.8/0.5 s once the dispatch probe timed a tiny encoder too, 1.34 s of 68.0 s = 1.97% at
# 0.7/0.5 s with its cold-cache pass; compute now 0.6 s for a margin; 1.35 s of 67.5 s = 2.00%
# at 0.6/0.5 s once the memory probe released its spare pages before its clone, so memory now
# 0.45 s; BENCHMARKS.md).
BUDGET_SECONDS = {
    "cpu": {"compute": 0.6, "memory": 0.45, "dispatch": 0.3},
    "cuda": {"compute": 0.3, "memory": 0.2, "dispatch": 0.2},
}


def probe_timing(name: str, device: str) -> TimingRequest:
    """How the worker times calibration probe ``name``: its budget, and a hard stop at twice it."""
    budget = BUDGET_SECONDS["cuda" if device.startswith("cuda") else "cpu"][name]
    return TimingRequest(
        warmup=1, min_repeats=3, max_repeats=200, budget_seconds=budget, max_seconds=2 * budget
    )
