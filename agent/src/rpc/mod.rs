//! The JSON-RPC server: the `SdmApiServer` implementation ([`Rpc`], a thin layer over the
//! agent's verbs and `ops`), the middleware every call passes, and the listener with its
//! limits ([`serve`]).
//!
//! Requests pass: socket → protocol detection (HTTP or STOMP, `listen`) → jsonrpsee (HTTP or
//! WebSocket, size/connection/batch limits) or the STOMP session (`crate::stomp`) →
//! [`CountCalls`] (metrics) → [`ParamErrors`] → [`VdsmNames`] (VDSM's parameter names) →
//! generated parameter decoding (`sdm_proto` types validate here) → a method of [`Rpc`] → a
//! blocking thread running the agent's verb or registering a job. `GET /metrics` is answered
//! before jsonrpsee ([`scrape`]).

mod api;
mod calls;
mod direct;
mod listen;
mod middleware;
mod scrape;
mod tasks;
mod vdsm;

pub use api::Rpc;
pub use calls::{CountCalls, CountCallsLayer, Transport};
pub use direct::{stomp_service, Direct, StompRpc};
pub use listen::serve;
pub use middleware::{ParamErrors, ParamErrorsLayer};
pub use vdsm::{VdsmNames, VdsmNamesLayer};
