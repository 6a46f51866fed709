"""The README's metrics reference matches what the exporter really serves.

The table in README.md's operations guide (between the ``metrics-table`` markers) lists every
``scaleprobe_*`` metric with its type, labels and HELP text. This test renders the registry that
``/metrics`` serves (``scaleprobe.exporter.http.default_registry``) over the fixed sample snapshot,
parses the exposition with prometheus-client's own parser, and compares: a metric added, renamed
or re-described in the exporter fails here until the README says the same.

``UPDATE_README=1 python -m pytest tests/test_readme_metrics.py`` rewrites the table from the
exposition on purpose; review the diff before committing it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sample_snapshot import sample_snapshot
from scaleprobe.exporter.http import default_registry

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- metrics-table:begin (generated: tests/test_readme_metrics.py) -->"
END = "<!-- metrics-table:end -->"
HEADER = "| metric | type | labels | HELP |\n|---|---|---|---|"
# Labels in the order a reader thinks of them; any other label follows, alphabetically.
LABEL_ORDER = (
    "version",
    "device",
    "gpu",
    "UUID",
    "modelName",
    "model",
    "dtype",
    "batch_size",
    "seq_len",
    "parameter",
    "probe",
    "outcome",
)

Row = tuple[str, str, frozenset[str], str]  # metric, type, labels, HELP


def served_metrics() -> dict[str, Row]:
    """Every scaleprobe metric in the exposition: sample name -> (name, type, labels, HELP)."""
    text = generate_latest(default_registry(sample_snapshot)).decode()
    rows: dict[str, Row] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("scaleprobe_"):
            continue  # process_* from prometheus-client's process collector
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(label for sample in family.samples for label in sample.labels)
        rows[name] = (name, family.type, labels, family.documentation)
    return rows


def ordered(labels: frozenset[str]) -> list[str]:
    known = [label for label in LABEL_ORDER if label in labels]
    return known + sorted(labels - set(LABEL_ORDER))


def render_table(rows: dict[str, Row]) -> str:
    lines = [HEADER]
    for name, kind, labels, help_text in rows.values():
        label_cell = ", ".join(f"`{label}`" for label in ordered(labels)) or "—"
        help_cell = help_text.replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {label_cell} | {help_cell} |")
    return "\n".join(lines)


def readme_table(text: str) -> dict[str, Row]:
    start, end = text.index(BEGIN), text.index(END)
    rows: dict[str, Row] = {}
    for line in text[start + len(BEGIN) : end].strip().splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        name, kind, label_cell, help_text = cells
        labels = frozenset(re.findall(r"`([^`]+)`", label_cell))
        name = name.strip("`")
        assert name not in rows, f"{name} is listed twice"
        rows[name] = (name, kind, labels, help_text.replace("\\|", "|"))
    return rows


def test_readme_metric_table_matches_the_exposition() -> None:
    served = served_metrics()
    text = README.read_text(encoding="utf-8")
    if os.environ.get("UPDATE_README"):
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        text = text[:start] + "\n" + render_table(served) + "\n" + text[end:]
        README.write_text(text, encoding="utf-8")
    documented = readme_table(text)
    missing = sorted(set(served) - set(documented))
    extra = sorted(set(documented) - set(served))
    assert not missing, f"served but not in README's metrics reference: {missing}"
    assert not extra, f"in README's metrics reference but not served: {extra}"
    for name, row in served.items():
        assert documented[name] == row, f"{name}: README says {documented[name]}, served {row}"


def test_the_exposition_covers_every_metric_the_collector_declares() -> None:
    """The sample snapshot exercises every family, so the comparison above leaves none out."""
    from scaleprobe.exporter.collector import SPECS, SUCCESS

    declared = {spec.name for spec in (*SPECS, SUCCESS)}
    assert declared <= set(served_metrics())


def test_the_table_parser_sees_a_changed_help_text() -> None:
    """The comparison is live: one edited word in the README's table is a difference."""
    served = served_metrics()
    table = render_table(served)
    parsed = readme_table(f"{BEGIN}\n{table}\n{END}")
    assert parsed == served
    edited = table.replace("Wall-clock duration", "Wall duration", 1)
    assert edited != table
    assert readme_table(f"{BEGIN}\n{edited}\n{END}") != served
