//! A volume's chain in its image — the volume, its parent, the parent's parent, down to the
//! volume without one — as metadata, and made usable as the engine's layers (top first).
//! Everything goes through the storage seam (`DomainBackend::read_metadata`, `prepare`), so a
//! block domain's chain is its activated LVs.

use sdm_proto::{ApiError, ErrorCode, Uuid, VolumeFormat, BLANK_UUID};

use crate::error::AgentError;
use crate::storage::backend::Prepared;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::read_metadata;

/// Longest chain followed (oVirt chains are far shorter; a loop in corrupt metadata stops
/// here instead of running forever).
const MAX_CHAIN: usize = 256;

/// One volume of a chain.
#[derive(Clone, Debug)]
pub struct ChainVol {
    /// The volume.
    pub vol: Uuid,
    /// Its metadata as read.
    pub md: VolumeMetadata,
}

/// The parent a volume's metadata names, if any.
pub fn parent_of(md: &VolumeMetadata) -> Result<Option<Uuid>, AgentError> {
    if md.parent == BLANK_UUID || md.parent.is_empty() {
        return Ok(None);
    }
    Uuid::parse(&md.parent)
        .map(Some)
        .map_err(|e| ApiError::new(ErrorCode::GeneralException, format!("bad parent: {e}")).into())
}

/// The chain below `top` (whose metadata is `top_md`), top first, every parent in `img`.
pub fn chain_of(
    dom: &Domain,
    img: &Uuid,
    top: &Uuid,
    top_md: &VolumeMetadata,
) -> Result<Vec<ChainVol>, AgentError> {
    let mut chain = vec![ChainVol {
        vol: top.clone(),
        md: top_md.clone(),
    }];
    while let Some(p) = parent_of(&chain.last().expect("non-empty").md)? {
        if chain.len() >= MAX_CHAIN || chain.iter().any(|c| c.vol == p) {
            return Err(ApiError::new(
                ErrorCode::GeneralException,
                format!("the chain of volume {top} loops or is longer than {MAX_CHAIN}"),
            )
            .into());
        }
        let md = read_metadata(dom, img, &p)?;
        chain.push(ChainVol { vol: p, md });
    }
    Ok(chain)
}

/// The engine's name for a volume format.
pub fn image_format(f: VolumeFormat) -> sdm_io::ImageFormat {
    match f {
        VolumeFormat::Raw => sdm_io::ImageFormat::Raw,
        VolumeFormat::Cow => sdm_io::ImageFormat::Qcow2,
    }
}

/// The path the engine and qemu-img open a prepared volume by: in the image's chain directory
/// (`DomainBackend::chain_dir`), where backing files resolve by bare UUID relative to the
/// image, when the volume is there; the prepared path otherwise (they are the same file; on a
/// file domain, the same path).
pub fn layer_path(dom: &Domain, img: &Uuid, vol: &Uuid, p: &Prepared) -> std::path::PathBuf {
    let in_chain = dom.backend.chain_dir(img).join(vol.as_str());
    if p.path() != in_chain && in_chain.exists() {
        in_chain
    } else {
        p.path().to_owned()
    }
}

/// A chain made usable: the engine's layers (top first) and what keeps them usable.
pub struct PreparedChain {
    /// Layers, top first.
    pub layers: Vec<sdm_io::Layer>,
    _guards: Vec<Prepared>,
}

/// Prepares every volume of `chain` (top first).
pub fn prepare_chain(
    dom: &Domain,
    img: &Uuid,
    chain: &[ChainVol],
) -> Result<PreparedChain, AgentError> {
    let mut guards = Vec::with_capacity(chain.len());
    let mut layers = Vec::with_capacity(chain.len());
    for c in chain {
        let p = dom.backend.prepare(img, &c.vol)?;
        layers.push(sdm_io::Layer {
            path: layer_path(dom, img, &c.vol, &p),
            format: image_format(c.md.format),
        });
        guards.push(p);
    }
    Ok(PreparedChain {
        layers,
        _guards: guards,
    })
}
