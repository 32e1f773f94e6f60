//! Hostile input through the real server (issue 8, part 4): requests generated from the wire
//! API for every field of every method, HTTP and WebSocket abuse, IDs of other domains, links
//! planted in a domain, slow-loris and idle connections. Each request must get a coded error
//! (or a clean close); the agent must stay up, keep its memory bounded, and must not create,
//! open for writing or delete anything outside its attached domains: a file-system state of the
//! test's whole temporary root (inode, size, times, content) before and after, an inotify watch
//! over it, and the agent's own fd table are the witnesses.
//!
//! Quick form in `cargo test`; the full form with `SDM_FULL=1` (see docs/reliability.md).
//!
//! One test binary, rooms by area: `bed` (the test bed and its witnesses), `fuzz` (generated and
//! mutated requests), `http`, `websocket`, `domains` (other domains' IDs, planted links),
//! `volumes` (extreme valid values, lock waits) and `connections` (slow-loris, idle clients).

mod bed;
mod connections;
mod domains;
mod fuzz;
mod http;
mod volumes;
mod websocket;
