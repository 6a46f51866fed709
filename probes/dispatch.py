"""Dispatch probe: what one tiny op costs the host (Python, the dispatcher, the launch).

What it saturates: the host side of the framework. ``OPS_PER_SAMPLE`` in-place adds on
one-element tensors do no device work worth the name, so the time per op is the framework's
per-op cost: the "framework tax" that bounds small-batch, short-sequence inference.

Why this size: one op is too short to time (a clock read costs about as much), so a sample is a
loop of 200 ops, timed as one and divided; 200 one-element ops are a few hundred microseconds on a
CPU and well inside a GPU's launch queue (about a thousand pending launches), so the host never
blocks on a full queue and the figure stays a host cost.

On CUDA the same 200 ops are also captured into a CUDA graph and replayed: the replay has no
per-op host cost, so its time per op is the device's per-kernel floor
(``detail["kernel_floor_seconds"]``), and ``value`` is the host clock's time to enqueue the
eager ops. On the CPU kernels run inline on the host: there is no separate device floor to split
off, ``kernel_floor_seconds`` is null, and ``value`` includes the (tiny) kernel work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from scaleprobe.models.devices import COLD_PRODUCT_ROWS, COLD_PRODUCT_WIDTH, COLD_STREAM_BYTES
from scaleprobe.probes import graphs
from scaleprobe.probes.device import default_timer
from scaleprobe.probes.request import ProbeRequest, ProbeResult
from scaleprobe.probes.timing import (
    CudaEventTimer,
    HostTimer,
    Measurement,
    Timer,
    TimingRequest,
    measure,
)

OPS_PER_SAMPLE = 200
# A host-bound real encoder (CPU): BERT, 2 layers, 32 wide, 1 × 16 tokens, ~95% host work. Its
# forward time over the performance model's count of its host ops and module calls is the host
# cost of a forward's own mix (real ops, nn.Module calls, transformers' Python), where an in-place
# add is the cheapest op there is: on a Xeon guest a 12-layer such model ran 1.8x what the adds
# predict. Built with the model probe's builder, timed as the model probe times a forward.
TINY_ENCODER = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "vocab_size": 512,
    "max_position_embeddings": 64,
}
TINY_ENCODER_TOKENS = 16
# Share of the CPU dispatch budget the tiny encoder gets (the adds get the rest), and at most this
# many timed forwards (~1 ms each): a calibration must stay within 2% of measuring the curve.
TINY_ENCODER_SHARE = 0.5
TINY_ENCODER_MAX_REPEATS = 30
# The same encoder run as a real forward runs its host work: between linear layers. Before each of
# its linear layers a hook runs what a base encoder's linear layer runs at a short input, a
# COLD_PRODUCT_ROWS x COLD_PRODUCT_WIDTH product through its own COLD_PRODUCT_WIDTH-square weight
# (COLD_STREAM_BYTES, scaleprobe.models.devices), on torch's threads. That evicts the
# interpreter's and dispatcher's working set as a real model's weights do, as much as the
# products on this many threads do (split over two cores they leave each core's caches warmer),
# and pays what a product costs after host work rather than after another product. The cold host
# time is the hooked forward's minus the same products' back to back (timed alone). Each part gets
# COLD_SHARE of the encoder's budget and at most COLD_MAX_REPEATS forwards.
COLD_SHARE = 0.25
COLD_MAX_REPEATS = 12


def tiny_ops(device: str, count: int = OPS_PER_SAMPLE) -> Callable[[], None]:
    """``count`` in-place adds on one-element tensors: one kernel each, no real work."""
    x = torch.zeros(1, device=device)
    one = torch.ones(1, device=device)

    def ops() -> None:
        for _ in range(count):
            x.add_(one)

    return ops


@dataclass(frozen=True)
class CudaSplit:
    """Host enqueue time of the eager ops and device time of their graph replay."""

    host: Measurement
    replay: Measurement


def split_on_cuda(
    ops: Callable[[], object],
    request: ProbeRequest,
    cuda: Any,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> CudaSplit:
    """Eager ops timed on the host clock (enqueue only), graph replay timed with CUDA events."""
    threads = torch.get_num_threads()
    half = replace(request.timing, budget_seconds=request.timing.budget_seconds / 2)
    # Host clock around the eager ops, the device queue drained before and after each sample:
    # the host's cost to issue the ops, never blocked by earlier queued work.
    host = measure(
        ops, half, _SyncBefore(HostTimer(clock=clock), cuda), clock=clock, threads=threads
    )
    graph = graphs.capture(ops, cuda)
    replay = measure(graph.replay, half, CudaEventTimer(cuda), clock=clock, threads=threads)
    return CudaSplit(host=host, replay=replay)


class _SyncBefore:
    """A host timer that drains the device queue before starting the clock, not after."""

    name = "host_enqueue"

    def __init__(self, timer: HostTimer, cuda: Any) -> None:
        self.timer = timer
        self.cuda = cuda

    def time(self, fn: Callable[[], object]) -> float:
        self.cuda.synchronize()
        elapsed = self.timer.time(fn)
        self.cuda.synchronize()
        return elapsed


def run(request: ProbeRequest, *, timer: Timer | None = None, cuda: Any = None) -> ProbeResult:
    """Host cost per tiny op (and, on CUDA, the device's per-kernel floor)."""
    ops = tiny_ops(request.device)
    if request.is_cuda:
        split = split_on_cuda(ops, request, cuda if cuda is not None else torch.cuda)
        floor = split.replay.median_seconds / OPS_PER_SAMPLE
        return ProbeResult(
            probe="dispatch",
            value=split.host.median_seconds / OPS_PER_SAMPLE,
            unit="seconds",
            measurement=split.host,
            dtype=request.dtype,
            detail={
                "ops_per_sample": OPS_PER_SAMPLE,
                "kernel_floor_seconds": floor,
                "method": "host enqueue time per eager op; CUDA-graph replay time per op",
            },
            other_device_seconds=split.replay.device_seconds,
        )
    timer = timer if timer is not None else default_timer(request.device)
    threads = torch.get_num_threads()
    measurement = measure(
        ops, request.timing.scaled(1 - TINY_ENCODER_SHARE), timer, threads=threads
    )
    forward, model, host_ops, module_calls = tiny_encoder_forward()
    encoder_timing = request.timing.scaled(TINY_ENCODER_SHARE, TINY_ENCODER_MAX_REPEATS)
    encoder = measure(forward, encoder_timing, timer, threads=threads)
    cold_timing = request.timing.scaled(TINY_ENCODER_SHARE * COLD_SHARE, COLD_MAX_REPEATS)
    cold = cold_encoder_seconds(forward, model, cold_timing, timer, threads)
    return ProbeResult(
        probe="dispatch",
        value=measurement.median_seconds / OPS_PER_SAMPLE,
        unit="seconds",
        measurement=measurement,
        dtype=request.dtype,
        detail={
            "ops_per_sample": OPS_PER_SAMPLE,
            "kernel_floor_seconds": None,
            "method": "wall time per in-place add on a one-element tensor (kernels run inline)",
            "tiny_encoder": {
                "seconds": encoder.median_seconds,
                "host_ops": host_ops,
                "module_calls": module_calls,
                "tokens": TINY_ENCODER_TOKENS,
                "cold_seconds": cold.host_seconds,
                "cold_stream_bytes": COLD_STREAM_BYTES,
            },
        },
        other_device_seconds=encoder.device_seconds + cold.device_seconds,
    )


@dataclass(frozen=True)
class ColdTiming:
    host_seconds: float  # the hooked forward's median minus the products' median (>= 0)
    device_seconds: float  # what timing both cost


def cold_encoder_seconds(
    forward: Callable[[], object],
    model: torch.nn.Module,
    timing: TimingRequest,
    timer: Timer,
    threads: int,
) -> ColdTiming:
    """The tiny encoder's forward time between real linear layers' work, less that work's own.

    ``forward`` runs ``model`` (:func:`tiny_encoder_forward`); a pre-hook on each of its linear
    layers runs a ``COLD_PRODUCT_ROWS`` x ``COLD_PRODUCT_WIDTH`` linear layer's product (with its
    bias) through that layer's own square weight before the layer runs, and the same products
    are timed back to back alone.
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    rows = torch.ones(COLD_PRODUCT_ROWS, COLD_PRODUCT_WIDTH)
    weights = [torch.ones(COLD_PRODUCT_WIDTH, COLD_PRODUCT_WIDTH) for _ in linears]
    bias = torch.zeros(COLD_PRODUCT_WIDTH)

    def product(index: int) -> None:
        # as nn.Linear runs it (addmm against the transposed weight): a plain mm through the
        # same weight costs 1.2-1.3x more after host work at one thread on the Xeon guest
        torch.nn.functional.linear(rows, weights[index], bias)

    def products_alone() -> None:
        for index in range(len(linears)):
            product(index)

    def hook_for(index: int) -> Callable[..., None]:
        # returns None: a pre-hook's return value would replace the layer's input
        return lambda *_: product(index)

    handles = [
        linear.register_forward_pre_hook(hook_for(index)) for index, linear in enumerate(linears)
    ]
    try:
        hooked = measure(forward, timing, timer, threads=threads)
    finally:
        for handle in handles:
            handle.remove()
    alone = measure(products_alone, timing, timer, threads=threads)
    return ColdTiming(
        host_seconds=max(0.0, hooked.median_seconds - alone.median_seconds),
        device_seconds=hooked.device_seconds + alone.device_seconds,
    )


def tiny_encoder_forward() -> tuple[Callable[[], object], torch.nn.Module, int, int]:
    """The CPU tiny encoder's forward, the module it runs, and the performance model's count of
    its host ops and module calls."""
    from scaleprobe.models.architecture import architecture_from_config
    from scaleprobe.models.costs import forward_cost
    from scaleprobe.probes.model import build_model

    model = build_model(TINY_ENCODER, "float32", "cpu")
    ids = torch.zeros(1, TINY_ENCODER_TOKENS, dtype=torch.long)
    cost = forward_cost(
        architecture_from_config(dict(TINY_ENCODER), "tiny-encoder"),
        1,
        TINY_ENCODER_TOKENS,
        "float32",
    )

    def forward() -> object:
        with torch.inference_mode():
            return model(input_ids=ids)

    return forward, model, cost.host_ops, cost.module_calls
