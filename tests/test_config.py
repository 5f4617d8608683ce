"""`client_options_from_env`: environment variables become client options, or a typed error."""

from __future__ import annotations

import pytest

import zapier_async as za
from zapier_async._config import client_options_from_env
from zapier_async.errors import InvalidRequestError

SECRET = "s3cr3t-client-secret-value"


def test_a_token_under_the_sdk_name_or_ours():
    for name in ("ZAPIER_CREDENTIALS", "ZAPIER_TOKEN"):
        options = client_options_from_env({name: " tok-123456789 \n"})
        assert isinstance(options["auth"], za.BearerToken)
        assert set(options) == {"auth"}  # nothing else set: the client's defaults apply


def test_client_credentials_from_the_sdk_names():
    options = client_options_from_env(
        {
            "ZAPIER_CREDENTIALS_CLIENT_ID": "cid",
            "ZAPIER_CREDENTIALS_CLIENT_SECRET": SECRET,
            "ZAPIER_CREDENTIALS_SCOPE": "external other",
            "ZAPIER_TOKEN_URL": "http://127.0.0.1:9/oauth/token/",
        }
    )
    assert isinstance(options["auth"], za.ClientCredentials)
    assert SECRET not in repr(options["auth"])


def test_every_knob():
    options = client_options_from_env(
        {
            "ZAPIER_TOKEN": "tok-123456789",
            "ZAPIER_BASE_URL": "http://127.0.0.1:8080",
            "ZAPIER_REQUEST_TIMEOUT": "12.5",
            "ZAPIER_MAX_RETRIES": "2",
            "ZAPIER_MAX_RATE_LIMIT_WAIT": "none",
            "ZAPIER_RATE_LIMIT": "150/60",
            "ZAPIER_RATE_WINDOW": "300",
        }
    )
    assert options["base_url"] == "http://127.0.0.1:8080"
    assert options["request_timeout"] == 12.5
    assert options["retry_policy"].max_attempts == 3
    assert options["max_rate_limit_wait"] is None
    assert options["rate_limit"] == (150, 60.0)
    assert options["rate_window"] == 300.0
    assert (
        client_options_from_env(
            {"ZAPIER_TOKEN": "tok-123456789", "ZAPIER_MAX_RATE_LIMIT_WAIT": "0"}
        )["max_rate_limit_wait"]
        == 0.0
    )


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({}, "no credentials"),
        ({"ZAPIER_TOKEN": "   "}, "no credentials"),
        ({"ZAPIER_CREDENTIALS_CLIENT_ID": "cid"}, "CLIENT_SECRET is not set"),
        ({"ZAPIER_CREDENTIALS_CLIENT_SECRET": SECRET}, "CLIENT_ID is not set"),
        (
            {"ZAPIER_TOKEN": "tok-123456789", "ZAPIER_CREDENTIALS_CLIENT_ID": "cid"},
            "not both",
        ),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_REQUEST_TIMEOUT": "soon"}, "a number"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_REQUEST_TIMEOUT": "0"}, "positive"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_REQUEST_TIMEOUT": "inf"}, "finite"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_MAX_RETRIES": "-1"}, "whole number"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_MAX_RATE_LIMIT_WAIT": "-3"}, ">= 0"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_RATE_LIMIT": "150"}, "REQUESTS/SECONDS"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_RATE_LIMIT": "0/60"}, "at least one"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_RATE_LIMIT": "5/0"}, "positive"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_RATE_WINDOW": "0"}, "positive"),
        ({"ZAPIER_TOKEN": "t-123456789", "ZAPIER_RATE_WINDOW": "5 min"}, "a number"),
    ],
)
def test_bad_environments_are_typed_errors_before_any_client(environ, words):
    with pytest.raises(InvalidRequestError) as info:
        client_options_from_env(environ)
    assert words in str(info.value)


def test_an_unsendable_token_is_refused_without_echoing_it():
    bad = "tok-\x00-123456789"
    with pytest.raises(InvalidRequestError) as info:
        client_options_from_env({"ZAPIER_TOKEN": bad})
    assert bad not in str(info.value)
    assert bad not in repr(info.value)
