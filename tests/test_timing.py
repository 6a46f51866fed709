"""The timing harness: repeat limits, statistics from raw samples, and both timers."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
from scaleprobe.probes.timing import (
    MAX_SAMPLES_KEPT,
    CudaEventTimer,
    HostTimer,
    Measurement,
    TimingRequest,
    measure,
)

from tests.fakes import FakeClock, FakeCuda


class ScriptedTimer:
    """A timer that returns scripted durations and advances a fake wall clock by them."""

    name = "scripted"

    def __init__(self, durations: list[float], clock: FakeClock) -> None:
        self.durations = list(durations)
        self.clock = clock
        self.calls = 0

    def time(self, fn: object) -> float:
        self.calls += 1
        duration = self.durations.pop(0) if self.durations else 0.01
        self.clock.advance(duration)
        return duration


def test_warmup_is_timed_apart_and_not_in_the_samples() -> None:
    clock = FakeClock()
    timer = ScriptedTimer([5.0, 5.0, 0.1, 0.2, 0.3], clock)
    result = measure(
        lambda: None,
        TimingRequest(warmup=2, min_repeats=3, max_repeats=3, budget_seconds=100),
        timer,
        clock=clock,
    )
    assert result.samples_seconds == (0.1, 0.2, 0.3)
    assert result.warmup_seconds == pytest.approx(10.0)
    assert result.device_seconds == pytest.approx(10.6)
    assert timer.calls == 5


def test_stops_at_the_budget_once_min_repeats_are_in() -> None:
    clock = FakeClock()
    timer = ScriptedTimer([0.4] * 100, clock)
    result = measure(
        lambda: None,
        TimingRequest(warmup=0, min_repeats=2, max_repeats=100, budget_seconds=1.0),
        timer,
        clock=clock,
    )
    # 0.4, 0.8 (< 1.0, go on), 1.2 (>= 1.0, stop): three samples.
    assert len(result.samples_seconds) == 3


def test_the_budget_counts_the_warmup() -> None:
    clock = FakeClock()
    result = measure(
        lambda: None,
        TimingRequest(warmup=2, min_repeats=1, max_repeats=100, budget_seconds=1.0),
        ScriptedTimer([0.6, 0.6] + [0.1] * 100, clock),
        clock=clock,
    )
    assert len(result.samples_seconds) == 1  # 1.2 s of warm-up already spent the budget


def test_the_hard_limit_stops_before_a_sample_that_would_cross_it() -> None:
    clock = FakeClock()
    result = measure(
        lambda: None,
        TimingRequest(warmup=1, min_repeats=5, max_repeats=10, budget_seconds=1.0, max_seconds=2.5),
        ScriptedTimer([0.8] * 10, clock),
        clock=clock,
    )
    # warm-up 0.8, sample 1.6; another would end at 2.4 <= 2.5, so it runs; a third would not.
    assert len(result.samples_seconds) == 2
    assert clock() <= 2.5


def test_one_sample_is_kept_however_slow() -> None:
    clock = FakeClock()
    result = measure(
        lambda: None,
        TimingRequest(warmup=1, min_repeats=3, max_repeats=10, budget_seconds=0.1, max_seconds=0.2),
        ScriptedTimer([5.0] * 10, clock),
        clock=clock,
    )
    assert result.samples_seconds == (5.0,)


def test_min_repeats_win_over_an_exhausted_budget() -> None:
    clock = FakeClock()
    result = measure(
        lambda: None,
        TimingRequest(warmup=0, min_repeats=4, max_repeats=10, budget_seconds=0.0),
        ScriptedTimer([3.0] * 10, clock),
        clock=clock,
    )
    assert len(result.samples_seconds) == 4


def test_max_repeats_cap_a_generous_budget() -> None:
    clock = FakeClock()
    result = measure(
        lambda: None,
        TimingRequest(warmup=0, min_repeats=1, max_repeats=7, budget_seconds=1e9),
        ScriptedTimer([], clock),
        clock=clock,
    )
    assert len(result.samples_seconds) == 7


def test_statistics_come_from_the_raw_samples() -> None:
    samples = (1.0, 2.0, 3.0, 4.0, 100.0)
    m = Measurement(samples_seconds=samples)
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    assert m.median_seconds == 3.0
    assert m.iqr_seconds == pytest.approx(q3 - q1)
    assert m.spread_ratio == pytest.approx((q3 - q1) / 3.0)
    assert m.noisy  # IQR 2.0 over a median of 3.0


def test_a_tight_measurement_is_not_noisy() -> None:
    m = Measurement(samples_seconds=(1.00, 1.01, 0.99, 1.00, 1.02))
    assert not m.noisy
    assert Measurement(samples_seconds=(0.5,)).iqr_seconds == 0.0


def test_kept_samples_are_capped_and_spread_over_the_run() -> None:
    samples = tuple(float(i) for i in range(500))
    kept = Measurement(samples_seconds=samples).kept_samples()
    assert len(kept) == MAX_SAMPLES_KEPT
    assert kept[0] == 0.0 and kept[-1] >= 480.0
    assert Measurement(samples_seconds=(1.0, 2.0)).kept_samples() == [1.0, 2.0]


def test_threads_and_clocks_are_recorded_with_the_result() -> None:
    clock = FakeClock()
    result = measure(
        lambda: None,
        TimingRequest(warmup=0, min_repeats=1, max_repeats=1),
        ScriptedTimer([0.1], clock),
        clock=clock,
        threads=2,
        clocks=lambda: {"sm_mhz": 1410},
    )
    summary = result.summary()
    assert summary["threads"] == 2
    assert summary["clocks"] == {"sm_mhz": 1410}
    assert summary["timer"] == "scripted"


def test_host_timer_synchronises_before_and_after() -> None:
    clock = FakeClock()
    order: list[str] = []

    def work() -> None:
        order.append("work")
        clock.advance(0.25)

    timer = HostTimer(clock=clock, synchronize=lambda: order.append("sync"))
    assert timer.time(work) == pytest.approx(0.25)
    assert order == ["sync", "work", "sync"]


def test_cuda_event_timer_reads_device_time_in_seconds() -> None:
    cuda = FakeCuda()
    elapsed = CudaEventTimer(cuda).time(lambda: cuda.run(0.0125))
    assert elapsed == pytest.approx(0.0125)
    assert cuda.event_synchronizations == 1  # waited for the end event, not the whole device


def test_measure_through_the_cuda_timer() -> None:
    cuda = FakeCuda()
    result = measure(
        lambda: cuda.run(0.002),
        TimingRequest(warmup=1, min_repeats=5, max_repeats=5),
        CudaEventTimer(cuda),
        clock=cuda.clock,
    )
    assert result.median_seconds == pytest.approx(0.002)
    assert result.timer == "cuda_events"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup": -1},
        {"min_repeats": 0},
        {"min_repeats": 5, "max_repeats": 4},
        {"budget_seconds": -1},
    ],
)
def test_bad_timing_requests_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimingRequest(**kwargs)  # type: ignore[arg-type]


def test_a_scaled_request_cuts_the_budget_and_the_hard_stop_alike() -> None:
    request = TimingRequest(warmup=2, min_repeats=3, max_repeats=40, budget_seconds=0.8)
    part = request.scaled(0.25)
    assert part.budget_seconds == pytest.approx(0.2) and part.max_seconds is None
    assert (part.warmup, part.min_repeats, part.max_repeats) == (2, 3, 40)
    stopped = replace(request, max_seconds=1.6).scaled(0.5)
    assert stopped.budget_seconds == pytest.approx(0.4)
    assert stopped.max_seconds == pytest.approx(0.8)
    # a cap on the repeats, never below the minimum
    assert request.scaled(0.5, max_repeats=12).max_repeats == 12
    assert request.scaled(0.5, max_repeats=1).max_repeats == 3
