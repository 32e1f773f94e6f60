//! The JSON-RPC server: the `SdmApiServer` implementation ([`Rpc`], a thin layer over the
//! agent's verbs and `ops`), the parameter-error middleware ([`ParamErrors`]), and the listener
//! with its limits ([`serve`]).
//!
//! Requests pass: socket → jsonrpsee (HTTP or WebSocket, size/connection/batch limits) →
//! [`ParamErrors`] middleware → generated parameter decoding (`sdm_proto` types validate here)
//! → a method of [`Rpc`] → a blocking thread running the agent's verb or registering a job.

mod api;
mod listen;
mod middleware;

pub use api::Rpc;
pub use listen::serve;
pub use middleware::{ParamErrors, ParamErrorsLayer};
