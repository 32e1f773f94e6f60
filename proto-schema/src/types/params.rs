//! Structured parameters: copy endpoints, volume references and attributes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

// ---------------------------------------------------------------------------------------------
// Objects

/// `SDM.copy_data` endpoint. Only `endpoint_type: "div"` (domain/image/volume) exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Endpoint {
    /// Must be "div".
    pub endpoint_type: EndpointType,
    /// Storage domain.
    pub sd_id: Uuid,
    /// Image.
    pub img_id: Uuid,
    /// Volume.
    pub vol_id: Uuid,
    /// Expected generation of the volume (checked on the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Accepted for compatibility; sdm volumes need no preparation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<Flag>,
}

impl Endpoint {
    /// A div endpoint.
    pub fn div(
        sd_id: Uuid,
        img_id: Uuid,
        vol_id: Uuid,
        generation: Option<Generation>,
    ) -> Endpoint {
        Endpoint {
            endpoint_type: EndpointType::Div,
            sd_id,
            img_id,
            vol_id,
            generation,
            prepared: None,
        }
    }
}

wire_enum! {
    /// Endpoint discriminator.
    EndpointType { /// Domain, image, volume.
        Div = "div" }
}

/// Which volume `SDM.update_volume` changes, and its expected generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeRef {
    /// Storage domain.
    pub sd_id: Uuid,
    /// Image.
    pub img_id: Uuid,
    /// Volume.
    pub vol_id: Uuid,
    /// Must equal the volume's generation (a missing value never matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
}

/// Attributes `SDM.update_volume` sets; at least one must be given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeAttributes {
    /// New legality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legality: Option<Legality>,
    /// New description (cut to 210 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
    /// New generation; without it the generation goes up by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Only SHARED is allowed (a parentless LEAF becomes a template).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub role: Option<VolumeRole>,
}

impl VolumeAttributes {
    /// True when no attribute is set.
    pub fn is_empty(&self) -> bool {
        self.legality.is_none()
            && self.description.is_none()
            && self.generation.is_none()
            && self.role.is_none()
    }
}

/// `SDM.merge`'s subchain: `top_id` is committed into `base_id`, its parent, in one image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubchainInfo {
    /// Storage domain.
    pub sd_id: Uuid,
    /// Image holding both volumes.
    pub img_id: Uuid,
    /// The volume whose data is committed (its parent must be `base_id`).
    pub top_id: Uuid,
    /// The volume written.
    pub base_id: Uuid,
    /// Expected generation of the base (checked before anything changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_generation: Option<Generation>,
}

/// What `SDM.amend_volume` changes in a qcow2 volume; unknown keys are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Qcow2Attributes {
    /// The qcow2 compatibility level to upgrade to ("1.1").
    pub compat: Qcow2Compat,
}
