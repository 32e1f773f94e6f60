//! Volume set-up through the typed client, shared by the test files: create, look up, copy,
//! checksum and update. Each helper panics when the agent refuses, since the step is set-up and
//! not what the test checks; tests that expect a refusal call the verb themselves.

use std::path::{Path, PathBuf};

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{
    Capacity, Description, Endpoint, Generation, JobInfo, Legality, Preallocation, Size, Uuid,
    VolumeAttributes, VolumeFormat, VolumeInfo, VolumeRef,
};

use crate::{uuid, wait_job};

/// A volume by its ids, with the path of its data file.
#[derive(Clone, Debug)]
pub struct Vol {
    /// Domain.
    pub sd: Uuid,
    /// Image.
    pub img: Uuid,
    /// Volume.
    pub vol: Uuid,
    /// The data file.
    pub path: PathBuf,
}

impl Vol {
    /// This volume as a copy endpoint (`generation`: what a destination is expected to be at).
    pub fn ep(&self, generation: Option<u16>) -> Endpoint {
        endpoint(&self.sd, &self.img, &self.vol, generation)
    }

    /// This volume as `SDM.update_volume` names it.
    pub fn vref(&self, generation: Option<u16>) -> VolumeRef {
        volume_ref(&self.sd, &self.img, &self.vol, generation)
    }

    /// Its `Volume.getInfo`.
    pub async fn info(&self, c: &AgentClient) -> VolumeInfo {
        volume_info(c, &self.sd, &self.img, &self.vol).await
    }
}

/// A `div` copy endpoint (`generation`: what a destination is expected to be at).
pub fn endpoint(sd: &Uuid, img: &Uuid, vol: &Uuid, generation: Option<u16>) -> Endpoint {
    Endpoint::div(
        sd.clone(),
        img.clone(),
        vol.clone(),
        generation.map(Generation),
    )
}

/// A volume as `SDM.update_volume` names it.
pub fn volume_ref(sd: &Uuid, img: &Uuid, vol: &Uuid, generation: Option<u16>) -> VolumeRef {
    VolumeRef {
        sd_id: sd.clone(),
        img_id: img.clone(),
        vol_id: vol.clone(),
        generation: generation.map(Generation),
    }
}

/// Attributes that change only the legality.
pub fn legality_attrs(legality: Legality) -> VolumeAttributes {
    VolumeAttributes {
        legality: Some(legality),
        ..Default::default()
    }
}

/// The data file of a volume in the domain directory `dom`.
pub fn volume_path(dom: &Path, img: &Uuid, vol: &Uuid) -> PathBuf {
    dom.join("images").join(img.as_str()).join(vol.as_str())
}

/// The directory of an attached domain, as `StorageDomain.list` gives it.
pub async fn domain_dir(c: &AgentClient, sd: &Uuid) -> PathBuf {
    let l = c.api().list_domains().await.via(c).unwrap();
    l.into_iter()
        .find(|d| &d.sd_id == sd)
        .expect("domain attached")
        .path
        .into()
}

/// Creates a sparse volume of `size` bytes with the given ids.
// The verb's own parameters, less the preallocation.
#[allow(clippy::too_many_arguments)]
pub async fn create_volume(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
    size: u64,
    format: VolumeFormat,
    parent: Option<Uuid>,
    description: Option<Description>,
) {
    c.api()
        .create_volume(
            sd.clone(),
            img.clone(),
            vol.clone(),
            Capacity(Size(size)),
            format,
            Preallocation::Sparse,
            parent,
            description,
            None,
        )
        .await
        .via(c)
        .unwrap();
}

/// A new sparse volume of `size` bytes, without parent, in a new image on `sd`.
pub async fn new_volume(c: &AgentClient, sd: &Uuid, size: u64, format: VolumeFormat) -> Vol {
    let (img, vol) = (uuid(), uuid());
    create_volume(c, sd, &img, &vol, size, format, None, None).await;
    let path = volume_path(&domain_dir(c, sd).await, &img, &vol);
    Vol {
        sd: sd.clone(),
        img,
        vol,
        path,
    }
}

/// `Volume.getInfo`, as the agent answers it.
pub async fn try_volume_info(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
) -> Result<VolumeInfo, sdm_client::Error> {
    c.api()
        .get_volume_info(sd.clone(), img.clone(), vol.clone())
        .await
        .via(c)
}

/// `Volume.getInfo` of a volume that exists.
pub async fn volume_info(c: &AgentClient, sd: &Uuid, img: &Uuid, vol: &Uuid) -> VolumeInfo {
    try_volume_info(c, sd, img, vol).await.unwrap()
}

/// Submits `SDM.copy_data` from `src` to `dst`, throttled to `bw` bytes/s if given; returns the
/// new job's id.
pub async fn start_copy(c: &AgentClient, src: Endpoint, dst: Endpoint, bw: Option<u64>) -> Uuid {
    let job = uuid();
    c.api()
        .copy_data(job.clone(), src, dst, None, None, bw.map(Size), None)
        .await
        .via(c)
        .unwrap();
    job
}

/// Submits a copy of `src` onto `dst` (expected at `generation`); returns the new job's id.
pub async fn copy_volume(
    c: &AgentClient,
    src: &Vol,
    dst: &Vol,
    generation: Option<u16>,
    bw: Option<u64>,
) -> Uuid {
    start_copy(c, src.ep(None), dst.ep(generation), bw).await
}

/// Submits `Volume.checksum` (default algorithm); returns the new job's id.
pub async fn start_checksum(c: &AgentClient, sd: &Uuid, img: &Uuid, vol: &Uuid) -> Uuid {
    let job = uuid();
    c.api()
        .checksum_volume(job.clone(), sd.clone(), img.clone(), vol.clone(), None)
        .await
        .via(c)
        .unwrap();
    job
}

/// Runs `SDM.update_volume` of `r` with `attrs` and waits for the job; returns its final info.
pub async fn update_volume(c: &AgentClient, r: VolumeRef, attrs: VolumeAttributes) -> JobInfo {
    let job = uuid();
    c.api()
        .update_volume(job.clone(), r, attrs)
        .await
        .via(c)
        .unwrap();
    wait_job(c, &job).await
}
