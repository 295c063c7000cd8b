//! Opening a redis-rs client from any Redis URL foxtive accepts.
//!
//! redis-rs reads a password from the userinfo on `redis://` / `rediss://`
//! (`redis://user:PASSWORD@host`) and from `?pass=` on `unix://` /
//! `redis+unix://`, and silently ignores `?password=`, the form redis-py users
//! write (a password that is then never sent). foxtive reads `?password=` /
//! `?pass=` and `?username=` / `?user=` on every scheme, so that every
//! credential [`crate::redact`] hides is one that is actually used.
//!
//! `redis+cluster://[user:password@]h1:7000,h2:7001` (`rediss+cluster://`
//! for TLS) names a Redis Cluster by some of its nodes: every Redis user of
//! foxtive (streams backend, dead letters, schedules, rate limits) opens it
//! through [`open_any`] and talks to it through one [`Conn`], whichever kind
//! of server it is. MOVED/ASK redirections and slot moves are followed by
//! redis-rs's cluster client.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value,
};

use crate::redact::{query_pairs, redact_url, scrub, url_secrets};
use crate::{Error, Result};

/// A client, with the URL as it may be shown and the secrets to scrub.
pub struct RedisTarget {
    pub client: redis::Client,
    /// The URL with every credential replaced by `***`.
    pub redacted: String,
    /// Every secret of the URL, raw and decoded, longest first.
    pub secrets: Vec<String>,
}

/// Parse `url` (`setting` names it in errors) into a client; connects nowhere.
pub fn open(url: &str, setting: &str) -> Result<RedisTarget> {
    let redacted = redact_url(url);
    let secrets = url_secrets(url);
    let invalid = |why: String| {
        Error::Config(format!(
            "{setting}: {redacted} is not a usable Redis URL (redis://, rediss://, unix:// \
             or redis+unix://): {}",
            scrub(why, &secrets)
        ))
    };
    let info = url
        .into_connection_info()
        .map_err(|e| invalid(e.to_string()))?;
    let (user, password) = query_credentials(url).map_err(invalid)?;
    let mut settings = info.redis_settings().clone();
    if let Some(pw) = password {
        match settings.password() {
            Some(given) if given != pw => {
                return Err(invalid(
                    "the password is given twice, differently (userinfo and query)".into(),
                ))
            }
            _ => settings = settings.set_password(pw),
        }
    }
    if let Some(user) = user {
        if settings.username().is_none() {
            settings = settings.set_username(user);
        }
    }
    let client = redis::Client::open(info.set_redis_settings(settings))
        .map_err(|e| invalid(e.to_string()))?;
    Ok(RedisTarget {
        client,
        redacted,
        secrets,
    })
}

/// `(user, password)` from the query: `user`/`username`, `pass`/`password`.
/// The same credential given twice with different values is an error.
fn query_credentials(url: &str) -> std::result::Result<(Option<String>, Option<String>), String> {
    let (mut user, mut password): (Option<String>, Option<String>) = (None, None);
    for (key, value) in query_pairs(url) {
        let slot = match key.as_str() {
            "password" | "pass" => &mut password,
            "username" | "user" => &mut user,
            _ => continue,
        };
        match slot {
            Some(old) if *old != value => {
                return Err(format!("`{key}` is given twice in the query, differently"));
            }
            _ => *slot = Some(value),
        }
    }
    Ok((
        user.filter(|u| !u.is_empty()),
        password.filter(|p| !p.is_empty()),
    ))
}

/// A client for one server or for a cluster.
// One per backend or store, made once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum RedisClient {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// [`open_any`]'s result: [`RedisTarget`] for any Redis URL, cluster or not.
pub struct AnyTarget {
    pub client: RedisClient,
    pub redacted: String,
    pub secrets: Vec<String>,
}

/// `redis+cluster://` or `rediss+cluster://`.
pub fn is_cluster_url(url: &str) -> bool {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("redis+cluster" | "rediss+cluster"))
}

/// `url` as a cluster: a `redis://` / `rediss://` URL names one of its nodes
/// (`cluster=True` in a config).
pub fn open_cluster(url: &str, setting: &str) -> Result<AnyTarget> {
    if is_cluster_url(url) {
        return open_any(url, setting);
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let cluster_scheme = match scheme.to_ascii_lowercase().as_str() {
        "redis" => "redis+cluster",
        "rediss" => "rediss+cluster",
        _ => {
            return Err(Error::Config(format!(
                "{setting}: {} cannot name a Redis Cluster node (cluster=True needs \
                 redis://, rediss:// or redis+cluster://)",
                redact_url(url)
            )))
        }
    };
    open_any(&format!("{cluster_scheme}://{rest}"), setting)
}

/// Parse any Redis URL foxtive accepts, cluster URLs included; connects nowhere.
pub fn open_any(url: &str, setting: &str) -> Result<AnyTarget> {
    if !is_cluster_url(url) {
        let RedisTarget {
            client,
            redacted,
            secrets,
        } = open(url, setting)?;
        return Ok(AnyTarget {
            client: RedisClient::Single(client),
            redacted,
            secrets,
        });
    }
    let redacted = redact_url(url);
    let secrets = url_secrets(url);
    let invalid = |why: String| {
        Error::Config(format!(
            "{setting}: {redacted} is not a usable Redis Cluster URL \
             (redis+cluster://[user:password@]host:port,host:port,...): {}",
            scrub(why, &secrets)
        ))
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let tls = scheme.to_ascii_lowercase().starts_with("rediss");
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    if !matches!(path, "" | "/" | "/0") {
        return Err(invalid(
            "a cluster has database 0 only; give no /db path".to_string(),
        ));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = query_credentials(url).map_err(invalid)?;
    let mut nodes = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let node = format!(
            "{}://{}{host}",
            if tls { "rediss" } else { "redis" },
            userinfo.map(|u| format!("{u}@")).unwrap_or_default()
        );
        let info = node
            .as_str()
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        nodes.push(info);
    }
    if nodes.is_empty() {
        return Err(invalid("no host:port given".to_string()));
    }
    let first = nodes[0].redis_settings().clone();
    // The client's own retries (MOVED/ASK, a node down) stay short, about
    // 1.5 s in all: redis-rs's default (16 retries, >= 1.28 s apart) would
    // hold a command for tens of seconds while a master fails over; foxtive's
    // callers retry on their own, with the reconnect strategy.
    let mut builder = ClusterClientBuilder::new(nodes)
        .retries(6)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .retry_wait_formula(50, 2);
    match (first.password(), password) {
        (Some(given), Some(pw)) if given != pw => {
            return Err(invalid(
                "the password is given twice, differently (userinfo and query)".into(),
            ))
        }
        (_, Some(pw)) => builder = builder.password(pw),
        (Some(given), None) => builder = builder.password(given),
        (None, None) => {}
    }
    if let Some(name) = first.username().map(str::to_string).or(user) {
        builder = builder.username(name);
    }
    let client = builder.build().map_err(|e| invalid(e.to_string()))?;
    Ok(AnyTarget {
        client: RedisClient::Cluster(client),
        redacted,
        secrets,
    })
}

impl RedisClient {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster(_))
    }

    /// Where to connect for a plain connection (`None` for a cluster).
    pub fn single_info(&self) -> Option<&redis::ConnectionInfo> {
        match self {
            RedisClient::Single(c) => Some(c.get_connection_info()),
            RedisClient::Cluster(_) => None,
        }
    }

    /// A multiplexed connection (one server) or a cluster connection (one
    /// multiplexed connection per node it needs, following redirections).
    pub async fn connect(&self, connect: Duration, response: Duration) -> RedisResult<Conn> {
        match self {
            RedisClient::Single(c) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(response));
                c.get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            RedisClient::Cluster(c) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                c.get_async_connection_with_config(config)
                    .await
                    .map(Conn::Cluster)
            }
        }
    }

    /// A connection that reconnects by itself (for stores used now and
    /// then: dead letters, schedules): a connection manager on one server,
    /// a cluster connection (which reconnects per node) on a cluster.
    pub async fn managed(&self, timeout: Duration, retries: usize) -> RedisResult<Conn> {
        match self {
            RedisClient::Single(c) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(retries);
                c.get_connection_manager_with_config(config)
                    .await
                    .map(Conn::Managed)
            }
            RedisClient::Cluster(_) => self.connect(timeout, timeout).await,
        }
    }
}

/// One connection to a server or a cluster; commands and pipelines go
/// through it alike (`query_async(&mut conn)`, `invoke_async(&mut conn)`).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Managed(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Managed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM) of
/// its hash tag (the text between the first `{` and the next `}`, when not
/// empty), else of the whole key, modulo 16384.
pub fn slot_of(key: &str) -> u16 {
    crc16_xmodem(hash_tag(key).unwrap_or(key).as_bytes()) % SLOTS
}

/// The hash tag of `key`, if it has one Redis Cluster uses.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

impl Conn {
    /// `WAIT replicas timeout` on the connection that wrote `key`: how many
    /// replicas acknowledged every write this connection made so far.
    /// On a cluster it goes to the master of `key`'s slot (the cluster
    /// client keeps one connection per node, the one the writes went over).
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis().max(1) as u64);
        match self {
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let reply = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
            other => cmd.query_async(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::open;

    #[test]
    fn reads_every_credential_form() {
        for url in [
            "redis://:pw@127.0.0.1:1/0",
            "redis://127.0.0.1:1/0?password=pw",
            "redis://127.0.0.1:1/0?pass=pw",
            "unix:///tmp/x.sock?pass=pw",
            "unix:///tmp/x.sock?password=pw",
            "redis+unix:///tmp/x.sock?password=pw&db=1",
        ] {
            let target = match open(url, "url") {
                Ok(t) => t,
                Err(e) => panic!("{url}: {e}"),
            };
            let info = target.client.get_connection_info().redis_settings().clone();
            assert_eq!(info.password(), Some("pw"), "{url}");
            assert!(!target.redacted.contains("pw"), "{}", target.redacted);
        }
    }

    #[test]
    fn conflicting_passwords_are_an_error_without_either() {
        let e = match open("redis://:one1@127.0.0.1:1/0?password=two2", "url") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("twice"), "{e}");
        assert!(!e.contains("one1") && !e.contains("two2"), "{e}");
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node_and_hide_the_password() {
        let t = match open_any("redis+cluster://u:s3cret@h1:7000,h2:7001?x=1", "url") {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert!(t.client.is_cluster());
        assert_eq!(t.redacted, "redis+cluster://u:***@h1:7000,h2:7001?x=1");
        assert!(t.secrets.iter().any(|s| s == "s3cret"));
        assert!(is_cluster_url("REDIS+CLUSTER://h:1"));
        assert!(!is_cluster_url("redis://h:1"));
        let single = match open_any("redis://127.0.0.1:1/0", "url") {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert!(!single.client.is_cluster());
        for bad in ["redis+cluster://", "redis+cluster://u:s3cret@h:1/3"] {
            match open_any(bad, "url") {
                Err(Error::Config(m)) => assert!(!m.contains("s3cret"), "{m}"),
                _ => panic!("{bad} accepted"),
            }
        }
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Reference values from `CLUSTER KEYSLOT` (redis.io's examples).
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(
            slot_of("{user1000}.following"),
            slot_of("{user1000}.followers")
        );
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(hash_tag("a{}b{c}"), None);
        assert_eq!(hash_tag("a{b}{c}"), Some("b"));
        // Agrees with the cluster client's own routing.
        for key in ["foo", "{orders}:dlq", "x{y}z", "{}", "q:p3"] {
            assert_eq!(
                Route::with_key(key, SlotAddr::Master),
                Route::new(slot_of(key), SlotAddr::Master),
                "{key}"
            );
        }
    }
}
