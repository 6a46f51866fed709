"""The linters are part of the test command: ruff (lint and format) and mypy.

They also keep the process model from eroding: ruff's banned-API rule (TID251)
fails on any import of torch or transformers in models/ or exporter/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_lint() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_torch_is_banned_outside_the_worker(tmp_path: Path) -> None:
    """The banned-API rule really fires on a torch import in exporter/ (so the rule is live)."""
    probe = ROOT / "exporter" / "_lint_probe_tmp.py"
    probe.write_text("import torch\n\nprint(torch)\n")
    try:
        result = run("ruff", "check", "--no-cache", str(probe))
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "TID251" in result.stdout
