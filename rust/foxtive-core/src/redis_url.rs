//! Opening a redis-rs client from any Redis URL foxtive accepts.
//!
//! redis-rs reads a password from the userinfo on `redis://` / `rediss://`
//! (`redis://user:PASSWORD@host`) and from `?pass=` on `unix://` /
//! `redis+unix://`, and silently ignores `?password=`, the form redis-py users
//! write (a password that is then never sent). foxtive reads `?password=` /
//! `?pass=` and `?username=` / `?user=` on every scheme, so that every
//! credential [`crate::redact`] hides is one that is actually used.

use redis::IntoConnectionInfo;

use crate::redact::{query_pairs, redact_url, scrub, url_secrets};
use crate::{Error, Result};

/// A client, with the URL as it may be shown and the secrets to scrub.
pub struct RedisTarget {
    pub client: redis::Client,
    /// The URL with every credential replaced by `***`.
    pub redacted: String,
    /// Every secret of the URL, raw and decoded, longest first.
    pub secrets: Vec<String>,
}

/// Parse `url` (`setting` names it in errors) into a client; connects nowhere.
pub fn open(url: &str, setting: &str) -> Result<RedisTarget> {
    let redacted = redact_url(url);
    let secrets = url_secrets(url);
    let invalid = |why: String| {
        Error::Config(format!(
            "{setting}: {redacted} is not a usable Redis URL (redis://, rediss://, unix:// \
             or redis+unix://): {}",
            scrub(why, &secrets)
        ))
    };
    let info = url
        .into_connection_info()
        .map_err(|e| invalid(e.to_string()))?;
    let (user, password) = query_credentials(url).map_err(invalid)?;
    let mut settings = info.redis_settings().clone();
    if let Some(pw) = password {
        match settings.password() {
            Some(given) if given != pw => {
                return Err(invalid(
                    "the password is given twice, differently (userinfo and query)".into(),
                ))
            }
            _ => settings = settings.set_password(pw),
        }
    }
    if let Some(user) = user {
        if settings.username().is_none() {
            settings = settings.set_username(user);
        }
    }
    let client = redis::Client::open(info.set_redis_settings(settings))
        .map_err(|e| invalid(e.to_string()))?;
    Ok(RedisTarget {
        client,
        redacted,
        secrets,
    })
}

/// `(user, password)` from the query: `user`/`username`, `pass`/`password`.
/// The same credential given twice with different values is an error.
fn query_credentials(url: &str) -> std::result::Result<(Option<String>, Option<String>), String> {
    let (mut user, mut password): (Option<String>, Option<String>) = (None, None);
    for (key, value) in query_pairs(url) {
        let slot = match key.as_str() {
            "password" | "pass" => &mut password,
            "username" | "user" => &mut user,
            _ => continue,
        };
        match slot {
            Some(old) if *old != value => {
                return Err(format!("`{key}` is given twice in the query, differently"));
            }
            _ => *slot = Some(value),
        }
    }
    Ok((
        user.filter(|u| !u.is_empty()),
        password.filter(|p| !p.is_empty()),
    ))
}

#[cfg(test)]
mod tests {
    use super::open;

    #[test]
    fn reads_every_credential_form() {
        for url in [
            "redis://:pw@127.0.0.1:1/0",
            "redis://127.0.0.1:1/0?password=pw",
            "redis://127.0.0.1:1/0?pass=pw",
            "unix:///tmp/x.sock?pass=pw",
            "unix:///tmp/x.sock?password=pw",
            "redis+unix:///tmp/x.sock?password=pw&db=1",
        ] {
            let target = match open(url, "url") {
                Ok(t) => t,
                Err(e) => panic!("{url}: {e}"),
            };
            let info = target.client.get_connection_info().redis_settings().clone();
            assert_eq!(info.password(), Some("pw"), "{url}");
            assert!(!target.redacted.contains("pw"), "{}", target.redacted);
        }
    }

    #[test]
    fn conflicting_passwords_are_an_error_without_either() {
        let e = match open("redis://:one1@127.0.0.1:1/0?password=two2", "url") {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("twice"), "{e}");
        assert!(!e.contains("one1") && !e.contains("two2"), "{e}");
    }
}
