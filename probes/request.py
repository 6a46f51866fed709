"""The frozen request every calibration probe takes and the frozen result it returns.

A probe is one module exposing ``run(request) -> ProbeResult`` (see ``probes/__init__.py`` for the
registry). The result carries its raw samples, so the result document shows how a figure was
reached, not only the figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scaleprobe.probes.timing import Measurement, TimingRequest

DTYPES = ("float32", "float16", "bfloat16")
OUTCOMES = ("ok", "failed", "skipped_busy", "skipped_memory", "skipped_budget")


@dataclass(frozen=True)
class ProbeRequest:
    """What a calibration probe may use: the device, the dtype, a memory cap and a time budget."""

    device: str = "cpu"  # "cpu" or "cuda:N"
    dtype: str = "float32"
    memory_cap_bytes: int = 2 * 1024**3
    timing: TimingRequest = field(default_factory=TimingRequest)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device {self.device!r} is not 'cpu' or 'cuda:N'")
        if self.memory_cap_bytes <= 0:
            raise ValueError("memory_cap_bytes must be positive")

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class ProbeResult:
    """One probe's figure (``value`` in ``unit``), its raw measurement and probe-specific detail."""

    probe: str
    value: float
    unit: str
    measurement: Measurement
    dtype: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    # Device time of auxiliary measurements (e.g. the small products) beyond ``measurement``.
    other_device_seconds: float = 0.0

    @property
    def device_seconds(self) -> float:
        return self.measurement.device_seconds + self.other_device_seconds

    def to_dict(self) -> dict[str, Any]:
        """The probe's entry in the worker's result document (outcome fields are added there)."""
        return {
            "probe": self.probe,
            "dtype": self.dtype,
            "value": self.value,
            "unit": self.unit,
            "device_seconds": self.device_seconds,
            "samples_seconds": self.measurement.kept_samples(),
            "timing": self.measurement.summary(),
            "detail": dict(self.detail),
        }
