//! Lease and last ticks in Redis.
//!
//! Keys, per app (one hash slot, `{...}`): `foxtive:schedules:{APP}:leader`
//! holds `token|host|pid|nonce` with a PX expiry; `...:fence` is the fencing
//! counter (INCR on each acquisition); `...:ticks` is a hash schedule ->
//! last tick. Every change is one Lua script, so each is atomic.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use tokio::sync::OnceCell;

use crate::redact::scrub;
use crate::redis_url::{self, Conn, RedisClient};
use crate::schedule::leader::{Holder, LeaderInfo, LeaderLease, Lease};
use crate::schedule::store::{Stored, TickStore};
use crate::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(3);

const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#;

/// HSET only while the lease's token is `ARGV[1]`.
const RECORD: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local token = string.match(v, '^(%d+)|')
if token ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"#;

pub struct RedisSchedule {
    client: RedisClient,
    redacted: String,
    secrets: Vec<String>,
    conn: OnceCell<Conn>,
    leader_key: String,
    fence_key: String,
    ticks_key: String,
}

impl RedisSchedule {
    pub fn new(url: &str, app: &str) -> Result<Self> {
        let target = redis_url::open_any(url, "broker")?;
        let base = format!("foxtive:schedules:{{{app}}}");
        Ok(RedisSchedule {
            client: target.client,
            redacted: target.redacted,
            secrets: target.secrets,
            conn: OnceCell::new(),
            leader_key: format!("{base}:leader"),
            fence_key: format!("{base}:fence"),
            ticks_key: format!("{base}:ticks"),
        })
    }

    async fn conn(&self) -> Result<Conn> {
        self.conn
            .get_or_try_init(|| async {
                self.client
                    .managed(TIMEOUT, 1)
                    .await
                    .map_err(|e| self.error(e))
            })
            .await
            .cloned()
    }

    fn error(&self, e: redis::RedisError) -> Error {
        Error::Backend(format!(
            "schedules on Redis {}: {}",
            self.redacted,
            scrub(e.to_string(), &self.secrets)
        ))
    }

    fn value(lease: &Lease) -> String {
        format!("{}|{}", lease.token, lease.holder.encode())
    }
}

#[async_trait]
impl LeaderLease for RedisSchedule {
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>> {
        let mut conn = self.conn().await?;
        let token: u64 = Script::new(ACQUIRE)
            .key(&self.leader_key)
            .key(&self.fence_key)
            .arg(holder.encode())
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok((token > 0).then(|| Lease {
            token,
            holder: holder.clone(),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn().await?;
        let kept: i64 = Script::new(RENEW)
            .key(&self.leader_key)
            .arg(Self::value(lease))
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(kept == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: i64 = Script::new(RELEASE)
            .key(&self.leader_key)
            .arg(Self::value(lease))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn current(&self) -> Result<Option<LeaderInfo>> {
        let mut conn = self.conn().await?;
        let (value, pttl): (Option<String>, i64) = redis::pipe()
            .get(&self.leader_key)
            .pttl(&self.leader_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(value.and_then(|v| {
            let (token, holder) = v.split_once('|')?;
            Some(LeaderInfo {
                holder: Holder::decode(holder)?,
                token: token.parse().ok()?,
                expires_in: Duration::from_millis(pttl.max(0) as u64),
            })
        }))
    }
}

#[async_trait]
impl TickStore for RedisSchedule {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>> {
        let mut conn = self.conn().await?;
        let v: Option<String> = redis::cmd("HGET")
            .arg(&self.ticks_key)
            .arg(schedule)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(v.as_deref().and_then(Stored::decode))
    }

    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool> {
        let mut conn = self.conn().await?;
        let done: i64 = Script::new(RECORD)
            .key(&self.leader_key)
            .key(&self.ticks_key)
            .arg(token.to_string())
            .arg(schedule)
            .arg(value.encode())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(done == 1)
    }

    async fn all(&self) -> Result<Vec<(String, Stored)>> {
        let mut conn = self.conn().await?;
        let map: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&self.ticks_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut out: Vec<(String, Stored)> = map
            .into_iter()
            .filter_map(|(k, v)| Some((k, Stored::decode(&v)?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
