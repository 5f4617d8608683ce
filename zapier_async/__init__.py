"""zapier_async: an asyncio client for Zapier's action-run APIs.

Start a Zapier action, await its outcome, and stay inside the rate budget::

    import zapier_async as za

    async with za.ZapierClient(auth=za.BearerToken("...")) as client:
        handle = await client.run("core:abc123", authentication="auth_id", inputs={...})
        run = await handle
"""

from . import errors
from ._auth import AuthProvider, BearerToken
from ._backoff import PollPolicy, RetryPolicy
from ._client import ZapierClient
from ._clock import Clock, SystemClock
from ._handle import RunHandle
from ._limiter import Limiter, Priority
from ._transport import AiohttpTransport, Transport
from .errors import (
    APIError,
    DecodeError,
    InvalidRequestError,
    OutcomeUnknownError,
    RateLimitedError,
    RunDetachedError,
    RunFailedError,
    RunTimeoutError,
    TransportError,
    ZapierError,
)
from .models import Run, RunErrorCode, RunErrorDetail, RunStatus

__version__ = "0.1.0.dev0"

__all__ = [
    "APIError",
    "AiohttpTransport",
    "AuthProvider",
    "BearerToken",
    "Clock",
    "DecodeError",
    "InvalidRequestError",
    "Limiter",
    "OutcomeUnknownError",
    "PollPolicy",
    "Priority",
    "RateLimitedError",
    "RetryPolicy",
    "Run",
    "RunDetachedError",
    "RunErrorCode",
    "RunErrorDetail",
    "RunFailedError",
    "RunHandle",
    "RunStatus",
    "RunTimeoutError",
    "SystemClock",
    "Transport",
    "TransportError",
    "ZapierClient",
    "ZapierError",
    "__version__",
    "errors",
]
