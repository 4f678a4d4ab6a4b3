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
                    e  "<v>:<s>:<E>": the key expiry E this library set
                       while the session had this v and s (see `mark`), so
                       a save or touch that would set the same E skips it
                  Key expiry (PEXPIREAT) = E(deadline(s, i, a)), see below.
  P{T}:u:<uid>    sorted set, a user's index: member = session key name,
                  score = E(that session's deadline) (NO_DEADLINE if none).
                  Its own expiry is at least the highest score (I4), so an
                  index outlives every session in it and then disappears by
                  itself.
  A user's sessions all carry the user's tag, so a session, its index and the
  user's other sessions share one hash slot: every function below touches one
  slot, on a single node and on Redis Cluster alike. The index named by a
  session's `x` field, and the sessions an index names, are reached without
  being declared in KEYS; they have the same hash tag as the declared key,
  which Redis Cluster accepts.

Resharding (Redis Cluster)
  While a slot moves (CLUSTER SETSLOT IMPORTING / MIGRATING, MIGRATE ... KEYS
  in batches, SETSLOT NODE), its keys sit partly on the source node and
  partly on the target, and a function runs on either: on the source when
  its declared keys are still there, on the target (after an ASK redirect)
  when they have moved. Redis scripts do not roll back, so (I7):
  - every function reads every key it will write before its first write.
    On the source, reading a key that already moved fails ("non local
    key"), so the call fails before it wrote anything;
  - on the target, a key not moved yet reads as absent, which proves
    nothing. So an absence the call would act on (an index member to drop,
    an index to create or heal, a session to count as gone) is first checked
    against the node's slot state (`CLUSTER NODES`, "[<slot>-<-" or
    "[<slot>->-" on the node's own line): during a migration the call
    answers with the error code MIGRATING, before writing anything. An
    absent *declared* key needs no check: Redis sent the call here because
    the source lacked it.
  The store turns MIGRATING, "non local key" and Redis' own TRYAGAIN into
  "unavailable" (a 503); the caller may retry. MIGRATING rather than
  TRYAGAIN: cluster clients (redis-rs among them) retry TRYAGAIN by
  themselves after waiting a second or more, longer than a request should
  wait, and the call would only end in a timeout.

Time
  `now` (ARGV) is the application's clock in ms. The sealed record carries its
  deadlines, so they are decided by the application before the one call that
  stores them; Redis gets absolute PEXPIREAT times and drops keys by itself,
  and every function also refuses a session whose deadline has passed by
  `now`, so a Redis clock running behind never keeps a session alive.
  E(d) (`late`) is the deadline d rounded up to a grid step of idle / 32,
  clamped to 1 s .. 1 min, for sessions with an idle timeout (d itself
  otherwise): Redis' own bookkeeping (key expiry, index score) then moves
  once per step instead of on every save and touch. E(d) >= d, so a key
  outlives its session by less than a step; that is safe for the same
  reason a Redis clock running behind is.

Memory (maxmemory)
  Functions are registered with flags: save and rotate (which store blobs)
  keep Redis' default and are refused with OOM when maxmemory is reached;
  load, delete, retire, list and revoke carry `allow-oom` (they only read,
  delete, or write a few bytes), so users can still sign in with existing
  sessions, list, log out and revoke while Redis is full.

Invariants
  I1  A save with lock version 0 creates a session only if no live session
      holds its key.
  I2  A save with version n > 0 writes only if the stored version is n; a
      missing (deleted, revoked, expired) session is never written again.
  I3  Index scores, and session keys' expiries, equal E(their sessions'
      current deadlines); every write of a deadline (save, rotate, sliding
      in load) writes the score and the expiry in the same call, and skips
      the score when it is already that E, the expiry when field `e` shows
      this library set that E for the stored v and s. A live session
      missing from its index (evicted by a maxmemory policy, or the index
      lost) enters it again when it is loaded or saved. Both are >= the
      true deadline, so neither ends a live session early; the true
      deadline (s, i, a) decides whether a session lives (I5).
  I4  An index's expiry is at least its highest score. A score that grows
      moves the expiry with PEXPIREAT .. GT (only ever forward); an index
      the ZADD just created (no expiry yet) gets its expiry from its top
      score; NO_DEADLINE makes it persistent. Removing members never raises
      the highest score, so it needs no upkeep (delete, list and revoke
      still trim the expiry to the top score).
  I5  Work per call is bounded. An index entry whose score (= E(deadline),
      I3) has passed is dead: pruning removes such entries (never the session
      keys, which Redis expires by itself), at most PRUNE_BATCH (64) per
      call, when a member is added and when the index is listed or revoked.
      list and revoke read at most WALK (1024) live entries, the earliest
      deadlines first. A save or rotation that adds a session to an index
      holding `cap` live ones (ARGV, the store's max sessions per user,
      which the store keeps at most 1000 < WALK, so listing and revocation
      reach every live session) ends the others with the earliest deadlines
      (read from the sessions scored within GRID_MAX of the lowest scores,
      at most WALK), at most PRUNE_BATCH per call. So a call touches at
      most 1024 + 64 + 2 sessions and one index. A score is at most one grid step late: a
      session dead by its true deadline still scores as live for less than
      a step; list and revoke read and skip it, the cap ends it first.
  I6  A save (or rotation) is applied at most once: its nonce is kept with
      the version it wrote among the session's last NONCES saves (field w),
      and a repeat of it that finds the nonce writes nothing and replies
      'saved' with that version.
  I7  Each call either completes or fails before its first write: reads of
      every key it writes come first, and an absence that may be a key in
      migration is answered with MIGRATING (see Resharding).
]]

local NO_DEADLINE = 9007199254740991 -- 2^53 - 1: "never", exact in a double
local PRUNE_BATCH = 64
local WALK = 1024
-- How many applied saves a session remembers (field `w`): a save retried
-- after a lost reply is recognised even if up to NONCES - 1 other saves
-- landed between its first attempt and the retry.
local NONCES = 8
-- The grid of E(deadline) (see Time): idle / 32, within these bounds (ms).
local GRID_MIN, GRID_MAX = 1000, 60000

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

-- E(d): where Redis' own bookkeeping puts a session with deadline `d` and
-- idle timeout `idle` (its key's expiry and its index score, I3). A sliding
-- deadline moves with every save and every touch; rounded up to a grid of
-- idle / 32 (at least 1 s, at most 1 min) it stays put for many of them, so
-- those calls leave the key's expiry and the index alone. Safe because
-- E(d) >= d (the key outlives its session, at most one step) and every
-- function refuses a session whose true deadline (s, i, a) has passed
-- (I5): a late expiry or score only delays when Redis reclaims the memory.
-- Deadlines that do not slide (no idle timeout, or "never") stay exact.
-- ceil(d / g) * g is exact for every deadline before year 10000; the check
-- after it keeps E(d) >= d even where a double could not be.
local function late(d, idle)
  if idle <= 0 or d >= NO_DEADLINE then return d end
  local g = math.floor(idle / 32)
  if g < GRID_MIN then g = GRID_MIN elseif g > GRID_MAX then g = GRID_MAX end
  local e = math.ceil(d / g) * g
  if e < d then e = e + g end
  if e > NO_DEADLINE then e = NO_DEADLINE end
  return e
end

-- Field `e`: "<v>:<s>:<E>", the expiry E this library gave the key when the
-- session had version v and last seen s (the stored strings). Another
-- writer of the expiry (a previous version of the library during a rolling
-- upgrade, which knows nothing of `e` and writes exact deadlines) also
-- changes v (a save) or s (a touch), so `e` then no longer matches and the
-- expiry is written again: a PEXPIREAT is skipped only when `e` proves the
-- key already expires at the E it would set.
local function mark(v, s, at)
  return v .. ':' .. s .. ':' .. string.format('%d', at)
end

-- The slot of `key` if this node is importing or migrating it: then a key
-- it does not hold may still sit on the other node (I7). Only asked when
-- an absence matters, so the common paths never pay for it; on a single
-- node CLUSTER errors and the answer is no.
local function in_migration(key)
  local nodes = redis.pcall('CLUSTER', 'NODES')
  if type(nodes) ~= 'string' then return nil end
  local slot = redis.call('CLUSTER', 'KEYSLOT', key)
  local mine = string.match(nodes, '[^\n]*myself[^\n]*')
  if mine and string.find(mine, '[' .. slot .. '-', 1, true) then return slot end
  return nil
end

-- Ends the call, before any write, when an absence of `key` proves nothing.
-- The reply names the slot, not the key (keys are derived from secrets).
local function unsure(key)
  local slot = in_migration(key)
  if slot then
    error({err = 'MIGRATING slot ' .. slot .. ' is being migrated; nothing was written'})
  end
end

-- The score of `member` in the undeclared index `index`, or false. An
-- index this node does not hold during a migration fails the call here,
-- before any write (I7): on the source by Redis' own check, on the target
-- by `unsure`.
local function entry(index, member)
  local z = redis.call('ZSCORE', index, member)
  if z then return tonumber(z) end
  if redis.call('EXISTS', index) == 0 then unsure(index) end
  return false
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

-- The dead entries of an index (score = E(deadline) passed by `now`, I3), at
-- most PRUNE_BATCH: read before the call writes anything, removed by
-- `prune` after. Their session keys are left to Redis' expiry; every
-- function refuses a session dead by `now` meanwhile (I5).
local function dead_entries(index, now)
  return redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, PRUNE_BATCH)
end

local function prune(index, dead)
  if #dead > 0 then redis.call('ZREM', index, unpack(dead)) end
end

-- The oldest live sessions to end so that `index` keeps at most `cap` live
-- ones once `key` enters it (`leaving` is a member that leaves in the same
-- call, or nil), at most PRUNE_BATCH (I5): those with the earliest true
-- deadlines. Scores are E(deadline), up to GRID_MAX after it, so sessions
-- sharing a step tie there and the order is decided by the deadlines in
-- the sessions (read here, before any write, I7), among the entries
-- scored up to GRID_MAX past the oldest ones (at most WALK). A session dead
-- by its deadline but scored live sorts first: ending it costs no live
-- session, so no more live ones end than the cap needs. Those already
-- gone are only unindexed.
local function over_cap(index, key, cap, now_arg, leaving)
  if cap <= 0 then return {} end
  local live = redis.call('ZCOUNT', index, '(' .. now_arg, '+inf')
  if leaving then
    local z = redis.call('ZSCORE', index, leaving)
    if z and tonumber(z) > tonumber(now_arg) then live = live - 1 end
  end
  local excess = live + 1 - cap
  local out = {}
  if excess <= 0 then return out end
  if excess > PRUNE_BATCH then excess = PRUNE_BATCH end
  local oldest = redis.call('ZRANGEBYSCORE', index, '(' .. now_arg, '+inf',
    'WITHSCORES', 'LIMIT', 0, excess + 2)
  if #oldest == 0 then return out end
  local upto = tonumber(oldest[#oldest]) + GRID_MAX
  local near = redis.call('ZRANGEBYSCORE', index, '(' .. now_arg, upto, 'LIMIT', 0, WALK)
  local candidates = {}
  for _, member in ipairs(near) do
    if member ~= leaving and member ~= key then
      local f = redis.call('HMGET', member, 's', 'i', 'a')
      local d = 0
      if f[1] then
        d = deadline(tonumber(f[1]), tonumber(f[2]), tonumber(f[3]))
      else
        unsure(member)
      end
      candidates[#candidates + 1] = {member, d}
    end
  end
  table.sort(candidates, function(p, q)
    if p[2] ~= q[2] then return p[2] < q[2] end
    return p[1] < q[1]
  end)
  for i = 1, math.min(excess, #candidates) do out[i] = candidates[i][1] end
  return out
end

-- Ends the sessions `over_cap` chose: keys and entries.
local function end_sessions(index, doomed)
  if #doomed > 0 then
    redis.call('DEL', unpack(doomed))
    redis.call('ZREM', index, unpack(doomed))
  end
end

-- Enters `key` in `index` with score `d` (I3) and keeps the index's
-- expiry (I4); `dead` (from dead_entries) is pruned.
local function index_put(index, key, d, dead)
  -- Pruned first: `dead` may hold this key's own earlier, dead entry.
  prune(index, dead)
  local added = redis.call('ZADD', index, d, key)
  if added == 0 then
    -- An existing member whose score moved: its old score was within the
    -- index's expiry (I4), so moving the expiry forward to d suffices.
    extend_index(index, d)
  elseif d >= NO_DEADLINE then
    redis.call('PERSIST', index)
  elseif redis.call('PEXPIREAT', index, d, 'GT') == 0 then
    -- Not moved: the index has no expiry (the ZADD just created it, or it
    -- holds a session without deadline) or one already past d. GT alone
    -- would leave a new index without expiry: set it from the top score.
    refresh_index_expiry(index)
  end
end

-- Deletes a session and its index entry (the index's expiry stays at least
-- its highest score: removing a member never raises it, but trim it).
local function drop(key, index)
  redis.call('DEL', key)
  if index and index ~= '' then
    redis.call('ZREM', index, key)
    refresh_index_expiry(index)
  end
end

-- The reply to a save or rotation that met another version: the stored
-- record, so the caller merges without a read. The blob is read only here.
local function conflict(key, version, seen)
  return {'conflict', version, redis.call('HGET', key, 'b'), tonumber(seen)}
end

-- The fields save and rotate read: {v, s, i, a, x, w, e}, without the
-- blob. Returns them, the version (nil if there is no live session) and
-- the stored deadline. Nothing is written here (I7).
local function read_live(key, now)
  local f = redis.call('HMGET', key, 'v', 's', 'i', 'a', 'x', 'w', 'e')
  if not f[1] then return f, nil, nil end
  local d = deadline(tonumber(f[2]), tonumber(f[3]), tonumber(f[4]))
  if d <= now then return f, nil, d end
  return f, tonumber(f[1]), d
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

-- A time argument of save and rotate, clamped to NO_DEADLINE ("never"):
-- the number, and what to store (the argument itself when in range).
local function time_arg(arg)
  local n = tonumber(arg)
  if n > NO_DEADLINE then return NO_DEADLINE, NO_DEADLINE end
  return n, arg
end

-- Writes version `version` of a session under `key` from the ARGV of save
-- and rotate (blob, now, idle, absolute, kind, nonce after the expected
-- version), its key expiring at `at` = E(deadline); `f` is what read_live
-- read of the live session this replaces (nil for a new session): its
-- remembered saves (I6) and whether its expiry is already `at` (field e).
-- The index entry is the caller's.
local function write(key, index, version, args, idle, absolute, at, f)
  redis.call('HSET', key,
    'v', version, 'b', args[2], 's', args[3], 'i', idle, 'a', absolute,
    'k', args[6], 'x', index, 'w', remember(f and f[6], args[7], version),
    'e', mark(version, args[3], at))
  if not (f and f[7] == mark(f[1], f[2], at)) then set_expiry(key, at) end
end

--[[ load
KEYS[1] session key
ARGV    now, touch interval (ms)
Reply   nil (absent or expired) | {version, blob, last seen[, 1 if it wrote the key]}
Sliding expiry rides on this call: when the session has an idle timeout and
was last seen at least min(touch interval, idle timeout / 2) ago, last seen
becomes `now` and the key's expiry (and its index score, I3) move forward. A
busy session is thus written at most once per interval, never its blob, and
a session in use never reaches its idle deadline. A user's session missing
from its index enters it again (I3). While the index is out of reach (a
migration, I7) the session is served as stored and nothing is written: the
slide waits for a later load.
]]
local function load(keys, args)
  local key = keys[1]
  local f = redis.call('HMGET', key, 'v', 'b', 's', 'i', 'a', 'x', 'e')
  if not f[1] then return nil end
  local now = tonumber(args[1])
  local seen, idle, absolute = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
  local d = deadline(seen, idle, absolute)
  if d <= now then return nil end
  local index = f[6]
  -- Whether the key expires at E(moved) already: `e` as a touch to `moved`
  -- would find it (see mark), computed before the reply takes over f.
  local v, s, e = f[1], f[3], f[7]
  -- The reply: {version, blob, last seen}; it ends at the first nil.
  f[1], f[3], f[4], f[6], f[7] = tonumber(f[1]), seen, nil, nil, nil

  local due = false
  if idle > 0 then
    local every = math.floor(idle / 2)
    local touch = tonumber(args[2])
    if touch < every then every = touch end
    due = now - seen >= every
  end
  -- The key's expiry and the index score sit at E(deadline) (I3).
  local moved = late(d, idle)
  if due then moved = late(deadline(now, idle, absolute), idle) end

  local score = nil
  if index and index ~= '' then
    -- Read the index entry before any write (I7). pcall: on the node a
    -- migration is leaving, an index already moved is an error here; the
    -- load is then served without writes.
    local z = redis.pcall('ZSCORE', index, key)
    if type(z) == 'table' then return f end
    if z then
      score = tonumber(z)
    elseif redis.call('EXISTS', index) == 0 and in_migration(index) then
      return f
    end
  end

  if due then
    redis.call('HSET', key, 's', args[1], 'e', mark(v, args[1], moved))
    f[3] = now
    -- Within the same grid step (or capped by the absolute deadline) the
    -- key's expiry stays where this library put it, if `e` shows it did.
    if e ~= mark(v, s, moved) then set_expiry(key, moved) end
    -- The caller's near cache learns that this load wrote, and (by this
    -- read after the writes) Redis keeps tracking the key for it.
    f[4], f[5] = 1, nil
    redis.call('EXISTS', key)
  end
  if index and index ~= '' and score ~= moved then
    if score then
      redis.call('ZADD', index, 'XX', moved, key)
      extend_index(index, moved)
    else
      -- Missing from its index (evicted, or the index lost): enter again.
      index_put(index, key, moved, {})
    end
  end
  return f
end

--[[ save (compare-and-set)
KEYS[1] session key; KEYS[2] the owner's user index (absent if anonymous)
ARGV    expected version, blob, now, idle (ms), absolute deadline (ms),
        kind, nonce (unique per save), cap (most live sessions per user
        index, 0 = no cap), and optionally 1 if the caller tracks the key
        (client-side caching: the key is read again after the writes)
Reply   {'saved', new version, keys of the other sessions it ended (I5)...}
      | {'conflict', version, blob, last seen}  stored version differs (I1, I2);
                                                the caller merges without a read
      | {'gone'}                                 the session no longer exists (I2)
A save retried after its reply was lost (the store resends once over a new
connection) finds its own nonce among the last NONCES saves the session
remembers and replies {'saved', the version it wrote}, whatever was written
since: it is applied at most once, and never meets a conflict with itself
or with a writer that came after it (I6). A session that enters an index
holding `cap` live sessions ends the oldest others (I5).
]]
local function save(keys, args)
  local key, index = keys[1], keys[2] or ''
  local expected, now = tonumber(args[1]), tonumber(args[3])

  -- Reads (I7): the session, its current owner's entry, the new index.
  local f, stored, was = read_live(key, now)
  if stored then
    local wrote = applied(f[6], args[7])
    if wrote then return {'saved', wrote} end
  end
  if expected == 0 then
    if stored then return conflict(key, stored, f[2]) end
  else
    if not stored then
      -- A dead session still held (Redis' clock behind) is finished off
      -- below, as one Redis already dropped; an absent one is just gone.
      if not f[1] then return {'gone'} end
    elseif stored ~= expected then
      return conflict(key, stored, f[2])
    end
  end
  local owner = f[5] or ''
  local owned = false
  if owner ~= '' then owned = entry(owner, key) end

  local idle, idle_arg = time_arg(args[4])
  local absolute, absolute_arg = time_arg(args[5])
  local d = deadline(now, idle, absolute)
  if (expected > 0 and not stored) or d <= now then
    -- Over (dead by `now`, or saved with a deadline in the past): not
    -- stored; what Redis still holds of it goes.
    if f[1] then drop(key, owner) end
    return {'gone'}
  end

  -- Where the key's expiry and the index score go (I3): on the grid, so a
  -- save whose deadline stays in the same step leaves both alone.
  local at = late(d, idle)
  local score, dead, doomed = false, {}, {}
  if index ~= '' then
    -- Declared: Redis' own cluster checks cover it, no need for `entry`.
    if owner == index then
      score = owned
    else
      score = redis.call('ZSCORE', index, key)
      if score then score = tonumber(score) end
    end
    if score ~= at then dead = dead_entries(index, now) end
    if not score or score <= now then
      doomed = over_cap(index, key, tonumber(args[8] or 0), args[3], nil)
    end
  end

  -- Writes.
  local version = expected + 1
  write(key, index, version, args, idle_arg, absolute_arg, at, stored and f)
  end_sessions(index, doomed)
  -- The score is already E(deadline) (I3): the entry, the index's expiry
  -- (I4) and its pruning (I5: it prunes when a member is added or moved)
  -- need nothing.
  if index ~= '' and score ~= at then index_put(index, key, at, dead) end
  if owner ~= '' and owner ~= index then
    -- The session changed owner: leave the old owner's index.
    if owned then
      redis.call('ZREM', owner, key)
      refresh_index_expiry(owner)
    end
  end
  -- Read after the writes, for a caller tracking keys (its near cache:
  -- ARGV[9] = 1), which so keeps tracking this one. The sessions it ended
  -- besides its own, for callers that cache them.
  if args[9] == '1' then redis.call('EXISTS', key) end
  return {'saved', version, unpack(doomed)}
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

  -- Reads (I7): both sessions, the old owner's entry, the new index.
  local n = redis.call('HMGET', key, 'v', 'w')
  if n[1] then
    -- A retry after a lost reply, even if the new key was saved since (I6).
    local wrote = applied(n[2], args[7])
    if wrote then return {'saved', wrote} end
    return {'taken'}
  end
  local f, stored = read_live(old, now)
  if not f[1] then return {'gone'} end
  if stored and stored ~= expected then return conflict(old, stored, f[2]) end
  local owner = f[5] or ''
  if owner ~= '' then entry(owner, old) end
  local idle, idle_arg = time_arg(args[4])
  local absolute, absolute_arg = time_arg(args[5])
  local d = deadline(now, idle, absolute)
  if not stored or d <= now then
    drop(old, owner)
    return {'gone'}
  end
  local dead, doomed = {}, {}
  if index ~= '' then
    dead = dead_entries(index, now)
    local leaving = nil
    if owner == index then leaving = old end
    doomed = over_cap(index, key, tonumber(args[8] or 0), args[3], leaving)
  end

  -- Writes.
  drop(old, owner)
  local version = expected + 1
  local at = late(d, idle)
  write(key, index, version, args, idle_arg, absolute_arg, at, nil)
  end_sessions(index, doomed)
  if index ~= '' then index_put(index, key, at, dead) end
  -- Read after the writes, for a caller tracking keys (its near cache:
  -- ARGV[9] = 1), which so keeps tracking this one. The sessions it ended
  -- besides its own, for callers that cache them.
  if args[9] == '1' then redis.call('EXISTS', key) end
  return {'saved', version, unpack(doomed)}
end

-- What delete and retire read of a session: its fields, and its owner's
-- entry (read before the call writes, I7).
local function read_owned(key)
  local f = redis.call('HMGET', key, 'v', 's', 'i', 'a', 'x')
  local owner = f[5] or ''
  if f[1] and owner ~= '' then entry(owner, key) end
  return f, owner
end

--[[ delete
KEYS[1] session key
ARGV    owner's index, or "" for any owner; now
Reply   1 if a live session was deleted, else 0
With an index given, the session is deleted only if that index owns it: this
is how a user revokes one of their own sessions by id and no one else's. A
session dead by `now` that Redis still holds is dropped too, but it was no
session to delete (every other function already answers as if it were gone).
]]
local function delete(keys, args)
  local key, owner, now = keys[1], args[1] or '', tonumber(args[2]) or 0
  local f, x = read_owned(key)
  if not f[1] then return 0 end
  if owner ~= '' and x ~= owner then return 0 end
  drop(key, x)
  if expired(now, tonumber(f[2]), tonumber(f[3]), tonumber(f[4])) then return 0 end
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
  local f, x = read_owned(key)
  if not f[1] then return {'gone'} end
  if expired(now, tonumber(f[2]), tonumber(f[3]), tonumber(f[4])) then
    -- Dead by the application's clock: finished off, as save does.
    drop(key, x)
    return {'gone'}
  end
  local stored = tonumber(f[1])
  if stored ~= expected then return conflict(key, stored, f[2]) end
  drop(key, x)
  return {'deleted'}
end

-- The live entries of an index (score after `now`), earliest deadline
-- first, at most WALK (I5), with the fields `fields` of each session; and
-- whether any of them was absent. An absent member during a migration
-- may sit on the other node: the call ends with MIGRATING (I7).
local function walk(index, now_arg, ...)
  local members = redis.call('ZRANGEBYSCORE', index, '(' .. now_arg, '+inf', 'LIMIT', 0, WALK)
  local rows, vanished = {}, {}
  for i, member in ipairs(members) do
    local f = redis.call('HMGET', member, ...)
    if f[1] then
      rows[#rows + 1] = {member, f}
    else
      vanished[#vanished + 1] = member
    end
  end
  if #vanished > 0 then unsure(index) end
  return rows, vanished
end

--[[ list
KEYS[1] user index
ARGV    now, kind ("" = every kind), limit (max sessions returned)
Reply   {{session key, version, blob, last seen}, ...}, earliest deadline first
Dead entries are pruned on the way (I5), and entries whose session vanished
(evicted, or deleted behind the library's back) are removed.
]]
local function list(keys, args)
  local index, now = keys[1], tonumber(args[1])
  local kind, limit = args[2], tonumber(args[3])
  local rows, vanished = walk(index, args[1], 'v', 'b', 's', 'i', 'a', 'k')
  local dead = dead_entries(index, now)
  local out = {}
  for _, row in ipairs(rows) do
    local member, f = row[1], row[2]
    local d = deadline(tonumber(f[3]), tonumber(f[4]), tonumber(f[5]))
    if d > now and (kind == '' or f[6] == kind) then
      out[#out + 1] = {member, tonumber(f[1]), f[2], tonumber(f[3]), d}
    end
  end
  -- Scores are E(deadline) (I3): sessions whose deadlines share a grid
  -- step tie there. The reply keeps the order they expire in, ties by key
  -- name as the index orders them; at most WALK rows to sort (I5).
  table.sort(out, function(p, q)
    if p[5] ~= q[5] then return p[5] < q[5] end
    return p[1] < q[1]
  end)
  for i = #out, limit + 1, -1 do out[i] = nil end
  for _, row in ipairs(out) do row[5] = nil end
  prune(index, dead)
  prune(index, vanished)
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
  local rows, vanished = walk(index, args[1], 'k', 's', 'i', 'a')
  local dead = dead_entries(index, now)
  local doomed, revoked = {}, 0
  for _, row in ipairs(rows) do
    local member, f = row[1], row[2]
    if member ~= keep and (kind == '' or f[1] == kind) then
      doomed[#doomed + 1] = member
      if not expired(now, tonumber(f[2]), tonumber(f[3]), tonumber(f[4])) then
        revoked = revoked + 1
      end
    end
  end
  end_sessions(index, doomed)
  prune(index, dead)
  prune(index, vanished)
  refresh_index_expiry(index)
  return revoked
end

-- Redis 7 flags: save and rotate store blobs, so they keep the default
-- (refused with OOM at maxmemory); the others only read, delete, or write a
-- few bytes, and stay available when Redis is full.
local function register(name, callback, flags)
  redis.register_function{function_name = name, callback = callback, flags = flags}
end
register('TRS_LIB_load', load, {'allow-oom'})
register('TRS_LIB_save', save, {})
register('TRS_LIB_rotate', rotate, {})
register('TRS_LIB_delete', delete, {'allow-oom'})
register('TRS_LIB_retire', retire, {'allow-oom'})
register('TRS_LIB_list', list, {'allow-oom'})
register('TRS_LIB_revoke', revoke, {'allow-oom'})

--[[ tower-sessions adapter (feature `tower-sessions`)

Keys (P = key prefix, G = two hex digits routing the key)
  P{G}:t:<h>      hash, one tower-sessions record. <h> = base64url(SHA-256
                  of the 16 bytes of the session id): Redis never sees the
                  id the cookie carries. G = the first byte of that SHA-256
                  in hex; a session created for a user gets an id whose G is
                  the user's, so it shares the user's slot.
                    b  sealed blob (envelope bound to the key name)
                    x  name of the owner's user index ("" = none)
                    n  nonce of the create that made it (a create re-sent
                       after a lost reply recognises its own write)
                  Key expiry (PEXPIREAT) = the record's expiry_date.
  P{G}:tu:<uid>   sorted set, a user's index: member = session key name,
                  score = its expiry (ms). Its own expiry is at least its
                  highest score. On Redis Cluster only sessions of the
                  index's slot are ever entered (the adapter checks), so
                  every call below touches one slot.
Sessions named by an index, and the index named by a session's `x`, are
reached without being declared; they share the declared key's hash tag. An
absent undeclared session key during a migration ends the call with
MIGRATING before any write (I7).
]]

-- Enters `key` (expiring at `exp`) in `index`; drops dead entries.
local function ts_index_put(index, key, exp, now)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  redis.call('ZADD', index, exp, key)
  local cur = redis.call('PEXPIRETIME', index)
  if cur >= 0 and cur < exp or cur == -1 then
    redis.call('PEXPIREAT', index, exp)
  end
end

-- The sessions of `index` to end so that, with one more, it keeps at most
-- `cap` live ones: the earliest to expire, at most PRUNE_BATCH (I5). Only
-- reads, so the call can still fail before its first write (I7).
local function ts_over_cap(index, now, cap)
  local live = redis.call('ZCOUNT', index, '(' .. now, '+inf')
  if live < cap then return {} end
  local n = math.min(live + 1 - cap, PRUNE_BATCH)
  local doomed = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf', 'LIMIT', 0, n)) do
    if redis.call('HGET', member, 'x') == index then doomed[#doomed + 1] = member end
  end
  return doomed
end

--[[ ts_create
KEYS[1] session key, KEYS[2] user index (optional)
ARGV    blob, expiry (ms), now (ms), nonce, cap (most live sessions per user)
Reply   1 created, 0 the key is taken (nothing written), -1 the expiry has
        passed (nothing written)
A user who already has `cap` live sessions loses the earliest to expire, so
listing and revocation (which read at most WALK entries) reach them all.
]]
local function ts_create(keys, args)
  local key, index = keys[1], keys[2] or ''
  local exp, now, nonce = tonumber(args[2]), tonumber(args[3]), args[4]
  local seen = redis.call('HGET', key, 'n')
  if seen then
    if seen == nonce then return 1 end
    return 0
  end
  if redis.call('EXISTS', key) == 1 then return 0 end
  if exp <= now then return -1 end
  local doomed = {}
  if index ~= '' then doomed = ts_over_cap(index, args[3], tonumber(args[5])) end
  redis.call('HSET', key, 'b', args[1], 'x', index, 'n', nonce)
  redis.call('PEXPIREAT', key, exp)
  if index ~= '' then
    for _, member in ipairs(doomed) do
      redis.call('DEL', member)
      redis.call('ZREM', index, member)
    end
    ts_index_put(index, key, exp, now)
  end
  return 1
end

--[[ ts_save
KEYS[1] session key, KEYS[2] user index (optional)
ARGV    blob, expiry (ms), now (ms), cap (as for ts_create)
Reply   1 saved, 0 no such session (deleted or expired: nothing written, it
        stays gone), -1 the expiry has passed (the session is deleted)
]]
local function ts_save(keys, args)
  local key, index = keys[1], keys[2] or ''
  local exp, now = tonumber(args[2]), tonumber(args[3])
  local old = redis.call('HGET', key, 'x')
  if not old then return 0 end
  if old ~= '' and old ~= index then redis.call('ZSCORE', old, key) end
  if exp <= now then
    redis.call('DEL', key)
    if old ~= '' then redis.call('ZREM', old, key) end
    return -1
  end
  local doomed = {}
  if index ~= '' and old ~= index then
    doomed = ts_over_cap(index, args[3], tonumber(args[4]))
  end
  redis.call('HSET', key, 'b', args[1], 'x', index)
  redis.call('PEXPIREAT', key, exp)
  if old ~= '' and old ~= index then redis.call('ZREM', old, key) end
  if index ~= '' then
    for _, member in ipairs(doomed) do
      redis.call('DEL', member)
      redis.call('ZREM', index, member)
    end
    ts_index_put(index, key, exp, now)
  end
  return 1
end

--[[ ts_load
KEYS[1] session key
Reply   the sealed blob, or nil
]]
local function ts_load(keys, args)
  return redis.call('HGET', keys[1], 'b')
end

--[[ ts_delete
KEYS[1] session key
Reply   1 deleted, 0 there was none
]]
local function ts_delete(keys, args)
  local key = keys[1]
  local index = redis.call('HGET', key, 'x')
  if not index then return 0 end
  if index ~= '' then redis.call('ZSCORE', index, key) end
  redis.call('DEL', key)
  if index ~= '' then redis.call('ZREM', index, key) end
  return 1
end

-- The live sessions `index` names and owns, earliest expiry first (at most
-- WALK), and the members to drop (vanished or owned by another index).
local function ts_walk(index, now)
  local members = redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf', 'LIMIT', 0, WALK)
  local rows, stale = {}, {}
  for _, member in ipairs(members) do
    local f = redis.call('HMGET', member, 'b', 'x')
    if f[1] and f[2] == index then
      rows[#rows + 1] = {member, f[1]}
    else
      if not f[1] then unsure(member) end
      stale[#stale + 1] = member
    end
  end
  return rows, stale
end

local function ts_drop_members(index, members, now)
  for _, member in ipairs(members) do redis.call('ZREM', index, member) end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  if redis.call('ZCARD', index) == 0 then redis.call('DEL', index) end
end

--[[ ts_list
KEYS[1] user index
ARGV    now (ms), limit
Reply   {{session key, blob}, ...}, earliest expiry first
]]
local function ts_list(keys, args)
  local index, now, limit = keys[1], args[1], tonumber(args[2])
  local rows, stale = ts_walk(index, now)
  local out = {}
  for i = 1, math.min(limit, #rows) do out[i] = rows[i] end
  ts_drop_members(index, stale, now)
  return out
end

--[[ ts_revoke
KEYS[1] user index
ARGV    now (ms), session key to keep ("" = none), the only session key to
        revoke ("" = all of the index's but the kept one)
Reply   number of sessions deleted
]]
local function ts_revoke(keys, args)
  local index, now, keep, only = keys[1], args[1], args[2], args[3]
  local rows, stale = ts_walk(index, now)
  local n = 0
  for _, row in ipairs(rows) do
    local member = row[1]
    if member ~= keep and (only == '' or member == only) then
      redis.call('DEL', member)
      stale[#stale + 1] = member
      n = n + 1
    end
  end
  ts_drop_members(index, stale, now)
  return n
end

register('TRS_LIB_ts_create', ts_create, {})
register('TRS_LIB_ts_save', ts_save, {})
register('TRS_LIB_ts_load', ts_load, {'allow-oom'})
register('TRS_LIB_ts_delete', ts_delete, {'allow-oom'})
register('TRS_LIB_ts_list', ts_list, {'allow-oom'})
register('TRS_LIB_ts_revoke', ts_revoke, {'allow-oom'})
