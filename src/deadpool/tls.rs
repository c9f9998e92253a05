//! TLS for tokio-postgres with rustls (aws-lc-rs), following libpq's `sslmode`.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Config, SslMode};
use crate::endpoint::HostPort;
use crate::error::{Error, Result};

/// The rustls crypto provider the `tls-rustls-*` feature chose (aws-lc-rs when both are on).
#[cfg(feature = "tls-rustls-aws-lc-rs")]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The rustls crypto provider the `tls-rustls-*` feature chose.
#[cfg(all(feature = "tls-rustls-ring", not(feature = "tls-rustls-aws-lc-rs")))]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(not(any(feature = "tls-rustls-aws-lc-rs", feature = "tls-rustls-ring")))]
compile_error!(
    "the `deadpool` feature uses rustls: enable `tls-rustls-aws-lc-rs` (a default feature) or `tls-rustls-ring`"
);

/// How the deadpool flavour opens TLS: the rustls connector, the mode tokio-postgres
/// starts with, and libpq's `allow` and `hostaddr` rules, which tokio-postgres lacks.
#[derive(Clone)]
pub(crate) struct Tls {
    connect: MakeRustlsConnect,
    mode: DriverMode,
    /// `allow`: a plain login first, and TLS when the server refuses it.
    plain_first: bool,
    /// `hostaddr`: connections to that address check the certificate against the URL's
    /// host, as libpq does.
    hostaddr: Option<HostAddr>,
}

/// libpq's `hostaddr`: the address connected to, and the URL's host it stands for.
#[derive(Clone)]
struct HostAddr {
    ip: IpAddr,
    /// `ip` as the pool's addresses spell it.
    address: String,
    host: String,
}

impl Tls {
    /// The connector for `mode` with `sslrootcert`'s CAs (or the Mozilla roots): `disable`
    /// never uses TLS; `allow` logs in plain first and with TLS when the server refuses
    /// that; `prefer` and `require` encrypt without checking the certificate (libpq; the
    /// caller turns `require` with a CA file into `verify-ca`, see
    /// `Config::effective_ssl_mode`); `verify-ca` checks that a trusted CA signed it;
    /// `verify-full` also checks that it names the host.
    pub(crate) fn new(config: &Config) -> Result<Tls> {
        let hostaddr = config
            .hostaddr
            .as_deref()
            .and_then(|address| address.parse().ok())
            .map(|ip| (ip, config.host.clone()));
        Tls::with(
            config.effective_ssl_mode(),
            config.ssl_root_cert().as_deref(),
            hostaddr,
        )
    }

    /// [`Tls::new`] from its parts: `hostaddr` is the address and the host name it stands
    /// for.
    fn with(
        mode: SslMode,
        root_cert: Option<&str>,
        hostaddr: Option<(IpAddr, String)>,
    ) -> Result<Tls> {
        let provider = Arc::new(crypto_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::config("sslmode", "TLS cannot be set up").with_source(err))?;
        let (client, driver_mode) = match mode {
            SslMode::Disable => (no_verification(builder, provider), DriverMode::Disable),
            SslMode::Allow => (no_verification(builder, provider), DriverMode::Disable),
            SslMode::Prefer => (no_verification(builder, provider), DriverMode::Prefer),
            SslMode::Require => (no_verification(builder, provider), DriverMode::Require),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = trusted_roots(root_cert)?;
                let client = if mode == SslMode::VerifyCa {
                    let chain =
                        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                            .build()
                            .map_err(|err| {
                                Error::config("sslrootcert", "no usable CA certificate")
                                    .with_source(err)
                            })?;
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                        .with_no_client_auth()
                } else {
                    builder.with_root_certificates(roots).with_no_client_auth()
                };
                (client, DriverMode::Require)
            }
        };
        Ok(Tls {
            connect: MakeRustlsConnect::new(client),
            mode: driver_mode,
            plain_first: mode == SslMode::Allow,
            hostaddr: hostaddr.map(|(ip, host)| HostAddr {
                ip,
                address: ip.to_string(),
                host,
            }),
        })
    }

    /// Points `config` at `address` with this TLS mode. The URL's `hostaddr` connects to
    /// its address and names the URL's host to TLS (SNI and `verify-full`'s check).
    pub(crate) fn point(&self, config: &mut tokio_postgres::Config, address: &HostPort) {
        config.port(address.port).ssl_mode(self.mode);
        match &self.hostaddr {
            Some(hostaddr) if hostaddr.address == address.host => {
                config.host(&hostaddr.host).hostaddr(hostaddr.ip);
            }
            _ => {
                config.host(&address.host);
            }
        }
    }

    /// Opens a connection with `config` (pointed by [`Tls::point`]): under `allow`, a login
    /// the server refused in plain is tried once more over TLS.
    pub(crate) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::result::Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
        ),
        tokio_postgres::Error,
    > {
        match config.connect(self.connect.clone()).await {
            Err(err)
                if self.plain_first
                    && err
                        .code()
                        .is_some_and(|code| SslMode::login_refusal_may_need_tls(code.code())) =>
            {
                let mut config = config.clone();
                config.ssl_mode(DriverMode::Require);
                config.connect(self.connect.clone()).await
            }
            other => other,
        }
    }
}

/// The stream of a connection this flavour opens.
pub(crate) type TlsStream = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// The CAs `verify-ca` and `verify-full` trust: those of `sslrootcert`, else the Mozilla
/// roots (which do not hold the RDS CAs).
fn trusted_roots(root_cert: Option<&str>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|err| {
                Error::config("sslrootcert", format!("cannot read `{path}`")).with_source(err)
            })?;
            for cert in rustls_pemfile_certs(&pem, path)? {
                roots.add(cert).map_err(|err| {
                    Error::config(
                        "sslrootcert",
                        format!("`{path}` holds an invalid certificate"),
                    )
                    .with_source(err)
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// Why the handshake refused the server's certificate, when that is what `err` (or an
/// error below it) says.
pub(crate) fn certificate_refusal(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(err);
    while let Some(inner) = cause {
        let rustls = inner.downcast_ref::<rustls::Error>().or_else(|| {
            inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(reason)) = rustls {
            return Some(reason.to_string());
        }
        cause = inner.source();
    }
    None
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|err| {
            Error::config(
                "sslrootcert",
                format!("`{path}` is not a PEM certificate file"),
            )
            .with_source(err)
        })?;
    if certs.is_empty() {
        return Err(Error::config(
            "sslrootcert",
            format!("`{path}` holds no certificate"),
        ));
    }
    Ok(certs)
}

fn no_verification(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> ClientConfig {
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth()
}

/// libpq's `require`: encryption without authentication of the server.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

/// libpq's `verify-ca`: the chain must lead to a trusted CA, whatever host the certificate
/// names. The WebPKI verifier checks the name only after the chain, so a name mismatch is
/// the one error that is left out.
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

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::Tls;
    use crate::config::SslMode;
    use crate::endpoint::HostPort;
    use crate::testing::LocalCluster;

    /// Logs in to instance-1 with `mode`, through `hostaddr` 127.0.0.1 standing for `host`
    /// (the name the certificate is checked against); returns whether the session is
    /// encrypted.
    async fn login(
        cluster: &LocalCluster,
        mode: SslMode,
        root_cert: Option<&str>,
        host: &str,
    ) -> Result<bool, String> {
        let tls = Tls::with(mode, root_cert, Some(([127, 0, 0, 1].into(), host.into())))
            .map_err(|e| e.to_string())?;
        let addr = cluster.direct_addr("instance-1").expect("instance");
        let mut config = tokio_postgres::Config::new();
        config
            .user(cluster.user())
            .password(cluster.password())
            .dbname(cluster.database());
        let address = HostPort {
            host: "127.0.0.1".into(),
            port: addr.port(),
        };
        tls.point(&mut config, &address);
        let (client, connection) = tls.connect(&config).await.map_err(|e| format!("{e:?}"))?;
        let task = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        drop(client);
        let _ = task.await;
        Ok(row.get(0))
    }

    #[tokio::test]
    async fn verify_ca_checks_the_chain_and_verify_full_also_the_name_hostaddr_stands_for() {
        let cluster = LocalCluster::builder()
            .instances(1)
            .tls(true)
            .start()
            .await
            .expect("cluster");
        let ca = cluster.ca_cert_path().expect("CA").display().to_string();
        let ca = Some(ca.as_str());
        // The certificate names localhost and 127.0.0.1, not db.example.test: with
        // hostaddr, the name checked is the host's, not the address's (libpq).
        assert_eq!(
            login(&cluster, SslMode::VerifyFull, ca, "localhost").await,
            Ok(true)
        );
        let err = login(&cluster, SslMode::VerifyFull, ca, "db.example.test")
            .await
            .expect_err("verify-full checks the host name, not the address");
        assert!(err.contains("NotValidForName"), "{err}");
        assert_eq!(
            login(&cluster, SslMode::VerifyCa, ca, "db.example.test").await,
            Ok(true),
            "verify-ca does not check the name"
        );
        // The chain still counts: the cluster's CA is not among the Mozilla roots.
        let err = login(&cluster, SslMode::VerifyCa, None, "localhost")
            .await
            .expect_err("verify-ca checks the chain");
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert_eq!(
            login(&cluster, SslMode::Require, None, "db.example.test").await,
            Ok(true),
            "require encrypts without checking"
        );
    }
}
