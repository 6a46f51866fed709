"""Shared pieces of the benchmarks: the machine, the daemon's probes, interleaved sweeps, errors.

Why these exist: a benchmark of scaleprobe must measure with what the daemon measures, or its
figures say nothing about the daemon. So the calibration is the worker's own
(``scaleprobe.probes.worker.run_request`` with ``calibrate`` and no points: the same probes, the
same timing budgets) and every point is ``scaleprobe.probes.model.run``, the function the worker
calls per point (same model build, same random input ids, median of the timed forwards).

What differs from a daemon cycle is only how often a point is timed: the worker times a point
with one warm-up and at least three repeats within 2 s; a sweep runs every point once first, then
times it once per round (one warm-up forward of the same shape, as the worker does, then at least
one repeat within ``budget_seconds``) in a random order that changes every round, and takes the
median over rounds. Interleaving spreads the slow drift of a shared machine over the whole grid
instead of biasing the region measured last.

The warm-up matters more than one would think: the probe resets BigBird's attention type before
each point, and the first forward after that rebuilds its attention modules (78 ms at 1 × 128);
and on a CPU a forward right after other shapes finds glibc's heap sized for them (BigBird
16 × 512 at 2 threads: 13.2–13.5 s right after other shapes, 10.2–11.5 s repeated; see
BENCHMARKS.md). Sweeps before ``accuracy-7`` timed without it (``warmup`` 0 in their settings).
Each timed round also records the minor page faults per forward (``getrusage``).

In the first ``profiled_rounds`` rounds each point whose warm-up forward took under
``profile_below_seconds`` is ``model.run`` itself, which after timing also profiles one to three
forwards for the framework-overhead share and peak memory (the share matters at small points);
every other call times the very same forward closure (the probe's cached model, its input ids,
``probes.timing.measure`` with the probe's timer) without the profiler, which halves the cost of
the large points and changes nothing in the latency figure.

torch is imported inside the functions that measure, so ``--load`` re-analysis of saved results
runs without it.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# A non-preset encoder (BERT family, 4 layers of hidden 256): never used to fit in the accuracy
# benchmark, and small enough for the quick runs of the test suite.
TINY_NAME = "tiny-bert-4x256"
TINY_CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 8000,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


# --- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    """``lscpu``'s model name (falls back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a reader needs to compare figures: CPU, cores, versions, threads, load, date."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python_version": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": list(os.getloadavg()),
        # the allocator's settings (glibc's MALLOC_* variables, a preloaded jemalloc or
        # tcmalloc): they decide which outputs page-fault (BENCHMARKS.md)
        "allocator_env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith("MALLOC_") or k == "LD_PRELOAD"
        },
    }
    try:
        import torch
        import transformers

        info.update(
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            torch_threads=torch.get_num_threads(),
        )
    except ImportError:
        pass
    return info


# --- measuring ----------------------------------------------------------------------------------


def calibration(dtype: str = "float32", device: str = "cpu") -> dict[str, Any]:
    """Run the worker's calibration probes in this process: its ``probes`` records and costs.

    Returns ``{"probes": [...], "device_seconds": s, "duration_seconds": s, "threads": n}``.
    """
    import torch
    from scaleprobe.probes import worker

    request = worker.WorkerRequest(device=device, dtype=dtype, calibrate=True, points=())
    document = worker.run_request(request, progress_stream=io.StringIO())
    return {
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "probes": document["probes"],
        "device_seconds": document["device_seconds"],
        "duration_seconds": document["duration_seconds"],
    }


@dataclass(frozen=True)
class PointKey:
    """One operating point of one setting (model, batch, sequence, dtype, torch threads)."""

    model: str
    batch_size: int
    seq_len: int
    dtype: str = "float32"
    threads: int = 2

    def label(self) -> str:
        return f"{self.model} b={self.batch_size} s={self.seq_len} {self.dtype} t={self.threads}"


def sweep(
    keys: Sequence[PointKey],
    configs: Mapping[str, Mapping[str, Any]],
    *,
    rounds: int,
    seed: int = 0,
    budget_seconds: float = 0.3,
    log: Callable[[str], None] | None = None,
    before_round: Callable[[int], None] | None = None,
    profiled_rounds: int = 1,
    profile_below_seconds: float = 0.25,
    timer: Any = None,
    warmup: int = 1,
) -> list[dict[str, Any]]:
    """Measure every point ``rounds`` times, interleaved, with the daemon's model probe.

    ``configs`` maps a model name to its config.json dict (what the exporter sends the worker).
    Each point is first run once untimed (first-call allocations and kernel selection), then each
    round visits all points in a new random order. Returns one record per point with the per-round
    latencies and the median over rounds.
    """
    import torch
    from scaleprobe.probes import model as model_probe
    from scaleprobe.probes.timing import TimingRequest

    log = log or (lambda message: None)
    cache = model_probe.ModelCache()
    timing = TimingRequest(
        warmup=warmup, min_repeats=1, max_repeats=30, budget_seconds=budget_seconds
    )
    default_threads = torch.get_num_threads()

    def request(key: PointKey) -> Any:
        return model_probe.PointRequest(
            model=key.model,
            config=configs[key.model],
            batch_size=key.batch_size,
            seq_len=key.seq_len,
            dtype=key.dtype,
            device="cpu",
            memory_cap_bytes=8 * 1024**3,
            timing=timing,
        )

    rounds_seen: dict[PointKey, list[dict[str, Any]]] = {key: [] for key in keys}
    warmup_seconds: dict[PointKey, float] = {}
    started = time.perf_counter()
    try:
        for key in keys:  # warm-up pass, in order (its time only decides what is profiled)
            torch.set_num_threads(key.threads)
            point = request(key)
            model = cache.get(point.config, key.dtype, "cpu")
            inputs = model_probe.random_inputs(point.config, point)
            forward_started = time.perf_counter()
            with torch.inference_mode():
                model(**inputs)
            warmup_seconds[key] = time.perf_counter() - forward_started
        log(f"warm-up done in {time.perf_counter() - started:.0f} s")
        rng = random.Random(seed)
        for index in range(rounds):
            if before_round is not None:
                before_round(index)
                torch.set_num_threads(default_threads)
            order = list(keys)
            rng.shuffle(order)
            round_started = time.perf_counter()
            for key in order:
                torch.set_num_threads(key.threads)
                if index < profiled_rounds and warmup_seconds[key] < profile_below_seconds:
                    record = model_probe.run(request(key), cache=cache, timer=timer).to_dict()
                else:
                    record = _time_only(request(key), cache, timer)
                rounds_seen[key].append(
                    {
                        "round": index,
                        "latency_seconds": record["latency_seconds"],
                        "repeats": len(record["samples_seconds"]),
                        "framework_overhead_ratio": record["framework_overhead_ratio"],
                        "peak_memory_bytes": record["peak_memory_bytes"],
                        "device_seconds": record["device_seconds"],
                        "page_fault_bytes_per_forward": record.get("page_fault_bytes_per_forward"),
                        "timestamp_seconds": time.time(),
                    }
                )
            log(
                f"round {index + 1}/{rounds} done in {time.perf_counter() - round_started:.0f} s "
                f"(load {os.getloadavg()[0]:.2f})"
            )
    finally:
        torch.set_num_threads(default_threads)
    records = []
    for key in keys:
        seen = rounds_seen[key]
        latencies = [r["latency_seconds"] for r in seen]
        overheads = [r["framework_overhead_ratio"] for r in seen if r["framework_overhead_ratio"]]
        faults = [
            r["page_fault_bytes_per_forward"]
            for r in seen
            if r.get("page_fault_bytes_per_forward") is not None
        ]
        records.append(
            {
                "model": key.model,
                "batch_size": key.batch_size,
                "seq_len": key.seq_len,
                "dtype": key.dtype,
                "threads": key.threads,
                "latency_seconds": statistics.median(latencies),
                "framework_overhead_ratio": statistics.median(overheads) if overheads else None,
                "peak_memory_bytes": max((r["peak_memory_bytes"] or 0) for r in seen) or None,
                "device_seconds": sum(r["device_seconds"] for r in seen),
                "page_fault_bytes_per_forward": statistics.median(faults) if faults else None,
                "rounds": seen,
            }
        )
    return records


def _time_only(point: Any, cache: Any, timer: Any = None) -> dict[str, Any]:
    """The timing half of ``scaleprobe.probes.model.run``: same model, inputs, forward, timer."""
    import torch
    from scaleprobe.probes import model as model_probe
    from scaleprobe.probes.device import default_timer
    from scaleprobe.probes.timing import measure

    model = cache.get(point.config, point.dtype, point.device)
    reset = getattr(model_probe, "reset_attention_type", None)
    if reset is not None:  # as model.run does: BigBird's fall-back to full attention is sticky
        reset(model, point.config)
    inputs = model_probe.random_inputs(point.config, point)

    def forward() -> object:
        with torch.inference_mode():
            return model(**inputs)

    timer = timer if timer is not None else default_timer(point.device)
    faults_before = minor_page_faults()
    measurement = measure(forward, point.timing, timer, threads=torch.get_num_threads())
    forwards = point.timing.warmup + len(measurement.samples_seconds)
    faulted = (minor_page_faults() - faults_before) * PAGE_BYTES
    return {
        "latency_seconds": measurement.median_seconds,
        "samples_seconds": list(measurement.samples_seconds),
        "framework_overhead_ratio": None,
        "peak_memory_bytes": None,
        "device_seconds": measurement.device_seconds,
        "page_fault_bytes_per_forward": faulted / forwards if forwards else None,
    }


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096  # what a fault maps


def minor_page_faults() -> int:
    """This process's minor page faults so far (each a fresh page touched for the first time)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class ProcessCpuTimer:
    """CPU time of this process around a call: immune to time slicing on a loaded machine, and
    equal to wall time for a one-thread torch on an idle one. For model development only (the
    daemon and the benchmark figures use wall time)."""

    name = "process_cpu"

    def time(self, fn: Callable[[], object]) -> float:
        started = time.process_time()
        fn()
        return time.process_time() - started


# --- errors ---------------------------------------------------------------------------------------


def throughput_error(measured_latency_seconds: float, predicted_latency_seconds: float) -> float:
    """(measured − predicted) / predicted throughput, the daemon's ``prediction_error_ratio``."""
    return predicted_latency_seconds / measured_latency_seconds - 1.0


def mape(errors: Iterable[float]) -> float:
    values = [abs(e) for e in errors]
    return sum(values) / len(values) if values else math.nan


STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {
    "median": statistics.median,
    "min": min,
}


def split_halves(record: Mapping[str, Any], stat: str = "median") -> tuple[float, float] | None:
    """The even and the odd rounds of one point, each reduced by ``stat``: two sweeps."""
    rounds = sorted(record.get("rounds") or [], key=lambda r: r["round"])
    even = [r["latency_seconds"] for r in rounds if r["round"] % 2 == 0]
    odd = [r["latency_seconds"] for r in rounds if r["round"] % 2 == 1]
    if not even or not odd:
        return None
    return STATISTICS[stat](even), STATISTICS[stat](odd)


# --- files ---------------------------------------------------------------------------------------


def write_json(path: str | Path, document: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def read_json(path: str | Path) -> dict[str, Any]:
    with open(path) as file:
        document = json.load(file)
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return document


def load_or_measure(
    script: str,
    load: str | None,
    out: str | None,
    measure: Callable[[], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
) -> int:
    """The end of a bench script's ``main``: a saved run (``load``) or a new measurement, its
    report printed and the document written to ``out``. A file that cannot be read, or a document
    that lacks what the report needs, is a one-line message on stderr and exit code 2."""
    try:
        data = read_json(load) if load else measure()
        text = report(data)
    except (OSError, ValueError, KeyError) as error:
        print(f"{script}: {error}", file=sys.stderr)
        return 2
    if out:
        write_json(out, data)
    print(text)
    return 0


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (for argparse ``type=``)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def stderr_log(message: str) -> None:
    print(time.strftime("%H:%M:%S ") + message, file=sys.stderr, flush=True)
