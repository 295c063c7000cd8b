//! A small RESP2 connection for the hot read path (XREADGROUP).
//!
//! redis-rs parses every reply into a tree of owned `Value`s: one allocation
//! per bulk string and per array, and a copy of every body. Draining a
//! stream, that parse was the largest cost on the tokio threads. Here a
//! reply is read into one buffer, checked for completeness with a scan that
//! skips over bulk payloads, then split into frames whose strings are
//! `Bytes` slices of that buffer: a body reaches the handler without being
//! copied on the Rust side.
//!
//! Commands can be sent ahead of reading their replies (pipelining), which
//! is how the reader keeps the next batch in flight. Reading is
//! cancellation-safe (what was read stays in the buffer); a write cut short
//! marks the connection broken.
//!
//! Plain TCP and unix sockets only; `rediss://` reads go through redis-rs.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One reply, its strings sharing the read buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(Bytes),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Frame>),
}

enum Io {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

pub(crate) struct RespConn {
    io: Io,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Commands sent whose replies were not read yet.
    pub in_flight: usize,
    /// A write was interrupted: the byte stream can no longer be trusted.
    broken: bool,
}

/// Read buffer size. Handed-out frames keep their buffer alive, so each
/// refill is a fresh allocation, freed once the last body of it is dropped.
/// Under 64 KiB on purpose: glibc's `free` of a chunk of 64 KiB or more runs
/// `malloc_consolidate`, which showed in the profile of a stream drain
/// (~5 % of the samples with 64 KiB buffers). A 100-entry reply of 100-byte
/// bodies is ~15 KiB; larger replies still grow the buffer as they need.
const READ_CHUNK: usize = 32 * 1024;

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("RESP: {what}"))
}

/// The length of the line starting at `pos` (without CRLF), if complete.
fn line_end(buf: &[u8], pos: usize) -> Option<usize> {
    let rest = buf.get(pos..)?;
    let i = memchr_crlf(rest)?;
    Some(pos + i)
}

fn memchr_crlf(s: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].iter().position(|&b| b == b'\r') {
        let at = from + i;
        match s.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

/// A RESP integer (`-?[0-9]+`). By hand: it runs several times per entry,
/// and `str::from_utf8` + `str::parse` were ~1,000 instructions a message.
fn parse_int(s: &[u8]) -> io::Result<i64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(protocol_error("bad integer"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(protocol_error("bad integer"));
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if negative { -n } else { n })
}

/// Where the frame starting at `pos` ends, or `None` if more bytes are
/// needed. Bulk payloads are skipped by length, not scanned.
fn frame_end(buf: &[u8], pos: usize) -> io::Result<Option<usize>> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(eol) = line_end(buf, pos + 1) else {
        return Ok(None);
    };
    let after = eol + 2;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(after)),
        b'$' => {
            let len = parse_int(&buf[pos + 1..eol])?;
            if len < 0 {
                return Ok(Some(after));
            }
            let end = after + len as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' => {
            let n = parse_int(&buf[pos + 1..eol])?;
            let mut at = after;
            for _ in 0..n.max(0) {
                match frame_end(buf, at)? {
                    Some(next) => at = next,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(protocol_error("unexpected type byte")),
    }
}

/// Build the frame starting at `*pos` of a buffer known to hold it whole.
fn build(buf: &Bytes, pos: &mut usize) -> io::Result<Frame> {
    let kind = buf[*pos];
    let eol = line_end(buf, *pos + 1).ok_or_else(|| protocol_error("truncated"))?;
    let head = *pos + 1..eol;
    *pos = eol + 2;
    Ok(match kind {
        b'+' => Frame::Simple(buf.slice(head)),
        b'-' => Frame::Error(String::from_utf8_lossy(&buf[head]).into_owned()),
        b':' => Frame::Int(parse_int(&buf[head])?),
        b'$' => {
            let len = parse_int(&buf[head])?;
            if len < 0 {
                return Ok(Frame::Nil);
            }
            let start = *pos;
            *pos = start + len as usize + 2;
            Frame::Bulk(buf.slice(start..start + len as usize))
        }
        b'*' => {
            let n = parse_int(&buf[head])?;
            if n < 0 {
                return Ok(Frame::Nil);
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(build(buf, pos)?);
            }
            Frame::Array(items)
        }
        _ => return Err(protocol_error("unexpected type byte")),
    })
}

/// Take one complete frame off the front of `rbuf`, if there is one.
pub fn take_frame(rbuf: &mut BytesMut) -> io::Result<Option<Frame>> {
    let Some(end) = frame_end(rbuf, 0)? else {
        return Ok(None);
    };
    let chunk = rbuf.split_to(end).freeze();
    let mut pos = 0;
    build(&chunk, &mut pos).map(Some)
}

/// Append one command (a RESP array of bulk strings) to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl RespConn {
    /// Connect and authenticate as `info` says; `None` for addresses this
    /// connection does not handle (TLS).
    pub async fn connect(info: &ConnectionInfo, timeout: Duration) -> io::Result<Option<RespConn>> {
        let io = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                stream.set_nodelay(true)?;
                Io::Tcp(stream)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                Io::Unix(stream)
            }
            _ => return Ok(None),
        };
        let mut conn = RespConn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(256),
            in_flight: 0,
            broken: false,
        };
        let settings = info.redis_settings();
        let mut expect = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => encode(
                    &mut conn.wbuf,
                    &[b"AUTH", user.as_bytes(), password.as_bytes()],
                ),
                None => encode(&mut conn.wbuf, &[b"AUTH", password.as_bytes()]),
            }
            expect += 1;
        }
        if settings.db() != 0 {
            encode(
                &mut conn.wbuf,
                &[b"SELECT", settings.db().to_string().as_bytes()],
            );
            expect += 1;
        }
        encode(&mut conn.wbuf, &[b"CLIENT", b"SETNAME", b"foxtive-reader"]);
        expect += 1;
        tokio::time::timeout(timeout, async {
            conn.flush(expect).await?;
            for _ in 0..expect {
                if let Frame::Error(e) = conn.reply().await? {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
        Ok(Some(conn))
    }

    /// Queue a command; sent by the next [`RespConn::flush`].
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode(&mut self.wbuf, args);
    }

    /// Send the queued commands (`count` of them).
    pub async fn flush(&mut self, count: usize) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection broken by an interrupted write",
            ));
        }
        self.broken = true;
        match &mut self.io {
            Io::Tcp(s) => s.write_all(&self.wbuf).await?,
            #[cfg(unix)]
            Io::Unix(s) => s.write_all(&self.wbuf).await?,
        }
        self.broken = false;
        self.wbuf.clear();
        self.in_flight += count;
        Ok(())
    }

    /// Read the next reply (cancellation-safe).
    pub async fn reply(&mut self) -> io::Result<Frame> {
        loop {
            if let Some(frame) = take_frame(&mut self.rbuf)? {
                self.in_flight = self.in_flight.saturating_sub(1);
                return Ok(frame);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let n = match &mut self.io {
                Io::Tcp(s) => s.read_buf(&mut self.rbuf).await?,
                #[cfg(unix)]
                Io::Unix(s) => s.read_buf(&mut self.rbuf).await?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "Redis closed the connection",
                ));
            }
        }
    }
}

impl Frame {
    /// The items of an array (`Nil` is empty).
    pub fn into_items(self) -> Option<Vec<Frame>> {
        match self {
            Frame::Array(items) => Some(items),
            Frame::Nil => Some(Vec::new()),
            _ => None,
        }
    }

    pub fn into_bytes(self) -> Option<Bytes> {
        match self {
            Frame::Bulk(b) | Frame::Simple(b) => Some(b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_share_the_buffer() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"*2\r\n$3\r\n1-1\r\n*2\r\n$4\r\nbody\r\n$5\r\na\r\nb\x00\r\n");
        let whole = buf.len();
        buf.extend_from_slice(b":12\r\n-NOGROUP no\r\n$-1\r\n*-1\r\n+OK\r\n$3\r\nab");
        let f = take_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::Array(vec![
                Frame::Bulk(Bytes::from_static(b"1-1")),
                Frame::Array(vec![
                    Frame::Bulk(Bytes::from_static(b"body")),
                    Frame::Bulk(Bytes::from_static(b"a\r\nb\x00")),
                ]),
            ])
        );
        assert!(whole > 0);
        assert_eq!(take_frame(&mut buf).unwrap(), Some(Frame::Int(12)));
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame::Error("NOGROUP no".into()))
        );
        assert_eq!(take_frame(&mut buf).unwrap(), Some(Frame::Nil));
        assert_eq!(take_frame(&mut buf).unwrap(), Some(Frame::Nil));
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame::Simple(Bytes::from_static(b"OK")))
        );
        assert_eq!(take_frame(&mut buf).unwrap(), None, "incomplete bulk");
        buf.extend_from_slice(b"c\r\n");
        assert_eq!(
            take_frame(&mut buf).unwrap(),
            Some(Frame::Bulk(Bytes::from_static(b"abc")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_arrays_wait_for_more() {
        let full: &[u8] = b"*2\r\n$1\r\na\r\n*1\r\n$2\r\nbc\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(take_frame(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
        assert!(take_frame(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
    }

    #[test]
    fn integers_parse_strictly() {
        assert_eq!(parse_int(b"0").unwrap(), 0);
        assert_eq!(parse_int(b"123456").unwrap(), 123_456);
        assert_eq!(parse_int(b"-1").unwrap(), -1);
        assert_eq!(
            parse_int(b"999999999999999999").unwrap(),
            999_999_999_999_999_999
        );
        for bad in [&b""[..], b"-", b"1x", b"+1", b" 1", b"1234567890123456789"] {
            assert!(parse_int(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_encode_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"XACK", b"s", b""]);
        assert_eq!(out, b"*3\r\n$4\r\nXACK\r\n$1\r\ns\r\n$0\r\n\r\n");
    }
}
