"""
Counters an operator scrapes: sessions, logins, uploads, tasks, bans.

The server keeps one L{Metrics} and calls its methods where things happen;
with C{metrics_listen} set (a Twisted endpoint string, off by default) it
serves them in Prometheus' text format at C{/metrics} through twisted.web.
The formatting is prometheus_client's; nothing here writes the format by
hand.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Site

_PREFIX = "quartet_sftpd"


class Metrics:
    """
    The server's metrics, in a registry of their own (so that several
    servers in one process, as in tests, do not share counters).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            f"{_PREFIX}_sessions", "SSH connections logged in now", registry=r
        )
        self.logins = Counter(
            f"{_PREFIX}_logins", "Login attempts by outcome", ["outcome"], registry=r
        )
        self.uploads = Counter(
            f"{_PREFIX}_uploads",
            "Uploads by rule and outcome (completed, aborted, refused)",
            ["rule", "outcome"],
            registry=r,
        )
        self.upload_bytes = Counter(
            f"{_PREFIX}_upload_bytes",
            "Bytes of completed uploads",
            ["rule"],
            registry=r,
        )
        self.tasks = Counter(
            f"{_PREFIX}_tasks",
            "Tasks that ended, by rule and status",
            ["rule", "status"],
            registry=r,
        )
        self.rule_seconds = Histogram(
            f"{_PREFIX}_rule_duration_seconds",
            "How long rules ran",
            ["rule"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
            registry=r,
        )
        self.bans = Counter(
            f"{_PREFIX}_bans", "Addresses banned for failed logins", registry=r
        )

    def login(self, outcome: str) -> None:
        """
        Count a login attempt: C{accepted} or C{refused}.
        """
        self.logins.labels(outcome=outcome).inc()

    def upload_completed(self, rule: str, size: int) -> None:
        self.uploads.labels(rule=rule, outcome="completed").inc()
        self.upload_bytes.labels(rule=rule).inc(size)

    def upload_aborted(self, rule: str) -> None:
        self.uploads.labels(rule=rule, outcome="aborted").inc()

    def upload_refused(self, rule: str) -> None:
        self.uploads.labels(rule=rule, outcome="refused").inc()

    def task_ended(self, rule: str, status: str, seconds: float | None) -> None:
        self.tasks.labels(rule=rule, status=status).inc()
        if seconds is not None:
            self.rule_seconds.labels(rule=rule).observe(seconds)

    def banned(self) -> None:
        self.bans.inc()

    def site(self) -> Site:
        """
        A twisted.web site serving the metrics at C{/metrics}.
        """
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry=self.registry))
        return MetricsSite(root)


class MetricsSite(Site):
    """
    A site without an access log: a scraper asks every few seconds, and a
    line for each request would bury the server's own events.
    """

    noisy = False

    def log(self, request: object) -> None:
        pass


def sample(metrics: Metrics, name: str, **labels: Any) -> float:
    """
    The current value of one sample, or 0.0 when it was never set.
    """
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value
