"""Where a forward's time goes, op family by op family, against the performance model's kernels.

The model charges each kernel of a forward (``scaleprobe.models.costs``) from the calibration's
figures. This script takes a calibration in this process (the worker's own probes), then for each
point times the real forward as the daemon does (random weights, ``probes.model.random_inputs``,
warm-ups, median of timed forwards), profiles one more with ``torch.profiler`` and sets each op
family's self time beside what the model charges for the same family:

- ``linear``: ``addmm``/``mm`` (the model: its GEMM kernels outside attention);
- ``bias_fill``: ``copy_``, almost all of it ``addmm`` writing the broadcast bias into its output
  before the product, and where a large output page-faults, the faults land here (the model:
  its linear layers' fill pass and the page faults it charges on their outputs);
- ``attention``: fused SDPA, or eager ``bmm``/``softmax``;
- ``activation``, ``norm``, ``elementwise``, ``gather``: the rest of the device work;
- ``other ops``: every other aten op (views, allocations), charged 0 (the model counts them in
  its host time);
- ``outside ops``: the profiled forward's wall time less every aten op's self time (host work in
  Python and the profiler's own share), against the model's host time.

A family's self time also holds its ops' dispatch work, which the model counts in its host time:
at the smallest points that makes every small family read several times its device charge while
``outside ops`` reads under the host charge. Read the families at 128 tokens and up.

Last, it times fused attention alone at 191 and 192 queries, either side of the CPU kernel's
first block-size step, against the rate the model gives each (``predict.product_size``).

    python bench/op_profile.py --out bench/results/op_profile.json               # ~1 min
    OMP_NUM_THREADS=1 python bench/op_profile.py --out bench/results/op_profile-1thread.json
    python bench/op_profile.py --load bench/results/op_profile.json
    python bench/op_profile.py --quick                                            # tests
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import params_from
from common import (
    PAGE_BYTES,
    TINY_CONFIG,
    TINY_NAME,
    calibration,
    load_or_measure,
    machine,
    minor_page_faults,
    stderr_log,
)
from scaleprobe.models.architecture import PRESETS, Architecture, architecture_from_config
from scaleprobe.models.costs import ATTENTION, GATHER, GEMM, HOST, NORM, Kernel, forward_cost
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.errors import InputError
from scaleprobe.models.predict import (
    fill_seconds,
    first_touch_seconds,
    gemm_rate,
    kernel_device_seconds,
    product_size,
    time_forward,
)

SCHEMA = "scaleprobe.bench.op_profile/1"
FAMILIES = (
    "linear",
    "bias_fill",
    "attention",
    "activation",
    "norm",
    "elementwise",
    "gather",
    "other ops",
)
OUTSIDE = "outside ops"
# aten op (self time) → family; every other aten op (views, allocations, ``linear``'s own
# bookkeeping) is "other ops", which the model charges only as host time.
ATEN_FAMILY = {
    "addmm": "linear",
    "mm": "linear",
    "copy_": "bias_fill",
    "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "bmm": "attention",
    "baddbmm": "attention",
    "softmax": "attention",
    "_softmax": "attention",
    "gelu": "activation",
    "tanh": "activation",
    "pow": "activation",
    "native_layer_norm": "norm",
    "layer_norm": "norm",
    "add": "elementwise",
    "add_": "elementwise",
    "mul": "elementwise",
    "div": "elementwise",
    "sub": "elementwise",
    "embedding": "gather",
    "index_select": "gather",
}
DEFAULT_POINTS = ((1, 16), (1, 64), (2, 128), (4, 128), (16, 128), (16, 256))
# Fused attention on either side of the CPU kernel's first block-size step (32 → 64 query rows
# at 192 queries): batch 8, 12 heads of 64, as bert-base runs it.
ATTENTION_STEP = (191, 192)
ATTENTION_SHAPE = (8, 12, 64)
WARMUPS = 3
TIMED = 5


def model_family(name: str, kind: str) -> str:
    """The family of one of the model's kernels (named as in ``scaleprobe.models.costs``)."""
    if name.startswith("attention_") and not name.endswith("output_projection"):
        return "attention"
    if name.startswith(("ffn_activation", "pooler_tanh")):
        return "activation"
    if kind == NORM:
        return "norm"
    if kind == GATHER:
        return "gather"
    if kind in (GEMM, ATTENTION):
        return "linear"
    return "elementwise"


def charged(arch: Architecture, params: DeviceParams, batch: int, seq: int) -> dict[str, float]:
    """Seconds the model charges per family for one forward, and its host time (OUTSIDE)."""
    cost = forward_cost(arch, batch, seq, "float32")
    seconds = dict.fromkeys((*FAMILIES, OUTSIDE), 0.0)
    for kernel in cost.kernels:
        if kernel.kind == HOST:
            continue
        device = kernel_device_seconds(kernel, params, "float32")[0]
        if kernel.fill_bytes:
            # the fill is the output's first write, so its page faults happen there too
            fill = fill_seconds(kernel, params) + first_touch_seconds(kernel, params)
            seconds["bias_fill"] += fill
            device -= fill
        seconds[model_family(kernel.name, kernel.kind)] += device
    timing = time_forward(cost, params)
    seconds[OUTSIDE] = timing.host_seconds
    seconds["latency"] = timing.latency_seconds
    return seconds


def measure_point(
    name: str, config: Mapping[str, Any], batch: int, seq: int, cache: Any
) -> dict[str, Any]:
    """The daemon's forward at one point: median wall of TIMED forwards, then one profiled."""
    import torch
    from scaleprobe.probes.model import (
        PointRequest,
        random_inputs,
        reset_attention_type,
        without_profiler_chatter,
    )
    from torch.profiler import ProfilerActivity, profile

    model = cache.get(config, "float32", "cpu")
    reset_attention_type(model, config)
    inputs = random_inputs(config, PointRequest(name, config, batch, seq))

    def forward() -> object:
        with torch.inference_mode():
            return model(**inputs)

    for _ in range(WARMUPS):
        forward()
    walls = []
    for _ in range(TIMED):
        started = time.perf_counter()
        forward()
        walls.append(time.perf_counter() - started)
    faults = minor_page_faults()
    with without_profiler_chatter(), profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        forward()
        profiled_wall = time.perf_counter() - started
    faulted = (minor_page_faults() - faults) * PAGE_BYTES
    families = dict.fromkeys(FAMILIES, 0.0)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            family = ATEN_FAMILY.get(event.key.removeprefix("aten::"), "other ops")
            families[family] += event.self_cpu_time_total / 1e6
    wall = statistics.median(walls)
    return {
        "model": name,
        "batch_size": batch,
        "seq_len": seq,
        "wall_seconds": wall,
        "families_seconds": families,
        "profiled_wall_seconds": profiled_wall,
        "outside_ops_seconds": max(0.0, profiled_wall - sum(families.values())),
        "profiled_page_fault_bytes": faulted,
    }


def attention_rates(queries: Sequence[int], samples: int = 9) -> list[dict[str, Any]]:
    """FLOP/s of ``scaled_dot_product_attention`` (median of ``samples``) at each length."""
    import torch
    import torch.nn.functional as F

    batch, heads, head = ATTENTION_SHAPE
    rates = []
    for seq in queries:
        q, k, v = (torch.randn(batch, heads, seq, head) for _ in range(3))
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v)
        walls = []
        for _ in range(samples):
            started = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v)
            walls.append(time.perf_counter() - started)
        flops = 4.0 * batch * heads * seq * seq * head
        rates.append({"queries": seq, "flops_per_second": flops / statistics.median(walls)})
    return rates


def attention_report(data: Mapping[str, Any], params: DeviceParams) -> list[str]:
    batch, heads, head = ATTENTION_SHAPE
    lines = ["", f"fused attention, {batch} × {heads} heads of {head}: GFLOP/s measured / model"]
    for entry in data.get("attention", []):
        seq = entry["queries"]
        kernel = Kernel(
            "attention_sdpa", ATTENTION, 0.0, 0.0, 0, gemm=(batch * heads, seq, seq, head)
        )
        model = gemm_rate(params, "float32", product_size(kernel, params))
        lines.append(f"- {seq} queries: {entry['flops_per_second'] / 1e9:.0f} / {model / 1e9:.0f}")
    return lines


def report(data: Mapping[str, Any], params: DeviceParams) -> str:
    lines = [
        f"torch threads {data['threads']}; calibration: R {params.rate('float32') / 1e9:.0f} "
        f"GFLOP/s, x½ {params.gemm_half_size:.1f} rows, first touch "
        f"{(params.first_touch_seconds_per_byte or 0) * 1e9:.3f} ns/B",
        "",
        "ms measured / charged by the model (measured over charged)",
        "",
        "| point | wall / predicted | " + " | ".join((*FAMILIES, OUTSIDE)) + " | faulted MB |",
        "|---|---|" + "---|" * (len(FAMILIES) + 2),
    ]
    architectures = architectures_of(data)
    for entry in data["measured"]:
        model = charged(
            architectures[entry["model"]], params, entry["batch_size"], entry["seq_len"]
        )
        measured = {**entry["families_seconds"], OUTSIDE: entry["outside_ops_seconds"]}
        cells = [cell(entry["wall_seconds"], model["latency"])]
        cells += [cell(measured[f], model[f]) for f in (*FAMILIES, OUTSIDE)]
        label = f"{entry['model']} {entry['batch_size']} × {entry['seq_len']}"
        faulted = entry["profiled_page_fault_bytes"] / 1e6
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {faulted:.0f} |")
    return "\n".join(lines + attention_report(data, params))


def cell(measured: float, model: float) -> str:
    ratio = f" ({measured / model:.2f})" if model > 0 else ""
    return f"{measured * 1e3:.1f} / {model * 1e3:.1f}{ratio}"


def architectures_of(data: Mapping[str, Any]) -> dict[str, Architecture]:
    return {
        name: architecture_from_config(config, name) for name, config in data["configs"].items()
    }


def parse_points(text: str) -> list[tuple[int, int]]:
    """``"1x64,4x128"`` → [(1, 64), (4, 128)]."""
    points = []
    for item in text.split(","):
        batch, _, seq = item.strip().partition("x")
        if not (batch.isdigit() and seq.isdigit() and int(batch) > 0 and int(seq) > 0):
            raise argparse.ArgumentTypeError(
                f"bad point {item!r}: write batch x sequence, e.g. 4x128"
            )
        points.append((int(batch), int(seq)))
    return points


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", metavar="FILE.json", help="write the measurements here")
    parser.add_argument("--load", metavar="FILE.json", help="print a saved run")
    parser.add_argument(
        "--models", default="bert-base", help="presets, comma-separated (default bert-base)"
    )
    parser.add_argument(
        "--points",
        type=parse_points,
        default=list(DEFAULT_POINTS),
        help="batch x sequence, comma-separated (default 1x16,1x64,2x128,4x128,16x128,16x256)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny encoder at one point")
    args = parser.parse_args(argv)

    def measured() -> dict[str, Any]:
        import torch
        from scaleprobe.probes.model import ModelCache

        if args.quick:
            configs = {TINY_NAME: TINY_CONFIG}
            points = [(1, 16)]
        else:
            names = [m.strip() for m in args.models.split(",") if m.strip()]
            unknown = [m for m in names if m not in PRESETS]
            if unknown:
                raise InputError(
                    f"unknown model(s) {', '.join(unknown)}; presets: {', '.join(PRESETS)}"
                )
            configs = {name: PRESETS[name].to_config() for name in names}
            points = args.points
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "configs": configs,
            "calibration": calibration(),
            "measured": [],
        }
        cache = ModelCache()
        for name, config in configs.items():
            for batch, seq in points:
                data["measured"].append(measure_point(name, config, batch, seq, cache))
                stderr_log(f"{name} {batch} x {seq} done")
        data["attention"] = attention_rates(ATTENTION_STEP)
        return data

    def report_of(data: dict[str, Any]) -> str:
        return report(data, params_from(data["calibration"]["probes"]))

    return load_or_measure("op_profile", args.load, args.out, measured, report_of)


if __name__ == "__main__":
    sys.exit(main())
