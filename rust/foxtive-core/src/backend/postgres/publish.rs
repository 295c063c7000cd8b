//! Rows to insert for published messages, built once for the backend's own
//! INSERT and for the Python transactional enqueue (same SQL, same arrays).

use tokio_postgres::types::ToSql;

use crate::message::Outgoing;

/// One array per column of [`super::schema::INSERT_ARRAYS`].
#[derive(Debug, Default)]
pub struct EnqueueRows {
    pub message_id: Vec<String>,
    pub body: Vec<bytes::Bytes>,
    pub headers: Vec<String>,
    pub correlation_id: Vec<Option<String>>,
    pub content_type: Vec<Option<String>>,
    pub reply_to: Vec<Option<String>>,
    pub routing_key: Vec<Option<String>>,
    pub priority: Vec<Option<i16>>,
    /// Attempts already made: the claim counts the next one, so a message
    /// published to be delivered as attempt `n` is stored with `n - 1`.
    pub attempts: Vec<i32>,
    /// Seconds from now until the job is due.
    pub delay: Vec<f64>,
}

/// A parameter of a statement.
pub type Param<'a> = &'a (dyn ToSql + Sync);

impl EnqueueRows {
    /// The INSERT's parameters `$1..$11`: the queue, then one array per
    /// column (`bodies` is [`Self::body`] as slices, made by the caller so
    /// that it outlives the borrow).
    pub fn params<'a>(&'a self, queue: Param<'a>, bodies: Param<'a>) -> [Param<'a>; 11] {
        [
            queue,
            &self.message_id,
            bodies,
            &self.headers,
            &self.correlation_id,
            &self.content_type,
            &self.reply_to,
            &self.routing_key,
            &self.priority,
            &self.attempts,
            &self.delay,
        ]
    }

    pub fn of(messages: Vec<Outgoing>) -> Self {
        let n = messages.len();
        let mut rows = EnqueueRows {
            message_id: Vec::with_capacity(n),
            body: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            correlation_id: Vec::with_capacity(n),
            content_type: Vec::with_capacity(n),
            reply_to: Vec::with_capacity(n),
            routing_key: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            delay: Vec::with_capacity(n),
        };
        for m in messages {
            rows.message_id
                .push(m.message_id.unwrap_or_else(new_message_id));
            rows.body.push(m.body);
            rows.headers
                .push(crate::dlq::codec::headers_to_text(&m.headers));
            rows.correlation_id.push(m.correlation_id);
            rows.content_type.push(m.content_type);
            rows.reply_to.push(m.reply_to);
            rows.routing_key.push(m.routing_key);
            rows.priority.push(m.priority.map(i16::from));
            let attempt = i32::try_from(m.attempt.max(1)).unwrap_or(i32::MAX);
            rows.attempts.push(attempt - 1);
            rows.delay.push(m.delay.map_or(0.0, |d| d.as_secs_f64()));
        }
        rows
    }

    /// The INSERT's arrays `$2..$11` as PostgreSQL array literals (text),
    /// in the order of [`Self::params`]: what the transactional enqueue
    /// passes through the caller's driver. A driver adapts one string per
    /// column in no time, where ten lists of 10,000 Python objects took
    /// psycopg ~1.5 s; the server parses the literals in C (`array_in`),
    /// and the statement stays [`super::schema::insert_sql`]'s (each
    /// parameter is cast to its array type there).
    pub fn array_literals(&self) -> [String; 10] {
        [
            literal(&self.message_id, quoted),
            literal(&self.body, |b, out| bytea(b, out)),
            literal(&self.headers, quoted),
            literal(&self.correlation_id, |s, out| opt(s, out, quoted)),
            literal(&self.content_type, |s, out| opt(s, out, quoted)),
            literal(&self.reply_to, |s, out| opt(s, out, quoted)),
            literal(&self.routing_key, |s, out| opt(s, out, quoted)),
            literal(&self.priority, |p, out| {
                opt(p, out, |p: &i16, out| out.push_str(&p.to_string()))
            }),
            literal(&self.attempts, |a, out| out.push_str(&a.to_string())),
            // `Display` of an f64 never uses an exponent and round-trips.
            literal(&self.delay, |d, out| out.push_str(&d.to_string())),
        ]
    }

    pub fn len(&self) -> usize {
        self.message_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.message_id.is_empty()
    }
}

/// `{e1,e2,...}`: one array literal of `items`, each written by `put`.
fn literal<T>(items: &[T], put: impl Fn(&T, &mut String)) -> String {
    let mut out = String::with_capacity(2 + items.len() * 8);
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        put(item, &mut out);
    }
    out.push('}');
    out
}

/// An element in double quotes: only `"` and `\` are escaped inside them,
/// so any text (commas, braces, spaces, the word NULL) stays itself.
fn quoted<S: AsRef<str>>(s: &S, out: &mut String) {
    let s = s.as_ref();
    out.reserve(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

/// A bytea element in hex form: `"\\x0a1b..."` (the backslash escaped
/// for the array parser, which hands `\x0a1b...` to bytea's input).
fn bytea(b: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(b.len() * 2 + 5);
    out.push_str("\"\\\\x");
    for &x in b {
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    out.push('"');
}

/// `NULL` (unquoted) or the element.
fn opt<T>(v: &Option<T>, out: &mut String, put: impl Fn(&T, &mut String)) {
    match v {
        Some(v) => put(v, out),
        None => out.push_str("NULL"),
    }
}

/// A random (version 4) UUID as text: the id of a message published without one.
pub fn new_message_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuids() {
        let id = new_message_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_message_id());
    }

    #[test]
    fn attempts_are_stored_as_made() {
        let mut m = Outgoing::new(bytes::Bytes::from_static(b"x"));
        m.attempt = 3;
        let rows = EnqueueRows::of(vec![m, Outgoing::new(bytes::Bytes::new())]);
        assert_eq!(rows.attempts, vec![2, 0]);
        assert_eq!(rows.headers[0], "[]");
    }

    #[test]
    fn array_literals_quote_escape_and_hex() {
        let mut m = Outgoing::new(bytes::Bytes::from_static(b"\x00\xff\"a"));
        m.message_id = Some("id,\"1\"\\{}".into());
        m.priority = Some(3);
        m.delay = Some(std::time::Duration::from_millis(1500));
        let mut plain = Outgoing::new(bytes::Bytes::new());
        plain.message_id = Some("NULL".into());
        let lits = EnqueueRows::of(vec![m, plain]).array_literals();
        assert_eq!(lits[0], r#"{"id,\"1\"\\{}","NULL"}"#);
        assert_eq!(lits[1], r#"{"\\x00ff2261","\\x"}"#);
        assert_eq!(lits[3], "{NULL,NULL}");
        assert_eq!(lits[7], "{3,NULL}");
        assert_eq!(lits[8], "{0,0}");
        assert_eq!(lits[9], "{1.5,0}");
    }
}
