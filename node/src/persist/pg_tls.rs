//! TLS to PostgreSQL: which `sslmode` a `--postgres-url` asks for, decided before
//! anything is dialled (pure: no I/O here but reading the CA file when building the
//! connector).
//!
//! The driver (`tokio-postgres`) knows only `disable`, `prefer` and `require`, and
//! `prefer` is its default: a server (or anyone in the path) that answers "no TLS" and
//! then asks for a cleartext password gets it. So the node reads libpq's TLS options
//! itself, removes them from the URL it hands to the driver, and decides:
//!
//! | the URL says                          | the node does                                     |
//! |---------------------------------------|---------------------------------------------------|
//! | nothing                               | `require` (`verify-full` when `sslrootcert` is given) |
//! | `sslmode=disable`                     | no TLS (must be written out)                      |
//! | `sslmode=allow` or `prefer`           | refused at start: both fall back to cleartext     |
//! | `sslmode=require`                     | TLS, the server's certificate not checked (as libpq; with `sslrootcert`: `verify-ca`, as libpq) |
//! | `sslmode=verify-ca`                   | TLS, the chain checked against `sslrootcert` (else the system's roots), not the host name |
//! | `sslmode=verify-full`                 | TLS, the chain and the host name checked          |
//!
//! `sslrootcert=FILE` is a PEM file of CA certificates; `sslrootcert=system` means the
//! system's trusted roots. A server that declines TLS is refused in every mode but
//! `disable`, before any password is sent.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};

/// How the connection to the database is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS (only when the URL says `sslmode=disable`).
    Disable,
    /// TLS; the server's certificate is not checked (stops eavesdroppers and a server
    /// that declines TLS, not an active impostor with a certificate of its own).
    Require,
    /// TLS; the certificate chain is checked against the roots, not the host name.
    VerifyCa,
    /// TLS; the chain and the host name are checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq name.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's trusted roots (`sslrootcert=system`, or no `sslrootcert`).
    System,
    /// A PEM file of CA certificates (`sslrootcert=FILE`).
    File(PathBuf),
}

/// The TLS decision for one `--postgres-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode.
    pub mode: SslMode,
    /// The roots the verifying modes check against.
    pub roots: Roots,
}

/// Splits libpq's TLS options (`sslmode`, `sslrootcert`) off `url` (either form: a
/// `postgres://` URL or `key=value` words) and decides the mode. Returns the URL without
/// them, for the driver, and the settings. Errors never contain the URL (it may hold
/// the password).
pub fn split(url: &str) -> Result<(String, TlsSettings), String> {
    let (rest, mode, root) = if is_url(url) {
        split_url(url)?
    } else {
        split_words(url)?
    };
    Ok((rest, decide(mode.as_deref(), root.as_deref())?))
}

/// The mode for the `sslmode` and `sslrootcert` values as written (`None`: absent).
pub fn decide(mode: Option<&str>, root: Option<&str>) -> Result<TlsSettings, String> {
    let roots = match root {
        None | Some("system") => Roots::System,
        Some("") => return Err("sslrootcert is empty".into()),
        Some(file) => Roots::File(PathBuf::from(file)),
    };
    let mode = match (mode, root) {
        (None, None) => SslMode::Require,
        (None, Some(_)) => SslMode::VerifyFull,
        (Some("disable"), None) => SslMode::Disable,
        (Some("disable"), Some(_)) => {
            return Err(
                "sslmode=disable with sslrootcert: a CA is given but TLS is turned off; drop one of them"
                    .into(),
            )
        }
        (Some(m @ ("allow" | "prefer")), _) => {
            return Err(format!(
                "sslmode={m} falls back to a connection without TLS (and a cleartext password) when \
                 the server or anyone in the path declines TLS; leave sslmode out (TLS required), \
                 or write sslmode=require, verify-ca or verify-full, or sslmode=disable to go without TLS"
            ))
        }
        (Some("require"), None) => SslMode::Require,
        (Some("require"), Some(_)) => SslMode::VerifyCa, // as libpq
        (Some("verify-ca"), _) => SslMode::VerifyCa,
        (Some("verify-full"), _) => SslMode::VerifyFull,
        (Some(other), _) => {
            return Err(format!(
                "unknown sslmode {other:?} (disable, require, verify-ca or verify-full)"
            ))
        }
    };
    Ok(TlsSettings { mode, roots })
}

fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

type Split = (String, Option<String>, Option<String>);

/// `postgres://…?a=b&sslmode=x`: the query's TLS options removed.
fn split_url(url: &str) -> Result<Split, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        match key.as_str() {
            "sslmode" => mode = Some(decode(v)?),
            "sslrootcert" => root = Some(decode(v)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root))
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "--postgres-url: an option that is not UTF-8 once decoded".into())
}

/// `host=… sslmode=x`: libpq's `key = value` words (values may be single-quoted, with
/// `\'` and `\\`), rewritten without the TLS options.
fn split_words(s: &str) -> Result<Split, String> {
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(format!("--postgres-url: expected '=' after {key:?}"));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return Err("--postgres-url: an unterminated quoted value".into()),
                    Some('\'') => break,
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => return Err("--postgres-url: an unterminated quoted value".into()),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// The rustls configuration for `settings` (not called for [`SslMode::Disable`]).
pub fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let config = match settings.mode {
        SslMode::Disable | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(&settings.roots)?),
                provider,
            )
            .build()
            .map_err(|e| format!("tls: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(&settings.roots)?)
            .with_no_client_auth(),
    };
    Ok(config)
}

fn roots(from: &Roots) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match from {
        Roots::System => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        Roots::File(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert {}: no certificate in the file",
                    path.display()
                ));
            }
        }
    }
    Ok(roots)
}

/// `sslmode=require`: any certificate, but the handshake's signatures are still checked
/// (the session is really encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
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

/// `sslmode=verify-ca`: the chain checked, the host name not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
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
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> Result<SslMode, String> {
        split(url).map(|(_, s)| s.mode)
    }

    #[test]
    fn tls_is_required_unless_disable_is_written_out() {
        assert_eq!(mode("postgres://a:pw@h/db"), Ok(SslMode::Require));
        assert_eq!(
            mode("postgres://a:pw@h/db?connect_timeout=2"),
            Ok(SslMode::Require)
        );
        assert_eq!(mode("host=h user=a password=pw"), Ok(SslMode::Require));
        assert_eq!(
            mode("postgres://h/db?sslmode=disable"),
            Ok(SslMode::Disable)
        );
        assert_eq!(mode("host=h sslmode = disable"), Ok(SslMode::Disable));
        assert_eq!(
            mode("postgres://h/db?sslmode=require"),
            Ok(SslMode::Require)
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-ca"),
            Ok(SslMode::VerifyCa)
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-full"),
            Ok(SslMode::VerifyFull)
        );
    }

    #[test]
    fn a_ca_means_verify_full_and_require_with_a_ca_checks_the_chain() {
        let (_, s) = split("postgres://h/db?sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.roots, Roots::File("/etc/ca.pem".into()));
        let (_, s) = split("host=h sslrootcert='/a b/ca.pem'").unwrap();
        assert_eq!(
            (s.mode, s.roots),
            (SslMode::VerifyFull, Roots::File("/a b/ca.pem".into()))
        );
        let (_, s) = split("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!((s.mode, s.roots), (SslMode::VerifyFull, Roots::System));
        assert_eq!(
            mode("postgres://h/db?sslmode=require&sslrootcert=ca.pem"),
            Ok(SslMode::VerifyCa)
        );
    }

    #[test]
    fn fallback_modes_and_nonsense_are_refused_without_the_url() {
        for m in ["prefer", "allow"] {
            let e = mode(&format!("postgres://a:s3cret@h/db?sslmode={m}")).unwrap_err();
            assert!(
                e.contains("without TLS") && e.contains("sslmode=disable"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = mode("postgres://a:s3cret@h/db?sslmode=verify-me").unwrap_err();
        assert!(
            e.contains("unknown sslmode") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(mode("postgres://h/db?sslmode=disable&sslrootcert=ca.pem").is_err());
        assert!(mode("host=h password='unterminated").is_err());
    }

    #[test]
    fn the_driver_gets_the_url_without_the_tls_options() {
        let (rest, _) =
            split("postgres://a:pw@h:5/db?sslmode=verify-ca&connect_timeout=2&sslrootcert=x")
                .unwrap();
        assert_eq!(rest, "postgres://a:pw@h:5/db?connect_timeout=2");
        let (rest, _) = split("postgres://a:pw@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://a:pw@h/db");
        let (rest, _) = split("host=h sslmode=require dbname=d").unwrap();
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_dbname(), Some("d"));
        let (rest, _) = split(r"host=h password='a\'b c' sslmode=require").unwrap();
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"a'b c"[..]));
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let s = decide(None, Some("/nonexistent/ca.pem")).unwrap();
        let e = client_config(&s).unwrap_err();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    }
}
