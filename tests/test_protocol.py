"""The pure protocol layer: builders, parsers, the one response->error mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zapier_async import _protocol as proto
from zapier_async import errors
from zapier_async.models import Run, RunErrorCode, RunStatus, _make_converter

SAMPLES = Path(__file__).parent / "samples"


def load(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{name}.json").read_text())


def sample_response(sample: dict[str, Any]) -> proto.Response:
    if "body_text" in sample:
        body = sample["body_text"].encode()
    else:
        body = json.dumps(sample["body"]).encode()
    return proto.Response(status=sample["status"], headers={}, body=body)


def samples_of(kind: str) -> list[str]:
    return sorted(p.stem for p in SAMPLES.glob("*.json") if load(p.stem)["kind"] == kind)


GET = proto.get_action_run("run-1")
CREATE = proto.create_action_run(action="core:abc", authentication=None, inputs={})


# --- builders ---------------------------------------------------------------------------------


def test_create_body_is_the_published_spec_form():
    req = proto.create_action_run(
        action="example_core:Vn7xbE60",
        authentication="example_QVaAreV1",
        inputs={"email": "me@example.com"},
    )
    assert req.method == "POST"
    assert req.path == "/v2/action-runs"
    assert req.content_type == "application/json"
    assert req.idempotent is False
    assert req.creates_run is True
    assert req.body is not None
    assert json.loads(req.body) == {
        "data": {
            "action": "example_core:Vn7xbE60",
            "authentication": "example_QVaAreV1",
            "inputs": {"email": "me@example.com"},
        }
    }


def test_create_sends_null_authentication_and_callback_url():
    req = proto.create_action_run(
        action="core:x", authentication=None, inputs=None, callback_url="https://example.com/cb"
    )
    assert req.body is not None
    data = json.loads(req.body)["data"]
    assert data["authentication"] is None
    assert "authentication" in data
    assert data["inputs"] == {}
    assert data["callback_url"] == "https://example.com/cb"


def test_create_body_keeps_unicode_readable():
    req = proto.create_action_run(action="core:x", authentication=None, inputs={"name": "Zoë"})
    assert req.body is not None
    assert "Zoë".encode() in req.body


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"action": ""}, "action"),
        ({"action": 5}, "action"),
        ({"action": "core/../x"}, "action"),
        ({"action": "core:a b"}, "action"),
        ({"action": "core:a?b"}, "action"),
        ({"action": "core:a#b"}, "action"),
        ({"action": ".."}, "action"),
        ({"action": "x" * 300}, "action"),
        ({"authentication": ""}, "authentication"),
        ({"authentication": 12}, "authentication"),
        ({"inputs": ["a"]}, "inputs"),
        ({"inputs": {1: "a"}}, "inputs"),
        ({"inputs": {"when": object()}}, "inputs"),
        ({"inputs": {"n": float("nan")}}, "inputs"),
        ({"inputs": {"big": "x" * (proto.MAX_INPUT_BYTES + 1)}}, "inputs"),
        ({"callback_url": "http://example.com/cb"}, "callback_url"),
        ({"callback_url": "https://10.0.0.1/cb"}, "callback_url"),
        ({"callback_url": "https://127.0.0.1/cb"}, "callback_url"),
        ({"callback_url": "https:///nohost"}, "callback_url"),
        ({"callback_url": "https://example.com/" + "a" * 2048}, "callback_url"),
        ({"callback_url": 3}, "callback_url"),
    ],
)
def test_bad_create_input_is_refused_with_the_field_named(kwargs, field):
    args: dict[str, Any] = {"action": "core:abc", "authentication": "auth_1", "inputs": {}}
    args.update(kwargs)
    with pytest.raises(errors.InvalidRequestError) as info:
        proto.create_action_run(**args)
    assert info.value.field == field
    assert field in str(info.value)


def test_deeply_nested_inputs_are_refused_not_crashing():
    nested: Any = {}
    cur = nested
    for _ in range(100_000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(errors.InvalidRequestError, match="nested"):
        proto.create_action_run(action="core:x", authentication=None, inputs=nested)


def test_loopback_http_callback_only_when_allowed():
    url = "http://127.0.0.1:8080/cb"
    with pytest.raises(errors.InvalidRequestError):
        proto.create_action_run(action="a", authentication=None, inputs={}, callback_url=url)
    req = proto.create_action_run(
        action="a", authentication=None, inputs={}, callback_url=url, allow_loopback_callback=True
    )
    assert req.body is not None
    assert json.loads(req.body)["data"]["callback_url"] == url


@pytest.mark.parametrize(
    "run_id", ["123e4567-e89b-12d3-a456-426614174000", "arun_abc123", "500123", "a.b:c-d_e"]
)
def test_get_run_path_for_documented_id_forms(run_id):
    req = proto.get_action_run(run_id)
    assert req.method == "GET"
    assert req.path == f"/v2/action-runs/{run_id}"
    assert req.idempotent is True
    assert req.body is None


@pytest.mark.parametrize("run_id", ["", "a/b", "../x", "a b", "a?x=1", "a#f", "%2e%2e", "é"])
def test_get_run_refuses_ids_that_would_change_the_url(run_id):
    with pytest.raises(errors.InvalidRequestError) as info:
        proto.get_action_run(run_id)
    assert info.value.field == "run_id"


@given(st.text(max_size=300))
def test_any_accepted_id_stays_one_path_segment(text):
    try:
        req = proto.get_action_run(text)
    except errors.InvalidRequestError:
        return
    segment = req.path.removeprefix("/v2/action-runs/")
    assert "/" not in segment
    assert "?" not in segment
    assert "#" not in segment
    assert segment not in (".", "..")


def test_request_repr_hides_the_body():
    req = proto.create_action_run(action="a", authentication=None, inputs={"secret": "s3cr3t"})
    assert "s3cr3t" not in repr(req)


# --- continuation tokens ----------------------------------------------------------------------


def test_continuation_token_round_trips_and_is_versioned():
    loc = proto.RunLocator(kind="action_run", run_id="run-42")
    token = proto.encode_continuation_token(loc)
    assert token.startswith("za1.")
    assert proto.decode_continuation_token(token) == loc


def test_bare_run_id_is_accepted_as_a_locator():
    assert proto.decode_continuation_token("run-42") == proto.RunLocator(
        kind="action_run", run_id="run-42"
    )


@pytest.mark.parametrize(
    "token",
    [
        "za1.!!!",
        "za1." + "eyJ2IjoyfQ",  # {"v":2}
        "za1.bm90IGpzb24",  # not json
        "za1.eyJ2IjoxLCJrIjoid2hhdCIsImlkIjoieCJ9",  # unknown kind
        "za1.eyJ2IjoxLCJrIjoiYWN0aW9uX3J1biIsImlkIjoiYS9iIn0",  # id "a/b"
        None,
    ],
)
def test_bad_tokens_are_refused_clearly(token):
    with pytest.raises(errors.InvalidRequestError):
        proto.decode_continuation_token(token)


# --- parsing runs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", samples_of("run"))
def test_every_recorded_run_body_parses(name):
    sample = load(name)
    run = proto.parse_run(sample_response(sample), GET, run_id="run-1")
    assert isinstance(run, Run)
    assert run.id == "run-1"
    data = sample["body"].get("data", sample["body"])
    expected = RunStatus(data["status"])
    if sample["status"] == 202:
        assert not run.status.is_terminal
    else:
        assert run.status is expected
    assert all(isinstance(r, dict) for r in run.results)


@pytest.mark.parametrize("name", [n for n in samples_of("run") if not load(n).get("lenient")])
def test_recorded_run_bodies_have_no_fields_the_models_miss(name):
    """API drift shows here: a strict converter refuses keys our models do not know."""
    sample = load(name)
    data = dict(sample["body"].get("data", sample["body"]))
    data.pop("type", None)
    data["id"] = "run-1"
    _make_converter(strict=True).structure(data, Run)


def test_success_sample_keeps_results():
    run = proto.parse_run(sample_response(load("retrieve_run_success_spec")), GET, run_id="r")
    assert run.status is RunStatus.SUCCESS
    assert run.results == [{"id": 123}]
    assert run.errors == []


def test_throttled_error_sample_keeps_delay_and_code():
    run = proto.parse_run(sample_response(load("retrieve_run_error_throttled")), GET, run_id="r")
    assert run.status is RunStatus.ERROR
    (err,) = run.errors
    assert err.code is RunErrorCode.THROTTLED
    assert err.delay == 30.0


def test_guide_form_results_object_becomes_a_one_item_list():
    run = proto.parse_run(sample_response(load("retrieve_run_guide_queued")), GET, run_id="r")
    assert run.status is RunStatus.QUEUED
    assert not run.status.is_terminal
    assert run.results == [{}]


def test_flat_stored_action_body_keeps_next_page():
    run = proto.parse_run(sample_response(load("stored_action_run_flat")), GET, run_id="r")
    assert run.status is RunStatus.SUCCESS
    assert run.next_page == "1"


def test_unknown_status_is_kept_and_not_terminal():
    body = json.dumps({"data": {"type": "run", "status": "paused", "errors": []}}).encode()
    run = proto.parse_run(proto.Response(status=200, body=body), GET, run_id="r")
    assert run.status.value == "paused"
    assert not run.status.is_known
    assert not run.status.is_terminal


def test_http_202_is_pending_even_with_a_terminal_looking_body():
    body = json.dumps({"data": {"status": "success", "errors": []}}).encode()
    run = proto.parse_run(proto.Response(status=202, body=body), GET, run_id="r")
    assert run.status is RunStatus.WAITING


def test_empty_202_is_pending():
    run = proto.parse_run(proto.Response(status=202, body=b""), GET, run_id="r")
    assert run.status is RunStatus.WAITING


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[]",
        b'{"data": []}',
        b'{"data": {"status": 3, "errors": []}}',
        b'{"data": {"status": "success", "errors": "boom"}}',
        b'{"data": {"status": "success", "errors": [], "results": 5}}',
        b'{"data": {"status": "error", "errors": [{"code": 7}]}}',
        b"null",
        b"<html>",
    ],
)
def test_malformed_run_bodies_raise_decode_error(body):
    with pytest.raises(errors.DecodeError) as info:
        proto.parse_run(proto.Response(status=200, body=body), GET, run_id="r")
    assert info.value.request == "GET /v2/action-runs/run-1"
    assert info.value.status == 200


# --- parsing creates --------------------------------------------------------------------------


@pytest.mark.parametrize("name", samples_of("create"))
def test_create_samples_yield_the_run_id(name):
    sample = load(name)
    assert proto.parse_created_run(sample_response(sample), CREATE) == sample["body"]["data"]["id"]


def test_create_response_typed_as_one_element_list_is_accepted():
    body = json.dumps([{"data": {"type": "run", "id": "r1"}}]).encode()
    assert proto.parse_created_run(proto.Response(status=200, body=body), CREATE) == "r1"


@pytest.mark.parametrize(
    "body", [b'{"data": {"type": "run"}}', b'{"data": {"id": 5}}', b'{"data": {"id": ""}}']
)
def test_create_response_without_an_id_is_a_decode_error(body):
    with pytest.raises(errors.DecodeError):
        proto.parse_created_run(proto.Response(status=200, body=body), CREATE)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", samples_of("error"))
def test_every_recorded_error_body_maps_to_a_typed_error(name):
    sample = load(name)
    err = proto.error_for_response(sample_response(sample), CREATE, retry_after=2.0)
    assert isinstance(err, errors.APIError)
    assert err.status == sample["status"]
    for key, value in sample["expect"].items():
        assert getattr(err, key) == value, key
    assert err.request == "POST /v2/action-runs"
    assert err.retry_after == 2.0


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (429, errors.TooManyRequestsError),
        (500, errors.ServerError),
        (502, errors.ServerError),
        (503, errors.ServiceUnavailableError),
        (504, errors.ServerError),
        (418, errors.APIError),
        (302, errors.APIError),
    ],
)
def test_status_maps_to_its_error_class(status, cls):
    err = proto.error_for_response(proto.Response(status=status, body=b""), GET)
    assert type(err) is cls


def test_2xx_is_not_an_error():
    assert proto.error_for_response(proto.Response(status=204), GET) is None


def test_error_body_is_truncated():
    body = b"x" * 10_000
    err = proto.error_for_response(proto.Response(status=500, body=body), GET)
    assert err is not None
    assert len(err.body) <= errors.BODY_EXCERPT_LIMIT + 1


def test_parse_raises_the_mapped_error_for_error_statuses():
    sample = load("error_403_flat_gateway")
    with pytest.raises(errors.PermissionDeniedError, match="authentication_failed"):
        proto.parse_run(sample_response(sample), GET, run_id="r")


# --- fuzzing: only our typed errors may escape -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["data", "status", "errors", "results", "id", "code", "detail"])
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
bodies = st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode())
statuses = st.sampled_from([200, 201, 202, 204, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504])


@given(status=statuses, body=bodies)
def test_parse_run_raises_only_typed_errors(status, body):
    try:
        run = proto.parse_run(proto.Response(status=status, body=body), GET, run_id="r")
    except (errors.DecodeError, errors.APIError):
        return
    assert isinstance(run, Run)
    assert run.id == "r"


@given(status=statuses, body=bodies)
def test_parse_created_run_raises_only_typed_errors(status, body):
    try:
        run_id = proto.parse_created_run(proto.Response(status=status, body=body), CREATE)
    except (errors.DecodeError, errors.APIError):
        return
    assert isinstance(run_id, str)
    assert run_id


@given(status=st.integers(min_value=100, max_value=599), body=bodies)
def test_error_mapping_never_raises(status, body):
    err = proto.error_for_response(proto.Response(status=status, body=body), GET)
    assert (err is None) == (200 <= status < 300)
