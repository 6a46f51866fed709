"""Model probe: a real transformers model's forward pass at one (batch, sequence) point.

The model is built from the config dict the exporter sends (``AutoConfig.for_model``,
``AutoModel.from_config``: random weights, nothing downloaded), in eval mode, in the configured
dtype, and run under ``torch.inference_mode`` on random input ids. Built models are cached for
the life of one worker run, so several points of one model build it once.

What it reports per point:

- **latency**: the median of the timed forwards (throughput is batch / latency);
- **framework-overhead share**: the part of wall time the device waits on the host.
  On CUDA: eager forward versus CUDA-graph replay of the same forward (the replay has no host
  dispatch), ``(eager - replay) / eager``. On the CPU kernels run on the host, so there is no idle
  device to observe; instead one (or, for forwards under 50 ms, three) forwards run under
  ``torch.profiler`` and the share is ``(wall - kernel self time) / wall``, where kernel self
  time sums the self CPU time of every aten op except pure metadata/view/allocation ops
  (``METADATA_OPS``). What remains is Python, ``nn.Module`` and transformers code, the dispatcher
  between ops, views and allocation: the host's framework cost. The profiler's own recording
  (about a microsecond per op) is counted as overhead, so tiny forwards read slightly high; time
  an op spends waking torch's intra-op thread pool counts as kernel time.
- **peak memory**: on CUDA ``max_memory_allocated`` over one forward (weights included). On the
  CPU ``torch.profiler(profile_memory=True)``: the torch allocator's bytes over the forward,
  replayed in time order to find the high-water mark of activations, plus the bytes of the
  weights, buffers and inputs: what the forward needs, independent of the process's other RSS.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from scaleprobe.probes import graphs
from scaleprobe.probes.device import cuda_index, default_timer, dtype_bytes, torch_dtype
from scaleprobe.probes.guard import SkipProbe
from scaleprobe.probes.timing import Measurement, Timer, TimingRequest, measure

# aten ops that only make views, change metadata or allocate: their self time is framework cost.
# fmt: off
METADATA_OPS = frozenset("aten::" + name for name in (
    "view", "_unsafe_view", "_reshape_alias", "reshape", "as_strided", "t", "transpose",
    "permute", "expand", "expand_as", "view_as", "unsqueeze", "squeeze", "flatten",
    "unflatten", "slice", "select", "split", "chunk", "unbind", "narrow", "detach", "alias",
    "contiguous", "empty", "empty_like", "empty_strided", "resolve_conj", "resolve_neg",
    "to", "lift_fresh", "dropout",
))
# fmt: on
PROFILER_CHATTER = re.compile(r"^(USDT|STAGE):")
# Forwards shorter than this get three profiled runs (median share), longer ones one.
SHORT_FORWARD_SECONDS = 0.05


@dataclass(frozen=True)
class PointRequest:
    """One operating point of one model."""

    model: str
    config: Mapping[str, Any]
    batch_size: int
    seq_len: int
    dtype: str = "float32"
    device: str = "cpu"
    memory_cap_bytes: int = 2 * 1024**3
    timing: TimingRequest = field(default_factory=lambda: TimingRequest(min_repeats=3))


@dataclass(frozen=True)
class PointResult:
    """What one point measured; the latency figure is the median of ``measurement``."""

    request: PointRequest
    measurement: Measurement
    framework_overhead_ratio: float | None
    peak_memory_bytes: float | None
    detail: Mapping[str, Any] = field(default_factory=dict)
    other_device_seconds: float = 0.0

    @property
    def latency_seconds(self) -> float:
        return self.measurement.median_seconds

    def to_dict(self) -> dict[str, Any]:
        request = self.request
        latency = self.latency_seconds
        return {
            "model": request.model,
            "batch_size": request.batch_size,
            "seq_len": request.seq_len,
            "dtype": request.dtype,
            "latency_seconds": latency,
            "throughput_sequences_per_second": request.batch_size / latency,
            "throughput_tokens_per_second": request.batch_size * request.seq_len / latency,
            "samples_seconds": self.measurement.kept_samples(),
            "timing": self.measurement.summary(),
            "framework_overhead_ratio": self.framework_overhead_ratio,
            "peak_memory_bytes": self.peak_memory_bytes,
            "device_seconds": self.measurement.device_seconds + self.other_device_seconds,
            "detail": dict(self.detail),
        }


class ModelCache:
    """Built models for one worker run, keyed by (config, dtype, device)."""

    def __init__(self) -> None:
        self._models: dict[str, torch.nn.Module] = {}

    def get(self, config: Mapping[str, Any], dtype: str, device: str) -> torch.nn.Module:
        key = json.dumps([config, dtype, device], sort_keys=True, default=str)
        if key not in self._models:
            self._models[key] = build_model(config, dtype, device)
        return self._models[key]

    def clear(self) -> None:
        self._models.clear()


def build_model(config: Mapping[str, Any], dtype: str, device: str) -> torch.nn.Module:
    """A random-weight model from a config.json dict; raises ValueError on a bad config."""
    from transformers import AutoConfig, AutoModel

    values = dict(config)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ValueError("the model config has no 'model_type'")
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        values.pop(key, None)
    hf_config = AutoConfig.for_model(model_type, **values)
    model = AutoModel.from_config(hf_config, dtype=torch_dtype(dtype))
    return model.to(device).eval()


def estimate_memory_bytes(
    config: Mapping[str, Any], batch_size: int, seq_len: int, dtype: str
) -> int:
    """A deliberately generous estimate of what a forward needs, to refuse points over the cap
    before building anything: weights plus a few layers' worth of activations and the attention
    scores of one layer."""
    hidden = int(config.get("hidden_size", config.get("dim", 768)))
    layers = int(config.get("num_hidden_layers", config.get("n_layers", 12)))
    ffn = int(config.get("intermediate_size", config.get("hidden_dim", 4 * hidden)))
    heads = int(config.get("num_attention_heads", config.get("n_heads", 12)))
    vocab = int(config.get("vocab_size", 30522))
    positions = int(config.get("max_position_embeddings", 512))
    weights = (vocab + positions) * hidden + layers * (4 * hidden * hidden + 2 * hidden * ffn)
    tokens = batch_size * seq_len
    activations = 4 * tokens * (hidden + ffn) + batch_size * heads * seq_len * seq_len
    return int((weights + activations) * dtype_bytes(dtype))


def random_inputs(config: Mapping[str, Any], request: PointRequest) -> dict[str, torch.Tensor]:
    vocab = int(config.get("vocab_size", 30522))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (request.batch_size, request.seq_len), generator=generator)
    return {"input_ids": ids.to(request.device)}


def run(
    request: PointRequest,
    *,
    cache: ModelCache | None = None,
    timer: Timer | None = None,
    cuda: Any = None,
) -> PointResult:
    """Measure one point; ``SkipProbe("skipped_memory")`` when it cannot fit the memory cap."""
    needed = estimate_memory_bytes(
        request.config, request.batch_size, request.seq_len, request.dtype
    )
    if needed > request.memory_cap_bytes:
        raise SkipProbe(
            "skipped_memory",
            f"estimated {needed} bytes for this point exceed memory_cap_bytes "
            f"{request.memory_cap_bytes}",
        )
    cache = cache if cache is not None else ModelCache()
    model = cache.get(request.config, request.dtype, request.device)
    reset_attention_type(model, request.config)
    inputs = random_inputs(request.config, request)
    timer = timer if timer is not None else default_timer(request.device, cuda)
    threads = torch.get_num_threads()

    def forward() -> object:
        with torch.inference_mode():
            return model(**inputs)

    measurement = measure(forward, request.timing, timer, threads=threads)
    static_bytes = _tensor_bytes(model) + sum(t.numel() * t.element_size() for t in inputs.values())
    if request.device.startswith("cuda"):
        module = cuda if cuda is not None else torch.cuda
        overhead, peak, detail, extra = _cuda_overhead_and_memory(
            forward, request, measurement, module
        )
    else:
        overhead, peak, detail, extra = _cpu_overhead_and_memory(forward, measurement, static_bytes)
    detail = {"parameter_bytes": static_bytes, **detail}
    if hasattr(model, "set_attention_type"):
        detail["attention_type"] = model.attention_type  # what the timed forwards ran
    return PointResult(
        request=request,
        measurement=measurement,
        framework_overhead_ratio=overhead,
        peak_memory_bytes=peak,
        detail=detail,
        other_device_seconds=extra,
    )


def reset_attention_type(model: torch.nn.Module, config: Mapping[str, Any]) -> None:
    """Undo BigBird's sticky fall-back before each point.

    transformers switches a ``block_sparse`` BigBird to full attention *for good* the first time
    it sees a sequence at or below its threshold (704 tokens by default); a cached model would
    then run full attention at every later, longer point, unlike the model it is compared with.
    """
    if hasattr(model, "set_attention_type"):
        model.set_attention_type(str(config.get("attention_type", "block_sparse")))


def _tensor_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _cpu_overhead_and_memory(
    forward: Callable[[], object], measurement: Measurement, static_bytes: int
) -> tuple[float | None, float | None, dict[str, Any], float]:
    runs = 3 if measurement.median_seconds < SHORT_FORWARD_SECONDS else 1
    shares, peaks, seconds = [], [], 0.0
    for _ in range(runs):
        share, peak_activation_bytes, wall = profile_forward(forward)
        shares.append(share)
        peaks.append(peak_activation_bytes)
        seconds += wall
    detail = {
        "framework_overhead_method": "torch.profiler: (wall - self time of non-metadata aten ops) "
        "/ wall, median of profiled forwards",
        "profiled_forwards": runs,
        "peak_memory_method": "weights + inputs + torch allocator high-water over the forward "
        "(torch.profiler profile_memory)",
        "peak_activation_bytes": max(peaks),
    }
    return float(statistics.median(shares)), float(static_bytes + max(peaks)), detail, seconds


def profile_forward(forward: Callable[[], object]) -> tuple[float, int, float]:
    """One forward under torch.profiler: (overhead share, peak activation bytes, wall seconds)."""
    from torch.profiler import ProfilerActivity, profile

    with (
        without_profiler_chatter(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        started = time.perf_counter()
        forward()
        wall = time.perf_counter() - started
    events = prof.events()
    kernel_us = sum(
        e.self_cpu_time_total
        for e in events
        if e.name.startswith("aten::") and e.name not in METADATA_OPS
    )
    # Allocator timeline: each op's own net allocation at its start, free-standing [memory]
    # events at theirs; the running sum's maximum is the forward's high-water mark.
    timeline = sorted(
        (
            e.time_range.start,
            e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage,
        )
        for e in events
    )
    running = peak = 0
    for _, delta in timeline:
        running += delta
        peak = max(peak, running)
    share = min(1.0, max(0.0, (wall - kernel_us / 1e6) / wall)) if wall > 0 else 0.0
    return share, int(peak), wall


@contextlib.contextmanager
def without_profiler_chatter() -> Iterator[None]:
    """Drop the profiler's own start/stop marker lines (``USDT:``/``STAGE:``, written by C++ to
    file descriptor 2) and pass every other stderr line through: the worker's stderr is read by
    the supervisor, and these markers would flood the daemon's log."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if not PROFILER_CHATTER.match(line):
                    print(line, file=sys.stderr)


def _cuda_overhead_and_memory(
    forward: Callable[[], object], request: PointRequest, eager: Measurement, cuda: Any
) -> tuple[float | None, float | None, dict[str, Any], float]:
    index = cuda_index(request.device)
    cuda.synchronize()
    cuda.reset_peak_memory_stats(index)
    forward()
    cuda.synchronize()
    peak = float(cuda.max_memory_allocated(index))
    detail: dict[str, Any] = {"peak_memory_method": "torch.cuda.max_memory_allocated"}
    try:
        graph = graphs.capture(forward, cuda)
    except Exception as error:  # some models cannot be captured (dynamic shapes, host syncs)
        detail["framework_overhead_method"] = f"CUDA graph capture failed: {error}"
        return None, peak, detail, 0.0
    replay = measure(graph.replay, replay_timing(eager), default_timer(request.device, cuda))
    detail.update(
        framework_overhead_method="(eager - CUDA graph replay) / eager, CUDA event medians",
        replay_latency_seconds=replay.median_seconds,
    )
    del graph
    ratio = graphs.overhead_ratio(eager.median_seconds, replay.median_seconds)
    return ratio, peak, detail, replay.device_seconds


def replay_timing(eager: Measurement) -> TimingRequest:
    """Time the replay as often as the eager forward was timed (at least three times)."""
    repeats = max(3, len(eager.samples_seconds))
    return TimingRequest(
        warmup=1,
        min_repeats=min(repeats, 50),
        max_repeats=min(repeats, 50),
        budget_seconds=math.inf,
    )
