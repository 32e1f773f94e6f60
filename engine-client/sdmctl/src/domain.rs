//! `sdmctl domain list|create|attach|detach|images|check|fix`.

use anyhow::Context;
use sdm_client::Via;
use sdm_proto::{Description, Fix, FixType, Flag, LeaseBackendName, SdmApiClient};

use crate::cli::{uuid, uuid_or_new, DomainCmd};
use crate::ctx::Ctx;
use crate::output::{follow, human_bytes, print};

/// `sdmctl domain ...`.
pub async fn run(ctx: &Ctx, cmd: DomainCmd) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    match cmd {
        DomainCmd::List => {
            let list = c.api().list_domains().await.via(c)?;
            print(json, &list, |l| {
                println!(
                    "{:<36}  {:<8}  {:>10}  {:>10}  PATH",
                    "SD_ID", "LEASES", "SIZE", "FREE"
                );
                for d in l {
                    println!(
                        "{:<36}  {:<8}  {:>10}  {:>10}  {}",
                        d.sd_id,
                        d.lease_backend,
                        human_bytes(d.capacity.0),
                        human_bytes(d.free.0),
                        d.path
                    );
                }
            })?;
        }
        DomainCmd::Create {
            path,
            sd_id,
            description,
            lease_backend,
            force,
        } => {
            let sd = uuid_or_new(&sd_id, "sd id")?;
            let desc = Description::parse(&description).map_err(anyhow::Error::msg)?;
            c.api()
                .create_domain(
                    sd.clone(),
                    path.clone(),
                    Some(desc),
                    backend(lease_backend)?,
                    force.then_some(Flag(true)),
                )
                .await
                .via(c)?;
            print(json, &serde_json::json!({"sd_id": sd}), |_| {
                println!("{sd}")
            })?;
        }
        DomainCmd::Attach {
            path,
            lease_backend,
            force,
        } => {
            let r = c
                .api()
                .attach_domain(path, backend(lease_backend)?, force.then_some(Flag(true)))
                .await
                .via(c)?;
            print(json, &r, |r| println!("{}", r.sd_id))?;
        }
        DomainCmd::Detach { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            c.api().detach_domain(sd).await.via(c)?;
            print(json, &true, |_| println!("detached"))?;
        }
        DomainCmd::Images { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            let l = c.api().get_images(sd).await.via(c)?;
            print(json, &l, |l| l.iter().for_each(|i| println!("{i}")))?;
        }
        DomainCmd::Info { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            let i = c.api().get_domain_info(sd).await.via(c)?;
            print(json, &i, |i| {
                println!("uuid:       {}", i.uuid);
                println!("name:       {}", i.name);
                println!("type:       {} ({})", i.storage_type, i.kind);
                println!("class/role: {}/{}", i.class, i.role);
                println!("version:    {}", i.version);
                println!("block size: {} (alignment {})", i.block_size, i.alignment);
                if let Some(p) = &i.remote_path {
                    println!("path:       {p}");
                }
                if let Some(v) = &i.vguuid {
                    println!("vg uuid:    {v}");
                }
            })?;
        }
        DomainCmd::Check { sd_id } => {
            let sd = uuid(&sd_id, "sd id")?;
            let l = c.api().check_domain(sd).await.via(c)?;
            print(json, &l, |l| {
                if l.is_empty() {
                    println!("nothing to fix");
                }
                for f in l {
                    println!(
                        "[{}] {}\n    fix: sdmctl domain fix {sd_id} '{}'",
                        f.fix_type,
                        f.description,
                        f.data_json()
                    );
                }
            })?;
        }
        DomainCmd::Fix { sd_id, fix, wait } => {
            let sd = uuid(&sd_id, "sd id")?;
            let f: Fix = serde_json::from_str(&fix)
                .or_else(|_| {
                    // Accept the bare `data` object that `domain check` prints.
                    serde_json::from_str::<serde_json::Value>(&fix).map(|data| Fix {
                        fix_type: FixType::Clean,
                        description: String::new(),
                        data,
                    })
                })
                .context("fix must be JSON")?;
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            let r = c.api().fix_domain(sd, f, Some(job_id)).await.via(c)?;
            follow(c, json, &r.uuid, &wait).await?;
        }
    }
    Ok(())
}

trait FixJson {
    fn data_json(&self) -> String;
}

impl FixJson for Fix {
    fn data_json(&self) -> String {
        serde_json::to_string(&self.data).unwrap_or_default()
    }
}

/// `--lease-backend local|sanlock`.
fn backend(name: Option<String>) -> anyhow::Result<Option<LeaseBackendName>> {
    name.map(|n| n.parse().map_err(anyhow::Error::msg))
        .transpose()
}
