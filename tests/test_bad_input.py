"""Bad input: each a clear message naming the problem and what is allowed, exit code 2, no
traceback, and nothing overwritten.

``check-config`` and ``predict`` run in process through ``cli.main`` (an exception other than
``InputError`` would fail the test on the spot); ``run`` runs as a real subprocess, with an
existing state file that must come out byte for byte the same.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from certs import make_certificates
from scaleprobe.exporter import cli

GOOD_HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()


def write_models(directory: Path) -> None:
    """Model directories the cases refer to: a malformed config.json and an unsupported one."""
    (directory / "broken").mkdir()
    (directory / "broken" / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    (directory / "gpt").mkdir()
    (directory / "gpt" / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    (directory / "nojson").mkdir()
    (directory / "odd").mkdir()
    odd = {
        "model_type": "bert",
        "hidden_size": -3,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "vocab_size": 100,
        "max_position_embeddings": 512,
    }
    (directory / "odd" / "config.json").write_text(json.dumps(odd))


CONFIG_CASES = {
    "invalid YAML": ("models: [bert-base\n", ["is not valid YAML at line 2, column 1"]),
    "not a mapping": ("- bert-base\n", ["expected a YAML mapping of keys at the top"]),
    "unknown keys": (
        "modles: [bert-base]\nschedule: {intervall_seconds: 5}\n",
        [
            "modles: unknown key; did you mean 'models'?",
            "schedule.intervall_seconds: unknown key; did you mean 'interval_seconds'?",
        ],
    ),
    "wrong types": (
        "schedule: {interval_seconds: soon, points_per_cycle: 2.5}\n"
        "guard: {memory_cap_bytes: lots}\nworker: {command: python}\n",
        [
            "schedule.interval_seconds: expected a number, got 'soon'",
            "schedule.points_per_cycle: expected an integer, got 2.5",
            "guard.memory_cap_bytes: expected a byte size",
            "worker.command: expected a list of strings",
        ],
    ),
    "out of range": (
        "guard: {max_utilization_ratio: 1.5}\nschedule: {interval_seconds: -1}\n"
        "grid: {batch_sizes: [0, 8]}\n",
        [
            "guard.max_utilization_ratio: 1.5 is out of range; allowed: at least 0 and at most 1",
            "schedule.interval_seconds: -1 is out of range; allowed: at least 1",
            "grid.batch_sizes[0]: 0 is out of range; allowed: at least 1",
        ],
    ),
    "not finite": (
        "schedule: {interval_seconds: .nan}\nworker: {timeout_seconds: .inf}\n",
        [
            "schedule.interval_seconds: expected a finite number, got nan",
            "worker.timeout_seconds: expected a finite number, got inf",
        ],
    ),
    "missing model directory": (
        "models: [./nothing-here]\n",
        ["models[0].model: directory ./nothing-here does not exist"],
    ),
    "directory without config.json": ("models: [./nojson]\n", ["has no config.json"]),
    "malformed config.json": ("models: [./broken]\n", ["config.json: not valid JSON"]),
    "impossible config.json": ("models: [./odd]\n", ["must be a positive integer, got -3"]),
    "unsupported architecture": (
        "models: [./gpt]\n",
        ["unsupported architecture 'gpt2'; supported encoder families: bert"],
    ),
    "unknown preset": ("models: [gpt-17]\n", ["models[0].model: unknown model 'gpt-17'"]),
    "grid over the series cap": (
        "grid: {batch_sizes: [1, 2, 4, 8, 16, 32, 64, 128], seq_lens: [32, 64, 128, 256, 512]}\n"
        "series_cap: 500\n",
        ["over series_cap (500); shrink the grid or raise series_cap"],
    ),
    "sequence longer than the model": (
        "models: [bert-base]\ngrid: {seq_lens: [128, 4096]}\n",
        ["[4096] is longer than bert-base's 512 positions; allowed: at most 512"],
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_bad_config_is_exit_2_with_every_problem_named(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = CONFIG_CASES[case]
    write_models(tmp_path)
    path = tmp_path / "scaleprobe.yml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("scaleprobe check-config: error: ")
    assert "Traceback" not in captured.err
    for needle in expected:
        assert needle in captured.err, captured.err
    assert path.read_text() == text  # nothing rewritten


def test_a_config_file_that_is_not_text_or_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    for path, needle in (
        (binary, "cannot be read"),
        (tmp_path / "missing.yml", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        assert cli.main(["check-config", str(path)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


PREDICT_CASES = {
    "not an integer": (["--batch-sizes", "1,x"], "--batch-sizes: 'x' is not an integer"),
    "not positive": (["--seq-lens", "0"], "--seq-lens: 0 is not positive"),
    "empty entry": (["--batch-sizes", "1,,8"], "--batch-sizes: empty entry"),
    "unknown dtype": (["--dtype", "float8"], "allowed: float32, float16, bfloat16"),
    "longer than the model": (["--seq-lens", "100000"], "exceeds bert-base's"),
}


@pytest.mark.parametrize("case", sorted(PREDICT_CASES))
def test_bad_predict_flags_are_exit_2(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra, needle = PREDICT_CASES[case]
    argv = ["predict", "--model", "bert-base", "--gpu", "A100-80GB", *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleprobe predict: error: ") and needle in err, err
    assert "Traceback" not in err


def test_bad_predict_targets_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_models(tmp_path)
    not_calibration = tmp_path / "calibration.json"
    not_calibration.write_text(json.dumps({"x": 1}))
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{")
    for argv, needle in (
        (["--model", "bert-base", "--gpu", "H900"], "unknown GPU 'H900'; known: T4"),
        (["--model", str(tmp_path / "gpt"), "--gpu", "T4"], "unsupported architecture 'gpt2'"),
        (["--model", "gpt-17", "--gpu", "T4"], "unknown model 'gpt-17'"),
        (["--model", "bert-base", "--calibration", str(tmp_path / "none.json")], "does not exist"),
        (["--model", "bert-base", "--calibration", str(not_calibration)], "not a scaleprobe"),
        (["--model", "bert-base", "--calibration", str(broken_json)], "broken.json"),
    ):
        assert cli.main(["predict", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


def test_bad_flag_choices_are_argparse_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--log.level", "loud"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err


# --- `scaleprobe run` as a real process: refused before anything is touched --------------------


def run_cases(tmp_path: Path) -> dict[str, tuple[list[str], str, str]]:
    """name -> (extra flags, config text, expected message)."""
    certs = make_certificates(tmp_path / "tls")
    state = f"state: {{file: {tmp_path / 'state.json'}}}\n"
    web = tmp_path / "web"
    web.mkdir()
    (web / "missing-cert.yml").write_text(
        f"tls_server_config: {{cert_file: nope.crt, key_file: {certs.server_key_file}}}\n"
    )
    (web / "bad-hash.yml").write_text("basic_auth_users: {prometheus: not-a-hash}\n")
    (web / "not-yaml.yml").write_text("basic_auth_users: [\n")
    (web / "unknown.yml").write_text(f"basic_auth_user: {{prometheus: '{GOOD_HASH}'}}\n")
    return {
        "bad config": ([], state + "schedule: {interval_seconds: .nan}\n", "expected a finite"),
        "missing cert file": (
            ["--web.config.file", str(web / "missing-cert.yml")],
            state,
            "tls_server_config.cert_file: file not found",
        ),
        "bad bcrypt hash": (
            ["--web.config.file", str(web / "bad-hash.yml")],
            state,
            "basic_auth_users.prometheus: not a bcrypt hash",
        ),
        "web config not YAML": (
            ["--web.config.file", str(web / "not-yaml.yml")],
            state,
            "not valid YAML",
        ),
        "web config unknown key": (
            ["--web.config.file", str(web / "unknown.yml")],
            state,
            "basic_auth_user: unknown key",
        ),
        "missing web config": (
            ["--web.config.file", str(web / "absent.yml")],
            state,
            "cannot read it",
        ),
        "bad listen address": (["--web.listen-address", "nope"], state, "expected HOST:PORT"),
        "port out of range": (
            ["--web.listen-address", "127.0.0.1:70000"],
            state,
            "expected HOST:PORT",
        ),
    }


RUN_CASES = [
    "bad config",
    "missing cert file",
    "bad bcrypt hash",
    "web config not YAML",
    "web config unknown key",
    "missing web config",
    "bad listen address",
    "port out of range",
]


def run_daemon(tmp_path: Path, config_text: str, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "run.yml"
    config.write_text(config_text)
    command = [sys.executable, "-m", "scaleprobe.exporter.cli", "run", "--config.file", str(config)]
    if "--web.listen-address" not in extra:
        command += ["--web.listen-address", "127.0.0.1:0"]
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "xdg"))
    return subprocess.run(
        [*command, *extra], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def existing_state(tmp_path: Path) -> tuple[Path, bytes, int]:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema_version": 1, "note": "an operator's state file"}))
    return path, path.read_bytes(), path.stat().st_mtime_ns


def assert_untouched(path: Path, content: bytes, mtime_ns: int) -> None:
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == mtime_ns
    assert sorted(p.name for p in path.parent.glob("*state.json*")) == ["state.json"]


@pytest.mark.integration
@pytest.mark.parametrize("case", RUN_CASES)
def test_run_refuses_bad_input_with_exit_2_and_touches_nothing(tmp_path: Path, case: str) -> None:
    extra, config_text, needle = run_cases(tmp_path)[case]
    # a state file the daemon cannot read: were anything loaded, it would be moved aside
    state, content, mtime_ns = existing_state(tmp_path)
    result = run_daemon(tmp_path, config_text, *extra)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("scaleprobe run: error: "), result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert_untouched(state, content, mtime_ns)


@pytest.mark.integration
def test_run_on_a_port_in_use_is_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config_text = (
            f"state: {{file: {tmp_path / 'state.json'}}}\nworker: {{command: [/bin/false]}}\n"
        )
        result = run_daemon(tmp_path, config_text, "--web.listen-address", f"127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr
    assert "cannot listen (Address already in use)" in result.stderr
    assert "Traceback" not in result.stderr
