//! Exit codes: 0 success; 1 the agent refused or the operation failed or was rolled back;
//! 2 usage; 3 an agent could not be reached (or no agent could do the work); 4 the operation is
//! pending in the journal (`sdmctl resume` finishes it).

use std::process::ExitCode;

use sdm_client::{Error, Outcome};

/// A command that reported its own failure and only needs its exit code.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Success for a committed operation; otherwise the exit code of how it ended (its report
/// already said why).
pub fn outcome(o: Outcome) -> anyhow::Result<()> {
    match o {
        Outcome::Committed => Ok(()),
        Outcome::Pending => Err(Exit(4).into()),
        Outcome::RolledBack | Outcome::Failed => Err(Exit(1).into()),
    }
}

/// Prints why a command failed (unless it said so itself) and returns its exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<Error>() {
        Some(Error::NoHost(_)) | Some(Error::Transport { .. }) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
        Some(Error::InProgress { .. }) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Some(Error::Api(api)) => {
            eprintln!(
                "error: {} ({}): {}",
                api.code.name(),
                api.code.code(),
                api.message
            );
            ExitCode::from(1)
        }
        _ => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => ExitCode::from(*code),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
