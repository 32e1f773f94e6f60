//! The progress display of the commands that use every agent at once: a bar per volume (or
//! job) plus a total on stderr, plain lines when stderr is not a terminal, nothing but the
//! final report with `--json`. It is the [`EventSink`] of `sdmctl disk` and `resume`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sdm_client::{CopyStartReport, Decision, Event, EventSink, OpKind};
use sdm_proto::Uuid;

use crate::output::{human_bytes, short};

/// Progress display: a bar per volume and a total, on stderr; plain lines when stderr is not a
/// terminal; nothing but the final report with `--json`.
pub struct Ui {
    mp: MultiProgress,
    show: bool,
    plain: bool,
    state: Mutex<UiState>,
}

#[derive(Default)]
struct UiState {
    total: Option<ProgressBar>,
    vols: HashMap<Uuid, (ProgressBar, u64)>,
    delete: Option<ProgressBar>,
}

impl Ui {
    /// A display for `--json` or not.
    pub fn new(json: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let mp = MultiProgress::with_draw_target(if tty && !json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ui {
            mp,
            show: tty && !json,
            plain: !tty && !json,
            state: Mutex::new(UiState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UiState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn say(&self, line: String) {
        if self.show {
            self.mp.suspend(|| eprintln!("{line}"));
        } else if self.plain {
            eprintln!("{line}");
        }
    }

    /// A new bar under the others.
    pub fn bar(&self, len: u64, template: &str) -> ProgressBar {
        let b = self.mp.add(ProgressBar::new(len));
        b.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    }

    fn update_total(&self, st: &UiState) {
        if let Some(t) = &st.total {
            t.set_position(st.vols.values().map(|(_, done)| *done).sum());
        }
    }

    /// Removes every bar (before the report is printed).
    pub fn clear(&self) {
        let st = self.state();
        for (b, _) in st.vols.values() {
            b.finish_and_clear();
        }
        if let Some(t) = &st.total {
            t.finish_and_clear();
        }
        if let Some(d) = &st.delete {
            d.finish_and_clear();
        }
        let _ = self.mp.clear();
    }
}

/// A volume's (or a job's) bar.
pub const VOL_TEMPLATE: &str = "{prefix:>9} [{bar:30}] {percent:>3}% {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta:>4} {msg}";
const TOTAL_TEMPLATE: &str = "{prefix:>9} [{bar:30.bold}] {percent:>3}% {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta:>4} {msg}";

fn describe(d: &Decision) -> Option<String> {
    Some(match d {
        Decision::Job { .. } => return None,
        Decision::HostUnreachable { host, .. } => {
            format!("{host} does not answer; asking the volume")
        }
        Decision::JobMissing { host } => format!("{host} does not know the job; asking the volume"),
        Decision::NoObserver { error } => format!("cannot read the destination: {error}"),
        Decision::LeaseHeld { .. } => "lease held: still running".into(),
        Decision::GenerationDone { generation, .. } => format!("generation {generation}: done"),
        Decision::GenerationFenced { generation, .. } => {
            format!("generation {generation}: fenced, will retry")
        }
        Decision::Fencing { from, to, via, .. } => {
            format!("fencing generation {from} -> {to} via {via}")
        }
        Decision::FenceEnded { outcome, .. } => format!("fence {outcome}"),
        Decision::Aborting { host } => format!("aborting on {host}"),
    })
}

impl EventSink for Ui {
    fn event(&self, e: &Event) {
        let mut st = self.state();
        match e {
            Event::Started {
                kind,
                image,
                volumes,
                resumed,
                ..
            } => {
                self.say(format!(
                    "{}{kind} of image {image}: {} volume{}, {}",
                    if *resumed { "resuming " } else { "" },
                    volumes.len(),
                    if volumes.len() == 1 { "" } else { "s" },
                    human_bytes(volumes.iter().map(|v| v.bytes).sum())
                ));
                if *kind != OpKind::Delete {
                    for v in volumes {
                        let b = self.bar(v.bytes, VOL_TEMPLATE);
                        b.set_prefix(short(&v.vol_id).to_string());
                        b.set_message("waiting");
                        st.vols.insert(v.vol_id.clone(), (b, 0));
                    }
                    let t = self.bar(volumes.iter().map(|v| v.bytes).sum(), TOTAL_TEMPLATE);
                    t.set_prefix("total");
                    st.total = Some(t);
                }
            }
            Event::TakenOver { op, from, epoch } => {
                self.say(format!(
                    "operation {op}: taken over from engine {from} (epoch {epoch})"
                ));
            }
            Event::Phase { phase, .. } => {
                if let Some(t) = &st.total {
                    t.set_message(phase.to_string());
                }
            }
            Event::CopySubmitted {
                vol,
                host,
                attempt,
                generation,
                ..
            } => {
                if let Some((b, done)) = st.vols.get_mut(vol) {
                    b.reset();
                    *done = 0;
                    b.set_message(format!(
                        "copying on {} (attempt {attempt}, G={generation})",
                        host.trim_start_matches("http://")
                    ));
                }
                self.update_total(&st);
            }
            Event::CopyProgress {
                vol,
                bytes_done,
                bytes_total,
                ..
            } => {
                if let Some((b, done)) = st.vols.get_mut(vol) {
                    if *bytes_total > 0 {
                        b.set_length(*bytes_total);
                    }
                    b.set_position(*bytes_done);
                    *done = *bytes_done;
                }
                self.update_total(&st);
            }
            Event::Recovery { vol, decision, .. } => {
                if let Some(text) = describe(decision) {
                    if let Some((b, _)) = st.vols.get(vol) {
                        b.set_message(text.clone());
                    }
                    if !matches!(decision, Decision::LeaseHeld { .. }) {
                        self.say(format!("{}: {text}", short(vol)));
                    }
                }
            }
            Event::CopyEnded {
                vol,
                done,
                fenced,
                error,
                start,
                ..
            } => {
                if let Some((b, d)) = st.vols.get_mut(vol) {
                    if *done {
                        let len = b.length().unwrap_or(0);
                        b.set_position(len);
                        *d = len;
                        match start {
                            Some(s @ CopyStartReport::Resumed { .. }) => {
                                b.set_message(format!("copied ({s})"));
                                self.say(format!("{}: {s}", short(vol)));
                            }
                            _ => b.set_message("copied"),
                        }
                    } else {
                        let why = if *fenced {
                            "lost and fenced".to_string()
                        } else {
                            error.clone().unwrap_or_default()
                        };
                        b.set_message(format!("attempt failed: {why}"));
                        self.say(format!("{}: attempt failed: {why}", short(vol)));
                    }
                }
                self.update_total(&st);
            }
            Event::Verified { vol, checksum, .. } => {
                if let Some((b, _)) = st.vols.get(vol) {
                    b.set_message(format!(
                        "verified sha256 {}",
                        &checksum[..12.min(checksum.len())]
                    ));
                }
            }
            Event::TargetReady { .. } => {
                self.say("destination committed: the disk is usable there".into());
                if let Some(t) = &st.total {
                    t.set_message("committed");
                }
            }
            Event::DeleteSubmitted { sd, host, .. } => {
                // Progress shows only once a wipe reports its size.
                let d = self.bar(0, "{prefix:>9} {msg}");
                d.set_prefix("delete");
                d.set_message(format!(
                    "{} on {}",
                    short(sd),
                    host.trim_start_matches("http://")
                ));
                if let Some(old) = st.delete.replace(d) {
                    old.finish_and_clear();
                }
            }
            Event::DeleteProgress {
                bytes_done,
                bytes_total,
                ..
            } => {
                if let (Some(d), true) = (&st.delete, *bytes_total > 0) {
                    if d.length() == Some(0) {
                        d.set_style(
                            ProgressStyle::with_template(VOL_TEMPLATE)
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                    }
                    d.set_length(*bytes_total);
                    d.set_position(*bytes_done);
                }
            }
            Event::DeleteEnded {
                sd, done, error, ..
            } => {
                if let Some(d) = &st.delete {
                    d.set_message(if *done {
                        "deleted".to_string()
                    } else {
                        "not deleted".to_string()
                    });
                }
                if !done {
                    self.say(format!(
                        "deletion from {} failed: {}",
                        short(sd),
                        error.clone().unwrap_or_default()
                    ));
                }
            }
            Event::Finished { .. } => {}
        }
    }
}
