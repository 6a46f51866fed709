"""A base encoder's linear layers against the model's GEMM saturation curve, row count by row count.

The performance model runs a matrix product of smallest dimension m at R · m / (m + x½): R the
compute probe's peak rate, x½ its half size (from the probe's streamed encoder-layer product at 16
rows). Both ends are measured; the middle is the curve's form. This script times the linear layers
of a base encoder (768 → 768, 768 → 3072, 3072 → 768) at m rows, each call against the next of a
stack of distinct weights larger than the last-level cache (as a forward's layers read them) and
into a reused output (no page faults), and prints each rate against the curve of a calibration:
the worker's own, run first (default), or a saved accuracy run's (``--calibration-from``).

    python bench/linear_curve.py --out bench/results/linear_curve.json     # ~1 min
    python bench/linear_curve.py --calibration-from bench/results/accuracy-17.json
    python bench/linear_curve.py --load bench/results/linear_curve.json
    python bench/linear_curve.py --quick                                    # tests
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import calibration_params, params_from
from common import calibration, load_or_measure, machine, read_json, stderr_log
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.predict import gemm_rate

SCHEMA = "scaleprobe.bench.linear_curve/1"
SHAPES = ((768, 768), (768, 3072), (3072, 768))  # (in features, out features)
ROWS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STACK_BYTES = 256 * 1024**2  # as the compute probe's streamed product
SAMPLE_FLOPS = 2e10  # per timed sample, so that small products still take ~0.1 s
SAMPLES = 3


def measure_rates(shapes: Sequence[tuple[int, int]], rows: Sequence[int]) -> list[dict[str, Any]]:
    import torch

    measured = []
    for in_features, out_features in shapes:
        count = max(2, STACK_BYTES // (4 * in_features * out_features))
        weights = [torch.randn(out_features, in_features) for _ in range(count)]
        for m in rows:
            x = torch.randn(m, in_features)
            out = torch.empty(m, out_features)
            flops = 2.0 * m * in_features * out_features
            calls = max(count, int(SAMPLE_FLOPS / flops))
            torch.mm(x, weights[0].t(), out=out)
            samples = []
            for _ in range(SAMPLES):
                started = time.perf_counter()
                for i in range(calls):
                    torch.mm(x, weights[i % count].t(), out=out)
                samples.append((time.perf_counter() - started) / calls)
            measured.append(
                {
                    "in_features": in_features,
                    "out_features": out_features,
                    "rows": m,
                    "flops_per_second": flops / statistics.median(samples),
                }
            )
        stderr_log(f"{in_features} -> {out_features} done")
    return measured


def report(data: dict[str, Any], params: DeviceParams) -> str:
    lines = [
        f"curve: R {params.rate('float32') / 1e9:.0f} GFLOP/s, x½ {params.gemm_half_size:.1f} rows "
        f"({data['calibration_source']}); torch threads {data['threads']}",
        "",
        "| shape | " + " | ".join(str(m) for m in data["rows"]) + " |",
        "|---|" + "---|" * len(data["rows"]),
    ]
    for in_features, out_features in data["shapes"]:
        cells = []
        for entry in data["measured"]:
            if (entry["in_features"], entry["out_features"]) == (in_features, out_features):
                ratio = entry["flops_per_second"] / gemm_rate(params, "float32", entry["rows"])
                cells.append(f"{entry['flops_per_second'] / 1e9:.0f} ({ratio:.2f})")
        lines.append(f"| {in_features} → {out_features} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("GFLOP/s measured (measured over the model's curve)")
    return "\n".join(lines)


def params_of(data: dict[str, Any]) -> DeviceParams:
    if "accuracy_run" in data:
        return calibration_params(read_json(data["accuracy_run"]), "float32", data["threads"])
    return params_from(data["calibration"]["probes"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", metavar="FILE.json", help="write the rates here")
    parser.add_argument("--load", metavar="FILE.json", help="print a saved run")
    parser.add_argument(
        "--calibration-from",
        metavar="RUN.json",
        help="an accuracy run whose calibrations give the curve (its thread count must be this "
        "process's)",
    )
    parser.add_argument("--quick", action="store_true", help="one shape, two row counts")
    args = parser.parse_args(argv)

    def measured() -> dict[str, Any]:
        import torch

        shapes, rows = (SHAPES[:1], (16, 64)) if args.quick else (SHAPES, ROWS)
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "shapes": [list(s) for s in shapes],
            "rows": list(rows),
        }
        if args.calibration_from:
            data["accuracy_run"] = args.calibration_from
            data["calibration_source"] = args.calibration_from
        else:
            data["calibration"] = calibration()
            data["calibration_source"] = "the worker's calibration, run just before"
        params_of(data)  # a bad --calibration-from fails before measuring
        data["measured"] = measure_rates(shapes, rows)
        return data

    return load_or_measure(
        "linear_curve", args.load, args.out, measured, lambda data: report(data, params_of(data))
    )


if __name__ == "__main__":
    sys.exit(main())
