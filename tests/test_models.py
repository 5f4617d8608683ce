"""Models and the converter: open enums, shapes, strictness."""

from __future__ import annotations

import pickle

import attrs
import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zapier_async.models import Run, RunErrorCode, RunStatus, _converter, _make_converter


@pytest.mark.parametrize(
    ("value", "terminal"),
    [("success", True), ("error", True), ("waiting", False), ("queued", False), ("running", False)],
)
def test_known_statuses(value, terminal):
    status = RunStatus(value)
    assert status.is_known
    assert status.is_terminal is terminal


@given(st.text())
def test_any_unknown_status_is_kept_and_not_terminal(value):
    status = RunStatus(value)
    assert status.value == value
    assert RunStatus(value) is status
    if value not in ("success", "error"):
        assert not status.is_terminal


def test_unknown_members_compare_as_strings_and_pickle():
    status = RunStatus("paused")
    assert status == "paused"
    assert str(status) == "paused"
    assert pickle.loads(pickle.dumps(status)) is status


def test_run_is_frozen_and_keyword_only():
    run = Run(id="r", status=RunStatus.SUCCESS)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Run("r", RunStatus.SUCCESS)  # type: ignore[misc]
    assert run.succeeded
    assert run.done


def test_converter_coerces_next_page_number_and_keeps_unknown_codes():
    run = _converter.structure(
        {"id": "r", "status": "success", "next_page": 2, "errors": [{"code": "new_code"}]}, Run
    )
    assert run.next_page == "2"
    assert run.errors[0].code == RunErrorCode("new_code")
    assert not run.errors[0].code.is_known


def test_production_converter_ignores_unknown_keys_strict_one_refuses():
    data = {"id": "r", "status": "success", "added_later": 1}
    assert _converter.structure(data, Run).id == "r"
    with pytest.raises(cattrs.BaseValidationError):
        _make_converter(strict=True).structure(data, Run)


@pytest.mark.parametrize(
    "data",
    [
        {"id": 1, "status": "success"},
        {"id": "r", "status": None},
        {"id": "r", "status": "success", "errors": [{"delay": "soon"}]},
        {"id": "r", "status": "success", "errors": [{"delay": True}]},
        {"id": "r", "status": "success", "next_page": [1]},
        {"id": "r", "status": "success", "errors": [{"meta": []}]},
    ],
)
def test_wrong_types_are_refused(data):
    with pytest.raises(cattrs.BaseValidationError):
        _converter.structure(data, Run)
