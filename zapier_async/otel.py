"""OpenTelemetry tracing for a `ZapierClient`: one span per run, one child span per request.

Install the extra (``pip install 'zapier-async[otel]'``), then::

    from zapier_async.otel import instrument

    instrumentation = instrument(client)  # the global tracer provider, or pass one
    ...
    instrumentation.uninstrument()

Spans
-----
- ``zapier.run`` (kind INTERNAL): from the submission (the ``run()`` call, limiter wait
  included) to the outcome this client saw. Attributes: ``zapier.run.id``, ``zapier.action``,
  ``zapier.run.outcome`` (``success``, ``error``, ``lost``, or ``unknown`` when the client
  stopped following it), ``zapier.run.polls``, ``zapier.limiter.wait`` (seconds, when the
  client reports limiter waits) and ``zapier.run.error_codes``. The status is ERROR for a run
  that failed or was lost, with ``error.type`` set to the first error code.
- one span per HTTP exchange, named after its method (``POST``, ``GET``: the stable HTTP
  client semantic conventions), kind CLIENT, a child of its run's span (the create and each
  read of the run) or a root span for requests that belong to no run this client created
  (discovery, reads of resumed runs): ``http.request.method``, ``server.address``,
  ``server.port``, ``url.full``, ``http.response.status_code``, ``error.type`` (the status
  code from 400 on, or the transport failure's kind), ``http.request.resend_count`` (on a
  re-send only), plus ``zapier.endpoint`` and ``zapier.run.id``.

No attribute carries a secret or an input value: the URL has no credentials and no callback
token (``zapier_async_token``), bodies and inputs are never recorded, error *codes* are, error
texts are not.

How it works
------------
It is an event listener (`ZapierClient.add_listener`): spans are built from the events'
timings, with explicit start and end times, so nothing runs inside the client's send path.
The attempts of a create are held until the run is announced (``RunEvent(kind="started")``),
then emitted under its span. Attempts of a create that never produced a run (refused, outcome
unknown) are emitted as a failed ``zapier.run`` span when they are evicted from a bounded
buffer (`Instrumentation.max_pending`) or at `Instrumentation.uninstrument`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import attrs

try:
    from opentelemetry import trace
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "zapier_async.otel needs OpenTelemetry: pip install 'zapier-async[otel]'"
    ) from exc

from ._metrics import Event, EventListener, RequestEvent, RunEvent
from .models import RunStatus

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["Instrumentation", "instrument"]

RUN_SPAN: Final = "zapier.run"
"""The name of a run's span."""

_KNOWN_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)


class Instrumentable(Protocol):
    """What `instrument` needs: a `ZapierClient` (or one of its views)."""

    def add_listener(self, listener: EventListener) -> None: ...

    def remove_listener(self, listener: EventListener) -> bool: ...


@attrs.frozen(kw_only=True)
class _Attempt:
    start: int
    end: int
    name: str
    attributes: dict[str, Any]
    error: str | None


def _version() -> str:
    from ._version import __version__

    return __version__


class Instrumentation:
    """Turns one or more clients' events into spans (see the module docstring).

    Build it with `instrument`. Not thread-safe: use it from the clients' event loop (a
    `SyncZapierClient`'s loop thread is fine).

    Attributes:
        max_pending: Creates (and their attempts) held until their run is announced;
            past it the oldest is emitted as a failed ``zapier.run`` span.
        max_open_runs: Run spans kept open; past it the oldest is ended with outcome
            ``unknown`` (runs a closed client stopped following never report an outcome).
    """

    def __init__(
        self,
        tracer: Tracer,
        *,
        max_pending: int = 1024,
        max_open_runs: int = 100_000,
    ) -> None:
        self._tracer = tracer
        self.max_pending = max_pending
        self.max_open_runs = max_open_runs
        self._clients: list[Instrumentable] = []
        self._pending: OrderedDict[int, list[_Attempt]] = OrderedDict()
        self._created: dict[str, int] = {}  # run id -> its create's request_id
        self._open: OrderedDict[str, Span] = OrderedDict()
        self._servers: dict[str, tuple[str | None, int | None]] = {}

    def add(self, client: Instrumentable) -> None:
        """Trace `client` (a `ZapierClient` or a view of one) too."""
        client.add_listener(self.on_event)
        self._clients.append(client)

    def uninstrument(self) -> None:
        """Stop listening; end the run spans still open and flush held create attempts."""
        for client in self._clients:
            client.remove_listener(self.on_event)
        self._clients.clear()
        while self._pending:
            self._flush_oldest_pending()
        while self._open:
            self._end_oldest_open()

    @property
    def open_runs(self) -> int:
        """Run spans started and not ended."""
        return len(self._open)

    # --- events -------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """The listener: builds spans from one event."""
        if isinstance(event, RequestEvent):
            self._on_request(event)
        elif isinstance(event, RunEvent):
            self._on_run(event)

    def _on_request(self, event: RequestEvent) -> None:
        end = time.time_ns()
        attempt = self._attempt(event, end)
        if event.creates_run:
            attempts = self._pending.get(event.request_id)
            if attempts is None:
                attempts = self._pending[event.request_id] = []
                while len(self._pending) > self.max_pending:
                    self._flush_oldest_pending()
            attempts.append(attempt)
            if event.run_id is not None:
                self._created[event.run_id] = event.request_id
            return
        parent = self._open.get(event.run_id) if event.run_id is not None else None
        self._emit(attempt, parent)

    def _on_run(self, event: RunEvent) -> None:
        now = time.time_ns()
        if event.kind == "started":
            request_id = self._created.pop(event.run_id, None)
            attempts = self._pending.pop(request_id, []) if request_id is not None else []
            start = now - int((event.age or 0.0) * 1e9)
            if attempts:
                start = min(start, attempts[0].start)
            attributes: dict[str, Any] = {"zapier.run.id": event.run_id}
            if event.action is not None:
                attributes["zapier.action"] = event.action
            run_span = self._tracer.start_span(
                RUN_SPAN,
                kind=trace.SpanKind.INTERNAL,
                start_time=start,
                attributes=attributes,
            )
            for attempt in attempts:
                self._emit(attempt, run_span)
            self._open[event.run_id] = run_span
            while len(self._open) > self.max_open_runs:
                self._end_oldest_open()
            return
        span = self._open.get(event.run_id)
        if span is None:
            return  # a run this client did not create (resumed): its reads are root spans
        if event.kind == "status":
            span.add_event("zapier.run.status", {"zapier.run.status": str(event.status.value)})
            return
        del self._open[event.run_id]
        lost = event.kind == "lost"
        outcome = "lost" if lost else str(event.status.value)
        span.set_attribute("zapier.run.outcome", outcome)
        span.set_attribute("zapier.run.polls", event.polls)
        if event.limiter_wait is not None:
            span.set_attribute("zapier.limiter.wait", event.limiter_wait)
        if event.error_codes:
            span.set_attribute("zapier.run.error_codes", list(event.error_codes))
        if lost or event.status is not RunStatus.SUCCESS:
            span.set_attribute("error.type", event.error_codes[0] if event.error_codes else outcome)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"run outcome: {outcome}"))
        span.end(end_time=now)

    # --- spans --------------------------------------------------------------------------------

    def _server(self, url: str) -> tuple[str | None, int | None]:
        base = url.split("/", 3)[:3]
        key = "/".join(base)
        server = self._servers.get(key)
        if server is None:
            parts = urlsplit(url)
            port = parts.port
            if port is None:
                port = {"https": 443, "http": 80}.get(parts.scheme)
            server = self._servers[key] = (parts.hostname, port)
            if len(self._servers) > 64:
                self._servers.clear()
        return server

    def _attempt(self, event: RequestEvent, end: int) -> _Attempt:
        method = event.method.upper()
        attributes: dict[str, Any] = {
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            "zapier.endpoint": event.endpoint,
        }
        if event.url is not None:
            attributes["url.full"] = event.url
            host, port = self._server(event.url)
            if host is not None:
                attributes["server.address"] = host
            if port is not None:
                attributes["server.port"] = port
        if event.status is not None:
            attributes["http.response.status_code"] = event.status
        error = event.error
        if error is None and event.status is not None and event.status >= 400:
            error = str(event.status)
        if error is not None:
            attributes["error.type"] = error
        if event.resend_count > 0:
            attributes["http.request.resend_count"] = event.resend_count
        if event.run_id is not None:
            attributes["zapier.run.id"] = event.run_id
        if event.limiter_wait is not None:
            attributes["zapier.limiter.wait"] = event.limiter_wait
        return _Attempt(
            start=end - int(max(event.elapsed, 0.0) * 1e9),
            end=end,
            name=method if method in _KNOWN_METHODS else "HTTP",
            attributes=attributes,
            error=error,
        )

    def _emit(self, attempt: _Attempt, parent: Span | None) -> None:
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self._tracer.start_span(
            attempt.name,
            context=context,
            kind=trace.SpanKind.CLIENT,
            start_time=attempt.start,
            attributes=attempt.attributes,
        )
        if attempt.error is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end(end_time=attempt.end)

    def _flush_oldest_pending(self) -> None:
        """A create whose run was never announced: a failed run span around its attempts."""
        request_id, attempts = self._pending.popitem(last=False)
        created = [
            run_id for run_id, rid in self._created.items() if rid == request_id
        ]  # rare path (eviction, uninstrument): a scan is fine
        for run_id in created:
            del self._created[run_id]
        if not attempts:
            return
        attributes: dict[str, Any] = {"zapier.run.outcome": "unknown" if created else "refused"}
        if created:
            attributes["zapier.run.id"] = created[0]
        span = self._tracer.start_span(
            RUN_SPAN,
            kind=trace.SpanKind.INTERNAL,
            start_time=attempts[0].start,
            attributes=attributes,
        )
        for attempt in attempts:
            self._emit(attempt, span)
        if not created:
            last = attempts[-1].error or "refused"
            span.set_attribute("error.type", last)
            span.set_status(trace.Status(trace.StatusCode.ERROR, "the create did not start a run"))
        span.end(end_time=attempts[-1].end)

    def _end_oldest_open(self) -> None:
        _, span = self._open.popitem(last=False)
        span.set_attribute("zapier.run.outcome", "unknown")
        span.end()


def instrument(
    client: Instrumentable,
    *clients: Instrumentable,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Trace runs and requests of `client` (and any `clients`) with OpenTelemetry.

    Args:
        client: A `ZapierClient` (or a view of one).
        *clients: More clients or views traced by the same instrumentation.
        tracer_provider: Where spans go; the global provider by default.

    Returns:
        The `Instrumentation`; call its `uninstrument()` to stop.
    """
    tracer = trace.get_tracer("zapier_async", _version(), tracer_provider=tracer_provider)
    instrumentation = Instrumentation(tracer)
    for each in (client, *clients):
        instrumentation.add(each)
    return instrumentation
