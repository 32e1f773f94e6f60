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

/// The temporary metadata files (`<vol>.meta.sdm-tmp-h<host>-p<pid>-…`) of volume `vol` in
/// image directory `img_dir`, by name.
pub fn meta_temp_files(img_dir: &Path, vol: &Uuid) -> Vec<String> {
    let prefix = format!("{vol}.meta.sdm-tmp-");
    let mut names: Vec<String> = std::fs::read_dir(img_dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Starts `Volume.create` of a RAW volume described `description` in the background (an agent
/// whose `sdm::durable::before_rename` failpoint holds writes holding that text) and waits
/// until its metadata's temporary file exists: the creation is then between that file and
/// the rename, holding the volume's lease. Returns the temporary file's name.
pub async fn create_held_before_rename(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    vol: &Uuid,
    img_dir: &Path,
    description: &str,
) -> String {
    let (c2, sd2, img2, vol2) = (c.clone(), sd.clone(), img.clone(), vol.clone());
    let d = Description::parse(description).expect("description");
    tokio::spawn(async move {
        // Never answered: the test kills the agent first.
        let _ = c2
            .api()
            .create_volume(
                sd2,
                img2,
                vol2,
                Capacity(Size(1 << 20)),
                VolumeFormat::Raw,
                Preallocation::Sparse,
                None,
                Some(d),
            )
            .await;
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(t) = meta_temp_files(img_dir, vol).pop() {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no temporary metadata file of {vol} appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
