"""CUDA-graph capture: how the probes separate host dispatch cost from device time on a GPU.

Replaying a captured graph launches all its kernels with one host call, so the replay time is the
device's own time for the same work; eager time minus replay time is what the host's dispatch
costs. ``cuda`` is the ``torch.cuda`` module, a parameter so tests hand in ``tests/fakes.FakeCuda``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Eager runs on a side stream before capture, as torch's documentation requires (lazy
# initialisation of cuBLAS handles and allocator pools must not happen during capture).
CAPTURE_WARMUP = 3


def capture(fn: Callable[[], object], cuda: Any, warmup: int = CAPTURE_WARMUP) -> Any:
    """Warm ``fn`` up on a side stream, capture it into a graph, and return the graph."""
    side = cuda.Stream()
    side.wait_stream(cuda.current_stream())
    with cuda.stream(side):
        for _ in range(warmup):
            fn()
    cuda.current_stream().wait_stream(side)
    graph = cuda.CUDAGraph()
    with cuda.graph(graph):
        fn()
    cuda.synchronize()
    return graph


def overhead_ratio(eager_seconds: float, replay_seconds: float) -> float:
    """Share of eager wall time that graph replay removes, clipped to 0..1."""
    if eager_seconds <= 0:
        return 0.0
    return min(1.0, max(0.0, (eager_seconds - replay_seconds) / eager_seconds))
