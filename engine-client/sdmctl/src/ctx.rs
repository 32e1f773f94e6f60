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
    /// Resolves the global options; fails on a bad URL or incomplete TLS settings.
    pub fn new(cli: &Cli) -> anyhow::Result<Ctx> {
        let agents = if cli.agents.is_empty() {
            vec![DEFAULT_AGENT.to_string()]
        } else {
            cli.agents.clone()
        };
        let tls = tls_from(cli)?;
        let opts = ClientOptions {
            tls: tls.clone(),
            ..Default::default()
        };
        let client = AgentClient::with_options(&agents[0], opts)?;
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
