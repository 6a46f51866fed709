"""Shared test set-up.

Integration tests need real binaries (prometheus, promtool, chromium). Locally a missing binary
skips the test with the command that installs it; under CI (CI=true) it fails, so CI can never
pass by quietly skipping the real-parts tests.
"""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def require_binary(name: str, install_hint: str = "apt-get install prometheus chromium") -> str:
    """Return the path of ``name`` on PATH, or skip (fail under CI) if it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (install it with: {install_hint})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
