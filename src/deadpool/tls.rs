//! TLS for tokio-postgres with rustls (aws-lc-rs), following libpq's `sslmode`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// The connector and tokio-postgres's mode for `sslmode` (default `prefer`, as libpq) and
/// `sslrootcert`: `disable` never uses TLS; `prefer` and `require` encrypt without checking
/// the certificate (as libpq); `verify-ca` and `verify-full` check it against `sslrootcert`
/// (or the Mozilla roots) and the host name.
pub(crate) fn connector(
    ssl_mode: Option<&str>,
    root_cert: Option<&str>,
) -> Result<(MakeRustlsConnect, SslMode)> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::config("sslmode", "TLS cannot be set up").with_source(err))?;
    let (config, mode) = match ssl_mode.unwrap_or("prefer") {
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
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                SslMode::Require,
            )
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
