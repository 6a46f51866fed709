"""The daemon's configuration: a YAML file, checked into a frozen value or a list of every problem.

``load_config(path)`` returns a valid ``Config`` or raises ``InputError`` whose message lists
*every* problem at once, each with its key path, what was wrong and what is allowed (unknown keys
get a "did you mean"). Fixing a config one error per run is the kind of thing operators remember.
``examples/scaleprobe.yml`` documents every key; ``default_config()`` is what ``scaleprobe run``
uses without a file.

The shape::

    devices: auto                  # or [cuda:0, cuda:1] or [cpu]
    dtype: auto                    # float16 on GPUs, float32 on the CPU
    models:
      - model: bert-base           # a preset or a directory holding a config.json
        serving: {batch_size: 8, seq_len: 128}
    grid: {batch_sizes: [1, 8, 32], seq_lens: [128, 512]}
    schedule: {interval_seconds: 300, jitter_seconds: 30, cycle_budget_seconds: 60,
               points_per_cycle: 6}
    guard: {max_utilization_ratio: 0.5, min_free_memory_bytes: 1GiB, memory_cap_bytes: 4GiB}
    worker: {timeout_seconds: 600, command: null, nice: 10, backoff_initial_seconds: 300,
             backoff_max_seconds: 3600}
    state: {file: null, history_max_samples: 2016, history_max_age_seconds: 604800}
    baseline: {mode: first}
    series_cap: 20000
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from scaleprobe.models.errors import InputError

DTYPES = ("float32", "float16", "bfloat16")
BASELINE_MODES = ("first", "none")
_DEVICE_PATTERN = re.compile(r"^(cpu|cuda:\d+)$")
_BYTES_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_BYTE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

# Series per grid point: measured/predicted throughput, latency, overhead share; error; MFU.
SERIES_PER_POINT = 8
# Per model and dtype: MAPE, capacity (sequences and tokens); plus max batch size per seq_len.
SERIES_PER_MODEL = 3
# Per device: identity, up, calibration gauges, probe outcome counters and durations (generous).
SERIES_PER_DEVICE = 48


@dataclass(frozen=True)
class ModelConfig:
    """One inference model to probe, and the point it is served at (for predicted capacity)."""

    name: str  # the `model` label
    source: str  # a preset name or an absolute config directory
    serving_batch_size: int
    serving_seq_len: int


@dataclass(frozen=True)
class Config:
    devices: tuple[str, ...]  # ("auto",) or explicit: ("cuda:0", "cuda:1"), ("cpu",)
    dtype: str  # "auto" or one of DTYPES
    models: tuple[ModelConfig, ...]
    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    interval_seconds: float = 300.0
    jitter_seconds: float = 30.0
    cycle_budget_seconds: float = 60.0
    points_per_cycle: int = 6
    max_utilization_ratio: float = 0.5
    min_free_memory_bytes: int = 2**30
    memory_cap_bytes: int = 4 * 2**30
    worker_timeout_seconds: float = 600.0
    worker_command: tuple[str, ...] | None = None  # None: python -m scaleprobe.probes.worker
    worker_nice: int = 10  # added to the exporter's niceness: the serving workload wins the CPU
    backoff_initial_seconds: float = 300.0
    backoff_max_seconds: float = 3600.0
    state_file: str | None = None  # None: $XDG_STATE_HOME/scaleprobe/state.json
    history_max_samples: int = 2016  # a week at the default 5-minute interval
    history_max_age_seconds: float = 7 * 86400.0
    baseline_mode: str = "first"
    series_cap: int = 20000
    source: str = field(default="built-in defaults", compare=False)

    def dtype_for(self, device: str) -> str:
        """The dtype probed on ``device``: explicit, or float16 on a GPU and float32 on the CPU."""
        if self.dtype != "auto":
            return self.dtype
        return "float32" if device == "cpu" else "float16"

    def grid(self) -> tuple[tuple[int, int], ...]:
        """Every (batch_size, seq_len) of the grid, small first."""
        return tuple((b, s) for b in self.batch_sizes for s in self.seq_lens)


def detect_devices(nvml: Any = None) -> tuple[str, ...]:
    """Every NVIDIA GPU NVML reports (``cuda:0``, ...), else ``("cpu",)``.

    ``nvml`` defaults to ``pynvml`` (importable without torch); tests pass a fake. Any NVML failure
    (no driver, no library) means no GPU: the daemon then probes the CPU.
    """
    try:
        if nvml is None:
            import pynvml

            nvml = pynvml
        nvml.nvmlInit()
    except Exception:
        return ("cpu",)
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        count = 0
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


def resolve_devices(config: Config, nvml: Any = None) -> tuple[str, ...]:
    """The devices to probe: ``auto`` resolved through NVML, else the configured list."""
    if config.devices == ("auto",):
        return detect_devices(nvml)
    return config.devices


def series_count(config: Config, device_count: int) -> int:
    """An upper bound on the series the exporter exposes for ``config`` (the cardinality)."""
    grid_points = len(config.batch_sizes) * len(config.seq_lens)
    per_model = grid_points * SERIES_PER_POINT + SERIES_PER_MODEL + len(config.seq_lens)
    return device_count * (SERIES_PER_DEVICE + len(config.models) * per_model)


def default_config(devices: tuple[str, ...] | None = None, nvml: Any = None) -> Config:
    """Defaults for the local device: the three paper models on a small grid.

    On the CPU the grid is small enough (and the points per cycle few enough) that a cycle ends in
    about a minute on a 2-core machine; on a GPU it spans the framework-bound corner (batch 1,
    short sequences) to the compute-bound one, where the two-point scaling needs its measurements.
    """
    devices = devices if devices is not None else detect_devices(nvml)
    on_gpu = devices != ("cpu",)
    if on_gpu:
        batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
        seq_lens: tuple[int, ...] = (128, 256, 512)
        serving = (32, 512)
        points, budget = 8, 30.0
    else:
        batch_sizes, seq_lens = (1, 4, 8), (32, 128, 256)
        serving = (8, 128)
        points, budget = 5, 60.0
    models = tuple(
        ModelConfig(name, name, serving[0], serving[1])
        for name in ("distilbert-base", "bert-base", "bigbird-roberta-base")
    )
    return Config(
        devices=devices,
        dtype="auto",
        models=models,
        batch_sizes=batch_sizes,
        seq_lens=seq_lens,
        cycle_budget_seconds=budget,
        points_per_cycle=points,
    )


# --- validation ------------------------------------------------------------------------------


class _Checker:
    """Collects every problem; each check returns a usable value (or None) and never raises."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def keys(self, key: str, mapping: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for name in mapping:
            if name in allowed:
                continue
            where = f"{key}.{name}" if key else str(name)
            close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.add(where, f"unknown key; {hint}allowed keys: {', '.join(allowed)}")

    def mapping(self, key: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(key, f"expected a mapping of keys, got {_describe(value)}")
            return {}
        return value

    def number(
        self,
        key: str,
        value: Any,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
        integer: bool = False,
    ) -> Any:
        kind = "an integer" if integer else "a number"
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            self.add(key, f"expected {kind}, got {_describe(value)}")
            return None
        if not math.isfinite(value):  # YAML's .nan and .inf are floats
            self.add(key, f"expected a finite number, got {value}")
            return None
        below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        above = maximum is not None and value > maximum
        if below or above:
            self.add(
                key,
                f"{value} is out of range; allowed: {_range(minimum, maximum, exclusive_minimum)}",
            )
            return None
        return value

    def choice(self, key: str, value: Any, allowed: tuple[str, ...]) -> str | None:
        if not isinstance(value, str) or value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.add(key, f"{_describe(value)} is not allowed; {hint}allowed: {', '.join(allowed)}")
            return None
        return value

    def size_bytes(self, key: str, value: Any, *, minimum: int = 0) -> int | None:
        parsed = parse_bytes(value)
        if parsed is None:
            self.add(
                key,
                "expected a byte size (an integer, or like 512MiB, 2GiB, 1GB), "
                f"got {_describe(value)}",
            )
            return None
        if parsed < minimum:
            self.add(key, f"{value} is out of range; allowed: at least {minimum} bytes")
            return None
        return parsed

    def int_list(
        self, key: str, value: Any, *, maximum: int | None = None
    ) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value:
            self.add(key, f"expected a non-empty list of positive integers, got {_describe(value)}")
            return None
        items = [
            self.number(f"{key}[{i}]", v, minimum=1, maximum=maximum, integer=True)
            for i, v in enumerate(value)
        ]
        if any(item is None for item in items):
            return None
        if len(set(items)) != len(items):
            self.add(key, f"contains duplicates {value}; each value may appear once")
            return None
        return tuple(sorted(items))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, (int, float)):
        return f"{value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _range(minimum: float | None, maximum: float | None, exclusive_minimum: bool) -> str:
    low = (
        None
        if minimum is None
        else (f"more than {minimum:g}" if exclusive_minimum else f"at least {minimum:g}")
    )
    high = None if maximum is None else f"at most {maximum:g}"
    return " and ".join(part for part in (low, high) if part)


def parse_bytes(value: Any) -> int | None:
    """``1073741824``, ``"1GiB"``, ``"512 MiB"``, ``"2GB"`` -> bytes; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return None
    match = _BYTES_PATTERN.match(value)
    if match is None:
        return None
    unit = (match.group(2) or "B").lower()
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


TOP_KEYS = (
    "devices",
    "dtype",
    "models",
    "grid",
    "schedule",
    "guard",
    "worker",
    "state",
    "baseline",
    "series_cap",
)
MODEL_KEYS = ("model", "name", "serving")


def _check_devices(check: _Checker, value: Any) -> tuple[str, ...] | None:
    if value == "auto":
        return ("auto",)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        check.add(
            "devices",
            f"expected 'auto' or a list like [cuda:0, cuda:1] or [cpu], got {_describe(value)}",
        )
        return None
    devices: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _DEVICE_PATTERN.match(item):
            check.add(
                f"devices[{i}]",
                f"{_describe(item)} is not a device; allowed: cpu, cuda:N (cuda:0, cuda:1, ...)",
            )
        elif item in devices:
            check.add(f"devices[{i}]", f"'{item}' is listed twice; each device may appear once")
        else:
            devices.append(item)
    if "cpu" in devices and len(devices) > 1:
        check.add("devices", "mixes cpu with GPUs; probe either the GPUs or the CPU")
    return tuple(devices) if len(devices) == len(value) else None


def _check_models(
    check: _Checker,
    value: Any,
    base_dir: Path,
    load_architecture: Callable[[str], Any],
) -> tuple[tuple[ModelConfig, Any], ...]:
    if not isinstance(value, list) or not value:
        check.add("models", f"expected a non-empty list of models, got {_describe(value)}")
        return ()
    models: list[tuple[ModelConfig, Any]] = []
    names: set[str] = set()
    for i, entry in enumerate(value):
        key = f"models[{i}]"
        if isinstance(entry, str):
            entry = {"model": entry}
        entry = check.mapping(key, entry)
        if not entry:
            continue
        check.keys(key, entry, MODEL_KEYS)
        source = entry.get("model")
        if not isinstance(source, str) or not source:
            check.add(
                f"{key}.model", "missing; give a preset name (e.g. bert-base) or a config directory"
            )
            continue
        looks_like_path = "/" in source or source.startswith(".") or source.startswith("~")
        if looks_like_path:
            path = Path(os.path.expanduser(source))
            path = path if path.is_absolute() else base_dir / path
            if not path.is_dir():
                check.add(f"{key}.model", f"directory {source} does not exist (looked in {path})")
                continue
            source = str(path.resolve())
        try:
            architecture = load_architecture(source)
        except InputError as error:
            check.add(f"{key}.model", str(error))
            continue
        name = entry.get("name", getattr(architecture, "name", None) or Path(source).name)
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9._-]+$", name):
            check.add(
                f"{key}.name",
                f"{_describe(name)} is not a label value; allowed: letters, digits, . _ -",
            )
            continue
        if name in names:
            check.add(f"{key}.name", f"'{name}' is used twice; give each model a distinct name")
            continue
        names.add(name)
        serving = check.mapping(f"{key}.serving", entry.get("serving", {}))
        check.keys(f"{key}.serving", serving, ("batch_size", "seq_len"))
        batch = check.number(
            f"{key}.serving.batch_size", serving.get("batch_size", 8), minimum=1, integer=True
        )
        seq = check.number(
            f"{key}.serving.seq_len", serving.get("seq_len", 128), minimum=1, integer=True
        )
        max_positions = getattr(architecture, "max_position_embeddings", None)
        if seq is not None and isinstance(max_positions, int) and seq > max_positions:
            check.add(
                f"{key}.serving.seq_len",
                f"{seq} is longer than {name}'s {max_positions} positions; "
                f"allowed: at most {max_positions}",
            )
        # kept even when its serving point is wrong, so the grid is still checked against it
        models.append((ModelConfig(name, source, batch or 0, seq or 0), architecture))
    return tuple(models)


def config_from_dict(
    raw: Any,
    *,
    base_dir: Path,
    source: str = "<config>",
    nvml: Any = None,
    load_architecture: Callable[[str], Any] | None = None,
) -> Config:
    """Check a parsed YAML document: the ``Config``, or ``InputError`` listing every problem."""
    if load_architecture is None:
        from scaleprobe.models import architecture

        load_architecture = architecture.load_architecture
    check = _Checker()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(
            f"{source}: expected a YAML mapping of keys at the top, got {_describe(raw)}"
        )
    check.keys("", raw, TOP_KEYS)
    values: dict[str, Any] = {}
    devices = _check_devices(check, raw.get("devices", "auto"))
    # Keys left out take the defaults for the devices probed (a GPU grid on GPUs).
    local = detect_devices(nvml) if devices in (None, ("auto",)) else devices
    defaults = default_config(devices=local)
    dtype = check.choice("dtype", raw.get("dtype", "auto"), ("auto", *DTYPES))
    if "models" in raw:
        checked_models = _check_models(check, raw["models"], base_dir, load_architecture)
    else:
        checked_models = tuple((m, load_architecture(m.source)) for m in defaults.models)

    grid = check.mapping("grid", raw.get("grid"))
    check.keys("grid", grid, ("batch_sizes", "seq_lens"))
    batch_sizes = check.int_list(
        "grid.batch_sizes", grid.get("batch_sizes", list(defaults.batch_sizes))
    )
    seq_lens = check.int_list("grid.seq_lens", grid.get("seq_lens", list(defaults.seq_lens)))
    if seq_lens:
        for model, architecture in checked_models:
            max_positions = getattr(architecture, "max_position_embeddings", None)
            too_long = [s for s in seq_lens if isinstance(max_positions, int) and s > max_positions]
            if too_long:
                check.add(
                    "grid.seq_lens",
                    f"{too_long} is longer than {model.name}'s {max_positions} positions; "
                    f"allowed: at most {max_positions}",
                )

    schedule = check.mapping("schedule", raw.get("schedule"))
    check.keys(
        "schedule",
        schedule,
        ("interval_seconds", "jitter_seconds", "cycle_budget_seconds", "points_per_cycle"),
    )
    values["interval_seconds"] = check.number(
        "schedule.interval_seconds", schedule.get("interval_seconds", 300), minimum=1
    )
    values["jitter_seconds"] = check.number(
        "schedule.jitter_seconds", schedule.get("jitter_seconds", 30), minimum=0
    )
    interval, jitter = values["interval_seconds"], values["jitter_seconds"]
    if interval is not None and jitter is not None and jitter >= interval:
        check.add(
            "schedule.jitter_seconds",
            f"{jitter} is out of range; allowed: less than schedule.interval_seconds ({interval})",
        )
    values["cycle_budget_seconds"] = check.number(
        "schedule.cycle_budget_seconds",
        schedule.get("cycle_budget_seconds", defaults.cycle_budget_seconds),
        minimum=0,
        exclusive_minimum=True,
    )
    values["points_per_cycle"] = check.number(
        "schedule.points_per_cycle",
        schedule.get("points_per_cycle", defaults.points_per_cycle),
        minimum=1,
        integer=True,
    )

    guard = check.mapping("guard", raw.get("guard"))
    check.keys(
        "guard", guard, ("max_utilization_ratio", "min_free_memory_bytes", "memory_cap_bytes")
    )
    values["max_utilization_ratio"] = check.number(
        "guard.max_utilization_ratio", guard.get("max_utilization_ratio", 0.5), minimum=0, maximum=1
    )
    values["min_free_memory_bytes"] = check.size_bytes(
        "guard.min_free_memory_bytes", guard.get("min_free_memory_bytes", 2**30)
    )
    values["memory_cap_bytes"] = check.size_bytes(
        "guard.memory_cap_bytes", guard.get("memory_cap_bytes", 4 * 2**30), minimum=2**20
    )

    worker = check.mapping("worker", raw.get("worker"))
    check.keys(
        "worker",
        worker,
        ("timeout_seconds", "command", "nice", "backoff_initial_seconds", "backoff_max_seconds"),
    )
    values["worker_timeout_seconds"] = check.number(
        "worker.timeout_seconds",
        worker.get("timeout_seconds", 600),
        minimum=0,
        exclusive_minimum=True,
    )
    timeout, budget = values["worker_timeout_seconds"], values["cycle_budget_seconds"]
    if timeout is not None and budget is not None and timeout <= budget:
        check.add(
            "worker.timeout_seconds",
            f"{timeout} is out of range; allowed: more than schedule.cycle_budget_seconds "
            f"({budget}), since a cycle also builds its models",
        )
    command = worker.get("command")
    if command is not None and (
        not isinstance(command, list)
        or not command
        or not all(isinstance(c, str) and c for c in command)
    ):
        check.add(
            "worker.command",
            f"expected a list of strings (program and arguments), got {_describe(command)}",
        )
        command = None
    values["worker_command"] = tuple(command) if command else None
    values["worker_nice"] = check.number(
        "worker.nice", worker.get("nice", 10), minimum=0, maximum=19, integer=True
    )
    values["backoff_initial_seconds"] = check.number(
        "worker.backoff_initial_seconds", worker.get("backoff_initial_seconds", 300), minimum=0
    )
    values["backoff_max_seconds"] = check.number(
        "worker.backoff_max_seconds", worker.get("backoff_max_seconds", 3600), minimum=0
    )

    state = check.mapping("state", raw.get("state"))
    check.keys("state", state, ("file", "history_max_samples", "history_max_age_seconds"))
    state_file = state.get("file")
    if state_file is not None and (not isinstance(state_file, str) or not state_file):
        check.add("state.file", f"expected a file path, got {_describe(state_file)}")
        state_file = None
    if isinstance(state_file, str):
        path = Path(os.path.expanduser(state_file))
        state_file = str(path if path.is_absolute() else base_dir / path)
    values["state_file"] = state_file
    values["history_max_samples"] = check.number(
        "state.history_max_samples", state.get("history_max_samples", 2016), minimum=1, integer=True
    )
    values["history_max_age_seconds"] = check.number(
        "state.history_max_age_seconds",
        state.get("history_max_age_seconds", 7 * 86400),
        minimum=0,
        exclusive_minimum=True,
    )

    baseline = raw.get("baseline", {})
    if isinstance(baseline, str):
        baseline = {"mode": baseline}
    baseline = check.mapping("baseline", baseline)
    check.keys("baseline", baseline, ("mode",))
    values["baseline_mode"] = check.choice(
        "baseline.mode", baseline.get("mode", "first"), BASELINE_MODES
    )

    values["series_cap"] = check.number(
        "series_cap", raw.get("series_cap", 20000), minimum=1, integer=True
    )

    if (
        check.problems
        or devices is None
        or dtype is None
        or not checked_models
        or not batch_sizes
        or not seq_lens
    ):
        if not check.problems:  # pragma: no cover - every None above comes with a problem
            check.add("config", "invalid")
        raise InputError(_problem_message(source, check.problems))
    config = Config(
        devices=devices,
        dtype=dtype,
        models=tuple(model for model, _ in checked_models),
        batch_sizes=batch_sizes,
        seq_lens=seq_lens,
        source=source,
        **values,
    )
    device_count = len(resolve_devices(config, nvml))
    count = series_count(config, device_count)
    if count > config.series_cap:
        raise InputError(
            _problem_message(
                source,
                [
                    f"grid: {len(config.models)} models x {len(batch_sizes)} batch sizes x "
                    f"{len(seq_lens)} seq_lens on {device_count} device(s) make up to {count} "
                    f"series, "
                    f"over series_cap ({config.series_cap}); shrink the grid or raise series_cap"
                ],
            )
        )
    return config


def _problem_message(source: str, problems: list[str]) -> str:
    count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
    return f"{source} is not a valid scaleprobe config ({count}):\n" + "\n".join(
        f"  - {p}" for p in problems
    )


def load_config(path: str | os.PathLike[str], *, nvml: Any = None) -> Config:
    """Read and check a YAML config file; raise ``InputError`` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"config file {path} is a directory; give the YAML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"config file {path} cannot be read: {error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path} is not valid YAML{at}: {problem}") from None
    return config_from_dict(raw, base_dir=path.resolve().parent, source=str(path), nvml=nvml)


def config_summary(config: Config, devices: tuple[str, ...]) -> str:
    """One line that says what the config will do."""
    models = ", ".join(m.name for m in config.models)
    dtypes = sorted({config.dtype_for(d) for d in devices})
    return (
        f"{config.source}: valid: {len(devices)} device(s) ({', '.join(devices)}), "
        f"{len(config.models)} model(s) ({models}), "
        f"grid {len(config.batch_sizes)}x{len(config.seq_lens)}, "
        f"dtype {'/'.join(dtypes)}, every {config.interval_seconds:g}s, "
        f"{series_count(config, len(devices))} series (cap {config.series_cap})"
    )


def check_config_command(args: Any) -> int:
    """``scaleprobe check-config PATH``: exit 0 with a one-line summary, or 2 with every problem."""
    config = load_config(args.path)
    print(config_summary(config, resolve_devices(config)))
    return 0


def with_overrides(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with some fields changed (tests and ``once`` use it)."""
    return replace(config, **changes)
