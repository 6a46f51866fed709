"""``scaleprobe run``: the daemon. Schedules probe cycles, swaps in snapshots, serves, persists.

Lifecycle:

1. load the config (bad config: exit 2 before anything starts) and the state file, so the first
   scrape already serves the last calibration (its timestamps say how old it is);
2. start the HTTP server at once, so ``/metrics`` answers before the first cycle;
3. schedule cycles with APScheduler (``IntervalTrigger`` with jitter, ``max_instances=1``,
   ``coalesce=True``); the first runs right away. One job probes the devices in turn, so two
   devices are never probed at once. After each device's cycle a new immutable ``Snapshot`` is
   swapped in and written to the state file;
4. a device whose cycle failed waits out a backoff (doubling, capped) before its next try; the
   backoff lives in memory, so a restart (after a fix) retries at once;
5. SIGTERM/SIGINT: stop the scheduler, end a running worker (its whole process group), write the
   state, stop serving, exit 0.

A state file that cannot be written (read-only or full disk) is logged and counted in the
snapshot (``state_write_errors_total``); the daemon keeps serving from memory.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from scaleprobe.exporter.config import Config, default_config, load_config, resolve_devices
from scaleprobe.exporter.cycle import backoff_seconds, load_architectures, run_cycle
from scaleprobe.exporter.logs import setup_logging
from scaleprobe.exporter.snapshot import Snapshot, empty_device_state, empty_snapshot
from scaleprobe.exporter.state import default_state_path, load_snapshot, save_snapshot

log = logging.getLogger("scaleprobe.daemon")

SWITCH_INTERVAL_SECONDS = 0.001


def _version() -> str:
    try:
        return metadata.version("scaleprobe")
    except metadata.PackageNotFoundError:
        return "unknown"


class Daemon:
    """Holds the current snapshot and runs cycles; the scheduler and the signals live outside.

    ``snapshot()`` is what the HTTP server calls at every request: it returns the current
    immutable value (a reference read), so scrapes never wait for a cycle.
    """

    def __init__(
        self,
        config: Config,
        devices: Sequence[str],
        *,
        state_path: Path,
        initial: Snapshot | None = None,
        reset_baseline: bool = False,
        command: Sequence[str] | None = None,
        run_worker: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.devices = tuple(devices)
        self.state_path = state_path
        self._clock = clock
        self._command = command
        self._run_worker = run_worker
        self._architectures = load_architectures(config)
        self._reset_pending = set(self.devices) if reset_baseline else set()
        self._not_before: dict[str, float] = {}
        self._guard_said: dict[str, str] = {}  # device -> the guard problem last logged
        self._write_lock = threading.Lock()
        self.cancel = threading.Event()
        self._snapshot = self._initial_snapshot(initial)

    def _initial_snapshot(self, loaded: Snapshot | None) -> Snapshot:
        now = self._clock()
        build = {"version": _version(), "torch_version": "", "transformers_version": ""}
        if loaded is not None:
            build.update({k: v for k, v in loaded.build.items() if k != "version"})
            # only what is still configured: a removed device or model leaves no stale series
            names = {m.name for m in self.config.models}
            snapshot = Snapshot(
                created_at_seconds=loaded.created_at_seconds,
                build=build,
                devices=tuple(
                    replace(d, models=tuple(m for m in d.models if m.model in names))
                    for d in loaded.devices
                    if d.device in self.devices
                ),
                state_write_errors_total=loaded.state_write_errors_total,
            )
        else:
            snapshot = empty_snapshot(build, now)
        for device in self.devices:
            if snapshot.device(device) is None:
                snapshot = snapshot.with_device(empty_device_state(device), now)
        order = {name: i for i, name in enumerate(self.devices)}
        devices = tuple(sorted(snapshot.devices, key=lambda d: order[d.device]))
        return Snapshot(
            created_at_seconds=snapshot.created_at_seconds,
            build=snapshot.build,
            devices=devices,
            state_write_errors_total=snapshot.state_write_errors_total,
        )

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def run_cycles(self) -> None:
        """One scheduled run: each due device in turn (never two at once). Never raises."""
        for device in self.devices:
            if self.cancel.is_set():
                return
            waiting = self._not_before.get(device, 0.0) - self._clock()
            if waiting > 0:
                log.info(
                    "device in backoff after failed cycles; skipping this run",
                    extra={"device": device, "probe": "cycle", "retry_in_seconds": round(waiting)},
                )
                continue
            try:
                self._run_device(device)
            except Exception:  # a bug in a cycle must not kill the scheduler thread
                log.exception("cycle crashed", extra={"device": device, "probe": "cycle"})

    def _run_device(self, device: str) -> None:
        previous = self._snapshot.device(device)
        result = run_cycle(
            self.config,
            device,
            previous,
            architectures=self._architectures,
            command=self._command,
            run_worker=self._run_worker,
            on_event=lambda event: log.debug(
                "worker progress",
                extra={"device": device, "probe": event.get("probe", ""), "event": event},
            ),
            clock=self._clock,
            reset_baseline=device in self._reset_pending,
            cancel=self.cancel,
        )
        if result.outcome == "cancelled":
            return
        state = result.state
        if result.outcome == "ok":
            self._say_guard(device, state.guard)
        if result.outcome == "ok" and state.up:
            self._reset_pending.discard(device)
        if state.consecutive_failures:
            wait = backoff_seconds(
                state.consecutive_failures,
                self.config.backoff_initial_seconds,
                self.config.backoff_max_seconds,
            )
            self._not_before[device] = self._clock() + wait
            log.info(
                "backing off before the next try",
                extra={"device": device, "probe": "cycle", "backoff_seconds": wait},
            )
        else:
            self._not_before.pop(device, None)
        with self._write_lock:
            snapshot = self._snapshot.with_device(state, self._clock())
            environment = state.environment
            if environment.get("torch_version"):
                build = dict(snapshot.build)
                build["torch_version"] = str(environment.get("torch_version", ""))
                build["transformers_version"] = str(environment.get("transformers_version", ""))
                snapshot = Snapshot(
                    created_at_seconds=snapshot.created_at_seconds,
                    build=build,
                    devices=snapshot.devices,
                    state_write_errors_total=snapshot.state_write_errors_total,
                )
            # written before it is served: what a scrape has seen survives a kill -9
            self._save_locked(snapshot)

    def _say_guard(self, device: str, guard: dict[str, Any]) -> None:
        """Log once (not every cycle) that a GPU's guard cannot read NVML, and when it can again.

        Probes go on without the check (they cannot see whether the serving workload is busy);
        ``scaleprobe_guard_checked`` says the same in a metric. The CPU's guard reads /proc.
        """
        if not device.startswith("cuda") or "checked" not in guard:
            return
        problem = "" if guard.get("checked") else str(guard.get("reason") or "unknown")
        if problem == self._guard_said.get(device, ""):
            return
        self._guard_said[device] = problem
        if problem:
            log.warning(
                "guard cannot check the device through NVML; probes run without it (degraded)",
                extra={"device": device, "probe": "guard", "reason": problem},
            )
        else:
            log.info("guard checks the device through NVML again", extra={"device": device})

    def save(self) -> bool:
        with self._write_lock:
            return self._save_locked()

    def _save_locked(self, snapshot: Snapshot | None = None) -> bool:
        """Write ``snapshot`` (default: the current one), then serve it, counting a failure."""
        current = self._snapshot if snapshot is None else snapshot
        try:
            save_snapshot(current, self.state_path)
        except (OSError, ValueError) as error:  # ValueError: a NaN that JSON cannot hold
            self._snapshot = Snapshot(
                created_at_seconds=current.created_at_seconds,
                build=current.build,
                devices=current.devices,
                state_write_errors_total=current.state_write_errors_total + 1,
            )
            log.error(
                "cannot write the state file; serving from memory",
                extra={"path": str(self.state_path), "error": str(error)},
            )
            return False
        self._snapshot = current
        return True


def _nvml_problem() -> str:
    """Why NVML lists no GPU, for the log line of the CPU fallback."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # no library, no driver: NVMLError and friends
        return f"NVML unavailable: {type(error).__name__}: {error}"
    try:
        return f"NVML lists {int(pynvml.nvmlDeviceGetCount())} GPUs"
    except Exception as error:
        return f"NVML cannot count GPUs: {error}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def make_scheduler(daemon: Daemon, config: Config) -> BackgroundScheduler:
    """The scheduler: one job, interval with jitter, one run at a time, missed runs coalesced."""
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(
        daemon.run_cycles,
        trigger=IntervalTrigger(
            seconds=config.interval_seconds,
            jitter=int(config.jitter_seconds) or None,
            timezone=timezone.utc,
        ),
        id="probe-cycle",
        name="probe cycle",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        next_run_time=datetime.now(timezone.utc),  # the first cycle starts right away
    )
    return scheduler


def run_command(args: Any) -> int:
    """``scaleprobe run``: serve at once, probe on a schedule, stop cleanly on SIGTERM/SIGINT."""
    from scaleprobe.exporter.http import parse_listen_address, serve
    from scaleprobe.exporter.webconfig import load_web_config

    setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "logfmt"))
    config = load_config(args.config_file) if args.config_file else default_config()
    devices = resolve_devices(config)
    web_config = load_web_config(args.web_config_file) if args.web_config_file else None
    parse_listen_address(args.listen_address)  # every flag checked before the state is touched
    if config.devices == ("auto",) and devices == ("cpu",):
        log.warning(
            "no GPU found through NVML; probing the CPU",
            extra={"probe": "guard", "reason": _nvml_problem()},
        )
    state_path = Path(config.state_file) if config.state_file else default_state_path()
    initial = load_snapshot(state_path)
    daemon = Daemon(
        config,
        devices,
        state_path=state_path,
        initial=initial,
        reset_baseline=bool(getattr(args, "baseline_reset", False)),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()
        daemon.cancel.set()

    # The refit after each cycle is pure Python on the scheduler's thread; a scrape thread waits
    # up to one switch interval for the GIL at every blocking call it makes. 1 ms instead of
    # CPython's 5 ms keeps scrapes answered in milliseconds while a refit runs.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    stale_after = 3 * config.interval_seconds + config.worker_timeout_seconds
    server = serve(
        daemon.snapshot, args.listen_address, web_config, stale_after_seconds=stale_after
    )
    previous_handlers = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    scheduler = make_scheduler(daemon, config)
    try:
        scheduler.start()
        loaded = [d.device for d in daemon.snapshot().devices if d.calibration_timestamp_seconds]
        log.info(
            "started",
            extra={
                "version": _version(),
                "address": f"{server.host}:{server.port}",
                "devices": ",".join(devices),
                "models": ",".join(m.name for m in config.models),
                "state_file": str(state_path),
                "calibrated_from_state": ",".join(loaded) or "none",
                "interval_seconds": config.interval_seconds,
            },
        )
        while not stop.wait(0.5):
            pass
    finally:
        daemon.cancel.set()
        if scheduler.running:
            scheduler.shutdown(wait=True)  # the running cycle returns once its worker is ended
        saved = daemon.save()
        server.shutdown()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        log.info("stopped", extra={"state_saved": saved, "state_file": str(state_path)})
    return 0
