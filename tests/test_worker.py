"""The probe worker: request validation, the real subprocess end to end, budgets, failures kept
per probe, and the three paper models' presets at one tiny point."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from scaleprobe.exporter.supervisor import run_worker, validate_result
from scaleprobe.models.architecture import PRESETS
from scaleprobe.probes.worker import (
    EXIT_PARENT_GONE,
    SCHEMA,
    RequestError,
    exit_with_parent,
    main,
    parse_request,
    run_request,
)

TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}
TINY_DISTILBERT = {
    "model_type": "distilbert",
    "n_layers": 2,
    "dim": 64,
    "n_heads": 2,
    "hidden_dim": 128,
    "vocab_size": 1000,
}


def request(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "device": "cpu",
        "dtype": "float32",
        "calibrate": False,
        "points": [{"model": "tiny-bert", "config": TINY_BERT, "batch_size": 2, "seq_len": 16}],
        "budget_seconds": 60,
        "memory_cap_bytes": 2 * 1024**3,
        # a threshold no load exceeds: the guard reads the CPU but never skips for load here
        "guard": {"max_utilization_ratio": 1.0, "min_free_memory_bytes": 1024**3},
    }
    document.update(overrides)
    return document


def run_main(document: object) -> tuple[int, str, str]:
    text = document if isinstance(document, str) else json.dumps(document)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(io.StringIO(text), stdout, stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def test_a_valid_request_parses_with_defaults() -> None:
    parsed = parse_request({"schema": SCHEMA})
    assert parsed.device == "cpu" and parsed.calibrate and parsed.points == ()
    full = parse_request(request(device="cuda", dtype="bfloat16"))
    assert full.device == "cuda:0" and full.dtype == "bfloat16"
    assert full.points[0].config["model_type"] == "bert"


def test_another_major_schema_version_is_refused_with_exit_2() -> None:
    code, stdout, stderr = run_main(request(schema="scaleprobe.worker/2"))
    assert code == 2 and stdout == ""
    assert "scaleprobe.worker/2" in stderr and "scaleprobe.worker/1" in stderr
    assert "Traceback" not in stderr
    # A minor version of the same major is accepted.
    assert parse_request(request(schema="scaleprobe.worker/1.3")).dtype == "float32"


def test_a_request_that_is_not_json_is_refused() -> None:
    code, stdout, stderr = run_main("{not json")
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "not valid JSON" in stderr


def test_every_problem_of_a_request_is_named() -> None:
    bad = request(
        device="tpu",
        dtype="int8",
        budget_seconds=-1,
        memory_cap_bytes="lots",
        guard={"max_utilization_ratio": 2},
        points=[{"model": "", "config": {}, "batch_size": 0, "seq_len": 1.5}],
    )
    with pytest.raises(RequestError) as caught:
        parse_request(bad)
    message = str(caught.value)
    for needle in (
        "'device'",
        "'dtype'",
        "'budget_seconds'",
        "'memory_cap_bytes'",
        "max_utilization_ratio",
        "points[0].model",
        "points[0].config",
        "points[0].batch_size",
        "points[0].seq_len",
    ):
        assert needle in message


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_a_cuda_request_without_cuda_is_refused() -> None:
    code, _, stderr = run_main(request(device="cuda:0"))
    assert code == 2 and "CUDA is not available" in stderr


def test_the_real_worker_end_to_end_through_the_supervisor() -> None:
    """Calibration and points in the real subprocess; a bad point and an oversized point are
    recorded per point and the rest still run."""
    events: list[dict[str, Any]] = []
    points = [
        {"model": "tiny-bert", "config": TINY_BERT, "batch_size": 2, "seq_len": 16},
        {
            "model": "broken",
            "config": {**TINY_BERT, "hidden_size": 65},
            "batch_size": 1,
            "seq_len": 8,
        },
        {"model": "huge", "config": {"model_type": "bert"}, "batch_size": 512, "seq_len": 512},
        {"model": "tiny-distilbert", "config": TINY_DISTILBERT, "batch_size": 1, "seq_len": 32},
    ]
    outcome = run_worker(
        request(calibrate=True, points=points), timeout_seconds=240, on_event=events.append
    )
    assert outcome.outcome == "ok", outcome.message + "\n" + outcome.stderr_tail
    result = outcome.result
    assert result is not None and validate_result(result) == []
    assert result["device"]["kind"] == "cpu" and result["device"]["modelName"]
    assert result["environment"]["torch_version"] == torch.__version__
    guard = result["guard"]  # the CPU guard read /proc (other processes' load, MemAvailable)
    assert guard["checked"] is True and 0.0 <= guard["utilization_ratio"] <= 1.0, guard
    assert guard["free_memory_bytes"] > 0

    probes = {entry["probe"]: entry for entry in result["probes"]}
    assert [entry["outcome"] for entry in result["probes"]] == ["ok", "ok", "ok"]
    assert probes["compute"]["unit"] == "flops_per_second"
    assert len(probes["compute"]["detail"]["rates_by_size"]) >= 3
    assert probes["memory"]["unit"] == "bytes_per_second"
    # the CPU terms' figures (docs/internals.md): first touch of fresh memory, tanh and exp rates
    assert probes["memory"]["detail"]["first_touch_seconds_per_byte"] >= 0
    rates = probes["compute"]["detail"]["transcendental_elements_per_second"]
    assert set(rates) == {"tanh", "exp"} and all(rate > 0 for rate in rates.values())
    assert "kernel_floor_seconds" in probes["dispatch"]["detail"]
    assert all(len(entry["samples_seconds"]) <= 50 for entry in result["probes"])

    assert [p["model"] for p in result["points"]] == [p["model"] for p in points]
    ok, broken, huge, distil = result["points"]
    assert ok["outcome"] == "ok" and ok["latency_seconds"] > 0
    assert 0 <= ok["framework_overhead_ratio"] <= 1
    assert broken["outcome"] == "failed" and "hidden size" in broken["reason"]
    assert huge["outcome"] == "skipped_memory" and "memory_cap_bytes" in huge["reason"]
    assert distil["outcome"] == "ok"

    progress = [e for e in events if e.get("event") == "progress"]
    assert [e["done"] for e in progress] == list(range(1, 8))
    assert all(e["total"] == 7 for e in progress)
    assert progress[-1]["model"] == "tiny-distilbert"


def test_points_past_the_budget_are_skipped_in_order() -> None:
    points = [
        {"model": f"tiny-{i}", "config": TINY_BERT, "batch_size": 1, "seq_len": 8} for i in range(3)
    ]
    result = run_request(
        parse_request(request(points=points, budget_seconds=1e-6)), progress_stream=io.StringIO()
    )
    outcomes = [p["outcome"] for p in result["points"]]
    assert outcomes == ["ok", "skipped_budget", "skipped_budget"]
    assert "budget" in result["points"][1]["reason"]


def test_stray_prints_cannot_corrupt_the_result_document() -> None:
    code = (
        "from scaleprobe.probes.worker import _divert_stdout\n"
        "out = _divert_stdout()\n"
        "print('a library talking')\n"
        "out.write('{\"doc\": 1}\\n'); out.flush()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout == '{"doc": 1}\n'
    assert "a library talking" in completed.stderr


def test_the_three_paper_presets_run_at_one_tiny_point() -> None:
    """distilbert-base, bert-base and bigbird-roberta-base at their real sizes, batch 1 × 16."""
    names = ("distilbert-base", "bert-base", "bigbird-roberta-base")
    points = [
        {"model": n, "config": PRESETS[n].to_config(), "batch_size": 1, "seq_len": 16}
        for n in names
    ]
    result = run_request(parse_request(request(points=points)), progress_stream=io.StringIO())
    assert [p["model"] for p in result["points"]] == list(names)
    for entry in result["points"]:
        assert entry["outcome"] == "ok", entry.get("reason")
        arch = PRESETS[entry["model"]]
        # The model built is the preset's size: its weights are at least the preset's parameters.
        assert entry["detail"]["parameter_bytes"] >= 4 * arch.parameter_count() * 0.99


def test_the_watchdog_ends_the_worker_once_its_parent_pid_changes() -> None:
    parents = iter([100, 100, 100, 1])
    exited: list[int] = []
    done = threading.Event()

    def exit_process(code: int) -> None:
        exited.append(code)
        done.set()

    stderr = io.StringIO()
    exit_with_parent(
        100,
        stderr=stderr,
        poll_seconds=0.001,
        get_parent_pid=lambda: next(parents),
        exit_process=exit_process,
    )
    assert done.wait(10)
    assert exited == [EXIT_PARENT_GONE]
    assert "the exporter (pid 100) is gone" in stderr.getvalue()


def test_a_worker_whose_exporter_is_killed_does_not_probe_on(tmp_path: Path) -> None:
    """kill -9 of the process that started the worker (in its own session, as the supervisor
    starts it): the worker, busy on points with a long budget, exits within seconds, through its
    watchdog (exit code 3, with its message).

    The chain runs under a child subreaper, so the orphaned worker is re-parented to it rather
    than to init, and its end is read from ``waitpid`` (exit code or signal), not guessed from
    ``/proc``.
    """
    points = [
        {"model": f"tiny-{i}", "config": TINY_BERT, "batch_size": 1, "seq_len": 8}
        for i in range(2000)
    ]
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request(points=points, budget_seconds=600)))
    stderr_file = tmp_path / "worker.stderr"
    parent_code = (
        "import subprocess, sys, time\n"
        f"with open({str(request_file)!r}) as stdin, open({str(stderr_file)!r}, 'w') as err:\n"
        "    worker = subprocess.Popen([sys.executable, '-m', 'scaleprobe.probes.worker'],\n"
        "        stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    reaper_code = (  # prints "parent-pid worker-pid", then "pid exit-code" for every child it reaps
        "import ctypes, os, subprocess, sys\n"
        "if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # CHILD_SUBREAPER\n"
        "    sys.exit(f'prctl: errno {ctypes.get_errno()}')\n"
        "parent = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=subprocess.PIPE)\n"
        "print(parent.pid, int(parent.stdout.readline()), flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        pid, status = os.wait()\n"
        "    except ChildProcessError:\n"
        "        break\n"
        "    print(pid, os.waitstatus_to_exitcode(status), flush=True)\n"
    )
    reaper = subprocess.Popen(
        [sys.executable, "-c", reaper_code, parent_code], stdout=subprocess.PIPE, text=True
    )
    assert reaper.stdout is not None
    started = reaper.stdout.readline()
    assert started, "the reaper did not start the chain; its stderr is in the captured output"
    parent_pid, worker_pid = (int(word) for word in started.split())
    try:
        deadline = time.monotonic() + 120
        while '"done": 3' not in stderr_file.read_text():  # it is running points
            assert time.monotonic() < deadline, stderr_file.read_text()[-2000:]
            time.sleep(0.1)
        os.kill(parent_pid, signal.SIGKILL)
        try:
            reaped, _ = reaper.communicate(timeout=30)  # the reaper ends once both have ended
        except subprocess.TimeoutExpired:
            pytest.fail(
                "the orphaned worker still runs 30 s on; its stderr ends:\n"
                + stderr_file.read_text()[-2000:]
            )
    finally:
        if reaper.poll() is None:  # a failure above: the reaper has not reaped both yet
            for pid in (parent_pid, worker_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            reaper.kill()
            reaper.wait()
    exit_codes = {}
    for line in reaped.splitlines():
        reaped_pid, exit_code = line.split()
        exit_codes[int(reaped_pid)] = int(exit_code)
    assert exit_codes == {parent_pid: -signal.SIGKILL, worker_pid: EXIT_PARENT_GONE}, (
        stderr_file.read_text()[-2000:]
    )
    assert "is gone; stopping" in stderr_file.read_text()
