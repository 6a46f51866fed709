"""What writing fresh memory costs at one and at two threads, and what that figure depends on.

The memory probe times its fresh-write clone (``probes.memory``: a copy into a new anonymous
mapping against a copy into an existing buffer, fastest sample) on one torch thread and on
torch's threads, and keeps the cheaper figure. A fault is served from the faulting CPU's list of
free pages and a freed page goes to the freeing CPU's list; the clone is freed by the calling
thread, so a second thread's faults draw on the kernel's shared free memory, which in a VM may be
memory the host has not backed. This script measures the figure the way the probe does, at each
thread count, in fresh processes (as the daemon's worker is):

- ``alone``: nothing else holds memory;
- ``holding``: another process holds ``--hold-gb`` GB of touched memory (idle), as an inference
  server next to the daemon does, so that what the host backs of the guest's free memory is
  taken;

and each both ways: ``as before`` (the probe up to 2026-11-30) and ``released``: the probe's
buffers' spare pages first given back from a thread on each CPU (``memory.release_per_cpu``), as
the probe now does before its passes, so that every CPU's list holds backed pages.

Each child process first allocates and copies the memory probe's own two buffers (as the probe
does before its clone), then measures the sequence ``MEASUREMENTS`` (two threads, two threads
again, one thread), each with the probe's clone size and timing budget; ``--pause`` seconds pass
between child processes.

    python bench/first_touch_threads.py --out bench/results/first_touch_threads-2.json  # ~2 min
    python bench/first_touch_threads.py --load bench/results/first_touch_threads-2.json
    python bench/first_touch_threads.py --quick                                           # tests
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_or_measure, machine, stderr_log

SCHEMA = "scaleprobe.bench.first_touch_threads/2"
# torch threads of each measurement in one child process, in order
MEASUREMENTS = (2, 2, 1)
HOLDER_READY_TIMEOUT_SECONDS = 120.0
CHILD_TIMEOUT_SECONDS = 300.0
# copies of the probe's whole buffers before the clone (memory.run times several)
BUFFER_COPIES = 5


def child(threads_sequence: Sequence[int], release: bool) -> list[dict[str, float]]:
    """In this process: the probe's fresh-write figure (``probes.memory.first_touch``) at each
    thread count, in order; with ``release``, after the buffers' spare pages are given back from
    each CPU as the probe does."""
    import torch
    from scaleprobe.probes import memory
    from scaleprobe.probes.device import cpu_llc_bytes, default_timer
    from scaleprobe.probes.registry import probe_timing
    from scaleprobe.probes.request import ProbeRequest

    timer = default_timer("cpu")
    timing = probe_timing("memory", "cpu").scaled(memory.FRESH_WRITE_SHARE / 2)
    # the probe's own buffers first, copied a few times, as memory.run does before its clone
    size = memory.buffer_bytes(cpu_llc_bytes()[0], ProbeRequest().memory_cap_bytes)
    buffer = torch.ones(size // 4)
    other = torch.empty_like(buffer)
    for _ in range(BUFFER_COPIES):
        other.copy_(buffer)
    if release:
        memory.release_spare_pages((buffer, other), memory.FRESH_WRITE_BYTES)
    elements = memory.FRESH_WRITE_BYTES // 4
    source, destination = buffer[:elements], other[:elements]
    figures = []
    for threads in threads_sequence:
        result, _ = memory.first_touch(source, destination, timing, timer, threads=threads)
        figures.append(
            {
                "threads": result["fresh_write_threads"],
                "first_touch_seconds_per_byte": result["first_touch_seconds_per_byte"],
            }
        )
    return figures


def run_child(release: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", ",".join(str(t) for t in MEASUREMENTS)]
    done = subprocess.run(
        command + (["--child-release"] if release else []),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child process failed: {done.stderr[-2000:]}")
    return {"released": release, "figures": json.loads(done.stdout)}


def start_holder(gigabytes: float) -> subprocess.Popen[str]:
    """A process that touches ``gigabytes`` GB (``torch.ones`` at torch's default threads, as a
    server fills its tensors), says so on stdout, and then sleeps."""
    code = (
        "import sys, time, torch; a = torch.ones(int(float(sys.argv[1]) * 1e9 / 4)); "
        "print('ready', flush=True); time.sleep(3600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(gigabytes)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    started = time.monotonic()
    line = holder.stdout.readline()
    if line.strip() != "ready" or time.monotonic() - started > HOLDER_READY_TIMEOUT_SECONDS:
        holder.kill()
        raise RuntimeError(f"the memory holder did not start (said {line!r})")
    return holder


def measure_all(repeats: int, hold_gb: float, pause_seconds: float) -> dict[str, Any]:
    conditions: dict[str, list[dict[str, Any]]] = {"alone": [], "holding": []}

    def children(condition: str) -> None:
        for index in range(repeats):
            for release in (False, True):  # alternated, so drift does not favour one
                conditions[condition].append(run_child(release))
                time.sleep(pause_seconds)
            stderr_log(f"{condition} {index + 1}/{repeats}")

    children("alone")
    holder = start_holder(hold_gb)
    try:
        children("holding")
    finally:
        holder.kill()
        holder.wait()
    return {
        "schema": SCHEMA,
        "machine": machine(),
        "measurements": list(MEASUREMENTS),
        "hold_gb": hold_gb,
        "pause_seconds": pause_seconds,
        "conditions": conditions,
    }


def report(data: dict[str, Any]) -> str:
    labels = []
    seen: dict[int, int] = {}
    for threads in data["measurements"]:
        seen[threads] = seen.get(threads, 0) + 1
        labels.append(f"{threads} thread{'s' if threads > 1 else ''} (#{seen[threads]})")
    lines = [
        "first touch, ns per byte (fastest sample of each measurement; one row per process)",
        "",
        f"| condition | spare pages | {' | '.join(labels)} |",
        f"|---|---|{'---|' * len(labels)}",
    ]
    for condition, processes in data["conditions"].items():
        name = condition if condition == "alone" else f"another process holds {data['hold_gb']} GB"
        for process in processes:
            # schema /1 saved a list of figures per process, all measured as before
            figures = process["figures"] if isinstance(process, dict) else process
            released = isinstance(process, dict) and process["released"]
            cells = [f"{1e9 * f['first_touch_seconds_per_byte']:.3f}" for f in figures]
            way = "released per CPU" if released else "as before"
            lines.append(f"| {name} | {way} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", metavar="FILE.json", help="write the figures here")
    parser.add_argument("--load", metavar="FILE.json", help="print a saved run")
    parser.add_argument("--repeats", type=int, default=6, help="processes per condition (6)")
    parser.add_argument("--hold-gb", type=float, default=6.0, help="GB the other process holds (6)")
    parser.add_argument(
        "--pause", type=float, default=3.0, help="seconds between child processes (3)"
    )
    parser.add_argument("--quick", action="store_true", help="1 process each, 0.2 GB held")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-release", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child([int(t) for t in args.child.split(",")], args.child_release)))
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not args.pause >= 0:
        parser.error(f"--pause must be 0 or more seconds, got {args.pause}")
    if not args.hold_gb > 0:
        parser.error(f"--hold-gb must be a positive number, got {args.hold_gb}")
    repeats, hold_gb, pause = (
        (1, 0.2, 0.0) if args.quick else (args.repeats, args.hold_gb, args.pause)
    )
    return load_or_measure(
        "first_touch_threads",
        args.load,
        args.out,
        lambda: measure_all(repeats, hold_gb, pause),
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
