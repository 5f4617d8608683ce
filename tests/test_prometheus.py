"""zapier_async.prometheus: a scrape of a demo-like workload equals client.metrics()."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from _util import client_for

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import zapier_async as za
from zapier_async import errors
from zapier_async._metrics import LATENCY_BUCKETS, _Recorder
from zapier_async.prometheus import ZapierCollector
from zapier_async.testing import FakeClock, FakeZapier

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_scrape_of_a_demo_workload_matches_metrics():
    # One loop for the workload; the scrape happens outside it, like a scraping thread.
    import asyncio

    async def workload() -> tuple[za.ZapierClient, list[str], Mapping[str, int]]:
        async with (
            # Retry-After: 0 on the injected 429, so its retry waits for nothing.
            FakeZapier(seed=9, durations=0.05, fault_retry_after=0) as fake,
            client_for(fake, max_rate_limit_wait=None) as client,
        ):
            fake.inject("502", endpoint="poll")
            fake.inject("rate_limited", endpoint="create")  # one 429, retried
            requests = [
                za.RunRequest(action="core:send", authentication=None, inputs={"n": n})
                for n in range(4)
            ]
            requests.append(
                za.RunRequest(
                    action="core:send",
                    authentication=None,
                    inputs={"__fake__": {"status": "error", "errors": [{"code": "user"}]}},
                )
            )
            outcomes = await client.gather(requests, concurrency=4)
            assert sum(o.error is None for o in outcomes) == 4
            with pytest.raises(errors.BadRequestError):
                await client.run("core:x", authentication=None, inputs={"__fake__": {"status": 1}})
        return client, [o.run.id for o in outcomes if o.run is not None], fake.stats.faults

    client, ids, faults = asyncio.run(workload())
    registry = CollectorRegistry()
    registry.register(ZapierCollector(client, namespace="zapier", const_labels={"app": "demo"}))
    got = scrape(registry)
    m = client.metrics()
    app = ("app", "demo")

    def value(name: str, **labels: str) -> float:
        return got[name, tuple(sorted([app, *labels.items()]))]

    assert m.runs_started == 5
    assert value("zapier_runs_total", outcome="started") == m.runs_started
    assert value("zapier_runs_total", outcome="succeeded") == m.runs_succeeded == 4
    assert value("zapier_runs_total", outcome="failed") == m.runs_failed == 1
    assert value("zapier_runs_total", outcome="lost") == m.runs_lost
    assert value("zapier_runs_total", outcome="outcome_unknown") == m.outcome_unknown
    assert value("zapier_runs_in_flight") == m.runs_in_flight == 0
    # The histogram: cumulative buckets, +Inf = count, sum.
    assert value("zapier_run_latency_seconds_count") == m.latency_samples == 5
    assert value("zapier_run_latency_seconds_sum") == pytest.approx(m.latency_sum)
    assert value("zapier_run_latency_seconds_bucket", le="+Inf") == m.latency_samples
    assert len(m.latency_buckets) == len(LATENCY_BUCKETS)
    previous = 0.0
    for bound, count in m.latency_buckets:
        got_count = value("zapier_run_latency_seconds_bucket", le=repr(bound))
        assert got_count == count
        assert got_count >= previous
        previous = got_count
    # Requests by endpoint, responses by endpoint and status.
    for endpoint, count in m.requests_by_endpoint.items():
        assert value("zapier_requests_total", endpoint=endpoint) == count
    responses = {
        (dict(labels)["endpoint"], int(dict(labels)["status"])): v
        for (name, labels), v in got.items()
        if name == "zapier_responses_total"
    }
    expected = {
        (endpoint, status): count
        for endpoint, by_status in m.responses_by_endpoint.items()
        for status, count in by_status.items()
    }
    assert responses == expected
    assert ("action_runs.get", 502) in responses
    assert ("action_runs.create", 400) in responses
    assert value("zapier_rate_limited_total") == m.rate_limited == faults["rate_limited"] == 1
    assert ("action_runs.create", 429) in responses
    assert value("zapier_retries_total") == m.retries
    assert value("zapier_transport_errors_total") == m.transport_errors
    assert value("zapier_limiter_waits_total") == m.limiter_waits
    assert value("zapier_limiter_wait_seconds_total") == pytest.approx(m.limiter_wait_total)
    assert value("zapier_limiter_wait_max_seconds") == pytest.approx(m.limiter_wait_max)
    for code, count in m.errors_by_code.items():
        assert value("zapier_errors_total", code=code) == count
    # Bounded cardinality: no label carries a run id.
    run_ids = set(ids)
    assert len(run_ids) == 5  # the failed run carries its id too
    for _, labels in got:
        for _, label_value in labels:
            assert label_value not in run_ids
            assert len(label_value) < 40


def test_error_codes_are_capped_into_other():
    clock = FakeClock()
    recorder = _Recorder(clock)
    for n in range(50):
        for _ in range(n + 1):
            recorder.errors_by_code[f"code{n:02d}"] = n + 1

    class Client:
        def metrics(self) -> za.Metrics:
            return recorder.snapshot(in_flight=0, limiter=za.Limiter(clock=clock).snapshot())

    registry = CollectorRegistry()
    registry.register(ZapierCollector(Client(), max_error_codes=5))
    got = scrape(registry)
    codes = {
        dict(labels)["code"]: v
        for (name, labels), v in got.items()
        if name == "zapier_errors_total"
    }
    assert set(codes) == {"code49", "code48", "code47", "code46", "code45", "other"}
    assert codes["code49"] == 50
    assert codes["other"] == sum(range(1, 46))
    assert sum(codes.values()) == sum(range(1, 51))


def test_a_client_without_metrics_is_refused():
    with pytest.raises(errors.InvalidRequestError):
        ZapierCollector(object())
