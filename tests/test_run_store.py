"""The run store (issue #18, idempotent create by key): one table of cases, run against
`MemoryRunStore` and `RedisRunStore` (a real redis-server from the fixture; those cases skip
without one), plus what only Redis has: processes racing, TTLs, stalls past the timeout."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import zapier_async as za
from zapier_async import _protocol as proto
from zapier_async._runstore import (
    DEFAULT_RUN_STORE_TTL,
    RETENTION,
    Claim,
    MemoryRunStore,
    RunStore,
)

HELPER = Path(__file__).resolve().parent / "_journal_worker.py"
ROOT = HELPER.parent.parent


def token_of(run_id: str) -> str:
    return proto.encode_continuation_token(proto.RunLocator(kind="action_run", run_id=run_id))


@pytest_asyncio.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RunStore]:
    if request.param == "memory":
        yield MemoryRunStore(owner="me")
        return
    pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")
    from zapier_async.redis import RedisRunStore

    server = request.getfixturevalue("redis_server")  # a sync fixture: skips without one
    aioredis = pytest.importorskip("redis.asyncio")
    client = aioredis.from_url(server.url, socket_timeout=5)
    try:
        yield RedisRunStore(client, prefix="t", owner="me")
    finally:
        await client.aclose()


async def another(store: RunStore) -> RunStore:
    """A second store over the same records (another process), or the same one in memory."""
    if isinstance(store, MemoryRunStore):
        return store
    from zapier_async.redis import RedisRunStore

    assert isinstance(store, RedisRunStore)
    return RedisRunStore(store._redis, prefix="t", owner="other")


# --- the shared table: both stores ------------------------------------------------------


def test_both_stores_implement_the_protocol(store):
    assert isinstance(store, RunStore)
    assert store.ttl == DEFAULT_RUN_STORE_TTL == 6 * 86_400 < RETENTION


@pytest.mark.asyncio
async def test_twenty_concurrent_begins_exactly_one_sends(store):
    others = [store if i % 2 else await another(store) for i in range(20)]
    claims = await asyncio.gather(*(s.begin("order-42") for s in others))
    states = Counter(c.state for c in claims)
    assert states == {"send": 1, "unknown": 19}
    assert all(c.key == "order-42" for c in claims)


@pytest.mark.asyncio
async def test_redelivery_after_record_resumes_the_same_run(store):
    first = await store.begin("k")
    assert first.state == "send"
    assert first.may_send
    assert first.owner == "me"
    assert first.since is not None
    assert await store.record("k", "run-1", token_of("run-1")) is True
    again = await (await another(store)).begin("k")
    assert again.state == "resume"
    assert not again.may_send
    assert again.run_id == "run-1"
    assert again.continuation_token == token_of("run-1")
    assert proto.decode_continuation_token(again.continuation_token).run_id == "run-1"
    assert await store.get("k") == again
    # Recording is idempotent; another run for the same key is refused, the first kept.
    assert await store.record("k", "run-1", token_of("run-1")) is True
    assert await store.record("k", "run-2", token_of("run-2")) is False
    assert (await store.begin("k")).run_id == "run-1"


@pytest.mark.asyncio
async def test_a_key_left_sending_is_unknown_never_send(store):
    assert (await store.begin("k")).state == "send"  # ...and its process died here
    other = await another(store)
    for _ in range(3):
        claim = await other.begin("k")
        assert claim.state == "unknown"
        assert claim.run_id is None
        assert claim.continuation_token is None
        assert claim.owner == "me"  # who began it, for the report
    assert (await store.get("k")) == Claim(key="k", state="unknown", owner="me", since=claim.since)


@pytest.mark.asyncio
async def test_fail_frees_the_key_but_never_a_recorded_run(store):
    assert (await store.begin("k")).state == "send"
    assert await store.fail("k") is True
    assert await store.get("k") is None
    assert (await (await another(store)).begin("k")).state == "send"
    await store.record("k", "run-1", token_of("run-1"))
    assert await store.fail("k") is False  # a run exists: failing it would allow a second
    assert (await store.begin("k")).state == "resume"
    assert await store.fail("absent") is False


@pytest.mark.asyncio
async def test_forget_deletes_whatever_the_state(store):
    await store.begin("a")
    await store.begin("b")
    await store.record("b", "run-b", token_of("run-b"))
    assert await store.forget("a") is True
    assert await store.forget("b") is True
    assert await store.forget("b") is False
    assert (await store.begin("a")).state == "send"
    assert (await store.begin("b")).state == "send"


@pytest.mark.asyncio
async def test_the_stored_token_is_the_canonical_secret_free_one(store):
    # A token carrying an extra field (say, a credential someone put there) is stored as
    # the library's own encoding of the run it names: nothing else rides along.
    payload = {"v": 1, "k": "action_run", "id": "run-1", "auth": "sk-SECRET"}
    raw = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    await store.begin("k")
    assert await store.record("k", "run-1", "za1." + raw) is True
    claim = await store.get("k")
    assert claim is not None
    assert claim.continuation_token == token_of("run-1")
    assert "SECRET" not in repr(claim)
    assert "SECRET" not in base64.urlsafe_b64decode(claim.continuation_token[4:] + "==").decode()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "run_id", "token", "field"),
    [
        ("", "run-1", "run-1", "key"),
        ("k" * 1025, "run-1", "run-1", "key"),
        (7, "run-1", "run-1", "key"),
        ("k", "", "run-1", "run_id"),
        ("k", "run-1", "run-2", "continuation_token"),
        ("k", "run-1", "za1.!!!", "token"),
    ],
)
async def test_bad_arguments_are_typed_errors(store, key, run_id, token, field):
    with pytest.raises(za.InvalidRequestError) as info:
        await store.record(key, run_id, token)
    assert info.value.field == field
    if field == "key":
        for call in (store.begin, store.fail, store.forget, store.get):
            with pytest.raises(za.InvalidRequestError):
                await call(key)


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf, RETENTION, 7 * 86_400 + 1, "6d", True])
def test_a_ttl_not_under_seven_days_is_refused(ttl):
    with pytest.raises(za.InvalidRequestError, match=r"7 days|number of seconds") as info:
        MemoryRunStore(ttl=ttl)
    assert info.value.field == "ttl"


def test_the_memory_store_forgets_a_key_after_its_ttl() -> None:
    now = [1000.0]
    store = MemoryRunStore(ttl=60.0, clock=lambda: now[0])

    async def scenario() -> None:
        assert (await store.begin("k")).state == "send"
        now[0] += 59.0
        assert (await store.begin("k")).state == "unknown"
        await store.record("k", "run-1", "run-1")  # refreshes the TTL
        now[0] += 59.0
        assert (await store.begin("k")).state == "resume"
        now[0] += 1.0
        assert await store.get("k") is None
        assert (await store.begin("k")).state == "send"
        assert len(store) == 1

    asyncio.run(scenario())


# --- Redis only -----------------------------------------------------------------------------


def redis_or_skip() -> Any:
    return pytest.importorskip("redis.asyncio", reason="the 'redis' extra is not installed")


@pytest.mark.asyncio
async def test_redis_sets_a_ttl_under_seven_days_and_stores_no_more_than_it_needs(rclient):
    redis_or_skip()
    from zapier_async.redis import RedisRunStore

    store = RedisRunStore(rclient, prefix="t", owner="me", ttl=3600.0)
    await store.begin("k")
    assert 3_500_000 < await rclient.pttl("t:k:k") <= 3_600_000
    await rclient.pexpire("t:k:k", 1000)
    await store.record("k", "run-1", token_of("run-1"))  # refreshed by record
    assert 3_500_000 < await rclient.pttl("t:k:k") <= 3_600_000
    assert set(await rclient.hkeys("t:k:k")) == {b"s", b"o", b"t", b"r", b"c"}
    default = RedisRunStore(rclient, prefix="d")
    await default.begin("k")
    assert 0 < await rclient.pttl("d:k:k") <= DEFAULT_RUN_STORE_TTL * 1000 < RETENTION * 1000
    with pytest.raises(za.InvalidRequestError):
        RedisRunStore(rclient, ttl=RETENTION)


@pytest.mark.asyncio
async def test_redis_works_with_a_client_that_decodes_responses(redis_server):
    aioredis = redis_or_skip()
    from zapier_async.redis import RedisRunStore

    client = aioredis.from_url(redis_server.url, socket_timeout=5, decode_responses=True)
    try:
        store = RedisRunStore(client, prefix="t", owner="me")
        assert (await store.begin("k")).state == "send"
        await store.record("k", "run-1", token_of("run-1"))
        claim = await store.begin("k")
        assert (claim.state, claim.run_id, claim.owner) == ("resume", "run-1", "me")
        assert await store.get("k") == claim
    finally:
        await client.aclose()


def test_two_processes_of_twenty_tasks_each_send_every_key_once(redis_server):
    redis_or_skip()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDEVMODE"}
    args = ["race", "--redis-url", redis_server.url, "--prefix", "race", "--keys", "30"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # a barrier: both race from the start
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=60)[0].splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    sent = Counter(key for result in results for key in result["send"])
    assert sent == {f"key-{i}": 1 for i in range(30)}
    states = Counter()
    for result in results:
        states.update(result["states"])
    assert states == {"send": 30, "unknown": 2 * 30 * 20 - 30}


@pytest.mark.asyncio
async def test_a_begin_stalled_past_the_socket_timeout_sends_once(redis_server):
    aioredis = redis_or_skip()
    from zapier_async.redis import RedisRunStore
    from zapier_async.testing._redis import StallProxy

    async with StallProxy(redis_server.port) as proxy:
        # redis-py's default retries: Redis(host=...) re-sends a command that timed out.
        client = aioredis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.5)
        try:
            store = RedisRunStore(client, prefix="s", owner="me")
            assert (await store.begin("warm-up")).state == "send"  # the scripts are loaded
            assert await store.fail("warm-up") is True
            proxy.stall_next(b"s:k:item-1", 1.2)
            first = await store.begin("item-1")
            assert proxy.stalls == 1
            # Redis ran the script twice; the re-run answers as the first: "send", not the
            # "unknown" the re-run would find (nothing sent, reported as maybe sent).
            assert first.state == "send"
            assert (await store.begin("item-1")).state == "unknown"  # a second call
            # A fail() that Redis runs twice answers as its first run did (True), and the
            # re-run deletes nothing (it would delete another caller's newer "sending").
            proxy.stall_next(b"s:k:item-1", 1.2)
            assert await store.fail("item-1") is True
            assert proxy.stalls == 2
            assert (await store.begin("item-1")).state == "send"
        finally:
            await client.aclose()
