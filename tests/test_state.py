"""The state file: atomic writes, default path, and unusable files moved aside (never fatal)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from scaleprobe.exporter.state import default_state_path, load_snapshot, save_snapshot
from test_snapshot import sample_snapshot


def test_save_then_load_returns_the_same_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    save_snapshot(sample_snapshot(), path)
    assert load_snapshot(path) == sample_snapshot()
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left


def test_save_replaces_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_snapshot(sample_snapshot(1.0), path)
    save_snapshot(sample_snapshot(2.0), path)
    loaded = load_snapshot(path)
    assert loaded is not None and loaded.created_at_seconds == 2.0


def test_missing_file_is_a_fresh_start(tmp_path: Path) -> None:
    assert load_snapshot(tmp_path / "state.json") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",  # truncated to nothing
        b'{"schema_version": 999, "created_at_seconds": 1, "build": {}, "devices": []}',
        b'{"schema_version": 1}',  # fields missing
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"[1, 2, 3]",
    ],
)
def test_unusable_file_is_moved_aside_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="scaleprobe.state"):
        assert load_snapshot(path, clock=lambda: 1795000000.0) is None
    aside = tmp_path / "state.json.corrupt-20261118T110640Z"
    assert aside.read_bytes() == content  # kept for the operator, not overwritten
    assert not path.exists()
    assert "moved aside" in caplog.text


def test_truncated_real_state_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_snapshot(sample_snapshot(), path)
    path.write_bytes(path.read_bytes()[:200])
    assert load_snapshot(path, clock=lambda: 0.0) is None
    assert (tmp_path / "state.json.corrupt-19700101T000000Z").exists()


def test_a_second_corrupt_file_in_the_same_second_does_not_replace_the_first(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    for content in (b"first", b"second"):
        path.write_bytes(content)
        load_snapshot(path, clock=lambda: 0.0)
    asides = sorted(p.read_bytes() for p in tmp_path.iterdir())
    assert asides == [b"first", b"second"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_raises_oserror_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_snapshot(sample_snapshot(1.0), path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OSError):
            save_snapshot(sample_snapshot(2.0), path)
    finally:
        tmp_path.chmod(0o700)
    assert json.loads(path.read_text())["created_at_seconds"] == 1.0


def test_write_to_a_path_under_a_file_raises_oserror(tmp_path: Path) -> None:
    """A state path under a file fails loudly (the daemon counts it), never silently."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OSError):
        save_snapshot(sample_snapshot(), blocker / "state.json")


def test_default_path_follows_xdg() -> None:
    assert default_state_path({"XDG_STATE_HOME": "/var/lib/x", "HOME": "/home/a"}) == Path(
        "/var/lib/x/scaleprobe/state.json"
    )
    assert default_state_path({"HOME": "/home/a"}) == Path(
        "/home/a/.local/state/scaleprobe/state.json"
    )
    # a relative XDG_STATE_HOME is ignored, as the XDG spec says
    assert default_state_path({"XDG_STATE_HOME": "rel", "HOME": "/home/a"}) == Path(
        "/home/a/.local/state/scaleprobe/state.json"
    )
