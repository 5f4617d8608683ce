"""How long to wait between polls and between retries, and whether to retry at all.

Pure: randomness comes in as an ``rng`` (anything with ``random() -> float`` in [0, 1), such as
``random.Random``), so tests pin it. Three separate knobs, as the design asks:

- `PollPolicy`: the cadence of reads of a run that is still going;
- `RetryPolicy`: delays between attempts of ONE request that failed transiently;
- `decide_retry`: the one place that says whether a failed request may be sent again. A
  run-creating POST is retried only when it provably never reached Zapier or was refused
  without being processed: a duplicate run is a duplicate email to a real person;
- `RetryBudget`: a cap on retries across a whole client, so a bulk job does not multiply an
  outage.
"""

from __future__ import annotations

import enum
import math
from typing import Literal, Protocol

import attrs

__all__ = [
    "Failure",
    "PollPolicy",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "SupportsRandom",
    "cap_hint",
    "decide_retry",
    "next_poll_delay",
]


class SupportsRandom(Protocol):
    """A source of uniform floats in [0, 1), such as `random.Random`."""

    def random(self) -> float: ...


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _fraction(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _growth(base: float, factor: float, exponent: int, cap: float) -> float:
    """``min(cap, base * factor**exponent)`` without overflowing for large exponents."""
    if base == 0.0 or exponent <= 0:
        return min(base, cap)
    if factor <= 1.0:
        return min(base * factor**exponent, cap)
    # base * factor**n > cap  <=>  n > log(cap / base) / log(factor)
    if exponent > math.log(cap / base) / math.log(factor):
        return cap
    return min(base * factor**exponent, cap)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """The cadence of reads of a run that has not finished yet.

    Zapier's SDK polls every 125 ms at first, then stretches to 10 s (notes section 6); every
    poll spends the same rate budget as a create (60 requests/min per IP on the Partner API),
    so this starts a little later and grows geometrically to a cap, with jitter so that a
    thousand runs created together do not poll in lock-step.

    Attributes:
        initial: Delay before the first poll.
        factor: Growth per poll.
        cap: The longest delay while the run is young.
        jitter: Relative jitter: each delay is scaled by a uniform factor in
            ``[1 - jitter, 1 + jitter]``.
        late_after: Elapsed seconds after which the run counts as long-running.
        late_cap: The delay for a long-running run (it is unlikely to end in the next second).
        max_hint: The longest server hint (`next_poll_delay`) that is honoured.
    """

    initial: float = attrs.field(default=0.5, validator=_positive)
    factor: float = attrs.field(default=1.5, validator=_positive)
    cap: float = attrs.field(default=10.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_fraction)
    late_after: float = attrs.field(default=180.0, validator=_non_negative)
    late_cap: float = attrs.field(default=30.0, validator=_positive)
    max_hint: float = attrs.field(default=600.0, validator=_positive)

    def interval(self, attempt: int, *, elapsed: float, rng: SupportsRandom) -> float:
        """The delay before poll number ``attempt``.

        Args:
            attempt: 0 for the first poll after the create, 1 for the next, ...
            elapsed: Seconds since the run was created.
            rng: Source of jitter.

        Returns:
            ``min(cap, initial * factor**attempt)`` with jitter; once ``elapsed`` passes
            ``late_after`` the delay is ``late_cap`` (with jitter).
        """
        if elapsed >= self.late_after:
            base = self.late_cap
        else:
            base = _growth(self.initial, self.factor, max(attempt, 0), self.cap)
        spread = self.jitter * (2.0 * rng.random() - 1.0)
        return max(base * (1.0 + spread), 0.0)


def next_poll_delay(
    policy: PollPolicy,
    attempt: int,
    elapsed: float,
    rng: SupportsRandom,
    *,
    hint: float | None,
) -> float:
    """The delay before the next poll, honouring a server hint.

    Args:
        policy: The cadence.
        attempt: Index of the next poll (see `PollPolicy.interval`).
        elapsed: Seconds since the run was created.
        rng: Source of jitter.
        hint: Seconds the server asked for, if it did: the ``delay`` of a ``throttled`` run
            error, or a ``Retry-After``.

    Returns:
        The policy's delay, or the hint when that is longer (capped at ``policy.max_hint``):
        polling earlier than asked only burns rate budget.
    """
    delay = policy.interval(attempt, elapsed=elapsed, rng=rng)
    if hint is not None and math.isfinite(hint) and hint > delay:
        return max(min(hint, policy.max_hint), delay)
    return delay


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Delays between attempts of one request that failed transiently.

    Attributes:
        max_attempts: Attempts in total, the first one included (so 4 = up to 3 retries).
        base: The backoff of the first retry, before jitter.
        cap: The longest backoff.
        max_retry_after: The longest ``Retry-After`` that is honoured as given.
    """

    max_attempts: int = attrs.field(default=4)
    base: float = attrs.field(default=0.5, validator=_positive)
    cap: float = attrs.field(default=30.0, validator=_positive)
    max_retry_after: float = attrs.field(default=120.0, validator=_non_negative)

    @max_attempts.validator
    def _check_attempts(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError(f"max_attempts must be >= 1, got {value!r}")

    def can_retry(self, attempts_made: int) -> bool:
        """Whether another attempt is allowed after ``attempts_made`` attempts."""
        return attempts_made < self.max_attempts

    def delay(
        self, attempt: int, rng: SupportsRandom, *, retry_after: float | None = None
    ) -> float:
        """The wait before retry number ``attempt``.

        "Full jitter": a uniform draw in ``[0, min(cap, base * 2**(attempt - 1))]``, which
        spreads a crowd of failed requests over the whole backoff instead of re-synchronising
        them (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).

        Args:
            attempt: 1 for the first retry, 2 for the second, ...
            rng: Source of jitter.
            retry_after: The server's ``Retry-After``, in seconds, if it sent one.

        Returns:
            ``retry_after`` (at most ``max_retry_after``) when given, else the jittered backoff.
        """
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = _growth(self.base, 2.0, max(attempt - 1, 0), self.cap)
        return rng.random() * ceiling


class RetryDecision(enum.Enum):
    """What to do with a failed request."""

    RETRY = "retry"
    """Send it again (after `RetryPolicy.delay`, budget permitting)."""
    GIVE_UP = "give_up"
    """Do not send it again: raise the error (or use the response) as it is."""
    UNKNOWN_OUTCOME = "unknown_outcome"
    """Do not send it again, and say so: Zapier may have acted on it (`OutcomeUnknownError`)."""


Failure = Literal["connect", "timeout", "reset", "too_large"]
"""How a request failed without an HTTP status: the connection could not be made (the request
provably never left), the answer did not come in time, or the connection broke."""


def failure_kind(transport_kind: str) -> Failure:
    """The `Failure` of a `TransportError` of this `kind`: only "connect" provably never left."""
    if transport_kind == "connect":
        return "connect"
    if transport_kind == "timeout":
        return "timeout"
    if transport_kind == "too_large":
        # The same answer would come back: not worth a retry (a create is outcome unknown).
        return "too_large"
    return "reset"  # anything else may have reached the server


_RETRYABLE_IDEMPOTENT = frozenset({429, 500, 502, 503, 504})
# 501 Not Implemented and 505 HTTP Version Not Supported refuse the request before acting on it.
_NOT_PROCESSED_5XX = frozenset({501, 505})


def decide_retry(
    *,
    idempotent: bool,
    status: int | None,
    failure: Failure | None,
    has_retry_after: bool,
) -> RetryDecision:
    """Whether a failed request may be sent again: the rule that prevents duplicate runs.

    ==================================  ==============  ==================
    outcome                             idempotent GET  run-creating POST
    ==================================  ==============  ==================
    connect error (never sent)          RETRY           RETRY
    timeout, connection reset           RETRY           UNKNOWN_OUTCOME
    answer over the body-size cap       GIVE_UP         UNKNOWN_OUTCOME
    429                                 RETRY           RETRY
    503 with ``Retry-After``            RETRY           RETRY
    503 without, 500, 502, 504          RETRY           UNKNOWN_OUTCOME
    other 5xx (501, 505: GIVE_UP)       GIVE_UP         UNKNOWN_OUTCOME
    3xx (any redirect)                  GIVE_UP         UNKNOWN_OUTCOME
    other 4xx, or < 300                 GIVE_UP         GIVE_UP
    ==================================  ==============  ==================

    A 429, and a 503 that says when to come back, are refusals: the request was not acted on,
    so even a POST may be re-sent. A timeout or reset may come after Zapier created the run,
    and a 5xx does not say whether it did, so a POST is not re-sent. Neither does a redirect:
    a 302/303 after a POST is how many servers say "done, look over there" (Post/Redirect/Get),
    so the run may exist, and redirects are never followed (the transport does not).

    Args:
        idempotent: True for requests that are safe to repeat (GETs); False for the POST that
            creates a run.
        status: The HTTP status, or None when there was no response.
        failure: How the request failed without (a complete) response, if it did. It takes
            precedence over ``status`` (a connection reset after the status line still loses
            the body, e.g. the new run's id).
        has_retry_after: Whether the response carried a readable ``Retry-After``.

    Returns:
        The decision.

    Raises:
        ValueError: Neither a status nor a failure was given.
    """
    if failure is not None:
        if failure == "connect":
            return RetryDecision.RETRY
        if failure == "too_large":
            # The same oversized answer would come back; a create got it after acting.
            return RetryDecision.UNKNOWN_OUTCOME if not idempotent else RetryDecision.GIVE_UP
        return RetryDecision.RETRY if idempotent else RetryDecision.UNKNOWN_OUTCOME
    if status is None:
        raise ValueError("decide_retry needs a status or a failure")
    if status == 429 or (status == 503 and has_retry_after):
        return RetryDecision.RETRY
    if idempotent:
        return RetryDecision.RETRY if status in _RETRYABLE_IDEMPOTENT else RetryDecision.GIVE_UP
    if 500 <= status <= 599 and status not in _NOT_PROCESSED_5XX:
        return RetryDecision.UNKNOWN_OUTCOME
    if 300 <= status <= 399:
        return RetryDecision.UNKNOWN_OUTCOME
    return RetryDecision.GIVE_UP


def cap_hint(seconds: float | None, cap: float) -> float | None:
    """A wait the server dictated (a throttled run's ``delay``), bounded by `cap`.

    The one place that bounds a server hint about when to read a run again, for every way of
    reading it (ordinary polls, long-polls, the callback safety net): a ``delay`` of 1e300
    from a buggy or hostile server must not park a run for ever.

    Args:
        seconds: The hint, or None.
        cap: The longest wait honoured.

    Returns:
        ``min(seconds, cap)``; None for no hint, a non-positive or a NaN one.
    """
    if seconds is None or not seconds > 0.0:  # also drops NaN
        return None
    return min(seconds, cap)


@attrs.define(kw_only=True)
class RetryBudget:
    """A cap on retries across a client, so that failures cannot multiply the load.

    A token bucket in the style of gRPC's retry throttling and Finagle's ``RetryBudget``:
    each retry spends one token, each success earns back ``ratio`` of one, and the bucket
    holds at most ``capacity``. It starts full, so ``capacity`` retries are always possible
    after a quiet period; in steady state at most ``ratio`` retries are sent per success
    (10% extra load at most). During an outage, when nothing succeeds, retries stop after
    ``capacity`` of them and every request fails on its first attempt, instead of each of
    a thousand bulk items retrying three times into a server that is already down. The
    first successes after the outage refill it.

    It counts, it does not wait: nothing here reads a clock.

    Attributes:
        capacity: The most retries that can be spent in a row.
        ratio: Tokens earned per success.
        tokens: Tokens now (starts at ``capacity``).
        retries: Retries allowed so far.
        refused: Retries refused so far.
    """

    capacity: float = attrs.field(default=10.0, validator=_positive)
    ratio: float = attrs.field(default=0.1, validator=_non_negative)
    tokens: float = attrs.field(default=attrs.Factory(lambda self: self.capacity, takes_self=True))
    retries: int = attrs.field(default=0, init=False)
    refused: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.tokens = min(max(float(self.tokens), 0.0), self.capacity)

    def try_spend(self) -> bool:
        """Take one token for a retry.

        Returns:
            True if the retry may go ahead; False if the budget is spent (do not retry:
            raise the failure as it is).
        """
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.retries += 1
            return True
        self.refused += 1
        return False

    def on_success(self) -> None:
        """Earn back ``ratio`` of a token for a request that succeeded."""
        self.tokens = min(self.tokens + self.ratio, self.capacity)
