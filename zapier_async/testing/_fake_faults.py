"""FakeZapier's faults: what kinds there are, the queue `inject()` fills, and the draw.

Which fault (if any) hits a request is decided here; what a fault does to the exchange
(drop the connection, delay, answer an error page) is `FakeZapier._serve`'s business.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import attrs

from zapier_async.testing._fake_wire import ENDPOINTS

__all__ = ["DEFAULT_FAULTS", "FAULT_KINDS", "FaultKind"]

FaultKind = Literal["500", "502", "503", "504", "reset", "non_json", "slow", "rate_limited"]
"""What an injected fault does; see `FakeZapier`."""

FAULT_KINDS: Final[frozenset[str]] = frozenset(
    {"500", "502", "503", "504", "reset", "non_json", "slow", "rate_limited"}
)
# Not drawn at random unless asked for: "slow" holds a request for real seconds, and 429s are
# the business of `rate_limit` (a 429 drawn at random would also move every seeded draw).
DEFAULT_FAULTS: Final[frozenset[str]] = FAULT_KINDS - {"slow", "rate_limited"}
# Kinds that never happen after a create was processed: a 429 promises it was not.
_BEFORE_ONLY: Final[frozenset[str]] = frozenset({"rate_limited"})

_GATEWAY_ERRORS: Final[Mapping[str, tuple[int, str, str, str]]] = {
    "500": (500, "error", "APIException", "A server error occurred."),
    "502": (502, "bad_gateway", "BadGateway", "The upstream server sent an invalid response."),
    "503": (503, "service_unavailable", "ServiceUnavailable", "Service temporarily unavailable."),
    "504": (504, "gateway_timeout", "GatewayTimeout", "The upstream server did not answer."),
}
"""(status, code, title, detail) of the faults that answer a JSON:API error."""


@attrs.define
class _PlannedFault:
    kind: str
    remaining: int
    endpoint: str | None
    after_create: bool


def _to_faults(value: Iterable[str]) -> frozenset[str]:
    kinds = frozenset((value,) if isinstance(value, str) else value)
    unknown = kinds - FAULT_KINDS
    if unknown:
        raise ValueError(f"faults: unknown kinds {sorted(unknown)}; known: {sorted(FAULT_KINDS)}")
    return kinds


def _plan(kind: str, count: int, endpoint: str | None, after_create: bool) -> _PlannedFault:
    """Validate `FakeZapier.inject`'s arguments into a queued fault."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be None or one of {ENDPOINTS}, got {endpoint!r}")
    if after_create and endpoint != "create":
        raise ValueError('after_create=True needs endpoint="create"')
    if after_create and kind in _BEFORE_ONLY:
        raise ValueError(f"{kind!r} refuses a request unprocessed: it takes no after_create")
    return _PlannedFault(kind, count, endpoint, after_create)


def _draw(
    injected: list[_PlannedFault],
    endpoint: str,
    *,
    rng: random.Random,
    fault_rate: float,
    faults: frozenset[str],
    fault_after_create: float,
) -> tuple[str, bool] | None:
    """The fault that hits this request, and whether it comes after processing."""
    if injected:  # a short queue filled by tests, not a scan over runs
        for index, planned in enumerate(injected):
            if planned.endpoint is None or planned.endpoint == endpoint:
                planned.remaining -= 1
                if planned.remaining == 0:
                    del injected[index]
                return planned.kind, planned.after_create
    if fault_rate > 0 and faults and rng.random() < fault_rate:
        kind = rng.choice(sorted(faults))  # sorted: set order varies by run
        after = endpoint == "create" and rng.random() < fault_after_create
        return kind, after and kind not in _BEFORE_ONLY
    return None
