"""Prometheus metrics, one registry per app. Labels carry route templates, never paths or values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tether_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tether_http_request_duration_seconds",
            "Time to serve an HTTP request",
            ["route"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.sealed = Gauge("tether_sealed", "1 when this node is sealed", registry=self.registry)
        self.secret_writes = Counter(
            "tether_secret_writes", "Secret versions written", ["kind"], registry=self.registry
        )
        self.audit_sink_failures = Gauge(
            "tether_audit_sink_failures",
            "Batches a secondary audit sink failed to write (the store's copy is unaffected)",
            registry=self.registry,
        )
        self.key_rotations = Counter("tether_key_rotations", "Keyring rotations", registry=self.registry)
