//! Lease and last ticks in PostgreSQL: two small tables in the app's schema
//! (created on first use, `IF NOT EXISTS`, under an advisory lock so that
//! several processes starting together do not race):
//!
//! * `schedule_leases (app PK, holder, token, expires_at)`: taken with
//!   `INSERT ... ON CONFLICT (app) DO UPDATE ... WHERE expires_at < now()`,
//!   the token growing by one on each take; renewed with `UPDATE ... WHERE
//!   token = mine`. Times are the server's `now()`, so hosts' clocks do not
//!   matter.
//! * `schedule_ticks (app, name, fingerprint, tick)`: written only while
//!   the writer's token is the lease's (`INSERT ... SELECT ... WHERE EXISTS`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::backend::postgres::schema::quote_ident;
use crate::backend::postgres::DEFAULT_SCHEMA;
use crate::backend::postgres::{connect, parse_dsn};
use crate::redact::scrub;
use crate::schedule::leader::{Holder, LeaderInfo, LeaderLease, Lease};
use crate::schedule::store::{Stored, TickStore};
use crate::{Error, Result};

/// Advisory lock key of the table creation (any constant; "foxtsche").
const CREATE_LOCK: i64 = 0x666f_7874_7363_6865;

pub struct PostgresSchedule {
    /// Connected to through the backend's `connect` (the DSN's TLS).
    dsn: crate::backend::postgres::Dsn,
    redacted: String,
    secrets: Vec<String>,
    app: String,
    leases: String,
    ticks: String,
    schema: String,
    client: Mutex<Option<Client>>,
}

impl PostgresSchedule {
    pub fn new(url: &str, app: &str) -> Result<Self> {
        let dsn = parse_dsn(url)?;
        let schema = dsn
            .schema
            .clone()
            .unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        let q = quote_ident(&schema);
        Ok(PostgresSchedule {
            redacted: dsn.redacted.clone(),
            secrets: dsn.secrets.clone(),
            app: app.to_string(),
            leases: format!("{q}.schedule_leases"),
            ticks: format!("{q}.schedule_ticks"),
            schema,
            client: Mutex::new(None),
            dsn,
        })
    }

    fn error(&self, what: &str, e: tokio_postgres::Error) -> Error {
        let text = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        };
        Error::Backend(format!(
            "schedules on PostgreSQL {} ({what}): {}",
            self.redacted,
            scrub(text, &self.secrets)
        ))
    }

    async fn connect(&self) -> Result<Client> {
        let (client, connection) = connect(&self.dsn).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let q = quote_ident(&self.schema);
        let ddl = format!(
            "SELECT pg_advisory_xact_lock({CREATE_LOCK});
             CREATE SCHEMA IF NOT EXISTS {q};
             CREATE TABLE IF NOT EXISTS {leases} (
                 app text PRIMARY KEY, holder text NOT NULL, token bigint NOT NULL,
                 expires_at timestamptz NOT NULL);
             CREATE TABLE IF NOT EXISTS {ticks} (
                 app text NOT NULL, name text NOT NULL, fingerprint text NOT NULL,
                 tick timestamptz NOT NULL, PRIMARY KEY (app, name));",
            leases = self.leases,
            ticks = self.ticks
        );
        client
            .batch_execute(&format!("BEGIN; {ddl} COMMIT;"))
            .await
            .map_err(|e| self.error("create the schedule tables", e))?;
        Ok(client)
    }

    /// Run `op` on the connection (made on first use; a broken one is
    /// dropped so the next call reconnects).
    async fn with<T, F>(&self, what: &str, op: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c Client,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>
                    + Send
                    + 'c,
            >,
        >,
    {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = Some(self.connect().await?);
        }
        let Some(client) = slot.as_ref() else {
            return Err(Error::ConnectionLost(
                "schedules: no PostgreSQL connection".into(),
            ));
        };
        match op(client).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_closed() || e.as_db_error().is_none() {
                    *slot = None;
                }
                Err(self.error(what, e))
            }
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[async_trait]
impl LeaderLease for PostgresSchedule {
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>> {
        let sql = format!(
            "INSERT INTO {l} AS l (app, holder, token, expires_at)
             VALUES ($1, $2, 1, now() + make_interval(secs => $3::float8 / 1000.0))
             ON CONFLICT (app) DO UPDATE
               SET holder = EXCLUDED.holder, token = l.token + 1, expires_at = EXCLUDED.expires_at
               WHERE l.expires_at < now()
             RETURNING token",
            l = self.leases
        );
        let (app, who, ms) = (self.app.clone(), holder.encode(), millis(ttl));
        let row = self
            .with("acquire the lease", |c| {
                Box::pin(async move { c.query_opt(&sql, &[&app, &who, &ms]).await })
            })
            .await?;
        Ok(row.map(|r| Lease {
            token: r.get::<_, i64>(0) as u64,
            holder: holder.clone(),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let sql = format!(
            "UPDATE {l} SET expires_at = now() + make_interval(secs => $3::float8 / 1000.0)
             WHERE app = $1 AND token = $2",
            l = self.leases
        );
        let (app, token, ms) = (self.app.clone(), lease.token as i64, millis(ttl));
        let n = self
            .with("renew the lease", |c| {
                Box::pin(async move { c.execute(&sql, &[&app, &token, &ms]).await })
            })
            .await?;
        Ok(n == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let sql = format!(
            "UPDATE {l} SET expires_at = '-infinity' WHERE app = $1 AND token = $2",
            l = self.leases
        );
        let (app, token) = (self.app.clone(), lease.token as i64);
        self.with("release the lease", |c| {
            Box::pin(async move { c.execute(&sql, &[&app, &token]).await })
        })
        .await?;
        Ok(())
    }

    async fn current(&self) -> Result<Option<LeaderInfo>> {
        let sql = format!(
            "SELECT holder, token, extract(epoch FROM expires_at - now())::float8 FROM {l}
             WHERE app = $1 AND expires_at > now()",
            l = self.leases
        );
        let app = self.app.clone();
        let row = self
            .with("read the lease", |c| {
                Box::pin(async move { c.query_opt(&sql, &[&app]).await })
            })
            .await?;
        Ok(row.and_then(|r| {
            Some(LeaderInfo {
                holder: Holder::decode(r.get::<_, &str>(0))?,
                token: r.get::<_, i64>(1) as u64,
                expires_in: Duration::from_secs_f64(r.get::<_, f64>(2).max(0.0)),
            })
        }))
    }
}

fn tick_secs(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64
}

#[async_trait]
impl TickStore for PostgresSchedule {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>> {
        let sql = format!(
            "SELECT fingerprint, extract(epoch FROM tick)::float8 FROM {t} WHERE app = $1 AND name = $2",
            t = self.ticks
        );
        let (app, name) = (self.app.clone(), schedule.to_string());
        let row = self
            .with("read the last tick", |c| {
                Box::pin(async move { c.query_opt(&sql, &[&app, &name]).await })
            })
            .await?;
        Ok(row.and_then(|r| stored(r.get(0), r.get(1))))
    }

    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool> {
        let sql = format!(
            "INSERT INTO {t} (app, name, fingerprint, tick)
             SELECT $1, $2, $3, to_timestamp($4::float8) WHERE EXISTS
               (SELECT 1 FROM {l} WHERE app = $1 AND token = $5)
             ON CONFLICT (app, name) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, tick = EXCLUDED.tick",
            t = self.ticks,
            l = self.leases
        );
        let (app, name, fp) = (
            self.app.clone(),
            schedule.to_string(),
            value.fingerprint.clone(),
        );
        let (secs, token) = (tick_secs(value.tick), token as i64);
        let n = self
            .with("record the last tick", |c| {
                Box::pin(async move { c.execute(&sql, &[&app, &name, &fp, &secs, &token]).await })
            })
            .await?;
        Ok(n == 1)
    }

    async fn all(&self) -> Result<Vec<(String, Stored)>> {
        let sql = format!(
            "SELECT name, fingerprint, extract(epoch FROM tick)::float8 FROM {t}
             WHERE app = $1 ORDER BY name",
            t = self.ticks
        );
        let app = self.app.clone();
        let rows = self
            .with("read the last ticks", |c| {
                Box::pin(async move { c.query(&sql, &[&app]).await })
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get::<_, String>(0), stored(r.get(1), r.get(2))?)))
            .collect())
    }
}

fn stored(fingerprint: String, secs: f64) -> Option<Stored> {
    Some(Stored {
        fingerprint,
        tick: DateTime::from_timestamp(secs.round() as i64, 0)?,
    })
}
