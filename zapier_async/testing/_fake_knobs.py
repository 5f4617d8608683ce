"""FakeZapier's knob checks: every constructor argument is validated (and converted) here.

A nonsensical knob fails at construction, or when it is changed later, with a ValueError
that names it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeGuard

import attrs

from zapier_async.testing._fake_wire import _TERMINAL

__all__: list[str] = []


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_probability(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _check_seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_number(value) or not 0.0 <= value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite number of seconds >= 0, got {value!r}")


def _check_range(name: str, value: object, *, allow_inf: bool) -> None:
    """Seconds >= 0 (`inf` only if allowed), or a finite `(low, high)` pair."""
    if isinstance(value, (tuple, list)):
        pair_ok = len(value) == 2 and all(_is_number(v) for v in value)
        if not pair_ok or not 0.0 <= value[0] <= value[1] < math.inf:
            raise ValueError(
                f"{name} must be a (low, high) pair with 0 <= low <= high, got {value!r}"
            )
        return
    if not _is_number(value) or not value >= 0 or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{name} must be seconds >= 0 or a (low, high) pair, got {value!r}")


def _check_durations(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        _check_range(attribute.name, value, allow_inf=True)


def _check_latency(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_range(attribute.name, value, allow_inf=False)


def _check_one_of(*allowed: object) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {allowed!r}, got {value!r}")

    return check


def _check_host(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"host must be a non-empty string, got {value!r}")


def _check_port(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise ValueError(f"port must be an integer in [0, 65535], got {value!r}")


def _check_seed(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"seed must be an integer or None, got {value!r}")


def _check_clock(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(getattr(value, "monotonic", None)):
        raise ValueError(f"clock must have a monotonic() method, got {value!r}")


def _check_retry_after(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{attribute.name} must be None or an integer >= 0, got {value!r}")


def _check_http_status(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 200 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an HTTP status in [200, 599], got {value!r}")


def _check_bool(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be a bool, got {value!r}")


def _check_callable(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise ValueError(f"{attribute.name} must be None or a callable, got {value!r}")


def _to_statuses(value: str | Sequence[str]) -> tuple[str, ...]:
    statuses = (value,) if isinstance(value, str) else tuple(value)
    if not statuses or not all(isinstance(s, str) and s for s in statuses):
        raise ValueError(f"pending_statuses must be non-empty strings, got {value!r}")
    if _TERMINAL.intersection(statuses):
        raise ValueError(f"pending_statuses cannot contain a terminal status, got {value!r}")
    return statuses


def _to_tokens(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    tokens = frozenset((value,) if isinstance(value, str) else value)
    if not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise ValueError("tokens must be None or a non-empty collection of non-empty strings")
    return tokens


def _sample(rng: random.Random, value: float | tuple[float, float]) -> float:
    """A fixed value, or a uniform draw from a `(low, high)` range."""
    if isinstance(value, (tuple, list)):
        low, high = value
        return low if low == high else rng.uniform(low, high)
    return float(value)
