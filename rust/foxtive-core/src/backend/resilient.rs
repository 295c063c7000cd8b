//! A backend that refuses to die: wraps any backend and reconnects it with a
//! [`ReconnectStrategy`] whenever an operation fails, forever, until shutdown.
//!
//! Native backends that already reconnect by themselves (RabbitMQ, Redis)
//! gain the wrapper's strategy on top, its observable state and counters;
//! backends that do not (a backend written in Python) gain reconnection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Backend, BackendState, SettleItem};
use crate::message::{Delivery, Outgoing};
use crate::policy::ReconnectStrategy;
use crate::{Error, Result};

pub struct ResilientBackend {
    inner: Arc<dyn Backend>,
    strategy: ReconnectStrategy,
    state: AtomicU8,
    reconnect_attempts: AtomicU64,
    consecutive_failures: AtomicU32,
    closed: AtomicBool,
    /// Wakes a reconnect wait at once on shutdown.
    closing: Notify,
    /// State changes not yet taken by an observer (bounded).
    changes: Mutex<VecDeque<(BackendState, BackendState)>>,
}

/// Most state changes kept for an observer that does not look.
const MAX_CHANGES: usize = 1024;

const CONNECTED: u8 = 0;
const RECONNECTING: u8 = 1;
const CLOSED: u8 = 2;

impl ResilientBackend {
    pub fn new(inner: Arc<dyn Backend>, strategy: ReconnectStrategy) -> Self {
        ResilientBackend {
            inner,
            strategy,
            state: AtomicU8::new(CONNECTED),
            reconnect_attempts: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            changes: Mutex::new(VecDeque::new()),
        }
    }

    fn decode(state: u8) -> BackendState {
        match state {
            CONNECTED => BackendState::Connected,
            RECONNECTING => BackendState::Reconnecting,
            _ => BackendState::Closed,
        }
    }

    /// Move to `to`, recording the change for observers.
    fn set_state(&self, to: u8) {
        let from = self.state.swap(to, Ordering::AcqRel);
        if from != to {
            let mut changes = self.changes.lock();
            if changes.len() == MAX_CHANGES {
                changes.pop_front();
            }
            changes.push_back((Self::decode(from), Self::decode(to)));
        }
    }

    /// State changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<(BackendState, BackendState)> {
        self.changes.lock().drain(..).collect()
    }

    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    pub fn strategy(&self) -> &ReconnectStrategy {
        &self.strategy
    }

    /// After a failed operation: wait the strategy's delay (interrupted at once
    /// by `close`), then try to connect again. Returns the error to report.
    async fn recover(&self, error: Error) -> Error {
        // Once closed, whatever failed, the answer is "shut down": callers
        // loop until they see it (a connect attempt cut short by `close`
        // may report a timeout or a lost connection instead).
        if self.closed.load(Ordering::Acquire) || matches!(error, Error::Shutdown) {
            return Error::Shutdown;
        }
        self.set_state(RECONNECTING);
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let delay = self.strategy.delay(failures);
        tracing::warn!(backend = self.inner.name(), error = %error, failures,
            delay_s = delay.as_secs_f64(), "backend failed; reconnecting");
        if self
            .unless_closed(async {
                tokio::time::sleep(delay).await;
                Ok(())
            })
            .await
            .is_err()
        {
            return Error::Shutdown;
        }
        self.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
        let reconnected = self.unless_closed(self.inner.connect()).await;
        if matches!(reconnected, Err(Error::Shutdown)) || self.closed.load(Ordering::Acquire) {
            return Error::Shutdown;
        }
        match reconnected {
            Ok(()) => self.mark_healthy(),
            Err(e) => tracing::warn!(backend = self.inner.name(), error = %e, "reconnect failed"),
        }
        error
    }

    /// Run `op` unless `close` comes first ([`super::unless_closed`]).
    async fn unless_closed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        super::unless_closed(&self.closing, &self.closed, op).await
    }

    fn mark_healthy(&self) {
        if self.consecutive_failures.swap(0, Ordering::AcqRel) > 0 {
            tracing::info!(backend = self.inner.name(), "backend reconnected");
        }
        if self.state.load(Ordering::Acquire) == RECONNECTING {
            self.set_state(CONNECTED);
        }
    }
}

#[async_trait]
impl Backend for ResilientBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn connect(&self) -> Result<()> {
        self.closed.store(false, Ordering::Release);
        // The first connection also retries: a worker started before its
        // broker waits for it instead of crashing.
        loop {
            let attempt = self.unless_closed(self.inner.connect()).await;
            match attempt {
                Err(Error::Shutdown) => return Err(Error::Shutdown),
                Ok(()) => {
                    self.mark_healthy();
                    self.set_state(CONNECTED);
                    return Ok(());
                }
                // A configuration the broker refuses (a queue that exists
                // with other arguments, a bad setting) is not cured by
                // waiting: fail the start-up with it instead of retrying it
                // as a warning forever.
                Err(e @ Error::Config(_)) => return Err(e),
                Err(e) => {
                    if let Error::Shutdown = self.recover(e).await {
                        return Err(Error::Shutdown);
                    }
                    if self.state.load(Ordering::Acquire) == CONNECTED {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        match self.inner.receive(max, wait).await {
            Ok(batch) => {
                if self.consecutive_failures.load(Ordering::Relaxed) > 0 {
                    self.mark_healthy();
                }
                Ok(batch)
            }
            // The wrapper absorbs the failure: the engine sees an empty batch
            // once the wait is over, and tries again.
            Err(e) => match self.recover(e).await {
                Error::Shutdown => Err(Error::Shutdown),
                _ => Ok(Vec::new()),
            },
        }
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        // Settlements are not retried here: after a reconnect the broker
        // redelivers whatever was not settled (at-least-once).
        self.inner.settle(batch).await
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        let mut last = None;
        // A publish is retried across reconnects a bounded number of times so
        // that a caller is not blocked forever; the error is then returned.
        for _ in 0..5 {
            match self.inner.publish(messages.clone()).await {
                Ok(ids) => return Ok(ids),
                Err(e) => match self.recover(e).await {
                    Error::Shutdown => return Err(Error::Shutdown),
                    e => last = Some(e),
                },
            }
        }
        Err(last.unwrap_or(Error::Shutdown))
    }

    async fn stop_receiving(&self) -> Result<()> {
        self.inner.stop_receiving().await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        let result = self.inner.close().await;
        self.set_state(CLOSED);
        result
    }

    fn state(&self) -> BackendState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BackendState::Closed,
            RECONNECTING => BackendState::Reconnecting,
            _ => match self.inner.state() {
                BackendState::Closed if !self.closed.load(Ordering::Acquire) => {
                    BackendState::Reconnecting
                }
                s => s,
            },
        }
    }

    fn is_drained(&self) -> Option<bool> {
        self.inner.is_drained()
    }

    async fn queue_stats(&self) -> Result<Option<super::QueueStats>> {
        self.inner.queue_stats().await
    }

    fn reconnect_attempts(&self) -> u64 {
        self.reconnect_attempts.load(Ordering::Relaxed) + self.inner.reconnect_attempts()
    }

    fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
            .load(Ordering::Relaxed)
            .max(self.inner.consecutive_failures())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose operations fail while `down` is set.
    struct Flaky {
        down: AtomicBool,
        connects: AtomicU32,
        log: Mutex<Vec<&'static str>>,
    }

    #[async_trait]
    impl Backend for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        async fn connect(&self) -> Result<()> {
            self.connects.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Acquire) {
                Err(Error::ConnectionLost("refused".into()))
            } else {
                Ok(())
            }
        }
        async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Delivery>> {
            if self.down.load(Ordering::Acquire) {
                Err(Error::ConnectionLost("gone".into()))
            } else {
                self.log.lock().push("receive");
                Ok(Vec::new())
            }
        }
        async fn settle(&self, _batch: Vec<SettleItem>) -> Result<()> {
            Ok(())
        }
        async fn publish(&self, _m: Vec<Outgoing>) -> Result<Vec<String>> {
            Ok(vec![])
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    fn flaky(down: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            down: AtomicBool::new(down),
            connects: AtomicU32::new(0),
            log: Mutex::new(Vec::new()),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_with_backoff_and_reports_state() {
        let inner = flaky(false);
        let r = ResilientBackend::new(
            inner.clone(),
            ReconnectStrategy::fixed(Duration::from_secs(1)),
        );
        r.connect().await.unwrap();
        inner.down.store(true, Ordering::Release);
        assert!(r.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(r.state(), BackendState::Reconnecting);
        assert_eq!(r.consecutive_failures(), 1);
        inner.down.store(false, Ordering::Release);
        r.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(r.state(), BackendState::Connected);
        assert_eq!(r.consecutive_failures(), 0);
        assert!(r.reconnect_attempts() >= 1);
        assert_eq!(
            r.take_changes(),
            vec![
                (BackendState::Connected, BackendState::Reconnecting),
                (BackendState::Reconnecting, BackendState::Connected)
            ]
        );
        assert!(r.take_changes().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn close_interrupts_a_reconnect_wait_at_once() {
        let inner = flaky(true);
        let r = Arc::new(ResilientBackend::new(
            inner.clone(),
            ReconnectStrategy::fixed(Duration::from_secs(3600)),
        ));
        let connecting = tokio::spawn({
            let r = r.clone();
            async move { r.connect().await }
        });
        tokio::task::yield_now().await;
        r.close().await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(1), connecting).await;
        assert!(matches!(result, Ok(Ok(Err(Error::Shutdown)))));
        assert_eq!(r.state(), BackendState::Closed);
    }

    /// A backend whose `connect` never returns (a broker that accepts TCP
    /// and never answers, with no timeout of its own).
    struct Silent;

    #[async_trait]
    impl Backend for Silent {
        fn name(&self) -> &str {
            "silent"
        }
        async fn connect(&self) -> Result<()> {
            std::future::pending().await
        }
        async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Delivery>> {
            Ok(Vec::new())
        }
        async fn settle(&self, _batch: Vec<SettleItem>) -> Result<()> {
            Ok(())
        }
        async fn publish(&self, _m: Vec<Outgoing>) -> Result<Vec<String>> {
            Ok(vec![])
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn close_interrupts_a_connect_that_never_returns() {
        let r = Arc::new(ResilientBackend::new(
            Arc::new(Silent),
            ReconnectStrategy::fixed(Duration::from_millis(10)),
        ));
        let connecting = tokio::spawn({
            let r = r.clone();
            async move { r.connect().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        r.close().await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(1), connecting).await;
        assert!(matches!(result, Ok(Ok(Err(Error::Shutdown)))));
    }

    #[tokio::test(start_paused = true)]
    async fn first_connect_waits_for_the_broker() {
        let inner = flaky(true);
        let r = Arc::new(ResilientBackend::new(
            inner.clone(),
            ReconnectStrategy::fixed(Duration::from_millis(100)),
        ));
        let connecting = tokio::spawn({
            let r = r.clone();
            async move { r.connect().await }
        });
        tokio::time::sleep(Duration::from_millis(350)).await;
        inner.down.store(false, Ordering::Release);
        connecting.await.unwrap().unwrap();
        assert_eq!(r.state(), BackendState::Connected);
        assert!(inner.connects.load(Ordering::Relaxed) >= 3);
    }
}
