"""The straightened protocol layer (issue 17 item 3): shared wire helpers in `_wire`, every kind
of run in `_runs`, `StoredAction` structured by the one converter, validators once, and the
old import paths kept."""

from __future__ import annotations

import ast
import json
import math
import pathlib

import pytest

import zapier_async as za
from zapier_async import _actions, _discovery, _protocol, _runs, _wire, errors
from zapier_async.models import StoredAction, _make_converter

ROOT = pathlib.Path(za.__file__).parent


def respond(payload: object, status: int = 200) -> _wire.Response:
    return _wire.Response(status=status, body=json.dumps(payload).encode())


# --- one poll request for every kind of run ---------------------------------------------------

LOCATORS = [
    (_runs.RunLocator(kind="action_run", run_id="arun_1"), "/v2/action-runs/arun_1"),
    (_runs.RunLocator(kind="actions_v1", run_id="r1"), "/actions/v1/runs/r1"),
    (
        _runs.RunLocator(kind="stored_action", run_id="r2", stored_action_id="sa-9"),
        "/actions/v1/stored-actions/sa-9/runs/r2",
    ),
]


@pytest.mark.parametrize(("locator", "path"), LOCATORS)
def test_one_poll_request_reads_every_kind_of_run(locator, path):
    assert _runs.poll_request(locator).path == path
    # The old entry points answer the same, and `_actions` now knows /v2/action-runs too.
    assert _protocol.poll_request(locator) == _runs.poll_request(locator)
    assert _actions.poll_request(locator) == _runs.poll_request(locator)


def test_long_poll_applies_to_one_off_actions_api_runs_only():
    long_poll = za.LongPoll(wait_seconds=20)
    reads = [_runs.poll_request(loc, long_poll=long_poll) for loc, _ in LOCATORS]
    assert [r.long_poll for r in reads] == [None, 20.0, None]
    assert reads[1].path == "/actions/v2/runs/r1"
    assert reads[1].query == (("wait_seconds", "20"),)


def test_tokens_round_trip_for_every_kind():
    for locator, _ in LOCATORS:
        token = _runs.encode_continuation_token(locator)
        assert _runs.decode_continuation_token(token) == locator


# --- StoredAction through the one converter ---------------------------------------------------

RECORD = {
    "type": "stored_action",
    "id": "8d3c4b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
    "connection_id": "conn-1",
    "selected_api": "GoogleSheetsV2CLIAPI@2.9.1",
    "action_key": "add_row",
    "action_type": "write",
    "inputs": {"sheet": "a"},
}


def test_a_stored_action_record_is_structured_by_the_converter():
    request = _actions.get_stored_action("sa-1")
    stored = _actions.parse_stored_action(respond({"data": RECORD}), request)
    assert stored == StoredAction(
        id=RECORD["id"],
        connection_id="conn-1",
        selected_api="GoogleSheetsV2CLIAPI@2.9.1",
        action_key="add_row",
        action_type="write",
        inputs={"sheet": "a"},
    )
    record = {k: v for k, v in RECORD.items() if k != "type"}
    assert _make_converter(strict=True).structure(record, StoredAction) == stored


def test_a_create_answer_has_only_the_id_and_odd_fields_are_unknown():
    request = _actions.list_stored_actions()
    created = _actions.parse_stored_action(
        respond({"type": "stored_action", "id": "sa-1"}), request
    )
    assert created == StoredAction(id="sa-1")
    odd = {"id": "sa-2", "connection_id": 7, "inputs": ["not", "a", "mapping"]}
    (parsed,) = _actions.parse_stored_action_list(respond({"results": [odd]}), request)
    assert (parsed.connection_id, parsed.inputs) == (None, {})


@pytest.mark.parametrize("record", [{"type": "stored_action"}, {"id": ""}, {"id": 5}])
def test_a_stored_action_without_an_id_is_a_decode_error(record):
    with pytest.raises(errors.DecodeError, match="stored action") as info:
        _actions.parse_stored_action(respond(record), _actions.list_stored_actions())
    assert info.value.status == 200


# --- validators once --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: za.LongPoll(wait_seconds=math.inf),
        lambda: za.LongPoll(wait_seconds=math.nan),
        lambda: za.LongPoll(early_fraction=1.0),
        lambda: za.CallbackPolling(interval=-1.0),
        lambda: za.CallbackPolling(jitter=1.0),
    ],
)
def test_configuration_that_cannot_work_fails_at_construction(build):
    # A long-poll of infinite seconds would never release the poller: refused like 0 is.
    with pytest.raises(ValueError, match="must be"):
        build()


def test_no_module_of_the_package_defines_its_own_positive_or_fraction_validator():
    # attrs validators take (instance, attribute, value); `_config`'s parsers of environment
    # strings share a name, not a job.
    own = {
        path.relative_to(ROOT).as_posix()
        for path in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef)
        and node.name in {"_positive", "_fraction"}
        and len(node.args.args) == 3
    }
    # _backoff.py is not this change's to edit; it should import `_validators` too.
    assert own <= {"_backoff.py"}


# --- the old names still import from where they did -------------------------------------------


def test_the_names_other_modules_import_are_still_there():
    assert _protocol.Request is _wire.Request
    assert _protocol.Response is _wire.Response
    assert _protocol.RunLocator is _runs.RunLocator
    assert _protocol.RunKind is _runs.RunKind
    assert _protocol.error_for_response is _wire.error_for_response
    assert _protocol.parse_run is _runs.parse_run
    assert _protocol.MAX_CALLBACK_URL == _runs.MAX_CALLBACK_URL
    assert _protocol.is_loopback_host is _wire.is_loopback_host
    assert _actions.LongPoll is za.LongPoll is _runs.LongPoll
    assert _actions.CallbackPolling is za.CallbackPolling is _runs.CallbackPolling
    assert _actions.get_stored_action_run is _runs.get_stored_action_run
    for name in ("InputItem", "get_actions", "parse_connections", "pick_action"):
        assert hasattr(_discovery, name)


CORE = ("_wire", "_runs", "_validators", "_protocol", "_actions", "_discovery", "_redact")


def test_the_core_imports_no_other_modules_private_names_but_the_converter():
    borrowed = set()
    for stem in CORE:
        tree = ast.parse((ROOT / f"{stem}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                borrowed |= {
                    f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                }
    # The one cattrs converter lives with the models (DESIGN.md); nothing else is borrowed.
    assert borrowed <= {"models._converter", "models._field_kind"}
