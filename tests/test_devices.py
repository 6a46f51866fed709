"""The device catalog and the calibratable parameters."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from scaleprobe.models.devices import (
    CATALOG,
    DeviceParams,
    cpu_params,
    find_device,
    params_from_spec,
    without_host_overhead,
)
from scaleprobe.models.errors import InputError


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("A100-80GB", "A100-80GB"),
        ("a100", "A100-80GB"),
        ("NVIDIA A100 80GB", "A100-80GB"),
        ("h100 sxm", "H100-SXM"),
        ("t4", "T4"),
        ("Tesla-T4", "T4"),
        ("l40s", "L40S"),
    ],
)
def test_lookup_is_case_insensitive_with_aliases(query: str, name: str) -> None:
    assert find_device(query).name == name


def test_unknown_gpu_lists_the_catalog() -> None:
    with pytest.raises(InputError, match="unknown GPU 'V100'") as error:
        find_device("V100")
    assert all(name in str(error.value) for name in CATALOG)


def test_catalog_figures_from_the_datasheets() -> None:
    a100 = find_device("A100-80GB")
    assert a100.peak_flops_per_second["float16"] == 312e12
    assert a100.memory_bandwidth_bytes_per_second == 2039e9
    assert find_device("H200").memory_bytes == 141e9
    assert "bfloat16" not in find_device("T4").peak_flops_per_second  # Turing: no bf16 tensor cores
    assert len(CATALOG) == 9


def test_datasheet_params_apply_public_efficiencies() -> None:
    spec = find_device("H100-SXM")
    params = params_from_spec(spec)
    assert params.overlap and params.kind == "gpu"
    assert 0.80 <= params.rate("float16") / spec.peak_flops_per_second["float16"] <= 0.87
    assert (
        0.84
        <= params.memory_bandwidth_bytes_per_second / spec.memory_bandwidth_bytes_per_second
        <= 0.90
    )
    assert params.dispatch_seconds > 0 and params.module_seconds > 0
    with pytest.raises(InputError, match="T4 has no bfloat16 rate"):
        params_from_spec(find_device("T4"), "bfloat16")


def test_round_trip_through_json() -> None:
    params = params_from_spec(find_device("L4"))
    again = DeviceParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert again == params
    cpu = cpu_params({"float32": 1.9e11}, 1.5e10, 1e-6, 16 * 1024**3)
    assert DeviceParams.from_dict(cpu.to_dict()) == cpu
    assert not cpu.overlap


def test_the_cpu_probe_figures_are_optional_and_round_trip() -> None:
    """Parameters written before the first-touch and transcendental figures existed (state files,
    calibration documents) load with them absent; written with them, they come back."""
    cpu = cpu_params({"float32": 1.9e11}, 1.5e10, 1e-6, 16 * 1024**3)
    old = {
        k: v
        for k, v in cpu.to_dict().items()
        if k
        not in (
            "first_touch_seconds_per_byte",
            "tanh_elements_per_second",
            "exp_elements_per_second",
            "cold_host_ratio",
            "bandwidth_ratio_by_working_set",
        )
    }
    loaded = DeviceParams.from_dict(old)
    assert loaded == cpu and loaded.first_touch_seconds_per_byte is None
    assert loaded.cold_host_ratio == 1.0 and loaded.bandwidth_ratio_by_working_set == ()
    assert loaded.tanh_elements_per_second is None and loaded.exp_elements_per_second is None
    measured = replace(
        cpu,
        first_touch_seconds_per_byte=3.2e-10,
        tanh_elements_per_second=6.8e8,
        exp_elements_per_second=1.9e9,
        cold_host_ratio=2.6,
        bandwidth_ratio_by_working_set=((524288.0, 4.4), (8388608.0, 2.2), (536870912.0, 1.0)),
    )
    assert DeviceParams.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured


def test_compiled_runtime_drops_only_the_host_costs() -> None:
    params = params_from_spec(find_device("A10G"))
    compiled = without_host_overhead(params)
    assert compiled.dispatch_seconds == compiled.module_seconds == 0
    assert compiled.kernel_floor_seconds == params.kernel_floor_seconds


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"memory_bandwidth_bytes_per_second": -1}, "must be a positive number"),
        ({"compute_flops_per_second": {"int8": 1e12}}, "unknown dtype 'int8'"),
        ({"compute_flops_per_second": {}}, "must map a dtype"),
        ({"kind": "tpu"}, "kind must be cpu or gpu"),
        ({"bogus": 1}, r"unknown device parameter\(s\): bogus"),
        ({"dispatch_seconds": "fast"}, "must be a non-negative number"),
        ({"first_touch_seconds_per_byte": -1e-10}, "first_touch_seconds_per_byte must be a non"),
        ({"tanh_elements_per_second": 0}, "tanh_elements_per_second must be a positive"),
        ({"exp_elements_per_second": "fast"}, "exp_elements_per_second must be a positive"),
        ({"cold_host_ratio": 0.5}, "cold_host_ratio must be at least 1"),
        ({"cold_host_ratio": None}, "cold_host_ratio must be a positive"),
        ({"bandwidth_ratio_by_working_set": 2.0}, "must be a list of \\[bytes, ratio\\] pairs"),
        ({"bandwidth_ratio_by_working_set": [[1e6]]}, "each entry must be a \\[bytes, ratio\\]"),
        ({"bandwidth_ratio_by_working_set": [[1e6, 0]]}, "ratio must be a positive number"),
        ({"bandwidth_ratio_by_working_set": [[2e6, 3], [1e6, 4]]}, "sizes must rise"),
    ],
)
def test_bad_parameters_are_input_errors(change: dict[str, object], message: str) -> None:
    data = {**params_from_spec(find_device("L4")).to_dict(), **change}
    with pytest.raises(InputError, match=message):
        DeviceParams.from_dict(data)


def test_missing_rate_names_what_is_available() -> None:
    cpu = cpu_params({"float32": 1.9e11}, 1.5e10, 1e-6, 16 * 1024**3)
    with pytest.raises(InputError, match="no compute rate for bfloat16; available: float32"):
        cpu.rate("bfloat16")
