//! An engine in sixty lines: move a two-volume disk between domains over every agent given.
//!
//! ```sh
//! cargo run -p sdm-agent &                                  # an agent on its embedded default
//! cargo run -p sdm-client --example move_disk               # or: -- http://host1:54321 http://host2:54321
//! ```
//!
//! It creates a small disk (a RAW base and a COW layer) on the first domain of the first agent,
//! moves it to the second domain, and prints what happened. Run it twice with an agent killed
//! in between to see `resume` at work. `SDM_JOURNAL=postgres://…` keeps the journal in a
//! database shared with other engines instead of a local file.

use std::sync::Arc;

use sdm_client::{Disks, Event, HostPool, Journal, JournalOptions, MovePolicy, SdmApiClient, Via};
use sdm_proto::{Capacity, Preallocation, Size, Uuid, VolumeFormat};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls: Vec<String> = std::env::args().skip(1).collect();
    if urls.is_empty() {
        urls.push(sdm_client::DEFAULT_AGENT.into());
    }

    // 1. The hosts, and the journal that makes operations survive an engine crash.
    let pool = Arc::new(HostPool::new(&urls)?);
    let journal_url = std::env::var("SDM_JOURNAL").unwrap_or_else(|_| {
        let path = std::env::temp_dir().join("sdm-example.journal");
        format!("file:{}", path.display())
    });
    let journal = Arc::new(Journal::open_url(&journal_url, &JournalOptions::default()).await?);
    let disks = Disks::new(pool.clone(), journal);

    // 2. An engine starts by finishing what its previous run left unfinished.
    let print = |e: &Event| println!("{}", serde_json::to_string(e).unwrap_or_default());
    for r in disks.resume(&print).await? {
        println!("resumed {} of {}: {}", r.kind, r.image, r.outcome);
    }

    // 3. A disk to move: a 64 MiB RAW base with a COW layer on top.
    let c = sdm_client::AgentClient::new(&urls[0])?;
    let mut domains = c.api().list_domains().await.via(&c)?;
    domains.sort_by(|a, b| a.description.cmp(&b.description));
    let [src, dst] = [&domains[0].sd_id, &domains[1].sd_id];
    let (img, base, top) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let cap = Capacity(Size(64 << 20));
    c.api()
        .create_volume(
            src.clone(),
            img.clone(),
            base.clone(),
            cap,
            VolumeFormat::Raw,
            Preallocation::Sparse,
            None,
            None,
        )
        .await
        .via(&c)?;
    c.api()
        .create_volume(
            src.clone(),
            img.clone(),
            top,
            cap,
            VolumeFormat::Cow,
            Preallocation::Sparse,
            Some(base),
            None,
        )
        .await
        .via(&c)?;

    // 4. Move it: clone, copy (spread over the hosts), verify, commit, delete the source.
    let policy = MovePolicy {
        verify: true,
        wipe: true,
        ..Default::default()
    };
    let report = disks.move_disk(&img, src, dst, policy, &print).await?;

    // 5. The report says how it ended; `into_result` turns anything but a commit into an error.
    println!("{}", serde_json::to_string_pretty(&report)?);
    report.into_result()?;
    Ok(())
}
