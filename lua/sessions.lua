#!lua name=TRS_LIB
--[[
The tower-redis-sessions function library.

Every store operation is exactly one FCALL of one of the functions below, so
each operation is atomic and costs one round trip.

Registration
  The crate replaces the placeholder TRS_LIB (here and in the function names)
  with "trs_" followed by the first 16 hex digits of the SHA-256 of this file,
  then registers it with FUNCTION LOAD REPLACE. Two versions of the crate
  therefore register two libraries side by side; two deployments of the same
  version share one library and keep apart through their key prefixes.

Keys (P = the deployment's key prefix, T = the token's routing tag)
  P{T}:s:<id>     hash, one session. <id> = base64url(SHA-256(token secret)):
                  Redis never sees a usable token.
                    v  lock version (1 after the first save, +1 per save)
                    b  sealed blob (HMAC-SHA256 envelope, opaque here)
                    s  last seen, ms (application clock)
                    i  idle timeout, ms (0 = none)
                    a  absolute deadline, ms (0 = none)
                    k  kind label ("web", "api", ...)
                    x  name of the owner's user index ("" = anonymous)
                    w  nonce of the save that wrote this version
                  Key expiry (PEXPIREAT) = deadline(s, i, a), see below.
  P{T}:u:<uid>    sorted set, a user's index: member = session key name,
                  score = that session's deadline (NO_DEADLINE if none).
                  Its own expiry is the highest score, so an index outlives
                  every session in it and then disappears by itself.
  A user's sessions all carry the user's tag, so a session, its index and the
  user's other sessions share one hash slot: every function below touches one
  slot, on a single node and on Redis Cluster alike. The index named by a
  session's `x` field is reached without being declared in KEYS; it has the
  same hash tag as the declared key, which Redis Cluster accepts.

Time
  `now` (ARGV) is the application's clock in ms. The sealed record carries its
  deadlines, so they are decided by the application before the one call that
  stores them; Redis gets absolute PEXPIREAT times and drops keys by itself,
  and every function also refuses a session whose deadline has passed by
  `now`, so a Redis clock running behind never keeps a session alive.

Invariants
  I1  A save with lock version 0 creates a session only if its key is absent.
  I2  A save with version n > 0 writes only if the stored version is n; a
      missing (deleted, revoked, expired) session is never written again.
  I3  Index scores equal their sessions' current deadlines; every write of a
      deadline (save, sliding in load) writes the score in the same call.
  I4  An index's expiry is at least its highest score.
  I5  Work per call is bounded: pruning inspects at most PRUNE_BATCH entries.
]]

local NO_DEADLINE = 9007199254740991 -- 2^53 - 1: "never", exact in a double
local PRUNE_BATCH = 64

-- min(last_seen + idle, absolute), where a zero term is absent; never
-- beyond NO_DEADLINE (an idle timeout of "forever" is no deadline), so that
-- every deadline formats with '%d' (a larger double overflows it).
local function deadline(seen, idle, absolute)
  local d = NO_DEADLINE
  if idle > 0 then d = math.min(seen + idle, NO_DEADLINE) end
  if absolute > 0 and absolute < d then d = absolute end
  return d
end

local function set_expiry(key, at)
  if at >= NO_DEADLINE then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, string.format('%d', at))
  end
end

-- I4: the index lives as long as its longest-lived member.
local function refresh_index_expiry(index)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', index)
  else
    set_expiry(index, tonumber(top[2]))
  end
end

-- Drop the sessions of an index whose deadline has passed (I3: the score is
-- the deadline), the entry and the session key, which Redis would drop soon
-- anyway unless its clock runs late (I5).
local function prune(index, now)
  local dead = redis.call('ZRANGEBYSCORE', index, '-inf', string.format('%d', now), 'LIMIT', 0, PRUNE_BATCH)
  for _, member in ipairs(dead) do
    redis.call('ZREM', index, member)
    redis.call('DEL', member)
  end
end

local function expired(now, seen, idle, absolute)
  return deadline(seen, idle, absolute) <= now
end

-- Reads the fields the functions need; nil when the session does not exist.
local function read(key)
  local f = redis.call('HMGET', key, 'v', 'b', 's', 'i', 'a', 'x', 'w')
  if not f[1] then return nil end
  return {
    v = tonumber(f[1]), b = f[2], s = tonumber(f[3]),
    i = tonumber(f[4]), a = tonumber(f[5]), x = f[6] or '', w = f[7] or '',
  }
end

local function drop(key, r)
  redis.call('DEL', key)
  if r.x ~= '' then redis.call('ZREM', r.x, key) end
end

-- Like read, but a session dead by the application's clock though Redis
-- still holds it is finished off, so that it answers like a session Redis
-- already dropped.
local function read_live(key, now)
  local r = read(key)
  if r and expired(now, r.s, r.i, r.a) then
    drop(key, r)
    return nil
  end
  return r
end

-- The ARGV of save and rotate: blob, now, idle (ms), absolute deadline (ms),
-- kind, nonce, after the expected version.
local function write_args(args)
  -- Times past NO_DEADLINE mean "never"; clamped, they are stored as exact
  -- integers ('%d' of a larger double overflows into garbage).
  return {
    blob = args[2], now = tonumber(args[3]),
    idle = math.min(tonumber(args[4]), NO_DEADLINE),
    absolute = math.min(tonumber(args[5]), NO_DEADLINE),
    kind = args[6], nonce = args[7],
  }
end

-- Writes version `version` of a session under `key`, expiring at `d`, and
-- enters it in `index` (I3).
local function write(key, index, version, w, d)
  redis.call('HSET', key,
    'v', version, 'b', w.blob, 's', string.format('%d', w.now),
    'i', string.format('%d', w.idle), 'a', string.format('%d', w.absolute),
    'k', w.kind, 'x', index, 'w', w.nonce)
  set_expiry(key, d)
  if index ~= '' then
    redis.call('ZADD', index, string.format('%d', d), key)
    prune(index, w.now)
    refresh_index_expiry(index)
  end
end

--[[ load
KEYS[1] session key
ARGV    now, touch interval (ms)
Reply   nil (absent or expired) | {version, blob, last seen}
Sliding expiry rides on this call: when the session has an idle timeout and
was last seen at least min(touch interval, idle timeout / 2) ago, last seen
becomes `now` and the key's expiry (and its index score, I3) move forward. A
busy session is thus written at most once per interval, never its blob, and
a session in use never reaches its idle deadline.
]]
local function load(keys, args)
  local key = keys[1]
  local now, touch = tonumber(args[1]), tonumber(args[2])
  local r = read(key)
  if not r then return nil end
  if expired(now, r.s, r.i, r.a) then return nil end
  if r.i > 0 and now - r.s >= math.min(touch, math.floor(r.i / 2)) then
    r.s = now
    local d = deadline(now, r.i, r.a)
    redis.call('HSET', key, 's', string.format('%d', now))
    set_expiry(key, d)
    if r.x ~= '' then
      redis.call('ZADD', r.x, 'XX', string.format('%d', d), key)
      refresh_index_expiry(r.x)
    end
  end
  return {r.v, r.b, r.s}
end

--[[ save (compare-and-set)
KEYS[1] session key; KEYS[2] the owner's user index (absent if anonymous)
ARGV    expected version, blob, now, idle (ms), absolute deadline (ms),
        kind, nonce (unique per save)
Reply   {'saved', new version}
      | {'conflict', version, blob, last seen}  stored version differs (I1, I2);
                                                the caller merges without a read
      | {'gone'}                                 the session no longer exists (I2)
A save retried after its reply was lost finds its own nonce on the version it
wrote and replies 'saved' again instead of a conflict with itself.
]]
local function save(keys, args)
  local key, index = keys[1], keys[2] or ''
  local expected, w = tonumber(args[1]), write_args(args)
  local now = w.now

  local r = read_live(key, now)
  if r and r.v == expected + 1 and r.w == w.nonce then
    return {'saved', r.v}
  end
  if expected == 0 then
    if r then return {'conflict', r.v, r.b, r.s} end
  else
    if not r then return {'gone'} end
    if r.v ~= expected then return {'conflict', r.v, r.b, r.s} end
  end

  local d = deadline(now, w.idle, w.absolute)
  if d <= now then
    -- The record's own deadline has passed: it is over, not to be stored.
    if r then drop(key, r) end
    return {'gone'}
  end

  local version = expected + 1
  write(key, index, version, w, d)
  if r and r.x ~= '' and r.x ~= index then
    -- The session changed owner: leave the old owner's index.
    redis.call('ZREM', r.x, key)
    refresh_index_expiry(r.x)
  end
  return {'saved', version}
end

--[[ rotate (compare-and-move)
KEYS[1] current session key; KEYS[2] new session key, with the same hash tag;
KEYS[3] the owner's user index (absent if anonymous)
ARGV    as save; the expected version is the current session's, the blob is
        sealed for the new key
Reply   as save, where 'conflict' and 'gone' describe the current session;
        or {'taken'} if the new key is already in use
Moves a session to a new key (its token changes) in one step: the new key is
written and the current one deleted together, so there is never a moment
when both tokens work or neither does, and a session revoked meanwhile stays
revoked (I2).
]]
local function rotate(keys, args)
  local old, key, index = keys[1], keys[2], keys[3] or ''
  local expected, w = tonumber(args[1]), write_args(args)
  local now = w.now

  local n = read(key)
  if n and n.w == w.nonce then return {'saved', n.v} end -- a retry after a lost reply
  if n then return {'taken'} end
  local r = read_live(old, now)
  if not r then return {'gone'} end
  if r.v ~= expected then return {'conflict', r.v, r.b, r.s} end
  local d = deadline(now, w.idle, w.absolute)
  drop(old, r)
  if d <= now then return {'gone'} end

  local version = expected + 1
  write(key, index, version, w, d)
  if r.x ~= '' and r.x ~= index then refresh_index_expiry(r.x) end
  return {'saved', version}
end

--[[ delete
KEYS[1] session key
ARGV    owner's index, or "" for any owner
Reply   1 if a session was deleted, else 0
With an index given, the session is deleted only if that index owns it: this
is how a user revokes one of their own sessions by id and no one else's.
]]
local function delete(keys, args)
  local key, owner = keys[1], args[1] or ''
  local x = redis.call('HGET', key, 'x')
  if not x then return 0 end
  if owner ~= '' and x ~= owner then return 0 end
  redis.call('DEL', key)
  if x ~= '' then
    redis.call('ZREM', x, key)
    refresh_index_expiry(x)
  end
  return 1
end

--[[ list
KEYS[1] user index
ARGV    now, kind ("" = every kind), limit (max sessions returned)
Reply   {{session key, version, blob, last seen}, ...}, oldest deadline first
Entries whose session vanished or expired are pruned on the way.
]]
local function list(keys, args)
  local index, now = keys[1], tonumber(args[1])
  local kind, limit = args[2], tonumber(args[3])
  prune(index, now)
  local out, vanished = {}, {}
  -- Walk the index in pages so that the work stops once `limit` are found.
  local from = 0
  while #out < limit do
    local members = redis.call('ZRANGE', index, from, from + PRUNE_BATCH - 1)
    if #members == 0 then break end
    from = from + #members
    for _, member in ipairs(members) do
      local f = redis.call('HMGET', member, 'v', 'b', 's', 'i', 'a', 'k')
      if not f[1] then
        -- A vanished session: drop its entry (after the page, so the page
        -- offsets stay valid).
        vanished[#vanished + 1] = member
      elseif #out < limit
          and not expired(now, tonumber(f[3]), tonumber(f[4]), tonumber(f[5]))
          and (kind == '' or f[6] == kind) then
        out[#out + 1] = {member, tonumber(f[1]), f[2], tonumber(f[3])}
      end
    end
  end
  for _, member in ipairs(vanished) do redis.call('ZREM', index, member) end
  refresh_index_expiry(index)
  return out
end

--[[ revoke
KEYS[1] user index
ARGV    now, kind ("" = every kind), session key to keep ("" = none)
Reply   number of live sessions deleted
Deleting a session removes its key, so any save still in flight for it gets
'gone' (I2): a revoked session cannot come back.
]]
local function revoke(keys, args)
  local index, now = keys[1], tonumber(args[1])
  local kind, keep = args[2], args[3]
  local revoked = 0
  local members = redis.call('ZRANGE', index, 0, -1)
  for _, member in ipairs(members) do
    if member ~= keep then
      local f = redis.call('HMGET', member, 'k', 's', 'i', 'a')
      if not f[1] then
        redis.call('ZREM', index, member)
      elseif kind == '' or f[1] == kind then
        redis.call('DEL', member)
        redis.call('ZREM', index, member)
        if not expired(now, tonumber(f[2]), tonumber(f[3]), tonumber(f[4])) then
          revoked = revoked + 1
        end
      end
    end
  end
  refresh_index_expiry(index)
  return revoked
end

redis.register_function('TRS_LIB_load', load)
redis.register_function('TRS_LIB_save', save)
redis.register_function('TRS_LIB_rotate', rotate)
redis.register_function('TRS_LIB_delete', delete)
redis.register_function('TRS_LIB_list', list)
redis.register_function('TRS_LIB_revoke', revoke)
