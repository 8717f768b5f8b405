"""The service's Prometheus metrics (prometheus_client, one registry per app): requests and errors by endpoint
and status, requests in progress, request latency, images per forward pass (the batches dynamic batching forms),
time queued, forward time and the queue depth."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from resnetkit.serve.deps import require

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self, queue_depth: Callable[[], int]) -> None:
        prom = require("prometheus_client")
        self.prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "resnetkit_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = prom.Histogram(
            "resnetkit_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = prom.Counter("resnetkit_images", "Images predicted", registry=r)
        self.batch = prom.Histogram(
            "resnetkit_batch_size", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.wait = prom.Histogram(
            "resnetkit_queue_seconds", "Time the oldest image of a batch waited", buckets=LATENCY_BUCKETS, registry=r
        )
        self.forward = prom.Histogram(
            "resnetkit_forward_seconds", "Forward pass time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_progress = prom.Gauge(
            "resnetkit_requests_in_progress", "Requests being answered", ["endpoint"], registry=r
        )
        depth = prom.Gauge("resnetkit_queue_depth", "Images waiting for a forward pass", registry=r)
        depth.set_function(queue_depth)
        self.content_type = prom.CONTENT_TYPE_LATEST

    def observe_batch(self, size: int, wait_s: float, forward_s: float) -> None:
        self.batch.observe(size)
        self.wait.observe(wait_s)
        self.forward.observe(forward_s)

    @contextlib.contextmanager
    def request(self, endpoint: str) -> Iterator[Callable[[int], None]]:
        """Times a request and counts it by the status it ends with (a RequestError's, 500 for anything else);
        the body calls the yielded function with the number of images it answered."""
        start, status = time.perf_counter(), "200"
        self.in_progress.labels(endpoint).inc()
        try:
            yield self.images.inc
        except Exception as e:
            status = str(getattr(e, "status", 500))
            raise
        finally:
            self.in_progress.labels(endpoint).dec()
            self.requests.labels(endpoint, status).inc()
            self.latency.labels(endpoint).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        return self.prom.generate_latest(self.registry)
