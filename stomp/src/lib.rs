//! STOMP 1.2 as VDSM speaks it, for sdm's agent (server side) and sdm-client (client side).
//!
//! - [`Frame`] and its byte-exact encoding as VDSM's server writes frames ([`Frame::encode`]);
//! - [`Decoder`]: an incremental decoder over a byte buffer with hard [`Limits`];
//! - [`HeartBeat`]: heart-beat negotiation as VDSM's server (and a client) computes it;
//! - [`detect`]: STOMP, HTTP or neither from a connection's first bytes;
//! - with the `client` feature (default), [`Client`]: a small tokio client generic over the
//!   stream (TCP or TLS).
//!
//! Facts about VDSM's dialect (checked against `lib/yajsonrpc/stomp.py` and
//! `stompserver.py`): every header is escaped, CONNECT/CONNECTED included; the first of repeated
//! headers wins; outgoing frames with a body always carry `content-length`; CONNECTED and
//! RECEIPT have no body; ERROR carries its text in the body and no `message` header; MESSAGE
//! headers are `destination`, `content-type:application/json`, `subscription`,
//! `content-length`, in that order (the engine's Java client reads frames by exact byte count
//! and does not unescape headers).

mod decode;
mod detect;
mod error;
mod frame;
mod heartbeat;

#[cfg(feature = "client")]
mod client;

#[cfg(feature = "client")]
pub use client::{Client, ClientError, ClientOptions};
pub use decode::{Decoder, Item, Limits};
pub use detect::{detect, Protocol, DETECT_MAX_BYTES, HTTP_METHODS};
pub use error::StompError;
pub use frame::{
    escape_into, unescape, Command, Frame, EVENTS_QUEUE, HEART_BEAT, IRS_REQUEST_QUEUE,
    REQUEST_QUEUE, RESPONSE_QUEUE, VERSION,
};
pub use heartbeat::{parse_pair as parse_heart_beat, HeartBeat, MAX_INTERVAL, MIN_INTERVAL_MS};
