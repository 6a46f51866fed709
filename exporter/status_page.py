"""The status page: measured points over the predicted curves, rendered from ``/api/v1/curves``.

The daemon serves it at ``/``; ``scaleprobe once --report FILE.html`` writes the same page with
``inline_assets=True`` as one self-contained file. The charts are SVG written here, on the server,
with no chart library: the page works with scripts off, and no request leaves it (the stylesheet
and a small script come from ``/static/``, or are inlined). The script only checks, after layout,
that each chart's lines and markers have a size, and records it in ``data-drawn-*`` attributes:
the browser test reads them.

Per device: the calibration (compute rate per dtype, bandwidth, dispatch cost, age). Per model: a
chart of throughput against sequence length (log scale), one predicted line per batch size with the
measured points as markers of the same colour, and a table of every grid point with its
predicted and measured throughput, error, framework-overhead share and regime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = ("status.css", "status.js")

# Colour-blind-safe palette (Okabe–Ito), one colour per batch size.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")

CHART_WIDTH, CHART_HEIGHT = 660, 320
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 120, 16, 44


def render_status_page(curves_document: dict[str, Any], *, inline_assets: bool = False) -> str:
    """The whole HTML page for one ``/api/v1/curves`` document."""
    generated = float(curves_document.get("generated_at_seconds") or 0.0)
    devices = curves_document.get("devices") or []
    body = [_device_section(device, generated) for device in devices]
    if not body:
        body = [
            '<p class="empty">No calibration yet: the first probe cycle is still running. '
            "This page fills in when it ends.</p>"
        ]
    if inline_assets:
        css = (STATIC_DIR / "status.css").read_text(encoding="utf-8")
        js = (STATIC_DIR / "status.js").read_text(encoding="utf-8")
        head_assets = f"<style>\n{css}</style>"
        tail_assets = f"<script>\n{js}</script>"
        nav = ""
        refresh = ""
    else:
        head_assets = '<link rel="stylesheet" href="static/status.css">'
        tail_assets = '<script src="static/status.js"></script>'
        nav = (
            '<nav><a href="metrics">/metrics</a> <a href="api/v1/capacity">/api/v1/capacity</a> '
            '<a href="api/v1/curves">/api/v1/curves</a> <a href="healthz">/healthz</a> '
            '<a href="readyz">/readyz</a></nav>'
        )
        refresh = '<meta http-equiv="refresh" content="60">'
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            refresh,
            "<title>scaleprobe status</title>",
            head_assets,
            "</head><body>",
            f'<header><h1>scaleprobe</h1><p class="generated">{_utc(generated)}</p>{nav}</header>',
            "<main>",
            *body,
            "</main>",
            "<footer>Lines: throughput the refitted model predicts. Markers: throughput measured "
            "on this device (points are measured in rotation, a few per cycle).</footer>",
            tail_assets,
            "</body></html>",
            "",
        ]
    )


def _device_section(device: dict[str, Any], generated: float) -> str:
    name = escape(str(device.get("device", "")))
    model_name = escape(str(device.get("modelName") or ""))
    stale = bool(device.get("stale"))
    badge = (
        '<span class="badge stale">stale</span>' if stale else '<span class="badge ok">fresh</span>'
    )
    models = device.get("models") or []
    parts = [
        f'<section class="device" data-device="{name}">',
        f"<h2>{name} <small>{model_name}</small> {badge}</h2>",
        _calibration(device, generated),
    ]
    if not models:
        parts.append('<p class="empty">No model curves for this device yet.</p>')
    parts.extend(_model_card(model) for model in models)
    parts.append("</section>")
    return "\n".join(parts)


def _calibration(device: dict[str, Any], generated: float) -> str:
    calibration = device.get("calibration")
    if not calibration:
        return '<p class="empty">Not calibrated yet.</p>'
    items = [
        (f"compute {escape(dtype)}", _si(rate, "FLOP/s"))
        for dtype, rate in (calibration.get("compute_flops_per_second") or {}).items()
    ]
    items.append(
        ("memory bandwidth", _si(calibration.get("memory_bandwidth_bytes_per_second"), "B/s"))
    )
    items.append(("dispatch cost", _si(calibration.get("dispatch_seconds"), "s") + " per op"))
    timestamp = device.get("calibration_timestamp_seconds")
    age = "never" if timestamp is None else _duration(generated - float(timestamp)) + " ago"
    items.append(("calibrated", age))
    cells = "".join(f"<div><dt>{label}</dt><dd>{value}</dd></div>" for label, value in items)
    return f'<dl class="calibration">{cells}</dl>'


def _model_card(model: dict[str, Any]) -> str:
    name = escape(str(model.get("model", "")))
    dtype = escape(str(model.get("dtype", "")))
    serving = model.get("serving") or {}
    facts = [f"{dtype}"]
    if serving:
        facts.append(f"serving batch {serving.get('batch_size')} × {serving.get('seq_len')} tokens")
    if model.get("mape_ratio") is not None:
        facts.append(f"MAPE {_percent(model['mape_ratio'])}")
    if model.get("drift_ratio") is not None:
        facts.append(f"drift {_percent(model['drift_ratio'], signed=True)}")
    points = [point for point in model.get("points") or [] if _throughput(point, "predicted")]
    return "\n".join(
        [
            f'<article class="model" data-model="{name}">',
            f'<h3>{name} <span class="facts">{" · ".join(facts)}</span></h3>',
            '<div class="model-body">',
            _chart(points, f"{name} {dtype}"),
            _point_table(points),
            "</div></article>",
        ]
    )


def _throughput(point: dict[str, Any], kind: str) -> float | None:
    figures = point.get(kind)
    if not figures:
        return None
    value = figures.get("throughput_sequences_per_second")
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


class _Scale:
    """A log-scale axis from data values to pixels."""

    def __init__(self, values: Iterable[float], start: float, end: float, pad: float) -> None:
        logs = [math.log10(value) for value in values]
        low, high = min(logs), max(logs)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        span = high - low
        self.low, self.high = low - pad * span, high + pad * span
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        fraction = (math.log10(value) - self.low) / (self.high - self.low)
        return self.start + fraction * (self.end - self.start)

    def ticks(self, steps: Sequence[float] = (1, 2, 5)) -> list[float]:
        found = []
        for decade in range(math.floor(self.low), math.ceil(self.high) + 1):
            for step in steps:
                value = step * 10.0**decade
                if self.low <= math.log10(value) <= self.high:
                    found.append(value)
        return found


def _chart(points: list[dict[str, Any]], title: str) -> str:
    """Throughput against sequence length: predicted lines and measured markers per batch size."""
    if not points:
        return '<p class="empty">No predicted points.</p>'
    values = [_throughput(p, "predicted") for p in points] + [
        _throughput(p, "measured") for p in points
    ]
    throughputs = [value for value in values if value]
    seq_lens = sorted({int(p["seq_len"]) for p in points})
    batches = sorted({int(p["batch_size"]) for p in points})
    plot_right = CHART_WIDTH - MARGIN_RIGHT
    plot_bottom = CHART_HEIGHT - MARGIN_BOTTOM
    x = _Scale(seq_lens, MARGIN_LEFT, plot_right, 0.06)
    y = _Scale(throughputs, plot_bottom, MARGIN_TOP, 0.08)
    parts = [
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="throughput against sequence length, {escape(title)}" '
        f'data-expected-lines="{len(batches)}" '
        f'data-expected-markers="{sum(1 for p in points if _throughput(p, "measured"))}">',
        f'<rect class="plot" x="{MARGIN_LEFT}" y="{MARGIN_TOP}" '
        f'width="{plot_right - MARGIN_LEFT}" height="{plot_bottom - MARGIN_TOP}"/>',
    ]
    y_ticks = y.ticks() if len(y.ticks()) <= 8 else y.ticks((1,))
    for value in y_ticks:
        py = y(value)
        parts.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" x2="{plot_right}" y1="{py:.1f}" y2="{py:.1f}"/>'
            f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">'
            f"{_short(value)}</text>"
        )
    for seq_len in seq_lens:
        px = x(seq_len)
        parts.append(
            f'<line class="grid" x1="{px:.1f}" x2="{px:.1f}" y1="{MARGIN_TOP}" y2="{plot_bottom}"/>'
            f'<text class="tick" x="{px:.1f}" y="{plot_bottom + 16}" text-anchor="middle">'
            f"{seq_len}</text>"
        )
    parts.append(
        f'<text class="axis" x="{(MARGIN_LEFT + plot_right) / 2:.0f}" y="{CHART_HEIGHT - 6}" '
        'text-anchor="middle">sequence length (tokens)</text>'
        f'<text class="axis" transform="translate(14 {(MARGIN_TOP + plot_bottom) / 2:.0f}) '
        'rotate(-90)" text-anchor="middle">throughput (sequences/s)</text>'
    )
    for index, batch in enumerate(batches):
        colour = PALETTE[index % len(PALETTE)]
        series = sorted(
            (p for p in points if int(p["batch_size"]) == batch), key=lambda p: p["seq_len"]
        )
        coordinates = [
            (x(int(p["seq_len"])), y(_throughput(p, "predicted") or 1.0)) for p in series
        ]
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(coordinates)
        )
        if len(coordinates) == 1:  # a single point still draws: a short horizontal tick
            px, py = coordinates[0]
            path = f"M{px - 8:.1f},{py:.1f} L{px + 8:.1f},{py:.1f}"
        parts.append(
            f'<g class="series" data-batch-size="{batch}" style="--colour:{colour}">'
            f'<path class="predicted" d="{path}"><title>batch {batch}, predicted</title></path>'
        )
        for point in series:
            measured = _throughput(point, "measured")
            if measured is None:
                continue
            predicted = _throughput(point, "predicted") or 0.0
            error = point.get("error_ratio")
            note = f", error {_percent(error, signed=True)}" if error is not None else ""
            parts.append(
                f'<circle class="measured" cx="{x(int(point["seq_len"])):.1f}" '
                f'cy="{y(measured):.1f}" r="5"><title>batch {batch} × {point["seq_len"]} tokens: '
                f"measured {_short(measured)} seq/s, predicted {_short(predicted)} seq/s{note}"
                "</title></circle>"
            )
        legend_y = MARGIN_TOP + 14 + index * 20
        parts.append(
            f'<line class="legend" x1="{plot_right + 12}" x2="{plot_right + 34}" '
            f'y1="{legend_y - 4}" y2="{legend_y - 4}"/>'
            f'<text class="legend" x="{plot_right + 40}" y="{legend_y}">batch {batch}</text></g>'
        )
    legend_y = MARGIN_TOP + 14 + len(batches) * 20 + 8
    parts.append(
        f'<circle class="measured key" cx="{plot_right + 23}" cy="{legend_y - 4}" r="5"/>'
        f'<text class="legend" x="{plot_right + 40}" y="{legend_y}">measured</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


REGIMES = {"framework": "framework-bound", "memory": "memory-bound", "compute": "compute-bound"}


def _point_table(points: list[dict[str, Any]]) -> str:
    """Every grid point as a batch × sequence-length matrix, each cell tinted by its regime."""
    by_key = {(int(p["batch_size"]), int(p["seq_len"])): p for p in points}
    seq_lens = sorted({seq_len for _, seq_len in by_key})
    batches = sorted({batch for batch, _ in by_key})
    header = "".join(f"<th>{seq_len}</th>" for seq_len in seq_lens)
    rows = []
    for batch in batches:
        cells = [f'<th class="batch">{batch}</th>']
        for seq_len in seq_lens:
            point = by_key.get((batch, seq_len))
            cells.append("<td></td>" if point is None else _point_cell(point))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<div class="points"><table class="points">'
        f'<thead><tr><th class="corner">batch \\ seq</th>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="key">Each cell: predicted sequences/s; where measured, the measurement and its '
        "error; the predicted framework-overhead share (hover for MFU). Tint: "
        '<span class="regime framework">framework-bound</span> '
        '<span class="regime memory">memory-bound</span> '
        '<span class="regime compute">compute-bound</span></p></div>'
    )


def _point_cell(point: dict[str, Any]) -> str:
    predicted = point.get("predicted") or {}
    regime = str(predicted.get("regime") or "")
    lines = [f'<span class="value">{_short(_throughput(point, "predicted"))}</span>']
    measured = _throughput(point, "measured")
    if measured is not None:
        error = point.get("error_ratio")
        grade = ""
        if error is not None:
            grade = "bad" if abs(error) > 0.25 else "warn" if abs(error) > 0.1 else "good"
        lines.append(
            f'<span class="measured {grade}">meas {_short(measured)} {_whole_percent(error)}</span>'
        )
    overhead = predicted.get("framework_overhead_ratio")
    overhead_text = "–" if overhead is None else f"{overhead * 100:.0f}%"
    lines.append(f'<span class="detail">overhead {overhead_text}</span>')
    title = (
        f"batch {point['batch_size']} × {point['seq_len']} tokens: {REGIMES.get(regime, regime)}, "
        f"framework overhead {_percent(overhead)}, MFU {_percent(predicted.get('mfu_ratio'))}"
    )
    return (
        f'<td class="regime {escape(regime)}" data-regime="{escape(regime)}" '
        f'title="{escape(title)}">{"".join(lines)}</td>'
    )


def _si(value: float | None, unit: str) -> str:
    """1.9e11, "FLOP/s" -> "190 GFLOP/s"; 5e-06, "s" -> "5 µs"."""
    if value is None or not math.isfinite(value):
        return "–"
    prefixes = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]
    if abs(value) < 1:
        prefixes = [(1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]
    for factor, prefix in prefixes:
        if abs(value) >= factor or factor == prefixes[-1][0]:
            return f"{_short(value / factor)} {prefix}{unit}"
    return f"{_short(value)} {unit}"  # pragma: no cover (the loop always returns)


def _short(value: float | None) -> str:
    """Three significant figures, no trailing zeros, no exponent for the usual ranges."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 0.01:
        return f"{value:.3g}"
    digits = max(0, 2 - math.floor(math.log10(magnitude)))
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _percent(value: float | None, *, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"
    return text.replace("-", "−")


def _whole_percent(value: float | None) -> str:
    """A signed error in whole percent, for the compact cells: -0.074 -> "−7%"."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value * 100:+.0f}%".replace("-", "−")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _utc(timestamp: float) -> str:
    from datetime import datetime, timezone

    if not timestamp:
        return ""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return "as of " + moment.strftime("%Y-%m-%d %H:%M:%S UTC")
