//! The checks around a job's writes that decide what its outcome may say: the lease confirmed
//! and the generation re-read before the first write, the source unchanged before the
//! destination is declared good, and a LEGAL write whose directory fsync failed settled by what
//! the disk says (`docs/recovery.md`, "When the last fsync fails").

use sdm_lease::Lease;
use sdm_proto::{ApiError, Endpoint, ErrorCode, Legality, Uuid};

use crate::durable::DurableError;
use crate::error::AgentError;
use crate::storage::domain::Domain;
use crate::storage::md::VolumeMetadata;
use crate::storage::volume::{read_metadata, update_metadata};
use crate::storage::StorageError;

/// Right before the first write to a destination: the lease still names this host on storage
/// (651 otherwise), and the generation is still the one checked (911 otherwise). Returns the
/// metadata as it is now, for the write.
pub fn before_first_write(
    dom: &Domain,
    dst: &Endpoint,
    start_gen: u16,
    held: &Lease,
) -> Result<VolumeMetadata, AgentError> {
    held.verify()?;
    let md = read_metadata(dom, &dst.img_id, &dst.vol_id)?;
    if md.generation != start_gen {
        return Err(ApiError::new(
            ErrorCode::GenerationMismatch,
            format!(
                "destination generation changed to {} before the copy started",
                md.generation
            ),
        )
        .into());
    }
    Ok(md)
}

/// After the copy, before the destination is declared good: the source is still LEGAL at the
/// generation it had when the copy started (227 / 911 otherwise). The copy holds no lease on
/// the source, as VDSM's does not; another host may have changed it meanwhile.
pub fn source_unchanged(
    dom: &Domain,
    src: &Endpoint,
    before: &VolumeMetadata,
) -> Result<(), AgentError> {
    let now = read_metadata(dom, &src.img_id, &src.vol_id)?;
    if now.legality != Legality::Legal {
        return Err(ApiError::new(
            ErrorCode::prepareIllegalVolumeError,
            format!(
                "source volume {} became {} during the copy; the destination stays ILLEGAL",
                src.vol_id, now.legality
            ),
        )
        .into());
    }
    if now.generation != before.generation {
        return Err(ApiError::new(
            ErrorCode::GenerationMismatch,
            format!(
                "source volume {} changed generation from {} to {} during the copy; the destination stays ILLEGAL",
                src.vol_id, before.generation, now.generation
            ),
        )
        .into());
    }
    Ok(())
}

/// Writes `md` (LEGAL, the new generation) as the job's last write. When the rename landed but
/// the directory fsync after it failed, every host already reads the new metadata: the job's
/// outcome is then what the disk says, read back, so the job never says "failed" while the
/// volume says LEGAL at the new generation. Any other failure fails the job as before.
pub fn write_legal(
    dom: &Domain,
    img: &Uuid,
    vol: &Uuid,
    md: &mut VolumeMetadata,
) -> Result<(), AgentError> {
    match update_metadata(dom, img, vol, md) {
        Ok(()) => Ok(()),
        Err(StorageError::Durable(e @ DurableError::DirSync { .. })) => {
            let on_disk = read_metadata(dom, img, vol);
            match on_disk {
                Ok(d)
                    if d.legality == md.legality
                        && d.generation == md.generation
                        && d.sequence == md.sequence =>
                {
                    tracing::warn!(sd_id = %dom.sd_id, vol_id = %vol, generation = d.generation, error = %crate::error::chain_message(&e), "the LEGAL write landed but its directory fsync failed; the job reports what the disk says (done); a crash of the storage before it flushes may still bring back ILLEGAL at the old generation");
                    Ok(())
                }
                Ok(d) => {
                    tracing::error!(sd_id = %dom.sd_id, vol_id = %vol, legality = %d.legality, generation = d.generation, "the LEGAL write's directory fsync failed and the disk does not show it");
                    Err(StorageError::Durable(e).into())
                }
                Err(read) => {
                    tracing::error!(sd_id = %dom.sd_id, vol_id = %vol, error = %read, "the LEGAL write's directory fsync failed and the metadata cannot be read back");
                    Err(StorageError::Durable(e).into())
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}
