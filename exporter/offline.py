"""The offline commands: ``scaleprobe predict`` and ``scaleprobe gpus``.

Both only read (a preset or a config.json, the device catalog or a calibration file) and print;
they never touch a device, so they run anywhere, torch or not. Every bad input (an unknown model,
GPU or dtype, a malformed config.json or calibration, a size that is not a positive integer)
raises ``InputError``, which the CLI prints as one line with exit code 2.

A table by default::

    bert-base on A100-80GB (datasheet), float16, eager PyTorch
     batch  seq  latency_ms  sequences/s    tokens/s  regime     overhead   MFU  memory_GiB  fits
         1  128       3.223        310.3     39716.3  framework     81%      2%        0.21  yes
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from scaleprobe.models.architecture import load_architecture
from scaleprobe.models.calibration import load_calibration
from scaleprobe.models.costs import DTYPE_BYTES
from scaleprobe.models.devices import (
    CATALOG,
    DeviceParams,
    find_device,
    params_from_spec,
    without_host_overhead,
)
from scaleprobe.models.errors import InputError
from scaleprobe.models.predict import Prediction, max_batch_size, predict_grid

GIB = 1024**3
RUNTIMES = ("eager", "compiled")


def parse_sizes(flag: str, text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; anything but positive integers is an InputError."""
    values = []
    for part in str(text).split(","):
        item = part.strip()
        if not item:
            raise InputError(f"{flag}: empty entry in {text!r}; give positive integers like 1,8,32")
        try:
            value = int(item)
        except ValueError:
            raise InputError(
                f"{flag}: {item!r} is not an integer; give positive integers like 1,8,32"
            ) from None
        if value < 1:
            raise InputError(f"{flag}: {value} is not positive; give positive integers like 1,8,32")
        values.append(value)
    return values


def _params_and_dtype(args: argparse.Namespace) -> tuple[DeviceParams, str, str]:
    """The device parameters, the dtype to predict, and a label saying where they came from."""
    if args.gpu:
        spec = find_device(args.gpu)
        params = params_from_spec(spec)
        default_dtype = "float16" if "float16" in spec.peak_flops_per_second else "float32"
        source = f"{spec.name} (datasheet)"
    else:
        params = load_calibration(args.calibration)
        default_dtype = next(iter(params.compute_flops_per_second))
        source = f"{params.name} (calibration {args.calibration})"
    dtype = args.dtype or default_dtype
    if dtype not in DTYPE_BYTES:
        raise InputError(f"--dtype: unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    params.rate(dtype)  # an InputError if this device has no rate for the dtype
    memory_bytes = getattr(args, "memory_bytes", None)
    if memory_bytes is not None:
        if memory_bytes < 1:
            raise InputError(f"--memory-bytes must be a positive integer, got {memory_bytes}")
        params = DeviceParams.from_dict({**params.to_dict(), "memory_bytes": memory_bytes})
    runtime = getattr(args, "runtime", "eager") or "eager"
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime: unknown runtime {runtime!r}; allowed: {', '.join(RUNTIMES)}")
    if runtime == "compiled":
        params = without_host_overhead(params)
    return params, dtype, source


def predict_command(args: argparse.Namespace) -> int:
    """Predict latency, throughput, regime, overhead, MFU and memory over the requested grid."""
    batch_sizes = parse_sizes("--batch-sizes", args.batch_sizes)
    seq_lens = parse_sizes("--seq-lens", args.seq_lens)
    arch = load_architecture(args.model)
    params, dtype, source = _params_and_dtype(args)
    runtime = getattr(args, "runtime", "eager") or "eager"
    predictions = predict_grid(arch, params, batch_sizes, seq_lens, dtype)
    capacity = {seq: max_batch_size(arch, params, seq, dtype) for seq in seq_lens}
    if args.json:
        document: dict[str, Any] = {
            "model": arch.name,
            "device": params.name,
            "source": source,
            "dtype": dtype,
            "runtime": runtime,
            "params": params.to_dict(),
            "predictions": [p.to_dict() for p in predictions],
            "max_batch_size": {str(seq): n for seq, n in capacity.items()},
        }
        print(json.dumps(document, indent=2))
        return 0
    runtime_label = "eager PyTorch" if runtime == "eager" else "compiled (no host overhead)"
    print(f"{arch.name} on {source}, {dtype}, {runtime_label}")
    print(render_table(predictions))
    memory_gib = params.memory_bytes / GIB
    fits = ", ".join(f"seq {seq}: {n}" for seq, n in capacity.items())
    print(f"largest batch that fits in {memory_gib:.1f} GiB: {fits}")
    return 0


def render_table(predictions: list[Prediction]) -> str:
    """An aligned text table, one row per prediction."""
    header = (
        "batch",
        "seq",
        "latency_ms",
        "sequences/s",
        "tokens/s",
        "regime",
        "overhead",
        "MFU",
        "memory_GiB",
        "fits",
    )
    rows = [
        (
            str(p.batch_size),
            str(p.seq_len),
            f"{p.latency_seconds * 1e3:.3f}",
            f"{p.throughput_sequences_per_second:.1f}",
            f"{p.throughput_tokens_per_second:.1f}",
            p.regime,
            f"{p.framework_overhead_ratio:.0%}",
            f"{p.mfu_ratio:.0%}",
            f"{p.peak_memory_bytes / GIB:.2f}",
            "yes" if p.fits_in_memory else "NO",
        )
        for p in predictions
    ]
    return _align([header, *rows], left={5})


def _align(rows: list[tuple[str, ...]], left: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def gpus_command(args: argparse.Namespace) -> int:
    """List the device catalog: datasheet peaks, bandwidth, memory, SMs, aliases."""
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": spec.name,
                        "aliases": list(spec.aliases),
                        "peak_flops_per_second": spec.peak_flops_per_second,
                        "memory_bandwidth_bytes_per_second": spec.memory_bandwidth_bytes_per_second,
                        "memory_bytes": spec.memory_bytes,
                        "sm_count": spec.sm_count,
                        "note": spec.note,
                    }
                    for spec in CATALOG.values()
                ],
                indent=2,
            )
        )
        return 0
    header = (
        "gpu",
        "fp16_TFLOP/s",
        "bf16_TFLOP/s",
        "fp32_TFLOP/s",
        "memory_GB/s",
        "memory_GB",
        "SMs",
    )
    rows: list[tuple[str, ...]] = [header]
    notes = []
    for spec in CATALOG.values():
        peaks = spec.peak_flops_per_second

        def tflops(dtype: str, peaks: dict[str, float] = peaks) -> str:
            return f"{peaks[dtype] / 1e12:g}" if dtype in peaks else "-"

        rows.append(
            (
                spec.name,
                tflops("float16"),
                tflops("bfloat16"),
                tflops("float32"),
                f"{spec.memory_bandwidth_bytes_per_second / 1e9:g}",
                f"{spec.memory_bytes / 1e9:g}",
                str(spec.sm_count),
            )
        )
        if spec.note:
            notes.append(f"{spec.name}: {spec.note}")
    print(_align(rows, left={0}))
    print("dense datasheet peaks, no sparsity; names are case-insensitive, aliases accepted")
    for note in notes:
        print(note)
    return 0
