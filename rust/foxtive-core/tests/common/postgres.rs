//! What the PostgreSQL tests share: the server's URL (127.0.0.1:5432,
//! database `test`, or `FOXTIVE_POSTGRES_URL`), a schema per test dropped
//! with it, the judge (a plain tokio-postgres connection of its own) and
//! small publish / receive / settle helpers.

// Each test binary uses a part of these.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foxtive_core::backend::postgres::{PostgresBackend, PostgresConfig};
use foxtive_core::backend::Backend;
use foxtive_core::message::{Outgoing, Settlement};
use foxtive_core::Delivery;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, NoTls};

pub fn url() -> String {
    std::env::var("FOXTIVE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema and queue for one test; the schema is dropped with it.
pub struct Db {
    pub schema: String,
    pub queue: String,
    /// `application_name` of this test's backends, to find their sessions.
    pub app: String,
    pub judge: Client,
}

pub async fn judge_client() -> Client {
    let (client, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

impl Db {
    pub async fn new(test: &str) -> Self {
        let tag: u32 = rand::random();
        Db {
            schema: format!("fxt_{test}_{tag:08x}"),
            queue: format!("q-{test}"),
            app: format!("foxtive-test-{tag:08x}"),
            judge: judge_client().await,
        }
    }

    pub fn config(&self, lease: Duration) -> PostgresConfig {
        let mut c = PostgresConfig::new(&self.queue);
        c.schema = self.schema.clone();
        c.lease_timeout = lease;
        c
    }

    pub fn backend(&self, lease: Duration) -> PostgresBackend {
        let dsn = format!("{}?application_name={}", url(), self.app);
        PostgresBackend::new(&dsn, self.config(lease)).unwrap()
    }

    /// The judge's answer to `sql`: the first column of its one row.
    pub async fn one<T>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> T
    where
        T: for<'a> FromSql<'a>,
    {
        self.judge.query_one(sql, params).await.unwrap().get(0)
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.one(
            &format!("SELECT count(*) FROM \"{}\".{table}", self.schema),
            &[],
        )
        .await
    }

    pub async fn attempts(&self, message_id: &str) -> i32 {
        self.one(
            &format!(
                "SELECT attempts FROM \"{}\".jobs WHERE message_id = $1",
                self.schema
            ),
            &[&message_id],
        )
        .await
    }

    /// Terminate this test's sessions (as a failover or an admin would);
    /// how many there were.
    pub async fn terminate_sessions(&self) -> i64 {
        self.one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&self.app],
        )
        .await
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop runs inside the test's runtime: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = judge_client().await;
                let _ = c
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
            });
        })
        .join();
    }
}

pub fn out(body: &str) -> Outgoing {
    Outgoing::new(Bytes::copy_from_slice(body.as_bytes()))
}

pub fn with_id(body: &str, id: &str) -> Outgoing {
    Outgoing {
        message_id: Some(id.to_string()),
        ..out(body)
    }
}

pub async fn settle(b: &PostgresBackend, d: Delivery, s: Settlement) {
    b.settle(vec![(Arc::new(d), s)]).await.unwrap();
}

/// Ack every one of `deliveries` in one settlement.
pub async fn ack_all(b: &PostgresBackend, deliveries: Vec<Delivery>) {
    let items = deliveries
        .into_iter()
        .map(|d| (Arc::new(d), Settlement::Ack));
    b.settle(items.collect()).await.unwrap();
}

pub async fn receive_all(b: &PostgresBackend, n: usize, within: Duration) -> Vec<Delivery> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < until {
        got.extend(
            b.receive(n - got.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

pub const LEASE: Duration = Duration::from_secs(30);
