//! Lanes hand admitted messages to the handler side in batches.
//!
//! A lane is a queue plus a way to wake its consumer without touching the
//! consumer's runtime: a condition variable for blocking threads, and a
//! socket pair for an event loop (`loop.add_reader` on [`WakeFd::read_fd`]).
//! Wake-ups are coalesced: the producer writes to the socket only when the
//! consumer found the lane empty and said it would wait.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::InFlight;

/// A GIL-free, runtime-free wake-up: one byte over a socket pair.
#[derive(Debug)]
pub struct WakeFd {
    reader: UnixStream,
    writer: UnixStream,
}

impl WakeFd {
    pub fn new() -> std::io::Result<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(WakeFd { reader, writer })
    }

    /// The descriptor to watch for readability.
    pub fn read_fd(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    pub fn wake(&self) {
        // A full buffer means a wake-up is already pending: nothing to do.
        let _ = (&self.writer).write(&[1]);
    }

    /// Consume pending wake-ups.
    pub fn clear(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.reader).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

struct LaneQueue {
    items: VecDeque<Arc<InFlight>>,
    /// The consumer found the lane empty and waits for a wake-up.
    armed: bool,
    closed: bool,
}

/// One hand-off queue.
pub struct Lane {
    queue: Mutex<LaneQueue>,
    cond: Condvar,
    fd: Option<WakeFd>,
}

impl Lane {
    /// A lane for blocking threads.
    pub fn blocking() -> Self {
        Lane::with_fd(None)
    }

    /// A lane for an event loop.
    pub fn evented() -> std::io::Result<Self> {
        Ok(Lane::with_fd(Some(WakeFd::new()?)))
    }

    fn with_fd(fd: Option<WakeFd>) -> Self {
        Lane {
            queue: Mutex::new(LaneQueue {
                items: VecDeque::new(),
                armed: true,
                closed: false,
            }),
            cond: Condvar::new(),
            fd,
        }
    }

    pub fn wake_fd(&self) -> Option<&WakeFd> {
        self.fd.as_ref()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add admitted messages and wake the consumer if it waits.
    pub fn push_many(&self, items: impl IntoIterator<Item = Arc<InFlight>>) {
        let wake = {
            let mut q = self.queue.lock();
            let before = q.items.len();
            q.items.extend(items);
            let added = q.items.len() > before;
            let wake = added && q.armed;
            if wake {
                q.armed = false;
            }
            wake
        };
        if wake {
            match &self.fd {
                Some(fd) => fd.wake(),
                None => {
                    self.cond.notify_all();
                }
            }
        }
    }

    /// Take up to `max` messages without waiting. An empty answer arms the
    /// lane: the next push wakes the consumer.
    pub fn drain(&self, max: usize) -> Vec<Arc<InFlight>> {
        let mut q = self.queue.lock();
        let n = max.min(q.items.len());
        let out: Vec<_> = q.items.drain(..n).collect();
        if q.items.is_empty() {
            q.armed = true;
        }
        out
    }

    /// Take up to `max` messages, waiting up to `timeout` for the first.
    /// `None` once the lane is closed and empty.
    pub fn take(&self, max: usize, timeout: Duration) -> Option<Vec<Arc<InFlight>>> {
        let mut q = self.queue.lock();
        if q.items.is_empty() && !q.closed {
            q.armed = true;
            let _ = self.cond.wait_for(&mut q, timeout);
        }
        if q.items.is_empty() && q.closed {
            return None;
        }
        let n = max.min(q.items.len());
        let out: Vec<_> = q.items.drain(..n).collect();
        if q.items.is_empty() {
            q.armed = true;
        } else if !out.is_empty() {
            // Others may wait on the same lane: let the next one in.
            self.cond.notify_one();
        }
        Some(out)
    }

    /// Take everything left (shutdown).
    pub fn take_all(&self) -> Vec<Arc<InFlight>> {
        self.queue.lock().items.drain(..).collect()
    }

    /// No more messages will come: blocked consumers return.
    pub fn close(&self) {
        self.queue.lock().closed = true;
        self.cond.notify_all();
        if let Some(fd) = &self.fd {
            fd.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }
}
