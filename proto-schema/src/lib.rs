//! `sdm-proto`: the one definition of the sdm wire API.
//!
//! * [`types`]: every parameter and result object of the contract, with tolerant decoding where
//!   engines are loose and strict validation where a value could reach the disk;
//! * [`error`]: the error table and its single conversion to JSON-RPC error objects;
//! * [`api`]: the `#[rpc(server, client)]` trait the agent implements and clients call;
//! * [`docs`]: generators of `proto-schema/schema.json` and `docs/api.md` (a test keeps them fresh).

// The wire verbs take their parameters by name, as many as the contract gives them.
#![allow(clippy::too_many_arguments)]

pub mod api;
pub mod docs;
pub mod error;
pub mod types;

pub use api::{methods, RpcResult, SdmApiClient, SdmApiServer};
pub use error::{ApiError, ErrorCode, ErrorData, JobError};
pub use types::*;

/// Version of the wire API (follows the crate version).
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
