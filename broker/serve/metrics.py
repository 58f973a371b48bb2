"""Prometheus exposition of the broker's state, read at scrape time.

Counters that the hot path already keeps (per camera and per subscriber) are turned
into metrics only when Prometheus asks, so serving frames pays nothing for them. The
one metric observed per frame is the capture-to-ingest latency histogram.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.core.hub import Hub
from broker.support.faults import Faults

if TYPE_CHECKING:
    from broker.analytics import Analytics
    from broker.control import Control
    from broker.serve.tls import TlsStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BrokerCollector(Collector):
    def __init__(
        self,
        hub: Hub,
        ingest_errors: Mapping[str, int],
        worker_restarts: Callable[[], Mapping[str, int]],
        control: Control | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.hub = hub
        self.faults = faults
        self.ingest_errors = ingest_errors
        self.worker_restarts = worker_restarts
        self.control = control

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        received = counter("frames_received", "Frames received from the camera", "camera")
        delivered = counter("frames_delivered", "Frames sent to clients", "camera")
        dropped = counter("frames_dropped", "Frames dropped unseen by slow clients", "camera")
        sent_bytes = counter("sent_bytes", "Image bytes sent to clients", "camera")
        clients = gauge("clients", "Connected clients", "camera")
        online = gauge("camera_online", "1 while the camera sends frames", "camera")
        for camera in self.hub.cameras.values():
            sent, drops, size = camera.delivery_totals()
            received.add_metric([camera.id], camera.frames_received)
            delivered.add_metric([camera.id], sent)
            dropped.add_metric([camera.id], drops)
            sent_bytes.add_metric([camera.id], size)
            clients.add_metric([camera.id], len(camera.subscribers))
            online.add_metric([camera.id], int(camera.online))
        errors = counter(
            "ingest_errors", "Malformed or refused ingest messages", "reason", self.ingest_errors
        )
        restarts = counter(
            "worker_restarts", "Camera worker restarts", "camera", self.worker_restarts()
        )
        yield from (received, delivered, dropped, sent_bytes, clients, online, errors, restarts)
        if self.faults is not None:
            yield counter(
                "faults",
                "Unexpected exceptions contained at a boundary, by where they happened",
                "where",
                self.faults.counts,
            )
        if self.control is not None:
            yield from self._control(self.control)

    def _control(self, control: Control) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield gauge(
            "worker_connected",
            "1 while the worker's control channel is up",
            "camera",
            {camera_id: int(link.connected) for camera_id, link in control.links.items()},
        )
        yield counter(
            "commands",
            "Camera commands by outcome (ok or the error code)",
            "outcome",
            control.results,
        )
        yield counter(
            "control_errors", "Malformed or refused control messages", "reason", control.errors
        )


class AnalyticsCollector(Collector):
    """The analyzer's results and health (`broker.analytics`)."""

    def __init__(self, analytics: Analytics) -> None:
        self.analytics = analytics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        results = self.analytics.results
        watched = set(results.motion_active) | set(self.analytics.enabled)
        active = gauge(
            "motion_active",
            "1 while the analyzer sees motion",
            "camera",
            {camera: int(results.motion_active.get(camera, False)) for camera in watched},
        )
        motion = counter(
            "motion_events",
            "Motion started (motion_started events)",
            "camera",
            results.motion_events,
        )
        detections = CounterMetricFamily(
            PREFIX + "detections",
            "Objects detected by the analyzer, by camera and label",
            labels=["camera", "label"],
        )
        for (camera, label), count in sorted(results.detections.items()):
            detections.add_metric([camera, label], count)
        analysed = counter(
            "frames_analysed", "Frames the analyzer analysed", "camera", results.analysed
        )
        skipped = counter(
            "frames_not_analysed",
            "Frames the analyzer skipped (newest wins)",
            "camera",
            results.skipped,
        )
        lag = gauge(
            "analyzer_lag_seconds",
            "Capture to the end of the last analysis",
            "camera",
            results.lag,
        )
        health = self.analytics.health()
        up = GaugeMetricFamily(
            PREFIX + "analyzer_up", "1 while the analyzer process is connected and heard"
        )
        up.add_metric([], int(bool(health["ok"])))
        restarts = CounterMetricFamily(PREFIX + "analyzer_restarts", "Analyzer process restarts")
        restarts.add_metric([], int(health["restarts"]))
        yield from (active, motion, detections, analysed, skipped, lag, up, restarts)


PREFIX = "camera_broker_"


class TlsCollector(Collector):
    """``camera_broker_tls_*``: handshakes, refused connections by reason, certificate
    reloads by outcome and the served certificate's expiry."""

    def __init__(self, stats: TlsStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.stats
        yield CounterMetricFamily(
            PREFIX + "tls_handshakes", "Completed TLS handshakes", value=stats.handshakes
        )
        yield counter(
            "tls_refused",
            "Connections refused before HTTP (plain_http, handshake_failed, handshake_timeout)",
            "reason",
            stats.refused,
        )
        reloads = counter("tls_reloads", "Certificate reloads by outcome", "outcome")
        reloads.add_metric(["ok"], stats.reloads)
        reloads.add_metric(["failed"], stats.reload_failures)
        yield reloads
        if stats.not_after is not None:
            yield GaugeMetricFamily(
                PREFIX + "tls_certificate_expiry_seconds",
                "When the served certificate expires, in Unix seconds",
                value=stats.not_after.timestamp(),
            )


def counter(
    name: str, documentation: str, label: str, values: Mapping[str, float] | None = None
) -> CounterMetricFamily:
    """A counter family by ``label``, with ``values`` (label value → count) in order."""
    return _filled(CounterMetricFamily(PREFIX + name, documentation, labels=[label]), values)


def gauge(
    name: str, documentation: str, label: str, values: Mapping[str, float] | None = None
) -> GaugeMetricFamily:
    """A gauge family by ``label``, with ``values`` (label value → value) in order."""
    return _filled(GaugeMetricFamily(PREFIX + name, documentation, labels=[label]), values)


Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)


def _filled(family: Family, values: Mapping[str, float] | None) -> Family:
    for key, value in sorted((values or {}).items()):
        family.add_metric([key], value)
    return family


class Metrics:
    def __init__(
        self,
        hub: Hub,
        ingest_errors: Mapping[str, int],
        worker_restarts: Callable[[], Mapping[str, int]],
        control: Control | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(
            BrokerCollector(hub, ingest_errors, worker_restarts, control, faults)
        )
        self.latency = Histogram(
            "camera_broker_latency_seconds",
            "Capture to ingest latency (needs the worker's clock in sync with the broker's)",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def add_tls(self, stats: TlsStats) -> None:
        """Export the TLS counters of the port (`broker.serve.tls`)."""
        self.registry.register(TlsCollector(stats))

    def add_analytics(self, analytics: Analytics) -> None:
        self.registry.register(AnalyticsCollector(analytics))

    def forget(self, camera_id: str) -> None:
        """Drop a removed camera's latency series, so ids that come and go stay bounded."""
        with contextlib.suppress(KeyError):
            self.latency.remove(camera_id)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
