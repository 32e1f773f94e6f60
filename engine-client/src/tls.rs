//! Client side of mutual TLS: trust the agents' CA, present our certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM files of a TLS client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that signed the agents' certificates.
    pub ca: PathBuf,
    /// This client's certificate chain.
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
}

/// Why the TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot load {what} from {path}: {why}")]
pub struct TlsError {
    what: &'static str,
    path: PathBuf,
    why: String,
}

fn err(what: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError {
        what,
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// A rustls client configuration that trusts `files.ca` and presents `files.cert`.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&files.ca)
        .map_err(|e| err("CA certificates", &files.ca, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("CA certificates", &files.ca, e))?;
    if cas.is_empty() {
        return Err(err(
            "CA certificates",
            &files.ca,
            "no PEM certificate in the file",
        ));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| err("CA certificates", &files.ca, e))?;
    }
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err("certificate", &files.cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("certificate", &files.cert, e))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err("private key", &files.key, e))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS versions", &files.ca, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err("certificate and key", &files.cert, e))
}
