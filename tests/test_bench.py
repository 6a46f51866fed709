"""The benchmark scripts run end to end on a tiny grid and write well-formed results.

They measure for real (the daemon's probes, a real worker subprocess); the figures themselves are
not asserted (timings on a shared machine are not a test), only that the documents hold what
BENCHMARKS.md is built from, consistently: every point measured in every round, scores that
follow from the saved measurements (re-scoring the saved file gives the same tables), ratios that
are the quotients of the figures they come from.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from scaleprobe.models.fit import NEAR_PEAK_RATIO
from scaleprobe.models.predict import gemm_rate

BENCH = Path(__file__).resolve().parent.parent / "bench"
RESULTS = BENCH / "results"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rescore(tmp_path: Path, *args: str) -> dict:
    """The scores ``accuracy.py`` writes with ``args`` (a saved run and what-ifs)."""
    out = tmp_path / "scored.json"
    run("accuracy.py", *args, "--out", str(out))
    return json.loads(out.read_text())["scores"]


@pytest.fixture(scope="module")
def accuracy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "accuracy.json"
    done = run("accuracy.py", "--quick", "--out", str(out))
    return json.loads(out.read_text()), done.stdout


def test_fit_points_lie_off_the_grid_in_a_latin_design() -> None:
    accuracy = load("accuracy")
    batches, seqs = [1, 2, 4, 8, 16], [16, 32, 64, 128, 256, 512]
    for k in (4, 8):
        points = accuracy.fit_points(batches, seqs, k)
        assert len(points) == k
        assert not [p for p in points if p[0] in batches and p[1] in seqs]
        assert all(1 <= b <= 16 and 16 <= s <= 512 for b, s in points)
        # one sequence level per point: each slice of the sequence axis used once
        assert len({s for _, s in points}) == k
    assert accuracy.two_points(batches, seqs) == [(16, 512), (1, 16)]
    # a one-value axis cannot be avoided: the points collapse onto the grid and are deduplicated
    assert accuracy.fit_points([1], [16], 4) == [(1, 16)]


def test_the_compute_dominated_anchor_is_the_slowest_point_without_page_faults() -> None:
    """The two-point setting's compute-dominated point: on a CPU with the first-touch figure, the
    slowest point whose outputs all stay under glibc's largest mmap threshold; BERT's 2048-token
    points qualify (its FFN output is 24 MiB) and the longest of them is the slowest; BigBird's
    eager scores at 4 × 512 are 48 MiB, so 8 × 256. Where nothing is charged for page faults
    (a GPU, a CPU calibration without the figure) it is the largest-work point."""
    from dataclasses import replace

    from scaleprobe.models.architecture import PRESETS
    from scaleprobe.models.devices import cpu_params, find_device, params_from_spec

    accuracy = load("accuracy")
    params = replace(
        cpu_params({"float32": 3.8e11}, 2.6e10, 1.3e-6, 16 * 1024**3),
        first_touch_seconds_per_byte=1.6e-10,
    )
    batches, seqs = [1, 2, 4, 8, 16], [16, 32, 64, 128, 256, 512]
    pick = accuracy.compute_dominated_point
    assert pick(PRESETS["bert-base"], params, batches, seqs) == (4, 512)
    assert pick(PRESETS["bigbird-roberta-base"], params, batches, seqs) == (8, 256)
    # no point qualifies: the published largest-work point
    assert pick(PRESETS["bert-base"], params, [16], [512]) == (16, 512)
    # nothing charged for page faults: every point qualifies, the largest-work one is slowest
    no_figure = replace(params, first_touch_seconds_per_byte=None)
    assert pick(PRESETS["bert-base"], no_figure, batches, seqs) == (16, 512)
    gpu = params_from_spec(find_device("a10g"))
    assert pick(PRESETS["bigbird-roberta-base"], gpu, batches, seqs) == (16, 512)


def test_best_scale_minimises_the_mape_over_every_factor() -> None:
    accuracy = load("accuracy")
    key = accuracy.PointKey
    uniform = {key("m", b, 16, "float32", 1): 0.10 for b in (1, 2, 4)}
    scale, scaled = accuracy.best_scale(uniform)
    assert scale == pytest.approx(1.10)
    assert all(e == pytest.approx(0.0) for e in scaled.values())
    rng = random.Random(7)
    for _ in range(20):
        errors = {key("m", b, 16, "float32", 1): rng.uniform(-0.3, 0.4) for b in range(1, 12)}
        scale, scaled = accuracy.best_scale(errors)
        best = accuracy.mape(scaled.values())
        assert scaled == {k: (1 + e) / scale - 1 for k, e in errors.items()}
        for factor in (0.7 + 0.001 * i for i in range(800)):
            assert best <= accuracy.mape((1 + e) / factor - 1 for e in errors.values()) + 1e-12


def test_the_square_what_if_scores_with_the_first_shape_of_the_streamed_product(
    accuracy_run: tuple[dict, str],
) -> None:
    """--streamed-square: the x½ of a calibration comes from the 768 → 768 rate alone."""
    accuracy = load("accuracy")
    data, _ = accuracy_run
    records = data["calibrations"][0]["probes"]
    (compute,) = [r for r in records if r["probe"] == "compute"]
    product = compute["detail"]["streamed_product"]
    square = accuracy.square_streamed_product(compute)
    assert (
        square["detail"]["streamed_product"]["flops_per_second"]
        == product["rates_by_shape"][0]["flops_per_second"]
    )
    assert compute["detail"]["streamed_product"] is product  # the record itself is left alone
    memory = next(r for r in records if r["probe"] == "memory")
    assert accuracy.square_streamed_product(memory) is memory
    older = {**compute, "detail": {**compute["detail"], "streamed_product": {"m": 16}}}
    assert accuracy.square_streamed_product(older) is older
    peak = accuracy.params_from(records).compute_flops_per_second["float32"]
    try:
        accuracy.READINGS["streamed_square"] = True
        half = accuracy.params_from(records).gemm_half_size
    finally:
        accuracy.READINGS["streamed_square"] = False
    rate = product["rates_by_shape"][0]["flops_per_second"]
    floor = 1 / NEAR_PEAK_RATIO - 1  # the least deficit the probe resolves
    assert half == pytest.approx(16 * max(peak / rate - 1, floor), rel=1e-9)


def test_accuracy_quick_run_is_well_formed(accuracy_run: tuple[dict, str]) -> None:
    data, stdout = accuracy_run
    settings = data["settings"]
    assert data["schema"] == "scaleprobe.bench.accuracy/1"
    assert data["machine"]["torch_threads"] == settings["threads"] >= 1
    grid = {
        (m, b, s)
        for m in settings["models"]
        for b in settings["batch_sizes"]
        for s in settings["seq_lens"]
    }
    measured = {(p["model"], p["batch_size"], p["seq_len"]) for p in data["points"]}
    assert grid <= measured
    for point in data["points"]:
        assert len(point["rounds"]) == settings["rounds"]
        latencies = [r["latency_seconds"] for r in point["rounds"]]
        assert all(latency > 0 for latency in latencies)
        assert min(latencies) <= point["latency_seconds"] <= max(latencies)
    calibration = data["calibrations"][0]
    assert {p["probe"] for p in calibration["probes"]} == {"compute", "memory", "dispatch"}
    assert all(p["outcome"] == "ok" and p["value"] > 0 for p in calibration["probes"])
    # the CPU terms' figures are recorded for future re-scoring, and calibrated
    by_probe = {p["probe"]: p for p in calibration["probes"]}
    assert by_probe["memory"]["detail"]["first_touch_seconds_per_byte"] >= 0
    rates = by_probe["compute"]["detail"]["transcendental_elements_per_second"]
    assert set(rates) == {"tanh", "exp"} and all(rate > 0 for rate in rates.values())
    params = load("accuracy").params_from(calibration["probes"])
    assert params.tanh_elements_per_second == rates["tanh"]

    scores = data["scores"]
    accuracy = load("accuracy")
    scorer = accuracy.Scorer(data)
    probes_params = accuracy.calibration_params(data, "float32", settings["threads"])
    for model in settings["models"]:
        per = scores["accuracy"][model]
        probes = per["probes"]
        assert probes["points"] == len(settings["batch_sizes"]) * len(settings["seq_lens"])
        assert math.isfinite(probes["mape"]) and probes["mape"] >= 0
        for row in probes["by_batch"].values():
            assert abs(row["worst_error"]) >= row["mape"] - 1e-12
        # the in-sample refit fits its own points about as well as the prior it starts from or
        # better: not exactly by construction, because its loss also weighs each point's
        # measured host share (and its Huber loss is not the MAPE), which may trade a little
        # latency error for host error (here once 1.53% against 1.28%)
        assert per["refit_all"]["mape"] <= probes["mape"] + 0.01
        # the best single factor cannot do worse than the factor 1
        shape = per["probes_best_scale"]
        assert shape["points"] == probes["points"]
        assert shape["mape"] <= probes["mape"] + 1e-12 and shape["scale"] > 0
        # the anchors' errors are the probes' errors at the two fitted points
        anchors = [
            accuracy.PointKey(model, b, q, "float32", settings["threads"])
            for b, q in per["two_point"]["fit_points"]
        ]
        assert per["two_point"]["anchor_probes_errors"] == [
            scorer.error(probes_params, key) for key in anchors
        ]
        assert 0 <= scores["noise_floor"][model]["mape"] < math.inf
    # one ratio per round; with the quick run's two rounds a point's median is the mean of its
    # two, so the rounds' ratios sum to 2 at every point, and so do their medians over the grid
    ratios = scores["round_latency_ratio"]
    assert settings["rounds"] == 2 and len(ratios) == 2
    assert sum(ratios) == pytest.approx(2.0)
    assert "| probes |" in stdout and "| noise floor |" in stdout
    # the report names each model's two-point fit points and the rule that chose them
    assert (
        "two_point fitted on [(2, 16), (1, 16)] (batch, seq; compute-dominated point: "
        "no-first-touch)" in stdout
    )


def test_rescoring_the_saved_measurements_gives_the_same_tables(
    accuracy_run: tuple[dict, str], tmp_path: Path
) -> None:
    data, _ = accuracy_run
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    again = tmp_path / "again.json"
    run("accuracy.py", "--load", str(saved), "--out", str(again))
    assert json.loads(again.read_text())["scores"] == data["scores"]


def test_the_cache_ladder_can_be_dropped_or_assumed_when_rescoring(
    accuracy_run: tuple[dict, str], tmp_path: Path
) -> None:
    """--without-cache-ladder scores as if no calibration had measured it; --assume-cache-ladder
    gives calibrations without one the ladder of another run: on a copy of the run with the
    ladder stripped, assuming the run's own gives back its tables exactly."""
    data, _ = accuracy_run
    memory = next(p for p in data["calibrations"][0]["probes"] if p["probe"] == "memory")
    assert memory["detail"]["bandwidth_ratio_by_working_set"][-1][1] == 1.0
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    stripped = json.loads(json.dumps(data))
    for calibration in stripped["calibrations"]:
        for probe in calibration["probes"]:
            probe.get("detail", {}).pop("bandwidth_ratio_by_working_set", None)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(stripped))

    without = rescore(tmp_path, "--load", str(saved), "--without-cache-ladder")
    assert without == rescore(tmp_path, "--load", str(bare))
    assert without["calibration"]["bandwidth_ratio_by_working_set"] == []
    assert without["accuracy"] != data["scores"]["accuracy"]  # the ladder moves predictions
    assert (
        rescore(tmp_path, "--load", str(bare), "--assume-cache-ladder", str(saved))
        == data["scores"]
    )
    # the default anchor is the compute-dominated point without page faults, largest-work on
    # request (the quick grid's points are small: both pick its largest, 2 × 16)
    model = data["settings"]["models"][0]
    assert data["scores"]["fit_points"]["two_point_anchor"] == "no-first-touch"
    assert data["scores"]["accuracy"][model]["two_point"]["fit_points"] == [[2, 16], [1, 16]]
    largest = rescore(tmp_path, "--load", str(saved), "--two-point-anchor", "largest-work")
    assert largest["fit_points"]["two_point_anchor"] == "largest-work"
    assert largest["accuracy"][model]["two_point"]["fit_points"] == [[2, 16], [1, 16]]
    for args, message in (
        (["--assume-cache-ladder", str(bare)], "have no cache ladder"),
        (["--assume-cache-ladder", str(saved), "--without-cache-ladder"], "contradict"),
    ):
        done = subprocess.run(
            [sys.executable, str(BENCH / "accuracy.py"), "--load", str(saved), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and message in done.stderr
        assert "Traceback" not in done.stderr


def test_the_first_touch_what_ifs_rescore_with_another_first_touch_figure(
    accuracy_run: tuple[dict, str], tmp_path: Path
) -> None:
    """--first-touch-scale multiplies the calibrations' first-touch figure; --first-touch-from-
    one-thread replaces it by the run's one-thread calibrations' (median); both refuse what
    they cannot do with exit 2 and a message. --large-outputs-reused scores as if the memory
    probe's allocator check had found large blocks handed back: nothing is charged."""
    data, _ = accuracy_run
    measured = data["scores"]["calibration"]["first_touch_seconds_per_byte"]
    assert measured is not None and measured >= 0
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    with_one_thread = json.loads(json.dumps(data))
    one_thread = json.loads(json.dumps(data["calibrations"][0]))
    one_thread["threads"] = 1
    memory = next(p for p in one_thread["probes"] if p["probe"] == "memory")
    memory["detail"]["first_touch_seconds_per_byte"] = 3.0e-10 + 2 * measured
    with_one_thread["calibrations"].append(one_thread)
    both = tmp_path / "both.json"
    both.write_text(json.dumps(with_one_thread))

    def first_touch(scored: dict) -> float:
        return scored["calibration"]["first_touch_seconds_per_byte"]

    assert first_touch(rescore(tmp_path, "--load", str(saved), "--first-touch-scale", "0.5")) == (
        pytest.approx(0.5 * measured, rel=1e-12)
    )
    replaced = rescore(tmp_path, "--load", str(both), "--first-touch-from-one-thread")
    assert first_touch(replaced) == pytest.approx(3.0e-10 + 2 * measured, rel=1e-12)
    scaled = rescore(
        tmp_path, "--load", str(both), "--first-touch-from-one-thread", "--first-touch-scale", "0.5"
    )
    assert first_touch(scaled) == pytest.approx(0.5 * (3.0e-10 + 2 * measured), rel=1e-12)
    # this process runs glibc's defaults: the check found fresh mappings, the price is charged
    memory_records = [
        p for c in data["calibrations"] for p in c["probes"] if p["probe"] == "memory"
    ]
    assert memory_records
    assert all(p["detail"]["large_outputs_fault"] is True for p in memory_records)
    assert first_touch(rescore(tmp_path, "--load", str(saved), "--large-outputs-reused")) == 0.0
    # --elementwise-ratio replaces the CPU default rho (0.5) in every calibration
    assert data["scores"]["calibration"]["elementwise_bandwidth_ratio"] == 0.5
    rho = rescore(tmp_path, "--load", str(saved), "--elementwise-ratio", "1.0")
    assert rho["calibration"]["elementwise_bandwidth_ratio"] == 1.0
    for args, message in (
        (["--load", str(saved), "--first-touch-from-one-thread"], "no one-thread calibration"),
        (["--load", str(saved), "--first-touch-scale", "0"], "positive number"),
        (["--load", str(saved), "--elementwise-ratio", "-1"], "positive number"),
        (["--first-touch-from-one-thread"], "give --load"),
        (["--as-if-modelled-faults"], "give --load"),
    ):
        refused("accuracy.py", args, message)


def refused(script: str, args: list[str], message: str) -> None:
    """``bench/script args`` exits with code 2 and ``message`` on stderr, no traceback."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def with_first_touch(data: dict, figure: float, reused: bool = False) -> dict:
    """A copy of a saved run whose every memory record read ``figure`` s/B of first touch and
    found large outputs faulting (or, with ``reused``, handed back)."""
    copy = json.loads(json.dumps(data))
    for calibration in copy["calibrations"]:
        for record in calibration["probes"]:
            if record["probe"] == "memory":
                record["detail"]["first_touch_seconds_per_byte"] = figure
                record["detail"]["large_outputs_fault"] = not reused
    return copy


def test_as_if_modelled_faults_moves_each_round_by_the_price_of_its_unmodelled_faults(
    accuracy_run: tuple[dict, str],
) -> None:
    """Each round's latency less the first-touch price of its measured fault bytes beyond the
    charged ones; a profiled round (no fault count) takes the point's median count; the point's
    latency is the median of its moved rounds; under a reusing allocator nothing is charged."""
    accuracy = load("accuracy")
    data, _ = accuracy_run
    price = 2.0e-10
    threads = data["settings"]["threads"]
    point = {
        "model": "distilbert-base", "batch_size": 16, "seq_len": 512, "dtype": "float32",
        "threads": threads, "latency_seconds": 3.0, "page_fault_bytes_per_forward": 1.5e9,
        "rounds": [
            {"round": 0, "latency_seconds": 3.0, "page_fault_bytes_per_forward": None},
            {"round": 1, "latency_seconds": 3.2, "page_fault_bytes_per_forward": 2.0e9},
            {"round": 2, "latency_seconds": 2.9, "page_fault_bytes_per_forward": 1.0e9},
        ],
    }  # fmt: skip
    # what the model charges there: ffn_up's output and the GELU's, 16·512·3072 floats each, in
    # each of the 6 layers (every other fresh output is under 32 MiB)
    charged = 12 * 16 * 512 * 3072 * 4
    for reused, expected_charge in ((False, charged), (True, 0)):
        saved = with_first_touch(data, price, reused)
        saved["points"] = [*saved["points"], point]
        moved = accuracy.with_modelled_faults(saved)
        *others, big = moved["points"]
        rounds = [r["latency_seconds"] for r in big["rounds"]]
        assert rounds == pytest.approx(
            [
                3.0 - price * (1.5e9 - expected_charge),
                3.2 - price * (2.0e9 - expected_charge),
                2.9 - price * (1.0e9 - expected_charge),
            ],
            rel=1e-12,
        )
        assert big["latency_seconds"] == statistics.median(rounds)
        for before, after in zip(saved["points"], others, strict=False):
            faults = [r.get("page_fault_bytes_per_forward") for r in before["rounds"]]
            if not any(faults) and not before.get("page_fault_bytes_per_forward"):
                # a small point that faulted nothing keeps its latencies
                assert after["latency_seconds"] == pytest.approx(before["latency_seconds"])
        assert point["rounds"][1]["latency_seconds"] == 3.2  # the input is left alone
    without = json.loads(json.dumps(data))
    for calibration in without["calibrations"]:
        for record in calibration["probes"]:
            record.get("detail", {}).pop("first_touch_seconds_per_byte", None)
    with pytest.raises(accuracy.InputError, match="no first-touch figure"):
        accuracy.with_modelled_faults(without)


def test_tally_gives_each_target_its_verdict() -> None:
    """The verdicts follow issue #7's targets: probes alone at 10% at every batch size, two
    points at 5% or 1.5 x the floor at every batch size, the 4-point refit at 3% overall."""
    tally = load("tally")

    def scores(probes: list[float], two: list[float], floors: list[float], k4: float) -> dict:
        def table(values: list[float]) -> dict:
            rows = {str(b): {"mape": v} for b, v in zip((1, 16), values, strict=True)}
            return {"by_batch": rows, "mape": sum(values) / len(values)}

        floor = {"by_batch": dict(zip(("1", "16"), floors, strict=True))}
        floor["mape"] = sum(floors) / len(floors)
        return {
            "noise_floor": {"m": floor},
            "accuracy": {
                "m": {"probes": table(probes), "two_point": table(two), "refit_k4": {"mape": k4}}
            },
        }

    met = tally.verdicts(scores([0.04, 0.10], [0.05, 0.06], [0.02, 0.04], 0.03), "m")
    assert met["probes_met"] and met["two_point_met"] and met["refit_k4_met"]
    assert met["probes_worst"] == 0.10
    assert met["refit_k4_over_floor"] == pytest.approx(0.03 / 0.03)
    assert not met["floor_above_k4_target"]
    missed = tally.verdicts(scores([0.101, 0.02], [0.02, 0.0601], [0.05, 0.04], 0.031), "m")
    assert not missed["probes_met"]
    assert not missed["two_point_met"]  # 6.01% over both 5% and 1.5 x 4%
    assert not missed["refit_k4_met"] and missed["floor_above_k4_target"]


def test_tally_rescores_saved_runs_and_refuses_what_it_cannot_read(
    accuracy_run: tuple[dict, str], tmp_path: Path
) -> None:
    """One row per model of each run, with the run's own re-scored figures; a missing file or a
    what-if without a file is exit code 2 with the reason, no traceback."""
    tally = load("tally")
    data, _ = accuracy_run
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    done = run("tally.py", str(saved), f"{saved} --elementwise-ratio 1.0")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| saved |")]
    models = data["settings"]["models"]
    assert len(rows) == 2 * len(models)
    verdict = tally.verdicts(data["scores"], models[0])
    assert f"| {100 * verdict['refit_k4']:.1f}% " in rows[0]
    assert f"model-runs: {2 * len(models)}" in done.stdout
    for args, message in (
        ([str(tmp_path / "missing.json")], "missing.json"),
        (["--elementwise-ratio 1.0"], "give the saved run's file first"),
    ):
        refused("tally.py", args, message)


def test_first_touch_threads_quick_run_is_well_formed(tmp_path: Path) -> None:
    """Two processes per condition (as before, then with the spare pages released per CPU),
    each measuring the probe's fresh-write figure at 2, 2 and 1 threads; the report lists every
    figure on its row; --load prints the same report, and still reads a run of schema /1."""
    out = tmp_path / "first_touch_threads.json"
    done = run("first_touch_threads.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["schema"] == "scaleprobe.bench.first_touch_threads/2"
    assert data["hold_gb"] == 0.2
    rows = done.stdout.splitlines()
    for condition in ("alone", "holding"):
        processes = data["conditions"][condition]
        assert [p["released"] for p in processes] == [False, True]
        for process in processes:
            figures = process["figures"]
            assert [f["threads"] for f in figures] == [2, 2, 1]
            cells = [f"{1e9 * f['first_touch_seconds_per_byte']:.3f}" for f in figures]
            way = "released per CPU" if process["released"] else "as before"
            assert any(way in row and " | ".join(cells) in row for row in rows)
            assert all(0.0 <= f["first_touch_seconds_per_byte"] < 1e-8 for f in figures)
    assert run("first_touch_threads.py", "--load", str(out)).stdout == done.stdout
    old = run("first_touch_threads.py", "--load", str(RESULTS / "first_touch_threads.json"))
    assert "| alone | as before | 0.197 | 0.193 | 0.289 |" in old.stdout


def test_linear_curve_quick_run_is_well_formed(tmp_path: Path) -> None:
    """One shape at two row counts against the curve of a calibration run just before; every
    ratio in the report is the measured rate over the curve of the saved calibration; --load
    prints the same; an accuracy run that cannot be read is refused with exit 2."""
    linear_curve = load("linear_curve")
    out = tmp_path / "linear_curve.json"
    done = run("linear_curve.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["schema"] == "scaleprobe.bench.linear_curve/1"
    assert [(e["in_features"], e["out_features"], e["rows"]) for e in data["measured"]] == [
        (768, 768, 16),
        (768, 768, 64),
    ]
    params = linear_curve.params_of(data)
    for entry in data["measured"]:
        rate = entry["flops_per_second"]
        assert 1e8 < rate < 1e14
        ratio = rate / gemm_rate(params, "float32", entry["rows"])
        assert f"{rate / 1e9:.0f} ({ratio:.2f})" in done.stdout
    assert run("linear_curve.py", "--load", str(out)).stdout == done.stdout
    refused = subprocess.run(
        [
            sys.executable,
            str(BENCH / "linear_curve.py"),
            "--quick",
            "--calibration-from",
            str(tmp_path / "missing.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "missing.json" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_fresh_worker_times_every_grid_point_of_the_saved_run(
    accuracy_run: tuple[dict, str], tmp_path: Path
) -> None:
    """Against the quick accuracy run: every grid point of its model timed in a fresh worker per
    round; the report sets each fresh median beside the saved latency; --load prints the same;
    a model the run does not have is refused with exit 2."""
    data, _ = accuracy_run
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(data))
    out = tmp_path / "fresh_worker.json"
    model = data["settings"]["models"][0]
    done = run(
        "fresh_worker.py", "--against", str(saved), "--model", model, "--rounds", "1",
        "--out", str(out),
    )  # fmt: skip
    fresh = json.loads(out.read_text())
    assert fresh["schema"] == "scaleprobe.bench.fresh_worker/1"
    settings = data["settings"]
    grid = [(b, q) for b in settings["batch_sizes"] for q in settings["seq_lens"]]
    assert [(p["batch_size"], p["seq_len"]) for p in fresh["points"]] == grid
    swept = {(p["batch_size"], p["seq_len"]): p["latency_seconds"] for p in data["points"]}
    for point in fresh["points"]:
        (latency,) = point["latencies_seconds"]
        assert 0 < latency < 60
        ratio = latency / swept[(point["batch_size"], point["seq_len"])]
        assert f"{1e3 * latency:.1f} | {ratio:.3f} |" in done.stdout
    assert run("fresh_worker.py", "--load", str(out)).stdout == done.stdout
    refused = subprocess.run(
        [sys.executable, str(BENCH / "fresh_worker.py"), "--against", str(saved), "--model", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "has no model 'x'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_probe_cost_quick_run_is_well_formed(tmp_path: Path) -> None:
    out = tmp_path / "probe_cost.json"
    done = run("probe_cost.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["schema"] == "scaleprobe.bench.probe_cost/1"
    cycle = data["cycles"][0]
    assert cycle["outcome"] == "ok", cycle["reason"]
    assert set(cycle["probes"]) == {"compute", "memory", "dispatch"}
    assert [p["outcome"] for p in cycle["points"]] == ["ok"]
    sweep = data["full_sweep"]
    assert sweep["points"] == sweep["points_ok"] == 1
    s = data["summary"]
    assert 0 < s["calibration_device_seconds"] < s["cycle_device_seconds"]
    assert s["calibration_share_of_sweep_ratio"] == pytest.approx(
        s["calibration_device_seconds"] / sweep["device_seconds"]
    )
    assert s["duty_cycle_ratio"] == pytest.approx(
        s["cycle_device_seconds"] / data["config"]["interval_seconds"]
    )
    assert "calibration / full sweep" in done.stdout


def test_exporter_cost_quick_run_is_well_formed() -> None:
    """A real daemon with the fake worker for a few seconds: the figures BENCHMARKS.md quotes."""
    done = run("exporter_cost.py", "--fake-worker", "--seconds", "8", "--json")
    figures = json.loads(done.stdout)
    assert figures["scrape_errors"] == 0
    scrapes = [
        figures[key]["scrapes"] for key in ("metrics_while_cycle_runs", "metrics_between_cycles")
    ]
    assert sum(scrapes) >= 8  # 2 clients every 0.25 s for 8 s
    assert figures["metrics_while_cycle_runs"]["scrapes"] > 0  # the fake worker runs 5 s
    for summary in (figures["metrics_while_cycle_runs"], figures["metrics_between_cycles"]):
        if summary["scrapes"]:
            assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert 0 < figures["exporter_rss_mb_at_start"] <= figures["exporter_rss_mb_max"]
    assert figures["exposition_series"] > 0 and figures["worker"] == "fake (nice 10)"
    render = figures["render_cpu_ms_per_scrape"]
    assert set(render) == {"text", "text_first", "prometheus_gzip", "prometheus_gzip_first"}
    assert all(value > 0 for value in render.values())


def test_stored_calibrations_without_the_cpu_figures_predict_as_before() -> None:
    """bench/results/accuracy.json predates the first-touch and transcendental figures: its
    calibration has none, so re-scoring it uses the model as it was."""
    accuracy = load("accuracy")
    data = json.loads((RESULTS / "accuracy.json").read_text())
    records = [r for c in data["calibrations"] for r in c["probes"]]
    params = accuracy.params_from(accuracy.median_probe_records(records))
    assert params.first_touch_seconds_per_byte is None
    assert params.tanh_elements_per_second is None and params.exp_elements_per_second is None


def test_median_records_take_the_median_first_touch_of_the_calibrations() -> None:
    """Per probe the record with the median value, but its first-touch figure is the median of
    the calibrations' own: the median-bandwidth calibration may be the one whose clone landed on
    reclaimed memory (as in accuracy-5-1thread.json)."""
    accuracy = load("accuracy")
    records = [
        {"probe": "memory", "outcome": "ok", "value": value,
         "detail": {"first_touch_seconds_per_byte": figure, "buffer_bytes": 1}}
        for value, figure in ((2.0e10, 2.5e-10), (2.5e10, 3.0e-9), (3.0e10, 2.7e-10))
    ] + [{"probe": "memory", "outcome": "failed", "value": None, "detail": {}}]  # fmt: skip
    (chosen,) = accuracy.median_probe_records(records)
    assert chosen["value"] == 2.5e10
    assert chosen["detail"] == {"first_touch_seconds_per_byte": 2.7e-10, "buffer_bytes": 1}
    assert records[1]["detail"]["first_touch_seconds_per_byte"] == 3.0e-9  # input untouched


def test_median_records_take_the_median_half_size_of_the_calibrations() -> None:
    """The compute record with the median peak keeps its peak, and its streamed product reads
    the median of the calibrations' x½ (each from its own peak), as the daemon steadies it: the
    median-peak calibration may be the one whose 16-row product read slow (accuracy-45)."""
    accuracy = load("accuracy")
    from scaleprobe.models import fit

    def compute(peak: float, half_size: float) -> dict:
        product = {"m": 16, "n": 768, "k": 768, "flops_per_second": peak / (1 + half_size / 16)}
        detail = {"m": 2048, "n": 2048, "k": 2048, "streamed_product": product}
        return {"probe": "compute", "outcome": "ok", "value": peak, "dtype": "float32",
                "detail": detail}  # fmt: skip

    records = [compute(3.85e11, 92.4), compute(3.78e11, 50.0), compute(3.93e11, 52.1)]
    (chosen,) = accuracy.median_probe_records(records)
    assert chosen["value"] == 3.85e11
    probes = fit.ProbeResults.from_records([chosen])
    (m, _, _, rate) = probes.streamed_products["float32"]
    assert m * (chosen["value"] / rate - 1) == pytest.approx(52.1)
    assert records[0]["detail"]["streamed_product"]["flops_per_second"] == pytest.approx(
        3.85e11 / (1 + 92.4 / 16)
    )  # input untouched
    plain = {"probe": "compute", "outcome": "ok", "value": 3.8e11, "detail": {"m": 2048}}
    assert accuracy.median_probe_records([plain])[0]["detail"] == {"m": 2048}


def test_large_activations_report_compares_without_and_with_the_cpu_terms() -> None:
    """Synthetic measurements equal to the model with the terms: "after" errs by 0, "before"
    (the same calibration without the figures) predicts BigBird 16 × 512 too fast."""
    from scaleprobe.models.architecture import PRESETS
    from scaleprobe.models.predict import predict

    module = load("large_activations")
    accuracy = load("accuracy")
    records = [
        {"probe": "compute", "outcome": "ok", "dtype": "float32", "value": 1.4e11,
         "detail": {"transcendental_elements_per_second": {"tanh": 7e8, "exp": 1.9e9}}},
        {"probe": "memory", "outcome": "ok", "value": 4e10,
         "detail": {"first_touch_seconds_per_byte": 2.8e-10}},
        {"probe": "dispatch", "outcome": "ok", "value": 9e-7, "detail": {}},
    ]  # fmt: skip
    params = accuracy.params_from(records)
    points = [
        {
            "model": "bigbird-roberta-base",
            "batch_size": 16,
            "seq_len": 512,
            "latency_seconds": predict(
                PRESETS["bigbird-roberta-base"], params, 16, 512, "float32"
            ).latency_seconds,
        }
    ]
    data = {"machine": {}, "calibrations": [{"probes": records}], "points": points}
    row = next(line for line in module.report(data).splitlines() if "16×512" in line)
    before, after = row.split("|")[3], row.split("|")[4]
    assert after.strip().endswith("+0%") and before.strip().endswith("%")
    assert int(before.split(",")[1].strip().rstrip("%")) < -20


def test_page_fault_count_runs_on_a_small_point() -> None:
    """The --faults check on one small point: nothing it outputs reaches 32 MiB, so the model
    charges no first touch there (the large points are for bench runs, not the suite)."""
    table = load("large_activations").page_faults((("bert-base", 1, 8),))
    row = next(line for line in table.splitlines() if "bert-base 1×8" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[3]) >= 0 and cells[4] == "0"


def test_tuned_malloc_check_runs_both_allocator_settings_in_fresh_processes() -> None:
    """--tuned-malloc on one small point: two tables, one per glibc setting, each from a child
    process that really ran the forward (its time is positive)."""
    module = load("large_activations")
    assert module.fault_points("bert-base:1x8,bigbird-roberta-base:2X16") == (
        ("bert-base", 1, 8),
        ("bigbird-roberta-base", 2, 16),
    )
    for bad in ("bert-base:1x", "nope:1x8", "bert-base:0x8"):
        with pytest.raises(argparse.ArgumentTypeError):
            module.fault_points(bad)
    tables = [
        module.fault_check_in_child((("bert-base", 1, 8),), 1, 2, env)
        for env in ({}, module.TUNED_MALLOC_ENV)
    ]
    for table in tables:
        assert table.startswith("threads 1")
        row = next(line for line in table.splitlines() if "bert-base 1×8" in line)
        assert float(row.strip("|").split("|")[1]) > 0


def test_op_profile_quick_run_sets_each_family_beside_the_model(tmp_path: Path) -> None:
    """A tiny encoder at one point: every aten op's self time lands in one family, so the
    families and the time outside ops add up to the profiled forward's wall time; each cell of
    the report is the measured family over what the model charges for it (from the saved
    calibration); the attention rates either side of the block step are reported; --load prints
    the same; a bad point or an unknown model exits 2."""
    op_profile = load("op_profile")
    out = tmp_path / "op_profile.json"
    done = run("op_profile.py", "--quick", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["schema"] == "scaleprobe.bench.op_profile/1"
    [entry] = data["measured"]
    assert (entry["batch_size"], entry["seq_len"]) == (1, 16)
    families = entry["families_seconds"]
    assert set(families) == set(op_profile.FAMILIES)
    assert families["linear"] > 0 and all(v >= 0 for v in families.values())
    assert sum(families.values()) + entry["outside_ops_seconds"] == pytest.approx(
        entry["profiled_wall_seconds"]
    )
    params = op_profile.params_from(data["calibration"]["probes"])
    arch = op_profile.architectures_of(data)[entry["model"]]
    model = op_profile.charged(arch, params, 1, 16)
    assert model["linear"] > 0 and model["bias_fill"] > 0
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| {entry['model']}"))
    assert op_profile.cell(families["linear"], model["linear"]) in row
    assert op_profile.cell(entry["wall_seconds"], model["latency"]) in row
    # fused attention either side of the CPU kernel's block step, beside the model's rate
    assert [e["queries"] for e in data["attention"]] == list(op_profile.ATTENTION_STEP)
    rows = op_profile.attention_report(data, params)[2:]
    for line, entry, block in zip(rows, data["attention"], (32, 64), strict=True):
        rate = entry["flops_per_second"]
        assert 1e8 < rate < 1e14
        model = gemm_rate(params, "float32", block)  # the kernel's query block
        assert line == f"- {entry['queries']} queries: {rate / 1e9:.0f} / {model / 1e9:.0f}"
        assert line in done.stdout
    assert run("op_profile.py", "--load", str(out)).stdout == done.stdout
    for bad, says in ((["--points", "4y128"], "bad point '4y128'"), (["--models", "gpt9"], "gpt9")):
        refused = subprocess.run(
            [sys.executable, str(BENCH / "op_profile.py"), *bad],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2 and says in refused.stderr
        assert "Traceback" not in refused.stderr


def test_host_ratio_is_what_the_small_forwards_pay_over_the_models_warm_host_time() -> None:
    host_ratio = load("host_ratio")
    accuracy = load("accuracy")
    path = RESULTS / "accuracy-22.json"
    data = json.loads(path.read_text())
    row = host_ratio.implied_ratios(data)
    params = accuracy.calibration_params(data, "float32", 2)
    assert row["threads"] == 2
    assert row["probe"] == params.cold_host_ratio
    assert len(row["implied"]) == 6  # DistilBERT and BERT at 1 x 16, 2 x 16, 1 x 32
    # charging the implied ratio instead of the probe's reproduces the measured latency
    scorer = accuracy.Scorer(data)
    for name, kappa in row["implied"].items():
        model, shape = name.split()
        batch, seq = (int(v) for v in shape.split("x"))
        key = accuracy.PointKey(model, batch, seq, "float32", 2)
        cost = host_ratio.forward_cost(scorer.architectures[model], batch, seq, "float32")
        matrix_share = host_ratio.cold_host_scale(cost, params)
        assert matrix_share == pytest.approx(params.cold_host_ratio)  # base models: full κ
        timing = host_ratio.time_forward(cost, replace(params, cold_host_ratio=kappa))
        assert timing.latency_seconds == pytest.approx(scorer.measured(key), rel=1e-9)
    assert row["implied_median"] == pytest.approx(statistics.median(row["implied"].values()))
    done = run("host_ratio.py", str(path))
    assert done.stdout.startswith("accuracy-22.json: 2t probe ")


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_host_ratio_refuses_a_run_it_cannot_read_with_exit_2(
    tmp_path: Path, content: str | None
) -> None:
    """A missing file, a document without a run's settings, or text that is not JSON: one line
    naming the file, exit code 2, no traceback."""
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    done = subprocess.run(
        [sys.executable, str(BENCH / "host_ratio.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and str(path) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
