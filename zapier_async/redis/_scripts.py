"""The Lua scripts of the shared limiter and of the run store, and the run-once wrapper.

Every decision about shared state is one of these scripts, so it is atomic across processes.
See `zapier_async.redis._limiter` and `zapier_async.redis._store` for what they do.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUCKET_COMMIT",
    "BUCKET_READ",
    "ONCE_TTL",
    "STORE_BEGIN",
    "STORE_FAIL",
    "STORE_FORGET",
    "STORE_RECORD",
    "once",
    "text",
]

ONCE_TTL: Final = 600.0
"""Seconds Redis keeps the reply of a script that must run once, under its request id.

A command that timed out is re-sent by redis-py's own retries (``Redis(host=...)`` retries
a timed-out command up to 10 times), and Redis may then run it twice: the first copy was
only late. Each such script takes a request id (the last key) and the TTL (the last
argument); a run that finds the id answers with the first run's reply and changes nothing.
Ten minutes is far above any client's whole retry span."""


def once(body: str, *, store_if: str = "true") -> str:
    """Wrap a Lua script body so that re-runs with the same request id change nothing.

    The body reads its own ``KEYS``/``ARGV`` by position (never ``#KEYS``/``#ARGV``); the
    request key is appended after its keys and the TTL (ms) after its arguments. Replies
    are kept as JSON (numbers, strings, nested arrays: what these scripts return), and only
    when ``store_if`` (a Lua expression on ``reply``) holds: a "not yet" of the limiter
    changed nothing, so a re-run may answer afresh.
    """
    return f"""
local once_key, once_ttl = KEYS[#KEYS], tonumber(ARGV[#ARGV])
local once_done = redis.call('GET', once_key)
if once_done then return cjson.decode(once_done) end
local function body()
{body}
end
local reply = body()
if {store_if} then redis.call('SET', once_key, cjson.encode(reply), 'PX', once_ttl) end
return reply
"""


# The shared limiter (`_limiter.RedisLimiter`): one hash per bucket, ``e`` (epoch: which
# budget this is; a new one after Redis lost the state), ``v`` (version, +1 per write), ``s``
# (the serialised `Budget` and its slots in flight). The rules run in Python; Redis only
# keeps the state and lets one writer at a time replace it (compare-and-set on the version).

_LINE: Final = """
local function line(key, owner, entry, since, ttl)
  redis.call('HSET', key, owner, entry)
  redis.call('PEXPIRE', key, ttl)
  local all = redis.call('HGETALL', key)
  local first, poll, bulk, n = 0, 0, 0, 0
  for j = 1, #all, 2 do
    local t, a, b, c = string.match(all[j + 1], '^(%S+) (%d+) (%d+) (%d+)$')
    t = t and tonumber(t)
    if not t or t < tonumber(since) then
      redis.call('HDEL', key, all[j])
    elseif all[j] ~= owner then
      first, poll, bulk, n = first + tonumber(a), poll + tonumber(b), bulk + tonumber(c), n + 1
    end
  end
  return first .. ' ' .. poll .. ' ' .. bulk .. ' ' .. n
end
"""
"""Each process's line (its waiters per priority) in a bucket's ``line`` hash, written with
every read and commit of the bucket: ``line(key, owner, entry, since, ttl)`` sets this
process's entry (``"time first poll bulk"``, time on the shared clock), drops entries written
before ``since`` (their process stopped using the bucket), and answers the other processes'
waiters and their number, ``"first poll bulk processes"``."""

BUCKET_READ: Final = (
    _LINE
    + """
local f = redis.call('HMGET', KEYS[1], 'e', 'v', 's')
local others = line(KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local t = redis.call('TIME')
return {f[1] or '', f[2] or '0', f[3] or '', others, t[1], t[2]}
"""
)
"""KEYS: the bucket, its line hash. ARGV: owner, its line entry, since, TTL (ms) (see
`_LINE`). Reply: {epoch, version, state, the other processes' line, server seconds,
microseconds}."""

BUCKET_COMMIT: Final = once(
    _LINE
    + """
local k = KEYS[1]
local f = redis.call('HMGET', k, 'e', 'v', 's')
local e, v = f[1] or '', f[2] or '0'
local others = line(KEYS[2], ARGV[6], ARGV[7], ARGV[8], ARGV[5])
local t = redis.call('TIME')
if e ~= ARGV[1] or v ~= ARGV[2] then
  return {0, e, v, f[3] or '', others, t[1], t[2]}
end
local nv = tostring(tonumber(v) + 1)
redis.call('HSET', k, 'e', ARGV[4], 'v', nv, 's', ARGV[3])
redis.call('PEXPIRE', k, ARGV[5])
return {1, ARGV[4], nv, '', others, t[1], t[2]}
""",
    store_if="reply[1] == 1",
)
"""KEYS: the bucket, its line hash. ARGV: expected epoch ('' for none), expected version, new
state, new epoch, TTL (ms), owner, its line entry, since (`_LINE`). Reply: {1, epoch, new
version, '', the other processes' line, time...} when written; else {0, the epoch, version
and state found, line, time...}: the caller recomputes from them and tries again. Run once
per request id: a re-sent commit answers "written" and writes nothing more. The line is
written either way (it is not part of the state compared)."""


def text(value: object) -> str:
    """A Redis reply as text (bytes decoded; clients with ``decode_responses`` give str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


# The run store (`_store.RedisRunStore`): one hash per key, ``s`` (``sending``/``sent``),
# ``o`` (owner), ``t`` (Redis server time of the last write, epoch seconds), ``r`` (run id),
# ``c`` (continuation token). Each reply is {state, owner, since, run id, token}.
_NOW: Final = """
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
"""

# KEYS: the record. ARGV: owner, ttl (ms). Absent -> sending, "send"; else what is there.
STORE_BEGIN: Final = once(
    _NOW
    + """
local k = KEYS[1]
local f = redis.call('HMGET', k, 's', 'o', 't', 'r', 'c')
if f[1] then
  if f[4] then return {'resume', f[2] or '', f[3] or '', f[4], f[5] or ''} end
  return {'unknown', f[2] or '', f[3] or '', '', ''}
end
local t = now()
redis.call('HSET', k, 's', 'sending', 'o', ARGV[1], 't', t)
redis.call('PEXPIRE', k, ARGV[2])
return {'send', ARGV[1], t, '', ''}
"""
)

# KEYS: the record. ARGV: run id, token, owner, ttl (ms). 1: recorded; 0: another run is.
STORE_RECORD: Final = once(
    _NOW
    + """
local k = KEYS[1]
local r = redis.call('HGET', k, 'r')
if r and r ~= ARGV[1] then return 0 end
redis.call('HSET', k, 's', 'sent', 'r', ARGV[1], 'c', ARGV[2], 't', now())
redis.call('HSETNX', k, 'o', ARGV[3])
redis.call('PEXPIRE', k, ARGV[4])
return 1
"""
)

# KEYS: the record. Removes it only while it is "sending" (never a recorded run).
STORE_FAIL: Final = once(
    """
if redis.call('HGET', KEYS[1], 's') == 'sending' then return redis.call('DEL', KEYS[1]) end
return 0
"""
)

# KEYS: the record.
STORE_FORGET: Final = once("return redis.call('DEL', KEYS[1])")
