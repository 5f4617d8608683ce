"""Discovery by name (issue 19): Get Apps requests and parsing, resolving an app by name or
slug, checking inputs against an action's fields, filtering connections by status."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import zapier_async as za
from zapier_async import _discovery as disco
from zapier_async import errors
from zapier_async._wire import Request, Response
from zapier_async.models import App, Connection, Fieldset, InfoField, InputField, _make_converter

SLACK = "5a6c1d3e-9f0b-4c2a-8e7d-1b2c3d4e5f60"

# The spec's own example of a Get Apps response (operation get-v2-apps), verbatim.
SPEC_EXAMPLE: list[dict[str, Any]] = [
    {
        "data": [
            {
                "id": "1e4fcbf4-d80b-4ec3-b33b-c085f1ecbbaa",
                "type": "app",
                "image": "https://zapier-images.imgix.net/storage/developer/cde.png",
                "links": {
                    "connect_new_authentication": "https://zapier.com/engine/auth/start/"
                    "HubSpotCLIAPI@1.7.1?redirect=https%3A%2F%2Fapi.zapier.com%2Fv2%2F"
                    "authentications%2Fredirect"
                },
                "action_types": ["READ"],
                "title": "HubSpot",
                "images": {
                    "url_16x16": "https://zapier-images.imgix.net/16.png",
                    "url_32x32": "https://zapier-images.imgix.net/32.png",
                    "url_64x64": "https://zapier-images.imgix.net/64.png",
                    "url_128x128": "https://zapier-images.imgix.net/128.png",
                },
                "hex_color": "8bcbca",
                "categories": [{"slug": "partners"}],
                "description": "HubSpot is your all-in-one stop for all of your marketing needs.",
            }
        ],
        "meta": {"count": 1, "offset": 10, "limit": 10},
        "links": {
            "next": "https://api.zapier.com/v2/apps?offset=20&limit=10",
            "previous": "https://api.zapier.com/v2/apps?offset=0&limit=10",
        },
    }
]


def respond(payload: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(payload).encode())


def app(title: str, app_id: str = SLACK) -> App:
    return App(id=app_id, title=title)


# --- requests ---------------------------------------------------------------------------------


def test_list_apps_sends_the_specs_query_parameters():
    request = disco.list_apps(query="slack", limit=20, offset=40)
    assert (request.method, request.path, request.endpoint) == ("GET", "/v2/apps", "apps.list")
    assert request.query == (("query", "slack"), ("limit", "20"), ("offset", "40"))
    assert disco.list_apps(category="ai-tools").query == (("category", "ai-tools"), ("offset", "0"))
    assert disco.list_apps(ids=["a-1", "b-2"]).query == (("ids", "a-1,b-2"), ("offset", "0"))
    assert disco.list_apps(ids="a-1").query[0] == ("ids", "a-1")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": 3}, "query"),
        ({"query": "x" * 257}, "query"),
        ({"ids": ["a/b"]}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": 5}, "ids"),
        ({"ids": ["a"], "category": "crm"}, "ids"),  # the spec: cannot be combined
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": True}, "offset"),
    ],
)
def test_list_apps_refuses_bad_arguments_before_sending(kwargs, field):
    with pytest.raises(za.InvalidRequestError) as info:
        disco.list_apps(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("name", "text"),
    [("google-sheets", "google sheets"), ("Google Sheets", "Google Sheets"), ("slack", "slack")],
)
def test_a_slug_is_searched_for_by_its_words(name, text):
    request = disco.find_app_request(name)
    assert request.query == (("query", text), ("limit", str(disco.FIND_APP_LIMIT)), ("offset", "0"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (SLACK, True),
        (SLACK.upper(), True),
        ("500123", True),
        ("Slack", False),
        ("google-sheets", False),
        ("5a6c1d3e9f0b4c2a8e7d1b2c3d4e5f60", False),  # not the canonical form Zapier sends
        (None, False),
    ],
)
def test_is_app_id_tells_ids_from_names(value, expected):
    assert disco.is_app_id(value) is expected


# --- parsing ----------------------------------------------------------------------------------


def test_the_specs_example_parses_and_structures_strictly():
    request = disco.list_apps(offset=10)
    page = disco.parse_apps(respond(SPEC_EXAMPLE), request, offset=10)
    (hubspot,) = page.apps
    assert hubspot.title == "HubSpot"
    assert hubspot.slug == "hubspot"
    assert hubspot.categories == ["partners"]
    assert hubspot.action_types == [za.ActionType.READ]
    assert hubspot.selected_api == "HubSpotCLIAPI@1.7.1"
    assert page.next_offset == 20  # read from links.next, never followed
    _make_converter(strict=True).structure(SPEC_EXAMPLE[0]["data"][0], App)


def test_apps_pages_end_without_a_next_link_and_accept_the_bare_envelope():
    body = {"data": [{"id": "a", "title": "A"}], "links": {"next": None}, "meta": {"count": 9}}
    page = disco.parse_apps(respond(body), disco.list_apps())
    assert [a.id for a in page.apps] == ["a"]
    assert page.next_offset is None
    assert page.apps[0].selected_api is None  # no connect link: unknown, not an error


def test_an_app_without_an_id_is_a_decode_error():
    with pytest.raises(errors.DecodeError, match="documented shape"):
        disco.parse_apps(respond([{"data": [{"title": "A"}]}]), disco.list_apps())


def test_a_get_apps_refusal_goes_through_the_one_error_mapping():
    refusal = {"errors": [{"status": 403, "code": "permission_denied", "detail": "scope zap"}]}
    with pytest.raises(errors.PermissionDeniedError, match="scope zap"):
        disco.parse_apps(respond(refusal, 403), disco.list_apps())


# --- resolving a name -------------------------------------------------------------------------


def test_pick_app_prefers_an_exact_title_ignoring_case():
    apps = [app("Slack Legacy", "b"), app("Slack", "a"), app("Slackbot", "c")]
    assert disco.pick_app(apps, "slack").id == "a"
    assert disco.pick_app(apps, "  SLACK ").id == "a"
    assert disco.pick_app(apps, "slack-legacy").id == "b"  # a slug


def test_a_title_match_wins_over_a_slug_match():
    assert disco.pick_app([app("Slack!", "x"), app("Slack", "a")], "Slack").id == "a"


def test_no_exact_match_is_an_error_listing_the_candidates_never_a_guess():
    apps = [app("Slack Legacy", "b"), app("Slackbot", "c")]
    with pytest.raises(errors.AppNotFoundError) as info:
        disco.pick_app(apps, "slack")
    assert type(info.value) is errors.AppNotFoundError
    assert info.value.candidates == ["Slack Legacy", "Slackbot"]
    assert "'Slack Legacy'" in str(info.value)


def test_two_apps_with_the_name_are_ambiguous():
    apps = [app("Slack", "a"), app("slack", "b"), app("Slack", "a")]  # the duplicate is one app
    with pytest.raises(errors.AmbiguousAppError) as info:
        disco.pick_app(apps, "Slack")
    assert isinstance(info.value, errors.AppNotFoundError)  # one except clause catches both
    assert info.value.candidates == ["Slack (a)", "slack (b)"]


@pytest.mark.parametrize("bad", ["", "   ", None, 7])
def test_a_blank_name_is_refused(bad):
    with pytest.raises(za.InvalidRequestError):
        disco.pick_app([app("Slack")], bad)


@pytest.mark.parametrize(
    "exc",
    [
        errors.AppNotFoundError("Slak", ["Slack"]),
        errors.AmbiguousAppError("Slack", ["Slack (a)", "Slack (b)"]),
        errors.InvalidInputsError("missing required input 'text'", "inputs", ["text"], ["txt"]),
    ],
)
def test_the_new_errors_pickle_and_copy(exc):
    for again in (pickle.loads(pickle.dumps(exc)), copy.copy(exc)):
        assert type(again) is type(exc)
        assert str(again) == str(exc)
        assert attrs.asdict(again) == attrs.asdict(exc)


@given(st.text(min_size=1, max_size=40).filter(str.strip))
def test_an_apps_own_title_always_resolves_to_it(title):
    assert disco.pick_app([app(title, "x"), app(title + " extra", "y")], title).id == "x"


# --- checking inputs --------------------------------------------------------------------------

FIELDS = [
    InputField(id="channel", title="Channel", is_required=True),
    InputField(id="text", is_required=True),
    InputField(id="username"),
    InputField(id="icon", is_required=True, default_value=":robot:"),
    InfoField(id="note", description="Messages are public."),
    Fieldset(
        id="attachments",
        fields=[InputField(id="url", is_required=True), InputField(id="alt")],
    ),
]


def test_complete_inputs_pass_and_come_back_as_a_copy():
    inputs = {"channel": "C1", "text": "hi", "attachments": [{"url": "u", "alt": "a"}]}
    checked = disco.check_inputs(FIELDS, inputs)
    assert checked == inputs
    assert checked is not inputs


def test_missing_and_unknown_fields_are_all_named():
    with pytest.raises(errors.InvalidInputsError) as info:
        disco.check_inputs(FIELDS, {"channel": "", "txt": "hi", "note": "x"})
    err = info.value
    assert isinstance(err, za.InvalidRequestError)
    assert err.field == "inputs"
    assert err.missing == ["channel", "text"]  # "" is no value; `icon` has a default
    assert err.unknown == ["txt", "note"]  # an info field takes no value
    assert "'text'" in str(err)
    assert "'txt'" in str(err)


def test_fieldset_rows_are_checked_against_their_fields():
    inputs = {"channel": "C", "text": "t", "attachments": [{"url": "u"}, {"alt": "a", "x": 1}]}
    with pytest.raises(errors.InvalidInputsError) as info:
        disco.check_inputs(FIELDS, inputs)
    assert info.value.missing == ["attachments[1].url"]
    assert info.value.unknown == ["attachments[1].x"]
    with pytest.raises(errors.InvalidInputsError, match="list of objects"):
        disco.check_inputs(FIELDS, {"channel": "C", "text": "t", "attachments": "u"})


def test_unknown_fields_may_be_allowed():
    checked = disco.check_inputs(
        FIELDS, {"channel": "C", "text": "t", "custom": 1}, allow_unknown=True
    )
    assert checked["custom"] == 1
    with pytest.raises(errors.InvalidInputsError) as info:
        disco.check_inputs(FIELDS, {"custom": 1}, allow_unknown=True)
    assert info.value.unknown == []


def test_inputs_that_are_not_a_mapping_are_refused():
    with pytest.raises(za.InvalidRequestError, match="mapping"):
        disco.check_inputs(FIELDS, ["channel"])
    assert disco.check_inputs([], None) == {}


# --- connections by status --------------------------------------------------------------------


def test_connections_filter_by_status():
    old = Connection(id="old", app=SLACK, is_expired=True)
    ok = Connection(id="ok", app=SLACK, is_expired=False)
    assert disco.filter_connections([old, ok]) == [ok]  # usable ones by default
    assert disco.filter_connections([old, ok], expired=True) == [old]
    assert disco.filter_connections([old, ok], expired=None) == [old, ok]
    assert disco.connection_matches(old, expired=None)
    assert not disco.connection_matches(old, expired=False)


def test_requests_are_values():
    assert isinstance(disco.find_app_request("Slack"), Request)
