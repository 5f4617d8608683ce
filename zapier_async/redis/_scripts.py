"""The Lua scripts of the shared limiter and of the run store, and the run-once wrapper.

Every decision about shared state is one of these scripts, so it is atomic across processes.
See `zapier_async.redis._limiter` and `zapier_async.redis._store` for what they do.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACQUIRE",
    "ONCE_TTL",
    "RECORD",
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


ACQUIRE: Final = once(
    """
local st, zs, pk = KEYS[1], KEYS[2], KEYS[3]
local slot, lease = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function num(f)
  local v = redis.call('HGET', st, f)
  if v then return tonumber(v) end
  return nil
end
local epoch = redis.call('HGET', st, 'epoch')
if not epoch then
  -- No budget here: first use, or Redis lost it (FLUSHALL, a restart without persistence,
  -- an eviction). A new epoch starts in probe mode; slots granted before it belong to a
  -- budget nobody knows any more (RECORD ignores their answers' budget), and whatever is
  -- left of its in-flight set and probe lock goes with it.
  epoch = t[1] .. '.' .. t[2] .. '/' .. slot
  redis.call('DEL', zs, pk)
  redis.call('HSET', st, 'epoch', epoch, 'probe_from', redis.call('HGET', st, 'granted') or '0')
end
local expired = redis.call('ZRANGEBYSCORE', zs, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', zs, '-inf', now)
  redis.call('HINCRBY', st, 'answered', #expired)
end
local function to_probe()
  redis.call('HSET', st, 'mode', 'probe', 'probe_from', redis.call('HGET', st, 'granted') or '0')
  redis.call('HDEL', st, 'anchor', 'reset_at', 'next_at', 'probe_at')
  return 'probe'
end
local mode = redis.call('HGET', st, 'mode') or 'probe'
local frozen = num('frozen_until')
if frozen then
  if now < frozen then return {0, tostring(frozen - now), 'frozen'} end
  redis.call('HDEL', st, 'frozen_until')
  mode = to_probe()
end
local granted = tonumber(redis.call('HGET', st, 'granted') or '0')
if mode == 'window' and now >= num('reset_at') then mode = to_probe() end
local probe = 0
local function take_probe()
  return redis.call('SET', pk, slot, 'NX', 'PX', math.max(1, math.floor(lease * 1000)))
end
local function paced(avail, until_)
  local gap = math.max(until_ - now, 0) / avail
  local burst = math.max(1, math.floor(avail * 0.1))
  local next_at = num('next_at') or now
  local allowed = next_at - (burst - 1) * gap
  if allowed > now then return allowed - now end
  redis.call('HSET', st, 'next_at', tostring(math.max(next_at, now) + gap))
  return nil
end
if mode == 'probe' then
  if not take_probe() then return {0, '-1', 'probe'} end
  probe = 1
elseif mode == 'window' then
  local reset_at = num('reset_at')
  local avail = num('anchor') - granted
  local limit = num('limit')
  if limit and avail > limit then avail = limit end
  if avail <= 0 then return {0, tostring(reset_at - now), 'exhausted'} end
  local probe_at = num('probe_at')
  if probe_at and probe_at >= reset_at then probe_at = nil end
  if probe_at and now < probe_at then
    if avail <= 1 then return {0, tostring(probe_at - now), 'boundary'} end
    local wait = paced(avail - 1, probe_at)
    if wait then return {0, tostring(wait), 'paced'} end
  elseif probe_at then
    if not take_probe() then return {0, '-1', 'boundary'} end
    probe = 1
  else
    local wait = paced(avail, reset_at)
    if wait then return {0, tostring(wait), 'paced'} end
  end
end
local seq = redis.call('HINCRBY', st, 'granted', 1)
redis.call('ZADD', zs, tostring(now + lease), slot)
return {1, tostring(probe), redis.call('HGET', st, 'answered') or '0',
        redis.call('HGET', st, 'opener_seq') or '0', epoch, tostring(seq)}
""",
    store_if="reply[1] == 1",
)

RECORD: Final = once(
    """
local st, zs, pk = KEYS[1], KEYS[2], KEYS[3]
local slot = ARGV[1]
local answered_at_grant = tonumber(ARGV[2])
local opener_seq_at_grant = ARGV[3]
local probe = ARGV[4] == '1'
local kind = ARGV[5]
local remaining, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local reset_after, prec = tonumber(ARGV[8]), tonumber(ARGV[9])
local sent_ago, recv_ago = tonumber(ARGV[10]), tonumber(ARGV[11])
local freeze, default_period, narrow = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local seq = tonumber(ARGV[17])
-- Whether the slot was granted from the budget Redis holds now (not one Redis lost since).
local ours = ARGV[16] ~= '' and redis.call('HGET', st, 'epoch') == ARGV[16]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function num(f)
  local v = redis.call('HGET', st, f)
  if v then return tonumber(v) end
  return nil
end
if slot ~= '' then
  local held = redis.call('ZREM', zs, slot) == 1
  if held and ours then
    if kind == 'undo' then
      redis.call('HINCRBY', st, 'granted', -1)
    else
      redis.call('HINCRBY', st, 'answered', 1)
    end
  end
  if redis.call('GET', pk) == slot then redis.call('DEL', pk) end
end
if freeze then
  local until_ = now + freeze
  local cur = num('frozen_until')
  if not cur or until_ > cur then redis.call('HSET', st, 'frozen_until', tostring(until_)) end
  redis.call('HSET', st, 'mode', 'probe', 'probe_from', redis.call('HGET', st, 'granted') or '0')
  redis.call('HDEL', st, 'anchor', 'reset_at', 'next_at', 'probe_at')
  return 1
end
-- A straggler tells nothing of the budget now: granted from a budget Redis lost (its
-- answers-at-grant count answers of that budget: a stale anchor), or granted before the
-- bucket went back to probing (its Remaining may predate the 429 or the window's end).
if kind ~= 'answer' or not ours then return 0 end
local mode = redis.call('HGET', st, 'mode') or 'probe'
if mode == 'probe' and seq and seq <= (num('probe_from') or 0) then return 0 end
if not remaining then
  if mode == 'probe' and ARGV[15] == '1' then redis.call('HSET', st, 'mode', 'open') end
  return 0
end
local recv, sent = now - recv_ago, now - sent_ago
local hi = recv + (reset_after or default_period)
if hi <= now then return 0 end
local est = remaining + answered_at_grant + 1
if mode ~= 'window' then
  redis.call('HSET', st, 'mode', 'window', 'anchor', tostring(est), 'reset_at', tostring(hi))
  redis.call('HDEL', st, 'next_at')
else
  if est > num('anchor') then redis.call('HSET', st, 'anchor', tostring(est)) end
  if hi > num('reset_at') then redis.call('HSET', st, 'reset_at', tostring(hi)) end
end
if not limit then return 1 end
redis.call('HSET', st, 'limit', tostring(limit))
local p_lo, p_hi = num('p_lo'), num('p_hi')
local opener_r = num('opener_r')
if reset_after and remaining == limit - 1 then
  local prev_s = num('opener_s')
  if prev_s and sent <= prev_s then return 1 end
  local lo_c, hi_c = hi - prec - recv, hi - sent
  local new_lo, new_hi = math.max(p_lo or lo_c, lo_c), math.min(p_hi or hi_c, hi_c)
  if prev_s then new_hi = math.min(new_hi, recv - prev_s) end
  if new_lo > new_hi then new_lo, new_hi = lo_c, hi_c end
  p_lo, p_hi, opener_r = new_lo, new_hi, recv
  redis.call('HSET', st, 'opener_s', tostring(sent), 'opener_r', tostring(recv),
             'p_lo', tostring(p_lo), 'p_hi', tostring(p_hi))
  redis.call('HINCRBY', st, 'opener_seq', 1)
elseif probe and opener_r and p_lo
    and opener_seq_at_grant == (redis.call('HGET', st, 'opener_seq') or '0') then
  p_lo = math.max(p_lo, sent - opener_r)
  if p_lo > p_hi then
    redis.call('HDEL', st, 'p_lo', 'p_hi', 'probe_at')
    return 1
  end
  redis.call('HSET', st, 'p_lo', tostring(p_lo))
end
if opener_r and p_lo and p_hi then
  local p = p_hi
  if p_hi - p_lo > narrow then p = (p_lo + p_hi) / 2 end
  redis.call('HSET', st, 'probe_at', tostring(opener_r + p))
end
return 1
"""
)


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
