//! Keeping secrets out of reprs, logs and errors.

/// Replace the password of a `scheme://user:password@host/...` URL with `***`.
///
/// Anything that does not parse as such a URL is returned unchanged, except that
/// a userinfo part (`...@`) always loses what follows its first `:`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let redacted_userinfo = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // `redis://secret@host` puts the password where the user would be.
        None if url.starts_with("redis") => "***".to_string(),
        None => userinfo.to_string(),
    };
    format!(
        "{}{}@{}",
        &url[..scheme_end + 3],
        redacted_userinfo,
        &rest[at + 1..]
    )
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_passwords() {
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
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("amqp://u:p@ss@host/v"), "amqp://u:***@host/v");
    }
}
