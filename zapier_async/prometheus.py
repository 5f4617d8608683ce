"""A Prometheus collector exposing `ZapierClient.metrics()`.

Install the extra (``pip install 'zapier-async[prometheus]'``), then::

    from prometheus_client import REGISTRY
    from zapier_async.prometheus import ZapierCollector

    REGISTRY.register(ZapierCollector(client))

Each scrape takes one `Metrics` snapshot (cheap, nothing is reset), so the numbers of one
scrape are consistent with each other. Label cardinality is bounded: no run ids, no user ids;
endpoints are the fixed labels of the library's requests (``action_runs.get``, ...), status
codes are HTTP codes, and error codes (which a server may invent) are capped at
`ZapierCollector.max_error_codes` distinct values, the rest counted under ``other``.

Metrics (with the default ``namespace="zapier"``):

- ``zapier_runs_total{outcome}``: started, succeeded, failed, lost, outcome_unknown
- ``zapier_runs_in_flight``: runs the client follows now
- ``zapier_run_latency_seconds``: histogram, submission to outcome
- ``zapier_requests_total{endpoint}``: HTTP requests sent
- ``zapier_responses_total{endpoint,status}``: HTTP responses
- ``zapier_transport_errors_total``, ``zapier_retries_total``
- ``zapier_rate_limited_total``: 429 answers
- ``zapier_limiter_waits_total``, ``zapier_limiter_wait_seconds_total``,
  ``zapier_limiter_wait_max_seconds``
- ``zapier_errors_total{code}``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "zapier_async.prometheus needs prometheus-client: pip install 'zapier-async[prometheus]'"
    ) from exc

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ._metrics import Metrics

__all__ = ["ZapierCollector"]


class ZapierCollector(Collector):
    """Exposes one client's `metrics()` at every scrape.

    Args:
        client: A `ZapierClient` (anything with a ``metrics()`` method returning `Metrics`).
        namespace: The metric name prefix.
        const_labels: Labels added to every sample (e.g. ``{"client": "billing"}`` to tell
            two clients apart in one registry); keep them few and fixed.
        max_error_codes: Distinct ``code`` labels of ``errors_total`` kept; the rest are
            summed under ``other``.
    """

    def __init__(
        self,
        client: object,
        *,
        namespace: str = "zapier",
        const_labels: dict[str, str] | None = None,
        max_error_codes: int = 32,
    ) -> None:
        metrics = getattr(client, "metrics", None)
        if not callable(metrics):
            from .errors import InvalidRequestError

            raise InvalidRequestError("must have a metrics() method (a ZapierClient)", "client")
        self._metrics: Callable[[], Metrics] = metrics
        self._ns = namespace
        self._const = dict(const_labels or {})
        self.max_error_codes = max_error_codes

    def _name(self, name: str) -> str:
        return f"{self._ns}_{name}" if self._ns else name

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the families are built at each scrape."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the client's metrics, as Prometheus families."""
        m = self._metrics()
        keys = list(self._const)
        values = list(self._const.values())

        def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(self._name(name), doc, labels=keys + (labels or []))

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(self._name(name), doc, labels=keys)

        runs = counter("runs", "Runs by outcome as this client saw them.", ["outcome"])
        for outcome, count in (
            ("started", m.runs_started),
            ("succeeded", m.runs_succeeded),
            ("failed", m.runs_failed),
            ("lost", m.runs_lost),
            ("outcome_unknown", m.outcome_unknown),
        ):
            runs.add_metric([*values, outcome], count)
        yield runs

        in_flight = gauge("runs_in_flight", "Runs this client follows now.")
        in_flight.add_metric(values, m.runs_in_flight)
        yield in_flight

        latency = HistogramMetricFamily(
            self._name("run_latency_seconds"),
            "Seconds from a run's submission to its outcome.",
            labels=keys,
        )
        buckets = [(_le(bound), float(count)) for bound, count in m.latency_buckets]
        buckets.append(("+Inf", float(m.latency_samples)))
        latency.add_metric(values, buckets, sum_value=m.latency_sum)
        yield latency

        requests = counter("requests", "HTTP requests sent, by endpoint.", ["endpoint"])
        for endpoint, count in m.requests_by_endpoint.items():
            requests.add_metric([*values, endpoint], count)
        yield requests

        responses = counter(
            "responses", "HTTP responses, by endpoint and status.", ["endpoint", "status"]
        )
        for endpoint, by_status in m.responses_by_endpoint.items():
            for status, count in by_status.items():
                responses.add_metric([*values, endpoint, str(status)], count)
        yield responses

        for name, doc, value in (
            ("transport_errors", "Requests that got no HTTP answer.", m.transport_errors),
            ("retries", "Requests sent again after a failure or a refusal.", m.retries),
            ("rate_limited", "429 answers (rate budget refusals).", m.rate_limited),
            ("limiter_waits", "Requests that waited for the rate limiter.", m.limiter_waits),
            (
                "limiter_wait_seconds",
                "Seconds waited for the rate limiter, summed.",
                m.limiter_wait_total,
            ),
        ):
            family = counter(name, doc)
            family.add_metric(values, value)
            yield family

        wait_max = gauge("limiter_wait_max_seconds", "The longest wait for the rate limiter.")
        wait_max.add_metric(values, m.limiter_wait_max)
        yield wait_max

        by_code = counter("errors", "Errors by code.", ["code"])
        for code, count in _capped(m.errors_by_code, self.max_error_codes).items():
            by_code.add_metric([*values, code], count)
        yield by_code


def _le(bound: float) -> str:
    return repr(float(bound))


def _capped(counts: Mapping[str, int], limit: int) -> dict[str, int]:
    """At most `limit` labels: the largest counts, the rest summed under ``other``."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(items[:limit])
    rest = sum(count for _, count in items[limit:])
    if rest:
        kept["other"] = kept.get("other", 0) + rest
    return kept
