"""The ``/metrics`` body: the snapshot's families encoded once per snapshot, the rest per scrape.

A snapshot changes once per probe cycle (minutes) and is scraped many times in between (every
Prometheus replica, every 15 s), so encoding its few hundred series afresh at every scrape is
wasted work, and work that competes for the GIL with the cycle's refit and for the CPU with the
probe worker exactly when scrape latency matters. ``Exposition`` keeps the encoded bytes of
``SnapshotCollector.snapshot_families`` per content type until ``get_snapshot()`` returns another
snapshot object (snapshots are immutable and replaced whole), and encodes at each scrape only what
changes: the snapshot's age, ``scaleprobe_collector_success`` and the ``live`` collectors (the
process collector's RSS and CPU time).

The body is byte for byte what prometheus-client's encoder gives for a registry holding the same
collectors in the same order (``default_registry``; ``tests/test_exposition.py`` checks it): the
text format is a plain concatenation of families, and OpenMetrics' closing ``# EOF`` line is kept
only at the very end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from scaleprobe.exporter.collector import SnapshotCollector
from scaleprobe.exporter.snapshot import Snapshot

OPENMETRICS_EOF = b"# EOF\n"

log = logging.getLogger("scaleprobe.exporter.exposition")


class _Fixed(Collector):
    """Yields a fixed list of families (what prometheus-client's encoders take)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class Exposition:
    """``encode(accept_header)`` gives ``(body, content_type)`` for one ``/metrics`` scrape."""

    def __init__(
        self,
        get_snapshot: Callable[[], Snapshot | None],
        collector: SnapshotCollector,
        live: Sequence[Collector] = (),
    ) -> None:
        self._get_snapshot = get_snapshot
        self._collector = collector
        self._live = tuple(live)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._cached = False
        self._rendered = False
        self._families: list[Metric] = []
        self._bodies: dict[str, bytes] = {}

    def encode(self, accept_header: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept_header)
        try:
            snapshot = self._get_snapshot()
        except Exception:  # a scrape must never fail because of the snapshot source
            log.exception("reading the snapshot failed", extra={"probe": "collector"})
            return encoder(_Fixed(self._live_families(None, False))), content_type
        with self._lock:  # one encoding per snapshot and format, however many scrapes arrive
            if not self._cached or snapshot is not self._snapshot:
                self._families, self._rendered = self._collector.snapshot_families(snapshot)
                self._snapshot, self._cached, self._bodies = snapshot, True, {}
            cached = self._bodies.get(content_type)
            if cached is None:
                cached = _without_eof(encoder(_Fixed(self._families)))
                self._bodies[content_type] = cached
            rendered = self._rendered
        return cached + encoder(_Fixed(self._live_families(snapshot, rendered))), content_type

    def _live_families(self, snapshot: Snapshot | None, rendered: bool) -> list[Metric]:
        families = self._collector.live_families(snapshot, rendered)
        for collector in self._live:
            families.extend(collector.collect())
        return families


def _without_eof(body: bytes) -> bytes:
    """The families of an OpenMetrics body without its closing line (text bodies unchanged)."""
    return body.removesuffix(OPENMETRICS_EOF)
