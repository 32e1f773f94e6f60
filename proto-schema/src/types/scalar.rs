//! Scalars, one family per room: `uuid` (canonical UUIDs), `flag` (loose booleans), `size`
//! (byte sizes, capacities, timestamps: all decimal-string numbers), `counter` (ranged
//! generation and sequence numbers) and `text` (free text and bitmap names).

mod counter;
mod flag;
mod size;
mod text;
mod uuid;

pub use counter::*;
pub use flag::*;
pub use size::*;
pub use text::*;
pub use uuid::*;

pub(crate) use uuid::truncate_for_message;
