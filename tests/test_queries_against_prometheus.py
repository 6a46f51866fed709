"""Every dashboard query and every rule expression returns data from a real Prometheus.

A real daemon (``scaleprobe run``, probing the CPU through the fake worker so a cycle takes well
under a second) and a real Prometheus (Debian's package) run on loopback; Prometheus scrapes the
daemon every second and loads deploy/prometheus/*.yml, evaluated every second.

What "returns data" means here:
- dashboard panels: each query, with the variables substituted as Grafana would send them
  (``$job``/``$instance``/``$device``/``$gpu``/``$model`` -> the real label values as an escaped
  regex alternation, ``$__rate_interval`` -> 10s, ``$__range`` -> 1h), returns at least one series:
  over the last 30 seconds for range queries, at the current time for instant (table) queries;
- dashboard variables: each ``label_values(selector, label)`` yields at least one value;
- recording rules: Prometheus evaluated them without error and each recorded series exists;
- alerts: on a healthy daemon an alert must *not* fire, so its expression returns nothing; instead
  each side of the alert's top-level comparison (``time() - scaleprobe_last_calibration...`` of
  ``... > 3600``, both sides of ``a < 0.8 * quantile_over_time(...)``) must return data, and the
  rule must evaluate with health "ok". That both fire and stay silent on the right input is what
  the promtool unit tests (tests/test_rules.py) check.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus import PrometheusServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RATE_INTERVAL = "10s"
DEADLINE_SECONDS = 45.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for(url: str, process: subprocess.Popen, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        if get(url, timeout=1.0)[0] == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready at {url} after {seconds} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``scaleprobe run`` on loopback, probing the CPU through the fake worker every second."""
    directory = tmp_path_factory.mktemp("daemon")
    config = {
        "devices": ["cpu"],
        "dtype": "float32",
        "models": [
            {"model": "distilbert-base", "serving": {"batch_size": 4, "seq_len": 128}},
            {"model": "bert-base", "serving": {"batch_size": 4, "seq_len": 128}},
        ],
        "grid": {"batch_sizes": [1, 4], "seq_lens": [32, 128]},
        # Every grid point measured in every cycle: each measured-series panel has data at once.
        "schedule": {
            "interval_seconds": 1,
            "jitter_seconds": 0,
            "cycle_budget_seconds": 10,
            "points_per_cycle": 8,
        },
        "worker": {
            "command": [sys.executable, str(ROOT / "tests" / "fake_worker.py")],
            "timeout_seconds": 30,
            "backoff_initial_seconds": 1,
            "backoff_max_seconds": 2,
        },
        "state": {"file": str(directory / "state.json")},
    }
    config_path = directory / "scaleprobe.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (directory / "daemon.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scaleprobe.exporter.cli",
            "run",
            "--config.file",
            str(config_path),
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", process, "the daemon", seconds=60)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def prometheus(daemon: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the daemon every second, with the shipped rules loaded."""
    with PrometheusServer(
        [daemon], tmp_path_factory.mktemp("prometheus"), rule_files=RULE_FILES
    ) as server:
        server.wait_for_targets_up()
        yield server


def returns_data(prom: PrometheusServer, expr: str, *, instant: bool) -> bool:
    if instant:
        return len(prom.query(expr)) > 0
    now = time.time()
    return len(prom.query_range(expr, now - 30, now)) > 0


def regex_of(values: list[str]) -> str:
    """Values as Grafana sends a multi-value variable in a regex matcher: (a|b), regex-escaped,
    with backslashes doubled for the PromQL string literal."""
    escaped = [re.escape(value).replace("\\", "\\\\") for value in sorted(values)]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def label_values(prom: PrometheusServer, definition: str, variables: dict[str, str]) -> list[str]:
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", definition)
    assert match, definition
    selector, label = substitute(match.group(1), variables), match.group(2)
    values: list[str] = prom.api(f"label/{label}/values", **{"match[]": selector})
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", "1h")
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${name}", variables[name])
    return expr


def dashboard_queries() -> list[tuple[str, str, dict]]:
    """(dashboard file, panel title, query) for every query of every panel."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for query in panel.get("targets", []):
                found.append((path.name, panel["title"], query))
    return found


def comparison_sides(expr: str) -> list[str]:
    """The operands of the top-level comparison of an alert expression, numbers left out.

    ``a > 0.25`` -> [a]; ``a < 0.8 * b`` -> [a, 0.8 * b]. Operators inside (), [], {} or
    strings are not top-level.
    """
    depth, quote, cut = 0, "", -1
    index = 0
    while index < len(expr):
        char = expr[index]
        if quote:
            quote = "" if char == quote and expr[index - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and expr[index : index + 2] in {"==", "!=", ">=", "<="}:
            cut, length = index, 2
            break
        elif depth == 0 and char in "<>":
            cut, length = index, 1
            break
        index += 1
    assert cut >= 0, f"no top-level comparison in {expr!r}"
    sides = [expr[:cut].strip(), re.sub(r"^\s*bool\b", "", expr[cut + length :]).strip()]
    return [side for side in sides if not re.fullmatch(r"[-+]?[\d.e]+", side)]


def test_comparison_sides() -> None:
    assert comparison_sides("abs(x) > 0.25") == ["abs(x)"]
    assert comparison_sides('up{job=~"a.*"} == 0') == ['up{job=~"a.*"}']
    assert comparison_sides("a < 0.8 * q(b[3d])") == ["a", "0.8 * q(b[3d])"]
    assert comparison_sides('sum by (x) (rate(r{o!="ok"}[1h])) / s > 0.5') == [
        'sum by (x) (rate(r{o!="ok"}[1h])) / s'
    ]


def load_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def test_every_query_and_rule_returns_data(prometheus: PrometheusServer) -> None:
    queries = dashboard_queries()
    rules = load_rules()
    assert len(queries) > 30 and len(rules) >= 12
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        problems = check_everything(prometheus, queries, rules)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not problems, "\n".join(problems)
    # The check can tell: a query of a series the daemon does not export is reported.
    missing = {"expr": 'scaleprobe_no_such_series{job=~"$job"}', "instant": True}
    assert check_everything(prometheus, [("x.json", "missing", missing)], []) == [
        "x.json: panel 'missing': no data for scaleprobe_no_such_series{job=~\"scaleprobe\"}"
    ]


def check_everything(
    prom: PrometheusServer, queries: list[tuple[str, str, dict]], rules: list[dict]
) -> list[str]:
    """Every problem found in one pass: an empty list once everything returns data."""
    problems: list[str] = []

    # Dashboard variables, in order: each yields values, which the later ones and queries use.
    variables: dict[str, str] = {}
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            values = label_values(prom, variable["definition"], variables)
            if not values:
                problems.append(f"{path.name}: variable ${variable['name']} has no values")
                return problems
            variables[variable["name"]] = regex_of(values)

    for dashboard, title, query in queries:
        expr = substitute(query["expr"], variables)
        if not returns_data(prom, expr, instant=bool(query.get("instant"))):
            problems.append(f"{dashboard}: panel {title!r}: no data for {expr}")

    groups = prom.rules()
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for rule in rules:
        name = rule.get("record") or rule["alert"]
        state = loaded.get(name)
        if state is None or state["health"] != "ok":
            problems.append(f"rule {name}: not evaluated or unhealthy: {state}")
            continue
        if "record" in rule:
            if not returns_data(prom, name, instant=True):
                problems.append(f"recording rule {name}: no series recorded")
            continue
        for side in comparison_sides(rule["expr"]):
            if not returns_data(prom, side, instant=True):
                problems.append(f"alert {name}: no data for {side}")
    return problems


def test_daemon_serves_the_status_page(daemon: str) -> None:
    """The same daemon serves the status page at / with its assets from /static/."""
    status, body = get(f"http://{daemon}/")
    page = body.decode()
    assert status == 200, page[:500]
    assert page.count('<svg class="chart"') == 2  # distilbert-base and bert-base on the CPU
    assert page.count('<circle class="measured"') >= 1
    for asset in ("status.css", "status.js"):
        assert f'"static/{asset}"' in page
        assert get(f"http://{daemon}/static/{asset}")[0] == 200
