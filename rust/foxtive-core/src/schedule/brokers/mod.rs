//! The lease and the tick store in each broker, behind one trait.
//!
//! * Redis: `SET NX PX` under a fencing counter (`INCR`), renewed and
//!   released by Lua compare-and-set scripts ([`redis`]).
//! * PostgreSQL: a lease row taken with `INSERT ... ON CONFLICT DO UPDATE
//!   ... WHERE expires_at < now()` ([`postgres`]).
//! * SQLite: a lock row, the same idea in an `IMMEDIATE` transaction
//!   ([`sqlite`]).
//! * NATS: a JetStream KV bucket; `create` / `update` expecting a revision
//!   take and renew the lease, the revision is the fencing token ([`nats`]).
//! * memory: a process-wide map ([`super::leader::MemoryLease`]).
//! * RabbitMQ: the lease and the ticks live in the app's result store
//!   ([`rabbitmq`] says why not an exclusive queue); see [`open_with_results`].

pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;

use super::leader::{LeaderLease, MemoryLease};
use super::store::TickStore;
use crate::backend::nats::Auth;
use crate::backend::options::Options;
use crate::backend::registry;
use crate::{Error, Result};

/// A broker that holds both the lease and the last ticks of one app.
pub trait ScheduleBroker: LeaderLease + TickStore {}
impl<T: LeaderLease + TickStore> ScheduleBroker for T {}

/// The lease and store of app `app` in the broker `url` names (connects
/// lazily, on first use).
pub fn open(url: &str, app: &str) -> Result<Arc<dyn ScheduleBroker>> {
    open_with(url, app, Options::new())
}

/// [`open`] with the broker's connection `options` besides its URL: on NATS
/// the credentials its backend takes ([`Auth::OPTIONS`]: `token`,
/// `nkey_file`, `creds_file`); no other broker takes any.
pub fn open_with(url: &str, app: &str, mut options: Options) -> Result<Arc<dyn ScheduleBroker>> {
    if app.is_empty() {
        return Err(Error::Config("app: must be a non-empty name".into()));
    }
    let kind = registry::backend_kind(url)?;
    if kind.name == "nats" {
        let auth = Auth::take_from(&mut options)?;
        options.finish("schedules on NATS", Auth::OPTIONS)?;
        return Ok(Arc::new(nats::NatsSchedule::new(url, app, auth)?));
    }
    options.finish(&format!("schedules on {}", kind.name), &[])?;
    match kind.name {
        "memory" => Ok(Arc::new(MemoryLease::new(app))),
        "redis" => Ok(Arc::new(redis::RedisSchedule::new(url, app)?)),
        "postgres" => Ok(Arc::new(postgres::PostgresSchedule::new(url, app)?)),
        "sqlite" => Ok(Arc::new(sqlite::SqliteSchedule::new(url, app)?)),
        "rabbitmq" => Ok(Arc::new(rabbitmq::RabbitSchedule::new(None, app)?)),
        other => Err(Error::Config(format!(
            "schedules: the {other} broker has no schedule lease yet (memory, redis, \
             postgresql, sqlite, nats and rabbitmq do); run the \
             scheduler with --no-scheduler there, or give the app one of those brokers"
        ))),
    }
}

/// [`open`] for an app whose result store is `results`: a broker with no
/// store of its own (RabbitMQ) keeps the lease and the ticks there.
pub fn open_with_results(
    url: &str,
    app: &str,
    results: Option<&str>,
) -> Result<Arc<dyn ScheduleBroker>> {
    open_for_app(url, app, results, Options::new())
}

/// [`open_with_results`] with the broker's connection `options` (see
/// [`open_with`]).
pub fn open_for_app(
    url: &str,
    app: &str,
    results: Option<&str>,
    options: Options,
) -> Result<Arc<dyn ScheduleBroker>> {
    if registry::backend_kind(url)?.name == "rabbitmq" {
        if app.is_empty() {
            return Err(Error::Config("app: must be a non-empty name".into()));
        }
        options.finish("schedules on rabbitmq", &[])?;
        return Ok(Arc::new(rabbitmq::RabbitSchedule::new(results, app)?));
    }
    open_with(url, app, options)
}

#[cfg(test)]
mod tests {
    //! One contract for every broker's lease and store, against the real
    //! Redis and PostgreSQL (`FOXTIVE_REDIS_URL`, `FOXTIVE_POSTGRES_URL`).

    use std::time::Duration;

    use super::*;
    use crate::schedule::leader::Holder;
    use crate::schedule::store::Stored;
    use chrono::DateTime;

    fn unique(prefix: &str) -> String {
        format!("{prefix}_{:012x}", rand::random::<u64>() >> 16)
    }

    /// Two schedulers of one app on `url`: one leads; a deposed leader can
    /// neither renew nor record; release hands over at once.
    async fn contract(url: &str, app: &str) {
        contract_between(open(url, app).unwrap(), open(url, app).unwrap()).await;
    }

    /// [`contract`] for two schedulers however they were opened (a RabbitMQ
    /// app's go through its result store).
    pub(super) async fn contract_between(a: Arc<dyn ScheduleBroker>, b: Arc<dyn ScheduleBroker>) {
        let (ha, hb) = (Holder::this_process(), Holder::this_process());
        let ttl = Duration::from_millis(800);
        let la = a.try_acquire(&ha, ttl).await.unwrap().expect("a leads");
        assert!(b.try_acquire(&hb, ttl).await.unwrap().is_none());
        assert!(a.renew(&la, ttl).await.unwrap());
        let info = b.current().await.unwrap().expect("a leader");
        assert_eq!((info.holder, info.token), (ha.clone(), la.token));
        let v = Stored {
            fingerprint: "every:1".into(),
            tick: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        assert!(a.record("s", &v, la.token).await.unwrap());
        assert_eq!(b.last("s").await.unwrap(), Some(v.clone()));
        // a stops renewing: b takes over once the lease ran out.
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        let lb = b.try_acquire(&hb, ttl).await.unwrap().expect("b leads");
        assert!(lb.token > la.token);
        assert!(!a.renew(&la, ttl).await.unwrap());
        let later = Stored {
            tick: DateTime::from_timestamp(1_800_000_001, 0).unwrap(),
            ..v.clone()
        };
        assert!(!a.record("s", &later, la.token).await.unwrap());
        assert_eq!(a.last("s").await.unwrap(), Some(v));
        assert!(b.record("s", &later, lb.token).await.unwrap());
        assert_eq!(b.all().await.unwrap(), vec![("s".to_string(), later)]);
        // A release hands over at once.
        b.release(&lb).await.unwrap();
        assert!(b.current().await.unwrap().is_none());
        assert!(a.try_acquire(&ha, ttl).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn memory_keeps_the_contract() {
        contract("memory://", &unique("contract")).await;
    }

    #[tokio::test]
    async fn sqlite_keeps_the_contract() {
        let path = std::env::temp_dir().join(format!("{}.db", unique("foxtive-sched")));
        contract(&format!("sqlite:///{}", path.display()), "app").await;
        for ext in ["db", "db-wal", "db-shm"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
    }

    #[tokio::test]
    async fn redis_keeps_the_contract() {
        let url = std::env::var("FOXTIVE_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let app = unique("contract");
        contract(&url, &app).await;
        let client = ::redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        delete_redis_schedules(&mut conn, &app).await;
    }

    /// Delete app `app`'s schedule keys in Redis (lease, fence, ticks).
    pub(super) async fn delete_redis_schedules(
        conn: &mut ::redis::aio::MultiplexedConnection,
        app: &str,
    ) {
        let base = format!("foxtive:schedules:{{{app}}}");
        let _: () = ::redis::cmd("DEL")
            .arg(format!("{base}:leader"))
            .arg(format!("{base}:fence"))
            .arg(format!("{base}:ticks"))
            .query_async(conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn nats_keeps_the_contract() {
        let url =
            std::env::var("FOXTIVE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let app = unique("contract");
        contract(&url, &app).await;
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.delete_key_value(format!("foxtive_schedules_{app}"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn postgres_keeps_the_contract() {
        let base = std::env::var("FOXTIVE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into());
        let schema = unique("sched");
        contract(&format!("{base}?schema={schema}"), "app").await;
        let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .unwrap();
    }
}
