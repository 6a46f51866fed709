"""A fake probe worker: reads a request on stdin, prints a canned but consistent result document.

It speaks the worker protocol of ``docs/internals.md`` (``scaleprobe.worker/1``) without torch, so
tests of the exporter side (the cycle, the daemon, the HTTP server) run in a fraction of a second
and can make the device misbehave on purpose. Its latencies follow a simple roofline of the
requested model (2 x parameters x tokens at the fake compute rate, plus a fixed dispatch cost), so
a refit on them converges and a slower device shows as drift.

Usage (the supervisor's ``command``)::

    python tests/fake_worker.py [--slowdown 2.0] [--mode ok|fail|hang|garbage|wrong-schema|crash]
                                [--record request.json] [--skip-calibration] [--delay 0.5]
                                [--pidfile worker.pid]

``--slowdown F`` divides the compute rate and bandwidth by F and multiplies latencies by F;
``--record`` writes the request it received, so a test can check what the exporter sent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

SCHEMA = "scaleprobe.worker/1"
COMPUTE_FLOPS_PER_SECOND = 1.0e11
MEMORY_BYTES_PER_SECOND = 1.5e10
DISPATCH_SECONDS = 5.0e-6
FIXED_LATENCY_SECONDS = 2.0e-3


def parameter_count(config: dict) -> int:
    """Rough parameter count from a config.json (BERT or DistilBERT key names)."""
    hidden = config.get("hidden_size", config.get("dim", 768))
    layers = config.get("num_hidden_layers", config.get("n_layers", 12))
    ffn = config.get("intermediate_size", config.get("hidden_dim", 4 * hidden))
    return int(layers * (4 * hidden * hidden + 2 * hidden * ffn))


def point_latency_seconds(point: dict, slowdown: float) -> float:
    tokens = point["batch_size"] * point["seq_len"]
    flops = 2.0 * parameter_count(point.get("config", {})) * tokens
    return slowdown * (flops / COMPUTE_FLOPS_PER_SECOND + FIXED_LATENCY_SECONDS)


def result_document(
    request: dict,
    slowdown: float,
    skip_calibration: bool,
    first_touch: float | None = None,
    large_outputs_reused: bool = False,
    elementwise_ratio: float | None = None,
    streamed_rate: float | None = None,
) -> dict:
    now = time.time()
    dtype = request.get("dtype", "float32")
    probes = []
    if request.get("calibrate", True):
        outcome = "skipped_busy" if skip_calibration else "ok"
        for probe, value, unit in (
            ("compute", COMPUTE_FLOPS_PER_SECOND / slowdown, "flops_per_second"),
            ("memory", MEMORY_BYTES_PER_SECOND / slowdown, "bytes_per_second"),
            ("dispatch", DISPATCH_SECONDS * slowdown, "seconds"),
        ):
            record = {
                "probe": probe,
                "outcome": outcome,
                "dtype": dtype,
                "duration_seconds": 0.05,
                "device_seconds": 0.04,
                "value": value if outcome == "ok" else None,
                "unit": unit,
                "samples_seconds": [0.01, 0.01, 0.011],
                "detail": {"kernel_floor_seconds": DISPATCH_SECONDS * slowdown}
                if probe == "dispatch"
                else {},
            }
            if probe == "compute" and streamed_rate is not None:
                # a 16-row product over weights read from memory (x½ = 16 (peak / rate - 1))
                record["detail"] = {
                    "streamed_product": {
                        "m": 16, "n": 768, "k": 768, "flops_per_second": streamed_rate / slowdown
                    }
                }  # fmt: skip
            if probe == "memory" and first_touch is not None:
                record["detail"] = {
                    "first_touch_seconds_per_byte": first_touch,
                    "large_outputs_fault": not large_outputs_reused,
                }
                if elementwise_ratio is not None:
                    # 7 ops over 32 MiB tensors, 16 passes, at ratio x the copy bandwidth
                    moved = 16.0 * 32 * 1024**2
                    rate = elementwise_ratio * MEMORY_BYTES_PER_SECOND / slowdown
                    record["detail"]["elementwise_chain"] = {
                        "tensor_bytes": 32 * 1024**2,
                        "ops": 7,
                        "bytes_moved": moved,
                        "seconds": moved / rate,
                        "bytes_per_second": rate,
                    }
            if outcome != "ok":
                record["reason"] = "fake: device busy"
            probes.append(record)
    points = []
    for point in request.get("points", []):
        latency = point_latency_seconds(point, slowdown)
        points.append(
            {
                "model": point["model"],
                "batch_size": point["batch_size"],
                "seq_len": point["seq_len"],
                "dtype": dtype,
                "outcome": "ok",
                "latency_seconds": latency,
                "samples_seconds": [latency * 0.99, latency, latency * 1.01],
                "framework_overhead_ratio": min(0.9, FIXED_LATENCY_SECONDS / latency),
                "peak_memory_bytes": 1.0e8,
                "duration_seconds": latency * 4,
                "device_seconds": latency * 3,
                "timestamp_seconds": now,
            }
        )
    return {
        "schema": SCHEMA,
        "device": {
            "device": request.get("device", "cpu"),
            "gpu": "",
            "UUID": "",
            "modelName": "Fake CPU",
            "driver_version": "",
            "memory_bytes": 16 * 2**30,
            "kind": "cpu",
        },
        "environment": {"torch_version": "0.0-fake", "transformers_version": "0.0", "threads": 2},
        "guard": {"checked": False, "reason": "fake worker", "utilization_ratio": None},
        "probes": probes,
        "points": points,
        "duration_seconds": 0.2,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slowdown", type=float, default=1.0)
    parser.add_argument(
        "--mode",
        default="ok",
        choices=["ok", "fail", "hang", "garbage", "wrong-schema", "crash"],
    )
    parser.add_argument("--record")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--first-touch", type=float, help="memory probe's first-touch s/B (CPU)")
    parser.add_argument(
        "--large-outputs-reused",
        action="store_true",
        help="with --first-touch: the allocator check found freed large blocks handed back",
    )
    parser.add_argument(
        "--elementwise-ratio",
        type=float,
        help="with --first-touch: the elementwise chain reads this share of the copy bandwidth",
    )
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--pidfile", help="write this process's id here (to check it was ended)")
    args = parser.parse_args()
    if args.pidfile:
        with open(args.pidfile, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
    request = json.loads(sys.stdin.read())
    if args.record:
        with open(args.record, "w", encoding="utf-8") as handle:
            json.dump(request, handle)
    total = len(request.get("points", []))
    for done in range(1, total + 1):
        event = {"event": "progress", "done": done, "total": total, "probe": "model"}
        event["model"] = request["points"][done - 1]["model"]
        print(json.dumps(event), file=sys.stderr, flush=True)
        time.sleep(args.delay / max(total, 1))
    if args.mode == "hang":
        time.sleep(3600)
    if args.mode == "fail":
        print("fake worker: RuntimeError: CUDA error: an illegal memory access", file=sys.stderr)
        return 1
    if args.mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if args.mode == "garbage":
        print("this is not JSON {")
        return 0
    document = result_document(
        request,
        args.slowdown,
        args.skip_calibration,
        args.first_touch,
        args.large_outputs_reused,
        args.elementwise_ratio,
    )
    if args.mode == "wrong-schema":
        document["schema"] = "scaleprobe.worker/9"
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
