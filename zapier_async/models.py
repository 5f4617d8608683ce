"""Public data models: frozen, slotted attrs values, and the one private cattrs converter.

Every model is built from Zapier's JSON by `_converter` (production: unknown keys ignored) so
that API additions never break a running client. Tests also structure each recorded sample
with a strict converter (`_make_converter(strict=True)`), so API drift shows in CI.

Enums here are "open": a string Zapier sends that we do not know yet is kept as a pseudo
member instead of crashing, e.g. ``RunStatus("paused").value == "paused"``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs

__all__ = ["Run", "RunErrorCode", "RunErrorDetail", "RunStatus"]

_E = TypeVar("_E", bound="_OpenStrEnum")


class _OpenStrEnum(str, enum.Enum):
    """A string enum that keeps values it does not know as cached pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        # A pseudo-member: same type, so `isinstance` and `.value` work; cached so identity
        # comparisons hold and repeated unknown values do not allocate.
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)

    @property
    def is_known(self) -> bool:
        """Whether this value is one the library was written against."""
        return self._name_ in type(self).__members__

    def __str__(self) -> str:
        return str(self.value)


class RunStatus(_OpenStrEnum):
    """The state of an action run as Zapier reports it.

    Terminal states are `SUCCESS` and `ERROR`; every other value, including ones Zapier adds
    later, is treated as still running.
    """

    WAITING = "waiting"
    QUEUED = "queued"  # named by the guides, not by the OpenAPI enum
    RUNNING = "running"  # named by the guides, not by the OpenAPI enum
    SUCCESS = "success"
    ERROR = "error"

    @property
    def is_terminal(self) -> bool:
        """True for `SUCCESS` and `ERROR`: polling stops."""
        return self is RunStatus.SUCCESS or self is RunStatus.ERROR


class RunErrorCode(_OpenStrEnum):
    """`errors[].code` of a run (`_ActionRunResponseError.code` in the Partner OpenAPI)."""

    USER = "user"
    AUTHENTICATION = "authentication"
    PARTNER = "partner"
    SYSTEM = "system"
    THROTTLED = "throttled"
    SYSTEM_THROTTLED = "system_throttled"
    HYDRATION = "hydration"


@attrs.frozen(kw_only=True)
class RunErrorDetail:
    """One entry of a run's `errors` list.

    Attributes:
        code: What kind of failure; unknown codes are kept.
        title: Short summary from the app or Zapier.
        detail: Human-readable explanation.
        delay: For `throttled` errors, seconds to wait before retrying.
        meta: Extra data from the app, if any.
    """

    code: RunErrorCode | None = None
    title: str | None = None
    detail: str | None = None
    delay: float | None = None
    meta: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class Run:
    """The outcome (or latest known state) of one action run.

    Attributes:
        id: The run id Zapier returned when the run was created.
        status: The latest status.
        results: The action's output records (a dict body is wrapped into a one-item list).
        errors: Errors the app or Zapier reported; may be non-empty on `SUCCESS`.
        next_page: For bulk reads on the Actions API, the token to pass back as `page`.
    """

    id: str
    status: RunStatus
    results: list[dict[str, Any]] = attrs.field(factory=list)
    errors: list[RunErrorDetail] = attrs.field(factory=list)
    next_page: str | None = None

    @property
    def succeeded(self) -> bool:
        """True when the run ended with status `success`."""
        return self.status is RunStatus.SUCCESS

    @property
    def done(self) -> bool:
        """True when the run reached a terminal status."""
        return self.status.is_terminal


# --- the converter ------------------------------------------------------------------------


def _structure_results(value: Any, _: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [dict(value)]
    if isinstance(value, list):
        out: list[dict[str, Any]] = []
        for item in value:
            if isinstance(item, Mapping):
                out.append(dict(item))
            else:
                # A scalar result (seen in no doc, but harmless to keep): wrap it.
                out.append({"value": item})
        return out
    raise TypeError(f"results must be a list or an object, not {type(value).__name__}")


def _structure_open_enum(value: Any, cls: type[_E]) -> _E:
    if not isinstance(value, str):
        raise TypeError(f"{cls.__name__} must be a string, not {type(value).__name__}")
    return cls(value)


def _structure_next_page(value: Any, _: Any) -> str | None:
    # The API sends the page index as a number; the SDK turns it into a string. So do we.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError("next_page must be a string or an integer")
    return str(value)


def _structure_delay(value: Any, _: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("delay must be a number")
    return float(value)


def _structure_meta(value: Any, _: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError("meta must be an object")
    return dict(value)


def _structure_optional_str(value: Any, _: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _make_converter(*, strict: bool = False) -> cattrs.Converter:
    """Build the converter; `strict=True` forbids unknown keys (for tests of samples)."""
    conv = cattrs.Converter(forbid_extra_keys=strict)
    conv.register_structure_hook(RunStatus, _structure_open_enum)
    conv.register_structure_hook(RunErrorCode, _structure_open_enum)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(str | None, _structure_optional_str)
    override = cattrs.gen.override
    conv.register_structure_hook(
        RunErrorDetail,
        cattrs.gen.make_dict_structure_fn(
            RunErrorDetail,
            conv,
            _cattrs_forbid_extra_keys=strict,
            code=override(struct_hook=_structure_error_code),
            delay=override(struct_hook=_structure_delay),
            meta=override(struct_hook=_structure_meta),
        ),
    )
    conv.register_structure_hook(
        Run,
        cattrs.gen.make_dict_structure_fn(
            Run,
            conv,
            _cattrs_forbid_extra_keys=strict,
            results=override(struct_hook=_structure_results),
            errors=override(struct_hook=_structure_error_list(conv)),
            next_page=override(struct_hook=_structure_next_page),
        ),
    )
    return conv


def _structure_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _structure_error_code(value: Any, _: Any) -> RunErrorCode | None:
    return None if value is None else _structure_open_enum(value, RunErrorCode)


def _structure_error_list(conv: cattrs.Converter) -> Any:
    def structure(value: Any, _: Any) -> list[RunErrorDetail]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise TypeError("errors must be a list")
        return [conv.structure(item, RunErrorDetail) for item in value]

    return structure


_converter = _make_converter()
