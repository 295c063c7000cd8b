//! The NATS schedule store connects with the credentials a NATS backend
//! takes (`Auth`: `user:password@` in the URL, `token`, `nkey_file`), against
//! `nats-server -js` processes of the test's own (the shared server on 4222
//! has no auth): one wanting a user/password or an nkey, one wanting a
//! token. Each is stopped and its store removed afterwards. Without the
//! credentials the store fails, naming the refusal and never the secret.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use foxtive_core::backend::options::{OptionValue, Options};
use foxtive_core::schedule::brokers::{self, ScheduleBroker};
use foxtive_core::schedule::leader::Holder;
use foxtive_core::schedule::store::Stored;
use foxtive_core::schedule::{DateTime, Utc};
use foxtive_core::Error;

/// A `nats-server -js` of the test's own, configured by `authorization`.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    /// Started with `authorization { ... }` in its config file; returns once
    /// the server logs that it is ready.
    fn start(authorization: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "foxtive-nats-auth-{:012x}",
            rand::random::<u64>() >> 16
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("server.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\nauthorization {{\n{authorization}\n}}\n",
                dir.join("js").display().to_string()
            ),
        )
        .unwrap();
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server on PATH");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("Server is ready") {
                break;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "nats-server exited");
        // Keep reading its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, port, dir }
    }

    fn url(&self, userinfo: &str) -> String {
        format!("nats://{userinfo}127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn secret() -> String {
    format!("s3cr3t-{:08x}", rand::random::<u32>())
}

fn options(pairs: &[(&str, &str)]) -> Options {
    let mut o = Options::new();
    for (k, v) in pairs {
        o.set(*k, OptionValue::Str(v.to_string()));
    }
    o
}

/// The store leads, records a tick and reads it back; a judge connection
/// (async-nats, with the credentials) to `server` finds the lease in the bucket.
async fn works(store: &dyn ScheduleBroker, judge: async_nats::ConnectOptions, server: &Server) {
    let holder = Holder::this_process();
    let lease = store
        .try_acquire(&holder, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the only scheduler leads");
    let v = Stored {
        fingerprint: "every:1".into(),
        tick: DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap(),
    };
    assert!(store.record("s", &v, lease.token).await.unwrap());
    assert_eq!(store.last("s").await.unwrap(), Some(v));
    let client = judge.connect(server.url("")).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value("foxtive_schedules_authapp").await.unwrap();
    let leader = kv
        .get("leader")
        .await
        .unwrap()
        .expect("the lease is stored");
    assert!(String::from_utf8_lossy(&leader).contains(&holder.encode()));
    store.release(&lease).await.unwrap();
}

/// Opening never connects; the first use fails with the server's refusal,
/// and no text of it shows `secret`.
async fn refused(store: &dyn ScheduleBroker, secret: &str) {
    let err = store
        .try_acquire(&Holder::this_process(), Duration::from_secs(5))
        .await
        .expect_err("the server wants credentials");
    let text = err.to_string();
    assert!(
        matches!(err, Error::ConnectionLost(_)) && text.to_lowercase().contains("authorization"),
        "{text}"
    );
    assert!(!text.contains(secret), "{text}");
}

#[tokio::test]
async fn the_schedule_store_connects_with_a_user_password_or_an_nkey() {
    let password = secret();
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = Server::start(&format!(
        "users = [\n {{ user: ann, password: \"{password}\" }}\n {{ nkey: {} }}\n]",
        user.public_key()
    ));
    let nkey_file = server.dir.join("user.nk");
    std::fs::write(&nkey_file, format!("{seed}\n")).unwrap();

    // user:password in the URL, as a NatsBackend takes them.
    let url = server.url(&format!("ann:{password}@"));
    let store = brokers::open_with(&url, "authapp", Options::new()).unwrap();
    let judge = async_nats::ConnectOptions::with_user_and_password("ann".into(), password.clone());
    works(store.as_ref(), judge, &server).await;

    // An nkey seed file, as NatsBackend(nkey_file=...).
    let nkey_path = nkey_file.display().to_string();
    let store = brokers::open_with(
        &server.url(""),
        "authapp",
        options(&[("nkey_file", &nkey_path)]),
    )
    .unwrap();
    let judge = async_nats::ConnectOptions::with_nkey(seed.clone());
    works(store.as_ref(), judge, &server).await;

    // Without them, or with a wrong password: refused, the secret unshown.
    let bare = brokers::open_with(&server.url(""), "authapp", Options::new()).unwrap();
    refused(bare.as_ref(), &password).await;
    let wrong = brokers::open_with(&server.url("ann:not-it@"), "authapp", Options::new()).unwrap();
    refused(wrong.as_ref(), "not-it").await;
}

#[tokio::test]
async fn the_schedule_store_connects_with_a_token() {
    let token = secret();
    let server = Server::start(&format!("token: \"{token}\""));
    let store =
        brokers::open_with(&server.url(""), "authapp", options(&[("token", &token)])).unwrap();
    let judge = async_nats::ConnectOptions::with_token(token.clone());
    works(store.as_ref(), judge, &server).await;
    // The token in the URL works too (the backend takes it there as well).
    let in_url = server.url(&format!("{token}@"));
    let store = brokers::open_with(&in_url, "authapp", Options::new()).unwrap();
    works(
        store.as_ref(),
        async_nats::ConnectOptions::with_token(token.clone()),
        &server,
    )
    .await;

    let bare = brokers::open_with(&server.url(""), "authapp", Options::new()).unwrap();
    refused(bare.as_ref(), &token).await;
    let wrong = brokers::open_with(
        &server.url(""),
        "authapp",
        options(&[("token", "not-the-token")]),
    )
    .unwrap();
    refused(wrong.as_ref(), "not-the-token").await;
}

#[test]
fn credentials_are_nats_options_only_and_checked_by_name() {
    // Another broker takes none: a credential given there is an error naming it.
    let err = brokers::open_with("memory://", "authapp", options(&[("token", "t")]))
        .err()
        .expect("memory takes no credentials");
    assert!(err.to_string().contains("'token'"), "{err}");
    let err = brokers::open_with(
        "nats://127.0.0.1:4222",
        "authapp",
        options(&[("tokn", "t")]),
    )
    .err()
    .expect("an unknown option");
    let text = err.to_string();
    assert!(
        text.contains("'tokn'") && text.contains("nkey_file"),
        "{text}"
    );
}
