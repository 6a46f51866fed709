"""The guard: probe politely beside a serving workload, and never let a probe kill the worker.

Before each probe on an NVIDIA GPU the guard reads NVML: GPU utilisation over the threshold means
the serving workload is busy (skip, ``skipped_busy``); free memory under the minimum means a probe
could starve it (skip, ``skipped_memory``). ``nvml`` is the ``pynvml`` module (``nvidia-ml-py``),
a parameter so tests hand in ``tests/fakes.FakeNVML``. Without NVML the guard records what it
could not check and lets the probes run.

On the CPU the same two checks read /proc: the share of all cores that *other* processes used
(``/proc/stat``'s busy time, steal included, minus this worker's own CPU time) since the previous
check, or over ``CPU_WINDOW_SECONDS`` before the first one, and ``MemAvailable``. A CPU that
neighbours keep busy would be measured as contention, not as the device (BENCHMARKS.md: 45-75%
errors at load 3-7 on two cores), and probing would slow the neighbours down.

``run_guarded`` is the one wrapper around every probe: guard check, timing of the whole call, an
exception turned into a ``failed`` entry with its reason, memory released after an out-of-memory.

``device_identity`` fills the result's ``device`` object with the labels dcgm-exporter uses
(``gpu``, ``UUID``, ``modelName``) so the two exporters' series join.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaleprobe.probes.device import (
    cpu_model_name,
    cuda_index,
    host_memory_bytes,
    is_out_of_memory,
    release_memory,
)

log = logging.getLogger("scaleprobe.probes.guard")

# The first check on a CPU samples the other processes' load for this long; later checks measure
# it over the time since the previous check (the probe in between included, its own time taken
# out), or over a window of their own when less CPU time than this has passed since.
CPU_WINDOW_SECONDS = 0.25


def _default_nvml() -> Any:
    """The real pynvml module, or None when it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class SkipProbe(Exception):
    """Raised by a probe that decides not to run (e.g. a point that cannot fit the memory cap)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(frozen=True)
class GuardReading:
    """What the guard saw before one probe; ``outcome`` is set when the probe must be skipped."""

    checked: bool
    reason: str
    utilization_ratio: float | None = None
    free_memory_bytes: int | None = None
    outcome: str | None = None  # None (go ahead), "skipped_busy" or "skipped_memory"

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "reason": self.reason,
            "utilization_ratio": self.utilization_ratio,
            "free_memory_bytes": self.free_memory_bytes,
        }


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds: all cores, busy and in total (/proc/stat), and this process."""

    busy_seconds: float
    total_seconds: float
    own_seconds: float


def own_cpu_seconds() -> float:
    """User plus system time of this process, all its threads."""
    times = os.times()
    return times.user + times.system


def read_cpu_sample(proc_stat: Path, own: Callable[[], float] = own_cpu_seconds) -> CpuSample:
    """The aggregate ``cpu`` line of /proc/stat (clock ticks) and this process's CPU time.

    Idle is ``idle + iowait``; busy is ``user + nice + system + irq + softirq``. ``steal`` (time a
    hypervisor gave these vCPUs to another guest) is left out of both: it is not a workload on this
    node that probing would slow down, and cloud VMs show it all the time.
    """
    first = proc_stat.read_text().splitlines()[0].split()
    if not first or first[0] != "cpu":
        raise ValueError(f"{proc_stat} does not start with the aggregate 'cpu' line")
    ticks = [float(value) for value in first[1:8]]  # user nice system idle iowait irq softirq
    if len(ticks) < 7:
        raise ValueError(f"{proc_stat}: {len(ticks)} fields on the 'cpu' line, expected 7 or more")
    per_second = float(os.sysconf("SC_CLK_TCK"))
    total = sum(ticks)
    idle = ticks[3] + ticks[4]
    return CpuSample((total - idle) / per_second, total / per_second, own())


class Guard:
    """Checks the device before each probe and identifies it.

    ``nvml`` defaults to the real ``pynvml`` for a CUDA device (``None`` disables NVML);
    ``cuda`` to ``torch.cuda`` when needed (memory cap). On the CPU neither is touched.
    """

    def __init__(
        self,
        device: str,
        *,
        max_utilization_ratio: float = 0.5,
        min_free_memory_bytes: int = 1024**3,
        nvml: Any = "default",
        cuda: Any = None,
        cpuinfo: Path = Path("/proc/cpuinfo"),
        meminfo: Path = Path("/proc/meminfo"),
        proc_stat: Path = Path("/proc/stat"),
        own_cpu: Callable[[], float] = own_cpu_seconds,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.device = device
        self.max_utilization_ratio = max_utilization_ratio
        self.min_free_memory_bytes = min_free_memory_bytes
        self.is_cuda = device.startswith("cuda")
        self.cuda = cuda
        self.cpuinfo = cpuinfo
        self.meminfo = meminfo
        self.proc_stat = proc_stat
        self.own_cpu = own_cpu
        self.sleep = sleep
        self._last_cpu: CpuSample | None = None
        self.nvml: Any = None
        self.handle: Any = None
        self.unavailable_reason = ""
        if not self.is_cuda:
            return
        module = _default_nvml() if nvml == "default" else nvml
        if module is None:
            self.unavailable_reason = "NVML not available (pynvml not installed)"
            return
        try:
            module.nvmlInit()
            self.handle = self._find_handle(module)
            self.nvml = module
        except Exception as error:  # NVMLError and anything else a broken driver raises
            self.unavailable_reason = f"NVML failed: {_describe(error)}"

    def _cuda_properties(self) -> Any:
        """torch.cuda's properties of this device, or None when CUDA cannot say."""
        try:
            cuda = self.cuda if self.cuda is not None else _torch_cuda()
            return cuda.get_device_properties(cuda_index(self.device))
        except Exception:
            return None

    def _find_handle(self, nvml: Any) -> Any:
        """The NVML handle of the GPU torch calls ``cuda:N``.

        By UUID when torch knows it: CUDA_VISIBLE_DEVICES renumbers devices for CUDA but not for
        NVML, so ``cuda:0`` may be NVML's GPU 2. By index otherwise.
        """
        uuid = getattr(self._cuda_properties(), "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                return nvml.nvmlDeviceGetHandleByUUID(
                    text if text.startswith("GPU-") else f"GPU-{text}"
                )
            except Exception as error:
                log.warning("NVML has no GPU with torch's UUID %s (%s)", text, _describe(error))
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index(self.device))

    def check(self) -> GuardReading:
        """Read utilisation and free memory; decide whether the next probe may run."""
        if not self.is_cuda:
            return self._check_cpu()
        if self.nvml is None:
            return GuardReading(checked=False, reason=self.unavailable_reason)
        try:
            utilization = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0
            free = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).free)
        except Exception as error:
            return GuardReading(checked=False, reason=f"NVML query failed: {_describe(error)}")
        busy = f"device busy: utilization {utilization:.0%}"
        return self._decide(utilization, free, busy, "utilization and free memory within limits")

    def _check_cpu(self) -> GuardReading:
        """The other processes' share of all cores since the last check, and MemAvailable."""
        try:
            start = self._last_cpu
            end = read_cpu_sample(self.proc_stat, self.own_cpu)
            if start is None or end.total_seconds - start.total_seconds < CPU_WINDOW_SECONDS:
                # a first check, or one right after the last: measure over a window of its own
                start = end
                self.sleep(CPU_WINDOW_SECONDS)
                end = read_cpu_sample(self.proc_stat, self.own_cpu)
        except (OSError, ValueError, IndexError) as error:
            return GuardReading(checked=False, reason=f"CPU load unreadable: {_describe(error)}")
        self._last_cpu = end
        total = end.total_seconds - start.total_seconds
        if total <= 0:
            return GuardReading(checked=False, reason="no CPU time elapsed since the last check")
        others = (end.busy_seconds - start.busy_seconds) - (end.own_seconds - start.own_seconds)
        utilization = min(1.0, max(0.0, others / total))
        free = host_memory_bytes(self.meminfo, "MemAvailable")
        busy = f"CPU busy: other processes used {utilization:.0%} of the cores,"
        within = "other processes' CPU load and available memory within limits"
        return self._decide(utilization, free, busy, within)

    def _decide(self, utilization: float, free: int | None, busy: str, within: str) -> GuardReading:
        """Skip while the device is busier than the threshold, else while memory is short."""
        outcome, reason = None, within
        if utilization > self.max_utilization_ratio:
            outcome = "skipped_busy"
            reason = f"{busy} over the {self.max_utilization_ratio:.0%} threshold"
        elif free is not None and free < self.min_free_memory_bytes:
            outcome = "skipped_memory"
            reason = (
                f"memory short: {free} bytes free, under the {self.min_free_memory_bytes} bytes "
                "minimum"
            )
        return GuardReading(True, reason, utilization, free, outcome)

    def clocks(self) -> dict[str, int]:
        """Current SM and memory clocks in MHz (empty when NVML cannot say)."""
        if self.nvml is None:
            return {}
        try:
            return {
                "sm_mhz": int(
                    self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM)
                ),
                "memory_mhz": int(
                    self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_MEM)
                ),
            }
        except Exception:
            return {}

    def apply_memory_cap(self, memory_cap_bytes: int) -> str:
        """On CUDA, cap this process's allocator at ``memory_cap_bytes``; say what was done."""
        if not self.is_cuda:
            return "CPU: probes size themselves under the cap (no allocator limit on the host)"
        cuda = self.cuda if self.cuda is not None else _torch_cuda()
        index = cuda_index(self.device)
        total = int(cuda.get_device_properties(index).total_memory)
        fraction = min(1.0, memory_cap_bytes / total)
        cuda.set_per_process_memory_fraction(fraction, index)
        return f"CUDA allocator capped at {fraction:.3f} of {total} bytes"

    def device_identity(self) -> dict[str, Any]:
        """The result's ``device`` object: NVML identity on NVIDIA, /proc/cpuinfo on the CPU."""
        if not self.is_cuda:
            return {
                "device": self.device,
                "gpu": "",
                "UUID": "",
                "modelName": cpu_model_name(self.cpuinfo),
                "driver_version": "",
                "memory_bytes": host_memory_bytes(self.meminfo),
                "kind": "cpu",
            }
        identity: dict[str, Any] = {
            "device": self.device,
            "gpu": str(cuda_index(self.device)),
            "UUID": "",
            "modelName": "",
            "driver_version": "",
            "memory_bytes": None,
            "kind": "cuda",
        }
        if self.nvml is None:
            properties = self._cuda_properties()  # no NVML: what CUDA itself can tell
            if properties is not None:
                identity["modelName"] = str(getattr(properties, "name", ""))
                identity["memory_bytes"] = getattr(properties, "total_memory", None)
            return identity
        for key, read in (
            ("gpu", lambda: str(self.nvml.nvmlDeviceGetIndex(self.handle))),
            ("modelName", lambda: self.nvml.nvmlDeviceGetName(self.handle)),
            ("UUID", lambda: self.nvml.nvmlDeviceGetUUID(self.handle)),
            ("driver_version", lambda: self.nvml.nvmlSystemGetDriverVersion()),
            ("memory_bytes", lambda: int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).total)),
        ):
            try:
                value = read()
                identity[key] = value.decode() if isinstance(value, bytes) else value
            except Exception as error:
                log.warning("NVML could not read %s: %s", key, _describe(error))
        return identity


def _torch_cuda() -> Any:
    import torch

    return torch.cuda


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def run_guarded(
    name: str,
    fn: Callable[[], dict[str, Any]],
    guard: Guard,
    *,
    clock: Callable[[], float] = time.perf_counter,
    cuda: Any = None,
) -> dict[str, Any]:
    """Run one probe under the guard; always return its result-document entry, never raise.

    ``fn`` returns the probe's entry (without ``outcome``). The entry gets ``outcome``,
    ``duration_seconds`` (wall time of the whole call) and ``reason`` when not ``ok``.
    """
    reading = guard.check()
    if reading.outcome is not None:
        log.info("skipping %s: %s", name, reading.reason)
        return {"outcome": reading.outcome, "reason": reading.reason, "duration_seconds": 0.0}
    started = clock()
    try:
        entry = dict(fn())
    except SkipProbe as skip:
        log.info("skipping %s: %s", name, skip.reason)
        elapsed = clock() - started
        return {"outcome": skip.outcome, "reason": skip.reason, "duration_seconds": elapsed}
    except Exception as error:
        out_of_memory = is_out_of_memory(error)
        release_memory(guard.device, cuda)
        prefix = "out of memory" if out_of_memory else "probe raised"
        log.warning("%s failed: %s", name, _describe(error))
        return {
            "outcome": "failed",
            "reason": f"{prefix}: {_describe(error)}",
            "duration_seconds": clock() - started,
        }
    entry.setdefault("outcome", "ok")
    entry["duration_seconds"] = clock() - started
    clocks = guard.clocks()  # read right after the work: the clocks it ran at (GPU only)
    if clocks and isinstance(entry.get("timing"), dict):
        entry["timing"]["clocks"] = clocks
    return entry
