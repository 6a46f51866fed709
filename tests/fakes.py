"""Fakes for what this machine lacks: NVML (``pynvml``) and CUDA (``torch.cuda``).

Inject them through the parameters the code exposes (``nvml=``, ``cuda=``, ``timer=``); never
patch globals. Both fakes follow the real APIs' names and return shapes, so the code under test
is the code that runs on a GPU node.

- ``FakeNVML``: the ``pynvml`` functions the guard uses, over a list of ``FakeGPU`` whose
  utilisation, memory, name, UUID and clocks tests set; failure modes raise ``NVMLError`` the way
  a missing driver, a lost GPU or a flaky query does.
- ``FakeCuda``: ``torch.cuda``'s events, streams, graphs, memory statistics and device
  properties over a ``FakeClock``. Work "runs" by advancing the clock (``cuda.run(seconds)``);
  CUDA events read it, so elapsed times are exact and tests can assert on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

# ---------------------------------------------------------------------------------------- NVML


class NVMLError(Exception):
    """Stands in for ``pynvml.NVMLError``."""


@dataclass
class FakeGPU:
    """One GPU as NVML reports it; tests change the fields between probes."""

    name: str | bytes = "NVIDIA A100-SXM4-80GB"
    uuid: str | bytes = "GPU-5e2b4a1c-0000-1111-2222-333344445555"
    utilization_percent: int = 0
    memory_utilization_percent: int = 0
    total_bytes: int = 80 * 1024**3
    free_bytes: int = 70 * 1024**3
    sm_clock_mhz: int = 1410
    memory_clock_mhz: int = 1593


@dataclass
class FakeNVML:
    """The subset of ``pynvml`` scaleprobe uses.

    Failure modes: ``fail_init`` (no driver: ``nvmlInit`` raises), ``fail_queries`` (utilisation
    and memory reads raise, e.g. a GPU that fell off the bus), ``fail_identity`` (name/UUID
    reads raise).
    """

    gpus: list[FakeGPU] = field(default_factory=lambda: [FakeGPU()])
    driver_version: str | bytes = "550.54.15"
    fail_init: bool = False
    fail_queries: bool = False
    fail_identity: bool = False
    calls: list[str] = field(default_factory=list)
    initialized: bool = False

    NVMLError = NVMLError
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def _gpu(self, handle: FakeGPU) -> FakeGPU:
        if not self.initialized:
            raise NVMLError("Uninitialized")
        return handle

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:
        self.calls.append(f"nvmlDeviceGetHandleByIndex({index})")
        if not self.initialized:
            raise NVMLError("Uninitialized")
        if not 0 <= index < len(self.gpus):
            raise NVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGPU:
        self.calls.append(f"nvmlDeviceGetHandleByUUID({uuid!r})")
        if not self.initialized:
            raise NVMLError("Uninitialized")
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if (gpu.uuid.decode() if isinstance(gpu.uuid, bytes) else gpu.uuid) == wanted:
                return gpu
        raise NVMLError("Not Found")

    def nvmlDeviceGetIndex(self, handle: FakeGPU) -> int:
        return self.gpus.index(self._gpu(handle))

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGPU) -> Any:
        self.calls.append("nvmlDeviceGetUtilizationRates")
        gpu = self._gpu(handle)
        if self.fail_queries:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(gpu=gpu.utilization_percent, memory=gpu.memory_utilization_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGPU) -> Any:
        self.calls.append("nvmlDeviceGetMemoryInfo")
        gpu = self._gpu(handle)
        if self.fail_queries:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(
            total=gpu.total_bytes, free=gpu.free_bytes, used=gpu.total_bytes - gpu.free_bytes
        )

    def nvmlDeviceGetName(self, handle: FakeGPU) -> str | bytes:
        gpu = self._gpu(handle)
        if self.fail_identity:
            raise NVMLError("Not Supported")
        return gpu.name

    def nvmlDeviceGetUUID(self, handle: FakeGPU) -> str | bytes:
        gpu = self._gpu(handle)
        if self.fail_identity:
            raise NVMLError("Not Supported")
        return gpu.uuid

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        if not self.initialized:
            raise NVMLError("Uninitialized")
        return self.driver_version

    def nvmlDeviceGetClockInfo(self, handle: FakeGPU, clock_type: int) -> int:
        gpu = self._gpu(handle)
        if self.fail_queries:
            raise NVMLError("GPU is lost")
        return {self.NVML_CLOCK_SM: gpu.sm_clock_mhz, self.NVML_CLOCK_MEM: gpu.memory_clock_mhz}[
            clock_type
        ]


# ---------------------------------------------------------------------------------------- CUDA


@dataclass
class FakeClock:
    """A clock that only moves when told to: ``clock()`` reads it, ``advance()`` moves it."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeEvent:
    """``torch.cuda.Event``: ``record`` stamps the fake device clock; times in milliseconds."""

    def __init__(self, cuda: FakeCuda, enable_timing: bool = False) -> None:
        self.cuda = cuda
        self.enable_timing = enable_timing
        self.recorded_at: float | None = None

    def record(self, stream: Any = None) -> None:
        self.recorded_at = self.cuda.clock()

    def synchronize(self) -> None:
        self.cuda.event_synchronizations += 1

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'")
        if self.recorded_at is None or end.recorded_at is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time")
        return (end.recorded_at - self.recorded_at) * 1000.0


class FakeStream:
    def __init__(self, name: str = "side") -> None:
        self.name = name
        self.waited_on: list[FakeStream] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_on.append(other)


class FakeGraph:
    """``torch.cuda.CUDAGraph``: replay advances the clock by ``cuda.replay_seconds``."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.captured = False
        self.replays = 0

    def replay(self) -> None:
        if not self.captured:
            raise RuntimeError("replay of a graph that was never captured")
        self.replays += 1
        self.cuda.clock.advance(self.cuda.replay_seconds)


@dataclass
class FakeCuda:
    """The subset of ``torch.cuda`` scaleprobe uses, on a ``FakeClock``.

    ``replay_seconds``: what one graph replay takes. ``capture_error``: raised on capture (a model
    that cannot be captured). ``peak_allocated_bytes``: what ``max_memory_allocated`` reports.
    """

    clock: FakeClock = field(default_factory=FakeClock)
    replay_seconds: float = 0.001
    capture_error: Exception | None = None
    peak_allocated_bytes: int = 3 * 1024**3
    total_memory: int = 80 * 1024**3
    l2_cache_bytes: int = 40 * 1024**2
    name: str = "NVIDIA A100-SXM4-80GB"
    # What torch reports as ``get_device_properties(i).uuid`` for cuda:0, cuda:1, … (no "GPU-").
    uuids: tuple[str, ...] = ()
    synchronizations: int = 0
    event_synchronizations: int = 0
    empty_cache_calls: int = 0
    memory_fraction: tuple[float, int] | None = None
    peak_resets: int = 0
    captures: int = 0
    capturing: bool = False
    stream_log: list[str] = field(default_factory=list)
    _current: FakeStream = field(default_factory=lambda: FakeStream("default"))

    def run(self, seconds: float) -> None:
        """Simulate device work of ``seconds``."""
        self.clock.advance(seconds)

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self, enable_timing=enable_timing)

    def synchronize(self, device: Any = None) -> None:
        self.synchronizations += 1

    def Stream(self) -> FakeStream:
        return FakeStream()

    def current_stream(self, device: Any = None) -> FakeStream:
        return self._current

    @contextlib.contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        previous, self._current = self._current, stream
        self.stream_log.append(f"enter {stream.name}")
        try:
            yield
        finally:
            self._current = previous
            self.stream_log.append(f"exit {stream.name}")

    def CUDAGraph(self) -> FakeGraph:
        return FakeGraph(self)

    @contextlib.contextmanager
    def graph(self, graph: FakeGraph) -> Iterator[None]:
        if self.capture_error is not None:
            raise self.capture_error
        self.capturing = True
        self.stream_log.append("capture begin")
        try:
            yield
        finally:
            self.capturing = False
            self.stream_log.append("capture end")
        graph.captured = True
        self.captures += 1

    def get_device_properties(self, index: int) -> Any:
        properties = SimpleNamespace(
            name=self.name,
            total_memory=self.total_memory,
            L2_cache_size=self.l2_cache_bytes,
            multi_processor_count=108,
        )
        if self.uuids:
            properties.uuid = self.uuids[index]
        return properties

    def set_per_process_memory_fraction(self, fraction: float, device: int = 0) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        self.memory_fraction = (fraction, device)

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self.peak_resets += 1

    def max_memory_allocated(self, device: Any = None) -> int:
        return self.peak_allocated_bytes


def device_work(cuda: FakeCuda, seconds: float) -> Callable[[], None]:
    """A callable that "runs" ``seconds`` of work on the fake device each call."""
    return lambda: cuda.run(seconds)
