//! What every command gets from the global options: the agents, the output mode and the TLS
//! settings, passed down as one [`Ctx`] instead of process-wide state.

use std::sync::Arc;

use sdm_client::pool::{HostPool, PoolOptions};
use sdm_client::tls::{client_config, TlsFiles};
use sdm_client::{AgentClient, ClientOptions, LeastLoaded, DEFAULT_AGENT};

use crate::cli::Cli;

/// The global options, resolved.
pub struct Ctx {
    /// Every `--agent` given (the default agent when none is).
    pub agents: Vec<String>,
    /// `--json`.
    pub json: bool,
    /// Mutual TLS, when `--ca`, `--cert` and `--key` are given.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// A client of the first agent (the single-agent commands).
    pub client: AgentClient,
}

impl Ctx {
    /// Resolves the global options; fails on a bad URL or incomplete TLS settings, and, over
    /// STOMP, when the agent cannot be reached.
    pub async fn new(cli: &Cli) -> anyhow::Result<Ctx> {
        let given = if cli.agents.is_empty() {
            vec![DEFAULT_AGENT.to_string()]
        } else {
            cli.agents.clone()
        };
        let tls = tls_from(cli)?;
        let opts = ClientOptions {
            tls: tls.clone(),
            ..Default::default()
        };
        let first = if cli.stomp {
            stomp_url(&given[0])
        } else {
            given[0].clone()
        };
        let client = AgentClient::connect(&first, opts).await?;
        // Pools (commands over several agents) speak HTTP, also to an agent named stomp://.
        let agents = given.iter().map(|a| http_url(a)).collect();
        Ok(Ctx {
            agents,
            json: cli.json,
            tls,
            client,
        })
    }

    /// A pool of every agent (the multi-agent commands).
    pub fn pool(&self) -> anyhow::Result<Arc<HostPool>> {
        let opts = PoolOptions {
            tls: self.tls.clone(),
            ..Default::default()
        };
        Ok(Arc::new(HostPool::with_options(
            &self.agents,
            opts,
            Box::new(LeastLoaded),
        )?))
    }
}

/// The STOMP URL of an agent URL (`http://` → `stomp://`, `https://` → `stomps://`).
fn stomp_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://") {
        format!("stomps://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("stomp://{rest}")
    } else if url.contains("://") {
        url.to_string()
    } else {
        format!("stomp://{url}")
    }
}

/// The HTTP URL of an agent URL (`stomp://` → `http://`, `stomps://` → `https://`).
fn http_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("stomps://") {
        format!("https://{rest}")
    } else if let Some(rest) = url.strip_prefix("stomp://") {
        format!("http://{rest}")
    } else {
        url.to_string()
    }
}

fn tls_from(cli: &Cli) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    match (&cli.ca, &cli.cert, &cli.key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => {
            let files = TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            Ok(Some(Arc::new(client_config(&files)?)))
        }
        _ => anyhow::bail!("mutual TLS needs all of --ca, --cert and --key"),
    }
}
