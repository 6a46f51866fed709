"""Supervise one probe-worker run: spawn, feed, watch, time out, kill, validate.

The worker (``python -m scaleprobe.probes.worker``) is where torch lives; this module never
imports it. Whatever the worker does (crash, hang, segfault, print garbage, get killed), the
supervisor returns a ``WorkerOutcome`` and never raises for it, so the daemon keeps serving its
last good snapshot. The protocol is in docs/internals.md.

- The worker runs in its own process group (session): a timeout or a cancel sends SIGTERM to the
  whole group, then SIGKILL after a grace period, so no grandchild outlives it.
- stderr lines that are JSON progress events go to ``on_event``; other lines go to the log with
  ``extra={"device": ...}``; the last lines are kept in ``stderr_tail`` for the report.
- stdout must be exactly one result document of schema ``scaleprobe.worker/1`` with the shape
  the exporter relies on; anything else is ``malformed``.
- ``cancel`` (a ``threading.Event``) ends a running worker from another thread: the daemon's
  SIGTERM handler sets it.

Example::

    outcome = run_worker(request, timeout_seconds=300, on_event=print)
    if outcome.outcome == "ok":
        use(outcome.result)
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

SCHEMA = "scaleprobe.worker/1"
OUTCOMES = ("ok", "failed", "timeout", "malformed")
ENTRY_OUTCOMES = ("ok", "failed", "skipped_busy", "skipped_memory", "skipped_budget")
STDERR_TAIL_LINES = 40
MAX_STDERR_LINE_BYTES = 8192  # longer stderr lines are cut (and the rest of the line dropped)
# A result document larger than this is not one the worker would write: stop reading, malformed.
MAX_STDOUT_BYTES = 32 * 1024**2
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05

log = logging.getLogger("scaleprobe.exporter.supervisor")


def default_command() -> list[str]:
    """The real worker, run by this interpreter."""
    return [sys.executable, "-m", "scaleprobe.probes.worker"]


@dataclass(frozen=True)
class WorkerOutcome:
    """How one worker run ended.

    ``outcome``: ``ok`` (valid result document), ``failed`` (non-zero exit, crash, signal, could
    not start, cancelled), ``timeout`` (killed after ``timeout_seconds``) or ``malformed``
    (exit 0 but stdout is not a valid result document). ``message`` says why in one line.
    """

    outcome: str
    result: dict[str, Any] | None
    returncode: int | None
    duration_seconds: float
    stderr_tail: str
    message: str
    cancelled: bool = False


def run_worker(
    request: Mapping[str, Any],
    *,
    command: Sequence[str] | None = None,
    timeout_seconds: float,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    kill_grace_seconds: float = KILL_GRACE_SECONDS,
    max_stdout_bytes: int = MAX_STDOUT_BYTES,
    clock: Callable[[], float] = time.monotonic,
) -> WorkerOutcome:
    """Run the worker on ``request`` and report how it went; never raises for a worker fault."""
    command = list(command) if command is not None else default_command()
    device = str(request.get("device", "")) if isinstance(request, Mapping) else ""
    child_env = dict(os.environ if env is None else env)
    child_env["HF_HUB_OFFLINE"] = "1"
    child_env["TRANSFORMERS_OFFLINE"] = "1"
    child_env["PYTHONUNBUFFERED"] = "1"
    started = clock()
    try:
        payload = json.dumps(request).encode()
    except (TypeError, ValueError) as error:
        return WorkerOutcome("failed", None, None, 0.0, "", f"request is not JSON: {error}")
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env,
            start_new_session=True,  # its own process group: kill it and its children together
        )
    except OSError as error:
        return WorkerOutcome(
            "failed", None, None, clock() - started, "", f"could not start worker: {error}"
        )

    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    stdout_chunks: list[bytes] = []
    stdout_overflow = threading.Event()
    threads = [
        threading.Thread(target=_feed, args=(process.stdin, payload), daemon=True),
        threading.Thread(
            target=_read_stdout,
            args=(process.stdout, stdout_chunks, stdout_overflow, max_stdout_bytes),
            daemon=True,
        ),
        threading.Thread(
            target=_read_stderr, args=(process.stderr, tail, on_event, device), daemon=True
        ),
    ]
    for thread in threads:
        thread.start()

    deadline = started + timeout_seconds
    stop_reason: str | None = None
    while not _exited(process.pid):
        if cancel is not None and cancel.is_set():
            stop_reason = "cancelled"
        elif stdout_overflow.is_set():
            stop_reason = "overflow"
        elif clock() >= deadline:
            stop_reason = "timeout"
        if stop_reason is not None:
            _terminate_group(process.pid, kill_grace_seconds)
            break
        if cancel is not None:
            cancel.wait(POLL_SECONDS)
        else:
            time.sleep(POLL_SECONDS)
    # The worker has exited but is not reaped yet, so its pid (and group id) cannot be reused:
    # end anything it left behind in its group, so the pipes close, then reap it.
    _signal_group(process.pid, signal.SIGKILL)
    returncode = process.wait()
    for thread in threads:
        thread.join(timeout=5.0)
    duration = clock() - started
    stderr_tail = "\n".join(tail)
    stdout = b"".join(stdout_chunks)

    def outcome(kind: str, message: str, result: dict[str, Any] | None = None) -> WorkerOutcome:
        level = logging.INFO if kind == "ok" else logging.WARNING
        log.log(
            level,
            "worker %s: %s",
            kind,
            message,
            extra={"device": device, "outcome": kind, "duration_seconds": round(duration, 3)},
        )
        return WorkerOutcome(
            kind, result, returncode, duration, stderr_tail, message, stop_reason == "cancelled"
        )

    if stop_reason == "timeout":
        return outcome("timeout", f"worker killed after the {timeout_seconds:g} s timeout")
    if stop_reason == "cancelled":
        return outcome("failed", "worker cancelled (the daemon is stopping)")
    if stop_reason == "overflow":
        return outcome("malformed", f"worker wrote more than {max_stdout_bytes} bytes to stdout")
    if returncode != 0:
        return outcome("failed", _describe_exit(returncode, stderr_tail))
    try:
        document = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        shown = stdout[:80].decode("utf-8", "replace")
        return outcome("malformed", f"worker stdout is not one JSON document ({error}): {shown!r}")
    problems = validate_result(document)
    if problems:
        return outcome("malformed", "worker result document: " + "; ".join(problems[:5]))
    return outcome(
        "ok", f"{len(document['probes'])} probes, {len(document['points'])} points", document
    )


def validate_result(document: object) -> list[str]:
    """Every way ``document`` differs from the result shape the exporter relies on."""
    if not isinstance(document, dict):
        return ["not a JSON object"]
    problems = []
    schema = document.get("schema")
    if schema != SCHEMA:
        problems.append(f"schema is {schema!r}, expected {SCHEMA!r}")
    identity = document.get("device")
    if not isinstance(identity, dict) or not isinstance(identity.get("device"), str):
        problems.append("'device' must be an object with a 'device' string")
    else:
        for key in ("gpu", "UUID", "modelName", "driver_version"):
            if not isinstance(identity.get(key), str):
                problems.append(f"device.{key} must be a string")
    for section, name_keys, value_key in (
        ("probes", ("probe",), "value"),
        ("points", ("model", "batch_size", "seq_len"), "latency_seconds"),
    ):
        entries = document.get(section)
        if not isinstance(entries, list):
            problems.append(f"'{section}' must be a list")
            continue
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where} must be an object")
                continue
            for key in name_keys:
                if key not in entry:
                    problems.append(f"{where} has no '{key}'")
            result = entry.get("outcome")
            if result not in ENTRY_OUTCOMES:
                problems.append(f"{where}.outcome {result!r} is not one of {ENTRY_OUTCOMES}")
            elif result == "ok" and not _positive_number(entry.get(value_key)):
                problems.append(f"{where} is ok but '{value_key}' is not a positive number")
    if not _positive_number(document.get("duration_seconds"), allow_zero=True):
        problems.append("'duration_seconds' must be a non-negative number")
    return problems


def _positive_number(value: object, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value >= 0 if allow_zero else value > 0


def _describe_exit(returncode: int, stderr_tail: str) -> str:
    last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no stderr"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker killed by {name}; last stderr line: {last}"
    return f"worker exited with code {returncode}; last stderr line: {last}"


def _feed(stream: IO[bytes] | None, payload: bytes) -> None:
    """Write the request and close stdin (in a thread: a worker that never reads cannot block)."""
    if stream is None:
        return
    try:
        stream.write(payload)
        stream.close()
    except (BrokenPipeError, OSError):
        pass  # the worker died or closed stdin early: its exit status tells the story


def _read_stdout(
    stream: IO[bytes] | None, chunks: list[bytes], overflow: threading.Event, limit: int
) -> None:
    if stream is None:
        return
    total = 0
    while chunk := stream.read(65536):
        total += len(chunk)
        if total > limit:
            overflow.set()
            break
        chunks.append(chunk)
    stream.close()


def _read_stderr(
    stream: IO[bytes] | None,
    tail: collections.deque[str],
    on_event: Callable[[dict[str, Any]], None] | None,
    device: str,
) -> None:
    """Relay progress events to ``on_event`` and every other line to the log."""
    if stream is None:
        return
    for raw in _bounded_lines(stream, MAX_STDERR_LINE_BYTES):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if not line.strip():
            continue
        tail.append(line)
        event = _parse_event(line)
        if event is not None:
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:  # a broken progress display must not lose the worker
                    log.exception("on_event failed", extra={"device": device})
            continue
        log.info("worker: %s", line, extra={"device": device})
    stream.close()


def _bounded_lines(stream: IO[bytes], limit: int) -> Iterator[bytes]:
    """The stream's lines, each cut to ``limit`` bytes: a worker that prints megabytes without a
    newline (a tensor's repr, a runaway progress bar) must not make the daemon hold them."""
    skipping = False
    while chunk := stream.readline(limit):
        complete = chunk.endswith(b"\n")
        if not skipping:
            yield chunk if complete else chunk + b" [line truncated]"
        skipping = not complete


def _parse_event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _exited(pid: int) -> bool:
    """Whether the worker has exited, without reaping it (its pid stays reserved until then)."""
    try:
        status = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return status is not None and status.si_pid == pid


def _terminate_group(pid: int, grace_seconds: float) -> None:
    """SIGTERM the worker's process group; SIGKILL it if the worker lives past the grace period."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if _exited(pid):
            return
        time.sleep(POLL_SECONDS)
    _signal_group(pid, signal.SIGKILL)
    while not _exited(pid):
        time.sleep(POLL_SECONDS)
