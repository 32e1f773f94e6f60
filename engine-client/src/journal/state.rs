//! What the journal's records add up to: the state of each operation, replayed record by
//! record. Pure logic with no storage behind it, shared by every journal store.

use std::collections::BTreeMap;

use sdm_proto::{JobError, Uuid};
use serde::Serialize;

use crate::op::{MovePolicy, OpKind, Outcome, VolumeSpec};

use super::record::{Entry, Record};

/// One copy attempt of a volume, as the journal knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttemptState {
    /// 1-based attempt number.
    pub attempt: u32,
    /// Host URL.
    pub host: String,
    /// Job id.
    pub job: Uuid,
    /// `G` of the attempt.
    pub generation: u16,
    /// When it was submitted.
    pub started_ms: u64,
    /// When its verdict was recorded.
    pub ended_ms: Option<u64>,
    /// Its verdict: None while undecided.
    pub done: Option<bool>,
    /// It was fenced.
    pub fenced: bool,
    /// Why it failed.
    pub error: Option<JobError>,
    /// Where its copy started on the host (resumed or full), when the host said.
    pub start: Option<sdm_proto::CopyStart>,
}

/// A volume's copy, as the journal knows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CopyState {
    /// Attempts in order.
    pub attempts: Vec<AttemptState>,
    /// Destination generation after the successful attempt.
    pub done_generation: Option<u16>,
    /// Verified checksum.
    pub checksum: Option<String>,
}

impl CopyState {
    /// The last attempt if it has no verdict yet (a job to follow after a restart).
    pub fn undecided(&self) -> Option<&AttemptState> {
        self.attempts.last().filter(|a| a.done.is_none())
    }
}

/// The latest deletion of an operation, as the journal knows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeleteState {
    /// Domain deleted from.
    pub sd: Uuid,
    /// Host URL.
    pub host: String,
    /// Job id.
    pub job: Uuid,
    /// Ended (successfully or not).
    pub ended: bool,
    /// Ended with the image gone.
    pub done: bool,
    /// Why not.
    pub error: Option<JobError>,
}

/// An operation as replayed from its records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpState {
    /// Operation id.
    pub op: Uuid,
    /// What it does.
    pub kind: OpKind,
    /// The image.
    pub image: Uuid,
    /// Source domain.
    pub src_sd: Uuid,
    /// Destination domain.
    pub dst_sd: Option<Uuid>,
    /// The caller's policy.
    pub policy: MovePolicy,
    /// The source's volumes, parents first.
    pub volumes: Vec<VolumeSpec>,
    /// When it began.
    pub started_ms: u64,
    /// The destination structure exists.
    pub cloned: bool,
    /// Copies by volume.
    pub copies: BTreeMap<Uuid, CopyState>,
    /// When it committed (the destination became the disk).
    pub committed_ms: Option<u64>,
    /// The source volumes were marked ILLEGAL.
    pub source_illegal: bool,
    /// The latest deletion.
    pub delete: Option<DeleteState>,
    /// Why it is being rolled back.
    pub rollback: Option<String>,
    /// How it ended, with details.
    pub end: Option<(Outcome, Option<String>)>,
    /// When it ended.
    pub ended_ms: Option<u64>,
}

impl OpState {
    fn begin(at_ms: u64, rec: &Record) -> Option<OpState> {
        let Record::Begin {
            op,
            kind,
            image,
            src_sd,
            dst_sd,
            policy,
            volumes,
        } = rec
        else {
            return None;
        };
        Some(OpState {
            op: op.clone(),
            kind: *kind,
            image: image.clone(),
            src_sd: src_sd.clone(),
            dst_sd: dst_sd.clone(),
            policy: policy.clone(),
            volumes: volumes.clone(),
            started_ms: at_ms,
            cloned: false,
            copies: volumes
                .iter()
                .map(|v| (v.vol_id.clone(), CopyState::default()))
                .collect(),
            committed_ms: None,
            source_illegal: false,
            delete: None,
            rollback: None,
            end: None,
            ended_ms: None,
        })
    }

    /// True once committed.
    pub fn committed(&self) -> bool {
        self.committed_ms.is_some()
    }

    /// True while something is left to do.
    pub fn unfinished(&self) -> bool {
        self.end.is_none()
    }

    fn apply(&mut self, at_ms: u64, rec: &Record) {
        match rec {
            Record::Begin { .. } => {}
            Record::Cloned { .. } => self.cloned = true,
            Record::CopySubmit {
                vol,
                host,
                job,
                generation,
                attempt,
                ..
            } => {
                self.copies
                    .entry(vol.clone())
                    .or_default()
                    .attempts
                    .push(AttemptState {
                        attempt: *attempt,
                        host: host.clone(),
                        job: job.clone(),
                        generation: *generation,
                        started_ms: at_ms,
                        ended_ms: None,
                        done: None,
                        fenced: false,
                        error: None,
                        start: None,
                    });
            }
            Record::CopyEnd {
                vol,
                job,
                done,
                generation,
                fenced,
                error,
                start,
                ..
            } => {
                let c = self.copies.entry(vol.clone()).or_default();
                if let Some(a) = c.attempts.iter_mut().rev().find(|a| &a.job == job) {
                    a.ended_ms = Some(at_ms);
                    a.done = Some(*done);
                    a.fenced = *fenced;
                    a.error = error.clone();
                    a.start = start.clone();
                }
                if *done {
                    c.done_generation = *generation;
                }
            }
            Record::Verified { vol, checksum, .. } => {
                self.copies.entry(vol.clone()).or_default().checksum = Some(checksum.clone());
            }
            Record::Commit { .. } => self.committed_ms = Some(at_ms),
            Record::SourceIllegal { .. } => self.source_illegal = true,
            Record::DeleteSubmit { sd, host, job, .. } => {
                self.delete = Some(DeleteState {
                    sd: sd.clone(),
                    host: host.clone(),
                    job: job.clone(),
                    ended: false,
                    done: false,
                    error: None,
                });
            }
            Record::DeleteEnd {
                sd, done, error, ..
            } => {
                let d = self.delete.get_or_insert_with(|| DeleteState {
                    sd: sd.clone(),
                    host: String::new(),
                    job: Uuid::blank(),
                    ended: false,
                    done: false,
                    error: None,
                });
                d.sd = sd.clone();
                d.ended = true;
                d.done = *done;
                d.error = error.clone();
            }
            Record::Rollback { reason, .. } => self.rollback = Some(reason.clone()),
            Record::End {
                outcome, message, ..
            } => {
                self.end = Some((*outcome, message.clone()));
                self.ended_ms = Some(at_ms);
            }
        }
    }
}

/// Replays entries into operation states, in order of beginning.
pub fn replay(entries: &[Entry]) -> Vec<OpState> {
    let mut ops: BTreeMap<Uuid, OpState> = BTreeMap::new();
    let mut order = Vec::new();
    for e in entries {
        if let Some(st) = OpState::begin(e.at_ms, &e.rec) {
            order.push(st.op.clone());
            ops.insert(st.op.clone(), st);
        } else if let Some(st) = ops.get_mut(e.rec.op()) {
            st.apply(e.at_ms, &e.rec);
        } else {
            tracing::warn!(op = %e.rec.op(), record = e.rec.name(), "journal record of an operation that never began; ignored");
        }
    }
    order.into_iter().filter_map(|id| ops.remove(&id)).collect()
}

/// The operations a journal knows: replayed from its stored entries, then kept current record
/// by record as they are appended.
#[derive(Debug, Default)]
pub(super) struct Ops {
    ops: Vec<OpState>,
}

impl Ops {
    /// The operations of `entries` that have something left to do (the state a journal starts
    /// from: ended operations are not taken up again).
    pub(super) fn unfinished_of(entries: &[Entry]) -> Ops {
        Ops {
            ops: replay(entries)
                .into_iter()
                .filter(OpState::unfinished)
                .collect(),
        }
    }

    /// True when `op` began (records of unknown operations are refused).
    pub(super) fn knows(&self, op: &Uuid) -> bool {
        self.ops.iter().any(|o| &o.op == op)
    }

    /// Applies an appended entry: a `Begin` adds its operation, any other record updates its
    /// own.
    pub(super) fn apply(&mut self, entry: &Entry) {
        if let Some(st) = OpState::begin(entry.at_ms, &entry.rec) {
            self.ops.push(st);
        } else if let Some(st) = self.ops.iter_mut().find(|o| &o.op == entry.rec.op()) {
            st.apply(entry.at_ms, &entry.rec);
        }
    }

    /// Replaces what is known of `op` by the replay of `entries` (its records as a shared
    /// store holds them after a claim).
    pub(super) fn replace(&mut self, op: &Uuid, entries: &[Entry]) {
        let fresh = replay(entries).into_iter().find(|o| &o.op == op);
        match (self.ops.iter().position(|o| &o.op == op), fresh) {
            (Some(i), Some(st)) => self.ops[i] = st,
            (Some(i), None) => {
                self.ops.remove(i);
            }
            (None, Some(st)) => self.ops.push(st),
            (None, None) => {}
        }
    }

    /// The operation `op`, if known.
    pub(super) fn get(&self, op: &Uuid) -> Option<OpState> {
        self.ops.iter().find(|o| &o.op == op).cloned()
    }

    /// Every operation with something left to do, in order of beginning.
    pub(super) fn unfinished(&self) -> Vec<OpState> {
        self.ops
            .iter()
            .filter(|o| o.unfinished())
            .cloned()
            .collect()
    }

    /// Forgets ended operations but the `keep` most recently ended ones (0: all of them), and
    /// returns how many were forgotten. Unfinished ones always stay.
    pub(super) fn forget_ended(&mut self, keep: usize) -> usize {
        let before = self.ops.len();
        let mut ended: Vec<u64> = self.ops.iter().filter_map(|o| o.ended_ms).collect();
        ended.sort_unstable_by(|a, b| b.cmp(a));
        let cutoff = match keep {
            0 => None,
            n if ended.len() <= n => Some(0),
            n => Some(ended[n - 1]),
        };
        self.ops.retain(|o| {
            o.unfinished() || cutoff.is_some_and(|c| o.ended_ms.is_some_and(|e| e >= c))
        });
        before - self.ops.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::sample_begin as begin;

    fn entries(recs: Vec<Record>) -> Vec<Entry> {
        recs.into_iter()
            .enumerate()
            .map(|(i, rec)| Entry {
                v: 1,
                at_ms: i as u64,
                rec,
            })
            .collect()
    }

    fn end(op: &Uuid) -> Record {
        Record::End {
            op: op.clone(),
            outcome: Outcome::Committed,
            message: None,
        }
    }

    #[test]
    fn replay_tracks_attempts_and_deletions() {
        let a = Uuid::new_v4();
        let Record::Begin { volumes, .. } = begin(&a) else {
            unreachable!()
        };
        let vol = volumes[0].vol_id.clone();
        let mut b = begin(&a);
        if let Record::Begin { volumes: v, .. } = &mut b {
            v[0].vol_id = vol.clone();
        }
        let (j1, j2) = (Uuid::new_v4(), Uuid::new_v4());
        let recs = vec![
            b,
            Record::CopySubmit {
                op: a.clone(),
                vol: vol.clone(),
                host: "h1".into(),
                job: j1.clone(),
                generation: 0,
                attempt: 1,
            },
            Record::CopyEnd {
                op: a.clone(),
                vol: vol.clone(),
                job: j1,
                done: false,
                generation: None,
                fenced: true,
                error: None,
                start: None,
            },
            Record::CopySubmit {
                op: a.clone(),
                vol: vol.clone(),
                host: "h2".into(),
                job: j2.clone(),
                generation: 3,
                attempt: 2,
            },
        ];
        let ops = replay(&entries(recs));
        let c = &ops[0].copies[&vol];
        assert_eq!(c.attempts.len(), 2);
        assert!(c.attempts[0].fenced);
        assert_eq!(c.undecided().unwrap().job, j2);
        assert_eq!(c.undecided().unwrap().generation, 3);
    }

    #[test]
    fn phases_and_deletions_replay_in_order() {
        let (a, sd, job) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let recs = vec![
            begin(&a),
            Record::Cloned { op: a.clone() },
            Record::Commit { op: a.clone() },
            Record::SourceIllegal { op: a.clone() },
            Record::DeleteSubmit {
                op: a.clone(),
                sd: sd.clone(),
                host: "h".into(),
                job: job.clone(),
            },
        ];
        let st = &replay(&entries(recs.clone()))[0];
        assert!(st.cloned && st.committed() && st.source_illegal && st.unfinished());
        let d = st.delete.as_ref().unwrap();
        assert!(!d.ended && d.job == job && d.sd == sd);
        assert_eq!(st.committed_ms, Some(2));

        let mut more = recs;
        more.push(Record::DeleteEnd {
            op: a.clone(),
            sd: sd.clone(),
            done: true,
            error: None,
        });
        more.push(end(&a));
        let st = &replay(&entries(more))[0];
        let d = st.delete.as_ref().unwrap();
        assert!(d.ended && d.done && d.host == "h");
        assert_eq!(st.end, Some((Outcome::Committed, None)));
        assert!(!st.unfinished());
        assert_eq!(st.ended_ms, Some(6));
    }

    #[test]
    fn a_deletion_ended_without_its_submission_still_counts() {
        // A rollback that found the image already gone records only its end.
        let (a, sd) = (Uuid::new_v4(), Uuid::new_v4());
        let recs = vec![
            begin(&a),
            Record::Rollback {
                op: a.clone(),
                reason: "r".into(),
            },
            Record::DeleteEnd {
                op: a.clone(),
                sd: sd.clone(),
                done: true,
                error: None,
            },
        ];
        let st = &replay(&entries(recs))[0];
        assert_eq!(st.rollback.as_deref(), Some("r"));
        let d = st.delete.as_ref().unwrap();
        assert!(d.ended && d.done && d.sd == sd && d.job.is_blank());
    }

    #[test]
    fn records_of_operations_that_never_began_are_ignored() {
        let (a, stray) = (Uuid::new_v4(), Uuid::new_v4());
        let recs = vec![
            Record::Cloned { op: a.clone() },
            begin(&a),
            Record::Commit { op: stray },
        ];
        let ops = replay(&entries(recs));
        assert_eq!(ops.len(), 1);
        assert!(!ops[0].cloned, "a record before its begin is not applied");
    }

    #[test]
    fn ops_start_from_the_unfinished_and_follow_appends() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut ops = Ops::unfinished_of(&entries(vec![begin(&a), begin(&b), end(&b)]));
        assert!(ops.knows(&a) && !ops.knows(&b));
        ops.apply(&Entry {
            v: 1,
            at_ms: 10,
            rec: begin(&c),
        });
        ops.apply(&Entry {
            v: 1,
            at_ms: 11,
            rec: Record::Cloned { op: c.clone() },
        });
        assert!(ops.get(&c).unwrap().cloned);
        let order: Vec<Uuid> = ops.unfinished().into_iter().map(|o| o.op).collect();
        assert_eq!(order, vec![a.clone(), c.clone()]);
        ops.apply(&Entry {
            v: 1,
            at_ms: 12,
            rec: end(&a),
        });
        assert!(ops.get(&a).unwrap().end.is_some(), "ended, still readable");
        assert_eq!(ops.unfinished().len(), 1);
    }

    #[test]
    fn a_claimed_operation_replaces_what_memory_had() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut ops = Ops::unfinished_of(&entries(vec![begin(&a)]));
        // Another engine went on with `a`; its records replace the stale state.
        let stored = entries(vec![
            begin(&a),
            Record::Cloned { op: a.clone() },
            Record::Commit { op: a.clone() },
        ]);
        ops.replace(&a, &stored);
        let st = ops.get(&a).unwrap();
        assert!(st.cloned && st.committed());
        assert_eq!(ops.unfinished().len(), 1);
        // An operation first seen by its claim is added.
        ops.replace(&b, &entries(vec![begin(&b)]));
        assert!(ops.knows(&b));
        // Records of another operation only do not add one.
        ops.replace(&Uuid::new_v4(), &stored);
        assert_eq!(ops.unfinished().len(), 2);
    }

    #[test]
    fn forgetting_keeps_the_most_recently_ended_and_every_unfinished() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut ops = Ops::unfinished_of(&entries(ids.iter().map(begin).collect()));
        for (i, id) in ids.iter().take(4).enumerate() {
            ops.apply(&Entry {
                v: 1,
                at_ms: 100 + i as u64,
                rec: end(id),
            });
        }
        assert_eq!(ops.forget_ended(2), 2);
        assert!(ops.get(&ids[0]).is_none() && ops.get(&ids[1]).is_none());
        assert!(ops.get(&ids[2]).is_some() && ops.get(&ids[3]).is_some());
        assert!(ops.get(&ids[4]).unwrap().unfinished());
        assert_eq!(ops.forget_ended(5), 0, "fewer ended than kept");
        assert_eq!(ops.forget_ended(0), 2, "0 forgets every ended one");
        assert!(ops.knows(&ids[4]) && ops.unfinished().len() == 1);
    }
}
