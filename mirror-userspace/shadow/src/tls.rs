//! TLS to shadows (`https://`), with rustls: SNI from the shadow's URL, certificates verified
//! against the system's roots or a CA file, an explicit switch to skip verification, and an
//! optional client certificate (mTLS). Handshake and alert failures are told apart so they
//! are counted by reason.
use std::{fmt, io, path::PathBuf, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::DropReason;

/// How copies to an `https://` shadow are protected, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate: no verification at all (a test shadow with a throwaway
    /// certificate). Never the default.
    pub insecure: bool,
    /// PEM files of a client certificate chain and its private key, for shadows that require
    /// one (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// What is wrong with TLS options; `field` names the option.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsSetupError {
    pub field: &'static str,
    pub message: String,
}

fn setup_error(field: &'static str, message: impl fmt::Display) -> TlsSetupError {
    TlsSetupError { field, message: message.to_string() }
}

impl TlsOptions {
    /// The rustls configuration: every file read and checked now, so a bad option is an
    /// error before anything runs.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup_error("tls", e))?;
        let builder = if self.insecure {
            let verifier = Arc::new(AnyCertificate(provider));
            builder.dangerous().with_custom_certificate_verifier(verifier)
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        let config = match &self.client_cert {
            Some((cert, key)) => {
                let chain = certificates("clientCert", cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| setup_error("clientKey", format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| setup_error("clientKey", e))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<RootCertStore, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in certificates("caFile", path)? {
                    roots.add(cert).map_err(|e| setup_error("caFile", e))?;
                }
            }
            None => {
                // Unreadable entries of the system store are skipped, as other clients do.
                let system = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(system.certs);
                if roots.is_empty() {
                    return Err(setup_error("caFile", "no system CA certificates found"));
                }
            }
        }
        Ok(roots)
    }
}

fn certificates(
    field: &'static str,
    path: &PathBuf,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let read = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| setup_error(field, format!("{}: {e}", path.display())))?;
    if read.is_empty() {
        return Err(setup_error(field, format!("{}: no certificate", path.display())));
    }
    Ok(read)
}

/// The name the shadow's certificate must carry: the URL's host (a DNS name or an address).
pub(crate) fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("TLS name {host}: {e}")))
}

/// Why a TLS connection failed, from the I/O error the handshake or a read returned; None
/// if it was no TLS error.
pub(crate) fn failure_reason(error: &io::Error) -> Option<DropReason> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                DropReason::TlsUntrusted
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => DropReason::TlsExpired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                DropReason::TlsNameMismatch
            }
            _ => DropReason::TlsUntrusted,
        },
        _ => DropReason::TlsError,
    })
}

/// `insecure`: accepts any certificate, still checking that the handshake is signed by the
/// key it presents (rustls requires the signature checks of any verifier).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
