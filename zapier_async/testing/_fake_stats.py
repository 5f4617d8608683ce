"""FakeZapier's counters and the public snapshot of them, `FakeStats`."""

from __future__ import annotations

import types
from collections.abc import Mapping

import attrs

from zapier_async.testing._fake_faults import FAULT_KINDS
from zapier_async.testing._fake_wire import ENDPOINTS

__all__ = ["FakeStats"]


@attrs.frozen(kw_only=True)
class FakeStats:
    """A snapshot of the emulator's counters (see `FakeZapier.stats`).

    Attributes:
        requests: Every request received, whatever happened to it.
        requests_by_endpoint: `requests` split by endpoint; always has `"create"`, `"poll"`
            and `"other"` (unrouted paths and wrong methods).
        responses_by_status: Responses sent, by HTTP status. A dropped connection (`reset`
            fault, or a `slow` request whose client gave up) is not a response.
        rate_limited: Requests refused with 429 by the rate limiter (a `"rate_limited"`
            fault counts in `faults` instead).
        faults: Faults that hit a request, by kind; has every kind, zero or not.
        runs_created: Runs created.
        duplicate_submissions: Accepted creates whose `data` (canonical JSON, sorted keys)
            equals that of an earlier accepted create. When every run has unique inputs, any
            duplicate means a client sent the same create twice.
        polls: GETs answered with a run (known id, not refused, not faulted).
        token_requests: Requests that reached the token endpoint (`fake.auth_server`).
        tokens_issued: Access tokens the token endpoint issued.
        token_refusals: Token requests refused (bad credentials, bad JWT, ...).
        expired_token_refusals: API requests refused with 401 because the token they carried
            was issued here and has expired.
        action_lookups: Get Actions requests answered (`fake.catalog`).
        rate_limited_by_token: `rate_limited` split by the bearer token of the refused
            request (`""`: a request without one), whether or not buckets are per token.
            Left out of `repr()`: tokens are secrets.
    """

    requests: int
    requests_by_endpoint: Mapping[str, int]
    responses_by_status: Mapping[int, int]
    rate_limited: int
    faults: Mapping[str, int]
    runs_created: int
    duplicate_submissions: int
    polls: int
    token_requests: int = 0
    tokens_issued: int = 0
    token_refusals: int = 0
    expired_token_refusals: int = 0
    action_lookups: int = 0
    rate_limited_by_token: Mapping[str, int] = attrs.field(
        factory=lambda: types.MappingProxyType({}), repr=False
    )


@attrs.define
class _Counters:
    """The pipeline's counters (the run table keeps its own: `_RunStore`)."""

    requests: int = 0
    by_endpoint: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(ENDPOINTS, 0))
    by_status: dict[int, int] = attrs.Factory(dict)
    rate_limited: int = 0
    rate_limited_by_token: dict[str, int] = attrs.Factory(dict)
    faults: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(sorted(FAULT_KINDS), 0))
