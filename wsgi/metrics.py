"""/metrics: Prometheus text exposition built with prometheus-client.

The numbers are read fresh for every scrape (spool, statistics database,
cache, disks) by a custom collector in a registry of its own, so that
several daemon processes answer alike and nothing is kept in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

from retrace_server.intake.storage import free_bytes
from retrace_server.packaging.cache import PackageCache
from retrace_server.reports.buckets import BucketDB
from retrace_server.stats import StatsDB
from retrace_server.tasks.taskqueue import occupancy, running_by_host

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from prometheus_client.metrics_core import Metric

    from retrace_server.config import Config
    from retrace_server.paths import StrPath

# Seconds; a warm retrace phase takes milliseconds, a cold unpack or a big
# gdb run minutes.
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


def _histogram_buckets(samples: Iterable[float]) -> list[tuple[str, int]]:
    ordered = sorted(samples)
    buckets = [(str(bound), sum(1 for value in ordered if value <= bound)) for bound in PHASE_BUCKETS]
    return buckets + [("+Inf", len(ordered))]


def _free_bytes(path: StrPath) -> int:
    try:
        return free_bytes(path)
    except OSError:
        return 0


def _upstream_names(finished: dict[str, float], refusals: float) -> Iterator[Metric]:
    """Upstream's two counters under its own sample names (no ``_total``; finished by result only), untyped, so
    that dashboards made for upstream keep working beside this server's typed counters."""
    upstream = UnknownMetricFamily("retrace_tasks_finished", "Retrace tasks finished (upstream's name)",
                                   labels=["result"])
    for result, count in sorted(finished.items()):
        upstream.add_metric([result], count)
    yield upstream
    yield UnknownMetricFamily("retrace_tasks_overload", "Retrace jobs denied because of exceeded capacity "
                              "(upstream's name)", value=refusals)


class RetraceCollector(Collector):
    def __init__(self, config: Config) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        config = self.config
        now = occupancy(config)
        yield GaugeMetricFamily("retrace_tasks_running", "Retrace workers running now", value=now.running)
        yield GaugeMetricFamily("retrace_tasks_queued", "Tasks waiting for a free worker", value=now.queued)
        yield GaugeMetricFamily("retrace_uploads_in_progress", "Crash uploads being received", value=now.uploading)
        by_host = GaugeMetricFamily("retrace_tasks_running_by_host", "Retrace workers running now, per worker host",
                                    labels=["host"])
        for host, count in sorted(running_by_host(config).items()):
            by_host.add_metric([host], count)
        yield by_host
        with StatsDB.for_config(config) as stats:
            finished = CounterMetricFamily(
                "retrace_tasks_finished", "Retrace tasks finished, by result and failure reason",
                labels=["result", "reason"],
            )
            by_result: dict[str, float] = {}
            for result, reason, count in stats.finished_counts():
                finished.add_metric([result, reason], count)
                by_result[result] = by_result.get(result, 0) + count
            yield finished
            refusals = stats.refusals()
            yield CounterMetricFamily(
                "retrace_tasks_overload", "Uploads refused because all task slots were taken", value=refusals,
            )
            yield from _upstream_names(by_result, refusals)
            phases = HistogramMetricFamily(
                "retrace_phase_duration_seconds", "Time each task spent in each phase", labels=["phase"]
            )
            for phase, samples in sorted(stats.phase_samples().items()):
                phases.add_metric([phase], _histogram_buckets(samples), sum_value=sum(samples))
            yield phases
            hits, misses = stats.cache_totals()
        lookups = CounterMetricFamily("retrace_cache_lookups", "Package cache lookups by tasks", labels=["result"])
        lookups.add_metric(["hit"], hits)
        lookups.add_metric(["miss"], misses)
        yield lookups
        yield GaugeMetricFamily(
            "retrace_cache_hit_ratio", "Share of package lookups served from the unpacked cache",
            value=hits / (hits + misses) if hits + misses else 0.0,
        )
        cache_bytes = 0
        if (Path(config.CacheDir) / "rpms").is_dir():
            cache_bytes = sum(size for _, _, size in PackageCache(config.CacheDir).entries())
        with BucketDB.for_config(self.config) as buckets:
            totals = buckets.totals()
        yield CounterMetricFamily("retrace_reports", "Coreless crash reports received", value=totals["reports"])
        yield GaugeMetricFamily("retrace_buckets", "Crash buckets (distinct crash signatures)", value=totals["buckets"])
        yield GaugeMetricFamily("retrace_cache_bytes", "Bytes of unpacked packages in the cache", value=cache_bytes)
        yield GaugeMetricFamily("retrace_savedir_free_bytes", "Free disk space on the volume with tasks",
                                value=_free_bytes(config.SaveDir))
        yield GaugeMetricFamily("retrace_cache_free_bytes", "Free disk space on the volume with the package cache",
                                value=_free_bytes(config.CacheDir))


def exposition(config: Config) -> tuple[bytes, str]:
    """``(body bytes, content type)`` of one scrape."""
    registry = CollectorRegistry()
    registry.register(RetraceCollector(config))
    return generate_latest(registry), CONTENT_TYPE_LATEST
