//! How big a message's content header frame gets. AMQP cannot split a
//! content header across frames: one bigger than the connection's
//! `frame_max` makes the broker close the whole connection (FRAME_ERROR),
//! taking every channel with it. `publish` checks first and refuses that one
//! message instead.

use crate::message::{HeaderValue, Headers, Outgoing};

/// Frame header (7) + end byte (1) + class, weight, body size (12) + flags
/// (2), plus the fixed-size properties (delivery mode, priority, timestamp).
const FIXED: usize = 7 + 1 + 12 + 2 + 1 + 1 + 8;

/// An upper bound of the content header frame `out` is sent in, with
/// `id` as its message id.
pub fn header_frame_len(out: &Outgoing, id: &str) -> usize {
    let short = |s: &Option<String>| s.as_ref().map_or(0, |v| 1 + v.len());
    FIXED
        + 1
        + id.len()
        + short(&out.correlation_id)
        + short(&out.content_type)
        + short(&out.reply_to)
        + 4
        + table_len(&out.headers)
}

fn table_len(headers: &Headers) -> usize {
    headers
        .iter()
        .map(|(k, v)| 1 + k.len() + value_len(v))
        .sum()
}

fn value_len(v: &HeaderValue) -> usize {
    1 + match v {
        HeaderValue::Null => 0,
        HeaderValue::Bool(_) => 1,
        HeaderValue::Int(_) | HeaderValue::Float(_) => 8,
        HeaderValue::Str(s) => 4 + s.len(),
        HeaderValue::Bytes(b) => 4 + b.len(),
        HeaderValue::Array(items) => 4 + items.iter().map(value_len).sum::<usize>(),
        HeaderValue::Table(t) => 4 + table_len(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_headers() {
        let mut out = Outgoing::new(bytes::Bytes::from_static(b"x"));
        let base = header_frame_len(&out, "id");
        out.headers
            .push(("big".into(), HeaderValue::Str("h".repeat(20_000))));
        assert!(header_frame_len(&out, "id") >= base + 20_000);
    }
}
