"""The Grafana dashboards: generated from code, provisionable as they are, consistent per panel.

The committed JSON in grafana/dashboards/ must be exactly what ``python grafana/build.py`` writes
(run it to update them on purpose). Every panel reads the ``datasource`` variable, has a unit and a
description, filters by the job/instance/device variables and uses ``$__rate_interval`` in rates;
every query parses (promtool); tests/test_queries_against_prometheus.py checks they return data.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
PROVISIONING_DIR = ROOT / "grafana" / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def load_build_module() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_build", ROOT / "grafana" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dashboards() -> dict[str, dict]:
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels_of(dashboard: dict) -> list[dict]:
    """Every panel that queries data (rows excluded, nested row panels included)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def all_panels() -> list[tuple[str, dict]]:
    return [
        (name, panel) for name, board in load_dashboards().items() for panel in panels_of(board)
    ]


def panel_id(item: tuple[str, dict]) -> str:
    return f"{item[0]}:{item[1]['title']}"


def test_committed_json_is_what_the_generator_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "grafana" / "build.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = sorted(path.name for path in tmp_path.glob("*.json"))
    assert generated == sorted(path.name for path in DASHBOARD_DIR.glob("*.json"))
    assert len(generated) == 3
    for name in generated:
        fresh = (tmp_path / name).read_text()
        committed = (DASHBOARD_DIR / name).read_text()
        assert fresh == committed, f"{name} is stale: run `python grafana/build.py` and commit"


def test_the_three_dashboards_exist_with_unique_uids() -> None:
    boards = load_dashboards()
    titles = {board["title"] for board in boards.values()}
    assert titles == {
        "scaleprobe / Fleet capacity",
        "scaleprobe / Device detail",
        "scaleprobe / Framework tax",
    }
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_dashboard_variables(name: str) -> None:
    board = load_dashboards()[name]
    text = json.dumps(board)
    assert "DS_PROMETHEUS" not in text and "__inputs" not in board
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name_ in ("job", "instance", "device"):
        variable = variables[name_]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["definition"].startswith("label_values(")
        assert variable["definition"].endswith(f", {name_})")
    # Each variable refers only to variables defined before it (Grafana resolves them in order).
    defined: set[str] = set()
    for variable in board["templating"]["list"]:
        used = set(re.findall(r"\$(\w+)", json.dumps(variable.get("query", ""))))
        assert used <= defined, (variable["name"], used - defined)
        defined.add(variable["name"])


@pytest.mark.parametrize("item", all_panels(), ids=panel_id)
def test_panel_conventions(item: tuple[str, dict]) -> None:
    _, panel = item
    assert panel["datasource"] == DATASOURCE
    assert panel["description"].strip(), "every panel says what it shows"
    assert panel["fieldConfig"]["defaults"]["unit"], "every panel has a unit"
    assert panel["targets"], "every panel queries something"
    for query in panel["targets"]:
        assert query["datasource"] == DATASOURCE
        expr = query["expr"]
        # Range selectors: $__rate_interval in rates; $__range only for totals over the view.
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window in {"$__rate_interval", "$__range"}, expr
        if "$__range" in expr:
            assert query.get("instant"), "a total over $__range belongs in an instant query"
        # Every selector of a scaleprobe series (and of up) filters by the job/instance variables,
        # and by device where the series has one.
        for metric, selector in re.findall(r"\b(scaleprobe_\w+|up)(\{[^}]*\})?", expr):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, expr
            if metric not in {"up", "scaleprobe_build_info"}:
                assert 'device=~"$device"' in selector, expr


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    occupied: set[tuple[int, int]] = set()
    ids = []
    for panel in load_dashboards()[name]["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, panel["title"]
        occupied |= cells
        ids.append(panel["id"])
    assert len(set(ids)) == len(ids)


def substitute(expr: str) -> str:
    """Dashboard variables replaced by values Prometheus accepts (what Grafana would send)."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$device", ".*")
        .replace("$model", ".*")
        .replace("$gpu", ".*")
    )


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression (a syntax check, offline)."""
    rules = [
        {"record": f"dashboard_query_{number}", "expr": substitute(query["expr"])}
        for number, query in enumerate(q for _, panel in all_panels() for q in panel["targets"])
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    promtool = require_binary("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_provisioning_loads_the_committed_dashboards() -> None:
    provider = yaml.safe_load((PROVISIONING_DIR / "dashboards" / "scaleprobe.yml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"].startswith("/")
    datasources = yaml.safe_load((PROVISIONING_DIR / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] and source["access"] == "proxy"
    assert source["url"].startswith("http")


def test_generator_layout_wraps_rows() -> None:
    """The layout helper starts a new line when a panel would pass column 24."""
    build = load_build_module()
    panels = build.layout(
        [
            {"type": "timeseries", "gridPos": {"w": 16, "h": 4}},
            {"type": "timeseries", "gridPos": {"w": 16, "h": 6}},
            {"type": "row", "gridPos": {"w": 24, "h": 1}},
            {"type": "timeseries", "gridPos": {"w": 8, "h": 3}},
        ]
    )
    assert [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels] == [
        (0, 0),
        (0, 4),
        (0, 10),
        (0, 11),
    ]
