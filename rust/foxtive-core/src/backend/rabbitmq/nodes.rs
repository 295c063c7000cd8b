//! Broker URLs: one or more nodes, read the way Python AMQP clients read them.
//!
//! `amqp://host:5672` and `amqp://host:5672/` both mean the default vhost `/`
//! (lapin alone reads the trailing slash as the empty vhost, which no broker
//! has); `/%2F` means `/`; `/name` means `name`. Several nodes are given as
//! `amqp://user:pw@a:5672,b:5672/vhost` (one credential, vhost and query for
//! all) or as several URLs.

use lapin::uri::AMQPUri;

use crate::redact::{redact_url, url_secrets};
use crate::{Error, Result};

/// The nodes of one backend, with what may be shown of them.
#[derive(Debug, Clone)]
pub struct Nodes {
    pub uris: Vec<AMQPUri>,
    /// The URLs as given, passwords replaced by `***`.
    pub redacted: String,
    /// Passwords, as written and decoded, to scrub from error texts.
    pub secrets: Vec<String>,
}

/// Parse `urls` (each possibly with comma-separated hosts) into nodes.
pub fn parse_nodes(urls: &[&str]) -> Result<Nodes> {
    if urls.is_empty() {
        return Err(Error::Config(
            "url: at least one broker URL is needed".to_string(),
        ));
    }
    let mut uris = Vec::new();
    let mut secrets: Vec<String> = Vec::new();
    let mut shown = Vec::new();
    for url in urls {
        let redacted = redact_url(url);
        for secret in url_secrets(url) {
            if !secrets.contains(&secret) {
                secrets.push(secret);
            }
        }
        for one in split_hosts(url) {
            let mut uri: AMQPUri = one.parse().map_err(|_| {
                Error::Config(format!(
                    "url: not a valid AMQP URL ({redacted}); expected \
                     amqp://user:password@host:port/vhost or amqps://..."
                ))
            })?;
            if uri.vhost.is_empty() {
                // `amqp://host/`: the default vhost, as in pika, aio-pika, kombu.
                uri.vhost = "/".to_string();
            }
            let password = &uri.authority.userinfo.password;
            if !password.is_empty() && !secrets.contains(password) {
                secrets.push(password.clone());
            }
            uris.push(uri);
        }
        shown.push(redacted);
    }
    // Longest first, so that `scrub` replaces a secret containing another whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok(Nodes {
        uris,
        redacted: shown.join(","),
        secrets,
    })
}

/// No node has been connected to yet (for [`attempt_order`]'s `lost`).
pub const NO_NODE: usize = usize::MAX;

/// The order one round of connection attempts tries `len` nodes in: round
/// the list from `start` (random per round, so a fleet of workers spreads
/// over the cluster, on the first connection and again after a node is
/// lost, instead of all moving to the same next node), with `lost` (the
/// node the link that just failed was on) moved to the end: it is most
/// likely still down, and a node that accepts TCP but never answers would
/// cost a whole `connect_timeout` first.
pub fn attempt_order(len: usize, start: usize, lost: usize) -> Vec<usize> {
    // The others, from `start` among them (so each is as likely to come
    // first), then the lost node.
    let others: Vec<usize> = (0..len).filter(|&i| i != lost).collect();
    if others.is_empty() {
        return (0..len).collect();
    }
    let first = start % others.len();
    let mut order: Vec<usize> = others[first..]
        .iter()
        .chain(&others[..first])
        .copied()
        .collect();
    if lost < len {
        order.push(lost);
    }
    order
}

/// `scheme://userinfo@a,b:1/rest` → one URL per host, sharing the rest.
fn split_hosts(url: &str) -> Vec<String> {
    let Some(scheme_end) = url.find("://") else {
        return vec![url.to_string()];
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_string()];
    }
    hosts
        .split(',')
        .map(|host| format!("{scheme}{userinfo}{}{tail}", host.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(url: &str) -> String {
        parse_nodes(&[url]).unwrap().uris[0].vhost.clone()
    }

    #[test]
    fn vhosts_read_like_python_clients() {
        assert_eq!(vhost("amqp://h:5672"), "/");
        assert_eq!(vhost("amqp://h:5672/"), "/");
        assert_eq!(vhost("amqp://h:5672/%2F"), "/");
        assert_eq!(vhost("amqp://h:5672/%2f"), "/");
        assert_eq!(vhost("amqp://h:5672/name"), "name");
        assert_eq!(vhost("amqp://h:5672/?heartbeat=5"), "/");
    }

    #[test]
    fn several_hosts_share_credentials_and_vhost() {
        let n = parse_nodes(&["amqp://u:s3cret@a:1,b:2/v?heartbeat=5"]).unwrap();
        assert_eq!(n.uris.len(), 2);
        assert_eq!(n.uris[0].authority.host, "a");
        assert_eq!(n.uris[1].authority.host, "b");
        assert_eq!(n.uris[1].authority.port, 2);
        assert_eq!(n.uris[1].authority.userinfo.password, "s3cret");
        assert_eq!(n.uris[1].vhost, "v");
        assert_eq!(n.uris[1].query.heartbeat, Some(5));
        assert!(!n.redacted.contains("s3cret"), "{}", n.redacted);
        let list = parse_nodes(&["amqp://u:p1@a/", "amqp://u:p%402@b"]).unwrap();
        assert_eq!(list.uris.len(), 2);
        assert!(list.secrets.contains(&"p%402".to_string()));
        assert!(list.secrets.contains(&"p@2".to_string()));
        assert!(!list.redacted.contains("p1") && !list.redacted.contains("p%402"));
    }

    #[test]
    fn each_round_tries_every_node_once_and_the_lost_one_last() {
        for len in 1..5 {
            for start in 0..12 {
                for lost in (0..len).chain([NO_NODE]) {
                    let order = attempt_order(len, start, lost);
                    let mut sorted = order.clone();
                    sorted.sort_unstable();
                    assert_eq!(sorted, (0..len).collect::<Vec<_>>(), "{len} {start} {lost}");
                    if lost != NO_NODE {
                        assert_eq!(order[len - 1], lost, "{len} {start} {lost}");
                    }
                }
            }
        }
        assert_eq!(attempt_order(3, 1, NO_NODE), vec![1, 2, 0]);
        assert_eq!(attempt_order(3, 1, 1), vec![2, 0, 1]);
        assert_eq!(attempt_order(3, 5, 0), vec![2, 1, 0]);
        assert_eq!(attempt_order(1, 7, 0), vec![0]);
        assert!(attempt_order(0, 3, NO_NODE).is_empty());
    }

    #[test]
    fn random_starts_spread_first_attempts_over_the_nodes() {
        // What a fleet of workers does: each round starts at a random node.
        let mut first = [0usize; 3];
        let mut after_loss = [0usize; 3];
        for _ in 0..3000 {
            first[attempt_order(3, rand::random::<u32>() as usize, NO_NODE)[0]] += 1;
            after_loss[attempt_order(3, rand::random::<u32>() as usize, 0)[0]] += 1;
        }
        // 1,000 expected each; 800 is more than 7 standard deviations off.
        assert!(first.iter().all(|&n| n > 800), "{first:?}");
        // After node 0 is lost, its workers spread over 1 and 2.
        assert_eq!(after_loss[0], 0);
        assert!(
            after_loss[1] > 1200 && after_loss[2] > 1200,
            "{after_loss:?}"
        );
    }

    #[test]
    fn bad_urls_are_config_errors_without_passwords() {
        let err = parse_nodes(&["amqp://u:hunter2@[bad"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("url") && !err.contains("hunter2"), "{err}");
        assert!(parse_nodes(&[]).is_err());
    }
}
