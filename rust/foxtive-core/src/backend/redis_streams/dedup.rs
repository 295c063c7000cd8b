//! Publish deduplication: a message with `Outgoing::dedup` is enqueued only
//! if no message took its key within the TTL.
//!
//! One Lua script does the check and the enqueue: `GET` the key, and when it
//! is free, `XADD` the entry (or `ZADD` it to the delayed set) and `SET` the
//! key to the message id with `PX ttl`, all in one atomic step on the server.
//! No process death between them can leave a key without its message, or two
//! messages for one key. The key is `{stream}:dedup:{key}`, beside the
//! stream's other keys. A publish retried after a lost reply finds the key
//! holding its own id and reports it, so a retry never enqueues twice.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::*;
use crate::message::Dedup;

/// KEYS[1] the dedup key, KEYS[2] the stream, KEYS[3] the delayed set.
/// ARGV[1] TTL ms, ARGV[2] the message id ('' when the stream names it),
/// ARGV[3] MAXLEN ('' for none), ARGV[4] delay ms ('' for now), ARGV[5] the
/// delayed member (when delayed), ARGV[6..] the entry's field/value pairs.
/// Returns {1, id} when enqueued, {0, id of the holder} when not.
const PUBLISH_ONCE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local id = ARGV[2]
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[3], string.format('%d', now + tonumber(ARGV[4])), ARGV[5])
else
  local entry
  if ARGV[3] ~= '' then
    entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 6))
  else
    entry = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
  end
  if id == '' then id = entry end
end
redis.call('SET', KEYS[1], id, 'PX', ARGV[1])
return {1, id}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_ONCE));

/// The Redis key holding `key` for `stream`.
pub(crate) fn dedup_key(stream: &str, key: &str) -> String {
    format!("{stream}:dedup:{key}")
}

impl Inner {
    /// Publish one message unless its dedup key is taken; the id of the
    /// message that holds the key (this one's when it was enqueued).
    pub(super) async fn publish_once(&self, m: &Outgoing, dedup: &Dedup) -> Result<String> {
        // A delayed entry waits in the sorted set under an id of its own.
        let generated = match (&m.message_id, m.delay) {
            (None, Some(d)) if !d.is_zero() => Some(format!("{:032x}", rand::random::<u128>())),
            _ => None,
        };
        let id = m.message_id.as_deref().or(generated.as_deref());
        let fields = Parts::from_outgoing(m, id).fields();
        let delay_ms = m
            .delay
            .filter(|d| !d.is_zero())
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64);
        let member = delay_ms.map(|_| codec::delayed_member(&fields));
        let ttl_ms = dedup.ttl.as_millis().clamp(1, i64::MAX as u128) as u64;
        let key = dedup_key(&self.cfg.stream_name, &dedup.key);
        let reply = self
            .with_writer("publish (dedup)", PUBLISH_RETRY_WINDOW, |mut conn| {
                let mut inv = SCRIPT.key(&key);
                inv.key(&self.cfg.stream_name).key(&self.cfg.delayed_key);
                inv.arg(ttl_ms).arg(id.unwrap_or(""));
                match self.cfg.maxlen {
                    Some(n) => inv.arg(n),
                    None => inv.arg(""),
                };
                match (delay_ms, &member) {
                    (Some(ms), Some(member)) => inv.arg(ms).arg(member.as_slice()),
                    _ => inv.arg("").arg(""),
                };
                if delay_ms.is_none() {
                    for (k, v) in &fields {
                        inv.arg(&**k).arg(&**v);
                    }
                }
                async move {
                    let reply = inv.invoke_async::<Value>(&mut conn).await?;
                    self.replicated(&mut conn).await?;
                    Ok(reply)
                }
            })
            .await?;
        let (enqueued, holder) = match reply {
            Value::Array(mut items) if items.len() == 2 => {
                let holder = reply::string(items.pop().unwrap_or(Value::Nil));
                (reply::int(&items[0]) == Some(1), holder)
            }
            _ => (false, None),
        };
        let holder = holder
            .ok_or_else(|| Error::Backend("dedup publish: unexpected script reply".to_string()))?;
        if enqueued {
            if delay_ms.is_some() {
                self.timer_wake.notify_one();
            }
            self.touch();
        }
        Ok(holder)
    }
}
