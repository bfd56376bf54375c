//! What a process costs, read from `/proc`: CPU time (user + system, all
//! threads), resident memory and thread count. Linux only; the parsing is
//! pure and tested on its own.

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// User plus system CPU time of all its threads so far.
    pub cpu: Duration,
    pub rss_bytes: u64,
    pub threads: u64,
}

/// Reads process `pid` now.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_cpu_ticks(&stat)
        .ok_or_else(|| anyhow::anyhow!("cannot read CPU times from /proc/{pid}/stat"))?;
    let (rss_kib, threads) = parse_status(&status)
        .ok_or_else(|| anyhow::anyhow!("cannot read VmRSS and Threads from /proc/{pid}/status"))?;
    Ok(Sample {
        cpu: ticks_to_duration(ticks, clock_ticks_per_second()),
        rss_bytes: rss_kib * 1024,
        threads,
    })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted
/// after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name come field 3 (state) onwards: utime is field 14.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` (KiB) and `Threads` of `/proc/<pid>/status`.
fn parse_status(status: &str) -> Option<(u64, u64)> {
    let value = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((value("VmRSS:")?, value("Threads:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_name_with_spaces() {
        let stat = "4242 (tokio worker (1)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    150 30 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(180));
    }

    #[test]
    fn resident_memory_and_threads_come_from_status() {
        let status = "Name:\twasmhook\nVmPeak:\t  900 kB\nVmRSS:\t   51200 kB\nThreads:\t37\n";
        assert_eq!(parse_status(status), Some((51200, 37)));
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn ticks_become_time() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let now = sample(std::process::id()).unwrap();
        assert!(now.threads >= 1);
        assert!(now.rss_bytes > 0);
    }
}
