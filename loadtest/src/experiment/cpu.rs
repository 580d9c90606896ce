//! CPU accounting for the calibration section: how much of the machine the load generator
//! itself used while it measured. On a 2-core machine that also runs the server and its
//! databases, a generator that needs more CPU per request than `wrk` caps its own figures;
//! the report shows that share instead of asserting it.
//!
//! Linux only (`/proc`); elsewhere the figures are absent. `/proc` counts CPU time in
//! USER_HZ ticks, which Linux fixes at 100 per second for user space.

use std::time::Instant;

use serde::Serialize;

const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    at: Instant,
    /// This process's user + system ticks.
    own: u64,
    /// Reaped children's user + system ticks (wrk, once it has exited).
    children: u64,
    /// Machine-wide busy and total ticks, summed over all cores.
    busy: u64,
    total: u64,
}

/// Whose CPU time counts as the generator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// loadtest itself.
    ThisProcess,
    /// A child process started and waited for in between (wrk).
    Children,
}

/// CPU used between two samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Usage {
    /// The generator's CPU time divided by wall time: 1.0 = one core kept busy.
    pub generator_cores: f64,
    /// Every process on the machine, as a share of all its cores (0..=1).
    pub machine_busy: f64,
    pub cores: usize,
}

pub fn sample() -> Option<Sample> {
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (own, children) = own_ticks(&own)?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, total) = machine_ticks(&stat)?;
    Some(Sample {
        at: Instant::now(),
        own,
        children,
        busy,
        total,
    })
}

pub fn usage(before: Sample, after: Sample, generator: Generator) -> Usage {
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let ticks = match generator {
        Generator::ThisProcess => after.own.saturating_sub(before.own),
        Generator::Children => after.children.saturating_sub(before.children),
    };
    let total = after.total.saturating_sub(before.total).max(1);
    Usage {
        generator_cores: ticks as f64 / TICKS_PER_SEC / wall,
        machine_busy: after.busy.saturating_sub(before.busy) as f64 / total as f64,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// (utime + stime, cutime + cstime) from `/proc/<pid>/stat`. The command name may hold
/// spaces and parentheses, so fields are counted after the last ')'.
fn own_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the man page, so field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some((num(14)? + num(15)?, num(16)? + num(17)?))
}

/// (busy, total) ticks from the aggregate `cpu` line of `/proc/stat`; idle and iowait
/// count as not busy.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_process_ticks_past_a_command_name_with_spaces() {
        let stat = "4242 (load (test) x) S 1 2 3 4 5 6 7 8 9 10 150 50 30 20 20 0 1 0";
        assert_eq!(own_ticks(stat), Some((200, 50)));
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(machine_ticks(stat), Some((150, 1000)));
    }

    #[test]
    fn busy_work_shows_up_as_this_process_cpu() {
        // Spins until /proc has charged this process some CPU time (or gives up after 10 s
        // of wall time), so the check holds however busy the machine is: it asserts that
        // the accounting sees our own work, not how fast we got it. Where /proc cannot be
        // read the accounting measures nothing, and that must fail here, not pass.
        let a = sample().expect("/proc/self/stat and /proc/stat readable (Linux)");
        let start = Instant::now();
        let mut x = 0u64;
        let b = loop {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            let b = sample().expect("second sample");
            if b.own >= a.own + 5 || start.elapsed().as_secs() >= 10 {
                break b;
            }
        };
        std::hint::black_box(x);
        let u = usage(a, b, Generator::ThisProcess);
        assert!(
            b.own >= a.own + 5,
            "no CPU time charged to this process: {u:?}"
        );
        assert!(u.generator_cores > 0.0, "{u:?}");
        assert!((0.0..=1.0).contains(&u.machine_busy), "{u:?}");
    }
}
