"""attrs validators shared by the configuration values (`LongPoll`, `CallbackPolling`, the
poll and retry policies): each one once, with one wording.

They raise `ValueError` at construction, as attrs validators do: a configuration object that
cannot work fails where it is built, not at its first use.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["fraction", "non_negative", "positive"]


def non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """A finite number >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """A finite number > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def fraction(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """A number in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")
