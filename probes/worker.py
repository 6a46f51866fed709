"""The probe worker: ``python -m scaleprobe.probes.worker`` (the protocol is docs/internals.md).

It reads one JSON request on stdin, runs the calibration probes (if asked) and then the model
points in the order given, and prints exactly one JSON result document on stdout. Progress events
(``{"event": "progress", "done": 3, "total": 9, ...}``) and log lines go to stderr.

It exists as a separate process so the exporter never imports torch and survives anything a probe
does. Inside, every probe runs through ``guard.run_guarded``: an exception becomes that probe's
``failed`` entry, never a dead worker. Anything a library prints to stdout is diverted to stderr,
so stdout carries the result document and nothing else.

Exit codes: 0 result printed, 2 bad request (one line on stderr saying what is wrong), 3 the
parent (the exporter) died: the worker runs in its own session, so a ``kill -9`` of the exporter
does not reach it, and a watchdog thread ends it instead of letting it probe on for nobody.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

SCHEMA = "scaleprobe.worker/1"
SCHEMA_MAJOR = 1
# Per-point timing budget; the cycle's remaining budget shortens it.
POINT_BUDGET_SECONDS = 2.0
# Hard stop per point (at least one sample after the warm-up is always kept).
POINT_MAX_SECONDS = 4.0
DEFAULT_BUDGET_SECONDS = 60.0
DEFAULT_MEMORY_CAP_BYTES = 2 * 1024**3
# How often the watchdog checks that the exporter that started the worker is still alive.
PARENT_POLL_SECONDS = 0.5
EXIT_PARENT_GONE = 3

log = logging.getLogger("scaleprobe.probes.worker")


class RequestError(ValueError):
    """The request cannot be run: the message lists every problem."""


@dataclass(frozen=True)
class Point:
    model: str
    config: Mapping[str, Any]
    batch_size: int
    seq_len: int


@dataclass(frozen=True)
class WorkerRequest:
    """A validated request (defaults fill what the request leaves out)."""

    device: str = "cpu"
    dtype: str = "float32"
    calibrate: bool = True
    points: tuple[Point, ...] = ()
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    memory_cap_bytes: int = DEFAULT_MEMORY_CAP_BYTES
    max_utilization_ratio: float = 0.5
    min_free_memory_bytes: int = 1024**3


def schema_major(schema: object) -> int | None:
    """``"scaleprobe.worker/1"`` (or ``/1.2``) -> 1; None if it is not that shape."""
    if not isinstance(schema, str) or not schema.startswith("scaleprobe.worker/"):
        return None
    major = schema.rsplit("/", 1)[1].split(".", 1)[0]
    return int(major) if major.isdigit() else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(document: object) -> WorkerRequest:
    """Validate a request document; raise ``RequestError`` naming every problem."""
    if not isinstance(document, dict):
        raise RequestError("the request must be a JSON object")
    major = schema_major(document.get("schema"))
    if major is None:
        raise RequestError(f"request 'schema' must be {SCHEMA!r}, got {document.get('schema')!r}")
    if major != SCHEMA_MAJOR:
        raise RequestError(
            f"request schema {document['schema']!r} is not supported: this worker speaks {SCHEMA}"
        )
    problems: list[str] = []
    device = document.get("device", "cpu")
    if not isinstance(device, str) or not (
        device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        problems.append(f"'device' must be 'cpu' or 'cuda:N', got {device!r}")
    dtype = document.get("dtype", "float32")
    if dtype not in ("float32", "float16", "bfloat16"):
        problems.append(f"'dtype' must be float32, float16 or bfloat16, got {dtype!r}")
    calibrate = document.get("calibrate", True)
    if not isinstance(calibrate, bool):
        problems.append(f"'calibrate' must be true or false, got {calibrate!r}")
    budget = document.get("budget_seconds", DEFAULT_BUDGET_SECONDS)
    if not _is_number(budget) or budget <= 0:
        problems.append(f"'budget_seconds' must be a positive number, got {budget!r}")
    cap = document.get("memory_cap_bytes", DEFAULT_MEMORY_CAP_BYTES)
    if not _is_int(cap) or cap <= 0:
        problems.append(f"'memory_cap_bytes' must be a positive integer, got {cap!r}")
    guard = document.get("guard", {})
    max_util, min_free = 0.5, 1024**3
    if not isinstance(guard, dict):
        problems.append(f"'guard' must be an object, got {guard!r}")
    else:
        max_util = guard.get("max_utilization_ratio", max_util)
        min_free = guard.get("min_free_memory_bytes", min_free)
        if not _is_number(max_util) or not 0 <= max_util <= 1:
            problems.append(f"'guard.max_utilization_ratio' must be in 0..1, got {max_util!r}")
        if not _is_int(min_free) or min_free < 0:
            problems.append(
                f"'guard.min_free_memory_bytes' must be a non-negative integer, got {min_free!r}"
            )
    points = document.get("points", [])
    parsed: list[Point] = []
    if not isinstance(points, list):
        problems.append(f"'points' must be a list, got {type(points).__name__}")
        points = []
    for i, point in enumerate(points):
        where = f"points[{i}]"
        if not isinstance(point, dict):
            problems.append(f"{where} must be an object")
            continue
        model, config = point.get("model"), point.get("config")
        batch, seq = point.get("batch_size"), point.get("seq_len")
        found = len(problems)
        if not isinstance(model, str) or not model:
            problems.append(f"{where}.model must be a non-empty string, got {model!r}")
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            problems.append(f"{where}.config must be a config.json object with a 'model_type'")
        if not _is_int(batch) or batch < 1:
            problems.append(f"{where}.batch_size must be an integer >= 1, got {batch!r}")
        if not _is_int(seq) or seq < 1:
            problems.append(f"{where}.seq_len must be an integer >= 1, got {seq!r}")
        if len(problems) == found:
            parsed.append(Point(str(model), dict(config), int(batch), int(seq)))
    if problems:
        raise RequestError("bad request: " + "; ".join(problems))
    return WorkerRequest(
        device="cuda:0" if device == "cuda" else device,
        dtype=dtype,
        calibrate=calibrate,
        points=tuple(parsed),
        budget_seconds=float(budget),
        memory_cap_bytes=int(cap),
        max_utilization_ratio=float(max_util),
        min_free_memory_bytes=int(min_free),
    )


class Progress:
    """Writes one JSON progress line per finished step to stderr."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.done = 0
        self.stream = stream

    def step(self, **fields: Any) -> None:
        self.done += 1
        event = {"event": "progress", "done": self.done, "total": self.total, **fields}
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()


def run_request(
    request: WorkerRequest,
    *,
    progress_stream: IO[str],
    nvml: Any = "default",
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Run everything the request asks for and return the result document."""
    # Imported here, not at the top: a bad request is refused (exit 2) without loading torch.
    import torch
    import transformers
    from scaleprobe.probes import model as model_probe
    from scaleprobe.probes.guard import Guard, run_guarded
    from scaleprobe.probes.registry import CALIBRATION_PROBES, probe_timing
    from scaleprobe.probes.request import ProbeRequest
    from scaleprobe.probes.timing import TimingRequest

    started = clock()
    if request.device.startswith("cuda"):
        # CUDA events and graphs use the current device's streams: make it the probed one.
        torch.cuda.set_device(int(request.device.partition(":")[2] or 0))
    guard = Guard(
        request.device,
        max_utilization_ratio=request.max_utilization_ratio,
        min_free_memory_bytes=request.min_free_memory_bytes,
        nvml=nvml,
    )
    cap_note = guard.apply_memory_cap(request.memory_cap_bytes)
    probe_names = list(CALIBRATION_PROBES) if request.calibrate else []
    progress = Progress(len(probe_names) + len(request.points), progress_stream)
    spent_device_seconds = 0.0

    probes: list[dict[str, Any]] = []
    for name in probe_names:
        probe_request = ProbeRequest(
            device=request.device,
            dtype=request.dtype,
            memory_cap_bytes=request.memory_cap_bytes,
            timing=probe_timing(name, request.device),
        )
        probe = CALIBRATION_PROBES[name]
        entry = {"probe": name, "dtype": request.dtype}
        entry.update(run_guarded(name, lambda p=probe, r=probe_request: p(r).to_dict(), guard))
        spent_device_seconds += entry.get("device_seconds", 0.0)
        probes.append(entry)
        progress.step(probe=name, outcome=entry["outcome"])

    cache = model_probe.ModelCache()
    points: list[dict[str, Any]] = []
    for point in request.points:
        base = {
            "model": point.model,
            "batch_size": point.batch_size,
            "seq_len": point.seq_len,
            "dtype": request.dtype,
        }
        remaining = request.budget_seconds - spent_device_seconds
        if remaining <= 0:
            entry = {
                **base,
                "outcome": "skipped_budget",
                "reason": f"cycle budget of {request.budget_seconds:g} device seconds spent",
                "duration_seconds": 0.0,
            }
        else:
            point_request = model_probe.PointRequest(
                model=point.model,
                config=point.config,
                batch_size=point.batch_size,
                seq_len=point.seq_len,
                dtype=request.dtype,
                device=request.device,
                memory_cap_bytes=request.memory_cap_bytes,
                timing=TimingRequest(
                    warmup=1,
                    min_repeats=3,
                    max_repeats=30,
                    budget_seconds=min(POINT_BUDGET_SECONDS, remaining),
                    # Slow forwards (a large point, a loaded host) get fewer repeats, not minutes.
                    max_seconds=POINT_MAX_SECONDS,
                ),
            )
            entry = {**base}
            entry.update(
                run_guarded(
                    f"model {point.model} b={point.batch_size} s={point.seq_len}",
                    lambda r=point_request: model_probe.run(r, cache=cache).to_dict(),
                    guard,
                )
            )
            spent_device_seconds += entry.get("device_seconds", 0.0)
        points.append(entry)
        progress.step(
            probe="model",
            model=point.model,
            batch_size=point.batch_size,
            seq_len=point.seq_len,
            outcome=entry["outcome"],
        )

    return {
        "schema": SCHEMA,
        "device": guard.device_identity(),
        "environment": {
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "threads": torch.get_num_threads(),
            "python_version": sys.version.split()[0],
            "memory_cap": cap_note,
        },
        "guard": guard.check().to_dict(),
        "probes": probes,
        "points": points,
        "device_seconds": spent_device_seconds,
        "duration_seconds": clock() - started,
    }


def exit_with_parent(
    parent_pid: int,
    *,
    stderr: IO[str],
    poll_seconds: float = PARENT_POLL_SECONDS,
    get_parent_pid: Callable[[], int] = os.getppid,
    exit_process: Callable[[int], None] = os._exit,
) -> threading.Thread:
    """Start a daemon thread that ends this process once ``parent_pid`` is no longer its parent.

    A dead parent's children are re-parented (to init or a subreaper), so a changed parent pid
    means the exporter is gone and nobody will read the result. Polling is portable and does not
    depend on which thread spawned the worker, unlike Linux's ``PR_SET_PDEATHSIG``.
    """

    def watch() -> None:
        while get_parent_pid() == parent_pid:
            time.sleep(poll_seconds)
        with contextlib.suppress(OSError, ValueError):  # stderr may be the dead parent's pipe
            stderr.write(
                f"scaleprobe worker: error: the exporter (pid {parent_pid}) is gone; stopping\n"
            )
            stderr.flush()
        exit_process(EXIT_PARENT_GONE)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def main(
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    *,
    nvml: Any = "default",
    parent_pid: int | None = None,
) -> int:
    """Read the request, run it, print the result; return the exit code.

    With ``parent_pid`` (the command line passes the exporter's pid), the process exits with
    code 3 as soon as that parent dies.
    """
    stdin = stdin if stdin is not None else sys.stdin
    stderr = stderr if stderr is not None else sys.stderr
    if parent_pid is not None:
        exit_with_parent(parent_pid, stderr=stderr)
    if stdout is None:
        stdout = _divert_stdout()
    logging.basicConfig(
        stream=stderr, level=logging.INFO, format="level=%(levelname)s logger=%(name)s %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        document = json.loads(stdin.read())
    except json.JSONDecodeError as error:
        stderr.write(f"scaleprobe worker: error: the request is not valid JSON ({error})\n")
        return 2
    try:
        request = parse_request(document)
    except RequestError as error:
        stderr.write(f"scaleprobe worker: error: {error}\n")
        return 2
    if request.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            stderr.write(
                f"scaleprobe worker: error: device {request.device!r} requested but CUDA is "
                "not available here (use 'cpu')\n"
            )
            return 2
    result = run_request(request, progress_stream=stderr, nvml=nvml)
    stdout.write(json.dumps(result) + "\n")
    stdout.flush()
    return 0


def _divert_stdout() -> IO[str]:
    """Point file descriptor 1 at stderr and return a stream on the original stdout.

    Libraries (and C extensions) that print would otherwise corrupt the result document.
    """
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(result_fd, "w")


if __name__ == "__main__":
    sys.exit(main(parent_pid=os.getppid()))
