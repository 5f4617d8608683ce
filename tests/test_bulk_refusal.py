"""run_many stops sending creates after a refusal that would be the same for every item."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

import pytest
from _util import client_for, eventually

import zapier_async as za
from zapier_async import errors
from zapier_async._protocol import Request, Response
from zapier_async._transport import AiohttpTransport
from zapier_async.testing import FakeZapier


def request(i: int) -> za.RunRequest:
    return za.RunRequest(action="core:x", authentication=None, inputs={"i": i}, key=i)


def stop_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "stopped sending" in r.getMessage()]


@pytest.mark.asyncio
async def test_a_wrong_token_sends_a_handful_of_creates_not_thousands(caplog):
    concurrency = 10
    n = 1000
    async with FakeZapier(seed=1, tokens={"good"}, record_requests=False) as fake:
        async with client_for(fake, auth=za.BearerToken("wrong")) as client:
            outcomes = [o async for o in client.run_many(map(request, range(n)), concurrency=10)]
        creates = fake.stats.requests_by_endpoint["create"]
    # Every item has an outcome, each the refusal (nothing silently dropped).
    assert sorted(o.index for o in outcomes) == list(range(n))
    assert all(isinstance(o.error, errors.AuthenticationError) for o in outcomes)
    assert all(o.error.status == 401 for o in outcomes)  # type: ignore[union-attr]
    assert all(o.run_id is None for o in outcomes)
    # Only the creates already on their way when the first 401 came back were sent.
    assert 1 <= creates <= concurrency
    assert len(stop_records(caplog)) == 1


class RefuseCreatesAfter:
    """A transport that answers 403 to every create after the first `accepted` ones."""

    def __init__(self, accepted: int) -> None:
        self.inner = AiohttpTransport()
        self.accepted = accepted
        self.creates = 0

    async def send(
        self,
        request: Request,
        *,
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Response:
        if request.creates_run:
            self.creates += 1
            if self.creates > self.accepted:
                body = b'{"errors": [{"status": "403", "code": "forbidden", "title": "no"}]}'
                return Response(status=403, headers={"content-type": "application/json"}, body=body)
        return await self.inner.send(request, base_url=base_url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.asyncio
async def test_after_a_403_the_rest_fail_and_accepted_runs_are_still_followed(caplog):
    transport = RefuseCreatesAfter(accepted=3)
    n = 200
    outcomes: list[za.Outcome] = []
    async with (
        FakeZapier(seed=2, durations=math.inf, record_requests=False) as fake,
        client_for(fake, transport=transport) as client,
        client.run_many(map(request, range(n)), concurrency=4) as stream,
    ):

        async def consume() -> None:
            async for outcome in stream:
                outcomes.append(outcome)

        task = asyncio.create_task(consume())
        # Everything but the three accepted runs fails at once with the refusal.
        await eventually(lambda: len(outcomes) == n - 3)
        assert stream.refusal is not None
        assert isinstance(stream.refusal, errors.PermissionDeniedError)
        for run in fake.runs():
            fake.complete(run.id)
        await task
    assert transport.creates <= 4  # 3 accepted + the refused one(s) already on their way
    by_index = {o.index: o for o in outcomes}
    assert sorted(by_index) == list(range(n))
    accepted = [o for o in outcomes if o.run_id is not None]
    assert len(accepted) == 3
    assert all(o.ok and o.run is not None and o.run.succeeded for o in accepted)
    refused = [o for o in outcomes if o.run_id is None]
    assert all(isinstance(o.error, errors.PermissionDeniedError) for o in refused)
    assert fake.stats.runs_created == 3
    assert len(stop_records(caplog)) == 1


@pytest.mark.asyncio
async def test_a_per_item_refusal_does_not_stop_the_job(caplog):
    """A 400 says something about one item: the others are still sent."""
    async with FakeZapier(seed=3, record_requests=False) as fake:
        items: list[Any] = [request(i) for i in range(20)]
        # A bad __fake__ object is a 400 for that item only.
        items[0] = za.RunRequest(action="core:x", authentication=None, inputs={"__fake__": 1})
        async with client_for(fake) as client:
            outcomes = [o async for o in client.run_many(items, concurrency=2)]
    assert isinstance(next(o for o in outcomes if o.index == 0).error, errors.BadRequestError)
    assert sum(o.ok for o in outcomes) == 19
    assert not stop_records(caplog)
