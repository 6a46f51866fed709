"""The calibration probes, registered in one line each, with their time budgets.

A new probe is a module exposing ``run(request: ProbeRequest) -> ProbeResult``, added here.
The budgets keep the three probes together under about 1 s of device time on a GPU and under
5 s on a two-core CPU (warm-up included; ``tests/test_probes.py`` checks the CPU total).
"""

from __future__ import annotations

from collections.abc import Callable

from scaleprobe.probes import compute, dispatch, memory
from scaleprobe.probes.request import ProbeRequest, ProbeResult

CALIBRATION_PROBES: dict[str, Callable[[ProbeRequest], ProbeResult]] = {
    "compute": compute.run,
    "memory": memory.run,
    "dispatch": dispatch.run,
}

# Timing budget (seconds of repeats after warm-up) per probe and device kind.
BUDGET_SECONDS = {
    "cpu": {"compute": 1.5, "memory": 0.8, "dispatch": 0.4},
    "cuda": {"compute": 0.3, "memory": 0.2, "dispatch": 0.2},
}
