//! TLS to databases, on rustls (ring provider): the modes libpq users know, for PostgreSQL
//! sources (the `tokio-postgres` connections and the walsender connection), MySQL/MariaDB
//! sources (through `mysql_async`), and both sinks.
//!
//! | mode          | encrypted | certificate chain checked | host name checked |
//! |---------------|-----------|---------------------------|-------------------|
//! | `disable`     | no        | –                         | –                 |
//! | `require`     | yes       | no                        | no                |
//! | `verify-ca`   | yes       | against `ca_file`         | no                |
//! | `verify-full` | yes       | against `ca_file`         | yes               |
//!
//! Unlike libpq there is no `prefer`: a connection that silently falls back to plain text
//! is not a security setting.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How a connection to PostgreSQL uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

/// `[sources.<name>.tls]`, `[sinks.<name>.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the certificate authorities the server's certificate must chain to
    /// (required by `verify-ca` and `verify-full`; libpq's `sslrootcert`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for `cert` authentication.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The rustls configuration, `None` for `disable`. Errors name the field (relative to
    /// `at`, e.g. `sources.pg_main.tls`) and say what to change.
    pub fn client_config(&self, at: &str) -> Result<Option<Arc<ClientConfig>>, String> {
        let provider = Arc::new(ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            TlsMode::Disable => {
                if self.ca_file.is_some() || self.cert_file.is_some() {
                    return Err(format!(
                        "{at}: files are set but mode = \"disable\"; set mode = \"verify-full\" (or remove the files)"
                    ));
                }
                return Ok(None);
            }
            TlsMode::Require => Arc::new(Lenient {
                chain: None,
                provider: provider.clone(),
            }),
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let Some(ca_file) = &self.ca_file else {
                    return Err(format!(
                        "{at}.ca_file is required with mode = \"{}\": the PEM file of the CA that signed the server's certificate",
                        if self.mode == TlsMode::VerifyCa { "verify-ca" } else { "verify-full" }
                    ));
                };
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca_file, &format!("{at}.ca_file"))? {
                    roots.add(cert).map_err(|e| {
                        format!(
                            "{at}.ca_file: {}: not a usable CA certificate: {e}",
                            ca_file.display()
                        )
                    })?;
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("{at}.ca_file: {}: {e}", ca_file.display()))?;
                if self.mode == TlsMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(Lenient {
                        chain: Some(webpki),
                        provider: provider.clone(),
                    })
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{at}: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_file), Some(key_file)) => {
                let certs = read_certs(cert_file, &format!("{at}.cert_file"))?;
                let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                    format!(
                        "{at}.key_file: cannot read a PEM private key from {}: {e}",
                        key_file.display()
                    )
                })?;
                builder.with_client_auth_cert(certs, key).map_err(|e| {
                    format!("{at}: the client certificate and key do not go together: {e}")
                })?
            }
            _ => {
                return Err(format!(
                    "{at}: cert_file and key_file go together; set both or neither"
                ))
            }
        };
        Ok(Some(Arc::new(config)))
    }
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            format!(
                "{field}: cannot read PEM certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{field}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// `require` (no chain) and `verify-ca` (the chain must verify; the name in the certificate
/// is not compared). The handshake signature is checked either way.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl TlsConfig {
    /// The same modes in `mysql_async`'s terms (rustls underneath), `None` for `disable`.
    pub fn mysql_ssl_opts(&self) -> Option<mysql_async::SslOpts> {
        use mysql_async::{ClientIdentity, SslOpts};
        let with_ca = || {
            SslOpts::default()
                .with_root_certs(self.ca_file.iter().map(|p| p.clone().into()).collect())
                .with_disable_built_in_roots(true)
        };
        let opts = match self.mode {
            TlsMode::Disable => return None,
            TlsMode::Require => SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
            TlsMode::VerifyCa => with_ca().with_danger_skip_domain_validation(true),
            TlsMode::VerifyFull => with_ca(),
        };
        Some(match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => opts.with_client_identity(Some(ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            ))),
            _ => opts,
        })
    }
}

/// A `tokio-postgres` configuration with its TLS setting, cloned into every task that needs
/// its own connection (catalog, snapshot readers).
#[derive(Clone)]
pub struct PgConnector {
    pub config: tokio_postgres::Config,
    pub tls: Option<Arc<ClientConfig>>,
}

/// The task driving a `tokio-postgres` connection; abort it to close the connection.
pub type ConnectionTask = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

impl PgConnector {
    /// Connects (TLS is required when configured) and spawns the connection's task.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, ConnectionTask), tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                Ok((client, tokio::spawn(connection)))
            }
            Some(tls) => {
                let mut config = self.config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = config.connect(MakeRustls(tls.clone())).await?;
                Ok((client, tokio::spawn(connection)))
            }
        }
    }
}

/// The TLS failure inside an error, if it is one (a refused certificate, an unsupported
/// protocol): retrying cannot fix those, unlike a connection cut during the handshake.
pub fn tls_failure<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error's `source` skips the error it wraps; look inside it directly.
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
        }
        current = err.source();
    }
    None
}

/// The server name to verify for a host: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))
}

/// Connects TLS over an established stream (after PostgreSQL's SSLRequest was accepted).
pub async fn handshake<S>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    stream: S,
) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

/// [`MakeTlsConnect`] for `tokio-postgres`.
#[derive(Clone)]
pub struct MakeRustls(pub Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = String;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, String> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: server_name(domain)?,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            handshake(self.config, self.name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// A TLS stream for `tokio-postgres`.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_need_a_ca_file_and_say_so() {
        let config = TlsConfig {
            mode: TlsMode::VerifyFull,
            ..TlsConfig::default()
        };
        let e = config.client_config("sources.pg.tls").unwrap_err();
        assert!(
            e.starts_with("sources.pg.tls.ca_file is required with mode = \"verify-full\""),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_ca_file_names_the_field_and_the_path() {
        let config = TlsConfig {
            mode: TlsMode::VerifyCa,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let e = config.client_config("sources.pg.tls").unwrap_err();
        assert!(
            e.starts_with(
                "sources.pg.tls.ca_file: cannot read PEM certificates from /nonexistent/ca.pem"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let config = TlsConfig {
            mode: TlsMode::VerifyFull,
            ca_file: Some(path),
            ..TlsConfig::default()
        };
        let e = config.client_config("sources.pg.tls").unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let config = TlsConfig {
            mode: TlsMode::Require,
            cert_file: Some("/tmp/c.pem".into()),
            ..TlsConfig::default()
        };
        let e = config.client_config("sources.pg.tls").unwrap_err();
        assert!(e.contains("cert_file and key_file go together"), "{e}");
    }

    #[test]
    fn disable_and_require_need_no_files() {
        assert!(TlsConfig::default().client_config("t").unwrap().is_none());
        let require = TlsConfig {
            mode: TlsMode::Require,
            ..TlsConfig::default()
        };
        assert!(require.client_config("t").unwrap().is_some());
    }
}
