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
                    w  the last NONCES saves applied to this session, newest
                       first: " <nonce>:<version written>" each (about 40
                       bytes apiece, so at most ~320 bytes)
                  Key expiry (PEXPIREAT) = deadline(s, i, a), see below.
  P{T}:u:<uid>    sorted set, a user's index: member = session key name,
                  score = that session's deadline (NO_DEADLINE if none).
                  Its own expiry is at least the highest score (I4), so an
                  index outlives every session in it and then disappears by
                  itself.
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
      deadline (save, sliding in load) writes the score in the same call
      (and skips it when the deadline did not change: the score is already
      that deadline).
  I4  An index's expiry is at least its highest score. A score that grows
      moves the expiry with PEXPIREAT .. GT (only ever forward); an index
      the ZADD just created (no expiry yet) gets its expiry from its top
      score; NO_DEADLINE makes it persistent. Removing members never raises
      the highest score, so it needs no upkeep (delete and list still trim
      the expiry to the top score).
  I5  Work per call is bounded: an index is pruned when it gains a member
      (and when listed), at most PRUNE_BATCH entries at a time.
  I6  A save (or rotation) is applied at most once: its nonce is kept with
      the version it wrote among the session's last NONCES saves (field w),
      and a repeat of it that finds the nonce writes nothing and replies
      'saved' with that version.
]]

local NO_DEADLINE = 9007199254740991 -- 2^53 - 1: "never", exact in a double
local PRUNE_BATCH = 64
-- How many applied saves a session remembers (field `w`): a save retried
-- after a lost reply is recognised even if up to NONCES - 1 other saves
-- landed between its first attempt and the retry.
local NONCES = 8

-- Numbers are passed to redis.call as they are: Redis formats a Lua number
-- argument with 17 significant digits, so every integer up to NO_DEADLINE
-- reaches Redis exactly (no string.format on the hot paths).

-- min(last_seen + idle, absolute), where a zero term is absent; never
-- beyond NO_DEADLINE (an idle timeout of "forever" is no deadline).
local function deadline(seen, idle, absolute)
  local d = NO_DEADLINE
  if idle > 0 and seen + idle < d then d = seen + idle end
  if absolute > 0 and absolute < d then d = absolute end
  return d
end

local function expired(now, seen, idle, absolute)
  return deadline(seen, idle, absolute) <= now
end

local function set_expiry(key, at)
  if at >= NO_DEADLINE then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, at)
  end
end

-- I4, exactly: the index expires with its longest-lived member.
local function refresh_index_expiry(index)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', index)
  else
    set_expiry(index, tonumber(top[2]))
  end
end

-- I4 after a score `d` was written to an index that already has an expiry
-- at least its highest score (or none): moving the expiry only forward (GT)
-- keeps it at least the highest score. GT leaves a key without expiry alone
-- (Redis counts it as an infinite TTL), which is right here: such an index
-- holds a session without deadline, or did, and outlives them all.
local function extend_index(index, d)
  if d >= NO_DEADLINE then
    redis.call('PERSIST', index)
  else
    redis.call('PEXPIREAT', index, d, 'GT')
  end
end

-- Drop the sessions of an index whose deadline has passed (I3: the score is
-- the deadline), the entry and the session key, which Redis would drop soon
-- anyway unless its clock runs late (I5).
local function prune(index, now)
  local dead = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, PRUNE_BATCH)
  for _, member in ipairs(dead) do
    redis.call('ZREM', index, member)
    redis.call('DEL', member)
  end
end

-- Enters `key` in `index` with score `d` (I3) and keeps the index's expiry
-- (I4). An index grows only here, when a member is added (a new session, a
-- login, a rotation, a change of owner): that is when it is pruned (I5).
local function index_put(index, key, d, now)
  if redis.call('ZADD', index, d, key) == 0 then
    -- An existing member whose score moved: its old score was within the
    -- index's expiry (I4), so moving the expiry forward to d suffices.
    extend_index(index, d)
    return
  end
  prune(index, now)
  if d >= NO_DEADLINE then
    redis.call('PERSIST', index)
  elseif redis.call('PEXPIREAT', index, d, 'GT') == 0 then
    -- Not moved: the index has no expiry (the ZADD just created it, or it
    -- holds a session without deadline) or one already past d. GT alone
    -- would leave a new index without expiry: set it from the top score.
    refresh_index_expiry(index)
  end
end

-- Deletes a session and its index entry (the index's expiry stays at least
-- its highest score: removing a member never raises it).
local function drop(key, index)
  redis.call('DEL', key)
  if index and index ~= '' then redis.call('ZREM', index, key) end
end

-- The reply to a save or rotation that met another version: the stored
-- record, so the caller merges without a read. The blob is read only here.
local function conflict(key, version, seen)
  return {'conflict', version, redis.call('HGET', key, 'b'), tonumber(seen)}
end

-- The fields save and rotate read: {v, s, i, a, x, w}, without the blob.
-- Returns them, the version (nil if there is no live session) and the
-- stored deadline. A session dead by the application's clock though Redis
-- still holds it is finished off, so that it answers like a session Redis
-- already dropped.
local function read_live(key, now)
  local f = redis.call('HMGET', key, 'v', 's', 'i', 'a', 'x', 'w')
  if not f[1] then return f, nil, nil end
  local d = deadline(tonumber(f[2]), tonumber(f[3]), tonumber(f[4]))
  if d <= now then
    drop(key, f[5])
    return f, nil, nil
  end
  return f, tonumber(f[1]), d
end

-- A time argument of save and rotate, clamped to NO_DEADLINE ("never"):
-- the number, and what to store (the argument itself when in range).
local function time_arg(arg)
  local n = tonumber(arg)
  if n > NO_DEADLINE then return NO_DEADLINE, NO_DEADLINE end
  return n, arg
end

-- The version a save with `nonce` wrote, if `w` (a session's field) still
-- remembers it. Entries start with a space and the nonce ends at the colon,
-- so a nonce matches only a whole entry's nonce.
local function applied(w, nonce)
  if not w then return nil end
  local at = string.find(w, ' ' .. nonce .. ':', 1, true)
  if not at then return nil end
  return tonumber(string.match(w, '^%d+', at + #nonce + 2))
end

-- `w` with the save (`nonce`, `version`) in front, cut to NONCES entries.
local function remember(w, nonce, version)
  local entries = ' ' .. nonce .. ':' .. version .. (w or '')
  local at = 1
  for _ = 1, NONCES do
    at = string.find(entries, ' ', at + 1, true)
    if not at then return entries end
  end
  return string.sub(entries, 1, at - 1)
end

-- Writes version `version` of a session under `key` from the ARGV of save
-- and rotate (blob, now, idle, absolute, kind, nonce after the expected
-- version), expiring at `d`; `w` is what the session remembered of earlier
-- saves (nil for a new session). The index entry is the caller's.
local function write(key, index, version, args, idle, absolute, d, w)
  redis.call('HSET', key,
    'v', version, 'b', args[2], 's', args[3], 'i', idle, 'a', absolute,
    'k', args[6], 'x', index, 'w', remember(w, args[7], version))
  set_expiry(key, d)
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
  -- The common case (no touch due) reads one hash and answers with the
  -- table it got, cut to three fields (version and last seen as integers);
  -- the index name is read only to touch.
  local f = redis.call('HMGET', key, 'v', 'b', 's', 'i', 'a')
  if not f[1] then return nil end
  local now = tonumber(args[1])
  local seen, idle, absolute = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
  local d = deadline(seen, idle, absolute)
  if d <= now then return nil end
  f[1], f[3], f[4] = tonumber(f[1]), seen, nil -- the reply ends at the first nil
  if idle > 0 then
    local due = math.floor(idle / 2)
    local touch = tonumber(args[2])
    if touch < due then due = touch end
    if now - seen >= due then
      redis.call('HSET', key, 's', args[1])
      f[3] = now
      local moved = deadline(now, idle, absolute)
      -- Capped by the absolute deadline, the deadline may stay where it is:
      -- then so do the key's expiry and the index score.
      if moved ~= d then
        set_expiry(key, moved)
        local index = redis.call('HGET', key, 'x')
        if index and index ~= '' then
          -- XX: a session missing from its index is not entered again here.
          redis.call('ZADD', index, 'XX', moved, key)
          extend_index(index, moved)
        end
      end
    end
  end
  return f
end

--[[ save (compare-and-set)
KEYS[1] session key; KEYS[2] the owner's user index (absent if anonymous)
ARGV    expected version, blob, now, idle (ms), absolute deadline (ms),
        kind, nonce (unique per save)
Reply   {'saved', new version}
      | {'conflict', version, blob, last seen}  stored version differs (I1, I2);
                                                the caller merges without a read
      | {'gone'}                                 the session no longer exists (I2)
A save retried after its reply was lost (the store resends once over a new
connection) finds its own nonce among the last NONCES saves the session
remembers and replies {'saved', the version it wrote}, whatever was written
since: it is applied at most once, and never meets a conflict with itself
or with a writer that came after it (I6).
]]
local function save(keys, args)
  local key, index = keys[1], keys[2] or ''
  local expected, now = tonumber(args[1]), tonumber(args[3])

  local f, stored, was = read_live(key, now)
  if stored then
    local wrote = applied(f[6], args[7])
    if wrote then return {'saved', wrote} end
  end
  if expected == 0 then
    if stored then return conflict(key, stored, f[2]) end
  else
    if not stored then return {'gone'} end
    if stored ~= expected then return conflict(key, stored, f[2]) end
  end

  local idle, idle_arg = time_arg(args[4])
  local absolute, absolute_arg = time_arg(args[5])
  local d = deadline(now, idle, absolute)
  if d <= now then
    -- The record's own deadline has passed: it is over, not to be stored.
    if stored then drop(key, f[5]) end
    return {'gone'}
  end

  local version = expected + 1
  write(key, index, version, args, idle_arg, absolute_arg, d, stored and f[6])
  local owner = stored and f[5] or ''
  if index ~= '' and not (owner == index and was == d) then
    -- (An unchanged deadline in the same index: the score is already d, I3.)
    index_put(index, key, d, now)
  end
  if owner ~= '' and owner ~= index then
    -- The session changed owner: leave the old owner's index.
    redis.call('ZREM', owner, key)
    refresh_index_expiry(owner)
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
  local expected, now = tonumber(args[1]), tonumber(args[3])

  local n = redis.call('HMGET', key, 'v', 'w')
  if n[1] then
    -- A retry after a lost reply, even if the new key was saved since (I6).
    local wrote = applied(n[2], args[7])
    if wrote then return {'saved', wrote} end
    return {'taken'}
  end
  local f, stored = read_live(old, now)
  if not stored then return {'gone'} end
  if stored ~= expected then return conflict(old, stored, f[2]) end
  local idle, idle_arg = time_arg(args[4])
  local absolute, absolute_arg = time_arg(args[5])
  local d = deadline(now, idle, absolute)
  local owner = f[5] or ''
  drop(old, owner)
  if d <= now then return {'gone'} end

  local version = expected + 1
  write(key, index, version, args, idle_arg, absolute_arg, d)
  if index ~= '' then index_put(index, key, d, now) end
  if owner ~= '' and owner ~= index then refresh_index_expiry(owner) end
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

--[[ retire (compare-and-delete)
KEYS[1] session key
ARGV    expected version, now
Reply   {'deleted'}                              the stored version was the
                                                 expected one: session and
                                                 index entry deleted, as delete
      | {'conflict', version, blob, last seen}  another writer saved since:
                                                 nothing deleted (as save)
      | {'gone'}                                 absent, or dead by `now`
For a session replaced by another (a login): it ends only if no one changed
it since it was read, so a concurrent change is not lost silently.
]]
local function retire(keys, args)
  local key, expected, now = keys[1], tonumber(args[1]), tonumber(args[2])
  local f, stored = read_live(key, now)
  if not stored then return {'gone'} end
  if stored ~= expected then return conflict(key, stored, f[2]) end
  local x = f[5] or ''
  drop(key, x)
  if x ~= '' then refresh_index_expiry(x) end
  return {'deleted'}
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
redis.register_function('TRS_LIB_retire', retire)
redis.register_function('TRS_LIB_list', list)
redis.register_function('TRS_LIB_revoke', revoke)
