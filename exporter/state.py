"""The state file: the latest snapshot, written atomically after every cycle and read at start.

Why: a restarted daemon (a rollout, an OOM kill, ``kill -9``) serves its last calibration from the
first scrape, instead of exporting nothing until a probe cycle has run again; the calibration
timestamps it carries say how old it is. The history of calibrations and the pinned baseline live
here too, so drift against the device's own past survives restarts.

Writing is atomic (a temporary file in the same directory, fsync, rename over the old file, fsync
the directory): a crash mid-write leaves the old file or the new one, never half of one. A file that
cannot be read back (corrupt, truncated, another schema version, unreadable) is moved aside to
``state.json.corrupt-<timestamp>`` with a warning and the daemon starts fresh: never fatal, and
never silently overwritten, so an operator can still look at it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from scaleprobe.exporter.snapshot import Snapshot

log = logging.getLogger("scaleprobe.state")


def default_state_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/scaleprobe/state.json``, else ``~/.local/state/scaleprobe/state.json``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):  # the XDG spec says to ignore a relative value
        return Path(base) / "scaleprobe" / "state.json"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "scaleprobe" / "state.json"


def save_snapshot(snapshot: Snapshot, path: Path) -> None:
    """Write ``snapshot`` to ``path`` atomically; raises ``OSError`` if the disk refuses.

    The caller (the daemon) logs and counts the error and keeps serving from memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(snapshot.to_dict(), separators=(",", ":"), allow_nan=False)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; the state holds nothing secret
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a crash right after it could otherwise undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def load_snapshot(path: Path, *, clock: Callable[[], float] = time.time) -> Snapshot | None:
    """The snapshot saved at ``path``; None if there is none or it was unusable (moved aside)."""
    _remove_stale_temporaries(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        _move_aside(path, f"cannot be read: {error}", clock)
        return None
    try:
        snapshot = Snapshot.from_dict(json.loads(text))
        # NaN or infinity (a JSON literal, or a string float() took) was not written by
        # save_snapshot, and would make every later write of the state fail
        json.dumps(snapshot.to_dict(), allow_nan=False)
        return snapshot
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        _move_aside(path, f"is not a usable state file: {type(error).__name__}: {error}", clock)
        return None


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of writes that a crash (``kill -9``, OOM kill) cut short.

    They are never read (the rename that would have published them did not happen), but each is
    as large as a state file and a daemon restarted by crashes for months would pile them up.
    Called at start, before this process writes anything.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            log.info(
                "removed a temporary state file left by an interrupted write",
                extra={"path": str(stale)},
            )


def _move_aside(path: Path, why: str, clock: Callable[[], float]) -> Path | None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    try:
        os.replace(path, aside)
    except OSError as error:
        log.warning(
            "state file unusable and could not be moved aside; starting without a calibration",
            extra={"path": str(path), "reason": why, "error": str(error)},
        )
        return None
    log.warning(
        "state file unusable; moved aside, starting without a calibration",
        extra={"path": str(path), "moved_to": str(aside), "reason": why},
    )
    return aside
