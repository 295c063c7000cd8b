//! The connections of a process to one PostgreSQL database, shared by every
//! backend (queue) using it: an app running five queues on one DSN holds
//! one pair of connections (claims, settlements; see `link.rs`), not five.
//! A connection is a server process, so this is what the server feels.
//!
//! Backends share when nothing about the connection differs: the same DSN
//! (as the client parses it: host, database, user, options), the same
//! schema (statements are prepared against it), the same reconnect strategy
//! (the shared connection reconnects by it) and the same tokio runtime (a
//! connection is driven by a task of the runtime that opened it, and ends
//! with it).
//!
//! * Statements name the queue by parameter, so one prepared set per
//!   connection serves every queue on it.
//! * The claims connection LISTENs on the channel of every open queue using
//!   it (a queue's first use of a connection issues its LISTEN; a new
//!   connection LISTENs on all of them before anyone uses it), and routes
//!   each NOTIFY by channel name to that queue's wake-up. When a connection
//!   ends, every queue on it is woken (and finds it gone).
//! * One reconnect attempt per delay of the strategy, whoever needs the
//!   connection: the others wait for that attempt's outcome. Each backend
//!   counts the attempts made while it was open.
//! * A backend that closes leaves the others' connection alone (its channel
//!   is UNLISTENed); the connection is closed when the last backend using
//!   it closes or is dropped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Statement};

use super::config::Dsn;
use super::link::{describe, is_connection_error};
use super::schema::{self, quote_ident};
use super::{fetch, lease, settle};
use crate::backend::shared::{runtime_here, SharedByKey};
use crate::policy::ReconnectStrategy;
use crate::redact::scrub;
use crate::{Error, Result};

/// Connection numbers, unique in the process.
static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

/// Statements prepared once per connection: each use is one round trip.
pub(crate) struct Statements {
    pub claim: Statement,
    pub probe: Statement,
    pub ack: Statement,
    /// The ack when finished jobs are kept (moved to `finished_jobs`).
    pub finish: Statement,
    /// The retention step (delete expired `finished_jobs`).
    pub expire: Statement,
    pub reschedule: Statement,
    pub dead_letter: Statement,
    pub renew: Statement,
    pub insert: Statement,
    pub notify: Statement,
}

/// A live connection.
pub(crate) struct Conn {
    pub gen: u64,
    pub client: Client,
    pub stmts: Statements,
    /// The channels this connection LISTENs on.
    listening: Mutex<HashSet<String>>,
}

/// What a connection is for: the claims connection LISTENs, the settlements
/// one does not (one LISTEN per channel is enough to be woken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Claims,
    Settles,
}

/// A backend's place on a shared connection.
pub(crate) struct Member {
    /// Woken by a NOTIFY on the queue's channel, and when the connection ends.
    pub wake: Arc<Notify>,
    pub closed: AtomicBool,
    pub closing: Notify,
    /// The queue's NOTIFY channel, once asked of the server.
    pub channel: OnceLock<String>,
    /// Reconnect attempts made while this member was open.
    attempts: AtomicU64,
    /// The connection its channel is known to be LISTENed on (0: none).
    pub listened_gen: AtomicU64,
    /// Has ever needed a connection: a missing one means reconnecting.
    pub tried: AtomicBool,
}

impl Member {
    pub fn new(wake: Arc<Notify>) -> Self {
        Member {
            wake,
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            channel: OnceLock::new(),
            attempts: AtomicU64::new(0),
            listened_gen: AtomicU64::new(0),
            tried: AtomicBool::new(false),
        }
    }

    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Open and has used the connection: keeps it open, counts its
    /// reconnections. (A backend made but never used holds nothing.)
    fn holds(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.tried.load(Ordering::Acquire)
    }
}

type Members = Arc<Mutex<Vec<Arc<Member>>>>;

/// One connection (re-opened when lost) and the backends using it.
pub(crate) struct Shared {
    /// What to connect to (through `tls::connect`, with the DSN's TLS).
    dsn: Dsn,
    /// The DSN with its password replaced by `***`.
    pub url: String,
    secrets: Vec<String>,
    schema: String,
    role: Role,
    strategy: ReconnectStrategy,
    current: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    retry_at: Mutex<Option<Instant>>,
    migrated: AtomicBool,
    /// Ever failed or connected: the next attempt counts as a reconnection.
    tried: AtomicBool,
    consecutive_failures: AtomicU32,
    members: Members,
    /// LISTEN and UNLISTEN one at a time, so a channel's set entry and the
    /// server's state agree.
    listen_turn: tokio::sync::Mutex<()>,
}

/// What makes connections interchangeable (see the module comment).
#[derive(PartialEq)]
struct Key {
    dsn: String,
    schema: String,
    strategy: String,
    runtime: Option<tokio::runtime::Id>,
    role: Role,
}

/// The live connections; the registry never holds one open.
static SHARED: SharedByKey<Key, Shared> = SharedByKey::new();

/// The process's `role` connection to `dsn` and `schema`, made if no
/// backend holds one. Nothing connects until a member needs it.
pub(crate) fn shared(
    dsn: &Dsn,
    schema: &str,
    strategy: ReconnectStrategy,
    role: Role,
) -> Arc<Shared> {
    let key = Key {
        dsn: dsn.key.clone(),
        schema: schema.to_string(),
        strategy: format!("{strategy:?}"),
        runtime: runtime_here(),
        role,
    };
    SHARED.get_or_make(key, || Shared {
        dsn: dsn.clone(),
        url: dsn.redacted.clone(),
        secrets: dsn.secrets.clone(),
        schema: schema.to_string(),
        role,
        strategy,
        current: Mutex::new(None),
        connecting: tokio::sync::Mutex::new(()),
        retry_at: Mutex::new(None),
        migrated: AtomicBool::new(false),
        tried: AtomicBool::new(false),
        consecutive_failures: AtomicU32::new(0),
        members: Arc::new(Mutex::new(Vec::new())),
        listen_turn: tokio::sync::Mutex::new(()),
    })
}

impl Shared {
    /// A PostgreSQL error as a core error, scrubbed and classified.
    pub fn error(&self, context: &str, e: &tokio_postgres::Error) -> Error {
        let text = scrub(
            format!("{context} ({}): {}", self.url, describe(e)),
            &self.secrets,
        );
        if is_connection_error(e) {
            Error::ConnectionLost(text)
        } else {
            Error::Backend(text)
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn join(&self, member: Arc<Member>) {
        self.members.lock().push(member);
    }

    /// `member` is gone (its backend dropped).
    pub fn remove(&self, member: &Arc<Member>) {
        let mut members = self.members.lock();
        members.retain(|m| !Arc::ptr_eq(m, member));
        let idle = members.iter().all(|m| !m.holds());
        drop(members);
        if idle {
            self.drop_connection();
        }
    }

    /// `member` is open again (a publish after close, a new pool run).
    pub fn reopen(&self, member: &Member) {
        let _members = self.members.lock();
        member.closed.store(false, Ordering::Release);
    }

    /// `member` closed: the connection is closed with the last open member.
    /// Returns the channel nobody open needs any more, to UNLISTEN.
    pub fn leave(&self, member: &Member) -> Option<String> {
        let members = self.members.lock();
        member.closed.store(true, Ordering::Release);
        member.listened_gen.store(0, Ordering::Release);
        if members.iter().all(|m| !m.holds()) {
            drop(members);
            self.drop_connection();
            return None;
        }
        let channel = member.channel.get()?;
        let needed = members
            .iter()
            .any(|m| m.holds() && m.channel.get() == Some(channel));
        (self.role == Role::Claims && !needed).then(|| channel.clone())
    }

    fn drop_connection(&self) {
        // Dropping the client ends the connection task (Terminate is sent)
        // once the last statement in flight on it is done.
        let gone = self.current.lock().take();
        drop(gone);
    }

    /// UNLISTEN `channel` unless an open member needs it again by now.
    pub async fn unlisten(&self, channel: String) {
        let _turn = self.listen_turn.lock().await;
        let needed = self
            .members
            .lock()
            .iter()
            .any(|m| m.holds() && m.channel.get() == Some(&channel));
        let Some(conn) = self.live() else {
            return;
        };
        if needed || !conn.listening.lock().contains(&channel) {
            return;
        }
        match conn
            .client
            .batch_execute(&format!("UNLISTEN {}", quote_ident(&channel)))
            .await
        {
            Ok(()) => {
                conn.listening.lock().remove(&channel);
            }
            Err(e) => {
                // The connection is going: its LISTENs go with it.
                tracing::debug!(url = %self.url, error = %describe(&e), "UNLISTEN failed");
            }
        }
    }

    /// Make sure `conn` LISTENs on `channel` (the caller's queue).
    pub async fn listen(&self, conn: &Conn, channel: &str) -> Result<()> {
        let _turn = self.listen_turn.lock().await;
        if conn.listening.lock().contains(channel) {
            return Ok(());
        }
        conn.client
            .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
            .await
            .map_err(|e| self.error("LISTEN", &e))?;
        conn.listening.lock().insert(channel.to_string());
        Ok(())
    }

    /// Forget connection `gen` after a connection error, so the next caller
    /// opens a new one.
    pub fn lost(&self, gen: u64) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.gen == gen) {
            *current = None;
        }
    }

    pub fn live(&self) -> Option<Arc<Conn>> {
        self.current
            .lock()
            .as_ref()
            .filter(|c| !c.client.is_closed())
            .cloned()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// A new connection, after the reconnect delay when the last attempt
    /// failed. Callers queue here: one attempt per delay, whoever asks.
    pub async fn reconnect(&self) -> Result<Arc<Conn>> {
        let _turn = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let retry_at = *self.retry_at.lock();
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        if self.tried.swap(true, Ordering::AcqRel) {
            for m in self.members.lock().iter().filter(|m| m.holds()) {
                m.attempts.fetch_add(1, Ordering::Relaxed);
            }
        }
        match self.open().await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                *self.current.lock() = Some(conn.clone());
                *self.retry_at.lock() = None;
                if self.consecutive_failures.swap(0, Ordering::AcqRel) > 0 {
                    tracing::info!(url = %self.url, schema = %self.schema, "reconnected to PostgreSQL");
                }
                Ok(conn)
            }
            Err(e) => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                *self.retry_at.lock() = Some(Instant::now() + self.strategy.delay(failures));
                tracing::warn!(url = %self.url, schema = %self.schema, error = %e, failures,
                    "PostgreSQL connection failed");
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<Conn> {
        let (mut client, mut connection) = super::tls::connect(&self.dsn).await?;
        let members = self.members.clone();
        let url = self.url.clone();
        // Drive the connection: replies go to their callers, notifications
        // wake the queues of their channel; when it ends every queue on it
        // wakes, and finds it gone.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => route(&members, n.channel()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(url = %url, error = %describe(&e), "PostgreSQL connection ended");
                        break;
                    }
                    None => break,
                }
            }
            for m in members.lock().iter() {
                m.wake.notify_waiters();
            }
        });
        if !self.migrated.load(Ordering::Acquire) {
            let before = schema::migrate(&mut client, &self.schema).await?;
            if before < schema::latest_version() {
                tracing::info!(schema = %self.schema, from = before, to = schema::latest_version(), "foxtive schema migrated");
            }
            self.migrated.store(true, Ordering::Release);
        }
        let mut listening = HashSet::new();
        if self.role == Role::Claims {
            // Every open queue's channel, before anyone uses the connection:
            // a NOTIFY sent while a queue waits for it is not missed.
            listening = self
                .members
                .lock()
                .iter()
                .filter(|m| m.holds())
                .filter_map(|m| m.channel.get().cloned())
                .collect();
            if !listening.is_empty() {
                let sql: String = listening
                    .iter()
                    .map(|c| format!("LISTEN {};", quote_ident(c)))
                    .collect();
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| self.error("LISTEN", &e))?;
            }
        }
        let s = &self.schema;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await }
        };
        let stmts = async {
            Ok::<_, tokio_postgres::Error>(Statements {
                claim: prepare(fetch::claim_sql(s)).await?,
                probe: prepare(fetch::probe_sql(s)).await?,
                ack: prepare(settle::ack_sql(s)).await?,
                finish: prepare(schema::finish_sql(s)).await?,
                expire: prepare(schema::expire_finished_sql(s)).await?,
                reschedule: prepare(settle::reschedule_sql(s)).await?,
                dead_letter: prepare(settle::dead_letter_sql(s)).await?,
                renew: prepare(lease::renew_sql(s)).await?,
                insert: prepare(schema::insert_sql(s, schema::Placeholders::Dollar)).await?,
                notify: prepare("SELECT pg_notify($1, '')".to_string()).await?,
            })
        }
        .await
        .map_err(|e| self.error("prepare", &e))?;
        Ok(Conn {
            gen: NEXT_GEN.fetch_add(1, Ordering::Relaxed),
            client,
            stmts,
            listening: Mutex::new(listening),
        })
    }
}

/// Wake the queues listening on `channel`.
fn route(members: &Members, channel: &str) {
    for m in members.lock().iter() {
        if m.channel.get().is_some_and(|c| c == channel) {
            m.wake.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsn(url: &str) -> Dsn {
        super::super::config::parse_dsn(url).unwrap()
    }

    #[test]
    fn backends_of_one_database_share_until_the_last_lets_go() {
        let strategy = ReconnectStrategy::default();
        let a = dsn("postgresql://u:pw@127.0.0.1:5432/shared_test_db");
        let first = shared(&a, "s", strategy, Role::Claims);
        let second = shared(&a, "s", strategy, Role::Claims);
        assert!(Arc::ptr_eq(&first, &second));
        // The other role, schema, database or strategy: a connection of its own.
        let settles = shared(&a, "s", strategy, Role::Settles);
        assert!(!Arc::ptr_eq(&first, &settles));
        assert!(!Arc::ptr_eq(
            &first,
            &shared(&a, "t", strategy, Role::Claims)
        ));
        let b = dsn("postgresql://u:pw@127.0.0.1:5432/shared_test_other");
        assert!(!Arc::ptr_eq(
            &first,
            &shared(&b, "s", strategy, Role::Claims)
        ));
        let fixed = ReconnectStrategy::fixed(std::time::Duration::from_secs(1));
        assert!(!Arc::ptr_eq(&first, &shared(&a, "s", fixed, Role::Claims)));
        let weak = Arc::downgrade(&first);
        drop(first);
        drop(second);
        assert!(weak.upgrade().is_none(), "outlived its last holder");
        let again = shared(&a, "s", strategy, Role::Claims);
        assert_eq!(Arc::strong_count(&again), 1);
    }

    #[test]
    fn a_notify_wakes_only_the_queues_of_its_channel() {
        let members: Members = Arc::new(Mutex::new(Vec::new()));
        let a = Arc::new(Member::new(Arc::new(Notify::new())));
        let b = Arc::new(Member::new(Arc::new(Notify::new())));
        a.channel.set("foxtive_a".into()).unwrap();
        b.channel.set("foxtive_b".into()).unwrap();
        members.lock().extend([a.clone(), b.clone()]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let wa = a.wake.notified();
            let wb = b.wake.notified();
            tokio::pin!(wa, wb);
            wa.as_mut().enable();
            wb.as_mut().enable();
            route(&members, "foxtive_b");
            let quick = std::time::Duration::from_millis(50);
            assert!(tokio::time::timeout(quick, wb).await.is_ok(), "b not woken");
            assert!(tokio::time::timeout(quick, wa).await.is_err(), "a woken");
        });
    }

    #[test]
    fn a_closing_member_unlistens_only_a_channel_nobody_else_needs() {
        let s = shared(
            &dsn("postgresql://u@127.0.0.1:5432/shared_test_leave"),
            "s",
            ReconnectStrategy::default(),
            Role::Claims,
        );
        let member = |channel: &str| {
            let m = Arc::new(Member::new(Arc::new(Notify::new())));
            m.channel.set(channel.to_string()).unwrap();
            m.tried.store(true, Ordering::Release);
            s.join(m.clone());
            m
        };
        let (a, b, c) = (
            member("foxtive_a"),
            member("foxtive_a"),
            member("foxtive_c"),
        );
        // b still listens on a's channel: nothing to UNLISTEN.
        assert_eq!(s.leave(&a), None);
        s.reopen(&a);
        assert_eq!(s.leave(&c).as_deref(), Some("foxtive_c"));
        assert_eq!(s.leave(&b), None);
        // The last one closes the connection: nothing to UNLISTEN on.
        assert_eq!(s.leave(&a), None);
        // A never-used member holds nothing (and is not counted).
        let idle = Arc::new(Member::new(Arc::new(Notify::new())));
        s.join(idle.clone());
        assert!(!idle.holds());
        for m in [&a, &b, &c, &idle] {
            s.remove(m);
        }
        assert!(s.members.lock().is_empty());
    }
}
