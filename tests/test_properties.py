"""Property-based tests (hypothesis) of the loaders that read what users and crashes leave.

- The config loader, fed random documents (random values under the real keys, random keys, random
  YAML text), returns a ``Config`` or raises ``InputError``: never any other exception. So does
  the web config parser.
- The state loader, fed random bytes or a real state document with one value anywhere replaced
  by random JSON, returns ``None`` (the file moved aside) or a snapshot the daemon can use: it
  renders, serves as JSON, seeds a ``Daemon`` and writes back unchanged. Never an exception.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import FakeNVML
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from sample_snapshot import sample_snapshot
from scaleprobe.exporter.api import capacity_document, curves_document
from scaleprobe.exporter.config import (
    MODEL_KEYS,
    TOP_KEYS,
    Config,
    config_from_dict,
    default_config,
    load_config,
)
from scaleprobe.exporter.daemon import Daemon
from scaleprobe.exporter.http import default_registry
from scaleprobe.exporter.snapshot import Snapshot
from scaleprobe.exporter.state import load_snapshot, save_snapshot
from scaleprobe.exporter.webconfig import WebConfig, parse_web_config
from scaleprobe.models.errors import InputError

NO_NVML = FakeNVML(fail_init=True)  # this machine has none; the fake fails the same way, faster
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- random JSON-like values ---------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "cuda:0", "bert-base", "1GiB", "512 MiB", "float16", "first"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)

SECTION_KEYS = {
    "grid": ("batch_sizes", "seq_lens"),
    "schedule": ("interval_seconds", "jitter_seconds", "cycle_budget_seconds", "points_per_cycle"),
    "guard": ("max_utilization_ratio", "min_free_memory_bytes", "memory_cap_bytes"),
    "worker": ("timeout_seconds", "command", "backoff_initial_seconds", "backoff_max_seconds"),
    "state": ("file", "history_max_samples", "history_max_age_seconds"),
    "baseline": ("mode",),
}
small_ints = st.lists(st.integers(min_value=-2, max_value=600), min_size=0, max_size=4)


def section(name: str) -> st.SearchStrategy[Any]:
    keys = SECTION_KEYS[name]
    plausible = st.one_of(values, small_ints, st.integers(0, 10**4), st.floats(0, 10**4))
    return st.one_of(
        values,
        st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), plausible, max_size=5),
    )


model_entry = st.one_of(
    values,
    st.sampled_from(["bert-base", "distilbert-base", "bigbird-roberta-base", "./nope", "gpt-2"]),
    st.dictionaries(
        st.sampled_from(MODEL_KEYS) | st.text(max_size=6),
        st.one_of(
            values,
            st.sampled_from(["bert-base", "distilbert-base", "m1"]),
            st.fixed_dictionaries(
                {}, optional={"batch_size": st.integers(-1, 64), "seq_len": st.integers(-1, 9000)}
            ),
        ),
        max_size=3,
    ),
)
documents = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "devices": st.one_of(values, st.lists(st.sampled_from(["cpu", "cuda:0", "cuda:1"]))),
            "dtype": st.one_of(values, st.sampled_from(["auto", "float32", "bfloat16"])),
            "models": st.one_of(values, st.lists(model_entry, max_size=3)),
            "series_cap": st.one_of(values, st.integers(-5, 10**6)),
            **{name: section(name) for name in SECTION_KEYS},
        },
    ),
    st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=8), values, max_size=4),
)


@PROPERTY_SETTINGS
@given(document=documents)
def test_the_config_loader_returns_a_config_or_raises_input_error(document: Any) -> None:
    base_dir = Path(tempfile.gettempdir())
    try:
        config = config_from_dict(document, base_dir=base_dir, source="random.yml", nvml=NO_NVML)
    except InputError as error:
        assert str(error).strip()
        return
    assert isinstance(config, Config)
    numbers = [
        config.interval_seconds,
        config.jitter_seconds,
        config.cycle_budget_seconds,
        config.worker_timeout_seconds,
        config.backoff_initial_seconds,
        config.backoff_max_seconds,
        config.history_max_age_seconds,
        config.max_utilization_ratio,
    ]
    assert all(math.isfinite(n) and n >= 0 for n in numbers), config
    assert config.worker_timeout_seconds > config.cycle_budget_seconds
    assert config.jitter_seconds < config.interval_seconds
    assert config.batch_sizes and min(config.batch_sizes) >= 1
    assert config.seq_lens and min(config.seq_lens) >= 1


yaml_text = st.one_of(
    st.text(max_size=200),
    documents.map(lambda d: yaml.safe_dump(d, default_flow_style=True, allow_unicode=True)),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@PROPERTY_SETTINGS
@given(text=yaml_text)
def test_a_random_config_file_loads_or_is_an_input_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "random.yml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        assert isinstance(load_config(path, nvml=NO_NVML), Config)
    except InputError as error:
        assert str(error).strip()


GOOD_HASH = "$2b$04$" + "a" * 53
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version")
web_documents = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "tls_server_config": st.one_of(
                values,
                st.dictionaries(
                    st.sampled_from((*TLS_KEYS, "max_version", "cipher_suites")),
                    st.one_of(
                        values,
                        st.sampled_from(["RequireAndVerifyClientCert", "TLS13", "TLS09", "x.crt"]),
                    ),
                    max_size=5,
                ),
            ),
            "http_server_config": st.one_of(
                values, st.fixed_dictionaries({}, optional={"headers": values, "http2": values})
            ),
            "basic_auth_users": st.one_of(
                values,
                st.dictionaries(st.text(max_size=6), st.one_of(values, st.just(GOOD_HASH))),
            ),
        },
    ),
)


@PROPERTY_SETTINGS
@given(document=web_documents)
def test_the_web_config_parser_returns_a_config_or_raises_input_error(document: Any) -> None:
    try:
        web_config = parse_web_config(document, base_dir=Path(tempfile.gettempdir()))
    except InputError as error:
        assert str(error).strip()
        return
    assert isinstance(web_config, WebConfig)
    assert all(isinstance(user, str) for user in web_config.basic_auth_users)


# --- the state loader ----------------------------------------------------------------------------

REAL_STATE = sample_snapshot().to_dict()
DAEMON_CONFIG = default_config(devices=("cpu", "cuda:0"))


@st.composite
def damaged_states(draw: st.DrawFn) -> Any:
    """The sample state document with one value, somewhere in it, replaced by random JSON."""
    document = copy.deepcopy(REAL_STATE)
    parent: Any = None
    key: Any = None
    node: Any = document
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 5)) > 0:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        parent, node = node, node[key]
    replacement = draw(values)
    if parent is None:
        return replacement
    parent[key] = replacement
    return document


def check_usable(snapshot: Snapshot, tmp_path: Path) -> None:
    """What the daemon does with a loaded state: render, serve JSON, seed itself, write back."""
    text = generate_latest(default_registry(lambda: snapshot)).decode()
    assert "scaleprobe_collector_success 1.0" in text, text[-2000:]
    now = snapshot.created_at_seconds if math.isfinite(snapshot.created_at_seconds) else 0.0
    json.dumps(capacity_document(snapshot, now), allow_nan=False)
    json.dumps(curves_document(snapshot, now), allow_nan=False)
    daemon = Daemon(
        DAEMON_CONFIG, ("cpu", "cuda:0"), state_path=tmp_path / "seeded.json", initial=snapshot
    )
    assert daemon.save()
    again = tmp_path / "again.json"
    save_snapshot(snapshot, again)
    assert load_snapshot(again) == snapshot


@PROPERTY_SETTINGS
@given(document=damaged_states())
def test_a_damaged_state_file_is_moved_aside_or_usable(tmp_path: Path, document: Any) -> None:
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    path = directory / "state.json"
    path.write_text(json.dumps(document))
    loaded = load_snapshot(path)
    if loaded is None:
        assert not path.exists()
        assert len(list(directory.glob("state.json.corrupt-*"))) == 1
        return
    assert path.exists()
    check_usable(loaded, directory)


@PROPERTY_SETTINGS
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes_as_a_state_file_are_moved_aside(tmp_path: Path, content: bytes) -> None:
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    path = directory / "state.json"
    path.write_bytes(content)
    loaded = load_snapshot(path)
    if loaded is not None:  # a few bytes can be a valid state only by a miracle; then it must work
        check_usable(loaded, directory)
        return
    asides = list(directory.glob("state.json.corrupt-*"))
    assert [a.read_bytes() for a in asides] == [content]


def test_the_undamaged_sample_state_is_usable(tmp_path: Path) -> None:
    """The property above is not vacuous: the undamaged document loads and passes every check."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps(REAL_STATE))
    loaded = load_snapshot(path)
    assert loaded is not None
    check_usable(loaded, tmp_path)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_number_in_the_state_file_is_moved_aside(tmp_path: Path, literal: str) -> None:
    """json.loads accepts these, but the daemon writes its state with allow_nan=False: a file
    holding one was not written by it, and would make every later state write fail."""
    path = tmp_path / "state.json"
    text = json.dumps(REAL_STATE).replace(
        '"probe_device_seconds_total": 42.5', f'"probe_device_seconds_total": {literal}'
    )
    assert literal in text
    path.write_text(text)
    assert load_snapshot(path) is None
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
