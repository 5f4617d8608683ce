"""The exception tree: messages, pickling, copying, no secrets."""

from __future__ import annotations

import copy
import pickle

import pytest

from zapier_async import errors
from zapier_async.models import Run, RunErrorCode, RunErrorDetail, RunStatus

FAILED_RUN = Run(
    id="r1",
    status=RunStatus.ERROR,
    errors=[RunErrorDetail(code=RunErrorCode.USER, title="Bad", detail="'to' is not an email")],
)

INSTANCES = [
    errors.InvalidRequestError("must not be empty", "action"),
    errors.TransportError("cannot connect", "POST /v2/action-runs", False, "connect"),
    errors.ResponseTooLargeError("too large", "GET /x", True, "too_large", 200, 8 * 1024 * 1024),
    errors.APIError(418, "teapot", "I'm a teapot", "short and stout", "GET /x", "{}", None, []),
    errors.NotFoundError(404, "not_found", None, "gone", "GET /v2/action-runs/r", "", None, []),
    errors.TooManyRequestsError(429, None, None, None, "GET /x", "", 12.0, [{"code": "t"}]),
    errors.ServiceUnavailableError(503, None, None, None, "GET /x", "", 5.0, []),
    errors.DecodeError("response body is not JSON", "GET /x", 200, "<html>"),
    errors.RateLimitedError(12.5, 1_700_000_012.5),
    errors.OutcomeUnknownError("may have reached Zapier", "POST /v2/action-runs", "reset"),
    errors.RunFailedError(FAILED_RUN),
    errors.RunTimeoutError("r1", RunStatus.WAITING, 30.0),
    errors.RunDetachedError("r1", "cancelled"),
]


@pytest.mark.parametrize("exc", INSTANCES, ids=lambda e: type(e).__name__)
def test_every_error_pickles_and_copies_with_its_fields(exc):
    for clone in (pickle.loads(pickle.dumps(exc)), copy.copy(exc), copy.deepcopy(exc)):
        assert type(clone) is type(exc)
        assert str(clone) == str(exc)
        for field in type(exc).__attrs_attrs__:
            assert getattr(clone, field.name) == getattr(exc, field.name)


@pytest.mark.parametrize("exc", INSTANCES, ids=lambda e: type(e).__name__)
def test_every_error_is_a_zapier_error_with_a_message(exc):
    assert isinstance(exc, errors.ZapierError)
    assert str(exc)


def test_whose_fault_split():
    assert issubclass(errors.InvalidRequestError, ValueError)
    assert issubclass(errors.RunTimeoutError, TimeoutError)
    assert issubclass(errors.ServiceUnavailableError, errors.ServerError)
    assert issubclass(errors.ServerError, errors.APIError)
    assert not issubclass(errors.TransportError, errors.APIError)


def test_messages_say_what_happened():
    assert str(errors.RunFailedError(FAILED_RUN)) == ("run r1 failed: [user] 'to' is not an email")
    assert "still running" in str(errors.RunTimeoutError("r1", RunStatus.WAITING, 30))
    assert "not re-sent" in str(errors.OutcomeUnknownError("x", "POST /v2/action-runs", "reset"))
    assert str(errors.InvalidRequestError("must not be empty", "action")) == (
        "action: must not be empty"
    )
    api = errors.NotFoundError(404, "not_found", None, "gone", "GET /v2/action-runs/r", "", None)
    assert str(api) == "HTTP 404 not_found: gone (GET /v2/action-runs/r)"


def test_rate_limited_error_names_the_cap_that_refused():
    from zapier_async.errors import RateLimitedError

    assert "max_rate_limit_wait" in str(RateLimitedError(3.0, 1.0))
    server = RateLimitedError(3.0, 1.0, reason="max_server_wait")
    assert "max_server_wait" in str(server)
    assert pickle.loads(pickle.dumps(server)).reason == "max_server_wait"
