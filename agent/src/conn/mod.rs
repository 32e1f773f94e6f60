//! Connection bookkeeping of the listener: a bound on open connections that also holds when
//! clients open connections and then go quiet, and backpressure for clients that send requests
//! without reading the answers.
//!
//! jsonrpsee's own `max_connections` counts requests being served, not sockets, so idle
//! keep-alive connections, slow-loris senders and idle WebSockets would otherwise pile up until
//! the agent runs out of file descriptors. Here every accepted socket is registered for as long
//! as its stream lives; when the table is full (the configured maximum, or the file-descriptor
//! limit less a reserve), the oldest connection that has not started a call is closed to make
//! room, else the one idle longest; only when every connection has a call running is the
//! newcomer refused.
//!
//! Every socket is wrapped in [`Guarded`]: it records activity, and it stops reading more
//! requests from a peer that is not keeping up. Two signals pause reading: writes to the peer
//! are blocked (it is not reading what we send), or a WebSocket has [`MAX_UNANSWERED`]
//! requests without an answer written back. The second matters because jsonrpsee starts a task
//! for every WebSocket message as soon as it is read, before any answer is due; counting
//! messages in and answers out on the wire is what bounds those tasks. Only the first request
//! of a connection may upgrade it to a WebSocket ([`UpgradeGate`] answers a later one 400), and
//! the client must wait for the 101 before sending frames (RFC 6455 4.1; a connection that does

mod gates;
mod guarded;
mod rewind;
mod table;
mod wire;

pub use gates::{
    CallGate, CallGateLayer, Calls, Gate, GateLayer, RpcInner, UpgradeGate, UpgradeGateLayer,
    Upgrades,
};
pub use guarded::{Guarded, MAX_UNANSWERED};
pub use rewind::Rewind;
pub use table::{ConnState, Connections, Registration};
