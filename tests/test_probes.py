"""The calibration and model probes: real torch on the CPU, the CUDA paths through FakeCuda.

Budgets are kept small so the file runs in seconds; figures are checked against the samples they
came from, not against expected speeds (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import mmap
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from scaleprobe.probes import compute, dispatch, memory
from scaleprobe.probes import model as model_probe
from scaleprobe.probes.device import cpu_llc_bytes, dtype_bytes, gpu_l2_bytes
from scaleprobe.probes.guard import SkipProbe
from scaleprobe.probes.registry import BUDGET_SECONDS, CALIBRATION_PROBES, probe_timing
from scaleprobe.probes.request import ProbeRequest
from scaleprobe.probes.timing import HostTimer, TimingRequest

from tests.fakes import FakeClock, FakeCuda, device_work


class PacedTimer:
    """A timer that does not run the work: each call "takes" a fixed time on a fake clock."""

    name = "paced"

    def __init__(self, clock: FakeClock, seconds_per_call: float) -> None:
        self.clock = clock
        self.seconds_per_call = seconds_per_call

    def time(self, fn: object) -> float:
        self.clock.advance(self.seconds_per_call)
        return self.seconds_per_call


class RunningPacedTimer(PacedTimer):
    """A paced timer that runs the work too."""

    def time(self, fn: object) -> float:
        assert callable(fn)
        fn()
        return super().time(fn)


class RateTimer:
    """A timer that plays a device's matrix-product rate curve on a fake clock: a product call
    (``compute.Products``) takes its FLOPs over ``rates[n]``, any other call ``other_seconds``."""

    name = "rate"

    def __init__(self, clock: FakeClock, rates: dict[int, float], other_seconds: float) -> None:
        self.clock = clock
        self.rates = rates
        self.other_seconds = other_seconds

    def time(self, fn: object) -> float:
        if isinstance(fn, compute.Products):
            seconds = fn.flops / self.rates[fn.n]
        else:
            seconds = self.other_seconds
        self.clock.advance(seconds)
        return seconds


QUICK = TimingRequest(warmup=1, min_repeats=3, max_repeats=10, budget_seconds=0.05)
TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}


def test_registry_holds_the_three_calibration_probes() -> None:
    assert set(CALIBRATION_PROBES) == {"compute", "memory", "dispatch"}
    # The budgets keep the calibration under 5 s on a CPU and 1 s on a GPU, warm-up aside.
    assert sum(BUDGET_SECONDS["cpu"].values()) <= 3.5
    assert sum(BUDGET_SECONDS["cuda"].values()) <= 0.8


def test_compute_rate_is_flops_over_the_median_sample() -> None:
    result = compute.run(ProbeRequest(timing=QUICK))
    n = result.detail["n"]
    assert n == compute.CPU_SIZE
    assert result.value == pytest.approx(2 * n**3 / result.measurement.median_seconds)
    sizes = [row["n"] for row in result.detail["rates_by_size"]]
    assert sizes == [*compute.CPU_SMALL_SIZES, n]
    assert result.to_dict()["device_seconds"] > result.measurement.device_seconds  # small ones too
    assert all(row["flops_per_second"] > 0 for row in result.detail["rates_by_size"])
    streamed = result.detail["streamed_product"]
    assert (streamed["m"], streamed["n"], streamed["k"]) == compute.STREAMED_SHAPES[0]
    # whole layers of 12 × 768² weights: the largest stack under 64 MiB (this CPU's LLC × 2 is
    # larger, so up to 256 MiB)
    layer_bytes = compute.LAYER_WEIGHT_ELEMENTS * 4
    assert compute.LAYER_WEIGHT_ELEMENTS == 12 * 768 * 768
    assert streamed["weights_bytes"] == streamed["layers"] * layer_bytes
    assert streamed["layers"] >= compute.STREAMED_MIN_WEIGHT_BYTES // layer_bytes
    shapes = [(r["m"], r["n"], r["k"]) for r in streamed["rates_by_shape"]]
    assert shapes == list(compute.STREAMED_SHAPES)
    assert all(0 < r["flops_per_second"] < 1e14 for r in streamed["rates_by_shape"])
    assert 0 < streamed["flops_per_second"] < 1e14
    assert result.measurement.threads == torch.get_num_threads()
    entry = result.to_dict()
    assert entry["unit"] == "flops_per_second"


def test_compute_shares_its_budget_between_the_large_and_the_small_products() -> None:
    clock = FakeClock()
    timer = PacedTimer(clock, seconds_per_call=0.01)
    timing = TimingRequest(warmup=1, min_repeats=3, max_repeats=1000, budget_seconds=1.0)
    result = compute.run(ProbeRequest(timing=timing), timer=timer, clock=clock)
    sizes = [row["n"] for row in result.detail["rates_by_size"]]
    assert sizes == [*compute.CPU_SMALL_SIZES, compute.CPU_SIZE]
    # The large product got its share (0.7 s at 10 ms a call), the small ones and the CPU's
    # transcendental rates the rest.
    assert result.measurement.device_seconds == pytest.approx(0.7, abs=0.011)
    assert result.device_seconds == pytest.approx(1.0, abs=0.05)
    assert set(result.detail["transcendental_elements_per_second"]) == {"tanh", "exp"}
    assert result.value == pytest.approx(2 * compute.CPU_SIZE**3 / 0.01)


def test_compute_measures_small_sizes_even_after_a_slow_large_product() -> None:
    clock = FakeClock()
    timing = TimingRequest(
        warmup=1, min_repeats=3, max_repeats=10, budget_seconds=1.0, max_seconds=2.0
    )
    # 2048² takes 0.5 s a call; at 512²'s rate it would take 0.57 s, so warm-up and one sample
    # (1.15 s) fit the large product's hard stop (0.7 × 2 s) and the size is kept
    rates = {128: 3e10, 512: 3e10, 2048: 2 * 2048**3 / 0.5}
    result = compute.run(
        ProbeRequest(timing=timing), timer=RateTimer(clock, rates, other_seconds=0.5), clock=clock
    )
    assert [row["n"] for row in result.detail["rates_by_size"]] == [
        *compute.CPU_SMALL_SIZES,
        compute.CPU_SIZE,
    ]
    # Hard stops: the large product at 0.7 × 2 s (warm-up + 1 sample = 1.0 s: a second sample
    # would end at 1.5 s), the streamed product and each transcendental function at 2 × its
    # share (warm-up + the one sample always kept = 1.0 s), instead of 4 calls each; the small
    # sizes and the size estimate (two 512² calls, 18 ms) take about 0.09 s.
    assert result.measurement.samples_seconds == (0.5,)
    assert clock() == pytest.approx(1.0 + 1.0 + 2 * 1.0 + 0.09, abs=0.03)
    assert result.device_seconds == pytest.approx(clock())


def test_compute_shrinks_a_large_product_that_would_overrun_its_hard_stop() -> None:
    # bfloat16 on an EPYC guest without native bfloat16 (accuracy-47-tcmalloc-epyc.json): torch.mm
    # ran 128² at 2.0 GFLOP/s, 512² at 1.4 and 2048² at 0.27, one call 63 s, and the probe took
    # 126 s of a 0.6 s budget. Two 512² calls (0.39 s) say 2048² and 1024² cannot fit.
    clock = FakeClock()
    rates = {128: 2.05e9, 512: 1.39e9, 1024: 6e8, 2048: 2.7e8}
    timing = probe_timing("compute", "cpu")
    result = compute.run(
        ProbeRequest(timing=timing), timer=RateTimer(clock, rates, other_seconds=0.01), clock=clock
    )
    assert result.detail["m"] == 512
    assert [row["n"] for row in result.detail["rates_by_size"]] == [128, 512]
    assert result.value == pytest.approx(1.39e9)
    assert clock() < 2 * timing.max_seconds  # about 1.3 s; 2048² alone would take 127 s
    assert result.device_seconds == pytest.approx(clock())  # the estimate's calls counted


def test_compute_keeps_the_large_product_where_products_are_fast() -> None:
    clock = FakeClock()
    rates = {128: 3.9e11, 512: 4.2e11, 2048: 4.3e11}  # float32 on the Xeon guest
    result = compute.run(
        ProbeRequest(timing=probe_timing("compute", "cpu")),
        timer=RateTimer(clock, rates, other_seconds=0.001),
        clock=clock,
    )
    assert result.detail["m"] == compute.CPU_SIZE
    assert [row["n"] for row in result.detail["rates_by_size"]] == [128, 512, 2048]
    assert result.value == pytest.approx(4.3e11)


def test_compute_measures_tanh_and_exp_rates_on_the_cpu() -> None:
    """Elements per second over a cache-resident tensor: between a 2 MHz and a 1 THz of
    elements (this CPU: tanh ~0.7 G/s, exp ~1.9 G/s at 2 threads), from the samples' median."""
    clock = FakeClock()
    timing = TimingRequest(warmup=1, min_repeats=3, max_repeats=5, budget_seconds=0.0)
    rates, seconds = compute.transcendental_rates(
        ProbeRequest(timing=timing), PacedTimer(clock, seconds_per_call=0.002), timing, 1, clock
    )
    assert rates == {
        name: compute.TRANSCENDENTAL_ELEMENTS / 0.002 for name in compute.TRANSCENDENTAL_FUNCTIONS
    }
    assert seconds == pytest.approx(2 * 4 * 0.002)
    real = compute.run(ProbeRequest(timing=QUICK)).detail["transcendental_elements_per_second"]
    assert set(real) == {"tanh", "exp"}
    assert all(2e6 < rate < 1e12 for rate in real.values()), real


def test_compute_sizes_itself_under_the_memory_cap() -> None:
    cap = 3 * 512 * 512 * 4
    assert compute.size_under_cap(2048, "float32", cap) == 512
    result = compute.run(ProbeRequest(memory_cap_bytes=cap, timing=QUICK))
    assert 3 * result.detail["n"] ** 2 * dtype_bytes("float32") <= cap
    assert all(row["n"] <= 512 for row in result.detail["rates_by_size"])
    # no room for two layers' weights: they would stay in the cache, so not measured
    assert "streamed_product" not in result.detail


def test_streamed_product_cycles_through_twice_the_last_level_cache() -> None:
    """Whole layers of 768-wide weights (four 768 × 768 matrices and the FFN's two 768 × 3072
    ones: 27 MiB in float32)."""
    layers = compute.streamed_layer_count
    layer = 12 * 768 * 768 * 4
    big_cap = 2 * 1024**3
    assert layers(32 * 1024**2, "float32", big_cap) == 64 * 1024**2 // layer == 2
    assert layers(8 * 1024**2, "float32", big_cap) == 2  # 64 MiB at least
    assert layers(100 * 1024**2, "float32", big_cap) == 200 * 1024**2 // layer == 7
    # at most 256 MiB however large the cache claims to be (a VM's /sys may show the host's L3)
    assert layers(480 * 1024**2, "float32", big_cap) == 256 * 1024**2 // layer == 9
    assert layers(32 * 1024**2, "bfloat16", big_cap) == 4
    # within half the memory cap
    assert layers(32 * 1024**2, "float32", 3 * layer) == 1


def test_streamed_product_runs_a_forwards_products_and_breaks_the_rate_down_by_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One pass: layer after layer, four 768 → 768 products, then 768 → 3072, then 3072 → 768;
    the rate is the pass's FLOPs over the median pass, and each shape's rate its FLOPs over the
    host time spent in its products."""
    clock = FakeClock()
    timing = TimingRequest(warmup=1, min_repeats=3, max_repeats=3, budget_seconds=0.0)
    calls: list[tuple[int, int, int]] = []
    real_mm = torch.mm

    def mm(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape[0], w.shape[1], w.shape[0]))
        return real_mm(x, w, out=out)

    monkeypatch.setattr(torch, "mm", mm)
    timer = RunningPacedTimer(clock, seconds_per_call=0.5)
    streamed = compute.streamed_rate(ProbeRequest(timing=timing), timer, timing, 1, clock, 0)
    monkeypatch.undo()
    assert streamed is not None
    detail, measurement = streamed
    layers = detail["layers"]
    assert layers == 2  # 64 MiB at least, with a 0-byte cache
    one_layer = [(16, 768, 768)] * 4 + [(16, 3072, 768), (16, 768, 3072)]
    assert calls == one_layer * layers * 4  # the warm-up's pass and three samples'
    flops = 2 * 16 * compute.LAYER_WEIGHT_ELEMENTS * layers
    assert detail["flops_per_second"] == pytest.approx(flops / 0.5)
    assert measurement.samples_seconds == (0.5, 0.5, 0.5)
    assert [r["m"] for r in detail["rates_by_shape"]] == [16, 16, 16]


def test_compute_runs_in_bfloat16() -> None:
    # under a hard stop, as the worker runs it: on a CPU without native bfloat16 a 2048² product
    # takes a minute, and the probe sizes it down
    timing = replace(QUICK, max_seconds=2 * QUICK.budget_seconds)
    result = compute.run(ProbeRequest(dtype="bfloat16", timing=timing))
    assert result.dtype == "bfloat16" and result.value > 0
    assert result.detail["m"] in (512, 1024, compute.CPU_SIZE)  # never below the largest small size


def test_memory_buffer_is_several_times_the_last_level_cache() -> None:
    result = memory.run(ProbeRequest(timing=QUICK))
    llc, _ = cpu_llc_bytes()
    size = result.detail["buffer_bytes"]
    # 4 x the LLC within [64 MiB, 256 MiB] and two buffers within the memory cap
    wanted = min(max(memory.BUFFER_LLC_MULTIPLE * llc, memory.MIN_BUFFER_BYTES), 256 * 1024**2)
    cap = ProbeRequest().memory_cap_bytes
    assert size == min(wanted, cap // 2) // 4096 * 4096
    assert result.detail["cache_resident_risk"] == (size < 2 * llc)
    assert result.value == pytest.approx(2 * size / result.measurement.median_seconds)
    by_method = result.detail["bytes_per_second_by_method"]
    assert set(by_method) == {"torch_copy", "memcpy"}
    assert result.value == max(by_method.values())
    assert result.detail["method"] == max(by_method, key=by_method.get)


def test_memory_measures_the_cost_of_writing_fresh_memory_on_the_cpu() -> None:
    """The clone of 64 MiB lands in a fresh mapping: its time beyond the copy's is first touch.
    Sane bounds on any CPU: the fresh write between 0.1 GB/s and 1 TB/s, the first-touch cost
    at most 10 ns per byte (these CPUs: 5 GB/s and 0.18-0.36 ns per byte). The clone and its
    baseline copy run on one torch thread and on torch's threads, the cheaper figure is kept,
    and the caller's thread count is restored."""
    threads = torch.get_num_threads()
    result = memory.run(ProbeRequest(timing=QUICK))
    assert torch.get_num_threads() == threads
    detail = result.detail
    assert detail["fresh_write_bytes"] == memory.FRESH_WRITE_BYTES
    by_threads = detail["first_touch_seconds_per_byte_by_threads"]
    assert set(by_threads) == {"1", str(threads)}
    assert detail["first_touch_seconds_per_byte"] == min(by_threads.values())
    assert by_threads[str(detail["fresh_write_threads"])] == detail["first_touch_seconds_per_byte"]
    assert 1e8 < detail["fresh_write_bytes_per_second"] < 1e12
    assert 1e8 < detail["fresh_write_copy_bytes_per_second"] < 1e12
    assert 0.0 <= detail["first_touch_seconds_per_byte"] < 1e-8
    copy_seconds_per_byte = 2.0 / detail["fresh_write_copy_bytes_per_second"]
    clone_seconds_per_byte = 2.0 / detail["fresh_write_bytes_per_second"]
    assert detail["first_touch_seconds_per_byte"] == pytest.approx(
        max(0.0, clone_seconds_per_byte - copy_seconds_per_byte), abs=1e-15
    )
    assert result.device_seconds > result.measurement.device_seconds  # the clone is counted


def in_fresh_python(code: str, extra_env: dict[str, str]) -> Any:
    """``result`` after running ``code`` in a fresh Python under glibc's defaults plus
    ``extra_env`` (glibc reads its MALLOC_ variables once, at start), through JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", f"import json; {code}; print(json.dumps(result))"],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def memory_probe_detail(extra_env: dict[str, str]) -> dict[str, Any]:
    """The memory probe's ``detail`` from a fresh Python (:func:`in_fresh_python`), as a
    worker process measures: a long-lived process (this test run) may hold a free heap chunk
    large enough for the allocator check's blocks, and read reuse under glibc's defaults."""
    return in_fresh_python(
        "from scaleprobe.probes import memory; "
        "from scaleprobe.probes.request import ProbeRequest; "
        "from scaleprobe.probes.timing import TimingRequest; "
        "timing = TimingRequest(warmup=1, min_repeats=3, max_repeats=5, budget_seconds=0.05); "
        "result = memory.run(ProbeRequest(timing=timing)).detail",
        extra_env,
    )


# glibc kept from mapping or trimming anything under 4 GiB, as a tuned CPU server runs it
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(4 * 1024**3),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024**3),
    "MALLOC_TOP_PAD_": str(1024**3),
}


def test_memory_times_an_elementwise_chain_only_where_large_outputs_are_reused() -> None:
    """Under glibc tuned (a fresh Python: glibc reads MALLOC_ once) the allocator check reads
    reuse and the probe times the chain: its figures consistent (an eighth of a buffer per
    tensor, 16 tensor passes, the rate its traffic over its median time) and within sane bounds
    on any CPU (this one: 38-45 GB/s of minimum traffic at 32 MiB tensors). Under glibc's
    defaults the model does not use it, and it is not run."""
    defaults = memory_probe_detail({})
    assert defaults["large_outputs_fault"] is True
    assert "elementwise_chain" not in defaults
    detail = memory_probe_detail(TUNED_MALLOC)
    assert detail["large_outputs_fault"] is False
    chain = detail["elementwise_chain"]
    buffer = detail["buffer_bytes"]
    assert chain["tensor_bytes"] == buffer // 4 // memory.ELEMENTWISE_TENSOR_FRACTION * 4
    assert chain["ops"] == len(memory.ELEMENTWISE_CHAIN_PASSES) == 7
    assert chain["bytes_moved"] == sum(memory.ELEMENTWISE_CHAIN_PASSES) * chain["tensor_bytes"]
    assert chain["bytes_per_second"] == pytest.approx(chain["bytes_moved"] / chain["seconds"])
    assert 1e8 < chain["bytes_per_second"] < 1e12


def test_the_elementwise_chain_computes_gelu_new_without_its_tanh_and_faults_nothing() -> None:
    """The chain's last output is 0.5 x (1 + sqrt(2/pi) (x + 0.044715 x^3)), its input untouched;
    its outputs are views of an existing buffer, so timing it touches no fresh page (a few
    faults of thread stacks at most, against 2048 pages per 8 MiB output)."""
    elements = 8 * 1024**2 // 4
    source = torch.randn(8 * elements)
    destination = torch.zeros(8 * elements)
    original = source[:elements].clone()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    figures, seconds = memory.elementwise_chain(source, destination, QUICK, HostTimer())
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 200
    x = source[:elements]
    assert torch.equal(x, original)
    expected = 0.5 * x * (1.0 + 0.7978845608 * (x + 0.044715 * x**3))
    assert torch.allclose(destination[2 * elements : 3 * elements], expected, rtol=1e-5, atol=1e-5)
    assert figures["tensor_bytes"] == 8 * 1024**2 and seconds >= figures["seconds"] > 0


def allocator_check(extra_env: dict[str, str]) -> dict[str, Any]:
    """:func:`memory.large_outputs_fault` in a fresh Python (:func:`in_fresh_python`)."""
    return in_fresh_python(
        "from scaleprobe.probes.memory import large_outputs_fault; result = large_outputs_fault()",
        extra_env,
    )


def test_the_memory_probe_tells_whether_the_allocator_maps_large_outputs_anew() -> None:
    """glibc's defaults map 64 MiB fresh every time (the second block faults as often as the
    first); glibc tuned keeps the freed block and hands it back (no fault); the probe's record
    says so (the elementwise chain test below), which is what turns the first-touch charge off
    (models.fit)."""
    fresh = allocator_check({})
    assert fresh["large_outputs_fault"] is True
    assert 0.5 <= fresh["large_output_refault_ratio"] < 2.0
    reused = allocator_check(TUNED_MALLOC)
    assert reused["large_outputs_fault"] is False
    assert reused["large_output_refault_ratio"] < 0.1


def test_the_allocator_check_reads_fresh_mappings_only_when_every_attempt_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reusing allocator (tcmalloc) hands a freed span back to the system now and then, so one
    attempt may read "fresh"; glibc's defaults read it every time."""
    readings: list[float] = []
    monkeypatch.setattr(memory, "_refault_ratio", lambda libc, size: readings.pop(0))
    for ratios, fault in (([1.0, 1.0, 1.0], True), ([1.0, 0.0, 1.0], False), ([0.0] * 3, False)):
        readings[:] = ratios
        check = memory.large_outputs_fault()
        assert check["large_outputs_fault"] is fault
        assert check["large_output_refault_ratios"] == ratios
        assert check["large_output_refault_ratio"] == min(ratios)
        assert not readings  # REUSE_CHECK_ATTEMPTS attempts, no more


def test_memory_measures_cached_copy_rates_by_working_set_on_the_cpu() -> None:
    """The ladder: every working set from 512 KiB up to the buffers' own, sizes rising, ending
    with the whole buffers at 1.0; the smallest sets stay in a core's cache and copy faster than
    the buffers that stream from memory (3-7 x on the CPUs we ran; here only > 1.2 x, a property
    any cached CPU has, not a speed figure)."""
    result = memory.run(ProbeRequest(timing=QUICK))
    ladder = result.detail["bandwidth_ratio_by_working_set"]
    size = result.detail["buffer_bytes"]
    sizes = [w for w, _ in ladder]
    assert sizes == [w for w in memory.CACHE_LADDER_BYTES if w < 2 * size] + [2 * size]
    assert ladder[-1] == [2 * size, 1.0]
    assert all(ratio > 0 for _, ratio in ladder)
    assert max(ratio for w, ratio in ladder if w <= 2 * 1024**2) > 1.2
    # ... and the model reads it from the record
    from scaleprobe.models.fit import ProbeResults

    record = {"probe": "memory", "outcome": "ok", "value": result.value, "detail": result.detail}
    read = ProbeResults.from_records([record]).bandwidth_ratio_by_working_set
    assert read == tuple((float(w), float(r)) for w, r in ladder)


def test_the_ladder_is_each_working_sets_copy_rate_over_the_whole_buffers() -> None:
    """With a timer that reports 1 ms for every sample, each size's ratio is (repeats × working
    set / 1 ms) over the whole buffers' rate, repeats making each sample copy 64 MiB; the copies
    really run, into the leading views of the destination."""

    class OneMillisecond:
        name = "fake"

        def time(self, fn: Callable[[], object]) -> float:
            fn()
            return 1e-3

    mib = 1024**2
    source = torch.arange(16 * mib // 4, dtype=torch.float32)
    destination = torch.zeros_like(source)
    full_seconds = 0.004  # the whole buffers' copy: 32 MiB in 4 ms
    ratios, spent = memory.cache_ladder(source, destination, full_seconds, QUICK, OneMillisecond())
    full_rate = 2 * 16 * mib / full_seconds
    sizes = [w for w in memory.CACHE_LADDER_BYTES if w < 32 * mib]
    assert [w for w, _ in ratios] == [*sizes, 32 * mib]
    for (_, ratio), size in zip(ratios, sizes, strict=False):
        repeats = max(1, memory.LADDER_SAMPLE_BYTES // size)
        assert ratio == pytest.approx(repeats * size / 1e-3 / full_rate)
    assert ratios[-1] == [32 * mib, 1.0]
    # every timed call (warm-ups included) is counted: 1 ms each, within the request's repeats
    calls = round(spent / 1e-3)
    assert spent == pytest.approx(calls * 1e-3)
    per_size = (QUICK.warmup + QUICK.min_repeats, QUICK.warmup + QUICK.max_repeats)
    assert len(sizes) * per_size[0] <= calls <= len(sizes) * per_size[1]
    half = sizes[-1] // 2 // 4  # the largest size's copy reached this far
    assert torch.equal(destination[:half], source[:half]) and destination[half:].eq(0).all()


def test_the_ladder_stops_below_a_small_buffers_working_set() -> None:
    """Under a tight memory cap the buffers are 4 MiB: the ladder keeps the sizes below their
    8 MiB working set."""
    result = memory.run(ProbeRequest(memory_cap_bytes=8 * 1024**2, timing=QUICK))
    ladder = result.detail["bandwidth_ratio_by_working_set"]
    mib = 1024.0**2
    assert [w / mib for w, _ in ladder] == [0.5, 1, 2, 4, 8]
    assert ladder[-1][1] == 1.0


def test_the_first_touch_clone_faults_every_page_every_time() -> None:
    """The probe maps its clone's memory itself, so every call pays a page fault per page, as a
    forward's large output does, whatever the process's heap holds (left to malloc, a clone can
    come from a large free heap chunk and fault nothing: one accuracy run read 0 ns/B in 6 of 9
    calibrations that way)."""
    import resource

    source = torch.ones(8 * 1024**2 // 4)
    clone = memory.fresh_clone(source)
    pages = source.numel() * source.element_size() // resource.getpagesize()
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        clone()
        assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before >= 0.95 * pages


class ScriptedTimer:
    """Runs each call and reports the next scripted duration (and the thread count it saw)."""

    name = "scripted"

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = list(seconds)
        self.threads: list[int] = []

    def time(self, fn: object) -> float:
        fn()  # type: ignore[operator]
        self.threads.append(torch.get_num_threads())
        return self.seconds.pop(0)


def test_first_touch_takes_the_fastest_clone_against_the_fastest_copy() -> None:
    """A VM that hands freed memory back to its host makes some clones several times slower
    (runs of them): the figure is the fastest sample of each, timed on one thread."""
    mib = 1024**2
    source = torch.ones(mib // 4)
    destination = torch.empty_like(source)
    timing = TimingRequest(warmup=1, min_repeats=3, max_repeats=3, budget_seconds=0.0)
    # copy: warm-up, then 3 samples; clone: warm-up, then 3 samples (one fast among slow ones)
    timer = ScriptedTimer([1.0, 4e-4, 2e-4, 3e-4, 1.0, 3e-3, 1e-3, 3e-3])
    threads = torch.get_num_threads()
    figures, seconds = memory.first_touch(source, destination, timing, timer, threads=1)
    assert timer.threads == [1] * 8 and torch.get_num_threads() == threads
    assert figures["fresh_write_copy_bytes_per_second"] == pytest.approx(2 * mib / 2e-4)
    assert figures["fresh_write_bytes_per_second"] == pytest.approx(2 * mib / 1e-3)
    assert figures["first_touch_seconds_per_byte"] == pytest.approx((1e-3 - 2e-4) / mib)
    assert seconds == pytest.approx(2.0 + 9e-4 + 7e-3)


def test_fresh_write_keeps_the_cheaper_of_one_thread_and_torchs_threads() -> None:
    """Two threads fault a forward's outputs side by side and pay less per byte, except in a
    spell of memory the host must back again, where only the multi-thread clone slows down:
    the figure is the cheaper pass, both are kept, and each pass runs on its own thread count."""
    mib = 1024**2
    source = torch.ones(mib // 4)
    destination = torch.empty_like(source)
    timing = TimingRequest(warmup=1, min_repeats=3, max_repeats=3, budget_seconds=0.0)

    def run(one: list[float], two: list[float]) -> tuple[dict, float, ScriptedTimer]:
        # per pass: copy warm-up and 3 samples, clone warm-up and 3 samples
        timer = ScriptedTimer(one + two)
        figures, seconds = memory.fresh_write(source, destination, timing, timer, threads=2)
        return figures, seconds, timer

    one_thread = [1.0, 4e-4, 4e-4, 4e-4, 1.0, 1.4e-3, 1.4e-3, 1.4e-3]  # 1e-3 s of faults
    quiet = [1.0, 2e-4, 2e-4, 2e-4, 1.0, 9e-4, 9e-4, 9e-4]  # 7e-4 s of faults on two threads
    figures, seconds, timer = run(one_thread, quiet)
    assert timer.threads == [1] * 8 + [2] * 8
    assert figures["fresh_write_threads"] == 2
    assert figures["first_touch_seconds_per_byte"] == pytest.approx(7e-4 / mib)
    assert figures["first_touch_seconds_per_byte_by_threads"] == pytest.approx(
        {"1": 1e-3 / mib, "2": 7e-4 / mib}
    )
    assert figures["fresh_write_copy_bytes_per_second"] == pytest.approx(2 * mib / 2e-4)
    assert seconds == pytest.approx(sum(one_thread) + sum(quiet))

    host_backed = [1.0, 2e-4, 2e-4, 2e-4, 1.0, 8e-3, 7e-3, 8e-3]  # every two-thread clone slow
    figures, _, _ = run(one_thread, host_backed)
    assert figures["fresh_write_threads"] == 1
    assert figures["first_touch_seconds_per_byte"] == pytest.approx(1e-3 / mib)
    assert figures["first_touch_seconds_per_byte_by_threads"]["2"] == pytest.approx(6.8e-3 / mib)

    # one thread: one pass
    timer = ScriptedTimer(one_thread)
    figures, _ = memory.fresh_write(source, destination, timing, timer, threads=1)
    assert timer.threads == [1] * 8
    assert list(figures["first_touch_seconds_per_byte_by_threads"]) == ["1"]


def test_release_per_cpu_gives_each_cpu_one_share_from_a_thread_pinned_to_it() -> None:
    """Consecutive page-aligned shares cover the range exactly, the last one taking the rest,
    each released from a thread whose affinity is that CPU alone; the caller's affinity is left
    as it was."""
    calls: list[tuple[int, int, set[int]]] = []
    allowed = sorted(os.sched_getaffinity(0))
    cpus = [allowed[0], allowed[-1], allowed[0]]  # three shares, whatever the machine has
    page = mmap.PAGESIZE
    address, length = 100 * page, 10 * page + 123
    memory.release_per_cpu(
        address,
        length,
        cpus,
        lambda start, size: calls.append((start, size, os.sched_getaffinity(0))),
    )
    assert [affinity for _, _, affinity in calls] == [{cpu} for cpu in cpus]
    starts = [start for start, _, _ in calls]
    assert starts == [address, address + 3 * page, address + 6 * page]
    assert [size for _, size, _ in calls] == [3 * page, 3 * page, 4 * page + 123]
    assert os.sched_getaffinity(0) == set(allowed)
    calls.clear()
    memory.release_per_cpu(address, 0, cpus, lambda start, size: calls.append((start, size, set())))
    assert calls == []


def test_release_per_cpu_drops_the_pages_past_the_kept_bytes_and_reports_failure() -> None:
    """Real memory: the pages past the first 2 MiB of an 8 MiB tensor read as zeros after the
    release, the kept ones keep their values; a failing madvise is raised in the caller."""
    mib = 1024**2
    buffer = torch.ones(8 * mib // 4)
    start, end = memory.spare_pages(buffer, 2 * mib)
    first = (start - buffer.data_ptr()) // 4
    assert 2 * mib <= start - buffer.data_ptr() < 2 * mib + mmap.PAGESIZE
    assert start % mmap.PAGESIZE == 0 and end % mmap.PAGESIZE == 0
    memory.release_per_cpu(start, end - start)
    last = (end - buffer.data_ptr()) // 4
    assert buffer[:first].eq(1).all() and buffer[first:last].eq(0).all()
    assert memory.spare_pages(buffer, 8 * mib)[1] == memory.spare_pages(buffer, 8 * mib)[0]

    def refuse(start: int, size: int) -> None:
        raise OSError(22, "Invalid argument")

    with pytest.raises(OSError, match="Invalid argument"):
        memory.release_per_cpu(start, end - start, dontneed=refuse)


def test_the_memory_probe_releases_its_spare_buffer_pages_before_the_fresh_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the ladder (which reads the whole buffers) and before the fresh-write pair, both
    buffers' pages past the clone's 64 MiB views are given back (within a page at each end),
    from other threads: the probe's own thread keeps its affinity."""
    order: list[str] = []
    for name, label in (
        ("cache_ladder", "ladder"),
        ("release_per_cpu", "release"),
        ("fresh_write", "fresh"),
    ):
        real = getattr(memory, name)

        def recorded(
            *args: object, _real: Any = real, _label: str = label, **kwargs: object
        ) -> Any:
            order.append(_label)
            return _real(*args, **kwargs)

        monkeypatch.setattr(memory, name, recorded)
    affinity = os.sched_getaffinity(0)
    result = memory.run(ProbeRequest(timing=QUICK))
    assert order == ["ladder", "release", "release", "fresh"]
    spare = result.detail["buffer_bytes"] - memory.FRESH_WRITE_BYTES
    released = result.detail["fresh_write_released_bytes"]
    assert 2 * (spare - 2 * mmap.PAGESIZE) <= released <= 2 * spare
    assert os.sched_getaffinity(0) == affinity
    assert "fresh_write_release_error" not in result.detail


def test_a_memory_probe_that_may_not_release_pages_measures_as_before_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(address: int, length: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(memory, "_madvise_dontneed", forbidden)
    result = memory.run(ProbeRequest(timing=QUICK))
    assert result.detail["fresh_write_released_bytes"] == 0
    assert "Operation not permitted" in result.detail["fresh_write_release_error"]
    assert 0.0 <= result.detail["first_touch_seconds_per_byte"] < 1e-8


def test_a_memory_probe_whose_allocator_check_fails_measures_the_rest_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(size: int = memory.FRESH_WRITE_BYTES) -> dict[str, Any]:
        raise MemoryError(f"posix_memalign of {2 * size} bytes failed")

    monkeypatch.setattr(memory, "large_outputs_fault", refused)
    result = memory.run(ProbeRequest(timing=QUICK))
    assert "large_outputs_fault" not in result.detail  # read as glibc's default: charged
    assert "posix_memalign" in result.detail["large_outputs_check_error"]
    assert 0.0 <= result.detail["first_touch_seconds_per_byte"] < 1e-8


def test_first_touch_is_the_clone_time_beyond_the_copy_and_never_negative() -> None:
    mib = 1024**2
    # 64 MiB cloned in 25 ms against a 40 GB/s copy (3.4 ms for the same traffic)
    figures = memory.fresh_write_figures(0.025, 64 * mib, 4e10)
    assert figures["fresh_write_bytes_per_second"] == pytest.approx(2 * 64 * mib / 0.025)
    assert figures["first_touch_seconds_per_byte"] == pytest.approx(
        (0.025 - 2 * 64 * mib / 4e10) / (64 * mib)
    )
    # a clone that happened to run faster than the copy (noise): no negative cost
    assert memory.fresh_write_figures(0.001, 64 * mib, 4e10)["first_touch_seconds_per_byte"] == 0


def test_memory_buffers_stay_under_the_cap_and_say_when_cache_may_hold_them() -> None:
    assert memory.buffer_bytes(32 * 1024**2, 2 * 1024**3) == 128 * 1024**2
    assert memory.buffer_bytes(1024**2, 2 * 1024**3) == memory.MIN_BUFFER_BYTES
    assert memory.buffer_bytes(32 * 1024**2, 40 * 1024**2) == 20 * 1024**2
    # a VM's /sys may report the host's 480 MiB L3: 256 MiB at most, flagged as at risk
    assert memory.buffer_bytes(480 * 1024**2, 8 * 1024**3) == memory.MAX_BUFFER_BYTES
    result = memory.run(ProbeRequest(memory_cap_bytes=8 * 1024**2, timing=QUICK))
    assert result.detail["buffer_bytes"] * 2 <= 8 * 1024**2
    assert result.detail["cache_resident_risk"]
    # a buffer under the fresh-write size could be served from the heap: no first-touch figure
    assert "first_touch_seconds_per_byte" not in result.detail


def test_on_a_gpu_the_buffer_is_sized_from_the_l2_cache() -> None:
    cuda = FakeCuda(l2_cache_bytes=50 * 1024**2)  # an H100's L2
    assert gpu_l2_bytes("cuda:0", cuda) == 50 * 1024**2
    assert memory.buffer_bytes(gpu_l2_bytes("cuda:0", cuda), 8 * 1024**3) == 200 * 1024**2


def test_llc_size_from_sys_then_lscpu_then_fallback(tmp_path: Path) -> None:
    for name, level, kind, size in (
        ("index0", 1, "Data", "48K"),
        ("index1", 1, "Instruction", "32K"),
        ("index2", 2, "Unified", "1024K"),
        ("index3", 3, "Unified", "32768K"),
    ):
        folder = tmp_path / "cache" / name
        folder.mkdir(parents=True)
        (folder / "level").write_text(f"{level}\n")
        (folder / "type").write_text(f"{kind}\n")
        (folder / "size").write_text(f"{size}\n")
    assert cpu_llc_bytes(tmp_path / "cache")[0] == 32 * 1024**2
    lscpu = "L1d cache:  96 KiB (2 instances)\nL3 cache:   16 MiB (1 instance)\n"
    size, source = cpu_llc_bytes(tmp_path / "missing", lscpu=lambda: lscpu)
    assert (size, source) == (16 * 1024**2, "lscpu L3 cache")
    size, source = cpu_llc_bytes(tmp_path / "missing", lscpu=lambda: "")
    assert size == 32 * 1024**2 and source.startswith("fallback")


def test_dispatch_on_the_cpu_is_time_per_tiny_op() -> None:
    result = dispatch.run(ProbeRequest(timing=QUICK))
    assert result.value == pytest.approx(
        result.measurement.median_seconds / dispatch.OPS_PER_SAMPLE
    )
    assert result.detail["kernel_floor_seconds"] is None
    assert 0 < result.value < 1e-3


def test_dispatch_on_the_cpu_also_times_a_tiny_real_encoder() -> None:
    """A 2-layer, 32-wide BERT at 1 × 16 tokens, with the performance model's count of its host
    ops and module calls (what the calibration divides its time by); its time is counted."""
    from scaleprobe.models.architecture import architecture_from_config
    from scaleprobe.models.costs import forward_cost

    result = dispatch.run(ProbeRequest(timing=QUICK))
    encoder = result.detail["tiny_encoder"]
    cost = forward_cost(
        architecture_from_config(dict(dispatch.TINY_ENCODER)),
        1,
        dispatch.TINY_ENCODER_TOKENS,
        "float32",
    )
    assert (encoder["host_ops"], encoder["module_calls"]) == (cost.host_ops, cost.module_calls)
    assert encoder["tokens"] == dispatch.TINY_ENCODER_TOKENS
    # a forward of ~100 ops and ~50 module calls: more than 100 adds, well under a second
    assert 100 * result.value < encoder["seconds"] < 1.0
    assert result.device_seconds >= result.measurement.device_seconds + encoder["seconds"]
    # and its host time between real products (never negative; the products are not host time)
    assert encoder["cold_stream_bytes"] == dispatch.COLD_STREAM_BYTES
    assert 0 <= encoder["cold_seconds"] < 1.0


class PhaseTimer:
    """Runs each call; reports ``hooked`` seconds while the encoder's linear layers carry
    pre-hooks and ``alone`` otherwise, and records which of the two each call was."""

    name = "phase"

    def __init__(self, linears: list[torch.nn.Module], hooked: float, alone: float) -> None:
        self.linears, self.hooked, self.alone = linears, hooked, alone
        self.phases: list[str] = []

    def time(self, fn: object) -> float:
        with_hooks = all(len(linear._forward_pre_hooks) == 1 for linear in self.linears)
        fn()  # type: ignore[operator]
        self.phases.append("hooked" if with_hooks else "alone")
        return self.hooked if with_hooks else self.alone


def test_cold_encoder_time_is_the_hooked_forward_less_the_products_alone() -> None:
    forward, model, _, _ = dispatch.tiny_encoder_forward()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) >= 12  # 2 layers × 6 linear layers, and the pooler
    timer = PhaseTimer(linears, hooked=3e-3, alone=1e-3)
    cold = dispatch.cold_encoder_seconds(forward, model, QUICK, timer, threads=1)
    assert cold.host_seconds == pytest.approx(2e-3)
    assert "hooked" in timer.phases and "alone" in timer.phases
    assert timer.phases.index("alone") > max(i for i, p in enumerate(timer.phases) if p == "hooked")
    assert cold.device_seconds > 0
    # the hooks are gone afterwards, and products slower than the hooked forward give 0, not < 0
    assert all(not linear._forward_pre_hooks for linear in linears)
    slow_products = PhaseTimer(linears, hooked=1e-3, alone=3e-3)
    assert dispatch.cold_encoder_seconds(forward, model, QUICK, slow_products, 1).host_seconds == 0


def test_cold_encoder_runs_a_base_layers_product_through_each_layers_own_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forward, model, _, _ = dispatch.tiny_encoder_forward()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    products: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []
    real_linear = torch.nn.functional.linear

    def counting_linear(
        a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        products.append((tuple(a.shape), tuple(w.shape), w.data_ptr()))
        return real_linear(a, w, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    timer = PhaseTimer(linears, hooked=3e-3, alone=1e-3)
    dispatch.cold_encoder_seconds(forward, model, QUICK, timer, threads=1)
    width = dispatch.COLD_PRODUCT_WIDTH
    assert width * width * 4 == dispatch.COLD_STREAM_BYTES
    calls = len(timer.phases)
    # the encoder's own linear layers run theirs too (32 and 64 wide): one base-layer product
    # before each of them per call
    base = [p for p in products if p[1] == (width, width)]
    assert len(base) == calls * len(linears)
    assert {p[0] for p in base} == {(dispatch.COLD_PRODUCT_ROWS, width)}
    # each layer reads its own weight, as a model's layers do: as many weights as layers
    assert len({p[2] for p in base}) == len(linears)


def test_dispatch_on_cuda_splits_host_cost_from_the_kernel_floor() -> None:
    cuda = FakeCuda(replay_seconds=200 * 2e-6)  # the device needs 2 µs per kernel
    calls: list[bool] = []

    def ops() -> None:  # issuing 200 ops costs the host 1.6 ms, i.e. 8 µs each
        calls.append(cuda.capturing)
        cuda.run(200 * 8e-6)

    request = ProbeRequest(device="cuda:0", timing=QUICK)
    split = dispatch.split_on_cuda(ops, request, cuda, clock=cuda.clock)
    assert split.host.median_seconds / dispatch.OPS_PER_SAMPLE == pytest.approx(8e-6)
    assert split.replay.median_seconds / dispatch.OPS_PER_SAMPLE == pytest.approx(2e-6)
    assert split.host.timer == "host_enqueue" and split.replay.timer == "cuda_events"
    # Warm-up on a side stream, then exactly one capture.
    assert cuda.stream_log[:2] == ["enter side", "exit side"]
    assert cuda.captures == 1 and calls.count(True) == 1


def test_dispatch_warmup_before_capture_uses_a_side_stream() -> None:
    cuda = FakeCuda()
    from scaleprobe.probes import graphs

    graph = graphs.capture(device_work(cuda, 0.001), cuda)
    assert graph.captured
    assert cuda.stream_log == ["enter side", "exit side", "capture begin", "capture end"]
    assert graphs.overhead_ratio(0.010, 0.004) == pytest.approx(0.6)
    assert graphs.overhead_ratio(0.004, 0.010) == 0.0


# ------------------------------------------------------------------------------ model probe


def point(batch: int = 2, seq: int = 16, **kwargs: object) -> model_probe.PointRequest:
    return model_probe.PointRequest(
        model="tiny-bert",
        config=TINY_BERT,
        batch_size=batch,
        seq_len=seq,
        timing=QUICK,
        **kwargs,  # type: ignore[arg-type]
    )


def test_model_point_measures_latency_overhead_and_memory() -> None:
    cache = model_probe.ModelCache()
    result = model_probe.run(point(), cache=cache)
    entry = result.to_dict()
    assert entry["latency_seconds"] == result.measurement.median_seconds
    assert entry["throughput_sequences_per_second"] == pytest.approx(2 / entry["latency_seconds"])
    assert entry["throughput_tokens_per_second"] == pytest.approx(32 / entry["latency_seconds"])
    assert 0.0 <= entry["framework_overhead_ratio"] <= 1.0
    assert entry["peak_memory_bytes"] >= entry["detail"]["parameter_bytes"] > 0
    assert entry["detail"]["peak_activation_bytes"] > 0
    assert len(entry["samples_seconds"]) == len(result.measurement.samples_seconds)


def test_models_are_built_once_per_cache_in_the_requested_dtype() -> None:
    cache = model_probe.ModelCache()
    first = cache.get(TINY_BERT, "bfloat16", "cpu")
    assert cache.get(dict(TINY_BERT), "bfloat16", "cpu") is first
    assert cache.get(TINY_BERT, "float32", "cpu") is not first
    assert next(first.parameters()).dtype == torch.bfloat16
    assert not first.training
    assert first.config.num_hidden_layers == 2 and first.config.hidden_size == 64


def test_a_cached_bigbird_runs_block_sparse_again_after_a_short_point() -> None:
    """transformers falls back to full attention at short sequences and never switches back."""
    config = {
        "model_type": "big_bird",
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": 500,
        "max_position_embeddings": 512,
        "attention_type": "block_sparse",
        "block_size": 8,
        "num_random_blocks": 1,  # full attention at or below (5 + 2·1)·8 = 56 tokens
    }
    cache = model_probe.ModelCache()

    def run(seq: int) -> str:
        request = model_probe.PointRequest(
            model="tiny-bigbird", config=config, batch_size=1, seq_len=seq, timing=QUICK
        )
        return model_probe.run(request, cache=cache).detail["attention_type"]

    assert run(32) == "original_full"
    assert run(128) == "block_sparse"


def test_a_point_over_the_memory_cap_is_skipped_before_building() -> None:
    with pytest.raises(SkipProbe) as caught:
        model_probe.run(point(batch=64, seq=512, memory_cap_bytes=1024**2))
    assert caught.value.outcome == "skipped_memory"
    assert "memory_cap_bytes" in caught.value.reason


def test_a_config_without_model_type_is_refused() -> None:
    with pytest.raises(ValueError, match="model_type"):
        model_probe.build_model({"hidden_size": 64}, "float32", "cpu")


def test_cpu_overhead_counts_host_time_outside_kernels() -> None:
    """The profiler method sees host-side waiting as overhead and a big product as kernel time."""
    a = torch.randn(768, 768)
    one = torch.ones(1)

    def host_bound() -> object:
        time.sleep(0.02)  # Python-side work, no aten op
        return one + 1  # a one-element op: no thread pool to wake

    def kernel_bound() -> object:
        return torch.mm(a, a)

    host_share, _, _ = model_probe.profile_forward(host_bound)
    kernel_share, peak_bytes, _ = model_probe.profile_forward(kernel_bound)
    assert host_share > 0.9
    assert kernel_share < 0.5
    assert peak_bytes >= 768 * 768 * 4  # the product's output


def test_cuda_overhead_is_eager_versus_graph_replay() -> None:
    cuda = FakeCuda(replay_seconds=0.003, peak_allocated_bytes=5 * 1024**3)
    eager = model_probe.measure(
        device_work(cuda, 0.010), QUICK, model_probe.default_timer("cuda:0", cuda)
    )
    forward = device_work(cuda, 0.010)
    ratio, peak, detail, replay_seconds = model_probe._cuda_overhead_and_memory(
        forward, point(device="cuda:0"), eager, cuda
    )
    assert ratio == pytest.approx(0.7)
    assert peak == 5 * 1024**3 and cuda.peak_resets == 1
    assert detail["replay_latency_seconds"] == pytest.approx(0.003)
    assert replay_seconds > 0


def test_a_model_that_cannot_be_captured_still_reports_memory() -> None:
    cuda = FakeCuda(capture_error=RuntimeError("operation not permitted when stream is capturing"))
    eager = model_probe.measure(
        device_work(cuda, 0.01), QUICK, model_probe.default_timer("cuda:0", cuda)
    )
    ratio, peak, detail, _ = model_probe._cuda_overhead_and_memory(
        device_work(cuda, 0.01), point(device="cuda:0"), eager, cuda
    )
    assert ratio is None and peak == cuda.peak_allocated_bytes
    assert "capture failed" in detail["framework_overhead_method"]
