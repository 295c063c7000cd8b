//! Lua scripts: the parts that must be atomic on the server.
//!
//! Times come from the server's clock (`TIME`), so workers on machines with
//! skewed clocks agree on when a delayed message is due.

use redis::Script;

/// Netstring list decoding shared by the scripts (see `codec`).
const DECODE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function decode(m)
  local out, pos, len = {}, 1, #m
  while pos <= len do
    local colon = string.find(m, ':', pos, true)
    if not colon then break end
    local n = tonumber(string.sub(m, pos, colon - 1))
    if not n then break end
    out[#out + 1] = string.sub(m, colon + 1, colon + n)
    pos = colon + n + 2
  end
  return out
end
";

/// Store delayed messages: KEYS[1] the sorted set; ARGV pairs of
/// (delay ms, member). Due time = server time + delay.
const SCHEDULE: &str = r"
local now = now_ms()
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[i])), ARGV[i + 1])
end
return #ARGV / 2
";

/// Move due messages into the stream: KEYS[1] the sorted set, KEYS[2] the
/// stream; ARGV[1] most to move, ARGV[2] MAXLEN (empty: none). Each member
/// is XADDed then removed in one atomic step, so two workers never both
/// move it. Returns {moved, ms until the next one is due (-1: none)}.
const MOVE_DUE: &str = r"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local f = decode(m)
  if #f >= 3 then
    if ARGV[2] ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(f, 2))
    else
      redis.call('XADD', KEYS[2], '*', unpack(f, 2))
    end
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then
  wait = tonumber(nxt[2]) - now
  if wait < 0 then wait = 0 end
end
return {#due, wait}
";

/// Heartbeat: reset the idle time of entries this consumer still owns, so
/// peers do not reclaim live work. KEYS[1] the stream; ARGV[1] group,
/// ARGV[2] consumer, ARGV[3..] entry ids. Entries another consumer took
/// over meanwhile are left alone. Returns how many were refreshed.
const HEARTBEAT: &str = r"
local n = 0
for i = 3, #ARGV do
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if not ok then return n end
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
";

/// Is there anything left for the group? KEYS[1] stream, KEYS[2] sorted
/// set; ARGV[1] group. Returns {delayed, pending, undelivered (0 or 1)}.
const PROBE: &str = r"
local delayed = redis.call('ZCARD', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {delayed, 0, 0} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
for _, g in ipairs(groups) do
  local name, pending, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1]
    elseif g[i] == 'pending' then pending = g[i + 1]
    elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then
    local after = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
    return {delayed, pending, #after}
  end
end
local len = redis.call('XLEN', KEYS[1])
if len > 0 then len = 1 end
return {delayed, 0, len}
";

pub(crate) struct Scripts {
    pub schedule: Script,
    pub move_due: Script,
    pub heartbeat: Script,
    pub probe: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_helpers = |body: &str| Script::new(&format!("{DECODE}{body}"));
        Scripts {
            schedule: with_helpers(SCHEDULE),
            move_due: with_helpers(MOVE_DUE),
            heartbeat: Script::new(HEARTBEAT),
            probe: Script::new(PROBE),
        }
    }
}
