//! `sdmctl certs dev`: a development CA with agent and client certificates, for trying mutual
//! TLS and for tests. Not for production: keys are written unencrypted and live for a year.
//! Only the command line makes certificates; the library only loads them (`sdm_client::tls`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::cli::CertsCmd;
use crate::output::print;

/// What `dev_certs` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevCerts {
    /// CA certificate (give it to agents as `[tls] ca` and to clients as `--ca`).
    pub ca: PathBuf,
    /// Agent certificate and key (`[tls] cert`, `[tls] key`).
    pub agent_cert: PathBuf,
    /// Agent key.
    pub agent_key: PathBuf,
    /// Client certificate and key (`sdmctl --cert --key`).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused.
    #[error("certificate generation failed")]
    Gen(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<PathBuf, CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&p)
        .map_err(|e| CertsError::Write(p.clone(), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| CertsError::Write(p.clone(), e))?;
    Ok(p)
}

/// Writes a CA, an agent certificate for `hosts` (DNS names or IP addresses) and a client
/// certificate named `client` into `dir`.
pub fn dev_certs(dir: &Path, hosts: &[String], client: &str) -> Result<DevCerts, CertsError> {
    std::fs::create_dir_all(dir).map_err(|e| CertsError::Write(dir.to_path_buf(), e))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sdm development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let agent_key = KeyPair::generate()?;
    let mut ap = CertificateParams::new(hosts.to_vec())?;
    ap.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("sdm-agent"),
    );
    ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let agent_cert = ap.signed_by(&agent_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut cp = CertificateParams::new(Vec::<String>::new())?;
    cp.distinguished_name.push(DnType::CommonName, client);
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &issuer)?;

    Ok(DevCerts {
        ca: write(dir, "ca.pem", &ca_cert.pem(), false)?,
        agent_cert: write(dir, "agent.pem", &agent_cert.pem(), false)?,
        agent_key: write(dir, "agent-key.pem", &agent_key.serialize_pem(), true)?,
        client_cert: write(dir, "client.pem", &client_cert.pem(), false)?,
        client_key: write(dir, "client-key.pem", &client_key.serialize_pem(), true)?,
    })
}

/// `sdmctl certs ...`.
pub fn run(json: bool, cmd: &CertsCmd) -> anyhow::Result<()> {
    let CertsCmd::Dev { dir, hosts, client } = cmd;
    let made = dev_certs(dir, hosts, client)?;
    print(json, &made, |m| {
        println!("CA:     {}", m.ca.display());
        println!(
            "agent:  {} {}",
            m.agent_cert.display(),
            m.agent_key.display()
        );
        println!(
            "client: {} {}",
            m.client_cert.display(),
            m.client_key.display()
        );
        println!(
            "agent.toml:\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}",
            m.ca, m.agent_cert, m.agent_key
        );
        println!(
            "sdmctl --ca {} --cert {} --key {} --agent https://HOST:54321 ...",
            m.ca.display(),
            m.client_cert.display(),
            m.client_key.display()
        );
    })
}
