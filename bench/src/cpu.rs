//! CPU time of the processes and threads a bench run involves, read from `/proc`, and the
//! ceiling it implies: on a machine where the load generator and every node share the cores,
//! a run that spends C core-seconds per GiB cannot exceed `cores / C` GiB/s however well the
//! work is scheduled. Kernel threads working for the run (writeback, part of the network
//! stack) are not counted, so the cost is a lower bound and the ceiling an upper one.

use std::time::Instant;

use crate::report::round;

/// User + system CPU seconds of a process so far (`/proc/<pid>/stat`; `pid` may be `self`).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// The `stat` file of a process's thread named `name` (`/proc/<pid>/task/<tid>/stat`).
pub fn thread_stat(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim() == name).then(|| task.path().join("stat").to_string_lossy().into_owned())
    })
}

/// User + system CPU seconds so far of the process or thread whose `stat` file is `path`.
pub fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After "pid (comm)": state is field 3, utime 14, stime 15.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// CPU seconds of named processes at one moment, to subtract from a later reading.
pub struct Sample {
    at: Instant,
    processes: Vec<(String, String, Option<f64>)>,
}

impl Sample {
    /// `processes`: (name to report, pid or `self`).
    pub fn take(processes: &[(String, String)]) -> Sample {
        let processes = processes.iter().map(|(name, pid)| (name.clone(), pid.clone(), cpu_seconds(pid))).collect();
        Sample { at: Instant::now(), processes }
    }

    /// Cores each process kept busy since this sample. Empty when any process cannot be read
    /// (one restarted, say): a partial sum would understate the cost.
    pub fn cores_since(&self) -> Vec<(String, f64)> {
        let elapsed = self.at.elapsed().as_secs_f64();
        let cores: Option<Vec<(String, f64)>> = self
            .processes
            .iter()
            .map(|(name, pid, before)| Some((name.clone(), (cpu_seconds(pid)? - (*before)?) / elapsed)))
            .collect();
        cores.unwrap_or_default()
    }
}

/// Cores busy in all, over a [`Sample::cores_since`] list.
pub fn total(cores: &[(String, f64)]) -> f64 {
    cores.iter().map(|(_, busy)| busy).sum()
}

/// Core-seconds spent per GiB moved, and the throughput (MiB/s) at which that cost would keep
/// every one of `cores` busy.
pub fn cost_and_ceiling(busy_cores: f64, mib_s: f64, cores: usize) -> Option<(f64, f64)> {
    (busy_cores > 0.0 && mib_s > 0.0).then(|| {
        let per_gib = busy_cores / (mib_s / 1024.0);
        (per_gib, cores as f64 / per_gib * 1024.0)
    })
}

/// Cores this machine offers.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `"3.91 core-s/GiB; 2 cores allow at most 523.8 MiB/s (this run: 54 %)"`.
pub fn ceiling_summary(busy_cores: f64, mib_s: f64, cores: usize) -> String {
    match cost_and_ceiling(busy_cores, mib_s, cores) {
        Some((per_gib, ceiling)) => format!(
            "{per_gib:.2} core-s/GiB; {cores} cores allow at most {ceiling:.1} MiB/s (this run: {:.0} %)",
            100.0 * mib_s / ceiling
        ),
        None => "?".to_string(),
    }
}

/// The cost and ceiling as JSON figures (`cpu_core_s_per_gib`, `cpu_ceiling_mib_s`; null when
/// unknown).
pub fn json_figures(busy_cores: f64, mib_s: f64, cores: usize) -> (Option<f64>, Option<f64>) {
    cost_and_ceiling(busy_cores, mib_s, cores)
        .map_or((None, None), |(cost, ceiling)| (Some(round(cost, 2)), Some(round(ceiling, 1))))
}

/// `"1.07 = n1 leader 0.80 + client 0.27"`.
pub fn summary(cores: &[(String, f64)]) -> String {
    if cores.is_empty() {
        return "?".to_string();
    }
    let total = total(cores);
    let parts: Vec<String> = cores.iter().map(|(name, busy)| format!("{name} {busy:.2}")).collect();
    format!("{total:.2} = {}", parts.join(" + "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds("self").is_some());
    }

    #[test]
    fn the_ceiling_is_the_rate_that_fills_every_core() {
        let (per_gib, ceiling) = cost_and_ceiling(1.5, 512.0, 2).unwrap();
        assert!((per_gib - 3.0).abs() < 1e-9);
        assert!((ceiling - 682.666).abs() < 0.01);
        assert!(cost_and_ceiling(0.0, 512.0, 2).is_none());
    }
}
