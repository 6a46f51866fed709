"""The timing harness every probe uses: warm up, repeat, keep the raw samples.

The request (``TimingRequest``) and the result (``Measurement``) are separate frozen values, as in
``torch.utils.benchmark``: the request says how long to try, the result keeps every raw sample and
computes the median, the interquartile range and a noise flag from them, so a reader can always
check a figure against the samples it came from.

The timer is swappable because devices differ in how time can be read honestly:

- ``HostTimer`` reads a monotonic host clock around the call. On the CPU the work is synchronous,
  so that is the time. On a GPU it is only right with a ``synchronize`` callable, because kernels
  run asynchronously; synchronising costs single to low double digit microseconds per sample.
- ``CudaEventTimer`` records CUDA events on the stream around the call and reads the device's own
  elapsed time, which excludes the host's wait for the final synchronisation.

Tests inject a fake ``cuda`` module (``tests/fakes.py``) to exercise the CUDA path on a machine
without a GPU; nothing here imports torch at module level.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

# A sample spread (interquartile range / median) above this marks a measurement as noisy.
NOISY_SPREAD_RATIO = 0.10
# Raw samples kept in a result document: enough to check the median, small enough to ship as JSON.
MAX_SAMPLES_KEPT = 50


@dataclass(frozen=True)
class TimingRequest:
    """How to time one callable.

    The harness runs ``warmup`` calls (timed, but kept out of the samples), then repeats until it
    has at least ``min_repeats`` samples and either ``max_repeats`` samples or ``budget_seconds``
    of wall time since the start of the warm-up.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 50
    budget_seconds: float = 1.0
    # A hard limit that ends the run even below ``min_repeats`` (one sample is always kept): no
    # sample starts that the last one's duration says would end past it. On a loaded host slow
    # samples must not stretch a probe far past its share of the cycle.
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(
                f"bad timing request {self}: need warmup >= 0, 1 <= min_repeats <= max_repeats"
            )
        if self.budget_seconds < 0:
            raise ValueError(f"bad timing request {self}: budget_seconds must be >= 0")
        if self.max_seconds is not None and self.max_seconds < self.budget_seconds:
            raise ValueError(f"bad timing request {self}: max_seconds must be >= budget_seconds")

    def scaled(self, share: float, max_repeats: int | None = None) -> TimingRequest:
        """This request with its budget and hard stop cut to ``share`` (a part of one probe), and
        its repeats capped at ``max_repeats`` if given (never below ``min_repeats``)."""
        return replace(
            self,
            budget_seconds=self.budget_seconds * share,
            max_seconds=None if self.max_seconds is None else self.max_seconds * share,
            max_repeats=self.max_repeats
            if max_repeats is None
            else max(self.min_repeats, max_repeats),
        )


@dataclass(frozen=True)
class Measurement:
    """The raw samples of one timed callable, with statistics computed from them on demand."""

    samples_seconds: tuple[float, ...]
    warmup_seconds: float = 0.0
    threads: int | None = None  # torch.get_num_threads() when measured: it changes everything
    clocks: Mapping[str, Any] = field(default_factory=dict)  # e.g. GPU SM/memory clocks (MHz)
    timer: str = "host"

    def __post_init__(self) -> None:
        if not self.samples_seconds:
            raise ValueError("a measurement needs at least one sample")

    @property
    def median_seconds(self) -> float:
        return float(statistics.median(self.samples_seconds))

    @property
    def iqr_seconds(self) -> float:
        """Interquartile range (0 with fewer than two samples)."""
        if len(self.samples_seconds) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples_seconds, n=4, method="inclusive")
        return float(q3 - q1)

    @property
    def spread_ratio(self) -> float:
        """IQR / median: the relative spread of the samples."""
        median = self.median_seconds
        return self.iqr_seconds / median if median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread_ratio > NOISY_SPREAD_RATIO

    @property
    def device_seconds(self) -> float:
        """All the timed work this measurement put on the device, warm-up included."""
        return float(sum(self.samples_seconds) + self.warmup_seconds)

    def kept_samples(self, limit: int = MAX_SAMPLES_KEPT) -> list[float]:
        """Up to ``limit`` raw samples (evenly spaced when there are more), for JSON."""
        samples = list(self.samples_seconds)
        if len(samples) <= limit:
            return samples
        step = len(samples) / limit
        return [samples[int(i * step)] for i in range(limit)]

    def summary(self) -> dict[str, Any]:
        return {
            "median_seconds": self.median_seconds,
            "iqr_seconds": self.iqr_seconds,
            "spread_ratio": self.spread_ratio,
            "noisy": self.noisy,
            "repeats": len(self.samples_seconds),
            "threads": self.threads,
            "clocks": dict(self.clocks),
            "timer": self.timer,
        }


class Timer(Protocol):
    """Times one call of ``fn`` and returns its duration in seconds."""

    name: str

    def time(self, fn: Callable[[], object]) -> float: ...


class HostTimer:
    """A monotonic host clock around the call, optionally followed by a device synchronisation."""

    name = "host"

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        synchronize: Callable[[], object] | None = None,
    ) -> None:
        self.clock = clock
        self.synchronize = synchronize

    def time(self, fn: Callable[[], object]) -> float:
        if self.synchronize is not None:
            self.synchronize()  # do not charge earlier queued work to this call
        start = self.clock()
        fn()
        if self.synchronize is not None:
            self.synchronize()
        return self.clock() - start


class CudaEventTimer:
    """CUDA events recorded on the current stream around the call; the device's own elapsed time.

    ``cuda`` is the ``torch.cuda`` module (a fake in tests): it needs ``Event(enable_timing=True)``
    with ``record()``, ``synchronize()`` and ``elapsed_time(other)`` (milliseconds).
    """

    name = "cuda_events"

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda

    def time(self, fn: Callable[[], object]) -> float:
        start = self.cuda.Event(enable_timing=True)
        end = self.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000.0


def measure(
    fn: Callable[[], object],
    request: TimingRequest,
    timer: Timer | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
    threads: int | None = None,
    clocks: Callable[[], Mapping[str, Any]] | None = None,
) -> Measurement:
    """Warm up, then time ``fn`` repeatedly within the request's limits.

    ``clock`` bounds the wall-time budget (it is not what is measured: ``timer`` is).
    ``threads`` and ``clocks`` are recorded with the result, because both change the figure.
    """
    timer = timer if timer is not None else HostTimer(clock=clock)
    started = clock()  # the budget includes the warm-up: it bounds the probe's whole device time
    warmup_seconds = sum(timer.time(fn) for _ in range(request.warmup))
    samples: list[float] = []
    while len(samples) < request.max_repeats:
        samples.append(timer.time(fn))
        elapsed = clock() - started
        if len(samples) >= request.min_repeats and elapsed >= request.budget_seconds:
            break
        # The hard limit looks one sample ahead, so a slow sample cannot carry the run past it.
        if request.max_seconds is not None and elapsed + samples[-1] > request.max_seconds:
            break
    return Measurement(
        samples_seconds=tuple(samples),
        warmup_seconds=warmup_seconds,
        threads=threads,
        clocks=dict(clocks()) if clocks is not None else {},
        timer=timer.name,
    )
