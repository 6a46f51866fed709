"""The guard: NVML checks through FakeNVML, the memory cap and OOM handling through FakeCuda,
and the one wrapper that turns any probe failure into a recorded outcome."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scaleprobe.probes.guard import Guard, SkipProbe, run_guarded

from tests.fakes import FakeCuda, FakeGPU, FakeNVML

GiB = 1024**3


def cuda_guard(nvml: object, **kwargs: object) -> Guard:
    return Guard(
        "cuda:0",
        max_utilization_ratio=0.5,
        min_free_memory_bytes=4 * GiB,
        nvml=nvml,
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_idle_gpu_with_memory_lets_the_probe_run() -> None:
    nvml = FakeNVML(gpus=[FakeGPU(utilization_percent=20, free_bytes=10 * GiB)])
    reading = cuda_guard(nvml).check()
    assert reading.checked and reading.outcome is None
    assert reading.utilization_ratio == pytest.approx(0.2)
    assert reading.free_memory_bytes == 10 * GiB


def test_a_busy_gpu_skips_the_probe_with_a_reason() -> None:
    nvml = FakeNVML(gpus=[FakeGPU(utilization_percent=85)])
    reading = cuda_guard(nvml).check()
    assert reading.outcome == "skipped_busy"
    assert "85%" in reading.reason and "50%" in reading.reason


def test_short_memory_skips_the_probe_with_a_reason() -> None:
    nvml = FakeNVML(gpus=[FakeGPU(utilization_percent=10, free_bytes=2 * GiB)])
    reading = cuda_guard(nvml).check()
    assert reading.outcome == "skipped_memory"
    assert str(2 * GiB) in reading.reason


def test_the_guard_reads_the_gpu_the_device_names() -> None:
    nvml = FakeNVML(gpus=[FakeGPU(utilization_percent=0), FakeGPU(utilization_percent=99)])
    assert Guard("cuda:1", nvml=nvml).check().outcome == "skipped_busy"
    assert Guard("cuda:0", nvml=nvml).check().outcome is None


def test_the_reading_changes_between_probes() -> None:
    nvml = FakeNVML()
    guard = cuda_guard(nvml)
    assert guard.check().outcome is None
    nvml.gpus[0].utilization_percent = 95  # the serving workload wakes up
    assert guard.check().outcome == "skipped_busy"


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (None, "NVML not available"),
        (FakeNVML(fail_init=True), "Driver Not Loaded"),
        (FakeNVML(gpus=[]), "Invalid Argument"),
    ],
)
def test_without_nvml_the_guard_says_so_and_probes_run(nvml: object, reason: str) -> None:
    guard = cuda_guard(nvml)
    reading = guard.check()
    assert not reading.checked and reading.outcome is None
    assert reason in reading.reason
    entry = run_guarded("compute", lambda: {"value": 1.0}, guard)
    assert entry["outcome"] == "ok"


def test_a_failing_query_is_reported_not_raised() -> None:
    reading = cuda_guard(FakeNVML(fail_queries=True)).check()
    assert not reading.checked and "GPU is lost" in reading.reason


def stat_line(busy: int, idle: int, steal: int = 0) -> str:
    """A /proc/stat whose aggregate line has ``busy`` user ticks, ``idle`` idle ticks."""
    return f"cpu  {busy} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"


class StatFile:
    """A /proc/stat in a temporary file that the injected ``sleep`` advances, as time would."""

    def __init__(self, path: Path, samples: list[tuple[int, int, int]]) -> None:
        self.path, self.samples = path, iter(samples)
        self.sleeps: list[float] = []
        self.write()

    def write(self) -> None:
        busy, idle, steal = next(self.samples)
        self.path.write_text(stat_line(busy, idle, steal))

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.write()


def never_busy() -> Guard:
    """The real CPU guard with a threshold no load exceeds: for tests of what wraps the probe."""
    return Guard("cpu", max_utilization_ratio=1.0)


def cpu_guard(
    tmp_path: Path, stat: StatFile, own: list[float], min_free_memory_bytes: int = GiB
) -> Guard:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemAvailable:    8388608 kB\n")
    own_seconds = iter(own)
    return Guard(
        "cpu",
        max_utilization_ratio=0.5,
        min_free_memory_bytes=min_free_memory_bytes,
        meminfo=meminfo,
        proc_stat=stat.path,
        own_cpu=lambda: next(own_seconds),
        sleep=stat.sleep,
    )


def test_the_cpu_guard_subtracts_its_own_time_from_the_load(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    # over the window 100 ticks elapse (busy 80, idle 20); the worker itself used 70 of them
    stat = StatFile(tmp_path / "stat", [(0, 0, 0), (80, 20, 0)])
    reading = cpu_guard(tmp_path, stat, own=[0.0, 70 / tick]).check()
    assert reading.checked and reading.outcome is None, reading
    assert reading.utilization_ratio == pytest.approx(0.10)
    assert reading.free_memory_bytes == 8 * GiB


def test_a_cpu_that_neighbours_keep_busy_skips_the_probe(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    # neighbours 60 of 100 ticks; steal (another VM on these vCPUs) is neither busy nor idle here
    stat = StatFile(tmp_path / "stat", [(0, 0, 0), (70, 30, 500)])
    reading = cpu_guard(tmp_path, stat, own=[0.0, 10 / tick]).check()
    assert reading.outcome == "skipped_busy" and reading.utilization_ratio == pytest.approx(0.6)
    assert "other processes used 60%" in reading.reason and "50%" in reading.reason


def test_later_cpu_checks_measure_since_the_previous_one(tmp_path: Path) -> None:
    tick = os.sysconf("SC_CLK_TCK")
    # first check: a window of its own; the second comes after a probe that used 2 s of CPU
    # (its own time, not counted) on a machine otherwise at 10%; the third comes at once
    samples = [(0, 0, 0), (0, 100, 0), (230, 170, 0), (230, 170, 0), (240, 190, 0)]
    stat = StatFile(tmp_path / "stat", samples)
    guard = cpu_guard(tmp_path, stat, own=[0.0, 0.0, 200 / tick, 200 / tick, 200 / tick])
    assert guard.check().utilization_ratio == pytest.approx(0.0)
    assert stat.sleeps == [0.25]
    stat.write()  # the probe runs
    second = guard.check()
    assert stat.sleeps == [0.25]  # no wait: the probe's time is the window
    assert second.outcome is None and second.utilization_ratio == pytest.approx(0.1)
    stat.write()  # nothing runs in between
    third = guard.check()
    assert stat.sleeps == [0.25, 0.25]  # too little time since the last check: a window again
    assert third.checked and third.utilization_ratio == pytest.approx(1 / 3)


def test_an_unreadable_proc_stat_is_reported_not_raised(tmp_path: Path) -> None:
    guard = Guard("cpu", proc_stat=tmp_path / "missing", sleep=lambda _: None)
    reading = guard.check()
    assert not reading.checked and reading.outcome is None
    assert reading.reason.startswith("CPU load unreadable: FileNotFoundError")


def test_short_host_memory_skips_a_cpu_probe(tmp_path: Path) -> None:
    stat = StatFile(tmp_path / "stat", [(0, 0, 0), (10, 90, 0)])
    reading = cpu_guard(tmp_path, stat, own=[0.0, 0.0], min_free_memory_bytes=16 * GiB).check()
    assert reading.outcome == "skipped_memory" and str(8 * GiB) in reading.reason


def test_the_real_cpu_guard_sees_busy_neighbours() -> None:
    """Real /proc/stat: one spinning process per core makes the guard skip; its own load is not
    counted (the spinners are other processes)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(min(8, os.cpu_count() or 1))
    ]
    try:
        time.sleep(0.3)  # let them start
        reading = Guard("cpu", max_utilization_ratio=0.3).check()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert reading.checked and reading.outcome == "skipped_busy", reading
    assert reading.utilization_ratio is not None and reading.utilization_ratio > 0.6


def test_cpu_guard_identifies_the_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\n")
    guard = Guard("cpu", nvml=FakeNVML(), cpuinfo=cpuinfo, meminfo=meminfo)
    assert guard.device_identity() == {
        "device": "cpu",
        "gpu": "",
        "UUID": "",
        "modelName": "AMD EPYC 9654 96-Core Processor",
        "driver_version": "",
        "memory_bytes": 16384 * 1024,
        "kind": "cpu",
    }


def test_gpu_identity_comes_from_nvml_with_dcgm_labels() -> None:
    nvml = FakeNVML(
        gpus=[FakeGPU(), FakeGPU(name=b"Tesla T4", uuid=b"GPU-abc", total_bytes=16 * GiB)],
        driver_version=b"535.104.05",
    )
    identity = Guard("cuda:1", nvml=nvml).device_identity()
    assert identity == {
        "device": "cuda:1",
        "gpu": "1",
        "UUID": "GPU-abc",
        "modelName": "Tesla T4",
        "driver_version": "535.104.05",
        "memory_bytes": 16 * GiB,
        "kind": "cuda",
    }


def test_cuda_devices_are_matched_to_nvml_by_uuid() -> None:
    """With CUDA_VISIBLE_DEVICES=2, cuda:0 is NVML's GPU 2: the guard must read that one."""
    gpus = [FakeGPU(uuid=f"GPU-{i}{i}{i}", utilization_percent=99) for i in range(3)]
    gpus[2].utilization_percent = 5
    nvml = FakeNVML(gpus=gpus)
    guard = Guard("cuda:0", nvml=nvml, cuda=FakeCuda(uuids=("222",)))
    assert guard.check().outcome is None
    identity = guard.device_identity()
    assert identity["gpu"] == "2" and identity["UUID"] == "GPU-222"
    assert identity["device"] == "cuda:0"


def test_an_unknown_uuid_falls_back_to_the_index() -> None:
    nvml = FakeNVML(gpus=[FakeGPU(uuid="GPU-aaa"), FakeGPU(uuid="GPU-bbb")])
    guard = Guard("cuda:1", nvml=nvml, cuda=FakeCuda(uuids=("zzz", "yyy")))
    assert guard.device_identity()["UUID"] == "GPU-bbb"


def test_without_nvml_cuda_names_the_gpu() -> None:
    identity = Guard("cuda:0", nvml=None, cuda=FakeCuda(name="NVIDIA L4")).device_identity()
    assert identity["modelName"] == "NVIDIA L4" and identity["memory_bytes"] == 80 * GiB


def test_identity_survives_nvml_refusing_to_name_the_gpu() -> None:
    identity = Guard("cuda:0", nvml=FakeNVML(fail_identity=True)).device_identity()
    assert identity["gpu"] == "0" and identity["modelName"] == "" and identity["UUID"] == ""
    assert identity["driver_version"] == "550.54.15"


def test_clocks_are_read_for_the_timing_record() -> None:
    nvml = FakeNVML(gpus=[FakeGPU(sm_clock_mhz=1200, memory_clock_mhz=5001)])
    assert Guard("cuda:0", nvml=nvml).clocks() == {"sm_mhz": 1200, "memory_mhz": 5001}
    assert Guard("cpu").clocks() == {}


def test_clocks_are_recorded_with_every_result() -> None:
    guard = Guard("cuda:0", nvml=FakeNVML(gpus=[FakeGPU(sm_clock_mhz=990)]))
    entry = run_guarded("compute", lambda: {"value": 1.0, "timing": {"clocks": {}}}, guard)
    assert entry["timing"]["clocks"]["sm_mhz"] == 990


def test_memory_cap_on_cuda_sets_the_allocator_fraction() -> None:
    cuda = FakeCuda(total_memory=80 * GiB)
    note = Guard("cuda:0", nvml=None, cuda=cuda).apply_memory_cap(8 * GiB)
    assert cuda.memory_fraction == (pytest.approx(0.1), 0)
    assert "0.100" in note
    assert "CPU" in Guard("cpu").apply_memory_cap(8 * GiB)


def test_an_exception_becomes_a_failed_entry() -> None:
    def broken() -> dict[str, object]:
        raise ValueError("shapes cannot be multiplied (2x3 and 4x5)")

    entry = run_guarded("compute", broken, never_busy())
    assert entry["outcome"] == "failed"
    assert "ValueError: shapes cannot be multiplied" in entry["reason"]
    assert entry["duration_seconds"] >= 0


def test_out_of_memory_is_recorded_and_memory_released() -> None:
    cuda = FakeCuda()
    guard = Guard("cuda:0", nvml=FakeNVML(), cuda=cuda)

    def oom() -> dict[str, object]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    entry = run_guarded("model", oom, guard, cuda=cuda)
    assert entry["outcome"] == "failed"
    assert entry["reason"].startswith("out of memory")
    assert cuda.empty_cache_calls == 1


def test_host_out_of_memory_is_recognised() -> None:
    def oom() -> dict[str, object]:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    entry = run_guarded("model", oom, never_busy())
    assert entry["reason"].startswith("out of memory")


def test_a_probe_may_skip_itself() -> None:
    def too_big() -> dict[str, object]:
        raise SkipProbe("skipped_memory", "would need 9 GB")

    entry = run_guarded("model", too_big, never_busy())
    assert entry == {
        "outcome": "skipped_memory",
        "reason": "would need 9 GB",
        "duration_seconds": entry["duration_seconds"],
    }


def test_a_busy_device_never_runs_the_probe() -> None:
    ran: list[bool] = []
    guard = cuda_guard(FakeNVML(gpus=[FakeGPU(utilization_percent=100)]))
    entry = run_guarded("compute", lambda: ran.append(True) or {}, guard)
    assert entry["outcome"] == "skipped_busy" and not ran
