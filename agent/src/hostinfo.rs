//! Host facts VDSM puts in `Host.getCapabilities` and `Host.getStats` that sdm can report
//! truthfully, read from `/proc` and `/sys` (a fact that cannot be read is left out, never
//! guessed): CPUs, memory, swap, load, boot time, the kernel's command line.

use std::collections::HashMap;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `/proc/meminfo` values in KiB.
fn meminfo() -> HashMap<String, u64> {
    read("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kib = v.split_whitespace().next()?.parse().ok()?;
            Some((k.trim().to_string(), kib))
        })
        .collect()
}

/// Online logical CPUs as the kernel lists them ("0-3,6" becomes "0,1,2,3,6").
pub fn online_cpus() -> Option<Vec<u32>> {
    let text = read("/sys/devices/system/cpu/online")?;
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// What `Host.getCapabilities` adds.
pub struct Capabilities {
    /// Logical CPUs.
    pub cpu_threads: Option<String>,
    /// Online logical CPUs, comma-separated.
    pub online_cpus: Option<String>,
    /// Memory installed, MiB.
    pub mem_size: Option<String>,
    /// Kernel command line.
    pub kernel_args: Option<String>,
}

/// Reads the host's capabilities.
pub fn capabilities() -> Capabilities {
    let cpus = online_cpus();
    Capabilities {
        cpu_threads: cpus.as_ref().map(|c| c.len().to_string()),
        online_cpus: cpus.map(|c| c.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        mem_size: meminfo()
            .get("MemTotal")
            .map(|kib| (kib / 1024).to_string()),
        kernel_args: read("/proc/cmdline").map(|s| s.trim().to_string()),
    }
}

/// What `Host.getStats` adds.
pub struct Stats {
    /// One-minute load average.
    pub cpu_load: Option<String>,
    /// Memory available, MiB.
    pub mem_free: Option<u64>,
    /// Memory in use, percent.
    pub mem_used: Option<String>,
    /// Swap, MiB.
    pub swap_total: Option<u64>,
    /// Free swap, MiB.
    pub swap_free: Option<u64>,
    /// Boot time, epoch seconds.
    pub boot_time: Option<String>,
}

/// Reads the host's statistics.
pub fn stats() -> Stats {
    let mem = meminfo();
    let mib = |k: &str| mem.get(k).map(|kib| kib / 1024);
    let used = match (mem.get("MemTotal"), mem.get("MemAvailable")) {
        (Some(&total), Some(&avail)) if total > 0 => {
            Some((100 * total.saturating_sub(avail) / total).to_string())
        }
        _ => None,
    };
    Stats {
        cpu_load: read("/proc/loadavg")
            .and_then(|s| s.split_whitespace().next().map(str::to_string)),
        mem_free: mib("MemAvailable"),
        mem_used: used,
        swap_total: mib("SwapTotal"),
        swap_free: mib("SwapFree"),
        boot_time: read("/proc/stat").and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .map(|v| v.trim().to_string())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_this_host() {
        let c = capabilities();
        let threads: usize = c.cpu_threads.unwrap().parse().unwrap();
        assert!(threads >= 1);
        assert_eq!(c.online_cpus.unwrap().split(',').count(), threads);
        assert!(c.mem_size.unwrap().parse::<u64>().unwrap() > 0);
        let s = stats();
        assert!(s.cpu_load.unwrap().parse::<f64>().is_ok());
        assert!(s.boot_time.unwrap().parse::<u64>().unwrap() > 1_000_000_000);
        let used: u64 = s.mem_used.unwrap().parse().unwrap();
        assert!(used <= 100);
    }
}
