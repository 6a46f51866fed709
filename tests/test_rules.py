"""The Prometheus rules in deploy/prometheus/: valid, unit-tested both ways, documented.

``promtool check rules`` parses each file; ``promtool test rules`` runs the unit tests in
deploy/prometheus/tests/, in which every alert must both fire on the input that should page and
stay silent on the input that should not (checked here, so a new alert cannot ship untested).
Every alert links to its runbook section in README.md, which must exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
RUNBOOK_PREFIX = "https://github.com/scaleprobe/scaleprobe/blob/main/README.md#"


def load_rules(kind: str) -> list[dict]:
    """Every rule of the given kind ("alert" or "record") across the rule files."""
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if kind in rule)
    return rules


def load_unit_tests() -> list[dict]:
    tests = []
    for path in TEST_FILES:
        tests.extend(yaml.safe_load(path.read_text())["tests"])
    return tests


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool", "apt-get install prometheus")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def test_the_rule_and_test_files_exist() -> None:
    assert {path.name for path in RULE_FILES} == {"alerts.yml", "recording.yml"}
    assert TEST_FILES, "no promtool unit tests in deploy/prometheus/tests/"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_promtool_check_rules(path: Path) -> None:
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *(str(path) for path in TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_silent_in_some_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for unit in load_unit_tests():
        for case in unit.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in load_rules("alert")}
    assert names, "no alerts found"
    assert names - firing == set(), "alerts with no unit test in which they fire"
    assert names - silent == set(), "alerts with no unit test in which they stay silent"
    assert (firing | silent) - names == set(), "unit tests of alerts that do not exist"


def test_every_recording_rule_has_a_unit_test() -> None:
    tested = {
        re.match(r"[a-zA-Z_:]+", case["expr"]).group(0)  # type: ignore[union-attr]
        for unit in load_unit_tests()
        for case in unit.get("promql_expr_test", [])
    }
    names = {rule["record"] for rule in load_rules("record")}
    assert names and names <= tested, names - tested


def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    """Without their `for:` durations the alerts fire early, and the silent cases catch it."""
    copy = tmp_path / "prometheus"
    shutil.copytree(RULES_DIR, copy)
    alerts = (copy / "alerts.yml").read_text()
    (copy / "alerts.yml").write_text(re.sub(r"(?m)^\s+for: .*\n", "", alerts))
    result = promtool("test", "rules", str(copy / "tests" / "alerts_test.yml"))
    assert result.returncode != 0
    # Every alert has a "not yet sustained" silent case except the drift-free one, so most fail.
    failed = set(re.findall(r"alertname: (\w+)", result.stdout + result.stderr))
    assert len(failed) >= 6, result.stdout + result.stderr


@pytest.mark.parametrize("rule", load_rules("alert"), ids=lambda rule: rule["alert"])
def test_alert_is_documented(rule: dict) -> None:
    annotations = rule.get("annotations", {})
    assert annotations.get("summary") and annotations.get("description")
    assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}
    url = annotations.get("runbook_url", "")
    assert url == RUNBOOK_PREFIX + rule["alert"].lower()
    readme = (ROOT / "README.md").read_text()
    section = re.search(
        rf"^### {rule['alert']}\n(.+?)(?=^##|\Z)", readme, flags=re.MULTILINE | re.DOTALL
    )
    assert section, f"README.md has no '### {rule['alert']}' runbook section"
    body = section.group(1)
    assert "What it means" in body and "What to do" in body
