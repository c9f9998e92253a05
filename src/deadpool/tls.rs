//! TLS for tokio-postgres with rustls (aws-lc-rs), following libpq's `sslmode`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

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

/// The connector and tokio-postgres's mode for `sslmode` (default `prefer`, as libpq) and
/// `sslrootcert`: `disable` never uses TLS; `prefer` and `require` encrypt without checking
/// the certificate (as libpq; the caller turns `require` with a CA file into `verify-ca`,
/// see `Config::effective_ssl_mode`); `verify-ca` checks that a CA of `sslrootcert` (or the
/// Mozilla roots) signed it; `verify-full` also checks that it names the host.
pub(crate) fn connector(
    ssl_mode: Option<&str>,
    root_cert: Option<&str>,
) -> Result<(MakeRustlsConnect, SslMode)> {
    let provider = Arc::new(crypto_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::config("sslmode", "TLS cannot be set up").with_source(err))?;
    let mode = ssl_mode.unwrap_or("prefer");
    let (config, mode) = match mode {
        "disable" => (no_verification(builder, provider), SslMode::Disable),
        "allow" | "prefer" => (no_verification(builder, provider), SslMode::Prefer),
        "require" => (no_verification(builder, provider), SslMode::Require),
        _ => {
            let mut roots = RootCertStore::empty();
            match root_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|err| {
                        Error::config("sslrootcert", format!("cannot read `{path}`"))
                            .with_source(err)
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
            let config = if mode == "verify-ca" {
                let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|err| {
                        Error::config("sslrootcert", "no usable CA certificate").with_source(err)
                    })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                    .with_no_client_auth()
            } else {
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            (config, SslMode::Require)
        }
    };
    Ok((MakeRustlsConnect::new(config), mode))
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
    use std::net::{IpAddr, Ipv4Addr};

    use super::connector;
    use crate::testing::LocalCluster;

    /// Logs in to instance-1 with `sslmode` as `host` (the name the certificate is checked
    /// against) while connecting to loopback; returns whether the session is encrypted.
    async fn login(
        cluster: &LocalCluster,
        ssl_mode: &str,
        root_cert: Option<&str>,
        host: &str,
    ) -> Result<bool, String> {
        let (tls, mode) = connector(Some(ssl_mode), root_cert).map_err(|e| e.to_string())?;
        let addr = cluster.direct_addr("instance-1").expect("instance");
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .port(addr.port())
            .user(cluster.user())
            .password(cluster.password())
            .dbname(cluster.database())
            .ssl_mode(mode);
        let (client, connection) = config.connect(tls).await.map_err(|e| format!("{e:?}"))?;
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
    async fn verify_ca_checks_the_chain_and_verify_full_also_the_name() {
        let cluster = LocalCluster::builder()
            .instances(1)
            .tls(true)
            .start()
            .await
            .expect("cluster");
        let ca = cluster.ca_cert_path().expect("CA").display().to_string();
        let ca = Some(ca.as_str());
        // The certificate names localhost and 127.0.0.1, not db.example.test.
        assert_eq!(
            login(&cluster, "verify-full", ca, "localhost").await,
            Ok(true)
        );
        let err = login(&cluster, "verify-full", ca, "db.example.test")
            .await
            .expect_err("verify-full checks the name");
        assert!(err.contains("NotValidForName"), "{err}");
        assert_eq!(
            login(&cluster, "verify-ca", ca, "db.example.test").await,
            Ok(true),
            "verify-ca does not check the name"
        );
        // The chain still counts: the cluster's CA is not among the Mozilla roots.
        let err = login(&cluster, "verify-ca", None, "localhost")
            .await
            .expect_err("verify-ca checks the chain");
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert_eq!(
            login(&cluster, "require", None, "db.example.test").await,
            Ok(true),
            "require encrypts without checking"
        );
    }
}
