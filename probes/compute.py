"""Compute probe: the device's sustained matrix-product rate in the configured dtype.

What it saturates: the matrix units (tensor cores on a GPU, AVX-512/AMX-style units on a CPU)
through one square ``torch.mm``, the kernel class that dominates a transformer's FLOPs.

Why this size: a product has to be large enough that its launch and edge effects vanish and the
library picks its best blocking; past that, larger only costs time and memory. On a GPU n = 8192
(1.1 TFLOP, a few milliseconds on a datacentre part, 3 × 128 MiB in half precision); on the CPU
n = 2048 (17 GFLOP, tens of milliseconds on two cores: ``bench/probe_quality.py`` shows larger
sizes gain nothing here). The size halves until the three operands fit in ``memory_cap_bytes``,
and, under a hard stop, while two calls of the largest small size say that the warm-up and one
sample of the large product would not end within it (``size_within``): a call cannot be cut
short, and some devices take a slow path for large squares (bfloat16 on a CPU without native
bfloat16: 63 s for one 2048² product).

It also times 2–3 smaller square products (128, 512 on the CPU; 512–2048 on a GPU, each
sample a loop of at least 2·128³ FLOP so a clock read is negligible), reported in
``detail["rates_by_size"]``: transformer layers at small batch × sequence run products far below
the peak rate, and the performance model calibrates its small-GEMM efficiency from these.

On the CPU it also times an encoder layer's linear layers at batch 1 as a forward runs them
(``detail["streamed_product"]``): 16 rows through a stack of 768-wide layers that together hold
twice the last-level cache (at least 64 MiB), each layer's four 768 → 768 products (queries,
keys, values, output), then its FFN's 768 → 3072 and 3072 → 768, every weight matrix distinct
and used once per pass, so every product reads its weights from memory as a forward's layers
do (``rates_by_shape`` breaks the rate down by shape). A small square product reuses operands
that sit in the cache and runs much nearer the peak (here 128³ ran at 0.98 of it at one thread
where a forward's 16-row layers ran at 0.55): the streamed product is what pins the model's GEMM
curve (x½ = 16 · (peak/rate − 1)). Why the FFN's shapes too: streamed from memory on this
machine, at one thread they ran at 36–41 GFLOP/s where 768 → 768 ran at 43–46 (two threads:
82–84 against 78), so the square shape alone left batch-1 forwards a few percent too fast at one
thread. The stack must be larger than the cache for every shape: stacks of 85 MiB per shape
read 15–20% faster than 256 MiB ones here. On a GPU such a product is bound by memory, which the
model charges separately, so it is not measured there.

On the CPU it also times ``tanh`` and ``exp`` over a cache-resident tensor into an existing
output (``detail["transcendental_elements_per_second"]``, elements per second): they are
compute-bound there (tanh ran at 0.4 G elements/s per thread here, twenty times slower than a
multiply), and BigBird's ``gelu_new`` and eager softmax run them over tokens × 3072 and
B · heads · s² elements. 2^20 elements (4 MiB in, 4 MiB out) sit in the last-level cache, so the
figure is the function's arithmetic, not the memory; one call takes about a millisecond. On a GPU
they are cheap next to memory traffic and not measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch
from scaleprobe.probes.device import cpu_llc_bytes, default_timer, dtype_bytes, torch_dtype
from scaleprobe.probes.request import ProbeRequest, ProbeResult
from scaleprobe.probes.timing import Measurement, Timer, TimingRequest, measure

GPU_SIZE = 8192
CPU_SIZE = 2048
GPU_SMALL_SIZES = (512, 1024, 2048)
CPU_SMALL_SIZES = (128, 512)
# The streamed product (CPU): a base encoder layer's linear layers at batch 1, (m, n, k) for
# m × k times k × n (the weight n × k, as nn.Linear stores it), and how many of each a layer
# runs; and the least weight memory its stack of layers cycles through (twice the last-level
# cache when that is larger), up to the most: an encoder's weights are a few hundred MB, so a
# larger stack measures nothing a forward sees, and a VM's /sys may report the whole host's L3
# (480 MiB on one of our machines, where copies of 128 MiB and of 1 GiB ran at the same
# bandwidth).
STREAMED_SHAPES = ((16, 768, 768), (16, 3072, 768), (16, 768, 3072))
STREAMED_CALLS = (4, 1, 1)  # per layer: queries, keys, values, output; FFN up; FFN down
LAYER_WEIGHT_ELEMENTS = sum(
    calls * n * k for (_, n, k), calls in zip(STREAMED_SHAPES, STREAMED_CALLS, strict=True)
)
STREAMED_MIN_WEIGHT_BYTES = 64 * 1024**2
STREAMED_MAX_WEIGHT_BYTES = 256 * 1024**2
# Small products are timed in loops so one sample is long enough to read a clock around it.
LOOP_FLOPS = 2 * 128**3
# Share of the timing budget spent on the large product; the small sizes share the rest.
LARGE_SHARE = 0.7
# Share of the budget for the transcendental rates (CPU only), taken from the small sizes' part.
TRANSCENDENTAL_SHARE = 0.1
TRANSCENDENTAL_ELEMENTS = 1 << 20
TRANSCENDENTAL_FUNCTIONS = ("tanh", "exp")


def size_under_cap(size: int, dtype: str, memory_cap_bytes: int) -> int:
    """The largest power-of-two fraction of ``size`` whose three n×n operands fit in the cap."""
    while size > 64 and 3 * size * size * dtype_bytes(dtype) > memory_cap_bytes:
        size //= 2
    return size


class Products:
    """``loops`` square n×n products into one output: what a timer times, with its FLOPs (a
    fake timer in the tests reads ``n`` and ``flops`` to play a device's rate curve)."""

    def __init__(self, n: int, request: ProbeRequest, loops: int | None = None) -> None:
        dtype = torch_dtype(request.dtype)
        self.n = n
        self.loops = loops if loops is not None else max(1, LOOP_FLOPS // (2 * n**3))
        self.flops = 2.0 * n**3 * self.loops
        self.a = torch.randn(n, n, dtype=dtype, device=request.device)
        self.b = torch.randn(n, n, dtype=dtype, device=request.device)
        self.out = torch.empty(n, n, dtype=dtype, device=request.device)

    def __call__(self) -> None:
        for _ in range(self.loops):
            torch.mm(self.a, self.b, out=self.out)


def _rate(
    n: int,
    request: ProbeRequest,
    timer: Timer,
    timing: TimingRequest,
    threads: int,
    clock: Callable[[], float],
) -> tuple[float, Measurement]:
    products = Products(n, request)
    measurement = measure(products, timing, timer, clock=clock, threads=threads)
    return products.flops / measurement.median_seconds, measurement


def size_within(
    size: int, smallest: int, hard_stop_seconds: float, request: ProbeRequest, timer: Timer
) -> tuple[int, float]:
    """The large product's size: ``size``, halved (not below ``smallest``) while its warm-up and
    one sample, at the rate of two calls of a ``smallest``-sized product, would not end within
    the large product's hard stop; and the device seconds that estimate took.

    One call cannot be interrupted, so without this a device whose large square products take a
    slow path runs far past the probe's budget: bfloat16 on an EPYC guest without native
    bfloat16 ran 2048² at 0.27 GFLOP/s, 63 s a call, 126 s for a probe budgeted 0.6 s. Where
    products are fast (float32 here: 2 × 2048² in about 0.1 s against a 0.84 s stop) the size is
    kept, so the estimate costs two small calls (a few milliseconds on the CPU).
    """
    if size <= smallest:
        return size, 0.0
    probe = Products(smallest, request, loops=1)
    seconds = [timer.time(probe) for _ in range(2)]  # the first also warms the library up
    rate = probe.flops / min(seconds)
    while size > smallest and 2 * (2.0 * size**3 / rate) > hard_stop_seconds:
        size //= 2
    return size, sum(seconds)


def streamed_layer_count(llc_bytes: int, dtype: str, memory_cap_bytes: int) -> int:
    """How many distinct encoder layers' weights the streamed product cycles through: twice the
    last-level cache (at least ``STREAMED_MIN_WEIGHT_BYTES``, at most
    ``STREAMED_MAX_WEIGHT_BYTES``), within half the memory cap."""
    wanted = min(max(2 * llc_bytes, STREAMED_MIN_WEIGHT_BYTES), STREAMED_MAX_WEIGHT_BYTES)
    return min(wanted, memory_cap_bytes // 2) // (LAYER_WEIGHT_ELEMENTS * dtype_bytes(dtype))


def streamed_rate(
    request: ProbeRequest,
    timer: Timer,
    timing: TimingRequest,
    threads: int,
    clock: Callable[[], float],
    llc_bytes: int,
) -> tuple[dict[str, object], Measurement] | None:
    """FLOP/s of an encoder layer's batch-1 products whose weights come from memory: one pass
    runs, layer after layer of a stack, ``STREAMED_CALLS`` products of each of
    ``STREAMED_SHAPES``, every weight matrix distinct and transposed as ``nn.Linear`` stores it,
    as a forward does. Also each shape's rate, from host-clock reads around its products (the
    measurement is CPU-only).

    None when the memory cap leaves room for fewer than two layers (the weights would stay in
    the cache).
    """
    layers = streamed_layer_count(llc_bytes, request.dtype, request.memory_cap_bytes)
    if layers < 2:
        return None
    dtype = torch_dtype(request.dtype)
    # one buffer holds every layer's weights; the values do not change the time, and filling
    # 256 MiB with randn would cost more than the measurement
    one_layer = torch.randn(LAYER_WEIGHT_ELEMENTS, dtype=dtype, device=request.device)
    weights = one_layer.repeat(layers)
    inputs = [torch.randn(m, k, dtype=dtype, device=request.device) for m, _, k in STREAMED_SHAPES]
    outputs = [torch.empty(m, n, dtype=dtype, device=request.device) for m, n, _ in STREAMED_SHAPES]
    products = []  # (shape index, weight view) in a forward's order
    offset = 0
    for _ in range(layers):
        for index, ((_, n, k), calls) in enumerate(
            zip(STREAMED_SHAPES, STREAMED_CALLS, strict=True)
        ):
            for _ in range(calls):
                products.append((index, weights[offset : offset + n * k].view(n, k)))
                offset += n * k
    shape_seconds = [0.0] * len(STREAMED_SHAPES)

    # The breakdown's clock reads sit inside the timed pass: 20 µs a pass of 27 ms here (0.07%).
    def layer_pass() -> None:
        for index, weight in products:
            started = time.perf_counter()
            torch.mm(inputs[index], weight.t(), out=outputs[index])
            shape_seconds[index] += time.perf_counter() - started

    measurement = measure(layer_pass, timing, timer, clock=clock, threads=threads)
    passes = timing.warmup + len(measurement.samples_seconds)
    by_shape = [
        {"m": m, "n": n, "k": k, "flops_per_second": 2.0 * m * n * k * calls * layers * passes / s}
        for (m, n, k), calls, s in zip(STREAMED_SHAPES, STREAMED_CALLS, shape_seconds, strict=True)
        if s > 0  # a timer that did not run the work (tests) leaves no breakdown
    ]
    rows, width, _ = STREAMED_SHAPES[0]
    layer_flops = 2.0 * rows * LAYER_WEIGHT_ELEMENTS * layers
    detail: dict[str, object] = {
        # the layer's width; the model reads m, the rows of every product
        "m": rows,
        "n": width,
        "k": width,
        "layers": layers,
        "weights_bytes": offset * dtype_bytes(request.dtype),
        "flops_per_second": layer_flops / measurement.median_seconds,
    }
    if len(by_shape) == len(STREAMED_SHAPES):
        # over every pass, the warm-up's too: a breakdown of the figure, not the figure
        detail["rates_by_shape"] = by_shape
    return detail, measurement


def transcendental_rates(
    request: ProbeRequest,
    timer: Timer,
    timing: TimingRequest,
    threads: int,
    clock: Callable[[], float],
) -> tuple[dict[str, float], float]:
    """Elements per second of each of ``TRANSCENDENTAL_FUNCTIONS`` in the request's dtype, and
    the device seconds spent measuring them."""
    dtype = torch_dtype(request.dtype)
    source = torch.randn(TRANSCENDENTAL_ELEMENTS, dtype=dtype, device=request.device)
    out = torch.empty_like(source)
    rates, seconds = {}, 0.0
    for name in TRANSCENDENTAL_FUNCTIONS:
        function = getattr(torch, name)
        measurement = measure(
            lambda f=function: f(source, out=out), timing, timer, clock=clock, threads=threads
        )
        rates[name] = TRANSCENDENTAL_ELEMENTS / measurement.median_seconds
        seconds += measurement.device_seconds
    return rates, seconds


def run(
    request: ProbeRequest,
    *,
    timer: Timer | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Time a large square matrix product, then a few small ones; FLOP/s from the median."""
    timer = timer if timer is not None else default_timer(request.device)
    threads = torch.get_num_threads()
    size = size_under_cap(
        GPU_SIZE if request.is_cuda else CPU_SIZE, request.dtype, request.memory_cap_bytes
    )
    budget = request.timing.budget_seconds
    large_timing = replace(
        request.timing,
        budget_seconds=budget * LARGE_SHARE,
        max_seconds=None
        if request.timing.max_seconds is None
        else request.timing.max_seconds * LARGE_SHARE,
    )
    other_device_seconds = 0.0
    candidates = GPU_SMALL_SIZES if request.is_cuda else CPU_SMALL_SIZES
    if large_timing.max_seconds is not None:  # a hard stop to keep: size the product under it
        size, estimate_seconds = size_within(
            size, max(candidates), large_timing.max_seconds, request, timer
        )
        other_device_seconds += estimate_seconds
    flops_per_second, measurement = _rate(size, request, timer, large_timing, threads, clock)
    small_sizes = [n for n in candidates if n < size]
    rates_by_size = []
    transcendental_share = 0.0 if request.is_cuda else TRANSCENDENTAL_SHARE
    # A fixed share each, with a hard stop at twice it: however slow the large product was on a
    # loaded host, the small sizes are always measured (the model needs them) and cheap.
    parts = len(small_sizes) + (0 if request.is_cuda else 1)  # + the streamed product
    share = budget * (1 - LARGE_SHARE - transcendental_share) / parts
    small_timing = replace(request.timing, budget_seconds=share, max_seconds=2 * share)
    for n in small_sizes:
        rate, small = _rate(n, request, timer, small_timing, threads, clock)
        other_device_seconds += small.device_seconds
        rates_by_size.append({"m": n, "n": n, "k": n, "flops_per_second": rate})
    rates_by_size.append({"m": size, "n": size, "k": size, "flops_per_second": flops_per_second})
    extra: dict[str, object] = {}
    if not request.is_cuda:
        streamed = streamed_rate(request, timer, small_timing, threads, clock, cpu_llc_bytes()[0])
        if streamed is not None:
            extra["streamed_product"] = streamed[0]
            other_device_seconds += streamed[1].device_seconds
        share = budget * transcendental_share / len(TRANSCENDENTAL_FUNCTIONS)
        timing = replace(request.timing, budget_seconds=share, max_seconds=2 * share)
        extra["transcendental_elements_per_second"], seconds = transcendental_rates(
            request, timer, timing, threads, clock
        )
        other_device_seconds += seconds
    return ProbeResult(
        probe="compute",
        value=flops_per_second,
        unit="flops_per_second",
        measurement=measurement,
        dtype=request.dtype,
        detail={
            "m": size,
            "n": size,
            "k": size,
            "rates_by_size": rates_by_size,
            **extra,
        },
        other_device_seconds=other_device_seconds,
    )
