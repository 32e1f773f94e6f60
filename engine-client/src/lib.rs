//! `sdm-client`: what an engine embeds to run storage data operations on any of its hosts, and
//! what `sdmctl` is built on.
//!
//! Layers, bottom up:
//!
//! * [`AgentClient`]: a typed client of one agent, generated from `sdm-proto`'s API trait (every
//!   verb is a method of [`SdmApiClient`] on [`AgentClient::api`] over HTTP or STOMP
//!   ([`stomp`], VDSM's transport), or on [`AgentClient::websocket`]), with request timeouts, retries of idempotent reads
//!   ([`AgentClient::read`]) and idempotent job submission ([`AgentClient::submit`]).
//! * [`pool::HostPool`]: the agents an engine knows, their health and domains, and host choice
//!   through a [`pool::PlacementPolicy`] (least loaded by default).
//! * [`follow`]: following a copy job to a verdict by the engine's recovery table: the job while
//!   its host answers, the destination volume's lease and generation when it does not, fencing
//!   when neither decides.
//! * [`status`]: what storage alone says about an image (`Image.getStatus`): how far a copy
//!   whose host is gone got, from its checkpoint; re-issuing it resumes from there.
//! * [`journal::Journal`]: the durable record of every phase of a disk operation, kept by a
//!   [`journal::JournalStore`]: the file journal by default, or PostgreSQL shared by several
//!   engines that take over each other's operations ([`journal::PgStore`]); the operation
//!   types it records are in [`op`].
//! * [`disk::Disks`]: `copy_disk`, `move_disk`, `delete_disk` and `resume`, built on the above.
//!
//! `docs/engine-guide.md` walks through them with a runnable example.

/// `call!(client, verb(args..))`: an idempotent request through [`AgentClient::read`]. The
/// arguments are evaluated on every attempt, so they must be cheap clones of borrowed values.
macro_rules! call {
    ($c:expr, $method:ident($($arg:expr),* $(,)?)) => {
        $c.read(|h| async move { h.$method($($arg),*).await })
    };
}

mod client;
pub mod disk;
mod error;
pub mod follow;
pub mod journal;
pub mod op;
pub mod placement;
pub mod pool;
pub mod status;
pub mod stomp;
pub mod tls;

pub use sdm_proto::{self as proto, ApiError, ErrorCode, SdmApiClient};

pub use client::{job_outcome, ping, AgentClient, Api, ClientOptions, Via, DEFAULT_AGENT};
pub use disk::{CopyStartReport, Disks, Event, EventSink, NoEvents, OpReport, Phase};
pub use error::Error;
pub use follow::{CopyTicket, Decision, FollowOptions, Verdict, VolumeId};
pub use journal::{FileStore, Journal, JournalError, JournalOptions, JournalStore, PgStore};
pub use op::{DeletePolicy, MovePolicy, OpKind, Outcome, VolumeSpec};
pub use pool::{
    Health, HostPool, HostView, LeastLoaded, PlacementPolicy, PlacementRequest, PoolOptions,
};
