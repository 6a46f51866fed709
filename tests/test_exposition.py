"""The /metrics body: the same bytes as prometheus-client's encoders over the same collectors,
the snapshot's series encoded once per snapshot, its age fresh at every scrape."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sample_snapshot import CREATED_AT_SECONDS, sample_snapshot
from scaleprobe.exporter.collector import SnapshotCollector
from scaleprobe.exporter.exposition import Exposition
from scaleprobe.exporter.snapshot import Snapshot

OPENMETRICS = "application/openmetrics-text;version=1.0.0"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counting(Collector):
    """A live collector whose value changes at every collection (as process CPU time does)."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> list[Metric]:  # type: ignore[override]
        self.calls += 1
        family = GaugeMetricFamily("test_collections", "Collections so far.")
        family.add_metric([], self.calls)
        return [family]


class RenderCounting(SnapshotCollector):
    renders = 0

    def render(self, snapshot: Snapshot | None) -> list[Metric]:
        self.renders += 1
        return super().render(snapshot)


class Holder:
    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot

    def __call__(self) -> Snapshot | None:
        return self.snapshot


def value(body: bytes, name: str) -> float:
    for family in text_string_to_metric_families(body.decode()):
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"no {name} in the body")


def age(body: bytes) -> float:
    return value(body, "scaleprobe_snapshot_age_seconds")


def build(holder: Holder, clock: Clock) -> tuple[Exposition, RenderCounting, Counting]:
    collector = RenderCounting(holder, clock=clock, version="x")
    live = Counting()
    return Exposition(holder, collector, [live]), collector, live


@pytest.mark.parametrize(
    ("accept", "encode"), [("", generate_latest), (OPENMETRICS, generate_openmetrics)]
)
def test_the_body_is_what_the_encoder_gives_for_a_registry_of_the_same_collectors(
    accept: str, encode: object
) -> None:
    holder, clock = Holder(sample_snapshot()), Clock(CREATED_AT_SECONDS + 5)
    exposition, _, live = build(holder, clock)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(holder, clock=clock, version="x"))
    registry.register(live)
    for _ in range(2):  # the first scrape encodes the snapshot, the second reuses it
        body, content_type = exposition.encode(accept)
        assert callable(encode)
        live.calls -= 1  # the registry's own collection below must see the same value
        assert body == encode(registry)
        assert content_type.startswith("application/openmetrics-text" if accept else "text/plain")
    if accept:
        assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1


def test_a_snapshot_is_rendered_once_however_often_it_is_scraped() -> None:
    holder, clock = Holder(sample_snapshot()), Clock(CREATED_AT_SECONDS + 5)
    exposition, collector, live = build(holder, clock)
    first, _ = exposition.encode("")
    clock.now += 7
    second, _ = exposition.encode("")
    exposition.encode(OPENMETRICS)  # another format: the same families, encoded once more
    exposition.encode(OPENMETRICS)
    assert collector.renders == 1
    assert live.calls == 4  # the live collectors are asked at every scrape
    assert age(first) == 5 and age(second) == 12  # the age is fresh

    newer = dataclasses.replace(sample_snapshot(), created_at_seconds=clock.now)
    holder.snapshot = newer  # the daemon swaps in a new snapshot after a cycle
    third, _ = exposition.encode("")
    assert collector.renders == 2
    assert age(third) == 0
    assert value(third, "scaleprobe_snapshot_timestamp_seconds") == newer.created_at_seconds


def test_no_snapshot_then_a_first_one() -> None:
    holder, clock = Holder(None), Clock(CREATED_AT_SECONDS)
    exposition, collector, _ = build(holder, clock)
    before, _ = exposition.encode("")
    assert b"scaleprobe_build_info" in before and b"scaleprobe_up" not in before
    assert b"scaleprobe_snapshot_age_seconds" not in before
    holder.snapshot = sample_snapshot()
    after, _ = exposition.encode("")
    assert b'scaleprobe_up{device="cpu"} 1.0' in after
    assert collector.renders == 2


def test_a_broken_snapshot_is_success_zero_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snapshot = sample_snapshot()
    broken_device = dataclasses.replace(snapshot.devices[0], probe_runs_total=None)  # type: ignore[arg-type]
    holder, clock = Holder(dataclasses.replace(snapshot, devices=(broken_device,))), Clock(0.0)
    exposition, _, _ = build(holder, clock)
    with caplog.at_level(logging.ERROR):
        bodies = [exposition.encode("")[0] for _ in range(3)]
    assert all(b"scaleprobe_collector_success 0.0" in body for body in bodies)
    assert all(b"test_collections" in body for body in bodies)  # the live part is still served
    assert caplog.text.count("rendering the snapshot failed") == 1


def test_a_failing_snapshot_source_still_answers_with_success_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode() -> Snapshot:
        raise RuntimeError("state lost")

    collector = SnapshotCollector(explode, version="x")
    with caplog.at_level(logging.ERROR):
        body, _ = Exposition(explode, collector, [Counting()]).encode("")
    assert b"scaleprobe_collector_success 0.0" in body and b"test_collections 1.0" in body
    assert "state lost" in caplog.text
