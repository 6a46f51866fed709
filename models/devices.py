"""Devices: datasheet specifications, and the calibratable parameters the predictor uses.

Two types, kept apart on purpose (as ``torch.utils.benchmark`` keeps the request apart from the
measurement):

- ``DeviceSpec`` is what a datasheet says (dense peak FLOP/s per dtype, memory bandwidth and size).
  It never changes and is what capacity planning for a device you do not have starts from.
- ``DeviceParams`` is what the model needs to predict a forward pass on one device: the effective
  compute rate per dtype, memory bandwidth, host cost per dispatched op, per-kernel device floor,
  whether host and device overlap, the memory size, and three efficiency parameters (the GEMM
  saturation curve and the elementwise bandwidth share). Probes calibrate it on a live device
  (``scaleprobe.models.fit``); ``params_from_spec`` gives datasheet defaults for a catalog GPU.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from scaleprobe.models.errors import InputError

TERA = 1e12
GIGA = 1e9
GIB = 1024**3

# Public efficiencies (../shared/REFERENCE.md): best-shape GEMMs reach about 80–87% of the dense
# peak on A100/H100, device copies about 84–90% of the bandwidth peak.
DEFAULT_GEMM_EFFICIENCY_RATIO = 0.82
DEFAULT_COPY_EFFICIENCY_RATIO = 0.87
# Rows (min GEMM dimension) at which a GPU GEMM reaches half of its large-size rate: tensor-core
# tiles are 128-256 wide, and small products leave most SMs idle.
DEFAULT_GPU_GEMM_HALF_SIZE = 64.0
# Host cost per dispatched aten op in eager PyTorch on a GPU host (dispatcher plus
# cudaLaunchKernel, a few µs), and per nn.Module call (Python hooks and glue). Fernandez et al.
# 2023 ("The Framework Tax", /work/shared/seeds) find BERT-base in eager PyTorch framework-bound
# at small batch on datacentre GPUs, its latency flat in batch size at a few milliseconds; a
# BERT-base forward dispatches about 480 aten ops in about 210 module calls, so 4 µs + 6 µs give
# about 3.2 ms of host time. On this machine's CPU we measured 0.9 µs per tiny op and about
# 8 µs per module call (bench/model_check.py notes).
DEFAULT_GPU_DISPATCH_SECONDS = 4e-6
DEFAULT_GPU_MODULE_SECONDS = 6e-6
# Smallest device time of one GPU kernel (launch latency, tail of an almost empty grid).
DEFAULT_GPU_KERNEL_FLOOR_SECONDS = 3e-6
# CUDA context, allocator slack and workspace held besides weights and activations.
DEFAULT_GPU_RESERVED_BYTES = 768 * 1024**2


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet figures of one device (dense, no sparsity)."""

    name: str
    peak_flops_per_second: dict[str, float]
    memory_bandwidth_bytes_per_second: float
    memory_bytes: int
    sm_count: int
    aliases: tuple[str, ...] = ()
    kind: str = "gpu"
    note: str = ""


def _gpu(
    name: str,
    half_tflops: float | None,
    fp32_tflops: float,
    bandwidth_gbps: float,
    memory_gb: int,
    sms: int,
    aliases: tuple[str, ...],
    note: str = "",
    bf16: bool = True,
) -> DeviceSpec:
    peaks = {"float32": fp32_tflops * TERA}
    if half_tflops is not None:
        peaks["float16"] = half_tflops * TERA
        if bf16:
            peaks["bfloat16"] = half_tflops * TERA
    return DeviceSpec(
        name=name,
        peak_flops_per_second=peaks,
        memory_bandwidth_bytes_per_second=bandwidth_gbps * GIGA,
        memory_bytes=memory_gb * 10**9,
        sm_count=sms,
        aliases=aliases,
        note=note,
    )


# ../shared/REFERENCE.md "Device datasheets" (NVIDIA datasheets; A10G has no official one).
CATALOG: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in (
        _gpu(
            "T4",
            65,
            8.1,
            320,
            16,
            40,
            ("tesla-t4",),
            "70 W power cap: sustains far below its FP16 peak",
            bf16=False,
        ),
        _gpu("A10G", 70, 35, 600, 24, 80, ("a10",), "no official datasheet; figures approximate"),
        _gpu("L4", 121, 30.3, 300, 24, 58, ()),
        _gpu("L40S", 362, 91.6, 864, 48, 142, ()),
        _gpu("A100-40GB", 312, 19.5, 1555, 40, 108, ("a100-sxm4-40gb", "a100-40gb-sxm")),
        _gpu("A100-80GB", 312, 19.5, 2039, 80, 108, ("a100", "a100-sxm4-80gb", "a100-80gb-sxm")),
        _gpu("H100-SXM", 989, 66.9, 3350, 80, 132, ("h100", "h100-sxm5-80gb", "h100-80gb-sxm")),
        _gpu("H100-PCIe", 756, 51.2, 2000, 80, 114, ("h100-pcie-80gb",)),
        _gpu("H200", 989, 66.9, 4800, 141, 132, ("h200-sxm",)),
    )
}


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_device(name: str) -> DeviceSpec:
    """Case-insensitive lookup by name or alias, ignoring spaces, dashes and 'nvidia'."""
    wanted = _key(name).removeprefix("nvidia")
    for spec in CATALOG.values():
        if wanted in {_key(spec.name), *(_key(alias) for alias in spec.aliases)}:
            return spec
    raise InputError(f"unknown GPU {name!r}; known: {', '.join(CATALOG)} (see `scaleprobe gpus`)")


# What the dispatch probe runs before each linear layer of its tiny encoder to leave the caches
# (and the next product) as a real forward's linear layers leave them: a base encoder's smallest
# linear layer at a short input, 16 rows through a 768-square float32 weight (2.25 MiB, a core's L2
# on common server CPUs; a base model's linear layers read 2.4-9.4 MB of weights).
COLD_PRODUCT_ROWS = 16
COLD_PRODUCT_WIDTH = 768
COLD_STREAM_BYTES = COLD_PRODUCT_WIDTH * COLD_PRODUCT_WIDTH * 4


@dataclass(frozen=True)
class DeviceParams:
    """The calibratable parameters of one device, as the predictor uses them.

    A kernel's device time (see docs/model.md):
    - matrix product: ``max(flops / (rate · gemm_efficiency_ratio · x / (x + gemm_half_size)),
      bytes / memory_bandwidth) + kernel_floor`` with ``x`` the smallest of its m, n, k;
    - elementwise, norm, softmax, gather: ``bytes / (memory_bandwidth ·
      elementwise_bandwidth_ratio · cache_ratio(bytes per call)) + kernel_floor``, the cache
      ratio read off ``bandwidth_ratio_by_working_set`` (1 without it);
    - on a CPU with the probe figures: an elementwise kernel takes at least its tanh/exp elements
      over their rates, and every kernel pays ``first_touch_seconds_per_byte`` on each fresh
      output of at least ``FRESH_MAPPING_MIN_BYTES`` (``scaleprobe.models.predict``).
    Host time is ``host_ops · dispatch_seconds + module_calls · module_seconds``. With
    ``overlap`` (a GPU) host and device run concurrently, a kernel starting when both its launch
    and the previous kernel are done; without (a CPU) the same threads dispatch and compute, so
    the times add.
    """

    name: str
    kind: str  # "cpu" or "gpu"
    compute_flops_per_second: dict[str, float]
    memory_bandwidth_bytes_per_second: float
    dispatch_seconds: float
    kernel_floor_seconds: float
    overlap: bool
    memory_bytes: int
    gemm_efficiency_ratio: float = 1.0
    gemm_half_size: float = 32.0
    elementwise_bandwidth_ratio: float = 1.0
    reserved_memory_bytes: int = 0
    module_seconds: float = 0.0  # host cost of one nn.Module call (Python), besides its ops
    # CPU only, from the probes (None: not measured, the terms are not charged; docs/model.md):
    # page-fault cost per byte of a large freshly allocated output (memory probe; 0 when the
    # process's allocator reuses freed large blocks, so that none is fresh), and the rate of tanh
    # and exp over a cache-resident tensor (compute probe).
    first_touch_seconds_per_byte: float | None = None
    tanh_elements_per_second: float | None = None
    exp_elements_per_second: float | None = None
    # CPU only: the share of W at which a linear layer's bias fill writes its fresh output
    # (``predict.fill_seconds``); None: the elementwise ratio, as before it had its own figure.
    fill_bandwidth_ratio: float | None = None
    # CPU only: the host cost of an op between a forward's linear layers, over its cost with warm
    # caches (the dispatch probe's tiny encoder with and without a base layer's product through
    # COLD_STREAM_BYTES of weights before each of its linear layers); a forward's host time scales
    # by 1 + (ratio - 1) · f, f how much of COLD_STREAM_BYTES its matrix products move per call
    # (``scaleprobe.models.predict``).
    cold_host_ratio: float = 1.0
    # CPU only: (working-set bytes, copy rate over the DRAM copy rate) from small to large, the
    # memory probe's copies of cache-sized buffers (``predict.cache_ratio`` interpolates it);
    # empty: every elementwise kernel streams at the memory bandwidth.
    bandwidth_ratio_by_working_set: tuple[tuple[float, float], ...] = ()
    source: str = "probes"  # "probes", "datasheet", "refit", "transfer"
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self, dtype: str) -> float:
        """Effective large-GEMM rate for ``dtype`` (FLOP/s); an InputError if not calibrated."""
        try:
            return self.compute_flops_per_second[dtype] * self.gemm_efficiency_ratio
        except KeyError:
            raise InputError(
                f"{self.name} has no compute rate for {dtype}; "
                f"available: {', '.join(self.compute_flops_per_second) or 'none'}"
            ) from None

    def peak(self, dtype: str) -> float:
        """The rate MFU is measured against (datasheet peak, or the probe's best on a CPU)."""
        self.rate(dtype)
        return self.compute_flops_per_second[dtype]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: equal to what :meth:`from_dict` reads back after a JSON round trip."""
        data = asdict(self)
        data["bandwidth_ratio_by_working_set"] = [
            list(pair) for pair in self.bandwidth_ratio_by_working_set
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceParams:
        """Inverse of :meth:`to_dict`; an InputError naming the first bad or missing field."""
        if not isinstance(data, dict):
            raise InputError(f"device parameters must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"unknown device parameter(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        required = (
            "name",
            "kind",
            "compute_flops_per_second",
            "memory_bandwidth_bytes_per_second",
            "dispatch_seconds",
            "kernel_floor_seconds",
            "overlap",
            "memory_bytes",
        )
        missing = [key for key in required if key not in data]
        if missing:
            raise InputError(f"device parameters miss: {', '.join(missing)}")
        rates = data["compute_flops_per_second"]
        if not isinstance(rates, dict) or not rates:
            raise InputError(
                'compute_flops_per_second must map a dtype to FLOP/s, e.g. {"float32": 1.9e11}'
            )
        for dtype, value in rates.items():
            if dtype not in ("float32", "float16", "bfloat16"):
                raise InputError(
                    f"compute_flops_per_second: unknown dtype {dtype!r}; "
                    "allowed: float32, float16, bfloat16"
                )
            _positive(value, f"compute_flops_per_second[{dtype}]")
        for key in (
            "memory_bandwidth_bytes_per_second",
            "memory_bytes",
            "gemm_efficiency_ratio",
            "elementwise_bandwidth_ratio",
            "gemm_half_size",
        ):
            if key in data:
                _positive(data[key], key)
        for key in (
            "dispatch_seconds",
            "kernel_floor_seconds",
            "reserved_memory_bytes",
            "module_seconds",
        ):
            if key in data:
                _non_negative(data[key], key)
        for key in ("tanh_elements_per_second", "exp_elements_per_second", "fill_bandwidth_ratio"):
            if data.get(key) is not None:
                _positive(data[key], key)
        if "cold_host_ratio" in data:
            _positive(data["cold_host_ratio"], "cold_host_ratio")
            if data["cold_host_ratio"] < 1:
                raise InputError(
                    f"cold_host_ratio must be at least 1 (cold caches never make the host "
                    f"faster), got {data['cold_host_ratio']!r}"
                )
        ladder = bandwidth_ladder(data.get("bandwidth_ratio_by_working_set", ()))
        if data.get("first_touch_seconds_per_byte") is not None:
            _non_negative(data["first_touch_seconds_per_byte"], "first_touch_seconds_per_byte")
        if data["kind"] not in ("cpu", "gpu"):
            raise InputError(f"kind must be cpu or gpu, got {data['kind']!r}")
        values = dict(data)
        values["compute_flops_per_second"] = {k: float(v) for k, v in rates.items()}
        values["memory_bytes"] = int(values["memory_bytes"])
        values["reserved_memory_bytes"] = int(values.get("reserved_memory_bytes", 0))
        values["overlap"] = bool(values["overlap"])
        values["extra"] = dict(values.get("extra") or {})
        values["bandwidth_ratio_by_working_set"] = ladder
        return cls(**values)


def bandwidth_ladder(value: Any) -> tuple[tuple[float, float], ...]:
    """``bandwidth_ratio_by_working_set`` from JSON: pairs of positive numbers, sizes rising;
    an InputError saying what is wrong otherwise."""
    key = "bandwidth_ratio_by_working_set"
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{key} must be a list of [bytes, ratio] pairs, got {value!r}")
    pairs = []
    for pair in value:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InputError(f"{key}: each entry must be a [bytes, ratio] pair, got {pair!r}")
        _positive(pair[0], f"{key} bytes")
        _positive(pair[1], f"{key} ratio")
        pairs.append((float(pair[0]), float(pair[1])))
    if any(a[0] >= b[0] for a, b in itertools.pairwise(pairs)):
        raise InputError(f"{key}: working-set sizes must rise, got {[p[0] for p in pairs]}")
    return tuple(pairs)


def _positive(value: Any, key: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or value != value
    ):
        raise InputError(f"{key} must be a positive number, got {value!r}")


def _non_negative(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InputError(f"{key} must be a non-negative number, got {value!r}")


def params_from_spec(spec: DeviceSpec, dtype: str | None = None) -> DeviceParams:
    """Datasheet defaults for a catalog GPU: the peaks with public efficiencies, eager dispatch.

    ``dtype`` is accepted for symmetry with the calibration (all of the spec's dtypes are kept).
    """
    if dtype is not None and dtype not in spec.peak_flops_per_second:
        raise InputError(
            f"{spec.name} has no {dtype} rate; available: {', '.join(spec.peak_flops_per_second)}"
        )
    return DeviceParams(
        name=spec.name,
        kind=spec.kind,
        compute_flops_per_second=dict(spec.peak_flops_per_second),
        memory_bandwidth_bytes_per_second=spec.memory_bandwidth_bytes_per_second
        * DEFAULT_COPY_EFFICIENCY_RATIO,
        dispatch_seconds=DEFAULT_GPU_DISPATCH_SECONDS,
        kernel_floor_seconds=DEFAULT_GPU_KERNEL_FLOOR_SECONDS,
        overlap=True,
        memory_bytes=spec.memory_bytes,
        gemm_efficiency_ratio=DEFAULT_GEMM_EFFICIENCY_RATIO,
        gemm_half_size=DEFAULT_GPU_GEMM_HALF_SIZE,
        elementwise_bandwidth_ratio=0.8,
        reserved_memory_bytes=DEFAULT_GPU_RESERVED_BYTES,
        module_seconds=DEFAULT_GPU_MODULE_SECONDS,
        source="datasheet",
    )


def cpu_params(
    compute_flops_per_second: dict[str, float],
    memory_bandwidth_bytes_per_second: float,
    dispatch_seconds: float,
    memory_bytes: int,
    name: str = "cpu",
) -> DeviceParams:
    """Defaults for a CPU: no overlap (the same threads dispatch and compute), no kernel floor."""
    return DeviceParams(
        name=name,
        kind="cpu",
        compute_flops_per_second=dict(compute_flops_per_second),
        memory_bandwidth_bytes_per_second=memory_bandwidth_bytes_per_second,
        dispatch_seconds=dispatch_seconds,
        kernel_floor_seconds=0.0,
        overlap=False,
        memory_bytes=memory_bytes,
        gemm_efficiency_ratio=1.0,
        gemm_half_size=32.0,
        elementwise_bandwidth_ratio=1.0,
        source="probes",
    )


def without_host_overhead(params: DeviceParams) -> DeviceParams:
    """The same device running a compiled forward (CUDA graph replay, TensorRT, torch.compile
    with graphs): no per-op or per-module host cost; the per-kernel device floor remains."""
    return replace(
        params, dispatch_seconds=0.0, module_seconds=0.0, source=f"{params.source}+compiled"
    )
