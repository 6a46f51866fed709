"""How close do the calibration probes come to the best this device can do?

The compute probe must reach at least 70% of the best matrix-product rate torch achieves here, and
the memory probe at least 70% of the best copy bandwidth. Method, in two phases:

1. Sweep, to find the best configuration:
   - compute: square products n = 1024 … 4096 (up to 8192 on a GPU) through ``torch.mm(out=)``,
     ``torch.matmul`` and ``@``, plus a tall-skinny and a wide shape;
   - memory: buffers of 2×, 4×, 8× and 16× the last-level cache through ``Tensor.copy_``,
     ``torch.clone``, ``torch.add(x, 0, out=)`` and numpy's ``copyto`` on the same memory
     (bandwidth = bytes read + written per second, the probe's convention).
   The best median in the sweep wins. On a noisy machine the maximum over many candidates is
   biased upwards, so the sweep only *chooses*; it does not give the reference figure.
2. A/B, to compare fairly: the chosen best configuration and the probe (run exactly as the worker
   runs it, ``probes/registry.py`` budgets) alternate for ``--rounds`` rounds with the same time
   budget each; the ratio is probe median / best median over the rounds.

It also reports the calibration's total device time per run (must stay under 5 s on a CPU).

Usage::

    python bench/probe_quality.py [--rounds 5] [--dtypes float32,bfloat16] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scaleprobe.probes import compute, memory
from scaleprobe.probes.device import cpu_llc_bytes, default_timer, gpu_l2_bytes, torch_dtype
from scaleprobe.probes.registry import CALIBRATION_PROBES, probe_timing
from scaleprobe.probes.request import ProbeRequest
from scaleprobe.probes.timing import TimingRequest, measure

SWEEP_TIMING = TimingRequest(warmup=1, min_repeats=3, max_repeats=20, budget_seconds=0.6)


def median_seconds(fn: Callable[[], object], device: str) -> float:
    return measure(fn, SWEEP_TIMING, default_timer(device)).median_seconds


def best_matmul(device: str, dtype: str) -> tuple[float, str, Callable[[], float]]:
    """The best median FLOP/s over sizes, shapes and call styles, and how to re-measure it."""
    sizes = [1024, 2048, 3072, 4096] + ([6144, 8192] if device.startswith("cuda") else [])
    shapes = [(n, n, n) for n in sizes] + [(8192, 1024, 1024), (1024, 4096, 4096)]
    best: tuple[float, str, Callable[[], float]] = (0.0, "", lambda: 0.0)
    for m, n, k in shapes:
        a = torch.randn(m, k, dtype=torch_dtype(dtype), device=device)
        b = torch.randn(k, n, dtype=torch_dtype(dtype), device=device)
        out = torch.empty(m, n, dtype=torch_dtype(dtype), device=device)
        for style, fn in (
            ("mm(out=)", lambda a=a, b=b, out=out: torch.mm(a, b, out=out)),
            ("matmul", lambda a=a, b=b: torch.matmul(a, b)),
            ("@", lambda a=a, b=b: a @ b),
        ):
            flops = 2.0 * m * n * k
            rate = flops / median_seconds(fn, device)
            if rate > best[0]:
                best = (
                    rate,
                    f"{style} {m}x{k}x{n}",
                    lambda fn=fn, flops=flops: flops / median_seconds(fn, device),
                )
    return best


def best_copy(device: str) -> tuple[float, str, Callable[[], float]]:
    """The best median copy bandwidth (read + write bytes per second) over sizes and methods."""
    llc = gpu_l2_bytes(device) if device.startswith("cuda") else cpu_llc_bytes()[0]
    best: tuple[float, str, Callable[[], float]] = (0.0, "", lambda: 0.0)
    for multiple in (2, 4, 8, 16):
        size = multiple * llc
        src = torch.rand(size // 4, device=device)
        dst = torch.empty_like(src)
        methods: list[tuple[str, Callable[[], object]]] = [
            ("copy_", lambda src=src, dst=dst: dst.copy_(src)),
            ("clone", lambda src=src: src.clone()),
            ("add(out=)", lambda src=src, dst=dst: torch.add(src, 0, out=dst)),
        ]
        if not device.startswith("cuda"):
            src_np, dst_np = src.numpy(), dst.numpy()
            methods.append(("numpy.copyto", lambda s=src_np, d=dst_np: np.copyto(d, s)))
        for name, fn in methods:
            moved = 2.0 * size
            bandwidth = moved / median_seconds(fn, device)
            if bandwidth > best[0]:
                best = (
                    bandwidth,
                    f"{name} {multiple}xLLC ({size >> 20} MiB)",
                    lambda fn=fn, moved=moved: moved / median_seconds(fn, device),
                )
    return best


def probe_request(device: str, dtype: str, name: str) -> ProbeRequest:
    """The request the worker sends this probe (same budget and hard stop)."""
    return ProbeRequest(device=device, dtype=dtype, timing=probe_timing(name, device))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    device = args.device

    rows: dict[str, dict[str, list[float]]] = {}
    best_how: dict[str, str] = {}
    contenders: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {}
    for dtype in dtypes:
        _, how, again = best_matmul(device, dtype)
        best_how[f"compute {dtype}"] = how
        contenders[f"compute {dtype}"] = (
            again,
            lambda dtype=dtype: compute.run(probe_request(device, dtype, "compute")).value,
        )
    _, how, again = best_copy(device)
    best_how["memory"] = how
    contenders["memory"] = (
        again,
        lambda: memory.run(probe_request(device, dtypes[0], "memory")).value,
    )
    print("sweep done: " + "; ".join(f"{k}: {v}" for k, v in best_how.items()), file=sys.stderr)

    calibration_seconds: list[float] = []
    for round_index in range(args.rounds):
        for key, (best, probe) in contenders.items():
            row = rows.setdefault(key, {"best": [], "probe": []})
            # Alternate which goes first, so neither always follows the other's heat.
            if round_index % 2:
                row["probe"].append(probe())
                row["best"].append(best())
            else:
                row["best"].append(best())
                row["probe"].append(probe())
        device_seconds = sum(
            run(probe_request(device, dtypes[0], name)).device_seconds
            for name, run in CALIBRATION_PROBES.items()
        )
        calibration_seconds.append(device_seconds)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    report: dict[str, Any] = {
        "device": device,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "rounds": args.rounds,
        "timestamp_seconds": time.time(),
        "calibration_device_seconds": calibration_seconds,
        "results": {},
    }
    for key, values in rows.items():
        best = statistics.median(values["best"])
        probe = statistics.median(values["probe"])
        report["results"][key] = {
            "best": best,
            "best_method": best_how[key],
            "probe": probe,
            "ratio": probe / best,
            "best_samples": values["best"],
            "probe_samples": values["probe"],
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"device {device}, {report['threads']} threads, torch {torch.__version__}, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(f"{'probe':<18}{'best':>14}{'probe':>14}{'ratio':>8}  best found with")
    for key, r in report["results"].items():
        unit = 1e9
        print(
            f"{key:<18}{r['best'] / unit:>12.1f} G{r['probe'] / unit:>12.1f} G"
            f"{r['ratio']:>8.2f}  {r['best_method']}"
        )
    print(
        "calibration device seconds per run: " + ", ".join(f"{s:.2f}" for s in calibration_seconds)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
