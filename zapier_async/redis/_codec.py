"""A `Budget` and its slots in flight as one JSON text, for the Redis limiter.

The text holds exactly the budget's own fields (every ``__slots__`` entry of `Budget` and of
the records it keeps, except its configuration, which each process has), so a budget read
back from Redis is the same state machine that was written, whatever rules it runs. JSON,
not pickle: the state comes back from a shared server, and decoding it must never run code.
A text that does not decode (another version of the library wrote it) reads as lost state,
except a budget written before a field was added (`ADDED`): the field keeps the value a new
budget has (e.g. a text without ``_learnt_rate``, written before budgets learnt a rate from
429s, reads as a budget that learnt none).
"""

from __future__ import annotations

import collections
import json
from typing import Any, Final

from zapier_async._budget import Budget, BudgetConfig, BudgetWindow, LearntBoundary
from zapier_async._learnt import LearntRate

__all__ = ["ADDED", "FORMAT", "InFlight", "StateError", "dump", "load"]

FORMAT: Final = 1
"""Bumped when the encoding changes; a text of another format reads as lost state."""

InFlight = dict[str, list[Any]]
"""Slot id -> ``[sent, completions, probe, lease expiry]`` (times on the shared clock)."""

_RECORDS: Final[dict[str, type]] = {"W": BudgetWindow, "L": LearntBoundary, "R": LearntRate}
_NAMES: Final = {cls: name for name, cls in _RECORDS.items()}
_SKIP: Final = frozenset({"_config"})
ADDED: Final = frozenset({"_learnt_rate"})
"""Fields of `Budget` a stored text may lack (it was written before they were added)."""


class StateError(Exception):
    """The stored text is not a budget this version can read."""


def _slots(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return [name for name in names if name not in _SKIP and not name.startswith("__")]


_PLAIN: Final = frozenset({type(None), bool, int, float, str})


def _enc(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, list):  # the long ones (arrivals of a window) hold numbers
        return [item if type(item) in _PLAIN else _enc(item) for item in value]
    if isinstance(value, tuple):
        return {"t": [_enc(item) for item in value]}
    if isinstance(value, collections.deque):
        return {"q": [_enc(item) for item in value]}
    name = _NAMES.get(type(value))
    if name is None:
        raise TypeError(f"cannot store a {type(value).__name__} of the budget")
    fields = {slot: _enc(getattr(value, slot)) for slot in _slots(type(value))}
    return {"o": name, "s": fields}


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return [_dec(item) if type(item) in (dict, list) else item for item in value]
    if not isinstance(value, dict):
        return value
    if "t" in value:
        return tuple(_dec(item) for item in value["t"])
    if "q" in value:
        return collections.deque(_dec(item) for item in value["q"])
    cls = _RECORDS.get(value.get("o", ""))
    if cls is None:
        raise StateError(f"unknown record {value.get('o')!r}")
    obj: Any = object.__new__(cls)
    _fill(obj, value["s"])
    return obj


def _fill(obj: object, fields: dict[str, Any], optional: frozenset[str] = frozenset()) -> None:
    """Set ``obj``'s fields from ``fields``; those of ``optional`` it lacks keep their value."""
    expected = _slots(type(obj))
    if not set(expected) - optional <= set(fields) <= set(expected):
        raise StateError(f"the stored {type(obj).__name__} has other fields")
    for slot in expected:
        if slot in fields:
            setattr(obj, slot, _dec(fields[slot]))


def dump(budget: Budget, in_flight: InFlight) -> str:
    """The budget and its slots in flight as text."""
    fields = {slot: _enc(getattr(budget, slot)) for slot in _slots(Budget)}
    return json.dumps({"f": FORMAT, "b": fields, "i": in_flight}, separators=(",", ":"))


def load(text: str, config: BudgetConfig) -> tuple[Budget, InFlight]:
    """A budget and its slots in flight from `dump`'s text, with this process's settings.

    Raises:
        StateError: The text is not one this version wrote.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("f") != FORMAT:
            raise StateError("another format")
        budget = Budget(config)
        _fill(budget, data["b"], ADDED)
        in_flight = data["i"]
        if not isinstance(in_flight, dict):
            raise StateError("bad slots in flight")
        return budget, in_flight
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(str(exc)) from exc
