//! The engine's counters as an agent logs them on its "copy finished" line: what a resumed
//! copy really read and wrote, seen from outside the process.

use sdm_proto::Uuid;

/// (resumed_from, bytes_read, bytes_written) of the last "copy finished" line for `vol` in an
/// agent's log, or None when that agent never finished a copy into it.
pub fn try_copy_counters(log: &str, vol: &Uuid) -> Option<(u64, u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("copy finished") && l.contains(vol.as_str()))?;
    let num = |key: &str| -> u64 {
        let at = line.find(&format!("{key}=")).expect(key) + key.len() + 1;
        line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    Some((num("resumed_from"), num("bytes_read"), num("bytes_written")))
}

/// [`try_copy_counters`] of a copy that must have finished.
pub fn copy_counters(log: &str, vol: &Uuid) -> (u64, u64, u64) {
    try_copy_counters(log, vol)
        .unwrap_or_else(|| panic!("no copy finished line for {vol} in:\n{log}"))
}
