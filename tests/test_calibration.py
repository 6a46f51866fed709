"""The calibration document: dump, load, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scaleprobe.models.calibration import SCHEMA, dump_calibration, load_calibration
from scaleprobe.models.devices import cpu_params
from scaleprobe.models.errors import InputError

PARAMS = cpu_params({"float32": 1.9e11}, 1.5e10, 9e-7, 24 * 1024**3)


def test_round_trip(tmp_path: Path) -> None:
    document = dump_calibration(
        PARAMS,
        device={"device": "cpu"},
        environment={"threads": 2},
        fit={"mape_ratio": 0.03},
        created_at_seconds=1.0,
    )
    assert document["schema"] == SCHEMA and document["created_at_seconds"] == 1.0
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(document))
    assert load_calibration(path) == PARAMS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not valid JSON"),
        ("[]", "a calibration document is a JSON object"),
        ('{"schema": "other/1", "params": {}}', "not a scaleprobe calibration"),
        ('{"schema": "scaleprobe.calibration/2", "params": {}}', "unsupported calibration schema"),
        ('{"schema": "scaleprobe.calibration/1"}', "no 'params'"),
        (
            '{"schema": "scaleprobe.calibration/1", "params": {"name": "cpu"}}',
            "device parameters miss",
        ),
    ],
)
def test_bad_files_are_input_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "calib.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_calibration(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "nope.json")


def test_a_document_from_before_the_cpu_probe_figures_loads(tmp_path: Path) -> None:
    """scaleprobe.calibration/1 documents written before first_touch_seconds_per_byte,
    tanh_elements_per_second, exp_elements_per_second, cold_host_ratio,
    bandwidth_ratio_by_working_set and fill_bandwidth_ratio existed load as they did: the figures
    absent, the host cost without a cold-cache factor (1), elementwise kernels at DRAM rates (no
    ladder), the bias fill at the elementwise ratio (None)."""
    params = {
        "name": "cpu",
        "kind": "cpu",
        "compute_flops_per_second": {"float32": 1.37e11},
        "memory_bandwidth_bytes_per_second": 4.08e10,
        "dispatch_seconds": 9e-7,
        "kernel_floor_seconds": 0.0,
        "overlap": False,
        "memory_bytes": 24 * 1024**3,
        "gemm_efficiency_ratio": 1.0,
        "gemm_half_size": 30.0,
        "elementwise_bandwidth_ratio": 0.5,
        "reserved_memory_bytes": 0,
        "module_seconds": 8.1e-6,
        "source": "refit",
        "extra": {},
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": "scaleprobe.calibration/1", "params": params}))
    loaded = load_calibration(path)
    assert loaded.first_touch_seconds_per_byte is None
    assert loaded.tanh_elements_per_second is None and loaded.exp_elements_per_second is None
    assert loaded.to_dict() == {
        **params,
        "first_touch_seconds_per_byte": None,
        "tanh_elements_per_second": None,
        "exp_elements_per_second": None,
        "cold_host_ratio": 1.0,
        "bandwidth_ratio_by_working_set": [],
        "fill_bandwidth_ratio": None,
    }
