"""``GET /metrics``: what an operator watches a running server with, in the Prometheus text format.

Requests are counted and timed per route (the route's template, so image and job ids do not multiply the
series); searches in flight are read from the server's search pool; jobs, images and activation time are
read from the collection's files at each scrape, so they include the work of every server sharing it.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from ..collection import Collection
from .queue import JOB_STATES, JobQueue

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# request latency buckets, seconds: /healthz answers in ms, searches in ~0.1-1 s, synchronous activations in minutes
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The server's metrics registry.

    Args:
        collection: the served collection (images live and removed).
        queue: its job queue (jobs by state, activation time).
        searches_in_flight: how many searches are running or waiting now.
    """

    def __init__(self, collection: Collection, queue: JobQueue, searches_in_flight: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("activeindex_http_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("activeindex_http_request_duration_seconds", "HTTP request latency, by route",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        Gauge("activeindex_searches_in_flight", "Searches running or waiting in this server",
              registry=self.registry).set_function(searches_in_flight)
        self.registry.register(_CollectionCollector(collection, queue))

    def instrument(self, app: FastAPI) -> None:
        """Count and time every request (by the template of the route it matched)."""

        @app.middleware("http")
        async def measure(request: Request, call_next):
            start = time.perf_counter()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                route = getattr(request.scope.get("route"), "path", "unmatched")
                self.requests.labels(request.method, route, str(status)).inc()
                self.latency.labels(request.method, route).observe(time.perf_counter() - start)

    def scrape(self) -> bytes:
        """The exposition, in the Prometheus text format."""
        return generate_latest(self.registry)


class _CollectionCollector(Collector):
    """Jobs, images and activation time, read from the collection at scrape time."""

    def __init__(self, collection: Collection, queue: JobQueue):
        self.collection, self.queue = collection, queue

    def collect(self) -> Iterator[Metric]:
        counts = self.queue.counts()
        jobs = GaugeMetricFamily("activeindex_jobs", "Activation jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts[state])
        yield jobs
        yield GaugeMetricFamily("activeindex_job_queue_depth", "Activation jobs waiting to run", value=counts["queued"])
        yield GaugeMetricFamily("activeindex_activations_in_flight", "Activation jobs being run",
                                value=counts["running"])
        self.collection.refresh()
        kinds = self.collection.catalog.counts()
        images = GaugeMetricFamily("activeindex_images", "Registered images by kind, and removed ones",
                                   labels=["kind"])
        for kind in ("active", "passive"):
            images.add_metric([kind], kinds[kind])
        images.add_metric(["removed"], self.collection.catalog.removed_count())
        yield images
        seconds, activated = self.queue.activation_time()
        summary = SummaryMetricFamily("activeindex_activation_seconds_per_image",
                                      "Wall-clock seconds of activation jobs per image they activated",
                                      count_value=activated, sum_value=seconds)
        yield summary
