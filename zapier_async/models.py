"""Public data models: frozen, slotted attrs values, and the one private cattrs converter.

Every model is built from Zapier's JSON by `converter` (production: unknown keys ignored) so
that API additions never break a running client. Tests also structure each recorded sample
with a strict converter (`_make_converter(strict=True)`), so API drift shows in CI.

Enums here are "open": a string Zapier sends that we do not know yet is kept as a pseudo
member instead of crashing, e.g. ``RunStatus("paused").value == "paused"``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs

__all__ = [
    "Action",
    "ActionType",
    "App",
    "AppPage",
    "Choice",
    "ChoicePage",
    "Connection",
    "FieldFormat",
    "Fieldset",
    "InfoField",
    "InputField",
    "OutputField",
    "Run",
    "RunErrorCode",
    "RunErrorDetail",
    "RunStatus",
    "StoredAction",
    "ValueType",
]

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
    _register_discovery_hooks(conv, strict=strict)
    _register_stored_action_hook(conv, strict=strict)
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


# --- discovery: actions, input/output fields, choices, connections --------------------------
# Shapes from the Partner OpenAPI (`Action`, `InputField`, `InfoField`, `Fieldset`, `Choice`,
# `OutputField`, `Authentication`):
# https://docs.zapier.com/powered-by-zapier/api-reference/actions/get-actions


class ActionType(_OpenStrEnum):
    """`action_type` of an action (the Partner API's uppercase names)."""

    READ = "READ"
    READ_BULK = "READ_BULK"
    WRITE = "WRITE"
    SEARCH = "SEARCH"
    SEARCH_OR_WRITE = "SEARCH_OR_WRITE"
    SEARCH_AND_WRITE = "SEARCH_AND_WRITE"
    FILTER = "FILTER"


class FieldFormat(_OpenStrEnum):
    """`format` of an input field; `SELECT` fields take values from `action_choices`."""

    DATETIME = "DATETIME"
    MULTILINE = "MULTILINE"
    PASSWORD = "PASSWORD"
    CODE = "CODE"
    READONLY = "READONLY"
    FILE = "FILE"
    SELECT = "SELECT"


class ValueType(_OpenStrEnum):
    """`value_type` of an input field: the JSON type its value should have."""

    STRING = "STRING"
    NUMBER = "NUMBER"
    INTEGER = "INTEGER"
    BOOLEAN = "BOOLEAN"
    ARRAY = "ARRAY"
    OBJECT = "OBJECT"


@attrs.frozen(kw_only=True)
class Action:
    """An action of an app, from Get Actions (`GET /v2/actions`).

    Attributes:
        id: The id to run it with. Unstable: Zapier asks for a fresh one before every run.
        key: The developer's stable identifier, e.g. ``"new_lead"``.
        app: The app id (an expanded app object is reduced to its id).
        type: The object type, ``"action"``.
        action_type: ``READ``, ``WRITE``, ``SEARCH``, ...; unknown values are kept.
        is_instant: True for instant triggers.
        title: Human-readable name.
        description: What the action does.
    """

    id: str
    key: str
    app: str
    type: str = "action"
    action_type: ActionType
    is_instant: bool = False
    title: str = ""
    description: str = ""


@attrs.frozen(kw_only=True)
class App:
    """An app in Zapier's catalogue, from Get Apps (`GET /v2/apps`, the spec's `Apps`).

    Attributes:
        id: The app id (a uuid) that `list_actions`, `list_connections` and `run(app=...)`
            take.
        title: Its name, e.g. ``"Slack"``.
        description: What it is.
        type: The object type, ``"app"``.
        image: The default icon's URL.
        images: Icon URLs by size (``url_16x16`` ... ``url_128x128``).
        hex_color: The brand colour, e.g. ``"8bcbca"``.
        action_types: The kinds of action it offers (``READ``, ``WRITE``, ...).
        categories: The slugs of its categories, e.g. ``["team-chat"]``.
        links: ``connect_new_authentication``: where a user creates a connection (null for
            apps that need none; never filled for client-id requests).
    """

    id: str
    title: str
    description: str = ""
    type: str = "app"
    image: str = ""
    images: dict[str, str] = attrs.field(factory=dict)
    hex_color: str = ""
    action_types: list[ActionType] = attrs.field(factory=list)
    categories: list[str] = attrs.field(factory=list)
    links: dict[str, Any] = attrs.field(factory=dict)

    @property
    def slug(self) -> str:
        """The title as a URL slug (``"Google Sheets"`` is ``"google-sheets"``).

        `/v2/apps` sends no slug; Zapier's app slugs are their titles in this form, which is
        what lets `find_app` take ``"google-sheets"`` as well as ``"Google Sheets"``.
        """
        return slugify(self.title)

    @property
    def selected_api(self) -> str | None:
        """The app implementation the Actions API calls `selected_api`
        (``"HubSpotCLIAPI@1.7.1"``), read from `links.connect_new_authentication`; None when
        Zapier did not send that link."""
        url = self.links.get("connect_new_authentication")
        if not isinstance(url, str):
            return None
        try:
            path = urlsplit(url).path
        except ValueError:
            return None
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return last if "@" in last else None


def slugify(title: str) -> str:
    """``"Google Sheets"`` -> ``"google-sheets"``: lower case, runs of other characters ``-``."""
    return _NOT_SLUG.sub("-", title.casefold()).strip("-")


_NOT_SLUG = re.compile(r"[^0-9a-z]+")


@attrs.frozen(kw_only=True)
class AppPage:
    """One page of `GET /v2/apps`.

    Attributes:
        apps: The apps on the page, most popular first.
        next_offset: The `offset` of the next page, or None on the last one.
    """

    apps: list[App]
    next_offset: int | None


@attrs.frozen(kw_only=True)
class Connection:
    """A user's connection to an app (an *authentication*, `GET /v2/authentications`).

    Its `id` is what `run(..., authentication=...)` takes; the Actions API calls the same
    value `connection_id`.

    Attributes:
        id: The authentication id.
        app: The app id.
        is_expired: True when it is unusable until the user reconnects it.
        title: Human-readable name, e.g. the account's email.
        type: The object type, ``"authentication"``.
    """

    id: str
    app: str
    is_expired: bool
    title: str = ""
    type: str = "authentication"


@attrs.frozen(kw_only=True)
class InputField:
    """An input an action takes (`InputField` in the Partner OpenAPI).

    Attributes:
        id: The key to use in `inputs`.
        type: ``"input_field"``.
        title: Label.
        description: Help text.
        default_value: Used when no value is given.
        depends_on: Ids of fields whose values change this one.
        format: How to edit it; `SELECT` fields have `action_choices`.
        invalidates_input_fields: When True, changing its value changes the field list:
            ask `action_inputs` again with the new value.
        is_required: Whether a value is required.
        items: Free-form extra data.
        placeholder: Example text.
        value_type: The JSON type the value should have.
    """

    id: str
    type: str = "input_field"
    title: str = ""
    description: str = ""
    default_value: Any = None
    depends_on: list[str] = attrs.field(factory=list)
    format: FieldFormat | None = None
    invalidates_input_fields: bool = False
    is_required: bool = False
    items: dict[str, Any] | None = None
    placeholder: str = ""
    value_type: ValueType | None = None

    @property
    def is_select(self) -> bool:
        """True when its values come from `action_choices`."""
        return self.format is FieldFormat.SELECT


@attrs.frozen(kw_only=True)
class InfoField:
    """A read-only note among the input fields (`InfoField`).

    Attributes:
        id: Its id.
        type: ``"info_field"``.
        description: The text to show.
    """

    id: str
    type: str = "info_field"
    description: str = ""


@attrs.frozen(kw_only=True)
class Fieldset:
    """A group of input fields (`Fieldset`), e.g. line items.

    Attributes:
        id: Its id.
        type: ``"fieldset"``.
        title: Label.
        fields: The fields it groups.
    """

    id: str
    type: str = "fieldset"
    title: str = ""
    fields: list[InputField | InfoField] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class Choice:
    """One value a `SELECT` input field can take (`Choice`).

    Attributes:
        id: Its id.
        value: The value to put in `inputs`.
        label: Human-readable label, when the value is not.
        type: ``"choice"``.
    """

    id: str
    value: str
    label: str | None = None
    type: str = "choice"


@attrs.frozen(kw_only=True)
class ChoicePage:
    """One page of choices.

    Attributes:
        choices: The choices on this page.
        page: This page's number, if Zapier said.
        next_page: The page to ask for next, or None on the last page.
    """

    choices: list[Choice] = attrs.field(factory=list)
    page: int | None = None
    next_page: int | None = None


@attrs.frozen(kw_only=True)
class OutputField:
    """A field an action's results have (`OutputField`).

    Attributes:
        id: Its key in a result (``"parents[]sha"`` style for nested lists).
        type: ``"output_field"``.
        title: Label.
        sample: An example value, if any.
    """

    id: str
    type: str = "output_field"
    title: str = ""
    sample: Any = None


@attrs.frozen(kw_only=True)
class StoredAction:
    """A saved, repeatable Actions API configuration (White Label stored actions).

    Create returns only the id; get and update return the whole record, so the other fields
    are None when unknown. https://docs.zapier.com/white-label/api-reference/stored-actions

    Attributes:
        id: The stored action's id (a uuid).
        connection_id: The connection (authentication) it runs with.
        selected_api: The app implementation, e.g. ``"SlackCLIAPI@1.0.0"``.
        action_key: The action's stable key.
        action_type: ``"read"``, ``"write"`` or ``"search"``.
        inputs: The saved inputs.
    """

    id: str
    connection_id: str | None = None
    selected_api: str | None = None
    action_key: str | None = None
    action_type: str | None = None
    inputs: dict[str, Any] = attrs.field(factory=dict)


def _structure_bool(value: Any, _: Any) -> bool:
    # cattrs' default is bool(value): "false" would be True. An expired connection read as
    # usable is a failed run, so only real booleans pass.
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, not {type(value).__name__}")
    return value


def _structure_text(value: Any, _: Any) -> str:
    # Optional text (titles, descriptions): null is "", anything but a string is an error.
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _structure_app(value: Any, _: Any) -> str:
    # `app` is a uuid string, or an expanded `Apps` object (the spec's oneOf).
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str):
        raise TypeError("app must be a string or an object with an id")
    return value


def _structure_scalar_text(value: Any, _: Any) -> str:
    # A choice's value is a string in the spec; apps send numbers too. Keep them as text.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value if isinstance(value, str) else str(value)


def _structure_str_list(value: Any, _: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return list(value)


def _structure_optional_enum(cls: type[_E]) -> Any:
    def structure(value: Any, _: Any) -> _E | None:
        return None if value is None else _structure_open_enum(value, cls)

    return structure


def field_kind(item: Mapping[str, Any]) -> type[InputField | InfoField | Fieldset]:
    kind = item.get("type")
    if kind == "fieldset" or isinstance(item.get("fields"), list):
        return Fieldset
    if kind == "info_field":
        return InfoField
    if kind == "input_field":
        return InputField
    # Unknown type names (the spec only gives "standard" as an example): judge by shape.
    input_keys = {"value_type", "is_required", "default_value", "format", "title"}
    return InputField if input_keys & set(item) else InfoField


def _register_discovery_hooks(conv: cattrs.Converter, *, strict: bool) -> None:
    override = cattrs.gen.override
    text = override(struct_hook=_structure_text)
    conv.register_structure_hook(bool, _structure_bool)
    for enum_cls in (ActionType, FieldFormat, ValueType):
        conv.register_structure_hook(enum_cls, _structure_open_enum)

    def build(cls: type[Any], **fields: Any) -> None:
        conv.register_structure_hook(
            cls,
            cattrs.gen.make_dict_structure_fn(
                cls, conv, _cattrs_forbid_extra_keys=strict, **fields
            ),
        )

    build(
        Action,
        app=override(struct_hook=_structure_app),
        title=text,
        description=text,
        type=text,
    )

    def structure_categories(value: Any, _: Any) -> list[str]:
        # `[{"slug": "team-chat"}]` in the spec (`Category`); bare strings are kept too.
        if value is None:
            return []
        if not isinstance(value, list):
            raise TypeError("categories must be a list")
        out: list[str] = []
        for item in value:
            slug = item.get("slug") if isinstance(item, Mapping) else item
            if not isinstance(slug, str):
                raise TypeError("each category must be an object with a slug")
            out.append(slug)
        return out

    def structure_action_types(value: Any, _: Any) -> list[ActionType]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("action_types must be a list of strings")
        return [ActionType(v) for v in value]

    def structure_images(value: Any, _: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            return {}  # the spec's own example is a string here; icons are not worth a failure
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    build(
        App,
        title=text,
        description=text,
        type=text,
        image=text,
        hex_color=text,
        images=override(struct_hook=structure_images),
        action_types=override(struct_hook=structure_action_types),
        categories=override(struct_hook=structure_categories),
        links=override(struct_hook=lambda v, _: dict(v) if isinstance(v, Mapping) else {}),
    )
    build(
        Connection,
        app=override(struct_hook=_structure_app),
        title=text,
        type=text,
    )
    build(
        InputField,
        type=text,
        title=text,
        description=text,
        placeholder=text,
        depends_on=override(struct_hook=_structure_str_list),
        format=override(struct_hook=_structure_optional_enum(FieldFormat)),
        value_type=override(struct_hook=_structure_optional_enum(ValueType)),
        items=override(struct_hook=_structure_meta),
        default_value=override(struct_hook=lambda v, _: v),
    )
    build(InfoField, type=text, description=text)

    def structure_fields(value: Any, _: Any) -> list[InputField | InfoField]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise TypeError("fields must be a list")
        out: list[InputField | InfoField] = []
        for item in value:
            if not isinstance(item, Mapping):
                raise TypeError("each field must be an object")
            if field_kind(item) is InfoField:
                out.append(conv.structure(item, InfoField))
            else:
                out.append(conv.structure(item, InputField))
        return out

    build(Fieldset, type=text, title=text, fields=override(struct_hook=structure_fields))
    build(
        Choice,
        value=override(struct_hook=_structure_scalar_text),
        id=override(struct_hook=_structure_scalar_text),
        type=text,
    )
    build(OutputField, type=text, title=text, sample=override(struct_hook=lambda v, _: v))


def _structure_record_id(value: Any, _: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a non-empty string id")
    return value


def _structure_loose_text(value: Any, _: Any) -> str | None:
    # A stored action's text fields: a record that leaves one out (create answers only
    # ``{type, id}``) or holds something else there has it unknown, not broken.
    return value if isinstance(value, str) else None


def _structure_loose_mapping(value: Any, _: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _register_stored_action_hook(conv: cattrs.Converter, *, strict: bool) -> None:
    override = cattrs.gen.override
    loose = override(struct_hook=_structure_loose_text)
    conv.register_structure_hook(
        StoredAction,
        cattrs.gen.make_dict_structure_fn(
            StoredAction,
            conv,
            _cattrs_forbid_extra_keys=strict,
            id=override(struct_hook=_structure_record_id),
            connection_id=loose,
            selected_api=loose,
            action_key=loose,
            action_type=loose,
            inputs=override(struct_hook=_structure_loose_mapping),
        ),
    )


converter = _make_converter()
"""The one cattrs converter every model is built with (package-internal: not in `__all__`)."""
_converter = converter  # the name tests and older code import
