//! Volume chains and qcow2 verbs through the agent, with qemu-img / qemu-io as the oracle:
//! volumes of any format and allocation, data written with qemu-io, the new SDM jobs started
//! and awaited, and images compared, checked and mapped.

use std::path::{Path, PathBuf};
use std::process::Command;

use sdm_client::{AgentClient, SdmApiClient, Via};
use sdm_proto::{
    BitmapName, Capacity, Flag, Generation, JobInfo, Preallocation, Qcow2Attributes, Qcow2Compat,
    Size, SubchainInfo, Uuid, VolumeFormat,
};

use crate::{domain_dir, uuid, volume_path, wait_job, Vol};

/// Creates a volume with every `Volume.create` parameter the chain tests vary.
pub async fn make_volume(
    c: &AgentClient,
    sd: &Uuid,
    img: &Uuid,
    size: u64,
    format: VolumeFormat,
    prealloc: Preallocation,
    parent: Option<&Vol>,
) -> Vol {
    let vol = uuid();
    c.api()
        .create_volume(
            sd.clone(),
            img.clone(),
            vol.clone(),
            Capacity(Size(size)),
            format,
            prealloc,
            parent.map(|p| p.vol.clone()),
            None,
        )
        .await
        .via(c)
        .unwrap_or_else(|e| panic!("create {format} {prealloc}: {e}"));
    let path = volume_path(&domain_dir(c, sd).await, img, &vol);
    Vol {
        sd: sd.clone(),
        img: img.clone(),
        vol,
        path,
    }
}

/// Runs qemu-io commands on an image (its chain opened, the top written); panics on failure.
pub fn qemu_io(img: &Path, fmt: &str, cmds: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", fmt]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let out = cmd
        .arg(img)
        .current_dir(img.parent().unwrap())
        .output()
        .expect("qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("error") && !text.contains("failed"),
        "qemu-io {cmds:?} on {}: {text}",
        img.display()
    );
}

/// Runs qemu-img; panics with its stderr on failure; returns stdout.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The qemu format name of a volume format.
pub fn fmt(f: VolumeFormat) -> &'static str {
    match f {
        VolumeFormat::Raw => "raw",
        VolumeFormat::Cow => "qcow2",
    }
}

/// `qemu-img compare` of two images through their chains (formats given, not probed).
#[track_caller]
pub fn assert_same(a: &Path, af: VolumeFormat, b: &Path, bf: VolumeFormat) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fmt(af), "-F", fmt(bf)])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check` finds nothing wrong (no corruption, no leaks).
#[track_caller]
pub fn assert_check_clean(p: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(p)
        .current_dir(p.parent().unwrap())
        .output()
        .expect("qemu-img check");
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        p.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img info --output=json` of an image alone.
pub fn info(p: &Path, f: VolumeFormat) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", "-f", fmt(f)])
        .arg(p)
        .current_dir(p.parent().unwrap())
        .output()
        .expect("qemu-img info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info json")
}

/// Names of the persistent bitmaps of a qcow2.
pub fn bitmap_names(p: &Path) -> Vec<String> {
    info(p, VolumeFormat::Cow)["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| b["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Guest bytes of an image that `qemu-img map` shows as data stored in the image itself.
pub fn own_data_bytes(p: &Path, f: VolumeFormat) -> u64 {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", fmt(f)])
        .arg(p)
        .current_dir(p.parent().unwrap())
        .output()
        .expect("qemu-img map");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true && e["depth"] == 0)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// The chain read through `top` (its format `f`), as a RAW file in `dir`.
pub fn flatten(dir: &Path, top: &Path, f: VolumeFormat, name: &str) -> PathBuf {
    let out = dir.join(name);
    let _ = std::fs::remove_file(&out);
    let (t, o) = (top.display().to_string(), out.display().to_string());
    qemu_img(&["convert", "-f", fmt(f), "-O", "raw", &t, &o]);
    out
}

/// Starts `SDM.merge` of `top` into `base` (expected at `base_generation`); returns the job.
pub async fn start_merge(
    c: &AgentClient,
    base: &Vol,
    top: &Vol,
    base_generation: Option<u16>,
    merge_bitmaps: bool,
) -> Uuid {
    let job = uuid();
    c.api()
        .merge(
            job.clone(),
            SubchainInfo {
                sd_id: base.sd.clone(),
                img_id: base.img.clone(),
                top_id: top.vol.clone(),
                base_id: base.vol.clone(),
                base_generation: base_generation.map(Generation),
            },
            merge_bitmaps.then_some(Flag(true)),
        )
        .await
        .via(c)
        .unwrap();
    job
}

/// Runs `SDM.merge` and waits for it.
pub async fn merge(
    c: &AgentClient,
    base: &Vol,
    top: &Vol,
    base_generation: Option<u16>,
) -> JobInfo {
    let job = start_merge(c, base, top, base_generation, false).await;
    wait_job(c, &job).await
}

/// Runs `SDM.amend_volume` to `compat` and waits for it.
pub async fn amend(
    c: &AgentClient,
    v: &Vol,
    generation: Option<u16>,
    compat: Qcow2Compat,
) -> JobInfo {
    let job = uuid();
    c.api()
        .amend_volume(job.clone(), v.vref(generation), Qcow2Attributes { compat })
        .await
        .via(c)
        .unwrap();
    wait_job(c, &job).await
}

/// Runs `SDM.sparsify_volume` and waits for it.
pub async fn sparsify(c: &AgentClient, v: &Vol, generation: Option<u16>) -> JobInfo {
    let job = uuid();
    c.api()
        .sparsify_volume(job.clone(), v.vref(generation))
        .await
        .via(c)
        .unwrap();
    wait_job(c, &job).await
}

/// Which bitmap verb [`bitmap_job`] runs.
#[derive(Clone, Copy, Debug)]
pub enum BitmapVerb {
    /// `SDM.add_bitmap`.
    Add,
    /// `SDM.remove_bitmap`.
    Remove,
    /// `SDM.clear_bitmaps` (the name is ignored).
    Clear,
}

/// Runs a bitmap verb and waits for it.
pub async fn bitmap_job(c: &AgentClient, v: &Vol, verb: BitmapVerb, name: &str) -> JobInfo {
    let job = uuid();
    let name = || BitmapName::parse(name).unwrap();
    let r = match verb {
        BitmapVerb::Add => c.api().add_bitmap(job.clone(), v.vref(None), name()).await,
        BitmapVerb::Remove => {
            c.api()
                .remove_bitmap(job.clone(), v.vref(None), name())
                .await
        }
        BitmapVerb::Clear => c.api().clear_bitmaps(job.clone(), v.vref(None)).await,
    };
    r.via(c).unwrap();
    wait_job(c, &job).await
}
