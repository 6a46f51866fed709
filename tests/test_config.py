"""Config validation: every problem listed at once, in plain words; exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from scaleprobe.exporter.config import (
    Config,
    default_config,
    detect_devices,
    load_config,
    parse_bytes,
    resolve_devices,
    series_count,
)
from scaleprobe.exporter.cycle import worker_command
from scaleprobe.models.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


class FakeNvml:
    """NVML as pynvml exposes it, with ``count`` GPUs (or failing to initialise)."""

    def __init__(self, count: int, fail: bool = False) -> None:
        self.count, self.fail, self.shut_down = count, fail, False

    def nvmlInit(self) -> None:
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlShutdown(self) -> None:
        self.shut_down = True


NO_GPU = FakeNvml(0, fail=True)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scaleprobe.yml"
    path.write_text(text)
    return path


def problems_of(path: Path, nvml: Any = NO_GPU) -> list[str]:
    with pytest.raises(InputError) as caught:
        load_config(path, nvml=nvml)
    lines = str(caught.value).splitlines()
    return [line.strip().removeprefix("- ") for line in lines[1:]]


def test_the_example_config_is_valid_and_documents_every_key() -> None:
    path = ROOT / "examples" / "scaleprobe.yml"
    config = load_config(path, nvml=NO_GPU)
    assert [m.name for m in config.models] == [
        "distilbert-base",
        "bert-base",
        "bigbird-roberta-base",
    ]
    text = path.read_text()
    for key in ("devices", "dtype", "grid", "schedule", "guard", "worker", "state", "baseline"):
        assert f"\n{key}:" in text
    for field_name in (
        "interval_seconds",
        "jitter_seconds",
        "cycle_budget_seconds",
        "points_per_cycle",
        "max_utilization_ratio",
        "min_free_memory_bytes",
        "memory_cap_bytes",
        "timeout_seconds",
        "backoff_initial_seconds",
        "backoff_max_seconds",
        "history_max_samples",
        "history_max_age_seconds",
        "series_cap",
    ):
        assert f"{field_name}:" in text, field_name


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), nvml=NO_GPU)
    assert config == replace(default_config(devices=("cpu",)), devices=("auto",))


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
devices: [cuda:0, gpu1]
dtype: float61
models:
  - model: bert-base
    serving: {batch_size: 0, seq_len: 128}
  - model: ./nope
  - model: gpt2
  - model: bert-base
    nmae: x
grid:
  batch_sizes: [1, 8, "x"]
  seq_lens: [128, 9000]
schedul:
  interval_seconds: 10
guard:
  max_utilization_ratio: 1.5
  memory_cap_bytes: lots
worker:
  timeout_seconds: -1
  command: python
baseline: {mode: last}
series_cap: true
""",
    )
    problems = problems_of(path)
    expected = [
        "schedul: unknown key; did you mean 'schedule'?",
        "devices[1]: 'gpu1' is not a device; allowed: cpu, cuda:N",
        "dtype: 'float61' is not allowed; did you mean 'float16'? allowed: auto, float32, float16",
        "models[0].serving.batch_size: 0 is out of range; allowed: at least 1",
        "models[1].model: directory ./nope does not exist",
        "models[2].model: unknown model 'gpt2'",
        "models[3].nmae: unknown key; did you mean 'name'?",
        "models[3].name: 'bert-base' is used twice",
        "grid.batch_sizes[2]: expected an integer, got 'x'",
        "grid.seq_lens: [9000] is longer than bert-base's 512 positions; allowed: at most 512",
        "guard.max_utilization_ratio: 1.5 is out of range; allowed: at least 0 and at most 1",
        "guard.memory_cap_bytes: expected a byte size",
        "worker.timeout_seconds: -1 is out of range; allowed: more than 0",
        "worker.command: expected a list of strings",
        "baseline.mode: 'last' is not allowed; allowed: first, none",
        "series_cap: expected an integer, got a boolean (true)",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected), problems


def test_a_model_directory_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 1000,
            }
        )
    )
    path = write(
        tmp_path,
        "models:\n  - model: ./tiny\n    serving: {batch_size: 2, seq_len: 32}\n"
        "grid: {batch_sizes: [1, 2], seq_lens: [16, 32]}\n",
    )
    config = load_config(path, nvml=NO_GPU)
    assert config.models[0].name == "tiny"
    assert config.models[0].source == str(model_dir.resolve())
    assert (config.models[0].serving_batch_size, config.models[0].serving_seq_len) == (2, 32)


def test_an_unsupported_architecture_is_a_problem(tmp_path: Path) -> None:
    model_dir = tmp_path / "gpt"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    problems = problems_of(write(tmp_path, "models: [./gpt]\n"))
    assert len(problems) == 1 and problems[0].startswith("models[0].model:"), problems
    assert "gpt2" in problems[0]


def test_a_grid_over_the_series_cap_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "grid: {batch_sizes: [1, 2, 4, 8, 16, 32], seq_lens: [16, 32, 64, 128, 256, 512]}\n"
        "series_cap: 500\n",
    )
    (problem,) = problems_of(path)
    assert problem.startswith("grid: 3 models x 6 batch sizes x 6 seq_lens on 1 device(s)")
    assert "over series_cap (500)" in problem


def test_series_count_grows_with_devices_and_grid() -> None:
    config = default_config(devices=("cpu",))
    one = series_count(config, 1)
    assert series_count(config, 2) == 2 * one
    bigger = replace(config, batch_sizes=(1, 2, 4, 8))
    assert series_count(bigger, 1) > one


def test_devices_auto_follows_nvml() -> None:
    gpus = FakeNvml(2)
    assert detect_devices(gpus) == ("cuda:0", "cuda:1")
    assert gpus.shut_down
    assert detect_devices(FakeNvml(0)) == ("cpu",)
    assert detect_devices(NO_GPU) == ("cpu",)


def test_auto_defaults_differ_on_a_gpu(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "devices: auto\n"), nvml=FakeNvml(1))
    assert resolve_devices(config, FakeNvml(1)) == ("cuda:0",)
    assert config.dtype_for("cuda:0") == "float16"
    assert config.dtype_for("cpu") == "float32"
    assert max(config.batch_sizes) > max(default_config(devices=("cpu",)).batch_sizes)


def test_explicit_devices_and_sizes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "devices: [cuda:0, cuda:1]\ndtype: bfloat16\n"
        "guard: {min_free_memory_bytes: 512MiB, memory_cap_bytes: 2GB}\n"
        "state: {file: state/s.json}\nworker: {command: [python, fake.py]}\n",
    )
    config = load_config(path, nvml=NO_GPU)
    assert config.devices == ("cuda:0", "cuda:1")
    assert config.dtype_for("cuda:1") == "bfloat16"
    assert config.min_free_memory_bytes == 512 * 2**20
    assert config.memory_cap_bytes == 2 * 10**9
    assert config.state_file == str(tmp_path / "state" / "s.json")
    assert config.worker_command == ("python", "fake.py")


def test_parse_bytes() -> None:
    assert parse_bytes(1024) == 1024
    assert parse_bytes("1 KiB") == 1024
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("lots") is None
    assert parse_bytes(True) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("devices: [\n", "is not valid YAML at line"),
        ("- a\n- b\n", "expected a YAML mapping of keys at the top, got a list"),
    ],
)
def test_not_yaml_or_not_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        load_config(write(tmp_path, text), nvml=NO_GPU)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yml")


def test_jitter_and_timeout_are_checked_against_their_neighbours(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "schedule: {interval_seconds: 10, jitter_seconds: 10, cycle_budget_seconds: 60}\n"
        "worker: {timeout_seconds: 30}\n",
    )
    problems = problems_of(path)
    assert any(p.startswith("schedule.jitter_seconds: 10 is out of range") for p in problems)
    assert any(p.startswith("worker.timeout_seconds: 30 is out of range") for p in problems)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scaleprobe.exporter.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = run_cli("check-config", str(ROOT / "examples" / "scaleprobe.yml"))
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("\n") == 1 and "valid" in good.stdout
    bad = run_cli("check-config", str(write(tmp_path, "dtype: fp16\nintreval: 3\n")))
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "dtype: 'fp16' is not allowed" in bad.stderr
    assert "intreval: unknown key" in bad.stderr
    assert "2 problems" in bad.stderr


def test_config_is_frozen() -> None:
    config: Config = default_config(devices=("cpu",))
    with pytest.raises(AttributeError):
        config.dtype = "float16"  # type: ignore[misc]


def test_the_worker_runs_niced_unless_told_otherwise(tmp_path: Path) -> None:
    assert default_config(nvml=NO_GPU).worker_nice == 10
    niced = worker_command(load_config(write(tmp_path, "worker: {nice: 7}\n"), nvml=NO_GPU))
    assert Path(niced[0]).name == "nice" and niced[1:3] == ["-n", "7"]
    assert niced[3:] == [sys.executable, "-m", "scaleprobe.probes.worker"]
    plain = load_config(write(tmp_path, "worker: {nice: 0, command: [w, x]}\n"), nvml=NO_GPU)
    assert worker_command(plain) == ["w", "x"]
    for bad, message in (("20", "20 is out of range"), ("1.5", "expected an integer")):
        problems = problems_of(write(tmp_path, f"worker: {{nice: {bad}}}\n"))
        assert len(problems) == 1 and problems[0].startswith(f"worker.nice: {message}"), problems
