//! What the phases share to get work done: the one retry loop over hosts ([`Rounds`])
//! and the one parallel loop over volumes ([`in_parallel`]), with the rule that decides which
//! stop wins when several volumes stopped ([`worse`]).

use std::future::Future;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use sdm_proto::Uuid;

use crate::pool::{HostPool, Placement, PlacementRequest};

use super::run::{Run, Step, Stop};

/// The stop that decides for several tasks that stopped in parallel: a fatal one, else the
/// first abandon, else the latest.
fn worse(prev: Option<Stop>, next: Stop) -> Stop {
    match (prev, next) {
        (Some(Stop::Fatal(e)), _) | (_, Stop::Fatal(e)) => Stop::Fatal(e),
        (Some(Stop::Abandon(m)), _) => Stop::Abandon(m),
        (_, s) => s,
    }
}

/// The one retry loop over hosts, as a cursor: each [`next`](Self::next) places the work on a
/// host that sees the domains and avoids every host that failed in an earlier round, until the
/// rounds are used up. Callers loop `while let Some(placement) = rounds.next().await?` and
/// report a failed round with [`failed`](Self::failed).
pub(super) struct Rounds<'a> {
    pool: &'a HostPool,
    req: PlacementRequest,
    /// Rounds left (None: as many as the caller wants).
    left: Option<u32>,
    last: String,
}

impl<'a> Rounds<'a> {
    /// Rounds over the hosts of `pool` that see `domains` (`bytes` to move), avoiding the hosts
    /// in `avoid` from the start; `rounds` at most (None: unbounded, the caller ends the loop).
    pub(super) fn new(
        pool: &'a HostPool,
        domains: Vec<Uuid>,
        bytes: u64,
        avoid: Vec<String>,
        rounds: Option<u32>,
    ) -> Rounds<'a> {
        Rounds {
            pool,
            req: PlacementRequest {
                domains,
                avoid,
                bytes,
            },
            left: rounds,
            last: String::new(),
        }
    }

    /// The next round's host; None when the rounds are used up. No host to place on stops the
    /// operation for later.
    pub(super) async fn next(&mut self) -> Step<Option<Placement>> {
        match &mut self.left {
            Some(0) => return Ok(None),
            Some(n) => *n -= 1,
            None => {}
        }
        let placement = self
            .pool
            .place(&self.req)
            .await
            .map_err(|e| Stop::Later(e.to_string()))?;
        Ok(Some(placement))
    }

    /// This round's host could not do the work: the next rounds avoid it. `down`: it did not
    /// answer, and the pool marks it down.
    pub(super) fn failed(&mut self, host: String, error: String, down: bool) {
        if down {
            self.pool.mark_down(&host, &error);
        }
        self.req.avoid.push(host);
        self.last = error;
    }

    /// The error of the last failed round.
    pub(super) fn last_error(&self) -> &str {
        &self.last
    }
}

/// The one parallel loop over volumes: runs `each` over `items`, `parallelism` at once, to the
/// end of every one, and returns the worst stop. An abandon or a fatal stop tells the others to
/// stop (`run.cancel`): the operation will not go forward.
pub(super) async fn in_parallel<I, Fut>(
    run: &Run<'_>,
    items: Vec<I>,
    parallelism: usize,
    each: impl FnMut(I) -> Fut,
) -> Step
where
    Fut: Future<Output = Step>,
{
    let mut results = futures::stream::iter(items)
        .map(each)
        .buffer_unordered(parallelism);
    let mut worst: Option<Stop> = None;
    while let Some(r) = results.next().await {
        let Err(stop) = r else { continue };
        if matches!(stop, Stop::Abandon(_) | Stop::Fatal(_)) {
            run.cancel.store(true, Ordering::Relaxed);
        }
        worst = Some(worse(worst, stop));
    }
    worst.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn name(s: &Stop) -> &'static str {
        match s {
            Stop::Abandon(_) => "abandon",
            Stop::Later(_) => "later",
            Stop::Refused(_) => "refused",
            Stop::Fatal(_) => "fatal",
        }
    }

    #[test]
    fn the_worst_stop_decides() {
        let later = || Stop::Later("l".into());
        let abandon = |m: &str| Stop::Abandon(m.into());
        let fatal = || Stop::Fatal(Error::Usage("f".into()));
        assert_eq!(name(&worse(None, later())), "later");
        assert_eq!(name(&worse(Some(later()), abandon("a"))), "abandon");
        assert_eq!(name(&worse(Some(abandon("a")), later())), "abandon");
        assert_eq!(name(&worse(Some(fatal()), abandon("a"))), "fatal");
        assert_eq!(name(&worse(Some(abandon("a")), fatal())), "fatal");
        let Stop::Abandon(first) = worse(Some(abandon("first")), abandon("second")) else {
            unreachable!()
        };
        assert_eq!(first, "first");
    }
}
