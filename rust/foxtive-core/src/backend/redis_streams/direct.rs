//! Direct connections: commands written from the caller's own thread on a
//! blocking connection of that thread, not handed to the tokio runtime.
//!
//! A publish through the runtime costs two thread hand-offs (the caller
//! queues it to a tokio worker, the reply wakes the caller), each a futex
//! wake of a sleeping thread: on a Redis answering in ~30 µs, those were
//! most of a `send_sync`. Here the caller writes and reads its own socket
//! (the GIL released around it by the glue), as Dramatiq and redis-py do.
//!
//! One connection per thread and per Redis (thread-local): dropped when the
//! thread ends; never used by a forked child (each connection remembers the
//! pid that opened it; a child opens its own and leaves its parent's be);
//! [`Direct::close`] shuts every one of this process down (their threads
//! open new ones on their next use). Plain TCP and unix sockets only: a
//! `rediss://` Redis has no direct path ([`Direct::new`] gives `None`) and
//! its commands go through the runtime as before.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use redis::{ConnectionAddr, ConnectionInfo};

use super::resp::{encode, take_frame, Frame};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write or a reply may take (the command connection's bound).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a direct connection goes (plain TCP or a unix socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String, u16),
    Unix(String),
}

enum Sock {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Sock {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => (&*s).write_all(buf),
            #[cfg(unix)]
            Sock::Unix(s) => (&*s).write_all(buf),
        }
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            #[cfg(unix)]
            Sock::Unix(s) => (&*s).read(buf),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
            #[cfg(unix)]
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

/// One Redis's direct connections in this process (one per thread).
pub(crate) struct Direct {
    address: Address,
    /// AUTH, SELECT and CLIENT SETNAME, encoded once; and how many replies.
    handshake: (Vec<u8>, usize),
    /// Bumped by [`Direct::close`]: a thread's connection of an older
    /// generation is dropped at its next use.
    generation: AtomicU64,
    /// The sockets opened (by any thread), to shut them down on close; each
    /// with the pid that opened it (a forked child's close must not shut
    /// its parent's sockets down: a shutdown acts on the shared socket).
    open: Mutex<Vec<(u32, Weak<Sock>)>>,
}

/// A thread's connection of one [`Direct`].
struct Entry {
    direct: Weak<Direct>,
    pid: u32,
    generation: u64,
    sock: Arc<Sock>,
    rbuf: BytesMut,
}

thread_local! {
    static CONNECTIONS: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

impl Direct {
    /// The direct connections of the Redis `info` names, or `None` when it
    /// has no direct path (TLS).
    pub fn new(info: &ConnectionInfo, client_name: &str) -> Option<Direct> {
        let address = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Address::Tcp(host.clone(), *port),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Address::Unix(path.to_string_lossy().into_owned()),
            _ => return None,
        };
        let settings = info.redis_settings();
        let mut handshake = Vec::new();
        let mut replies = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => encode(
                    &mut handshake,
                    &[b"AUTH", user.as_bytes(), password.as_bytes()],
                ),
                None => encode(&mut handshake, &[b"AUTH", password.as_bytes()]),
            }
            replies += 1;
        }
        if settings.db() != 0 {
            encode(
                &mut handshake,
                &[b"SELECT", settings.db().to_string().as_bytes()],
            );
            replies += 1;
        }
        encode(
            &mut handshake,
            &[b"CLIENT", b"SETNAME", client_name.as_bytes()],
        );
        replies += 1;
        Some(Direct {
            address,
            handshake: (handshake, replies),
            generation: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        })
    }

    /// Where the connections go.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The handshake every new connection sends first (AUTH, SELECT,
    /// CLIENT SETNAME), and how many replies it gets: for connections made
    /// elsewhere (an event loop's) to the same Redis. Holds the password.
    pub fn handshake(&self) -> (&[u8], usize) {
        (&self.handshake.0, self.handshake.1)
    }

    /// Write `commands` (encoded RESP, `replies` of them) on this thread's
    /// connection and read their replies, blocking. A connection that was
    /// open before this call and fails (Redis closed an idle connection,
    /// or restarted) is replaced once and the commands written again: at
    /// least once, as every publish. A failure of a new connection, or a
    /// timeout, is returned (the caller may take another path).
    pub fn run(self: &Arc<Self>, commands: &[u8], replies: usize) -> io::Result<Vec<Frame>> {
        CONNECTIONS.with(|cell| {
            let mut conns = cell.borrow_mut();
            let pid = std::process::id();
            let generation = self.generation.load(Ordering::Acquire);
            let me = Arc::downgrade(self);
            // Forget what is not ours to use any more: a parent's connections
            // (after fork), those of a closed generation, of a gone Direct.
            conns.retain(|e| {
                e.pid == pid
                    && e.direct.strong_count() > 0
                    && !(Weak::ptr_eq(&e.direct, &me) && e.generation != generation)
            });
            let mut reused = true;
            loop {
                let at = match conns.iter().position(|e| Weak::ptr_eq(&e.direct, &me)) {
                    Some(at) => at,
                    None => {
                        reused = false;
                        conns.push(self.connect(me.clone(), pid, generation)?);
                        conns.len() - 1
                    }
                };
                match roundtrip(&mut conns[at], commands, replies) {
                    Ok(frames) => return Ok(frames),
                    Err(e) => {
                        let broken = conns.swap_remove(at);
                        broken.sock.shutdown();
                        if !reused || timed_out(&e) {
                            return Err(e);
                        }
                        reused = false;
                    }
                }
            }
        })
    }

    fn connect(&self, me: Weak<Direct>, pid: u32, generation: u64) -> io::Result<Entry> {
        let sock = match &self.address {
            Address::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let stream = found.ok_or(last)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                Sock::Tcp(stream)
            }
            #[cfg(unix)]
            Address::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                Sock::Unix(stream)
            }
            #[cfg(not(unix))]
            Address::Unix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "unix sockets need a unix system",
                ))
            }
        };
        let mut entry = Entry {
            direct: me,
            pid,
            generation,
            sock: Arc::new(sock),
            rbuf: BytesMut::with_capacity(4096),
        };
        let (hello, n) = self.handshake();
        for frame in roundtrip(&mut entry, hello, n)? {
            if let Frame::Error(e) = frame {
                entry.sock.shutdown();
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
            }
        }
        let mut open = self.open.lock();
        open.retain(|(_, w)| w.strong_count() > 0);
        open.push((pid, Arc::downgrade(&entry.sock)));
        Ok(entry)
    }

    /// Shut down every direct connection this process opened to this
    /// Redis (Redis sees them close now); each thread opens a new one on
    /// its next use.
    pub fn close(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let pid = std::process::id();
        let mut open = self.open.lock();
        for (owner, sock) in open.drain(..) {
            if owner == pid {
                if let Some(sock) = sock.upgrade() {
                    sock.shutdown();
                }
            }
        }
    }
}

/// Write `commands` and read `replies` replies on `entry`.
fn roundtrip(entry: &mut Entry, commands: &[u8], replies: usize) -> io::Result<Vec<Frame>> {
    entry.sock.write_all(commands)?;
    let mut out = Vec::with_capacity(replies);
    let mut chunk = [0u8; 8192];
    while out.len() < replies {
        if let Some(frame) = take_frame(&mut entry.rbuf)? {
            out.push(frame);
            continue;
        }
        let n = entry.sock.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            ));
        }
        entry.rbuf.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> String {
        std::env::var("FOXTIVE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    fn direct(url: &str) -> Arc<Direct> {
        let info = redis::Client::open(url)
            .unwrap()
            .get_connection_info()
            .clone();
        Arc::new(Direct::new(&info, "foxtive-direct-test").unwrap())
    }

    fn ping(d: &Arc<Direct>) -> Vec<Frame> {
        let mut cmd = Vec::new();
        encode(&mut cmd, &[b"CLIENT", b"ID"]);
        encode(&mut cmd, &[b"PING"]);
        d.run(&cmd, 2).unwrap()
    }

    #[test]
    fn one_connection_per_thread_until_closed() {
        let d = direct(&redis_url());
        let first = ping(&d);
        assert_eq!(first[1], Frame::Simple(bytes::Bytes::from_static(b"PONG")));
        assert_eq!(ping(&d)[0], first[0], "the thread's connection is reused");
        let other = {
            let d = d.clone();
            std::thread::spawn(move || ping(&d)).join().unwrap()
        };
        assert_ne!(other[0], first[0], "another thread, another connection");
        d.close();
        assert_ne!(ping(&d)[0], first[0], "closed: a new connection");
    }

    #[test]
    fn a_connection_closed_under_it_is_replaced_once() {
        let d = direct(&redis_url());
        let id = match ping(&d).remove(0) {
            Frame::Int(id) => id,
            other => panic!("{other:?}"),
        };
        let mut killer = redis::Client::open(redis_url())
            .unwrap()
            .get_connection()
            .unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(&mut killer)
            .unwrap();
        assert_eq!(killed, 1);
        assert_ne!(ping(&d)[0], Frame::Int(id));
    }

    #[test]
    fn tls_has_no_direct_path() {
        let info = redis::Client::open("rediss://127.0.0.1:6380/0")
            .unwrap()
            .get_connection_info()
            .clone();
        assert!(Direct::new(&info, "x").is_none());
    }
}
