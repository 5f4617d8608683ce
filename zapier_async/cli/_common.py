"""What the commands share: exit codes, outcome records, the client from the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Final

from zapier_async import errors
from zapier_async._auth import BearerToken
from zapier_async._client import DEFAULT_BASE_URL, ZapierClient
from zapier_async._metrics import error_code
from zapier_async.models import Run, RunStatus

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_RATE_LIMITED: Final = 4
EXIT_UNKNOWN: Final = 5
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final[Mapping[int, str]] = {
    EXIT_OK: "every run succeeded",
    EXIT_FAILED: "some runs failed (run error, API refusal, bad input)",
    EXIT_USAGE: "usage error (bad arguments, unreadable or existing files)",
    EXIT_AUTH: "authentication or permission refused (or no ZAPIER_TOKEN)",
    EXIT_RATE_LIMITED: "rate limited",
    EXIT_UNKNOWN: "transport failure or outcome unknown",
    EXIT_INTERRUPTED: "interrupted (resume a bulk job with --resume)",
}
"""Exit code -> meaning, as documented in ``--help``."""

# Which exit code wins when a bulk job saw several kinds of failure: higher is worse.
_SEVERITY: Final = {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_RATE_LIMITED: 2, EXIT_UNKNOWN: 3, EXIT_AUTH: 4}

DEMO_ACTION: Final = "core:demo_send_email"


def exit_code_for(exc: BaseException | None) -> int:
    """The exit code class of one failure (None: success)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, (errors.AuthenticationError, errors.PermissionDeniedError)):
        return EXIT_AUTH
    if isinstance(exc, (errors.RateLimitedError, errors.TooManyRequestsError)):
        return EXIT_RATE_LIMITED
    if isinstance(
        exc,
        (
            errors.TransportError,
            errors.OutcomeUnknownError,
            errors.RunDetachedError,
            errors.RunTimeoutError,
            errors.ServerError,
        ),
    ):
        return EXIT_UNKNOWN
    return EXIT_FAILED


def worse(a: int, b: int) -> int:
    return a if _SEVERITY.get(a, 0) >= _SEVERITY.get(b, 0) else b


def _error_record(exc: BaseException, *, message: str | None = None) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "code": error_code(exc),
        "message": str(exc) if message is None else message,
        "exit_code": exit_code_for(exc),
    }


def _run_record(run: Run | None, status: RunStatus | None = None) -> dict[str, Any]:
    if run is None:
        return {
            "status": None if status is None else status.value,
            "results": None,
            "errors": [],
        }
    return {
        "status": run.status.value,
        "results": run.results,
        "errors": [
            {
                "code": None if e.code is None else e.code.value,
                "title": e.title,
                "detail": e.detail,
                "delay": e.delay,
            }
            for e in run.errors
        ],
    }


def outcome_record(
    *,
    line: int | None,
    key: Any,
    run_id: str | None,
    run: Run | None,
    error: BaseException | None,
    status: RunStatus | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """One outcome as the JSON object ``bulk`` writes (and ``run --json`` prints).

    `status` is the last status seen when `run` is None (a run that did not end); `message`
    replaces the error's own text.
    """
    record: dict[str, Any] = {"line": line, "key": key, "ok": error is None, "run_id": run_id}
    record.update(_run_record(run, status))
    record["error"] = None if error is None else _error_record(error, message=message)
    return record


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=str)


# --- credentials ---------------------------------------------------------------------------------


class UsageError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def client_from_env(base_url: str | None, **kwargs: Any) -> ZapierClient:
    token = os.environ.get("ZAPIER_TOKEN", "").strip()
    if not token:
        raise UsageError("ZAPIER_TOKEN is not set: export a Zapier access token", EXIT_AUTH)
    url = base_url or os.environ.get("ZAPIER_BASE_URL", "").strip() or DEFAULT_BASE_URL
    try:
        return ZapierClient(
            auth=BearerToken(token), base_url=url, max_rate_limit_wait=None, **kwargs
        )
    except errors.InvalidRequestError as exc:
        raise UsageError(f"bad configuration: {exc}") from None
