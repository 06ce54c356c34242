"""The Lua scripts of the Redis spend store: a reservation's check-and-hold, and its settling,
each one atomic step in Redis (see store.py)."""

from __future__ import annotations

# KEYS, per check: the spend key, its holds hash, then the key of before when it has one.
# ARGV: usd to hold, the hold's field ("<minute slot>:<reservation id>"), the oldest slot still
# held, the holds' TTL (seconds), then per check: its hard limit ('' for none), its unseen
# spend, 1 when it has a key of before. A field's slot is the number it starts with; fields
# older than the oldest slot are deleted. Returns: admitted (1/0), then per check its spend
# and its holds (strings: Lua numbers would come back as integers).
RESERVE = """
local usd = tonumber(ARGV[1])
local hold = ARGV[2]
local oldest = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local out = {}
local holds = {}
local admitted = 1
local k = 1
local a = 5
while a <= #ARGV do
  local spent = tonumber(redis.call('GET', KEYS[k]) or '0')
  local hkey = KEYS[k + 1]
  k = k + 2
  if ARGV[a + 2] == '1' then
    spent = spent + tonumber(redis.call('GET', KEYS[k]) or '0')
    k = k + 1
  end
  local held = 0
  local fields = redis.call('HGETALL', hkey)
  for i = 1, #fields, 2 do
    local slot = tonumber(string.match(fields[i], '^%d+'))
    if slot == nil or slot < oldest then
      redis.call('HDEL', hkey, fields[i])
    else
      held = held + tonumber(fields[i + 1])
    end
  end
  if held < 0 then
    held = 0
  end
  if ARGV[a] ~= '' and spent + held + tonumber(ARGV[a + 1]) >= tonumber(ARGV[a]) then
    admitted = 0
  end
  holds[#holds + 1] = hkey
  out[#out + 1] = string.format('%.17g', spent)
  out[#out + 1] = string.format('%.17g', held)
  a = a + 3
end
if admitted == 1 and usd > 0 then
  for _, hkey in ipairs(holds) do
    redis.call('HSET', hkey, hold, ARGV[1])
    redis.call('EXPIRE', hkey, ttl)
  end
end
table.insert(out, 1, admitted)
return out
"""

# KEYS: the expiry index, the hash of settled reservations, then per budget: the spend key, its
# holds hash. ARGV: usd spent, the reservation's hold field ('' for none), (unused), the
# settling's id ('' for none), the settled hash's TTL, then per budget the epoch second its key
# may be deleted. Once per id: a retry of a write that timed out after Redis applied it
# changes nothing (returns 0). Spend as `add` writes it (no TTL, listed in the index); the hold
# is given back by deleting its field, which is harmless when the reserve never landed (it
# timed out before Redis ran it) or the hash expired.
SETTLE = """
if ARGV[4] ~= '' then
  if redis.call('HSETNX', KEYS[2], ARGV[4], 1) == 0 then
    return 0
  end
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
end
local usd = tonumber(ARGV[1])
local hold = ARGV[2]
local n = 0
for i = 3, #KEYS, 2 do
  n = n + 1
  if usd > 0 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
    redis.call('PERSIST', KEYS[i])
    redis.call('ZADD', KEYS[1], ARGV[5 + n], KEYS[i])
  end
  if hold ~= '' then
    redis.call('HDEL', KEYS[i + 1], hold)
  end
end
return 1
"""

# Batch lines' spend, each line at most once. KEYS: the expiry index, the hash of lines charged
# (per budget key set), then the spend keys. ARGV: the charged hash's TTL, the number of spend
# keys, the epoch second each may be deleted, then per line its id and usd. A line charged before
# (its write timed out after Redis applied it, and the line came back regrouped with others)
# adds nothing; the others' sum is added to every spend key as `add` writes it. Returns the sum.
CHARGE_LINES = """
local n = tonumber(ARGV[2])
local total = 0
local i = 3 + n
while i <= #ARGV do
  if redis.call('HSETNX', KEYS[2], ARGV[i], 1) == 1 then
    total = total + tonumber(ARGV[i + 1])
  end
  i = i + 2
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
if total > 0 then
  for b = 1, n do
    redis.call('INCRBYFLOAT', KEYS[2 + b], string.format('%.17g', total))
    redis.call('PERSIST', KEYS[2 + b])
    redis.call('ZADD', KEYS[1], ARGV[2 + b], KEYS[2 + b])
  end
end
return string.format('%.17g', total)
"""
