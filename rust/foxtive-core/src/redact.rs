//! Keeping secrets out of reprs, logs and errors.
//!
//! This is the one place that knows where a broker URL keeps a credential, for
//! every URL foxtive takes (AMQP and Redis alike):
//!
//! * the userinfo password: `scheme://user:PASSWORD@host` (and, for Redis,
//!   `redis://PASSWORD@host`, which some clients read as a password);
//! * the query parameters `password`, `pass` (redis-rs reads it on
//!   `unix://` / `redis+unix://` / `valkey+unix://`), `passwd` and `pwd`,
//!   whatever the scheme, with the key matched after percent-decoding, as the
//!   URL parsers do;
//! * a userinfo password that was not percent-encoded and so contains `/`, `?`
//!   or `#` (the URL then does not parse, but its text still ends up in the
//!   error that says so).
//!
//! [`redact_url`] shows such a URL with `***` in each place;
//! [`url_secrets`] lists the secrets themselves, raw and decoded, so that error
//! texts coming from a client library can be scrubbed with [`scrub`].

use std::ops::Range;

/// Query parameters whose value is a credential (compared case-insensitively).
pub const SECRET_QUERY_KEYS: [&str; 4] = ["password", "pass", "passwd", "pwd"];

/// `url` with every credential replaced by `***` (see the module docs).
///
/// Anything that does not look like a URL is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for span in secret_spans(url) {
        out.push_str(&url[at..span.start]);
        out.push_str("***");
        at = span.end;
    }
    out.push_str(&url[at..]);
    out
}

/// Every secret in `url`, as written and decoded, longest first (so that
/// [`scrub`] replaces a secret containing another one whole).
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    for span in secret_spans(url) {
        let raw = &url[span];
        // A query value that swallowed a fragment: the parser used the part before `#`.
        let before_fragment = raw.split('#').next().unwrap_or(raw);
        for text in [raw, before_fragment] {
            for candidate in [
                text.to_string(),
                percent_decode(text, false),
                percent_decode(text, true),
            ] {
                if !candidate.is_empty() && !secrets.contains(&candidate) {
                    secrets.push(candidate);
                }
            }
        }
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `text` with each of `secrets` replaced by `***`.
pub fn scrub(text: impl Into<String>, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.into(), |t, s| t.replace(s.as_str(), "***"))
}

/// The query parameters of `url` as `(key, value)`, both decoded the way URL
/// parsers decode a query (`%XX`, and `+` as a space). Repeated keys repeat.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let Some(q) = url.find('?') else {
        return Vec::new();
    };
    let query = &url[q + 1..];
    let query = &query[..query.find('#').unwrap_or(query.len())];
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// True when the (decoded) query key names a credential.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_QUERY_KEYS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key))
}

/// Byte ranges of `url` that hold a credential, in order, not overlapping.
fn secret_spans(url: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut query_from = 0;
    if let Some(scheme_end) = url.find("://") {
        let start = scheme_end + 3;
        let scheme = url[..scheme_end].to_ascii_lowercase();
        if let Some(span) = userinfo_secret(url, start, &scheme) {
            query_from = span.end;
            spans.push(span);
        }
    }
    if let Some(q) = url[query_from..].find('?') {
        spans.extend(query_secrets(url, query_from + q + 1));
    }
    spans
}

/// The password in the userinfo of the authority starting at `start`.
fn userinfo_secret(url: &str, start: usize, scheme: &str) -> Option<Range<usize>> {
    let rest = &url[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    if let Some(at) = authority.rfind('@') {
        let userinfo = &authority[..at];
        return match userinfo.find(':') {
            Some(colon) if colon + 1 < at => Some(start + colon + 1..start + at),
            Some(_) => None,
            // `redis://secret@host`: some clients read a lone userinfo as the
            // password; `nats://token@host` is a token.
            None if !userinfo.is_empty()
                && (is_redis_scheme(scheme) || scheme == "nats" || scheme == "tls") =>
            {
                Some(start..start + at)
            }
            None => None,
        };
    }
    // No `@` in the authority. A "port" that is not a number means the
    // authority was cut short by a `/`, `?` or `#` inside a password that was
    // not percent-encoded: hide from the colon to the last `@` (or to the end
    // of the authority when there is none).
    let host_start = authority.rfind(']').map_or(0, |b| b + 1);
    let colon = host_start + authority[host_start..].find(':')?;
    let port = &authority[colon + 1..];
    if port.is_empty() || port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let end = rest.rfind('@').unwrap_or(authority_len);
    Some(start + colon + 1..start + end)
}

/// The values of credential parameters in the query starting at `start`.
///
/// A value runs to the next `&` or the end, a fragment included: a `#` in an
/// unencoded password would otherwise leave the rest of it in view.
fn query_secrets(url: &str, start: usize) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut pos = start;
    for pair in url[start..].split('&') {
        if let Some(eq) = pair.find('=') {
            let value = pos + eq + 1..pos + pair.len();
            if is_secret_key(&percent_decode(&pair[..eq], true)) && !value.is_empty() {
                spans.push(value);
            }
        }
        pos += pair.len() + 1;
    }
    spans
}

fn is_redis_scheme(scheme: &str) -> bool {
    scheme.starts_with("redis") || scheme.starts_with("valkey") || scheme == "unix"
}

/// `%XX` decoded (invalid escapes kept as written); `+` as a space in a query.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{query_pairs, redact_url, scrub, url_secrets};

    #[test]
    fn hides_userinfo_passwords() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://pw@h"), "rediss://***@h");
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact_url("amqp://user@localhost"), "amqp://user@localhost");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("amqp://u:p@ss@host/v"), "amqp://u:***@host/v");
        assert_eq!(redact_url("redis://[::1]:6379/0"), "redis://[::1]:6379/0");
        assert_eq!(redact_url("amqp://h:5672/v@x"), "amqp://h:5672/v@x");
    }

    #[test]
    fn hides_unencoded_passwords_that_cut_the_authority_short() {
        for (url, secret) in [
            ("redis://:pa/ss@h:1/0", "pa/ss"),
            ("redis://u:pa#ss@h:1/0", "pa#ss"),
            ("redis://u:pa?ss@h:1/0", "pa?ss"),
            ("amqp://u:pa/ss@h/v", "pa/ss"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(!shown.contains("ss@"), "{url} -> {shown}");
        }
    }

    #[test]
    fn hides_query_credentials() {
        assert_eq!(
            redact_url("unix:///tmp/r.sock?pass=s3cret&db=2"),
            "unix:///tmp/r.sock?pass=***&db=2"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock?db=1&password=s3cret"),
            "redis+unix:///tmp/r.sock?db=1&password=***"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0?PassWord=x&protocol=3"),
            "redis://127.0.0.1:6379/0?PassWord=***&protocol=3"
        );
        // A percent-encoded key is still the key the parser reads.
        assert_eq!(redact_url("unix:///s?p%61ss=x"), "unix:///s?p%61ss=***");
        assert_eq!(
            redact_url("rediss://u:a@h/0?pwd=b#insecure"),
            "rediss://u:***@h/0?pwd=***"
        );
        assert_eq!(redact_url("redis://h/0?user=bob"), "redis://h/0?user=bob");
        assert_eq!(redact_url("redis://h/0?pass="), "redis://h/0?pass=");
    }

    #[test]
    fn lists_secrets_raw_and_decoded() {
        let s = url_secrets("unix:///s?pass=a%26b+c&user=u");
        assert!(s.contains(&"a%26b+c".to_string()));
        assert!(s.contains(&"a&b c".to_string()));
        assert!(s.contains(&"a&b+c".to_string()));
        assert_eq!(scrub("auth a&b c failed", &s), "auth *** failed");
        assert!(url_secrets("redis://h:1/0").is_empty());
        let pairs = query_pairs("unix:///s?pass=a%26b+c&db=2#x");
        assert_eq!(
            pairs,
            vec![
                ("pass".to_string(), "a&b c".to_string()),
                ("db".to_string(), "2".to_string())
            ]
        );
    }
}
