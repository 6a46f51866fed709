"""The status page, opened in a real headless Chromium.

The page is served by the real HTTP server (``/`` and ``/static/``) and written self-contained
(``inline_assets=True``, what ``scaleprobe once --report`` writes). In the browser, the page's
script records how many predicted lines and measured markers each chart really laid out with a
non-zero size (``data-drawn-*``); the test reads them from ``--dump-dom`` and compares with the
document. A screenshot is kept in test-artifacts/status_page.png.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from scaleprobe.exporter.api import curves_document as curves_document_of
from scaleprobe.exporter.http import serve
from scaleprobe.exporter.status_page import render_status_page

from tests.conftest import require_binary
from tests.sample_snapshot import sample_snapshot

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
GENERATED_AT = 1_795_000_000.0


def figures(batch: int, seq_len: int, *, scale: float = 1.0) -> dict[str, Any]:
    """Plausible predicted figures: a dispatch floor plus work that grows with batch × sequence."""
    latency = scale * (0.03 + 0.0001 * batch * seq_len * (1 + seq_len / 1024))
    overhead = 0.03 / latency
    regime = "framework" if overhead >= 0.5 else "memory" if batch * seq_len < 512 else "compute"
    return {
        "latency_seconds": latency,
        "throughput_sequences_per_second": batch / latency,
        "throughput_tokens_per_second": batch * seq_len / latency,
        "framework_overhead_ratio": overhead,
        "regime": regime,
        "mfu_ratio": 0.6 * (1 - overhead),
    }


def point(batch: int, seq_len: int, measured_scale: float | None = None) -> dict[str, Any]:
    predicted = figures(batch, seq_len)
    measured = None
    error = None
    if measured_scale is not None:
        seen = figures(batch, seq_len, scale=measured_scale)
        measured = {
            "latency_seconds": seen["latency_seconds"],
            "throughput_sequences_per_second": seen["throughput_sequences_per_second"],
            "framework_overhead_ratio": seen["framework_overhead_ratio"],
            "timestamp_seconds": GENERATED_AT - 60,
        }
        error = 1 / measured_scale - 1
    return {
        "batch_size": batch,
        "seq_len": seq_len,
        "predicted": predicted,
        "measured": measured,
        "error_ratio": error,
        "baseline_error_ratio": None,
    }


MEASURED = {(1, 128): 1.08, (8, 128): 0.95, (32, 512): 1.2, (1, 1024): 1.02, (8, 256): 1.0}


def curves_document() -> dict[str, Any]:
    """One CPU with a 4 × 5 grid of bert-base (5 points measured) and an uncalibrated GPU."""
    points = [
        point(batch, seq_len, MEASURED.get((batch, seq_len)))
        for batch in (1, 4, 8, 32)
        for seq_len in (64, 128, 256, 512, 1024)
    ]
    return {
        "generated_at_seconds": GENERATED_AT,
        "devices": [
            {
                "device": "cpu",
                "modelName": "Intel(R) Xeon(R) Platinum 8488C",
                "calibration_timestamp_seconds": GENERATED_AT - 240,
                "stale": False,
                "calibration": {
                    "compute_flops_per_second": {"float32": 1.9e11, "bfloat16": 7.0e11},
                    "memory_bandwidth_bytes_per_second": 1.5e10,
                    "dispatch_seconds": 4.2e-6,
                },
                "models": [
                    {
                        "model": "bert-base",
                        "dtype": "float32",
                        "serving": {"batch_size": 8, "seq_len": 128},
                        "mape_ratio": 0.071,
                        "drift_ratio": -0.02,
                        "points": points,
                    }
                ],
            },
            {
                "device": "cuda:0",
                "modelName": "NVIDIA A100-SXM4-80GB",
                "calibration_timestamp_seconds": None,
                "stale": True,
                "calibration": None,
                "models": [],
            },
        ],
    }


def chromium(*args: str, url: str) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; return its stdout."""
    binary = require_binary("chromium", "apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=3000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=90,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def drawn(dom: str) -> list[tuple[str, str, str, str]]:
    """(expected lines, expected markers, drawn lines, drawn markers) per chart of the DOM."""
    charts = re.findall(r"<svg [^>]*class=\"chart\"[^>]*>", dom)
    found = []
    for tag in charts:
        attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        found.append(
            (
                attributes["data-expected-lines"],
                attributes["data-expected-markers"],
                attributes.get("data-drawn-lines", "not run"),
                attributes.get("data-drawn-markers", "not run"),
            )
        )
    return found


@pytest.fixture(scope="module")
def served() -> Any:
    """The real HTTP server, serving the sample snapshot with the real status page."""
    server = serve(sample_snapshot, "127.0.0.1:0", clock=lambda: GENERATED_AT + 100)
    yield server
    server.shutdown()


@pytest.mark.integration
def test_served_page_draws_its_charts(served: Any) -> None:
    """Via the daemon's HTTP server: the stylesheet and script come from /static/."""
    dom = chromium("--dump-dom", url=served.url + "/")
    assert 'href="static/status.css"' in dom, dom[:2000]
    document = curves_document_of(sample_snapshot(), GENERATED_AT)
    models = [model for device in document["devices"] for model in device["models"]]
    charts = drawn(dom)
    assert len(charts) == len(models) >= 2  # one chart per model with a curve
    for expected_lines, expected_markers, lines, markers in charts:
        assert (lines, markers) == (expected_lines, expected_markers), charts
    assert f'data-charts-drawn="{len(models)}/{len(models)}"' in dom


@pytest.mark.integration
def test_report_file_is_self_contained_and_draws(tmp_path: Path) -> None:
    document = curves_document()
    html = render_status_page(document, inline_assets=True)
    # One file, no request to anywhere: no external URL, no /static/ reference.
    assert not re.search(r'(src|href)="', html)
    assert "<style>" in html and "<script>" in html
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")

    dom = chromium("--dump-dom", url=page.as_uri())
    assert drawn(dom) == [("4", "5", "4", "5")]  # 4 batch sizes, 5 measured points
    assert 'data-charts-drawn="1/1"' in dom
    assert dom.count('data-regime="framework"') == sum(
        1
        for p in document["devices"][0]["models"][0]["points"]
        if p["predicted"]["regime"] == "framework"
    )
    assert "Not calibrated yet." in dom  # the GPU without a calibration

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status_page.png"
    screenshot.unlink(missing_ok=True)
    chromium(f"--screenshot={screenshot}", "--window-size=1400,1100", url=page.as_uri())
    assert screenshot.stat().st_size > 10_000


def test_page_content_from_the_document() -> None:
    html = render_status_page(curves_document())
    assert "190 GFLOP/s" in html and "700 GFLOP/s" in html  # compute rate per dtype
    assert "15 GB/s" in html and "4.2 µs per op" in html  # bandwidth and dispatch cost
    assert "4 min ago" in html  # calibration age
    assert "MAPE 7.1%" in html and "drift −2.0%" in html
    assert html.count('<g class="series"') == 4
    assert html.count('<circle class="measured"') == 5
    assert html.count("data-regime=") == 20  # every grid point
    assert html.count('data-regime="framework"') >= 1 and html.count('data-regime="compute"') >= 1
    assert "meas 10.7 −17%" in html  # the point measured 20% slower: (1/1.2 - 1)


def test_page_escapes_names() -> None:
    document = curves_document()
    document["devices"][0]["modelName"] = "<script>alert(1)</script>"
    html = render_status_page(document)
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html


def test_page_before_the_first_cycle() -> None:
    html = render_status_page({"generated_at_seconds": GENERATED_AT, "devices": []})
    assert "No calibration yet" in html
