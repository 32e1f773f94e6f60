//! Mutual TLS for the agent's listener (rustls, ring provider).
//!
//! Every client must present a certificate signed by the configured CA; the agent presents its
//! own chain. There is no TLS without client certificates: an agent that writes VM disks as
//! root must not accept anonymous callers on a network. (A loopback listener may be plain.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load {what} from {path}: {why}")]
    Load {
        /// "CA certificates", "certificate chain", "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration refused")]
    Config(#[source] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier refused the CA")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::Load {
        what,
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The provider every TLS object of the agent uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration requiring client certificates signed by `cfg.ca`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(&cfg.ca, "CA certificates")? {
        roots.add(c).map_err(TlsError::Config)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(TlsError::Verifier)?;
    let chain = load_certs(&cfg.cert, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| TlsError::Load {
        what: "private key",
        path: cfg.key.clone(),
        why: e.to_string(),
    })?;
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let cfg = TlsConfig {
            ca: empty.clone(),
            cert: empty.clone(),
            key: empty.clone(),
        };
        let e = server_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("CA certificates") && e.contains("empty.pem"),
            "{e}"
        );
        let cfg = TlsConfig {
            ca: dir.path().join("nope.pem"),
            cert: empty.clone(),
            key: empty,
        };
        assert!(server_config(&cfg)
            .unwrap_err()
            .to_string()
            .contains("nope.pem"));
    }

    #[test]
    fn a_generated_ca_and_server_cert_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let w = |n: &str, s: String| {
            let p = dir.path().join(n);
            std::fs::write(&p, s).unwrap();
            p
        };
        let cfg = TlsConfig {
            ca: w("ca.pem", ca.pem()),
            cert: w("cert.pem", cert.pem()),
            key: w("key.pem", key.serialize_pem()),
        };
        server_config(&cfg).unwrap();
    }
}
