"""The settings of a rate budget, shared by every bucket of a limiter (see `_budget`)."""

from __future__ import annotations

import math
from typing import Literal

import attrs

from ._ratelimit import (
    DEFAULT_COOLDOWN,
    DEFAULT_MAX_SERVER_WAIT,
    check_max_server_wait,
    check_seconds,
)
from .errors import InvalidRequestError

__all__ = ["BudgetConfig"]


@attrs.frozen(kw_only=True)
class BudgetConfig:
    """Settings shared by every bucket of a limiter (validated by the limiter).

    Attributes:
        rate: A budget known beforehand, ``(requests, per_seconds)``, as a sliding window.
        default_cooldown: Freeze after a 429 that says nothing else; also the assumed window
            length when ``Reset`` is missing.
        max_server_wait: The cap on any server-dictated wait, seconds.
        spend_window: Spend the window as fast as answers allow instead of pacing evenly.
        interactive_reserve: With ``spend_window``, the share of the limit (at least one
            request) background requests leave to INTERACTIVE ones until the window may end.
        boundary: ``"learn"`` (probes and learning), ``"steps"`` (probes only) or
            ``"bounds"`` (wait for the latest possible end): see the module docs.
        window_length: The server's window length in seconds, when known beforehand: each
            window then ends at most this long after any answer it counted arrived (see
            "A window's length known beforehand" in the module docs).
    """

    rate: tuple[int, float] | None = None
    default_cooldown: float = DEFAULT_COOLDOWN
    max_server_wait: float = DEFAULT_MAX_SERVER_WAIT
    spend_window: bool = False
    interactive_reserve: float = 0.1
    boundary: Literal["learn", "steps", "bounds"] = "learn"
    window_length: float | None = None

    @classmethod
    def checked(
        cls,
        *,
        rate: tuple[int, float] | None,
        default_cooldown: float,
        max_server_wait: float,
        spend_window: bool,
        interactive_reserve: float,
        window_length: float | None = None,
    ) -> BudgetConfig:
        """Settings from a limiter's arguments, validated.

        Raises:
            InvalidRequestError: An argument is out of range.
        """
        if rate is not None:
            count, per = rate
            if int(count) != count or count < 1 or not (math.isfinite(per) and per > 0):
                raise InvalidRequestError(
                    f"must be (requests >= 1, seconds > 0), got {rate!r}", "rate"
                )
            rate = (int(count), float(per))
        if not (math.isfinite(default_cooldown) and default_cooldown > 0):
            raise InvalidRequestError(f"must be > 0, got {default_cooldown!r}", "default_cooldown")
        if not 0.0 <= interactive_reserve < 1.0:
            raise InvalidRequestError(
                f"must be >= 0 and < 1, got {interactive_reserve!r}", "interactive_reserve"
            )
        return cls(
            window_length=None
            if window_length is None
            else check_seconds(window_length, "window_length"),
            rate=rate,
            default_cooldown=float(default_cooldown),
            max_server_wait=check_max_server_wait(max_server_wait),
            spend_window=bool(spend_window),
            interactive_reserve=float(interactive_reserve),
        )
