//! Mutual TLS on the agent's listener, over real sockets: a client with a certificate from the
//! configured CA gets answers; no certificate, an expired one, or one from another CA does not;
//! plain HTTP to the TLS port is closed without an answer, and the agent keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sdm_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, name: &str, expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    if expired {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn client_config(ca_pem: &str, client: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(Result::unwrap)
                .collect();
            b.with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// One JSON-RPC call over HTTPS; Err when the TLS session or the exchange fails.
async fn https_call(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio_rustls::TlsConnector::from(cfg);
    let mut s = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"Host.getCapabilities"}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.contains("\"result\"") {
        Ok(text)
    } else {
        Err(format!("no result in {text:?}"))
    }
}

#[tokio::test]
async fn mutual_tls_accepts_only_clients_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca("sdm test CA");
    let other_ca = ca("someone else's CA");
    let (scert, skey) = leaf(&good_ca, "localhost", false);
    let config = format!(
        "create_default_domains = true\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        write(dir.path(), "ca.pem", &good_ca.pem),
        write(dir.path(), "server.pem", &scert),
        write(dir.path(), "server-key.pem", &skey),
    );
    let agent = AgentProc::start(AgentOptions {
        config: Some(config),
        ..Default::default()
    });

    let good = leaf(&good_ca, "engine", false);
    let expired = leaf(&good_ca, "engine-old", true);
    let stranger = leaf(&other_ca, "engine", false);

    let ok = https_call(agent.addr, client_config(&good_ca.pem, Some(&good))).await;
    assert!(ok.is_ok(), "good client refused: {ok:?}");
    for (what, cfg) in [
        ("no client certificate", client_config(&good_ca.pem, None)),
        (
            "expired client certificate",
            client_config(&good_ca.pem, Some(&expired)),
        ),
        (
            "certificate from another CA",
            client_config(&good_ca.pem, Some(&stranger)),
        ),
    ] {
        let r = https_call(agent.addr, cfg).await;
        assert!(r.is_err(), "{what} was accepted: {r:?}");
    }
    // Plain HTTP to the TLS port gets no JSON-RPC answer and the connection is closed.
    let plain = tokio::task::spawn_blocking({
        let addr = agent.addr;
        move || {
            raw_post(
                addr,
                br#"{"jsonrpc":"2.0","id":1,"method":"Host.getCapabilities"}"#,
            )
        }
    })
    .await
    .unwrap();
    assert!(
        !plain.1.contains("result"),
        "plain HTTP was answered: {plain:?}"
    );
    // The agent still serves good clients afterwards.
    assert!(
        https_call(agent.addr, client_config(&good_ca.pem, Some(&good)))
            .await
            .is_ok()
    );
    assert!(agent.log_text().contains("TLS handshake refused"));
}

#[tokio::test]
async fn sdmctl_certs_dev_then_client_and_cli_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("pki");
    let out = std::process::Command::new(bin("sdmctl"))
        .args(["--json", "certs", "dev", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert_success(&out);
    let config = format!(
        "create_default_domains = true\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        certs.join("ca.pem"),
        certs.join("agent.pem"),
        certs.join("agent-key.pem")
    );
    let agent = AgentProc::start(AgentOptions {
        config: Some(config),
        ..Default::default()
    });
    let url = format!("https://127.0.0.1:{}", agent.addr.port());

    // The library: calls over HTTPS and a job followed over WSS.
    let files = sdm_client::tls::TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join("client.pem"),
        key: certs.join("client-key.pem"),
    };
    let opts = sdm_client::ClientOptions {
        tls: Some(Arc::new(sdm_client::tls::client_config(&files).unwrap())),
        ..Default::default()
    };
    let c = sdm_client::AgentClient::with_options(&url, opts).unwrap();
    use sdm_client::{SdmApiClient, Via};
    let caps = c.api().get_capabilities().await.via(&c).unwrap();
    let sd = caps.domains[0].clone();
    let (img, vol) = (uuid(), uuid());
    let format = sdm_proto::VolumeFormat::Raw;
    create_volume(&c, &sd, &img, &vol, 1 << 20, format, None, None).await;
    let job = start_checksum(&c, &sd, &img, &vol).await;
    let done = c.wait_job(&job, |_| {}).await.unwrap();
    assert_eq!(done.status, sdm_proto::JobStatus::Done);

    // The CLI, with and without its certificate.
    let run = |with_cert: bool| {
        let mut cmd = std::process::Command::new(bin("sdmctl"));
        cmd.args(["--agent", &url]);
        if with_cert {
            cmd.arg("--ca")
                .arg(certs.join("ca.pem"))
                .arg("--cert")
                .arg(certs.join("client.pem"))
                .arg("--key")
                .arg(certs.join("client-key.pem"));
        }
        cmd.args(["host", "caps"]).output().unwrap()
    };
    let ok = run(true);
    assert_success(&ok);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("host id"));
    let refused = run(false);
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Making certificates talks to no agent, also when the global options say STOMP (which makes
/// every other command connect first): a fresh host has no agent running yet.
#[test]
fn sdmctl_certs_dev_needs_no_agent_even_over_stomp() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let certs = dir.path().join("pki");
    let out = std::process::Command::new(bin("sdmctl"))
        .args(["--stomp", "--agent", &format!("http://127.0.0.1:{closed}")])
        .args(["certs", "dev", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert_success(&out);
    for f in ["ca.pem", "agent.pem", "client.pem"] {
        assert!(certs.join(f).is_file(), "{f} missing");
    }
}
