"""Generate scaleprobe's Grafana dashboards as JSON, from code.

Run ``python grafana/build.py`` to rewrite ``grafana/dashboards/*.json`` (or pass a directory to
write elsewhere; tests/test_dashboards.py regenerates into a temporary directory and diffs with the
committed files). Plain dictionaries, no network and no Grafana SDK: the dashboards are small, and a
reader sees the PromQL and the panel options in one place.

Conventions every panel follows (checked by the test):
- the datasource is the dashboard variable ``datasource`` (``{"type": "prometheus", "uid":
  "${datasource}"}``), never a ``${DS_PROMETHEUS}`` import input, which file provisioning cannot
  resolve;
- every panel has a unit and a description; rates use ``$__rate_interval``;
- every query filters by the ``job``, ``instance`` and ``device`` variables;
- scaleprobe's ``device`` label (``cpu``, ``cuda:0``) is unique only within one exporter, so joins
  with ``scaleprobe_device_info`` match ``on (job, instance, device)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance", device=~"$device"'
INFO = f'scaleprobe_device_info{{{SEL}, modelName=~"$gpu"}}'
JOIN = "* on (job, instance, device) group_left (modelName)"
SEQ_PER_S = "suffix: seq/s"
TOKENS_PER_S = "suffix: tok/s"

Panel = dict[str, Any]


def target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> dict:
    """One Prometheus query of a panel; instant queries feed tables and bar charts."""
    query: dict[str, Any] = {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "refId": ref,
    }
    if instant:
        query.update({"instant": True, "range": False, "format": "table"})
    else:
        query.update({"instant": False, "range": True})
    return query


def panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: list[dict],
    *,
    width: int = 12,
    height: int = 8,
    options: dict | None = None,
    custom: dict | None = None,
    transformations: list[dict] | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    decimals: int | None = None,
    overrides: list[dict] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if custom:
        defaults["custom"] = custom
    if thresholds:
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in thresholds],
        }
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "transformations": transformations or [],
        "gridPos": {"w": width, "h": height},
    }


def row(title: str) -> Panel:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": 24, "h": 1},
    }


def timeseries(title: str, description: str, unit: str, targets: list[dict], **kw: Any) -> Panel:
    kw.setdefault("options", {"legend": {"displayMode": "table", "placement": "right"}})
    return panel("timeseries", title, description, unit, targets, **kw)


def table(title: str, description: str, unit: str, targets: list[dict], **kw: Any) -> Panel:
    """An instant-query table: the labels as columns, the value last."""
    hide = {"Time": True, "__name__": True}
    kw.setdefault(
        "transformations",
        [{"id": "organize", "options": {"excludeByName": hide, "renameByName": {"Value": title}}}],
    )
    return panel("table", title, description, unit, targets, **kw)


def convert(field: str, to: str) -> dict:
    return {
        "id": "convertFieldType",
        "options": {"conversions": [{"targetField": field, "destinationType": to}]},
    }


def matrix(
    title: str, description: str, unit: str, expr: str, rows: str, columns: str, **kw: Any
) -> Panel:
    """A bar chart of one instant query pivoted into rows x columns (e.g. seq_len x batch_size).

    Grafana's time-series panels cannot put a label (sequence length) on the x axis; the
    grouping-to-matrix transform turns the labels into a table the bar chart reads.
    """
    kw.setdefault(
        "transformations",
        [
            {
                "id": "groupingToMatrix",
                "options": {
                    "rowField": rows,
                    "columnField": columns,
                    "valueField": "Value",
                    "emptyValue": "null",
                },
            },
            convert(f"{rows}\\{columns}", "number"),
            {"id": "sortBy", "options": {"sort": [{"field": f"{rows}\\{columns}"}]}},
            convert(f"{rows}\\{columns}", "string"),
        ],
    )
    kw.setdefault(
        "options",
        {
            "xField": f"{rows}\\{columns}",
            "orientation": "vertical",
            "groupWidth": 0.8,
            "barWidth": 0.95,
            "showValue": "never",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi"},
        },
    )
    return panel("barchart", title, description, unit, [target(expr, instant=True)], **kw)


def query_variable(name: str, label: str, query: str, *, multi: bool = True) -> dict:
    if not multi:  # one value: the first one Grafana finds, until the user picks another
        current: dict[str, Any] = {}
    else:
        current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": query,  # a plain string: every Grafana version reads it
        "definition": query,
        "refresh": 2,  # on time range change: new nodes and devices appear without a reload
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*",
        "current": current,
        "options": [],
        "hide": 0,
    }


def variables(*extra: dict, one_device: bool = False) -> list[dict]:
    """The datasource, job, instance and device variables every dashboard filters by."""
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "options": [],
            "refresh": 1,
            "regex": "",
        },
        query_variable("job", "Job", "label_values(scaleprobe_build_info, job)"),
        query_variable(
            "instance",
            "Instance",
            'label_values(scaleprobe_build_info{job=~"$job"}, instance)',
            multi=not one_device,
        ),
        query_variable(
            "device",
            "Device",
            'label_values(scaleprobe_device_info{job=~"$job", instance=~"$instance"}, device)',
            multi=not one_device,
        ),
        *extra,
    ]


GPU_VARIABLE = query_variable(
    "gpu",
    "GPU model",
    'label_values(scaleprobe_device_info{job=~"$job", instance=~"$instance"}, modelName)',
)
MODEL_VARIABLE = query_variable(
    "model",
    "Inference model",
    f"label_values(scaleprobe_predicted_capacity_sequences_per_second{{{SEL}}}, model)",
)


def layout(panels: list[Panel]) -> list[Panel]:
    """Place panels left to right, wrapping at Grafana's 24 columns; number them."""
    x = y = row_height = 0
    for number, item in enumerate(panels, start=1):
        grid = item["gridPos"]
        if x + grid["w"] > 24 or item["type"] == "row":
            x, y, row_height = 0, y + row_height, 0
        grid["x"], grid["y"] = x, y
        item["id"] = number
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        if item["type"] == "row":
            x, y, row_height = 0, y + grid["h"], 0
    return panels


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    extra: list[dict],
    *,
    one_device: bool = False,
) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["scaleprobe"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": variables(*extra, one_device=one_device)},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["scaleprobe"],
                "asDropdown": True,
                "title": "scaleprobe",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout(panels),
    }


def fleet_capacity() -> dict:
    capacity = f"scaleprobe_predicted_capacity_sequences_per_second{{{SEL}}} {JOIN} {INFO}"
    tokens = f"scaleprobe_predicted_capacity_tokens_per_second{{{SEL}}} {JOIN} {INFO}"
    drift = f"scaleprobe_drift_ratio{{{SEL}}} {JOIN} {INFO}"
    panels = [
        row("Predicted capacity"),
        panel(
            "stat",
            "Fleet capacity per inference model",
            "Predicted sequences per second at each model's serving point, summed over every "
            "selected device. Predicted by each device's refitted performance model after its "
            "latest probe cycle; this is what an autoscaler reads.",
            SEQ_PER_S,
            [target(f"sum by (model, dtype) ({capacity})", "{{model}} {{dtype}}")],
            width=8,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "none"},
        ),
        timeseries(
            "Capacity by GPU model and inference model",
            "Predicted sequences per second at the serving point, summed per GPU model "
            "(modelName from scaleprobe_device_info) and inference model. A step down means "
            "devices left the fleet or recalibrated slower.",
            SEQ_PER_S,
            [target(f"sum by (modelName, model, dtype) ({capacity})", "{{modelName}} {{model}}")],
            width=16,
        ),
        table(
            "Capacity per node",
            "Predicted capacity of every selected device at each model's serving point, in "
            "sequences and tokens per second, with the device's GPU model.",
            SEQ_PER_S,
            [
                target(capacity, instant=True, ref="A"),
                target(tokens, instant=True, ref="B"),
            ],
            width=16,
            height=9,
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "__name__": True},
                        "renameByName": {"Value #A": "sequences/s", "Value #B": "tokens/s"},
                    },
                },
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "tokens/s"},
                    "properties": [{"id": "unit", "value": TOKENS_PER_S}],
                }
            ],
        ),
        timeseries(
            "Token capacity by GPU model",
            "Predicted tokens per second at the serving point (sequences/s × serving sequence "
            "length), summed per GPU model and inference model.",
            TOKENS_PER_S,
            [target(f"sum by (modelName, model) ({tokens})", "{{modelName}} {{model}}")],
            width=8,
            height=9,
            options={"legend": {"displayMode": "list", "placement": "bottom"}},
        ),
        row("Drift: measured against predicted"),
        table(
            "Worst drift",
            "The 15 device × model pairs furthest from their prediction: the median of "
            "(measured − predicted) / predicted over each model's latest measured points. Below "
            "−25% for 30 minutes fires ScaleprobeThroughputDrift (throttling, a noisy "
            "neighbour, a driver or framework regression).",
            "percentunit",
            [
                target(
                    f"sort({drift} and on (job, instance, device, model, dtype) "
                    f"topk(15, abs({drift})))",
                    instant=True,
                )
            ],
            thresholds=[(None, "red"), (-0.25, "orange"), (-0.1, "green"), (0.1, "orange")],
            custom={"cellOptions": {"type": "color-background"}},
            decimals=1,
        ),
        panel(
            "status-history",
            "Drift across the fleet",
            "A heat map with one row per device × model and time across: colour is its drift, "
            "(measured − predicted) / predicted. A whole column turning red is a fleet-wide "
            "change (a framework upgrade); a single row is one device.",
            "percentunit",
            [target(drift, "{{instance}} {{device}} {{model}}")],
            thresholds=[(None, "red"), (-0.25, "orange"), (-0.1, "green"), (0.1, "orange")],
            options={"showValue": "never", "rowHeight": 0.9, "colWidth": 0.95},
            decimals=1,
        ),
        row("Health of the probes"),
        table(
            "Calibration age",
            "Seconds since each device's calibration being served. Over an hour fires "
            "ScaleprobeCalibrationStale: probes failing, starved by a busy device, or a stopped "
            "scheduler; the predicted capacity is then the last good one.",
            "s",
            [
                target(
                    f"sort_desc(time() - scaleprobe_last_calibration_timestamp_seconds{{{SEL}}} "
                    f"{JOIN} {INFO})",
                    instant=True,
                )
            ],
            width=8,
            thresholds=[(None, "green"), (1800, "orange"), (3600, "red")],
            custom={"cellOptions": {"type": "color-text"}},
        ),
        table(
            "Probe failures and skips in the time range",
            "Probe runs that did not succeed over the dashboard's time range, per device, "
            "probe and outcome (failed, timeout, skipped_busy, skipped_memory, skipped_budget). "
            "Failures page as ScaleprobeProbesFailing, long skips as ScaleprobeProbesStarved.",
            "short",
            [
                target(
                    "sort_desc(sum by (job, instance, device, probe, outcome) (increase("
                    f'scaleprobe_probe_runs_total{{{SEL}, outcome!="ok"}}[$__range])))',
                    instant=True,
                )
            ],
            width=8,
            thresholds=[(None, "green"), (1, "orange")],
            custom={"cellOptions": {"type": "color-text"}},
            decimals=0,
        ),
        panel(
            "state-timeline",
            "Devices producing a calibration",
            "scaleprobe_up per device: 1 if the last probe cycle produced a calibration, 0 if "
            "it failed, timed out or was skipped (the last good calibration keeps being served). "
            "0 for 15 minutes fires ScaleprobeNotReady.",
            "bool_yes_no",
            [target(f"scaleprobe_up{{{SEL}}}", "{{instance}} {{device}}")],
            width=8,
            thresholds=[(None, "red"), (1, "green")],
            options={"showValue": "never", "mergeValues": True},
        ),
        timeseries(
            "Failing and skipped probe runs per second",
            "Rate of probe runs by outcome across the selected devices; ok runs are left out. "
            "Skips are the politeness guard yielding to the serving workload.",
            "ops",
            [
                target(
                    "sum by (outcome) (rate("
                    f'scaleprobe_probe_runs_total{{{SEL}, outcome!="ok"}}[$__rate_interval]))',
                    "{{outcome}}",
                )
            ],
            width=12,
        ),
        timeseries(
            "Exporters up",
            "Prometheus' up series of each scaleprobe exporter: 0 for 5 minutes fires "
            "ScaleprobeExporterDown.",
            "bool_yes_no",
            [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")],
            width=12,
            custom={"drawStyle": "line", "lineInterpolation": "stepAfter"},
        ),
    ]
    return dashboard(
        "scaleprobe-fleet",
        "scaleprobe / Fleet capacity",
        "Predicted capacity by GPU model, node and inference model; drift; probe health.",
        panels,
        [GPU_VARIABLE, MODEL_VARIABLE],
    )


def device_detail() -> dict:
    model = f'{SEL}, model=~"$model"'
    panels = [
        row("Measured points over the predicted curve"),
        matrix(
            "Measured and predicted throughput against sequence length",
            "Sequence length on the x axis; per batch size, a pale bar for the throughput the "
            "refitted model predicts and a solid bar for what the model probe measured (where "
            "that grid point has been measured: points rotate, a few per cycle).",
            SEQ_PER_S,
            " or ".join(
                f"label_replace(max by (seq_len, batch_size) (scaleprobe_{kind}_throughput_"
                f'sequences_per_second{{{model}}}), "series", "{kind}, batch $1", "batch_size", '
                '"(.*)")'
                for kind in ("predicted", "measured")
            ),
            "seq_len",
            "series",
            width=24,
            height=9,
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": f"^{kind}.*"},
                    "properties": [{"id": "custom.fillOpacity", "value": opacity}],
                }
                for kind, opacity in (("predicted", 35), ("measured", 100))
            ],
        ),
        timeseries(
            "Measured and predicted throughput over time",
            "Each measured point (solid) and its prediction (dashed) over time, labelled "
            "batch × sequence length. A gap opening between the two is drift.",
            SEQ_PER_S,
            [
                target(
                    f"scaleprobe_measured_throughput_sequences_per_second{{{model}}}",
                    "measured {{model}} {{batch_size}}×{{seq_len}}",
                    ref="A",
                ),
                target(
                    f"scaleprobe_predicted_throughput_sequences_per_second{{{model}}} "
                    "and on (job, instance, device, model, dtype, batch_size, seq_len) "
                    f"scaleprobe_measured_throughput_sequences_per_second{{{model}}}",
                    "predicted {{model}} {{batch_size}}×{{seq_len}}",
                    ref="B",
                ),
            ],
            width=24,
            height=9,
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                    ],
                }
            ],
        ),
        table(
            "Prediction error per point",
            "(measured − predicted) / predicted at each measured point, with the prediction made "
            "before the refit that used the measurement (so a slowing device shows).",
            "percentunit",
            [target(f"scaleprobe_prediction_error_ratio{{{model}}}", instant=True)],
            thresholds=[(None, "red"), (-0.25, "orange"), (-0.1, "green"), (0.1, "orange")],
            custom={"cellOptions": {"type": "color-text"}},
            decimals=1,
        ),
        timeseries(
            "Latency: measured and predicted",
            "Median forward-pass latency the model probe measured, and the predicted latency "
            "at the same points, in seconds.",
            "s",
            [
                target(
                    f"scaleprobe_measured_latency_seconds{{{model}}}",
                    "measured {{batch_size}}×{{seq_len}}",
                    ref="A",
                ),
                target(
                    f"scaleprobe_predicted_latency_seconds{{{model}}} and on (job, instance, "
                    "device, model, dtype, batch_size, seq_len) "
                    f"scaleprobe_measured_latency_seconds{{{model}}}",
                    "predicted {{batch_size}}×{{seq_len}}",
                    ref="B",
                ),
            ],
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                    ],
                }
            ],
        ),
        row("Framework overhead and efficiency"),
        matrix(
            "Framework-overhead share by batch and sequence",
            "Predicted share of the forward time the device waits on the host (framework "
            "dispatch), by sequence length and batch size. Over 50% the point is "
            "framework-bound: more batch costs almost nothing.",
            "percentunit",
            f"max by (seq_len, batch_size) (scaleprobe_predicted_framework_overhead_ratio"
            f"{{{model}}})",
            "seq_len",
            "batch_size",
        ),
        timeseries(
            "Measured framework-overhead share",
            "Share of measured forward time spent waiting on the host, at each measured point "
            "(on a GPU: eager time minus CUDA-graph replay time, over eager time).",
            "percentunit",
            [
                target(
                    f"scaleprobe_measured_framework_overhead_ratio{{{model}}}",
                    "{{model}} {{batch_size}}×{{seq_len}}",
                )
            ],
        ),
        timeseries(
            "Model-FLOPs utilisation (MFU)",
            "The model's FLOPs over the measured latency, against the device's calibrated "
            "compute rate (0..1). High MFU: compute-bound; low MFU with little framework "
            "overhead: memory-bound.",
            "percentunit",
            [
                target(
                    f"scaleprobe_measured_model_flops_utilization_ratio{{{model}}}",
                    "{{model}} {{batch_size}}×{{seq_len}}",
                )
            ],
        ),
        timeseries(
            "Prediction error (MAPE) per model",
            "Mean absolute prediction error over the points measured in each cycle, per model.",
            "percentunit",
            [target(f"scaleprobe_prediction_mape_ratio{{{model}}}", "{{model}} {{dtype}}")],
        ),
        row("Calibration over time"),
        timeseries(
            "Compute rate",
            "Matrix-multiply rate the compute probe measured, per dtype. A fall against the "
            "device's own history is throttling or a neighbour (ScaleprobeComputeRateDegraded).",
            "flops",
            [target(f"scaleprobe_probe_compute_flops_per_second{{{SEL}}}", "{{device}} {{dtype}}")],
            width=8,
        ),
        timeseries(
            "Memory bandwidth",
            "Device copy bandwidth the memory probe measured "
            "(ScaleprobeMemoryBandwidthDegraded watches it against its history).",
            "Bps",
            [target(f"scaleprobe_probe_memory_bandwidth_bytes_per_second{{{SEL}}}", "{{device}}")],
            width=8,
        ),
        timeseries(
            "Dispatch cost per op",
            "Host-side cost of dispatching one framework op, as the dispatch probe measured it: "
            "what makes small batches framework-bound.",
            "s",
            [target(f"scaleprobe_probe_dispatch_seconds{{{SEL}}}", "{{device}}")],
            width=8,
        ),
        timeseries(
            "Calibration against its own history",
            "(latest − median of earlier calibrations) / that median, per parameter, over the "
            "daemon's retained history. Negative compute or bandwidth, or positive dispatch "
            "cost: the device got slower than its past.",
            "percentunit",
            [target(f"scaleprobe_calibration_change_ratio{{{SEL}}}", "{{device}} {{parameter}}")],
        ),
        timeseries(
            "Largest batch that fits",
            "Predicted largest batch size whose forward pass fits in the device's memory, per "
            "model and sequence length.",
            "short",
            [
                target(
                    f"scaleprobe_predicted_max_batch_size{{{model}}}", "{{model}} seq {{seq_len}}"
                )
            ],
        ),
        row("What probing costs"),
        timeseries(
            "Device time taken by probes",
            "Device seconds the probes took per second of wall time: the share of the device "
            "taken from the serving workload.",
            "percentunit",
            [
                target(
                    f"rate(scaleprobe_probe_device_seconds_total{{{SEL}}}[$__rate_interval])",
                    "{{device}}",
                )
            ],
            width=8,
        ),
        timeseries(
            "Probe duration",
            "Wall-clock duration of each probe's last run.",
            "s",
            [target(f"scaleprobe_probe_duration_seconds{{{SEL}}}", "{{device}} {{probe}}")],
            width=8,
        ),
        timeseries(
            "Probe runs by outcome",
            "Probe runs per second by probe and outcome (ok, failed, timeout, skipped_*).",
            "ops",
            [
                target(
                    "sum by (probe, outcome) (rate("
                    f"scaleprobe_probe_runs_total{{{SEL}}}[$__rate_interval]))",
                    "{{probe}} {{outcome}}",
                )
            ],
            width=8,
        ),
    ]
    return dashboard(
        "scaleprobe-device",
        "scaleprobe / Device detail",
        "One device: measured points over the predicted curves, overhead, MFU, calibration, "
        "probe cost.",
        panels,
        [MODEL_VARIABLE],
        one_device=True,
    )


def framework_tax() -> dict:
    overhead = f'scaleprobe_predicted_framework_overhead_ratio{{{SEL}, model=~"$model"}}'
    panels = [
        row("How the overhead share falls with batch size"),
        matrix(
            "Predicted framework-overhead share against batch size",
            "Mean over the grid's sequence lengths of the predicted share of forward time the "
            "device waits on the host, per model, by batch size. Eager frameworks are "
            "framework-bound at small batch; the share falls as kernels outgrow dispatch.",
            "percentunit",
            f"avg by (batch_size, model) ({overhead})",
            "batch_size",
            "model",
        ),
        matrix(
            "Measured framework-overhead share against batch size",
            "The same share, measured at the points probed so far (mean over sequence lengths).",
            "percentunit",
            "avg by (batch_size, model) (scaleprobe_measured_framework_overhead_ratio"
            f'{{{SEL}, model=~"$model"}})',
            "batch_size",
            "model",
        ),
        row("Where each model is framework-, memory- or compute-bound"),
        table(
            "Share of the grid that is framework-bound",
            "Fraction of each model's grid points on each device whose predicted "
            "framework-overhead share is over 50%: where the performance model calls a point "
            "framework-bound.",
            "percentunit",
            [
                target(
                    f"avg by (job, instance, device, model, dtype) ({overhead} > bool 0.5)",
                    instant=True,
                )
            ],
            width=8,
            thresholds=[(None, "green"), (0.25, "orange"), (0.5, "red")],
            custom={"cellOptions": {"type": "color-background"}},
            decimals=0,
        ),
        table(
            "Regime per point",
            "Predicted framework-overhead share (left) and measured MFU (right) per point. "
            "Framework-bound: overhead over 50%. Otherwise compute-bound where MFU is high and "
            "memory-bound where it is low. Colours: red framework-bound, orange mixed.",
            "percentunit",
            [
                target(overhead, instant=True, ref="A"),
                target(
                    f'scaleprobe_measured_model_flops_utilization_ratio{{{SEL}, model=~"$model"}}',
                    instant=True,
                    ref="B",
                ),
            ],
            width=16,
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "__name__": True},
                        "renameByName": {"Value #A": "overhead share", "Value #B": "MFU"},
                    },
                },
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "overhead share"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {
                            "id": "thresholds",
                            "value": {
                                "mode": "absolute",
                                "steps": [
                                    {"color": "green", "value": None},
                                    {"color": "orange", "value": 0.2},
                                    {"color": "red", "value": 0.5},
                                ],
                            },
                        },
                    ],
                }
            ],
            decimals=1,
        ),
        timeseries(
            "Framework-overhead share at the serving point",
            "Predicted share of forward time waiting on the host at each model's serving batch "
            "and sequence length: how much of the capacity the framework costs.",
            "percentunit",
            [
                target(
                    f"{overhead} * on (job, instance, device, model, dtype, batch_size, seq_len) "
                    f"scaleprobe_serving_point_info{{{SEL}}}",
                    "{{instance}} {{device}} {{model}}",
                )
            ],
            width=12,
        ),
        timeseries(
            "Dispatch cost per op",
            "Host cost of dispatching one framework op: the fixed cost behind the framework "
            "tax. A rise here raises the overhead share at every small batch.",
            "s",
            [target(f"scaleprobe_probe_dispatch_seconds{{{SEL}}}", "{{instance}} {{device}}")],
            width=12,
        ),
    ]
    return dashboard(
        "scaleprobe-framework-tax",
        "scaleprobe / Framework tax",
        "Where each model is framework-, memory- or compute-bound, and how the framework-overhead "
        "share falls with batch size.",
        panels,
        [MODEL_VARIABLE],
    )


DASHBOARDS = {
    "fleet-capacity.json": fleet_capacity,
    "device-detail.json": device_detail,
    "framework-tax.json": framework_tax,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = directory / name
        path.write_text(render(build), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "dashboards"
    for path in write_all(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
