"""zapier_async.otel: the span tree of runs against the real client and FakeZapier."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from _util import client_for

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import zapier_async as za
from zapier_async import otel
from zapier_async._metrics import RequestEvent, RunEvent
from zapier_async.testing import FakeZapier

SECRET_TOKEN = "sk-live-bearer-9f8e7d6c5b4a"
SECRET_INPUT = "alice.secret.input@example.com"


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def all_values(span: ReadableSpan) -> list[str]:
    values = [str(v) for v in (span.attributes or {}).values()]
    for event in span.events:
        values += [str(v) for v in (event.attributes or {}).values()]
    values.append(span.name)
    if span.status.description:
        values.append(span.status.description)
    return values


def children_of(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


@pytest.mark.asyncio
async def test_a_run_is_a_span_with_its_create_and_each_poll_as_children(exporter):
    provider, memory = exporter
    async with (
        FakeZapier(seed=1, durations=0.05) as fake,
        client_for(fake, auth=za.BearerToken(SECRET_TOKEN)) as client,
    ):
        instrumentation = otel.instrument(client, tracer_provider=provider)
        fake.inject("502", endpoint="poll")  # one read is re-sent
        handle = await client.run("core:send", authentication=None, inputs={"to": SECRET_INPUT})
        await handle
        instrumentation.uninstrument()
        m = client.metrics()
    spans = list(memory.get_finished_spans())
    runs = [s for s in spans if s.name == "zapier.run"]
    assert len(runs) == 1
    run = runs[0]
    assert run.parent is None
    assert run.kind is SpanKind.INTERNAL
    attrs = dict(run.attributes or {})
    assert attrs["zapier.run.id"] == handle.id
    assert attrs["zapier.action"] == "core:send"
    assert attrs["zapier.run.outcome"] == "success"
    # Reads of the run; the re-sent one counts once (m.polls counts HTTP sends).
    assert attrs["zapier.run.polls"] == m.polls - m.retries
    assert run.status.status_code is StatusCode.UNSET

    children = sorted(children_of(spans, run), key=lambda s: s.start_time or 0)
    # Every request of this run is a child: the create and each read (the 502 one included).
    assert len(children) == m.requests_by_endpoint["action_runs.create"] + m.polls
    assert len(spans) == 1 + len(children)
    create, *reads = children
    assert create.name == "POST"
    assert all(r.name == "GET" for r in reads)
    assert len(reads) == m.polls >= 2
    host, port = fake.url.split("//", 1)[1].split(":")
    for child in children:
        a = dict(child.attributes or {})
        assert child.kind is SpanKind.CLIENT
        assert a["server.address"] == host
        assert a["server.port"] == int(port)
        assert a["http.request.method"] == child.name
        assert child.start_time is not None
        assert run.start_time is not None
        assert run.end_time is not None
        assert child.end_time is not None
        assert run.start_time <= child.start_time <= child.end_time <= run.end_time
    assert dict(create.attributes or {})["url.full"] == f"{fake.url}/v2/action-runs"
    assert dict(create.attributes or {})["http.response.status_code"] == 200
    assert dict(create.attributes or {})["zapier.run.id"] == handle.id
    failed = [r for r in reads if dict(r.attributes or {}).get("http.response.status_code") == 502]
    assert len(failed) == 1
    assert dict(failed[0].attributes or {})["error.type"] == "502"
    assert failed[0].status.status_code is StatusCode.ERROR
    resent = [r for r in reads if "http.request.resend_count" in (r.attributes or {})]
    assert len(resent) == 1
    assert dict(resent[0].attributes or {})["http.request.resend_count"] == 1
    assert resent[0].start_time is not None
    assert failed[0].end_time is not None
    assert resent[0].start_time >= failed[0].end_time
    for read in reads:
        assert dict(read.attributes or {})["url.full"] == f"{fake.url}/v2/action-runs/{handle.id}"
    for span in spans:
        text = " ".join(all_values(span))
        assert SECRET_TOKEN not in text
        assert SECRET_INPUT not in text


@pytest.mark.asyncio
async def test_a_failed_run_has_error_status_and_codes_but_no_detail(exporter):
    provider, memory = exporter
    detail = "the mailbox of " + SECRET_INPUT + " is full"
    async with FakeZapier(seed=2, durations=0.02) as fake, client_for(fake) as client:
        instrumentation = otel.instrument(client, tracer_provider=provider)
        handle = await client.run(
            "core:send",
            authentication=None,
            inputs={
                "to": SECRET_INPUT,
                "__fake__": {"status": "error", "errors": [{"code": "user", "detail": detail}]},
            },
        )
        with pytest.raises(za.RunFailedError):
            await handle
        instrumentation.uninstrument()
    spans = list(memory.get_finished_spans())
    run = next(s for s in spans if s.name == "zapier.run")
    assert run.status.status_code is StatusCode.ERROR
    attrs = dict(run.attributes or {})
    assert attrs["zapier.run.outcome"] == "error"
    assert attrs["error.type"] == "user"
    assert tuple(attrs["zapier.run.error_codes"]) == ("user",)  # type: ignore[arg-type]
    assert children_of(spans, run)
    for span in spans:
        text = " ".join(all_values(span))
        assert SECRET_INPUT not in text
        assert "mailbox" not in text


@pytest.mark.asyncio
async def test_callback_token_never_reaches_an_attribute(exporter):
    provider, memory = exporter
    async with (
        FakeZapier(seed=3, durations=0.02) as fake,
        client_for(
            fake,
            allow_insecure_callback_url_for_testing=True,
            callback_polling=za.CallbackPolling(first_delay=0.02, interval=0.02),
        ) as client,
    ):
        instrumentation = otel.instrument(client, tracer_provider=provider)
        # Nothing listens there: the run is resolved by the safety-net polls.
        handle = await client.run(
            "core:x", authentication=None, inputs={}, callback_url="http://127.0.0.1:9/cb"
        )
        token = handle.callback_token
        assert token
        with contextlib.suppress(za.RunFailedError):
            await handle
        instrumentation.uninstrument()
    spans = list(memory.get_finished_spans())
    assert any(s.name == "zapier.run" for s in spans)
    for span in spans:
        text = " ".join(all_values(span))
        assert token not in text
        assert "zapier_async_token" not in text


@pytest.mark.asyncio
async def test_a_refused_create_is_a_failed_run_span_at_uninstrument(exporter):
    provider, memory = exporter
    async with FakeZapier(seed=4) as fake, client_for(fake) as client:
        instrumentation = otel.instrument(client, tracer_provider=provider)
        with pytest.raises(za.errors.BadRequestError):
            await client.run("core:x", authentication=None, inputs={"__fake__": {"status": "?"}})
        assert not [s for s in memory.get_finished_spans() if s.name == "zapier.run"]
        instrumentation.uninstrument()
    spans = list(memory.get_finished_spans())
    run = next(s for s in spans if s.name == "zapier.run")
    assert run.status.status_code is StatusCode.ERROR
    assert dict(run.attributes or {})["zapier.run.outcome"] == "refused"
    assert dict(run.attributes or {})["error.type"] == "400"
    (create,) = children_of(spans, run)
    assert dict(create.attributes or {})["http.response.status_code"] == 400


@pytest.mark.asyncio
async def test_uninstrument_stops_spans(exporter):
    provider, memory = exporter
    async with FakeZapier(seed=5, durations=0.01) as fake, client_for(fake) as client:
        otel.instrument(client, tracer_provider=provider).uninstrument()
        await (await client.run("core:x", authentication=None, inputs={}))
    assert not memory.get_finished_spans()


def test_limiter_wait_and_polls_are_run_attributes_when_reported(exporter):
    """Driven by events: `limiter_wait` is filled once the client reports waits."""
    provider, memory = exporter
    instrumentation = otel.Instrumentation(provider.get_tracer("t"))
    instrumentation.on_event(
        RequestEvent(
            endpoint="action_runs.create",
            method="POST",
            status=200,
            elapsed=0.01,
            request_id=1,
            url="https://api.zapier.com/v2/action-runs",
            run_id="r1",
            creates_run=True,
            limiter_wait=0.5,
        )
    )
    started = RunEvent(
        kind="started", run_id="r1", status=za.RunStatus.WAITING, action="a", age=0.6
    )
    instrumentation.on_event(started)
    assert instrumentation.open_runs == 1
    instrumentation.on_event(
        RunEvent(
            kind="lost",
            run_id="r1",
            status=za.RunStatus.WAITING,
            error_codes=("not_found",),
            polls=3,
            limiter_wait=0.75,
        )
    )
    assert instrumentation.open_runs == 0
    spans = list(memory.get_finished_spans())
    run = next(s for s in spans if s.name == "zapier.run")
    attrs = dict(run.attributes or {})
    assert attrs["zapier.limiter.wait"] == 0.75
    assert attrs["zapier.run.polls"] == 3
    assert attrs["zapier.run.outcome"] == "lost"
    assert attrs["error.type"] == "not_found"
    (create,) = children_of(spans, run)
    a = dict(create.attributes or {})
    assert a["server.address"] == "api.zapier.com"
    assert a["server.port"] == 443
    assert a["zapier.limiter.wait"] == 0.5
    assert run.start_time is not None
    assert create.start_time is not None
    assert run.start_time <= create.start_time
