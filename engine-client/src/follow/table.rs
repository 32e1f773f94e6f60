//! The recovery table: what a destination volume's lease and generation mean for a copy.

use sdm_proto::{Generation, FENCING_GENERATION_DIFF};

/// What the destination volume shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The volume lease has owners.
    pub lease_held: bool,
    /// The volume's generation.
    pub generation: u16,
}

/// The recovery table's answer for one observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableVerdict {
    /// The lease is held: a job still writes the volume.
    Running,
    /// Generation G+1: the copy committed.
    Done,
    /// Generation G+3: the copy was fenced.
    Fenced,
    /// Anything else: fence, then look again.
    Unknown,
}

/// `g + n` in the agent's generation arithmetic (wrapping after 999).
pub fn gen_plus(g: u16, n: u16) -> u16 {
    Generation(g).advance(n).get()
}

/// The recovery table (see the module documentation).
pub fn decide(obs: &Observation, g: u16) -> TableVerdict {
    if obs.lease_held {
        TableVerdict::Running
    } else if obs.generation == gen_plus(g, 1) {
        TableVerdict::Done
    } else if obs.generation == gen_plus(g, FENCING_GENERATION_DIFF) {
        TableVerdict::Fenced
    } else {
        TableVerdict::Unknown
    }
}
