"""The calibration document: ``once --json`` prints it, ``predict --calibration`` reads it.

A JSON object with a schema version, the device parameters (``DeviceParams.to_dict()``), and
context a reader needs to trust them (the device identity, the torch/transformers versions and
thread count, the probe values, the fit's MAPE)::

    {"schema": "scaleprobe.calibration/1",
     "created_at_seconds": 1795000000.0,
     "device": {"device": "cpu", "modelName": "Intel Xeon ...", ...},
     "environment": {"torch_version": "2.13.0+cpu", "threads": 2, ...},
     "params": {"name": "cpu", "kind": "cpu", "compute_flops_per_second": {"float32": 1.9e11}, ...},
     "probes": {...}, "fit": {"mape_ratio": 0.03, ...}}

Only ``schema`` and ``params`` are required to load it. A document of another major schema version,
or a malformed one, is an InputError naming the problem.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from scaleprobe.models.devices import DeviceParams
from scaleprobe.models.errors import InputError

SCHEMA = "scaleprobe.calibration/1"


def dump_calibration(
    params: DeviceParams,
    *,
    device: dict[str, Any] | None = None,
    environment: dict[str, Any] | None = None,
    probes: dict[str, Any] | None = None,
    fit: dict[str, Any] | None = None,
    created_at_seconds: float | None = None,
) -> dict[str, Any]:
    """The calibration document for ``params`` (JSON-serialisable)."""
    return {
        "schema": SCHEMA,
        "created_at_seconds": time.time()
        if created_at_seconds is None
        else float(created_at_seconds),
        "device": dict(device or {}),
        "environment": dict(environment or {}),
        "params": params.to_dict(),
        "probes": dict(probes or {}),
        "fit": dict(fit or {}),
    }


def parse_calibration(document: Any, source: str = "calibration") -> DeviceParams:
    """The device parameters of a calibration document already read from JSON."""
    if not isinstance(document, dict):
        raise InputError(
            f"{source}: a calibration document is a JSON object with 'schema' and 'params'"
        )
    schema = document.get("schema")
    if not isinstance(schema, str) or not schema.startswith("scaleprobe.calibration/"):
        raise InputError(
            f"{source}: not a scaleprobe calibration (schema {schema!r}; expected {SCHEMA!r}, "
            "as written by `scaleprobe once --json`)"
        )
    if schema.split("/", 1)[1].split(".")[0] != SCHEMA.split("/")[1]:
        raise InputError(
            f"{source}: unsupported calibration schema {schema!r}; this version reads {SCHEMA!r}"
        )
    if "params" not in document:
        raise InputError(f"{source}: no 'params' in the calibration document")
    try:
        return DeviceParams.from_dict(document["params"])
    except InputError as error:
        raise InputError(f"{source}: {error}") from None


def load_calibration(path: str | Path) -> DeviceParams:
    """Read a calibration file; a missing, unreadable or malformed file is an InputError."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            f"calibration file {file} does not exist "
            "(write one with `scaleprobe once --json > FILE`)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read calibration file {file}: {error}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{file}: not valid JSON ({error})") from None
    return parse_calibration(document, source=str(file))
