"""Predict one forward pass: latency, throughput, regime, framework-overhead share, MFU, memory.

Each kernel of ``costs.forward_cost`` gets a device time from ``DeviceParams`` (a matrix product on
a saturation curve in its smallest dimension, bounded below by its bytes over the bandwidth;
an elementwise kernel by its bytes over the elementwise bandwidth, faster while its working set
fits the caches) and a host time (its dispatched
ops times the per-op cost). Then:

- on a device that overlaps host and device (a GPU, asynchronous launches) a FIFO queue: kernel i
  starts when the host has issued it and kernel i-1 has finished; latency is when the last ends;
- on a CPU the same threads dispatch and compute: latency is host time plus device time.

The framework-overhead share is the part of the latency the device spends idle waiting on the
host, ``1 - device_busy / latency``. The equations and their limits are in docs/model.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from scaleprobe.models.architecture import Architecture
from scaleprobe.models.costs import (
    ATTENTION,
    HOST,
    MATRIX_KINDS,
    ForwardCost,
    Kernel,
    forward_cost,
)
from scaleprobe.models.devices import COLD_STREAM_BYTES, DeviceParams
from scaleprobe.models.errors import InputError

FRAMEWORK, MEMORY, COMPUTE = "framework", "memory", "compute"
# A point is framework-bound when the device idles for more than this share of the wall time.
FRAMEWORK_BOUND_RATIO = 0.5
# glibc serves an allocation at least this large (its largest dynamic mmap threshold on 64-bit,
# 4 · 1024 · 1024 · sizeof(long)) by a fresh mmap, unmapped again when freed: such an output
# page-faults on first touch in every forward. Smaller ones come from the reused heap.
FRESH_MAPPING_MIN_BYTES = 32 * 1024**2
# PyTorch's fused attention on a CPU (``cpu_flash_attention``, FlashAttentionKernel.cpp) runs its
# products in blocks: query rows 32 at a time below 192 queries, 64 below 768, 256 from there,
# keys 512 at a time. Each block's products are as small as the block.
CPU_FLASH_QUERY_BLOCKS = ((768, 256), (192, 64), (0, 32))
CPU_FLASH_KEY_BLOCK = 512


@dataclass(frozen=True)
class Prediction:
    """The predicted forward pass at one (model, batch, sequence, dtype) on one device."""

    model: str
    batch_size: int
    seq_len: int
    dtype: str
    latency_seconds: float
    throughput_sequences_per_second: float
    throughput_tokens_per_second: float
    regime: str
    framework_overhead_ratio: float
    mfu_ratio: float
    peak_memory_bytes: int
    fits_in_memory: bool

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Timing:
    """The pieces a prediction is made of (for the fit and for debugging)."""

    latency_seconds: float
    host_seconds: float
    device_seconds: float
    compute_bound_seconds: float
    memory_bound_seconds: float


def kernel_device_seconds(kernel: Kernel, params: DeviceParams, dtype: str) -> tuple[float, bool]:
    """Device time of all calls of ``kernel``, and whether it is compute-bound."""
    if kernel.kind == HOST:
        return 0.0, False
    calls = kernel.calls
    floor = params.kernel_floor_seconds * calls
    if kernel.kind in MATRIX_KINDS and kernel.gemm is not None:
        compute = kernel.flops / gemm_rate(params, dtype, product_size(kernel, params))
        memory = kernel.bytes_moved / params.memory_bandwidth_bytes_per_second
        return (
            max(compute, memory)
            + floor
            + fill_seconds(kernel, params)
            + first_touch_seconds(kernel, params),
            compute >= memory,
        )
    bandwidth = (
        params.memory_bandwidth_bytes_per_second
        * params.elementwise_bandwidth_ratio
        * cache_ratio(kernel.bytes_per_call, params)
    )
    memory = kernel.bytes_moved / bandwidth
    compute = transcendental_seconds(kernel, params)
    return max(memory, compute) + floor + first_touch_seconds(kernel, params), compute > memory


def gemm_rate(params: DeviceParams, dtype: str, size: float) -> float:
    """FLOP/s of a matrix product whose smallest dimension is ``size``: the saturation curve
    R · size / (size + x½)."""
    size = float(size)
    return params.rate(dtype) * (size / (size + params.gemm_half_size))


def product_size(kernel: Kernel, params: DeviceParams) -> float:
    """The smallest dimension of the kernel's matrix products (its ``gemm`` is (batch, m, n, k)):
    on a CPU, fused attention's products are its query and key blocks
    (``CPU_FLASH_QUERY_BLOCKS``), not the whole sequence."""
    assert kernel.gemm is not None
    _, m, n, k = kernel.gemm
    if kernel.kind == ATTENTION and params.kind == "cpu":
        block = next(rows for queries, rows in CPU_FLASH_QUERY_BLOCKS if m >= queries)
        m, n = min(m, block), min(n, CPU_FLASH_KEY_BLOCK)
    return float(min(m, n, k))


def cache_ratio(working_set_bytes: float, params: DeviceParams) -> float:
    """How much faster than from memory an elementwise call over ``working_set_bytes`` streams:
    ``params.bandwidth_ratio_by_working_set`` interpolated linearly in log size, held flat
    beyond its smallest and largest sizes (1 without a ladder).

    A forward's activations are written by one op and read by the next; while they fit the
    caches, the next op reads them there.
    """
    ladder = params.bandwidth_ratio_by_working_set
    if not ladder:
        return 1.0
    if working_set_bytes <= ladder[0][0]:
        return ladder[0][1]
    for (low, low_ratio), (high, high_ratio) in itertools.pairwise(ladder):
        if working_set_bytes <= high:
            share = math.log(working_set_bytes / low) / math.log(high / low)
            return low_ratio + (high_ratio - low_ratio) * share
    return ladder[-1][1]


def fresh_mapped_bytes(kernel: Kernel) -> float:
    """Bytes of the kernel's fresh outputs large enough (``FRESH_MAPPING_MIN_BYTES``) for glibc to
    map them anew, so that they page-fault on every forward."""
    return sum(b for b in kernel.fresh_output_bytes if b >= FRESH_MAPPING_MIN_BYTES)


def fill_seconds(kernel: Kernel, params: DeviceParams) -> float:
    """The bias fill before a linear layer's product (CPU, else 0): its output bytes written at
    ``fill_bandwidth_ratio`` · W (ρ · W without it), without the cache ladder.

    The fill is the first write into a fresh output, whose lines are not in the caches (the
    ladder prices data that one op wrote and the next reads). Profiled (``bench/op_profile.py``,
    bert-base, 64–2048 tokens), ``addmm``'s ``copy_`` ran at 11–18 GB/s at two threads (ρ · W:
    11.4) and 7–13 at one (9.4); under tcmalloc (``op_profile-bigbird-tcmalloc.json``) 1.40–1.49 ×
    that charge. It is not the elementwise chain the memory probe times (ρ measured, 1.15 here),
    hence its own ratio. On a GPU one write of the output is small next to the product and is
    not charged.
    """
    if params.kind != "cpu" or not kernel.fill_bytes:
        return 0.0
    ratio = params.fill_bandwidth_ratio
    if ratio is None:
        ratio = params.elementwise_bandwidth_ratio
    rate = params.memory_bandwidth_bytes_per_second * ratio
    return kernel.fill_bytes / rate


def first_touch_seconds(kernel: Kernel, params: DeviceParams) -> float:
    """Page faults on the kernel's large fresh outputs (CPU with a measured cost, else 0).

    Additive: the faulting thread stalls, nothing else runs meanwhile.
    """
    cost = params.first_touch_seconds_per_byte
    if params.kind != "cpu" or not cost:
        return 0.0
    return cost * fresh_mapped_bytes(kernel)


def transcendental_seconds(kernel: Kernel, params: DeviceParams) -> float:
    """Time of the kernel's tanh and exp at the probed rates (CPU only, else 0).

    It overlaps the kernel's memory traffic (one pass), so the caller takes the larger of the
    two; on a GPU transcendentals are cheap next to memory, and no probe measures them.
    """
    if params.kind != "cpu":
        return 0.0
    seconds = 0.0
    if kernel.tanh_elements and params.tanh_elements_per_second:
        seconds += kernel.tanh_elements / params.tanh_elements_per_second
    if kernel.exp_elements and params.exp_elements_per_second:
        seconds += kernel.exp_elements / params.exp_elements_per_second
    return seconds


def cold_host_scale(cost: ForwardCost, params: DeviceParams) -> float:
    """How much a forward's host work costs over the warm-cache figure (1 without a probe ratio).

    Its matrix products' bytes per call against the dispatch probe's ``COLD_STREAM_BYTES``: a
    forward whose products each move at least that much leaves the host's caches as cold as the
    probe's streams do and pays the full ``cold_host_ratio``; a small model whose weights stay in
    cache pays a share of it.
    """
    if params.cold_host_ratio <= 1.0:
        return 1.0
    share = min(1.0, cost.matrix_bytes_per_call / COLD_STREAM_BYTES)
    return 1.0 + (params.cold_host_ratio - 1.0) * share


def time_forward(cost: ForwardCost, params: DeviceParams) -> Timing:
    """Latency of one forward from its kernels (FIFO queue with overlap, else a plain sum)."""
    host_total = device_total = compute_bound = memory_bound = 0.0
    host_clock = device_clock = 0.0
    scale = cold_host_scale(cost, params)
    for kernel in cost.kernels:
        device, is_compute = kernel_device_seconds(kernel, params, cost.dtype)
        host = scale * (
            kernel.host_ops * params.dispatch_seconds + kernel.module_calls * params.module_seconds
        )
        host_total += host
        device_total += device
        if is_compute:
            compute_bound += device
        else:
            memory_bound += device
        if params.overlap:
            # `calls` identical launches: each call's host share issues it, the device runs it
            # when free. For n identical (h, d) calls the queue ends at
            # max(host_clock + n·h, device_clock) + ... ; simulated per call for exactness.
            h, d = host / kernel.calls, device / kernel.calls
            for _ in range(kernel.calls):
                host_clock += h
                if d > 0:
                    device_clock = max(device_clock, host_clock) + d
    latency = max(host_clock, device_clock) if params.overlap else host_total + device_total
    return Timing(latency, host_total, device_total, compute_bound, memory_bound)


def _fits(cost: ForwardCost, params: DeviceParams) -> bool:
    return cost.peak_memory_bytes + params.reserved_memory_bytes <= params.memory_bytes


def predict(
    arch: Architecture, params: DeviceParams, batch_size: int, seq_len: int, dtype: str
) -> Prediction:
    """Predict one forward of ``arch`` at (batch_size, seq_len, dtype) on the device ``params``."""
    params.rate(dtype)  # a clear error for an uncalibrated dtype
    cost = forward_cost(arch, batch_size, seq_len, dtype)
    timing = time_forward(cost, params)
    latency = timing.latency_seconds
    overhead = max(0.0, min(1.0, 1.0 - timing.device_seconds / latency)) if latency > 0 else 0.0
    if overhead > FRAMEWORK_BOUND_RATIO:
        regime = FRAMEWORK
    elif timing.compute_bound_seconds >= timing.memory_bound_seconds:
        regime = COMPUTE
    else:
        regime = MEMORY
    mfu = cost.flops / (latency * params.peak(dtype)) if latency > 0 else 0.0
    return Prediction(
        model=arch.name,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype,
        latency_seconds=latency,
        throughput_sequences_per_second=batch_size / latency,
        throughput_tokens_per_second=batch_size * seq_len / latency,
        regime=regime,
        framework_overhead_ratio=overhead,
        mfu_ratio=min(1.0, mfu),
        peak_memory_bytes=cost.peak_memory_bytes,
        fits_in_memory=_fits(cost, params),
    )


def predict_grid(
    arch: Architecture,
    params: DeviceParams,
    batch_sizes: Iterable[int],
    seq_lens: Iterable[int],
    dtype: str,
) -> list[Prediction]:
    """Predictions over the grid, batch-major (every sequence length of batch 1, then batch 2 …)."""
    seqs = list(seq_lens)
    return [predict(arch, params, b, s, dtype) for b in batch_sizes for s in seqs]


def max_batch_size(
    arch: Architecture, params: DeviceParams, seq_len: int, dtype: str, limit: int = 1 << 20
) -> int:
    """Largest batch whose predicted peak memory fits the device at ``seq_len`` (0 if none does).

    Memory grows monotonically with batch, so a doubling search then a bisection finds it.
    """

    def fits(batch: int) -> bool:
        return _fits(forward_cost(arch, batch, seq_len, dtype), params)

    if seq_len < 1:
        raise InputError(f"sequence length must be a positive integer, got {seq_len!r}")
    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    if high > limit:
        return low
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
