//! `sdmctl image volumes|status|move|delete` (one agent's `Image.*` verbs; `sdmctl disk` moves
//! disks over every agent).

use sdm_client::Via;
use sdm_proto::{Flag, ImageOperation, ImageStatus, SdmApiClient};

use crate::cli::{uuid, uuid_or_new, ImageCmd};
use crate::ctx::Ctx;
use crate::output::{follow, print, short};

/// `sdmctl image ...`.
pub async fn run(ctx: &Ctx, cmd: ImageCmd) -> anyhow::Result<()> {
    let (c, json) = (&ctx.client, ctx.json);
    match cmd {
        ImageCmd::Volumes { sd_id, img_id } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let l = c.api().get_volumes(sd, img).await.via(c)?;
            print(json, &l, |l| l.iter().for_each(|v| println!("{v}")))?;
        }
        ImageCmd::Status { sd_id, img_id } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let st = c.api().get_image_status(sd, img).await.via(c)?;
            print(json, &st, print_status)?;
        }
        ImageCmd::Move {
            img_id,
            from,
            to,
            force,
            post_zero,
            wait,
        } => {
            let (img, src, dst) = (
                uuid(&img_id, "image id")?,
                uuid(&from, "source sd")?,
                uuid(&to, "destination sd")?,
            );
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            let r = c
                .api()
                .move_image(
                    img,
                    src,
                    dst,
                    ImageOperation::Copy,
                    Some(Flag(post_zero)),
                    Some(Flag(force)),
                    None,
                    Some(job_id),
                )
                .await
                .via(c)?;
            follow(c, json, &r, &wait).await?;
        }
        ImageCmd::Delete {
            sd_id,
            img_id,
            wipe,
            discard,
            wait,
        } => {
            let (sd, img) = (uuid(&sd_id, "sd id")?, uuid(&img_id, "image id")?);
            let job_id = uuid_or_new(&wait.job_id, "job id")?;
            let r = c
                .api()
                .delete_image(
                    img,
                    sd,
                    Some(Flag(wipe)),
                    None,
                    Some(Flag(discard)),
                    Some(job_id),
                )
                .await
                .via(c)?;
            follow(c, json, &r, &wait).await?;
        }
    }
    Ok(())
}

/// One line per volume; a copy's progress after it.
fn print_status(st: &ImageStatus) {
    for v in &st.volumes {
        let legality = v.legality.to_string();
        let mut line = format!("{}  {legality:<7} gen {:<3}", v.vol_id, v.generation);
        if let Some(c) = &v.copy {
            line.push_str(&format!(
                "  copy {}% ({}/{}) by host {} job {} stage {}/{} {}s ago{}",
                c.percent,
                c.bytes_durable,
                c.bytes_total,
                c.host_id,
                short(&c.job_id),
                c.stage,
                c.stages,
                c.age_s,
                if c.resumable { ", resumable" } else { "" }
            ));
            if let Some(e) = &c.last_error {
                line.push_str(&format!("; last error: {e}"));
            }
        }
        if let Some(e) = &v.checkpoint_error {
            line.push_str(&format!("  unusable checkpoint: {e}"));
        }
        println!("{line}");
    }
}
