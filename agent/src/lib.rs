//! `sdm-agent`: the per-host storage data-path daemon.
//!
//! A request's path through the agent (see `docs/ARCHITECTURE.md`): [`rpc`] (jsonrpsee server,
//! parameter decoding by `sdm_proto`) → [`service`] (synchronous verbs) or [`ops`] (verbs that
//! run as [`jobs`]) → [`storage`] (domains, volumes, metadata through [`durable`]) with
//! [`locks`] and [`leases`] around it → `sdm_io` (the data path) for the bytes.

pub mod config;
pub mod conn;
pub mod durable;
pub mod error;
pub mod holders;
pub mod hostinfo;
pub mod jobs;
pub mod leases;
pub mod locks;
pub mod metrics;
pub mod ops;
pub mod rpc;
pub mod service;
pub mod stomp;
pub mod storage;
pub mod tls;
pub mod uncached;

pub use service::Agent;
