//! What storage alone says about an image (`Image.getStatus`), asked of any healthy host that
//! sees its domain: the way to learn how far a copy got when the host that ran it is gone.
//! A copy re-issued onto the same ILLEGAL destination resumes from that point by default.

use sdm_proto::{CopyStatus, ImageStatus, SdmApiClient, Uuid};

use crate::client::Via;
use crate::error::Error;
use crate::follow::VolumeId;
use crate::pool::HostPool;

/// `Image.getStatus` of `img` in `sd` from the first healthy host that answers.
pub async fn image_status(pool: &HostPool, sd: &Uuid, img: &Uuid) -> Result<ImageStatus, Error> {
    let mut last = None;
    for c in pool.up_seeing_probe(sd) {
        match c
            .api()
            .get_image_status(sd.clone(), img.clone())
            .await
            .via(&c)
        {
            Ok(st) => return Ok(st),
            Err(e @ Error::Api(_)) => return Err(e),
            Err(e) => {
                pool.mark_down(c.url(), &e.to_string());
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NoHost(format!("domain {sd}"))))
}

/// The progress a copy into `dst` left on storage (its checkpoint), if any host can tell.
pub async fn copy_progress(pool: &HostPool, dst: &VolumeId) -> Option<CopyStatus> {
    let st = image_status(pool, &dst.sd_id, &dst.img_id).await.ok()?;
    st.volumes
        .into_iter()
        .find(|v| v.vol_id == dst.vol_id)
        .and_then(|v| v.copy)
}
