//! Lease and last ticks in the SQLite file itself: a lock row per app
//! (`schedule_leases`) and the last ticks (`schedule_ticks`), created on
//! first use. Every change is one `IMMEDIATE` transaction, so processes
//! sharing the file see one writer at a time. Times are this host's clock
//! (all users of one SQLite file share a host).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::DateTime;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::backend::sqlite::{db, path_from_url};
use crate::schedule::leader::{Holder, LeaderInfo, LeaderLease, Lease};
use crate::schedule::store::{Stored, TickStore};
use crate::{Error, Result};

const BUSY: Duration = Duration::from_secs(5);

const DDL: &str = "
CREATE TABLE IF NOT EXISTS schedule_leases (
    app TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schedule_ticks (
    app TEXT NOT NULL, name TEXT NOT NULL, fingerprint TEXT NOT NULL, tick INTEGER NOT NULL,
    PRIMARY KEY (app, name));
";

pub struct SqliteSchedule {
    path: PathBuf,
    app: String,
    conn: Arc<Mutex<Option<Connection>>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl SqliteSchedule {
    pub fn new(url: &str, app: &str) -> Result<Self> {
        Ok(SqliteSchedule {
            path: path_from_url(url)?,
            app: app.to_string(),
            conn: Arc::new(Mutex::new(None)),
        })
    }

    /// Run `op` in an IMMEDIATE transaction on a blocking thread.
    async fn tx<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&rusqlite::Transaction<'_>, &str) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (conn, path, app) = (self.conn.clone(), self.path.clone(), self.app.clone());
        let shown = self.path.display().to_string();
        let failed = move |e: rusqlite::Error| {
            Error::Backend(format!("schedules on sqlite {shown}: {what}: {e}"))
        };
        tokio::task::spawn_blocking(move || -> Result<T> {
            let mut slot = conn.lock();
            let c = match slot.as_mut() {
                Some(c) => c,
                None => {
                    let c = db::connect(&path, BUSY)?;
                    c.execute_batch(DDL)
                        .map_err(|e| db::error("create the schedule tables", &path, e))?;
                    slot.insert(c)
                }
            };
            let run = |c: &mut Connection| -> rusqlite::Result<T> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = op(&tx, &app)?;
                tx.commit()?;
                Ok(out)
            };
            run(c).map_err(failed)
        })
        .await
        .map_err(|e| Error::Backend(format!("schedules on sqlite: {what}: {e}")))?
    }
}

#[async_trait]
impl LeaderLease for SqliteSchedule {
    async fn try_acquire(&self, holder: &Holder, ttl: Duration) -> Result<Option<Lease>> {
        let who = holder.encode();
        let ttl = ttl.as_secs_f64();
        let token = self
            .tx("acquire the lease", move |tx, app| {
                let t = now();
                let row: Option<(i64, f64)> = tx
                    .query_row(
                        "SELECT token, expires_at FROM schedule_leases WHERE app = ?1",
                        [app],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match row {
                    Some((_, until)) if until >= t => Ok(None),
                    Some((token, _)) => {
                        tx.execute(
                            "UPDATE schedule_leases SET holder = ?2, token = ?3, expires_at = ?4 WHERE app = ?1",
                            params![app, who, token + 1, t + ttl],
                        )?;
                        Ok(Some(token + 1))
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO schedule_leases (app, holder, token, expires_at) VALUES (?1, ?2, 1, ?3)",
                            params![app, who, t + ttl],
                        )?;
                        Ok(Some(1))
                    }
                }
            })
            .await?;
        Ok(token.map(|t| Lease {
            token: t as u64,
            holder: holder.clone(),
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let (token, ttl) = (lease.token as i64, ttl.as_secs_f64());
        self.tx("renew the lease", move |tx, app| {
            Ok(tx.execute(
                "UPDATE schedule_leases SET expires_at = ?3 WHERE app = ?1 AND token = ?2",
                params![app, token, now() + ttl],
            )? == 1)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let token = lease.token as i64;
        self.tx("release the lease", move |tx, app| {
            tx.execute(
                "UPDATE schedule_leases SET expires_at = 0 WHERE app = ?1 AND token = ?2",
                params![app, token],
            )?;
            Ok(())
        })
        .await
    }

    async fn current(&self) -> Result<Option<LeaderInfo>> {
        let row: Option<(String, i64, f64)> = self
            .tx("read the lease", |tx, app| {
                tx.query_row(
                    "SELECT holder, token, expires_at FROM schedule_leases WHERE app = ?1",
                    [app],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })
            .await?;
        let t = now();
        Ok(row.and_then(|(holder, token, until)| {
            (until > t).then_some(())?;
            Some(LeaderInfo {
                holder: Holder::decode(&holder)?,
                token: token as u64,
                expires_in: Duration::from_secs_f64(until - t),
            })
        }))
    }
}

#[async_trait]
impl TickStore for SqliteSchedule {
    async fn last(&self, schedule: &str) -> Result<Option<Stored>> {
        let name = schedule.to_string();
        let row: Option<(String, i64)> = self
            .tx("read the last tick", move |tx, app| {
                tx.query_row(
                    "SELECT fingerprint, tick FROM schedule_ticks WHERE app = ?1 AND name = ?2",
                    [app, name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .await?;
        Ok(row.and_then(|(fingerprint, secs)| {
            Some(Stored {
                fingerprint,
                tick: DateTime::from_timestamp(secs, 0)?,
            })
        }))
    }

    async fn record(&self, schedule: &str, value: &Stored, token: u64) -> Result<bool> {
        let (name, fp, secs) = (
            schedule.to_string(),
            value.fingerprint.clone(),
            value.tick.timestamp(),
        );
        let token = token as i64;
        self.tx("record the last tick", move |tx, app| {
            let holds: Option<i64> = tx
                .query_row(
                    "SELECT 1 FROM schedule_leases WHERE app = ?1 AND token = ?2",
                    params![app, token],
                    |r| r.get(0),
                )
                .optional()?;
            if holds.is_none() {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO schedule_ticks (app, name, fingerprint, tick) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, name) DO UPDATE SET fingerprint = excluded.fingerprint, tick = excluded.tick",
                params![app, name, fp, secs],
            )?;
            Ok(true)
        })
        .await
    }

    async fn all(&self) -> Result<Vec<(String, Stored)>> {
        let rows: Vec<(String, String, i64)> = self
            .tx("read the last ticks", |tx, app| {
                let mut st = tx.prepare(
                    "SELECT name, fingerprint, tick FROM schedule_ticks WHERE app = ?1 ORDER BY name",
                )?;
                let rows = st.query_map([app], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, fingerprint, secs)| {
                Some((
                    name,
                    Stored {
                        fingerprint,
                        tick: DateTime::from_timestamp(secs, 0)?,
                    },
                ))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_lease_fences_and_stores() {
        let dir = std::env::temp_dir().join(format!("foxtive-sched-{}.db", std::process::id()));
        let url = format!("sqlite:///{}", dir.display());
        let a = SqliteSchedule::new(&url, "app").unwrap();
        let b = SqliteSchedule::new(&url, "app").unwrap();
        let ttl = Duration::from_millis(600);
        let la = a
            .try_acquire(&Holder::this_process(), ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(b
            .try_acquire(&Holder::this_process(), ttl)
            .await
            .unwrap()
            .is_none());
        let v = Stored {
            fingerprint: "every:1".into(),
            tick: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        assert!(a.record("s", &v, la.token).await.unwrap());
        assert_eq!(b.last("s").await.unwrap(), Some(v.clone()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let lb = b
            .try_acquire(&Holder::this_process(), ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(lb.token > la.token);
        assert!(!a.renew(&la, ttl).await.unwrap());
        assert!(!a.record("s", &v, la.token).await.unwrap());
        assert_eq!(b.current().await.unwrap().unwrap().token, lb.token);
        let _ = std::fs::remove_file(&dir);
        let _ = std::fs::remove_file(dir.with_extension("db-wal"));
        let _ = std::fs::remove_file(dir.with_extension("db-shm"));
    }
}
