//! `sdmctl volume create|info|checksum`, `sdmctl copy` (`SDM.copy_data`) and
//! `sdmctl update-volume` (`SDM.update_volume`).

use sdm_client::Via;
use sdm_proto::{
    Capacity, ChecksumAlgorithm, Description, Flag, Generation, Preallocation, SdmApiClient, Size,
    VolumeAttributes, VolumeFormat, VolumeRef,
};

use crate::cli::{div, size, uuid, uuid_or_new, CopyArgs, UpdateArgs, VolumeCmd};
use crate::ctx::Ctx;
use crate::output::{follow, human_bytes, print};

/// `sdmctl volume ...`.
pub async fn run(ctx: &Ctx, cmd: VolumeCmd) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    match cmd {
        VolumeCmd::Create {
            sd_id,
            img_id,
            vol_id,
            size: size_arg,
            format,
            preallocated,
            parent,
            description,
        } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let vol = uuid_or_new(&vol_id, "volume id")?;
            let cap = size(&size_arg)?;
            anyhow::ensure!(cap > 0, "size must be greater than 0");
            let format: VolumeFormat = format
                .to_ascii_uppercase()
                .parse()
                .map_err(anyhow::Error::msg)?;
            let parent = parent.as_deref().map(|p| uuid(p, "parent")).transpose()?;
            let prealloc = if preallocated {
                Preallocation::Preallocated
            } else {
                Preallocation::Sparse
            };
            let desc = Description::parse(&description).map_err(anyhow::Error::msg)?;
            // The agent answers the id of a job registered as done (VDSM's task id).
            let task = c
                .api()
                .create_volume(
                    sd,
                    img,
                    vol.clone(),
                    Capacity(Size(cap)),
                    format,
                    prealloc,
                    parent,
                    Some(desc),
                )
                .await
                .via(c)?;
            print(
                json,
                &serde_json::json!({"vol_id": vol, "task_id": task}),
                |_| println!("{vol}"),
            )?;
        }
        VolumeCmd::Info {
            sd_id,
            img_id,
            vol_id,
        } => {
            let (sd, img, vol) = (
                uuid(&sd_id, "sd id")?,
                uuid(&img_id, "image id")?,
                uuid(&vol_id, "volume id")?,
            );
            let i = c.api().get_volume_info(sd, img, vol).await.via(c)?;
            print(json, &i, |i| {
                println!("volume:      {}", i.uuid);
                println!("image:       {}", i.image);
                println!("domain:      {}", i.domain);
                println!("format:      {} {} {}", i.format, i.allocation, i.voltype);
                println!(
                    "capacity:    {} ({} bytes)",
                    human_bytes(i.capacity.0),
                    i.capacity
                );
                println!(
                    "size:        {} apparent, {} allocated",
                    human_bytes(i.apparentsize.0),
                    human_bytes(i.truesize.0)
                );
                println!("parent:      {}", i.parent);
                println!("legality:    {} (generation {})", i.legality, i.generation);
                println!("description: {}", i.description);
                let owners = if i.lease.owners.is_empty() {
                    "free".to_string()
                } else {
                    format!("held by host {:?}", i.lease.owners)
                };
                println!(
                    "lease:       {owners} ({}:{})",
                    i.lease.path, i.lease.offset
                );
            })?;
        }
        VolumeCmd::Checksum {
            sd_id,
            img_id,
            vol_id,
            wait,
        } => {
            let (sd, img, vol) = (
                uuid(&sd_id, "sd id")?,
                uuid(&img_id, "image id")?,
                uuid(&vol_id, "volume id")?,
            );
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            c.submit(&job_id, |h| {
                let (j, s, i, v) = (job_id.clone(), sd.clone(), img.clone(), vol.clone());
                async move {
                    h.checksum_volume(j, s, i, v, Some(ChecksumAlgorithm::Sha256))
                        .await
                }
            })
            .await?;
            follow(c, json, &job_id, &wait).await?;
        }
    }
    Ok(())
}

/// `sdmctl copy`.
pub async fn copy(ctx: &Ctx, a: CopyArgs) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    let job_id = uuid_or_new(&a.wait.job_id, "job id")?;
    let src = div(&a.src, None)?;
    let dst = div(&a.dst, a.generation)?;
    let bw = a.bandwidth.as_deref().map(size).transpose()?.map(Size);
    let verify = Some(Flag(a.verify));
    c.submit(&job_id, |h| {
        let (s, d, j) = (src.clone(), dst.clone(), job_id.clone());
        async move { h.copy_data(j, s, d, None, verify, bw, None).await }
    })
    .await?;
    follow(c, json, &job_id, &a.wait).await?;
    Ok(())
}

/// `sdmctl update-volume`.
pub async fn update(ctx: &Ctx, a: UpdateArgs) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    let job_id = uuid_or_new(&a.wait.job_id, "job id")?;
    let e = div(&a.volume, Some(a.generation))?;
    let vol = VolumeRef {
        sd_id: e.sd_id,
        img_id: e.img_id,
        vol_id: e.vol_id,
        generation: e.generation,
    };
    let attrs = VolumeAttributes {
        legality: a
            .legality
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        description: a
            .description
            .as_deref()
            .map(Description::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        generation: a
            .new_generation
            .map(|g| Generation::new(g as u64))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        role: None,
    };
    c.submit(&job_id, |h| {
        let (v, at, j) = (vol.clone(), attrs.clone(), job_id.clone());
        async move { h.update_volume(j, v, at).await }
    })
    .await?;
    follow(c, json, &job_id, &a.wait).await?;
    Ok(())
}
