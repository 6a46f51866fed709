"""Memory probe: the device's sustained copy bandwidth (bytes read plus bytes written per second).

What it saturates: the path to main memory (DRAM or HBM) with one streaming copy, the access
pattern of a transformer's elementwise kernels and of weight streaming at batch 1. On a GPU the
copy is ``Tensor.copy_``. On the CPU it is the faster (by median) of ``Tensor.copy_`` (torch's
threads, regular stores) and libc ``memcpy`` through ``numpy.copyto`` on the same buffers (one
thread, non-temporal stores): which wins depends on the machine and its load, and both figures
are kept in ``detail["bytes_per_second_by_method"]``.

Why this size: the buffer must be several times the last-level cache, or the probe measures the
cache. It is ``BUFFER_LLC_MULTIPLE`` × the LLC (read from /sys or ``lscpu`` on the CPU, the L2
size from the device properties on a GPU), at least ``MIN_BUFFER_BYTES`` and at most
``MAX_BUFFER_BYTES`` (see there); on a 32 MiB L3 that is 128 MiB per buffer, ~17 ms per copy at
~15 GB/s. The source and the destination together stay under ``memory_cap_bytes``; if the caps
force a buffer under twice the LLC the result says so in ``detail["cache_resident_risk"]``.

Bandwidth counts both directions (2 × buffer bytes per copy), as STREAM's "copy" does.

On the CPU it also times a clone of the first ``FRESH_WRITE_BYTES`` of the source: the same
traffic, but into freshly mapped memory, as an out-of-place op of a forward writes a large output.
glibc serves such an allocation by a fresh mmap (its mmap threshold is at most 32 MiB on 64-bit)
and unmaps it when freed, so the output pays a page fault per 4 KiB page on first touch, every
time: here a 100 MB clone ran at 5.6 GB/s against 36.9 GB/s for the copy into an existing buffer.
The probe maps the clone's memory itself (:func:`fresh_clone`): left to malloc, a process holding
a large free heap chunk gets no fresh mapping and the figure reads 0.
``detail["first_touch_seconds_per_byte"]`` is the clone's time per byte minus the time of a copy
of the same bytes into an existing buffer; the performance model charges it on large fresh
outputs. Each figure is its fastest sample.

The pair is timed on one thread and again on torch's threads (:func:`fresh_write`), and the
figure kept is the cheaper: a forward's out-of-place ops write their outputs on all of torch's
threads, which take the faults side by side (two threads here: 0.14-0.20 ns/B against 0.22-0.31
on one). ``detail["first_touch_seconds_per_byte_by_threads"]`` keeps both (thread count as a
string), ``detail["fresh_write_threads"]`` the count of the figure kept.

Before the passes the probe gives its buffers' pages back, past the clone's own, in one share
from each CPU (:func:`release_per_cpu`; ``detail["fresh_write_released_bytes"]``). A fault is
served from the faulting CPU's list of free pages, and a freed page goes to the freeing CPU's:
the clone's memory is freed by the calling thread, so without this a second thread's faults drew
on the kernel's shared free memory, which in a VM is often memory the host has not backed (never
touched, or handed back by free page reporting), and read 1.3-1.6 ns/B instead of 0.14-0.20
whenever something had taken the backed free memory first (here: another process holding 3-6
GB, or this one 1-3 GB more); a server's forwards, freeing outputs all the time, fault on backed
pages (``BENCHMARKS.md``, "Page faults at two threads, read"). On a GPU the caching allocator
reuses memory, so nothing is measured there (the keys are absent).

The figure is the price of a fault; whether a forward's large outputs pay it is the allocator's
choice, so the probe also checks its own process's (:func:`large_outputs_fault`:
``detail["large_outputs_fault"]``, false when freed large blocks come back, as with glibc tuned
or tcmalloc, and the model then charges nothing).

On the CPU it also times ``Tensor.copy_`` (torch's threads, as a forward's elementwise ops run)
over working sets from ``CACHE_LADDER_BYTES[0]`` up (source plus destination: leading views of the
two buffers), each against the same copy of the whole buffers:
``detail["bandwidth_ratio_by_working_set"]`` lists ``[working-set bytes, ratio]`` pairs ending with
the whole buffers at 1.0. A forward's activations are written by one op and read by the next, so
while they fit the caches their elementwise ops run at these cached rates, not at DRAM's: on a
Xeon guest 3-6 × the DRAM copy rate up to a few MiB, 2 × up to 64 MiB (``docs/model.md``).

Where the allocator check reads reuse, it also times a chain of eager elementwise ops
(``gelu_new``'s but its tanh) over views of the buffers (:func:`elementwise_chain`,
``detail["elementwise_chain"]``): how fast a forward's separate out-of-place ops stream against
the copy, with no page faults in it; the model's elementwise share ρ (``models.fit``). On this
Xeon guest, over the cache ladder's ratio at its bytes per op, 0.9-1.6 of the copy rate at
32 MiB tensors over repeated probes in one process (2 threads; 1.02-1.28 in the sweeps' float32
calibrations). Under glibc's defaults the model does not use it, and it is not run.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import resource
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scaleprobe.probes.device import cpu_llc_bytes, default_timer, gpu_l2_bytes
from scaleprobe.probes.request import ProbeRequest, ProbeResult
from scaleprobe.probes.timing import Timer, TimingRequest, measure

BUFFER_LLC_MULTIPLE = 4
MIN_BUFFER_BYTES = 64 * 1024**2
# At most this per buffer, whatever the cache: a VM's /sys may report the whole host's L3 (480 MiB
# on a Firecracker guest here, where copies of 128 MiB and of 1 GiB ran at the same 23-26 GB/s),
# and two 1 GiB buffers cost that guest 3.8 s of page faults per calibration. A larger LLC than a
# quarter of this is flagged by ``cache_resident_risk``.
MAX_BUFFER_BYTES = 256 * 1024**2
# Output size of the fresh-write clone: twice glibc's largest mmap threshold, so it is mmapped
# whatever the threshold has adapted to; ~20-35 ms per clone on this CPU.
FRESH_WRITE_BYTES = 64 * 1024**2
# Share of the probe's budget the fresh-write clones and their copies get, on one thread and on
# torch's threads (the copies of the whole buffer share the rest).
FRESH_WRITE_SHARE = 0.25
# Working sets (source plus destination bytes) of the cached-copy ladder: x 2 steps from 512 KiB,
# through the L2 and the L3, up to where DRAM takes over; sizes at or above the buffer are left
# out. Each sample copies a working set repeatedly, ``LADDER_SAMPLE_BYTES`` in all, so that a
# sample of a small set lasts well over the timer's resolution.
CACHE_LADDER_BYTES = tuple(2**i * 512 * 1024 for i in range(10))  # 512 KiB ... 256 MiB
LADDER_SAMPLE_BYTES = 64 * 1024**2
# Share of the probe's budget the ladder gets.
LADDER_SHARE = 0.15
# The elementwise chain (:func:`elementwise_chain`): HF's ``gelu_new`` without its tanh (the
# compute probe prices tanh), seven out-of-place ops into existing tensors, each the given number
# of tensor passes (a scalar op reads one and writes one, a binary op reads two). Each tensor is
# this fraction of a buffer (32 MiB of 256 MiB buffers: a base encoder's FFN activations at 4 × 512
# to 8 × 512 tokens); its share of the probe's budget, taken from the copies whether or not it
# runs (they are bound by their minimum samples here: memory 0.54-0.55 s with glibc's defaults,
# where it does not run, against 0.55-0.57 before; bench/results/probe_cost-16.json, -18.json).
ELEMENTWISE_CHAIN_PASSES = (2, 2, 3, 2, 2, 2, 3)
ELEMENTWISE_TENSOR_FRACTION = 8
ELEMENTWISE_SHARE = 0.1
# The allocator check (:func:`large_outputs_fault`) touches one page in this many bytes of its
# 128 and 64 MiB blocks: 3072 faults at most, a few milliseconds per attempt.
REUSE_CHECK_STRIDE = 64 * 1024
# Attempts of the check; the allocator maps large outputs anew only if every attempt says so.
# tcmalloc hands a freed span back to the system now and then (its gradual release): one attempt
# read "fresh" in 2 of 27 calibrations of three tcmalloc sweeps (accuracy-34 to -36), while
# glibc's defaults map anew every time.
REUSE_CHECK_ATTEMPTS = 3


def buffer_bytes(llc_bytes: int, memory_cap_bytes: int) -> int:
    """Bytes per buffer: 4 × LLC (at least 64 MiB, at most 256 MiB), two buffers within the cap,
    4 KiB-aligned."""
    wanted = min(max(BUFFER_LLC_MULTIPLE * llc_bytes, MIN_BUFFER_BYTES), MAX_BUFFER_BYTES)
    return max(4096, min(wanted, memory_cap_bytes // 2) // 4096 * 4096)


def run(request: ProbeRequest, *, timer: Timer | None = None, cuda: Any = None) -> ProbeResult:
    """Copy one large buffer into another repeatedly; bandwidth from the median copy time."""
    timer = timer if timer is not None else default_timer(request.device, cuda)
    if request.is_cuda:
        llc, llc_source = gpu_l2_bytes(request.device, cuda), "device properties L2_cache_size"
    else:
        llc, llc_source = cpu_llc_bytes()
    size = buffer_bytes(llc, request.memory_cap_bytes)
    # float32 elements: the copy kernel is vectorised either way, and the dtype does not matter
    # to a byte copy; the probe measures the memory system, not the configured dtype.
    source = torch.ones(size // 4, dtype=torch.float32, device=request.device)
    destination = torch.empty_like(source)
    threads = torch.get_num_threads()
    methods: dict[str, Callable[[], object]] = {"torch_copy": lambda: destination.copy_(source)}
    if not request.is_cuda:
        # libc memcpy on the same memory (numpy shares it): non-temporal stores for large copies
        # skip the read-for-ownership of the destination, so it often beats torch's copy loop,
        # and being single-threaded it suffers less when another process takes a core.
        source_array, destination_array = source.numpy(), destination.numpy()
        methods["memcpy"] = lambda: np.copyto(destination_array, source_array)
    fresh = not request.is_cuda and size >= FRESH_WRITE_BYTES
    ladder = not request.is_cuda
    others = (FRESH_WRITE_SHARE if fresh else 0.0) + (
        LADDER_SHARE + ELEMENTWISE_SHARE if ladder else 0.0
    )
    share = request.timing.scaled((1.0 - others) / len(methods))
    measured = {name: measure(fn, share, timer, threads=threads) for name, fn in methods.items()}
    rates = {name: 2.0 * size / m.median_seconds for name, m in measured.items()}
    best = max(rates, key=lambda name: rates[name])
    other_device_seconds = sum(m.device_seconds for name, m in measured.items() if name != best)
    extra: dict[str, Any] = {}
    if ladder:
        ratios, seconds = cache_ladder(
            source,
            destination,
            measured["torch_copy"].median_seconds,
            request.timing.scaled(LADDER_SHARE / len(CACHE_LADDER_BYTES)),
            timer,
        )
        extra["bandwidth_ratio_by_working_set"] = ratios
        other_device_seconds += seconds
    reuse: dict[str, Any] = {}
    if fresh:

        def check_reuse() -> None:
            reuse.update(large_outputs_fault())

        try:
            other_device_seconds += timer.time(check_reuse)
        except (MemoryError, OSError) as error:  # unchecked: the model charges as for glibc
            reuse = {"large_outputs_check_error": str(error)}
        extra.update(reuse)
    if ladder and reuse.get("large_outputs_fault") is False:
        # the model's elementwise share is measured only where no large output faults: timed
        # before the buffers' pages are released below, so that the chain faults nothing
        timing = replace(request.timing.scaled(ELEMENTWISE_SHARE), warmup=0)
        chain, seconds = elementwise_chain(source, destination, timing, timer)
        extra["elementwise_chain"] = chain
        other_device_seconds += seconds
    if fresh:
        # The buffers are not read again: past the clone's own views, their pages go back to the
        # kernel from each CPU, so that every thread's faults draw on memory the host backs.
        released = 0

        def release() -> None:
            nonlocal released
            released = release_spare_pages((source, destination), FRESH_WRITE_BYTES)

        try:
            other_device_seconds += timer.time(release)
        except OSError as error:  # e.g. a sandbox that forbids madvise: measure as before
            extra["fresh_write_release_error"] = str(error)
        figures, seconds = fresh_write(
            source[: FRESH_WRITE_BYTES // 4],
            destination[: FRESH_WRITE_BYTES // 4],
            request.timing.scaled(FRESH_WRITE_SHARE),
            timer,
            threads,
        )
        extra.update(figures, fresh_write_released_bytes=released)
        other_device_seconds += seconds
    return ProbeResult(
        probe="memory",
        value=rates[best],
        unit="bytes_per_second",
        measurement=measured[best],
        dtype=request.dtype,
        detail={
            "buffer_bytes": size,
            "last_level_cache_bytes": llc,
            "last_level_cache_source": llc_source,
            "cache_resident_risk": size < 2 * llc,
            "method": best,
            "bytes_per_second_by_method": rates,
            **extra,
        },
        other_device_seconds=other_device_seconds,
    )


def cache_ladder(
    source: torch.Tensor,
    destination: torch.Tensor,
    full_copy_seconds: float,
    timing: TimingRequest,
    timer: Timer,
) -> tuple[list[list[float]], float]:
    """``[working-set bytes, copy rate / full-buffer copy rate]`` for each ``CACHE_LADDER_BYTES``
    size under the buffers' working set, then ``[2 × buffer bytes, 1.0]``; and the device seconds
    spent. Each size copies a leading view of ``source`` into one of ``destination``, warm
    (the view stays in whatever cache holds it), by the median sample."""
    size = source.numel() * source.element_size()
    full_rate = 2.0 * size / full_copy_seconds
    threads = torch.get_num_threads()
    ratios: list[list[float]] = []
    spent = 0.0
    for working_set in CACHE_LADDER_BYTES:
        if working_set >= 2 * size:
            break
        elements = working_set // 2 // source.element_size()
        src, dst = source[:elements], destination[:elements]
        repeats = max(1, LADDER_SAMPLE_BYTES // working_set)

        def copies(src: torch.Tensor = src, dst: torch.Tensor = dst, n: int = repeats) -> None:
            for _ in range(n):
                dst.copy_(src)

        m = measure(copies, timing, timer, threads=threads)
        spent += m.device_seconds
        rate = repeats * float(working_set) / m.median_seconds
        ratios.append([float(working_set), rate / full_rate])
    ratios.append([2.0 * size, 1.0])
    return ratios, spent


def elementwise_chain(
    source: torch.Tensor, destination: torch.Tensor, timing: TimingRequest, timer: Timer
) -> tuple[dict[str, float], float]:
    """The streaming rate of a forward's eager elementwise ops, and the device seconds spent.

    A forward's activation and glue are separate out-of-place ops, each a pass or two over its
    tensors on torch's threads: slower per byte than one long copy (every op starts its threads
    and walks its tensors anew; a binary op streams two inputs). The chain is ``gelu_new``'s ops
    but its tanh (``ELEMENTWISE_CHAIN_PASSES``) over tensors of 1/``ELEMENTWISE_TENSOR_FRACTION``
    of a buffer: the input a leading view of ``source``, the outputs views of ``destination``,
    which exist already, so that no page faults (the first-touch figure prices those, and whether
    a forward pays them is the allocator's choice). By the median sample; the probe runs it
    without a warm-up, right after its copies have warmed the buffers and torch's threads.

    Returns ``{"tensor_bytes", "ops", "bytes_moved", "seconds", "bytes_per_second"}``: the bytes
    each tensor holds, the chain's op count, its minimum traffic (each operand read once, each
    result written once, as the model counts), the median chain's seconds, and the rate. The model
    divides the rate by the copy bandwidth and the cache ladder's ratio at the bytes per op
    (``scaleprobe.models.fit``).
    """
    elements = source.numel() // ELEMENTWISE_TENSOR_FRACTION
    x = source[:elements]
    a, b, c = (destination[i * elements : (i + 1) * elements] for i in range(3))

    def chain() -> None:
        torch.pow(x, 3.0, out=a)
        torch.mul(a, 0.044715, out=b)
        torch.add(x, b, out=a)
        torch.mul(a, 0.7978845608, out=b)
        torch.add(b, 1.0, out=a)
        torch.mul(x, 0.5, out=b)
        torch.mul(b, a, out=c)

    m = measure(chain, timing, timer, threads=torch.get_num_threads())
    tensor_bytes = elements * source.element_size()
    moved = float(sum(ELEMENTWISE_CHAIN_PASSES) * tensor_bytes)
    figures = {
        "tensor_bytes": float(tensor_bytes),
        "ops": float(len(ELEMENTWISE_CHAIN_PASSES)),
        "bytes_moved": moved,
        "seconds": m.median_seconds,
        "bytes_per_second": moved / m.median_seconds,
    }
    return figures, m.device_seconds


def large_outputs_fault(
    size: int = FRESH_WRITE_BYTES, attempts: int = REUSE_CHECK_ATTEMPTS
) -> dict[str, Any]:
    """Whether this process's allocator serves a large output from fresh memory every time.

    The first-touch figure is the price of a page fault; whether a forward's large outputs pay
    it is the allocator's choice. glibc with its defaults maps every allocation of 32 MiB or more
    anew and unmaps it when freed, so each forward faults on them again (jemalloc 5.3 with its
    defaults gives them back at once too); glibc with a fixed ``MALLOC_MMAP_THRESHOLD_`` above
    them and heap trimming off, or tcmalloc (``LD_PRELOAD``, as CPU serving guides advise), keep
    the freed memory and hand it back.

    The check asks the process's allocator (``posix_memalign``, as torch's CPU allocator does)
    for 2 × ``size`` bytes, touches one page in ``REUSE_CHECK_STRIDE``, frees them, then for
    ``size`` bytes, touching them likewise, counting the process's minor faults each time: the
    second block faults as often per touched page as the first only if it is fresh. The second
    is the smaller so that a reusing heap can serve it from the first (asked for the same size
    again, glibc's memalign wants a few bytes more than the freed chunk holds and grows the heap
    instead), and the allocator is called directly so that nothing else is allocated in
    between. Huge pages change the count per page but not the ratio.

    It makes ``attempts`` such checks (the first block of a later one may be served from the
    last one's freed memory: then it does not fault, and the attempt reads reuse) and reads
    "anew" only if every attempt does, because a reusing allocator may hand one freed block back
    to the system now and then, while one that maps large blocks anew does so every time.

    Returns ``{"large_outputs_fault": bool, "large_output_refault_ratio": r,
    "large_output_refault_ratios": [...]}``, each ratio an attempt's second block's faults per
    touched page over its first's (0 when the first did not fault either), r the least.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.posix_memalign.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    libc.free.argtypes = [ctypes.c_void_p]
    ratios = [_refault_ratio(libc, size) for _ in range(attempts)]
    return {
        "large_outputs_fault": all(ratio >= 0.5 for ratio in ratios),
        "large_output_refault_ratio": min(ratios),
        "large_output_refault_ratios": ratios,
    }


def _refault_ratio(libc: ctypes.CDLL, size: int) -> float:
    """One attempt of :func:`large_outputs_fault`: 2 × ``size`` bytes, then ``size``, each
    touched and freed; the second block's minor faults per touched page over the first's."""
    pointer = ctypes.c_void_p()
    per_page = []
    for block in (2 * size, size):
        block_type = ctypes.c_char * block
        if libc.posix_memalign(ctypes.byref(pointer), 64, block) != 0:
            raise MemoryError(f"posix_memalign of {block} bytes failed")
        try:
            pages = np.frombuffer(block_type.from_address(pointer.value), dtype=np.uint8)
            touched = pages[::REUSE_CHECK_STRIDE]
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            touched[:] = 1
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            per_page.append(faults / touched.size)
            del pages, touched
        finally:
            libc.free(pointer)
    return per_page[1] / per_page[0] if per_page[0] > 0 else 0.0


def fresh_clone(source: torch.Tensor) -> Callable[[], None]:
    """``source.clone()`` as glibc serves a large output when it maps it fresh: a copy into a new
    anonymous mapping, unmapped afterwards. Mapped here rather than left to malloc, which serves
    the request from freed heap memory (no page faults) whenever the process happens to hold a
    large enough free chunk: in one accuracy run 6 of 9 calibrations measured 0 ns/B that way."""
    size = source.numel() * source.element_size()

    def clone() -> None:
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # anonymous, as malloc maps
        output = torch.frombuffer(region, dtype=source.dtype, count=source.numel())
        output.copy_(source)
        del output
        region.close()

    return clone


def spare_pages(buffer: torch.Tensor, keep_bytes: int) -> tuple[int, int]:
    """The page-aligned address range ``[start, end)`` of ``buffer`` past its first
    ``keep_bytes`` (empty when nothing is past them)."""
    page = mmap.PAGESIZE
    start = -(-(buffer.data_ptr() + keep_bytes) // page) * page
    end = (buffer.data_ptr() + buffer.numel() * buffer.element_size()) // page * page
    return start, max(start, end)


def release_spare_pages(buffers: Sequence[torch.Tensor], keep_bytes: int) -> int:
    """:func:`release_per_cpu` on each buffer's :func:`spare_pages` past its first
    ``keep_bytes``; the bytes given back."""
    released = 0
    for buffer in buffers:
        start, end = spare_pages(buffer, keep_bytes)
        release_per_cpu(start, end - start)
        released += end - start
    return released


def _madvise_dontneed(address: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.madvise(address, length, mmap.MADV_DONTNEED) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"madvise(MADV_DONTNEED) of {length} bytes: {os.strerror(error)}")


def release_per_cpu(
    address: int,
    length: int,
    cpus: Sequence[int] | None = None,
    dontneed: Callable[[int, int], None] | None = None,
) -> None:
    """Give the pages of ``[address, address + length)`` back to the kernel (``MADV_DONTNEED``:
    they read as zeros after), in consecutive page-aligned shares, one from a thread pinned to
    each of ``cpus`` (default: the CPUs this process may run on), so that each CPU's list of free
    pages ends up holding a share. ``dontneed(address, length)`` does the release (default:
    ``madvise(2)`` through libc); its error is raised here.

    Why: Linux serves a page fault from the faulting CPU's own list of free pages first (refilled
    from the shared free memory), and a page freed goes to the list of the CPU that frees it,
    lists that hold hundreds of MiB on a recent kernel. A VM's host backs guest memory lazily and
    takes back what the guest reports free, so shared free memory is often not backed, and a
    fault on it costs the host's fault too. A forward's outputs are freed by the thread that
    allocated them and faulted in by all of torch's threads: in a server's steady state the
    freeing CPU's list overflows into the shared free memory, backed, where the other threads'
    faults find it; a probe run just after something took memory would have its other threads'
    faults land on unbacked pages (``BENCHMARKS.md``, "Page faults at two threads, read").
    No-op when ``length`` is 0."""
    if length <= 0:
        return
    dontneed = dontneed if dontneed is not None else _madvise_dontneed
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
    page = mmap.PAGESIZE
    share = length // len(cpus) // page * page
    bounds = [address + i * share for i in range(len(cpus))] + [address + length]
    errors: list[BaseException] = []

    def release(cpu: int, start: int, end: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # 0: this thread only
            dontneed(start, end - start)
        except BaseException as error:  # reported in the calling thread
            errors.append(error)

    for cpu, start, end in zip(cpus, bounds, bounds[1:], strict=False):
        if end > start:
            thread = threading.Thread(target=release, args=(cpu, start, end))
            thread.start()
            thread.join()
    if errors:
        raise errors[0]


def first_touch(
    source: torch.Tensor,
    destination: torch.Tensor,
    timing: TimingRequest,
    timer: Timer,
    threads: int,
) -> tuple[dict[str, Any], float]:
    """Fresh-write figures from a copy of ``source`` into fresh memory (:func:`fresh_clone`)
    against ``destination.copy_(source)``, both on ``threads`` torch threads (the caller's count
    is restored after), each by its fastest sample; and the device seconds spent."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        copy = measure(lambda: destination.copy_(source), timing, timer, threads=threads)
        clone = measure(fresh_clone(source), timing, timer, threads=threads)
    finally:
        torch.set_num_threads(previous)
    size = source.numel() * source.element_size()
    copy_rate = 2.0 * size / min(copy.samples_seconds)
    figures: dict[str, Any] = {
        **fresh_write_figures(min(clone.samples_seconds), size, copy_rate),
        "fresh_write_copy_bytes_per_second": copy_rate,
        "fresh_write_threads": threads,
    }
    return figures, copy.device_seconds + clone.device_seconds


def fresh_write(
    source: torch.Tensor,
    destination: torch.Tensor,
    timing: TimingRequest,
    timer: Timer,
    threads: int,
) -> tuple[dict[str, Any], float]:
    """:func:`first_touch` on one thread and, if ``threads`` is more, on ``threads`` (``timing``
    shared out among the passes): the figures of the pass with the cheaper first touch, both
    first-touch figures by thread count, and the device seconds of every pass."""
    counts = [1] if threads <= 1 else [1, threads]
    share = timing.scaled(1.0 / (2 * len(counts)))  # a copy and a clone per pass
    passes = {t: first_touch(source, destination, share, timer, threads=t) for t in counts}
    kept = min(counts, key=lambda t: passes[t][0]["first_touch_seconds_per_byte"])
    figures = {
        **passes[kept][0],
        "first_touch_seconds_per_byte_by_threads": {
            str(t): passes[t][0]["first_touch_seconds_per_byte"] for t in counts
        },
    }
    return figures, sum(seconds for _, seconds in passes.values())


def fresh_write_figures(
    clone_seconds: float, clone_bytes: int, copy_bytes_per_second: float
) -> dict[str, float]:
    """The fresh-write bandwidth and the first-touch cost per byte from one clone timing.

    A clone reads and writes ``clone_bytes`` as a copy does; whatever it takes beyond the copy's
    time for the same bytes is the fresh output's page faults (and its unmapping), at least 0.
    """
    copy_seconds = 2.0 * clone_bytes / copy_bytes_per_second
    return {
        "fresh_write_bytes": clone_bytes,
        "fresh_write_bytes_per_second": 2.0 * clone_bytes / clone_seconds,
        "first_touch_seconds_per_byte": max(0.0, (clone_seconds - copy_seconds) / clone_bytes),
    }
