"""The events a client hands to its listeners (`ZapierClient(on_event=...)`).

Small frozen values, built only when a listener exists; `_metrics` builds them and
re-exports every name here. Nothing in an event is a secret or an input value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

from .models import RunStatus

__all__ = ["Event", "EventListener", "RateLimitEvent", "RequestEvent", "RetryEvent", "RunEvent"]


# --- events ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RequestEvent:
    """One HTTP exchange ended (an answer or a transport failure).

    Attributes:
        endpoint: A stable label, e.g. ``"action_runs.create"`` or ``"action_runs.get"``.
        method: The HTTP method.
        status: The HTTP status, or None when there was no answer.
        elapsed: Seconds from sending to the answer (or the failure).
        error: The transport failure's kind (``"connect"``, ``"timeout"``, ``"reset"``, ...),
            or None when there was an answer.
        request_id: Shared by every send of one request (its retries); unique per client.
        resend_count: 0 for the first send of a request, 1 for its first re-send, ...
        url: The URL sent to, without credentials or secret query parameters.
        run_id: The run this request reads, or (for a create that was answered with 2xx)
            the run it created; else None.
        action: The action of that run, when this client knows it.
        creates_run: True for a request that creates a run.
        limiter_wait: Seconds this send waited for the rate limiter, when the client
            reported it (`_metrics.Recorder.limiter_waited`); else None.
    """

    endpoint: str
    method: str
    status: int | None
    elapsed: float
    error: str | None = None
    request_id: int = 0
    resend_count: int = 0
    url: str | None = None
    run_id: str | None = None
    action: str | None = None
    creates_run: bool = False
    limiter_wait: float | None = None


@attrs.frozen(kw_only=True)
class RetryEvent:
    """A request failed and is being sent again.

    Attributes:
        endpoint: The request's endpoint label.
        attempt: The attempt that failed (1 for the first).
        reason: ``"HTTP 502"``, ``"transport: connect"``, ... .
        paced: True when the retry waits for the rate limiter (after a 429 or a 503 with
            ``Retry-After``) rather than a backoff delay.
        request_id: The `RequestEvent.request_id` of the request sent again.
    """

    endpoint: str
    attempt: int
    reason: str
    paced: bool
    request_id: int = 0


@attrs.frozen(kw_only=True)
class RateLimitEvent:
    """Zapier refused a request for the rate budget: a 429, or a 503 with ``Retry-After``.

    The whole shared limiter freezes until the hinted time (waits for the limiter are
    reported by ``ZapierClient(on_rate_limited=...)`` and counted in `Metrics`).

    Attributes:
        endpoint: The refused request's endpoint label.
        status: 429 or 503.
        retry_after: ``Retry-After`` in seconds when it was a number, else None.
    """

    endpoint: str
    status: int
    retry_after: float | None


@attrs.frozen(kw_only=True)
class RunEvent:
    """A run changed state as this client saw it.

    Attributes:
        kind: ``"started"`` (Zapier accepted the create), ``"status"`` (a new non-terminal
            status), ``"ended"`` (a terminal status), or ``"lost"`` (the run could no longer
            be read, e.g. 404 after Zapier's retention).
        run_id: The run id.
        status: The latest status.
        latency: For ``"ended"``: seconds from the submission to the outcome, when this
            client submitted the run; else None.
        error_codes: For an ended run, the ``code`` of each of its errors; for a lost run,
            the error's code.
        action: The run's action (what it was created with), when known.
        polls: Reads of the run so far (a read re-sent after a failure counts once).
        limiter_wait: Seconds the run's requests waited for the rate limiter, summed, when
            the client reported such waits; else None.
        age: Seconds since the run's submission (the create call), when this client
            submitted it; else None.
    """

    kind: Literal["started", "status", "ended", "lost"]
    run_id: str
    status: RunStatus
    latency: float | None = None
    error_codes: tuple[str, ...] = ()
    action: str | None = None
    polls: int = 0
    limiter_wait: float | None = None
    age: float | None = None


Event = RequestEvent | RetryEvent | RateLimitEvent | RunEvent
"""Any event a listener receives."""

EventListener = Callable[[Event], object]
"""A callable that receives events; its return value is ignored, exceptions are logged."""
