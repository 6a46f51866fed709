"""``scaleprobe once``: one full probe cycle on the local device, printed for a person.

It runs the same cycle as the daemon (``cycle.run_cycle``: the worker, calibration, refit) but
asks for every grid point at once, cheapest point of each model first, and lets the cycle's time
budget cut the rest. It prints the calibration and, per measured point, the prediction made
*before* the refit (the honest error: the model had not seen the point) next to the one after
(how well the refitted model fits). ``--json`` prints the calibration document that
``scaleprobe predict --calibration`` reads; ``--report`` writes the status page as one file.

Output (abridged)::

    device cpu (Intel Xeon ...), float32, torch 2.13.0+cpu, 2 threads
    compute         189.2 GFLOP/s   ...
    model            batch  seq  measured ms  before refit ms  error  after refit ms  error
    distilbert-base      1   32        21.40            19.85  -7.2%          21.02  -1.8%
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from scaleprobe.exporter.config import Config, default_config, load_config, resolve_devices
from scaleprobe.exporter.cycle import load_architectures, run_cycle, select_points
from scaleprobe.exporter.logs import setup_logging
from scaleprobe.exporter.snapshot import DeviceState, Snapshot
from scaleprobe.models.calibration import dump_calibration
from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.errors import InputError


class ProgressBar:
    """A one-line progress bar on a terminal, fed by the worker's progress events."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.shown = False

    def update(self, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        done, total = int(event.get("done", 0)), max(int(event.get("total", 0)), 1)
        filled = int(self.width * min(done, total) / total)
        what = " ".join(str(event[k]) for k in ("probe", "model") if event.get(k))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} {what}"[:100].ljust(80))
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _binary(value: float) -> str:
    """Bytes in KiB/MiB/GiB, e.g. ``512 KiB``."""
    for factor, prefix in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if value >= factor:
            return f"{value / factor:g} {prefix}"
    return f"{value:g} B"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


def format_report(state: DeviceState, dtype: str) -> str:
    """The calibration, then measured-versus-predicted points with their errors, as text."""
    params = DeviceParams.from_dict(state.calibration or {})
    env = state.environment
    lines = [
        f"device {state.device} ({state.identity.get('modelName') or 'unknown'}), {dtype}, "
        f"torch {env.get('torch_version', '?')}, {env.get('threads', '?')} threads",
        "",
        "calibration (refitted)",
    ]
    rows = [
        ("compute", _si(params.rate(dtype), "FLOP/s")),
        ("memory bandwidth", _si(params.memory_bandwidth_bytes_per_second, "B/s")),
        ("host dispatch per op", f"{params.dispatch_seconds * 1e6:.2f} µs"),
        ("kernel floor", f"{params.kernel_floor_seconds * 1e6:.2f} µs"),
        ("GEMM half size", f"{params.gemm_half_size:.0f}"),
        ("elementwise bandwidth", f"{params.elementwise_bandwidth_ratio:.2f} of copy"),
    ]
    if params.bandwidth_ratio_by_working_set:
        ladder = params.bandwidth_ratio_by_working_set
        rows.append(("copy rate in cache", ", ".join(f"{_binary(b)} ×{r:.1f}" for b, r in ladder)))
    if state.history:
        probe = state.history[-1]
        rows.insert(
            0,
            (
                "probes",
                f"compute {_si(probe.compute_flops_per_second.get(dtype, 0.0), 'FLOP/s')}, "
                f"copy {_si(probe.memory_bandwidth_bytes_per_second, 'B/s')}, "
                f"dispatch {probe.dispatch_seconds * 1e6:.2f} µs",
            ),
        )
    lines += [f"  {name:<22} {value}" for name, value in rows]
    header = (
        f"{'model':<22} {'batch':>5} {'seq':>5} {'measured ms':>12} {'before refit ms':>16} "
        f"{'error':>7} {'after refit ms':>15} {'error':>7}"
    )
    lines += ["", "measured versus predicted (error of throughput; negative = slower than said)"]
    lines += [header]
    for model in state.models:
        for point in model.points:
            if point.measured is None:
                continue
            measured = point.measured.latency_seconds
            prior = point.prior_error_ratio
            before = measured * (1 + prior) if prior is not None else None
            after = point.predicted.latency_seconds
            lines.append(
                f"{model.model:<22} {point.batch_size:>5} {point.seq_len:>5} "
                f"{measured * 1e3:>12.2f} "
                f"{'' if before is None else f'{before * 1e3:.2f}':>16} {_percent(prior):>7} "
                f"{after * 1e3:>15.2f} {_percent(after / measured - 1):>7}"
            )
    lines += ["", f"{'model':<22} {'MAPE before refit':>18} {'capacity at serving point':>28}"]
    for model in state.models:
        mape = "" if model.mape_ratio is None else f"{model.mape_ratio * 100:.1f}%"
        serving = f"{model.serving_batch_size}x{model.serving_seq_len}"
        capacity = f"{model.capacity.throughput_sequences_per_second:.1f} seq/s at {serving}"
        lines.append(f"{model.model:<22} {mape:>18} {capacity:>28}")
    if state.last_cycle_reason:
        lines += ["", f"note: {state.last_cycle_reason}"]
    return "\n".join(lines)


def calibration_document(state: DeviceState, dtype: str) -> dict[str, Any]:
    """The calibration document (models/calibration.py) of a device state."""
    params = DeviceParams.from_dict(state.calibration or {})
    probes: dict[str, Any] = {}
    if state.history:
        latest = state.history[-1]
        probes = {
            "compute_flops_per_second": dict(latest.compute_flops_per_second),
            "memory_bandwidth_bytes_per_second": latest.memory_bandwidth_bytes_per_second,
            "dispatch_seconds": latest.dispatch_seconds,
        }
    points = [
        {
            "model": model.model,
            "batch_size": point.batch_size,
            "seq_len": point.seq_len,
            "dtype": dtype,
            "measured_latency_seconds": point.measured.latency_seconds,
            "predicted_latency_seconds": point.predicted.latency_seconds,
            "prior_error_ratio": point.prior_error_ratio,
        }
        for model in state.models
        for point in model.points
        if point.measured is not None
    ]
    errors = [abs(p["prior_error_ratio"]) for p in points if p["prior_error_ratio"] is not None]
    return dump_calibration(
        params,
        device={"device": state.device, **state.identity},
        environment=dict(state.environment),
        probes=probes,
        fit={
            "dtype": dtype,
            "prior_mape_ratio": sum(errors) / len(errors) if errors else None,
            "points": points,
        },
        created_at_seconds=state.calibration_timestamp_seconds,
    )


def _report_writer(path: str) -> Any:
    """The status page renderer, checked before a minute-long cycle starts."""
    try:
        from scaleprobe.exporter.api import curves_document
        from scaleprobe.exporter.status_page import render_status_page
    except ImportError as error:
        raise InputError(
            f"--report: the status page is not available in this build ({error})"
        ) from None
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"--report: directory {target.parent} does not exist")

    def write(snapshot: Snapshot) -> None:
        document = curves_document(snapshot, time.time())
        target.write_text(render_status_page(document, inline_assets=True), encoding="utf-8")

    return write


def run_once(
    config: Config,
    device: str,
    *,
    progress: ProgressBar | None = None,
    command: list[str] | None = None,
    cancel: threading.Event | None = None,
) -> DeviceState:
    """One cycle over the whole grid (the budget cuts it); raises RuntimeError if it failed.

    ``cancel`` (set on Ctrl-C) ends the worker, which runs in its own session and so does not
    receive the terminal's SIGINT itself; ``KeyboardInterrupt`` is raised then.
    """
    architectures = load_architectures(config)
    dtype = config.dtype_for(device)
    every = len(config.models) * len(config.grid())
    points = select_points(config, None, architectures, dtype, count=every)
    result = run_cycle(
        config,
        device,
        None,
        architectures=architectures,
        points=points,
        command=command,
        on_event=progress.update if progress is not None else None,
        cancel=cancel,
    )
    if progress is not None:
        progress.finish()
    if result.outcome == "cancelled":
        raise KeyboardInterrupt
    if result.outcome != "ok" or result.state.calibration is None:
        raise RuntimeError(result.reason or result.state.last_cycle_reason or result.outcome)
    return result.state


def once_command(args: Any) -> int:
    """``scaleprobe once [--config.file PATH] [--json] [--report FILE.html]``."""
    setup_logging("warn")
    config = load_config(args.config_file) if args.config_file else default_config()
    device = resolve_devices(config)[0]
    write_report = _report_writer(args.report) if args.report else None
    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    cancel = threading.Event()
    handlers = {
        sig: signal.signal(sig, lambda signum, frame: cancel.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        state = run_once(config, device, progress=progress, cancel=cancel)
    except RuntimeError as error:
        print(f"scaleprobe once: the probe cycle failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scaleprobe once: interrupted; the probe worker was stopped", file=sys.stderr)
        return 130
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    dtype = config.dtype_for(device)
    if args.json:
        print(json.dumps(calibration_document(state, dtype), indent=2))
    else:
        print(format_report(state, dtype))
    if write_report is not None:
        snapshot = Snapshot(
            created_at_seconds=time.time(),
            build={"version": "", **{k: str(v) for k, v in state.environment.items()}},
            devices=(state,),
        )
        write_report(snapshot)
        print(f"status page written to {args.report}", file=sys.stderr)
    return 0
