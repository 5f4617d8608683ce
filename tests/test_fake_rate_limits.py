"""FakeZapier rate limiting that behaves like servers we did not write.

`rate_limit_window` (windows from the first request vs aligned to the clock),
`rate_limit_per_token` (a bucket per bearer token, as Zapier's Actions API budgets each user)
and `rate_limit_for` (a token's own budget, as the partner JWT's `rate_limit` claim sets
it; `FakeAuthServer.claims_of` reads that claim). Time is a `FakeClock`; the only real waits
are loopback round trips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import aiohttp  # noqa: TID251 - the emulator is tested with a plain HTTP client
import attrs
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from zapier_async.testing import FakeAuthServer, FakeClock, FakeZapier
from zapier_async.testing._fake_limits import _RateLimiter

# 7 s into a 10-s window of the epoch (1_700_000_000 is a multiple of 10): an aligned
# window ends 3 s after the first request; a window opened by that request ends 10 s after.
WALL = 1_700_000_007.0


class Answer(NamedTuple):
    status: int
    headers: Mapping[str, str]


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def get(http: aiohttp.ClientSession, fake: FakeZapier, token: str | None = "t") -> Answer:
    """One request that counts against the limit (a 404 for an unknown run, when admitted)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.get(f"{fake.url}/v2/action-runs/nope", headers=headers) as response:
        await response.read()
        return Answer(response.status, response.headers)


def budget(answer: Answer) -> tuple[str, str, str]:
    """(Limit, Remaining, Reset) as the answer states them."""
    h = answer.headers
    return h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"], h["X-RateLimit-Reset"]


# ---------------------------------------------------------------------------- window placement


@pytest.mark.parametrize(
    ("window", "first_reset", "after_3s"),
    [
        # A window from the first request: [0, 10) on the monotonic clock; at 3 s the budget
        # is still spent and the 429 says 7 s more.
        ("first_request", "1700000017", (429, "7")),
        # Aligned to epoch multiples: [..000, ..010); the window ends 3 s after the first
        # request, so at 3 s a fresh one has begun.
        ("aligned", "1700000010", (404, None)),
    ],
)
@pytest.mark.asyncio
async def test_where_a_window_starts(http, window, first_reset, after_3s):
    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(clock=clock, rate_limit=(2, 10.0), rate_limit_window=window) as fake:
        first = await get(http, fake)
        assert budget(first) == ("2", "1", first_reset)
        assert (await get(http, fake)).status == 404
        refused = await get(http, fake)
        assert refused.status == 429
        assert refused.headers["X-RateLimit-Reset"] == first_reset

        await clock.advance(3.0)
        later = await get(http, fake)
        assert (later.status, later.headers.get("Retry-After")) == after_3s


@pytest.mark.asyncio
async def test_an_aligned_window_after_a_pause_still_ends_on_an_epoch_multiple(http):
    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(
        clock=clock, rate_limit=(5, 10.0), rate_limit_window="aligned", reset_format="delta"
    ) as fake:
        assert budget(await get(http, fake)) == ("5", "4", "3")
        await clock.advance(25.5)  # wall ..032.5: inside [..030, ..040)
        assert budget(await get(http, fake)) == ("5", "4", "8")  # ceil(7.5)
        await clock.advance(7.5)  # exactly ..040: a new window
        assert budget(await get(http, fake)) == ("5", "4", "10")


@pytest.mark.asyncio
async def test_a_first_request_window_after_a_pause_starts_at_that_request(http):
    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(clock=clock, rate_limit=(5, 10.0), reset_format="delta") as fake:
        assert budget(await get(http, fake)) == ("5", "4", "10")
        await clock.advance(25.5)
        assert budget(await get(http, fake)) == ("5", "4", "10")


@pytest.mark.asyncio
async def test_aligned_windows_keep_the_cooldown_after_429(http):
    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(
        clock=clock, rate_limit=(1, 10.0), rate_limit_window="aligned", cooldown_after_429=60.0
    ) as fake:
        assert (await get(http, fake)).status == 404
        refused = await get(http, fake)
        assert (refused.status, refused.headers["Retry-After"]) == (429, "60")
        await clock.advance(3.0)  # a new aligned window, but still cooling down
        assert (await get(http, fake)).headers["Retry-After"] == "57"
        await clock.advance(57.0)
        assert (await get(http, fake)).status == 404


@pytest.mark.asyncio
async def test_rate_limit_headers_on_429_only_as_the_partner_openapi_declares_them(http):
    # The Workflow API as its OpenAPI describes it: successes say nothing of the budget; the
    # 429 carries Limit, Remaining and Reset beside Retry-After, and starts the cool-down.
    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(
        clock=clock,
        rate_limit=(2, 10.0),
        rate_limit_headers="on_429",
        cooldown_after_429=60.0,
        reset_format="delta",
    ) as fake:
        for _ in range(2):
            ok = await get(http, fake)
            assert ok.status == 404
            assert not [name for name in ok.headers if name.lower().startswith("x-ratelimit")]
        refused = await get(http, fake)
        assert refused.status == 429
        assert budget(refused) == ("2", "0", "60")
        assert refused.headers["Retry-After"] == "60"
        await clock.advance(60.0)
        again = await get(http, fake)
        assert again.status == 404
        assert "X-RateLimit-Remaining" not in again.headers
        fake.rate_limit_headers = "always"  # like the formats, it may change on a live server
        assert budget(await get(http, fake)) == ("2", "0", "10")


# ---------------------------------------------------------------------------- buckets per token


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.asyncio
async def test_per_token_buckets_refuse_only_the_token_that_overspent(http, per_token):
    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(
        clock=clock, rate_limit=(2, 10.0), rate_limit_per_token=per_token, cooldown_after_429=60
    ) as fake:
        assert [(await get(http, fake, "heavy")).status for _ in range(3)] == [404, 404, 429]
        light = await get(http, fake, "light")
        if per_token:
            # The light user's own bucket: untouched by the heavy one's spending and 429.
            assert light.status == 404
            assert budget(light)[:2] == ("2", "1")
            assert fake.stats.rate_limited_by_token == {"heavy": 1}
        else:
            # One bucket for everybody: the heavy user's 429 froze the light one too.
            assert light.status == 429
            assert fake.stats.rate_limited_by_token == {"heavy": 1, "light": 1}
        assert fake.stats.rate_limited == sum(fake.stats.rate_limited_by_token.values())


@pytest.mark.asyncio
async def test_requests_without_a_bearer_token_share_one_bucket(http):
    async with FakeZapier(
        clock=FakeClock(wall_start=WALL), rate_limit=(1, 10.0), rate_limit_per_token=True
    ) as fake:
        assert (await get(http, fake, None)).status == 401  # admitted, then not authenticated
        assert (await get(http, fake, None)).status == 429
        assert (await get(http, fake, "t")).status == 404
        assert fake.stats.rate_limited_by_token == {"": 1}


@pytest.mark.asyncio
async def test_rate_limit_for_gives_a_token_its_own_budget(http):
    asked: list[str] = []

    def budget_for(token: str) -> tuple[int, float] | None:
        asked.append(token)
        return {"partner-limited": (1, 5.0)}.get(token)

    clock = FakeClock(wall_start=WALL)
    async with FakeZapier(
        clock=clock,
        rate_limit=(3, 10.0),
        rate_limit_per_token=True,
        rate_limit_for=budget_for,
        reset_format="delta",
    ) as fake:
        assert budget(await get(http, fake, "partner-limited")) == ("1", "0", "5")
        refused = await get(http, fake, "partner-limited")
        assert (refused.status, refused.headers["Retry-After"]) == (429, "5")
        assert budget(await get(http, fake, "default")) == ("3", "2", "10")
        assert (await get(http, fake, "default")).status == 404
        assert asked == ["partner-limited", "default"]  # once per bucket, not per request
        await clock.advance(5.0)
        assert (await get(http, fake, "partner-limited")).status == 404


@pytest.mark.asyncio
async def test_rate_limit_for_alone_limits_only_the_tokens_it_sizes(http):
    async with FakeZapier(
        clock=FakeClock(wall_start=WALL),
        rate_limit_per_token=True,
        rate_limit_for=lambda token: (1, 60.0) if token == "limited" else None,
    ) as fake:
        free = [await get(http, fake, "free") for _ in range(3)]
        assert [a.status for a in free] == [404, 404, 404]
        assert "X-RateLimit-Limit" not in free[0].headers
        assert [(await get(http, fake, "limited")).status for _ in range(2)] == [404, 429]


@pytest.mark.asyncio
async def test_a_bad_budget_from_rate_limit_for_is_a_server_error(http, caplog):
    async with FakeZapier(
        clock=FakeClock(), rate_limit_per_token=True, rate_limit_for=lambda token: (0, 10.0)
    ) as fake:
        assert (await get(http, fake)).status == 500
    assert "rate_limit_for returned a budget that is not (limit >= 1" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_limit_window": "sliding"}, "rate_limit_window must be one of"),
        ({"rate_limit_window": True}, "rate_limit_window must be one of"),
        ({"rate_limit_per_token": 1}, "rate_limit_per_token must be a bool"),
        ({"rate_limit_for": 5, "rate_limit_per_token": True}, "rate_limit_for must be None or"),
        ({"rate_limit_for": lambda t: None}, "rate_limit_for needs rate_limit_per_token=True"),
        ({"rate_limit_headers": "never"}, "rate_limit_headers must be one of"),
    ],
)
def test_nonsense_rate_limit_knobs_are_refused(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        FakeZapier(**kwargs)


def test_rate_limit_knobs_are_fixed_after_construction_and_default_to_todays_behaviour():
    fake = FakeZapier(rate_limit=(5, 1.0))
    assert (fake.rate_limit_window, fake.rate_limit_per_token, fake.rate_limit_for) == (
        "first_request",
        False,
        None,
    )
    assert fake.rate_limit_headers == "always"
    for name, value in [
        ("rate_limit_window", "aligned"),
        ("rate_limit_per_token", True),
        ("rate_limit_for", lambda t: None),
    ]:
        with pytest.raises(attrs.exceptions.FrozenAttributeError):
            setattr(fake, name, value)
    assert "rate_limited_by_token" not in repr(fake.stats)  # tokens are secrets


# ---------------------------------------------------------------------------- bounded memory


def test_idle_token_buckets_are_dropped_and_come_back_fresh():
    asked: list[str] = []

    def budget_for(token: str) -> tuple[int, float]:
        asked.append(token)
        return (2, 10.0)

    limiter = _RateLimiter((2, 10.0), 0.0, aligned=False, per_token=True, budget_for=budget_for)
    answers = [limiter.admit("first", 0.0, WALL) for _ in range(3)]
    assert [a is not None and a.allowed for a in answers] == [True, True, False]
    # A day of users cycling through, one request each, one per second: ~10 are active in
    # any 10-s window, so the table stays near the sweep threshold instead of growing.
    peak = 0
    for i in range(100_000):
        limiter.admit(f"user-{i}", 1.0 + i, WALL + 1.0 + i)
        peak = max(peak, limiter.buckets)
    assert peak <= 1024
    # "first" went idle and was dropped: it comes back with a fresh budget, asked again.
    asked.clear()
    again = limiter.admit("first", 200_000.0, WALL + 200_000.0)
    assert again is not None
    assert (again.allowed, again.remaining) == (True, 1)
    assert asked == ["first"]


# ---------------------------------------------------------------------------- the JWT's claim

PARTNER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PARTNER_PUBLIC = (
    PARTNER_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


async def exchange(
    http: aiohttp.ClientSession, fake: FakeZapier, subject: str, rate_limit: Any
) -> str:
    """Exchange a partner JWT for `subject` (with this `rate_limit` claim) for a token."""
    now = int(fake.clock.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant_id": "acme",
        "iss": "partner",
        "aud": "connect.zapier.com",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    if rate_limit is not None:
        claims["rate_limit"] = rate_limit
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_id": "id",
        "client_secret": "secret",
        "subject_token": jwt.encode(claims, PARTNER_KEY, algorithm="RS256", headers={"kid": "k1"}),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }
    async with http.post(fake.token_url, data=form) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["access_token"]
        assert isinstance(token, str)
        return token


@pytest.mark.asyncio
async def test_a_users_budget_can_follow_the_rate_limit_claim_of_its_partner_jwt(http):
    auth = FakeAuthServer(partner_keys={"k1": PARTNER_PUBLIC})

    def budget_for(token: str) -> tuple[int, float] | None:
        claim = (auth.claims_of(token) or {}).get("rate_limit") or {}
        override = claim.get("limit_override")
        return None if override is None else (override, 300.0)

    async with FakeZapier(
        clock=FakeClock(wall_start=WALL),
        auth_server=auth,
        rate_limit=(200, 300.0),
        rate_limit_per_token=True,
        rate_limit_for=budget_for,
    ) as fake:
        small = await exchange(http, fake, "user-1", {"limit_override": 2})
        plain = await exchange(http, fake, "user-2", None)
        assert auth.claims_of(small) is not None
        assert auth.claims_of("never-issued") is None
        assert [(await get(http, fake, small)).status for _ in range(3)] == [404, 404, 429]
        assert budget(await get(http, fake, plain))[:2] == ("200", "199")
        assert fake.stats.rate_limited_by_token == {small: 1}
