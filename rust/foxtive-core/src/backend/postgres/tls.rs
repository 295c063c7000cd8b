//! TLS to PostgreSQL, read from the DSN the way libpq (and so psycopg, which
//! foxtive's SQL result store uses) reads it, and the one function that opens
//! a connection: the backend's shared pair, `foxtive db migrate` and the
//! schedule store all connect through [`connect`].
//!
//! * `sslmode=disable`: plaintext.
//! * `prefer` (the default, as in libpq): TLS when the server offers it,
//!   plaintext when it does not; the certificate is not checked.
//! * `require`: TLS or no connection; the certificate is not checked, unless
//!   `sslrootcert` is given, which makes it `verify-ca` (libpq does the same).
//! * `verify-ca`: the server's chain must lead to `sslrootcert`.
//! * `verify-full`: that, and the certificate must name the host connected
//!   to (`host`, which `hostaddr` does not change).
//! * `sslrootcert=PATH` (PEM; default `~/.postgresql/root.crt` as in libpq);
//!   `sslrootcert=system`: the system's trust store, and `verify-full` (its
//!   default then, as in libpq 16; no client certificate then).
//! * `sslcert=PATH` / `sslkey=PATH`: a client certificate (PEM, both given;
//!   the key unencrypted: `sslpassword` is refused, not shown).
//! * `allow` is taken as `prefer` (libpq tries plaintext first; both end up
//!   with TLS only if the server insists or offers it).
//!
//! Environment variables (`PGSSLMODE`, ...) are not read, like the rest of
//! the DSN's libpq environment (tokio-postgres reads none of it).
//!
//! The TLS stack is rustls (already in the tree through lapin, redis and
//! async-nats), through `tokio-postgres-rustls`; the verifiers below are
//! rustls's own WebPKI verifier, with the name check dropped for
//! `verify-ca` and every check but the handshake signature dropped for
//! `prefer` / `require`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode as ClientSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::config::Dsn;
use super::link::{describe, is_connection_error};
use crate::redact::{query_pairs, scrub};
use crate::{Error, Result};

/// A connection as [`connect`] opens it (TLS or not): drive it on a task.
pub(crate) type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// The DSN parameters this module takes out before the client parses the
/// rest (tokio-postgres rejects the ones it does not know, and knows only
/// three `sslmode`s).
const TAKEN: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "dsn: sslmode must be disable, allow, prefer, require, verify-ca or \
                     verify-full, got {other:?}"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=PATH`.
    File(PathBuf),
    /// `sslrootcert=system`: the system's trust store.
    System,
}

/// The TLS settings of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
        }
    }
}

impl TlsSettings {
    /// The mode after libpq's rules: a root certificate turns `require`
    /// into `verify-ca`; `sslrootcert=system` allows only `verify-full`.
    fn effective(&self) -> Result<SslMode> {
        if self.root_cert == Some(RootCert::System) && self.client_cert.is_some() {
            return Err(Error::Config(
                "dsn: sslcert / sslkey cannot be used with sslrootcert=system".into(),
            ));
        }
        match (&self.root_cert, self.mode) {
            (Some(RootCert::System), SslMode::VerifyFull | SslMode::Disable) => Ok(self.mode),
            (Some(RootCert::System), m) => Err(Error::Config(format!(
                "dsn: sslrootcert=system needs sslmode=verify-full (as in libpq), got \
                 sslmode={}",
                m.as_str()
            ))),
            (Some(RootCert::File(_)), SslMode::Require) => Ok(SslMode::VerifyCa),
            (_, m) => Ok(m),
        }
    }

    /// A short description for error messages (paths, never secrets).
    fn describe(&self) -> String {
        let mut s = format!("sslmode={}", self.mode.as_str());
        match &self.root_cert {
            Some(RootCert::File(p)) => s.push_str(&format!(", sslrootcert={}", p.display())),
            Some(RootCert::System) => s.push_str(", sslrootcert=system"),
            None => {}
        }
        s
    }
}

/// `dsn` (a URL or `key=value` text) without the TLS parameters, and those
/// parameters read. A `sslpassword` value is pushed to `secrets` (it is
/// refused, but must not be shown while saying so).
pub(crate) fn take_tls(dsn: &str, secrets: &mut Vec<String>) -> Result<(String, TlsSettings)> {
    let (rest, taken) = if dsn.contains("://") {
        take_url_params(dsn)
    } else {
        take_keyword_params(dsn)
    };
    let mut settings = TlsSettings::default();
    let (mut cert, mut key, mut mode_given) = (None, None, false);
    for (k, v) in taken {
        match k.as_str() {
            "sslmode" => {
                settings.mode = SslMode::parse(&v)?;
                mode_given = true;
            }
            "sslrootcert" if v == "system" => settings.root_cert = Some(RootCert::System),
            "sslrootcert" if !v.is_empty() => settings.root_cert = Some(RootCert::File(v.into())),
            "sslcert" if !v.is_empty() => cert = Some(PathBuf::from(v)),
            "sslkey" if !v.is_empty() => key = Some(PathBuf::from(v)),
            "sslpassword" => {
                if !v.is_empty() && !secrets.contains(&v) {
                    secrets.push(v);
                    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
                }
                return Err(Error::Config(
                    "dsn: sslpassword (an encrypted client key) is not supported: give an \
                     unencrypted sslkey (mode 0600)"
                        .into(),
                ));
            }
            _ => {}
        }
    }
    if !mode_given && settings.root_cert == Some(RootCert::System) {
        // libpq 16: sslrootcert=system makes verify-full the default.
        settings.mode = SslMode::VerifyFull;
    }
    settings.client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "dsn: sslcert and sslkey go together (give both)".into(),
            ))
        }
    };
    settings.effective()?;
    Ok((rest, settings))
}

/// The URL without the TAKEN query parameters, and their decoded values.
fn take_url_params(dsn: &str) -> (String, Vec<(String, String)>) {
    let Some(q) = dsn.find('?') else {
        return (dsn.to_string(), Vec::new());
    };
    let (base, query) = (&dsn[..q], &dsn[q + 1..]);
    let mut taken = Vec::new();
    let kept: Vec<&str> = query
        .split('&')
        .filter(
            |pair| match query_pairs(&format!("?{pair}")).into_iter().next() {
                Some((k, v)) if TAKEN.contains(&k.as_str()) => {
                    taken.push((k, v));
                    false
                }
                _ => !pair.is_empty(),
            },
        )
        .collect();
    if kept.is_empty() {
        (base.to_string(), taken)
    } else {
        (format!("{base}?{}", kept.join("&")), taken)
    }
}

/// `key=value` text without the TAKEN keys, and their values (libpq's
/// quoting: `'...'` with `\'` and `\\`).
fn take_keyword_params(dsn: &str) -> (String, Vec<(String, String)>) {
    let mut kept = String::new();
    let mut taken = Vec::new();
    let mut chars = dsn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=');
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            while let Some((_, c)) = chars.next() {
                match c {
                    '\'' => break,
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(dsn.len(), |&(i, _)| i);
        if TAKEN.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(dsn[start..end].trim_end());
        }
    }
    (kept, taken)
}

/// Open a connection to `dsn` with its TLS settings. Errors name the
/// reason (the server's message, or the TLS one with the settings that
/// led to it) and never the password.
pub(crate) async fn connect(dsn: &Dsn) -> Result<(Client, Connection)> {
    let fail = |reason: String| {
        scrub(
            format!("postgres {}: cannot connect: {reason}", dsn.redacted),
            &dsn.secrets,
        )
    };
    let mode = dsn
        .tls
        .effective()
        .map_err(|e| Error::Config(fail(e.to_string())))?;
    let mut config = dsn.config.clone();
    // libpq does not use TLS over a Unix socket (nothing to protect there).
    let all_unix = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
    config.ssl_mode(match mode {
        _ if all_unix => ClientSslMode::Disable,
        SslMode::Disable => ClientSslMode::Disable,
        SslMode::Prefer => ClientSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientSslMode::Require,
    });
    let tls = if settings_system(&dsn.tls) && !all_unix && mode != SslMode::Disable {
        system_roots().map_err(|e| Error::Config(fail(e)))?
    } else if mode == SslMode::Disable || all_unix {
        // Never used (the client does not ask the server for TLS).
        MakeRustlsConnect::new(client_config(mode, &dsn.tls, true)?)
    } else {
        MakeRustlsConnect::new(
            client_config(mode, &dsn.tls, false).map_err(|e| Error::Config(fail(e.to_string())))?,
        )
    };
    config.connect(tls).await.map_err(|e| {
        let mut reason = describe(&e);
        if e.as_db_error().is_none() && reason.contains("TLS") {
            reason = format!("{reason} ({})", dsn.tls.describe());
        }
        if is_connection_error(&e) {
            Error::ConnectionLost(fail(reason))
        } else {
            Error::Backend(fail(reason))
        }
    })
}

fn settings_system(settings: &TlsSettings) -> bool {
    settings.root_cert == Some(RootCert::System)
}

/// `sslrootcert=system`: `verify-full` against the system's trust store
/// (loaded by tokio-postgres-rustls, which uses the process's default
/// provider: ring, as for the other brokers).
fn system_roots() -> std::result::Result<MakeRustlsConnect, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    MakeRustlsConnect::with_native_certs()
        .map(|(tls, _)| tls)
        .map_err(|errors| {
            format!("sslrootcert=system: no certificate in the system's trust store ({errors:?})")
        })
}

fn provider() -> Arc<CryptoProvider> {
    // ring: the provider the tree's other rustls users are given (both ring
    // and aws-lc are compiled in, so rustls cannot pick one by itself).
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client settings for `mode`. `unused`: a placeholder for a
/// client that never starts TLS (no file is read).
fn client_config(mode: SslMode, settings: &TlsSettings, unused: bool) -> Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        _ if unused => Arc::new(NoVerification(provider)),
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(NoVerification(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(settings, mode)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::Config(format!("TLS: {e}")))?;
            if mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &settings.client_cert {
        Some((cert, key)) if !unused => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| file_error("sslcert", cert, e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("sslkey", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| Error::Config(format!("sslcert / sslkey: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The trusted roots: `sslrootcert`, or libpq's default file.
fn roots(settings: &TlsSettings, mode: SslMode) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let path = match &settings.root_cert {
        // Handled by `connect` (tokio-postgres-rustls loads the store).
        Some(RootCert::System) => return Ok(store),
        Some(RootCert::File(p)) => p.clone(),
        None => {
            let default = std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
                .filter(|p| p.exists());
            match default {
                Some(p) => p,
                None => {
                    return Err(Error::Config(format!(
                        "sslmode={} needs the CA that signed the server's certificate: \
                         give sslrootcert=PATH (~/.postgresql/root.crt does not exist), \
                         sslrootcert=system, or a weaker sslmode",
                        mode.as_str()
                    )))
                }
            }
        }
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| file_error("sslrootcert", &path, e))?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Config(format!(
            "sslrootcert {}: no certificate in the file",
            path.display()
        )));
    }
    Ok(store)
}

fn file_error(what: &str, path: &Path, e: rustls::pki_types::pem::Error) -> Error {
    Error::Config(format!("{what} {}: {e}", path.display()))
}

/// `prefer` / `require`: encryption without authentication, as in libpq.
/// The handshake's signatures are still checked (the session is bound to
/// whatever certificate was presented).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// checked. WebPKI checks the chain before the name, so a name error means
/// the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(dsn: &str) -> Result<(String, TlsSettings)> {
        take_tls(dsn, &mut Vec::new())
    }

    #[test]
    fn url_parameters_are_taken_out() {
        let (rest, s) = take(
            "postgresql://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=/a%20b/ca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u@h/db?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(RootCert::File("/a b/ca.pem".into())));
        let (rest, s) = take("postgres://h/db").unwrap();
        assert_eq!(
            (rest.as_str(), s),
            ("postgres://h/db", TlsSettings::default())
        );
    }

    #[test]
    fn keyword_parameters_are_taken_out() {
        let (rest, s) = take(
            "host=h sslmode = verify-ca  user=u sslrootcert='/x y/it\\'s.pem' sslcert=/c sslkey=/k dbname=d",
        )
        .unwrap();
        assert_eq!(rest, "host=h user=u dbname=d");
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert, Some(RootCert::File("/x y/it's.pem".into())));
        assert_eq!(s.client_cert, Some(("/c".into(), "/k".into())));
    }

    #[test]
    fn libpq_rules() {
        let (_, s) = take("postgres://h/db?sslmode=require&sslrootcert=/ca").unwrap();
        assert_eq!(s.effective().unwrap(), SslMode::VerifyCa);
        let (_, s) = take("postgres://h/db?sslmode=allow").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert!(take("postgres://h/db?sslmode=require&sslrootcert=system").is_err());
        assert!(take("postgres://h/db?sslmode=verify-full&sslrootcert=system").is_ok());
        let (_, s) = take("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert!(take("postgres://h/db?sslmode=bogus").is_err());
        assert!(take("postgres://h/db?sslcert=/c").is_err());
    }

    #[test]
    fn an_sslpassword_is_refused_and_kept_secret() {
        let mut secrets = Vec::new();
        let e = take_tls("postgres://h/db?sslpassword=k3y-pass", &mut secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("k3y-pass"), "{e}");
        assert_eq!(secrets, ["k3y-pass"]);
    }
}
