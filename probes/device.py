"""What the probes need to know about the device: torch handles, timers, cache and memory sizes.

Paths (``/proc/cpuinfo``, ``/sys``) and the ``cuda`` module are parameters so tests hand in
fixtures and fakes; the defaults are the real machine.
"""

from __future__ import annotations

import gc
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scaleprobe.probes.timing import CudaEventTimer, HostTimer, Timer

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Used when neither /sys nor lscpu tells us the last-level cache: large for a CPU, so buffers sized
# from it stay out of cache on most machines.
FALLBACK_LLC_BYTES = 32 * 1024**2


def torch_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[name]


def dtype_bytes(name: str) -> int:
    return 4 if name == "float32" else 2


def default_timer(device: str, cuda: Any = None) -> Timer:
    """CUDA events on a GPU (the device's own clock), a monotonic host clock on the CPU."""
    if device.startswith("cuda"):
        return CudaEventTimer(cuda if cuda is not None else torch.cuda)
    return HostTimer()


def synchronizer(device: str, cuda: Any = None) -> Callable[[], object]:
    """A callable that waits for queued device work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        module = cuda if cuda is not None else torch.cuda
        return lambda: module.synchronize()
    return lambda: None


def cuda_index(device: str) -> int:
    """``"cuda:1"`` -> 1; ``"cuda"`` -> 0."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


def release_memory(device: str, cuda: Any = None) -> None:
    """Free what a failed or finished probe left behind (after an out-of-memory above all)."""
    gc.collect()
    if device.startswith("cuda"):
        (cuda if cuda is not None else torch.cuda).empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, a host MemoryError, or an allocator RuntimeError saying so."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
    )


def cpu_llc_bytes(
    sys_cpu: Path = Path("/sys/devices/system/cpu/cpu0/cache"),
    lscpu: Callable[[], str] | None = None,
) -> tuple[int, str]:
    """The CPU's last-level cache size in bytes and where it was read.

    /sys first (the highest ``level`` among data/unified caches), then ``lscpu``'s "L3 cache" or
    "L2 cache" line (which may sum the instances: still the right order of magnitude for sizing a
    buffer that must not fit), then a 32 MiB fallback.
    """
    best: tuple[int, int] | None = None
    for index in sorted(sys_cpu.glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text().strip())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and (best is None or level > best[0]):
            best = (level, size)
    if best is not None:
        return best[1], f"{sys_cpu}/index*/size (L{best[0]})"
    text = lscpu() if lscpu is not None else _run_lscpu()
    for name in ("L3 cache", "L2 cache"):
        match = re.search(rf"^{name}:\s*([0-9.]+\s*[KMG]i?B?)", text, re.MULTILINE)
        if match:
            return _parse_size(match.group(1)), f"lscpu {name}"
    return FALLBACK_LLC_BYTES, "fallback (no /sys cache info, no lscpu)"


def _run_lscpu() -> str:
    if shutil.which("lscpu") is None:
        return ""
    try:
        return subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _parse_size(text: str) -> int:
    """``"32768K"``, ``"32 MiB"``, ``"1.5 MB"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a cache size: {text!r}")
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def gpu_l2_bytes(device: str, cuda: Any = None) -> int:
    """The GPU's L2 cache size from the device properties."""
    module = cuda if cuda is not None else torch.cuda
    return int(module.get_device_properties(cuda_index(device)).L2_cache_size)


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The "model name" line of /proc/cpuinfo (empty if unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def host_memory_bytes(meminfo: Path = Path("/proc/meminfo"), field: str = "MemTotal") -> int | None:
    """A field of /proc/meminfo (MemTotal by default; MemAvailable: what can be allocated without
    swapping), in bytes, or None when it cannot be read."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s*(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None
