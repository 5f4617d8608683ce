"""Discovery: pure request builders and parsers, then end to end against FakeZapier."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

import zapier_async as za
from zapier_async import _discovery as disco
from zapier_async import errors
from zapier_async._protocol import Request, Response
from zapier_async.models import _make_converter
from zapier_async.testing import FakeZapier
from zapier_async.testing._fake_auth import FAKE_APP_ID, FakeCatalog, FakeConnection

APP = "868f9d3c-2ea0-4f19-a32d-a61b276ab8de"


def body_of(request: Request) -> Any:
    assert request.body is not None
    return json.loads(request.body)


def respond(payload: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(payload).encode())


# --- builders ---------------------------------------------------------------------------------


def test_get_actions_query():
    request = disco.get_actions(APP, "write")
    assert (request.method, request.path) == ("GET", "/v2/actions")
    assert request.query == (("app", APP), ("action_type", "WRITE"))
    assert disco.get_actions(APP).query == (("app", APP),)


@pytest.mark.parametrize("bad", ["WRITE ME", "", 3, "x" * 50])
def test_get_actions_refuses_bad_types(bad):
    with pytest.raises(za.InvalidRequestError):
        disco.get_actions(APP, bad)


@pytest.mark.parametrize("bad", ["../x", "", None, "a/b", "a?b"])
def test_ids_are_validated_before_they_go_into_paths(bad):
    with pytest.raises(za.InvalidRequestError):
        disco.action_inputs(bad, authentication=None, inputs={})
    with pytest.raises(za.InvalidRequestError):
        disco.action_choices("uag:1", bad, authentication=None, inputs={})


def test_inputs_body_is_the_spec_form():
    request = disco.action_inputs("uag:1", authentication="928117", inputs={"sheet": "s"})
    assert (request.method, request.path) == ("POST", "/v2/actions/uag:1/inputs")
    assert request.content_type == "application/json"
    assert request.idempotent is True
    assert request.creates_run is False
    assert body_of(request) == {"data": {"authentication": "928117", "inputs": {"sheet": "s"}}}
    none = disco.action_inputs("uag:1", authentication=None, inputs=None)
    assert body_of(none) == {"data": {"authentication": None, "inputs": {}}}


def test_choices_body_and_page():
    request = disco.action_choices("uag:1", "lead_id", authentication="a", inputs=None, page=2)
    assert request.path == "/v2/actions/uag:1/inputs/lead_id/choices"
    assert request.query == (("page", "2"),)
    assert body_of(request) == {"data": {"authentication": "a", "inputs": None}}
    with pytest.raises(za.InvalidRequestError):
        disco.action_choices("uag:1", "x", authentication="a", inputs=None, page=0)


def test_outputs_body_sends_live_samples_only_when_asked():
    plain = disco.action_outputs("uag:1", authentication="a", inputs={"k": 1})
    assert body_of(plain) == {"data": {"authentication": "a", "inputs": {"k": 1}}}
    live = disco.action_outputs("uag:1", authentication="a", inputs={}, fetch_live_samples=True)
    assert body_of(live)["data"]["fetch_live_samples"] is True


@pytest.mark.parametrize("bad", ["", 5])
def test_authentication_must_be_a_non_empty_string_or_none(bad):
    with pytest.raises(za.InvalidRequestError):
        disco.action_inputs("uag:1", authentication=bad, inputs={})


def test_list_authentications_query():
    request = disco.list_authentications(APP, limit=25, offset=50)
    assert request.query == (("app", APP), ("limit", "25"), ("offset", "50"))
    for bad in ({"limit": 0}, {"limit": 5000}, {"offset": -1}, {"limit": True}):
        with pytest.raises(za.InvalidRequestError):
            disco.list_authentications(APP, **bad)


# --- parsers ----------------------------------------------------------------------------------

ACTIONS_SPEC_EXAMPLE = [
    {
        "links": {"next": None, "prev": None},
        "meta": {"count": 1, "limit": 10, "offset": 0},
        "data": [
            {
                "id": "uag:1f188536-6dd0-4172-8414-2b90914ddee9",
                "key": "new_lead",
                "app": "83b47c0e-adda-44da-a45d-42565fe521ef",
                "type": "action",
                "action_type": "READ",
                "is_instant": True,
                "title": "New Lead",
                "description": "Triggers when a new lead is added to SuperExampleCRM",
            }
        ],
    }
]


@pytest.mark.parametrize("payload", [ACTIONS_SPEC_EXAMPLE, ACTIONS_SPEC_EXAMPLE[0]])
def test_actions_parse_from_a_one_element_list_or_a_bare_envelope(payload):
    request = disco.get_actions(APP)
    (action,) = disco.parse_actions(respond(payload), request)
    assert action.key == "new_lead"
    assert action.action_type is za.ActionType.READ
    assert action.is_instant is True


def test_actions_keep_unknown_types_and_reduce_expanded_apps():
    item = dict(ACTIONS_SPEC_EXAMPLE[0]["data"][0], action_type="action", app={"id": APP})
    (action,) = disco.parse_actions(respond({"data": [item]}), disco.get_actions(APP))
    assert action.app == APP
    assert action.action_type.value == "action"
    assert not action.action_type.is_known


def test_spec_examples_structure_with_the_strict_converter():
    strict = _make_converter(strict=True)
    strict.structure(ACTIONS_SPEC_EXAMPLE[0]["data"][0], za.Action)
    strict.structure(
        {
            "type": "authentication",
            "id": "example_akLLd8kB",
            "app": "81f613aa-c98a-4383-a5fc-195e68647217",
            "is_expired": False,
            "title": "Google Sheets some.user@mycompany.example",
        },
        za.Connection,
    )
    strict.structure({"id": "55c", "type": "choice", "label": "First", "value": "x"}, za.Choice)
    strict.structure(
        {"type": "output_field", "id": "parents[]sha", "title": "Parents Sha", "sample": "4a2"},
        za.OutputField,
    )


INPUTS = {
    "links": {"next": None, "prev": None},
    "meta": {"count": 3, "limit": None, "offset": 0},
    "data": [
        {
            "type": "input_field",
            "id": "code",
            "default_value": "",
            "depends_on": [],
            "description": "d",
            "format": "CODE",
            "invalidates_input_fields": False,
            "is_required": True,
            "items": {},
            "placeholder": "",
            "title": "Code",
            "value_type": "STRING",
        },
        {"type": "info_field", "id": "note", "description": "read me"},
        {
            "type": "fieldset",
            "id": "lines",
            "title": "Lines",
            "fields": [{"type": "input_field", "id": "qty", "format": "SELECT"}],
        },
        {"type": "copy", "id": "mystery", "description": "unknown type, info-shaped"},
    ],
}


def test_input_fields_parse_into_the_three_kinds():
    request = disco.action_inputs("uag:1", authentication=None, inputs={})
    code, note, lines, mystery = disco.parse_input_fields(respond(INPUTS), request)
    assert isinstance(code, za.InputField)
    assert code.format is za.FieldFormat.CODE
    assert code.is_required
    assert isinstance(note, za.InfoField)
    assert note.description == "read me"
    assert isinstance(lines, za.Fieldset)
    (qty,) = lines.fields
    assert isinstance(qty, za.InputField)
    assert qty.is_select
    assert isinstance(mystery, za.InfoField)


def test_choices_pages_follow_links_next():
    request = disco.action_choices("uag:1", "x", authentication=None, inputs=None)
    payload = [
        {
            "data": [{"id": "55c", "type": "choice", "label": "First", "value": "example"}],
            "links": {"next": "https://api.zapier.com/v2/actions/a/inputs/x/choices?page=2"},
            "meta": {"page": 1},
        }
    ]
    page = disco.parse_choices(respond(payload), request)
    assert page.page == 1
    assert page.next_page == 2
    assert page.choices[0].label == "First"
    last = disco.parse_choices(respond({"data": [], "links": {"next": None}, "meta": {}}), request)
    assert last.next_page is None


def _connections(n: int, **links: Any) -> dict[str, Any]:
    data = [
        {"type": "authentication", "id": f"c{i}", "app": APP, "is_expired": False, "title": ""}
        for i in range(n)
    ]
    return {"links": links, "meta": {"count": 25, "limit": 10, "offset": 0}, "data": data}


def test_connection_pages_take_the_offset_from_links_next_but_never_its_host():
    request = disco.list_authentications(APP, limit=10, offset=0)
    nxt = "https://evil.example/v2/authentications?app=x&limit=10&offset=10"
    page = disco.parse_connections(respond(_connections(10, next=nxt)), request, offset=0)
    assert page.next_offset == 10
    end = disco.parse_connections(respond(_connections(5, next=None)), request, offset=20)
    assert end.next_offset is None


def test_connection_pages_without_links_use_meta_count():
    request = disco.list_authentications(APP, limit=10, offset=0)
    body = _connections(10)
    del body["links"]
    assert disco.parse_connections(respond(body), request, offset=0).next_offset == 10
    assert disco.parse_connections(respond(body), request, offset=20).next_offset is None


def test_an_empty_page_ends_the_listing_whatever_the_links_say():
    request = disco.list_authentications(APP)
    body = _connections(0, next="https://api.zapier.com/v2/authentications?offset=0")
    assert disco.parse_connections(respond(body), request, offset=0).next_offset is None


def test_a_string_is_expired_is_a_decode_error_not_true():
    body = _connections(1)
    body["data"][0]["is_expired"] = "false"
    with pytest.raises(errors.DecodeError):
        disco.parse_connections(respond(body), disco.list_authentications(APP), offset=0)


def test_error_statuses_go_through_the_one_mapping():
    request = disco.get_actions(APP)
    body = {"errors": [{"status": 403, "code": "permission_denied", "detail": "no zap scope"}]}
    with pytest.raises(errors.PermissionDeniedError, match="no zap scope"):
        disco.parse_actions(respond(body, 403), request)


def test_pick_action_names_what_there_is():
    actions = disco.parse_actions(respond(ACTIONS_SPEC_EXAMPLE), disco.get_actions(APP))
    assert disco.pick_action(actions, app=APP, action_key="new_lead", action_type=None)
    with pytest.raises(errors.ActionNotFoundError, match="new_lead") as info:
        disco.pick_action(actions, app=APP, action_key="send", action_type=None)
    assert info.value.available == ["new_lead"]
    with pytest.raises(errors.ActionNotFoundError, match="none"):
        disco.pick_action(actions, app=APP, action_key="new_lead", action_type="WRITE")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "data",
                    "links",
                    "meta",
                    "next",
                    "page",
                    "count",
                    "id",
                    "key",
                    "app",
                    "type",
                    "action_type",
                    "is_expired",
                    "fields",
                    "value",
                    "title",
                    "errors",
                    "offset",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)
PARSERS = [
    lambda r: disco.parse_actions(r, disco.get_actions(APP)),
    lambda r: disco.parse_input_fields(r, disco.action_inputs("a", authentication=None, inputs={})),
    lambda r: disco.parse_choices(
        r, disco.action_choices("a", "b", authentication=None, inputs=None)
    ),
    lambda r: disco.parse_output_fields(
        r, disco.action_outputs("a", authentication=None, inputs={})
    ),
    lambda r: disco.parse_connections(r, disco.list_authentications(APP), offset=0),
]


@settings(max_examples=300, deadline=None)
@given(
    payload=JSON | st.binary(max_size=40).map(lambda b: b"\x00raw" + b),
    status=st.sampled_from([200, 201, 202, 400, 401, 404, 429, 500, 503]),
    which=st.integers(min_value=0, max_value=len(PARSERS) - 1),
)
def test_arbitrary_bodies_only_raise_decode_or_api_errors(payload, status, which):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with contextlib.suppress(errors.DecodeError, errors.APIError):
        PARSERS[which](Response(status=status, body=raw))


# --- end to end -------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=11) as server:
        yield server


def client_for(fake: FakeZapier) -> za.ZapierClient:
    return za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=fake.url,
        poll_policy=za.PollPolicy(initial=0.01, factor=1.5, cap=0.05, jitter=0.1),
    )


@pytest.mark.asyncio
async def test_each_lookup_hands_out_fresh_ids_with_stable_keys(fake):
    async with client_for(fake) as client:
        first = await client.list_actions(FAKE_APP_ID)
        second = await client.list_actions(FAKE_APP_ID)
        writes = await client.list_actions(FAKE_APP_ID, "WRITE")
    assert [a.key for a in first] == [a.key for a in second]
    assert not {a.id for a in first} & {a.id for a in second}
    assert [a.key for a in writes] == ["send_message"]
    request = next(r for r in fake.requests if r.endpoint == "actions")
    assert request.query == {"app": FAKE_APP_ID}


@pytest.mark.asyncio
async def test_run_by_key_looks_up_a_fresh_id_before_every_run(fake):
    async with client_for(fake) as client:
        handles = [
            await client.run(
                app=FAKE_APP_ID, action_key="send_message", authentication="conn_ok", inputs={}
            )
            for _ in range(3)
        ]
        explicit = await client.run("core:x", authentication=None)
        for handle in [*handles, explicit]:
            await handle
    ids = [fake.run(h.id).action for h in handles]
    assert len(set(ids)) == 3
    assert all(fake.catalog.resolve(i) == (FAKE_APP_ID, "send_message") for i in ids)
    assert fake.stats.action_lookups == 3  # the explicit id skipped the lookup
    kinds = [r.endpoint for r in fake.requests if r.endpoint in ("actions", "create")]
    assert kinds[:6] == ["actions", "create"] * 3


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "name the action"),
        ({"app": FAKE_APP_ID}, "name the action"),
        ({"action_key": "send_message"}, "name the action"),
        ({"action": "core:x", "app": FAKE_APP_ID, "action_key": "k"}, "not both"),
    ],
)
async def test_run_needs_exactly_one_way_to_name_the_action(fake, kwargs, match):
    async with client_for(fake) as client:
        with pytest.raises(za.InvalidRequestError, match=match):
            await client.run(authentication=None, **kwargs)
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_an_unknown_key_creates_nothing(fake):
    async with client_for(fake) as client:
        with pytest.raises(za.ActionNotFoundError, match="send_message") as info:
            await client.run(app=FAKE_APP_ID, action_key="send_mesage", authentication=None)
        with pytest.raises(za.ActionNotFoundError):
            await client.run(
                app=FAKE_APP_ID, action_key="find_contact", action_type="WRITE", authentication=None
            )
    assert "send_message" in info.value.available
    assert fake.stats.runs_created == 0


@pytest.mark.asyncio
async def test_bad_inputs_do_not_cost_a_lookup(fake):
    async with client_for(fake) as client:
        with pytest.raises(za.InvalidRequestError):
            await client.run(
                app=FAKE_APP_ID, action_key="send_message", authentication=None, inputs={1: 2}
            )
    assert fake.stats.requests == 0


@pytest.mark.asyncio
async def test_inputs_choices_and_outputs_end_to_end(fake):
    async with client_for(fake) as client:
        action = await client.find_action(FAKE_APP_ID, "send_message")
        fields = await client.action_inputs(
            action.id, authentication="conn_ok", inputs={"text": "hi"}
        )
        select = [f for f in fields if isinstance(f, za.InputField) and f.is_select]
        values: list[str] = []
        page: int | None = None
        while True:
            choices = await client.action_choices(
                action.id, select[0].id, authentication="conn_ok", page=page
            )
            values += [c.value for c in choices.choices]
            if choices.next_page is None:
                break
            page = choices.next_page
        outputs = await client.action_outputs(action.id, authentication="conn_ok")
    assert [f.id for f in select] == ["channel"]
    assert len(values) == len(set(values)) == 45
    assert [o.id for o in outputs] == ["id", "ts"]
    posted = [r for r in fake.requests if r.method == "POST" and r.endpoint != "token"]
    assert posted[0].json == {"data": {"authentication": "conn_ok", "inputs": {"text": "hi"}}}
    assert posted[1].json == {"data": {"authentication": "conn_ok", "inputs": None}}
    assert posted[-1].json == {"data": {"authentication": "conn_ok", "inputs": {}}}


@pytest.mark.asyncio
async def test_bare_envelopes_parse_too():
    async with (
        FakeZapier(seed=1, catalog=FakeCatalog(list_envelopes=False)) as fake,
        client_for(fake) as client,
    ):
        actions = await client.list_actions(FAKE_APP_ID)
        page = await client.action_choices(actions[0].id, "channel", authentication=None)
    assert len(page.choices) == 20


@pytest.mark.asyncio
async def test_list_connections_walks_every_page():
    connections = {
        APP: [FakeConnection(id=f"c{i}", title=f"#{i}", is_expired=i % 2 == 0) for i in range(25)]
    }
    async with (
        FakeZapier(seed=1, catalog=FakeCatalog(connections=connections)) as fake,
        client_for(fake) as client,
    ):
        found = [c async for c in client.list_connections(APP, page_size=10)]
    assert [c.id for c in found] == [f"c{i}" for i in range(25)]
    assert [c.is_expired for c in found[:3]] == [True, False, True]
    offsets = [r.query["offset"] for r in fake.requests if r.endpoint == "authentications"]
    assert offsets == ["0", "10", "20"]


@pytest.mark.asyncio
async def test_find_connection_skips_expired_ones_and_stops_early():
    connections = {APP: [FakeConnection(id=f"c{i}", is_expired=i < 12) for i in range(40)]}
    async with (
        FakeZapier(seed=1, catalog=FakeCatalog(connections=connections)) as fake,
        client_for(fake) as client,
    ):
        connection = await client.find_connection(APP)
    assert connection.id == "c12"
    assert fake.stats.requests_by_endpoint["authentications"] == 1  # one page of 100 was enough


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("expired", "match"), [(0, "connect the app"), (3, "3 found, all expired")]
)
async def test_no_usable_connection_is_a_clear_error(expired, match):
    connections = {APP: [FakeConnection(id=f"c{i}", is_expired=True) for i in range(expired)]}
    async with (
        FakeZapier(seed=1, catalog=FakeCatalog(connections=connections)) as fake,
        client_for(fake) as client,
    ):
        with pytest.raises(za.NoConnectionError, match=match) as info:
            await client.find_connection(APP)
    assert info.value.expired == expired
    assert isinstance(info.value, za.ZapierError)


@pytest.mark.asyncio
async def test_discovery_is_retried_after_a_server_error(fake):
    fake.inject("500", endpoint=None)
    async with za.ZapierClient(
        auth=za.BearerToken("t"),
        base_url=fake.url,
        retry_policy=za.RetryPolicy(base=0.01, cap=0.02),
    ) as client:
        fields = await client.action_inputs(
            (await client.find_action(FAKE_APP_ID, "send_message")).id, authentication=None
        )
    assert fields
    assert fake.stats.responses_by_status[500] == 1
