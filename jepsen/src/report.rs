//! The run's report in its results folder: `summary.txt` (operations, faults, every anomaly
//! with its events, recovery time, the seed and how to replay it) and `timeline.html` (send
//! latency over time as an SVG scatter plot, fault windows shaded).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::checker::Verdict;
use crate::history::{Event, Function, Kind};
use crate::run::Options;

/// One injected fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: String,
    pub node: u64,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Writes `summary.txt` and `timeline.html`; returns the summary text.
pub fn write(
    dir: &Path,
    options: &Options,
    history: &[Event],
    faults: &[Fault],
    recovery: Duration,
    verdict: &Verdict,
) -> Result<String> {
    let mut text = String::new();
    let nemesis: Vec<String> = options.nemesis.iter().map(|n| format!("{n:?}").to_lowercase()).collect();
    let flags = format!(
        "--workload {} --nemesis {} --nodes {} --time-limit {} --seed {} --network {}",
        options.workload,
        nemesis.join(","),
        options.nodes,
        options.time_limit.as_secs(),
        options.seed,
        format!("{:?}", options.network).to_lowercase()
    );
    writeln!(text, "run: {flags}")?;
    writeln!(
        text,
        "operations: {} events; sends ok {} / fail {} / info {}; polled records {}; final read {} records",
        history.len(),
        verdict.sends_ok,
        verdict.sends_failed,
        verdict.sends_unknown,
        verdict.polled_records,
        verdict.final_read_records
    )?;
    writeln!(text, "faults: {}", faults.len())?;
    for fault in faults {
        writeln!(text, "  {} node {} from {} ms to {} ms", fault.kind, fault.node, fault.start_ms, fault.end_ms)?;
    }
    writeln!(text, "recovery after the final heal: {} ms", recovery.as_millis())?;
    writeln!(text, "liveness: {} acknowledged values were never polled (found by the final read)", verdict.unseen)?;
    writeln!(text, "at-least-once producers' values stored twice (allowed): {}", verdict.at_least_once_duplicates)?;
    if verdict.valid() {
        writeln!(text, "valid: no anomaly")?;
    } else {
        writeln!(text, "INVALID: {} anomalies {:?}", verdict.anomalies.len(), verdict.counts())?;
        for anomaly in &verdict.anomalies {
            writeln!(text, "  {anomaly}")?;
            for index in &anomaly.events {
                if let Some(event) = history.get(*index) {
                    // Long polls are cut: the whole event is in history.jsonl.
                    let line = serde_json::to_string(event)?;
                    let cut: String = line.chars().take(300).collect();
                    writeln!(text, "    {cut}{}", if cut.len() < line.len() { " …" } else { "" })?;
                }
            }
        }
        writeln!(text, "replay: cargo run --release -p jepsen -- {flags}")?;
    }
    std::fs::write(dir.join("summary.txt"), &text)?;
    std::fs::write(dir.join("timeline.html"), timeline(history, faults, options.time_limit))?;
    Ok(text)
}

/// Shading of a fault window by its kind.
fn fault_color(kind: &str) -> &'static str {
    let word = kind.split([' ', ':']).next().unwrap_or("");
    match word {
        "kill" | "disk" | "bitflip" | "truncate" => "#d62728",
        "pause" => "#9467bd",
        "partition" | "delay" | "loss" => "#1f77b4",
        "clock" => "#ff7f0e",
        "membership" => "#2ca02c",
        _ => "#7f7f7f",
    }
}

/// Most send latencies drawn; a longer history is sampled evenly (the throughput plot counts all).
const POINTS_MAX: usize = 30_000;

/// Send latencies over time (ok green, info orange, fail red) and acknowledged sends per
/// second, faults shaded by kind.
fn timeline(history: &[Event], faults: &[Fault], limit: Duration) -> String {
    let (width, height) = (1000.0, 400.0);
    let span = (limit.as_millis() as f64 + 5000.0).max(1.0);
    let mut invoked = std::collections::HashMap::new();
    let mut points = String::new();
    let mut latencies = Vec::new();
    for event in history.iter().filter(|e| e.f == Function::Send) {
        let key = (event.process, event.value);
        if event.kind == Kind::Invoke {
            invoked.insert(key, event.time_ms);
        } else if let Some(start) = invoked.remove(&key) {
            latencies.push((start, event.time_ms.saturating_sub(start).max(1), event.kind));
        }
    }
    let max_latency = latencies.iter().map(|(_, l, _)| *l).max().unwrap_or(1) as f64;
    let y = |latency: u64| height - 20.0 - (latency as f64).ln() / max_latency.ln().max(1.0) * (height - 40.0);
    let mut shading = String::new();
    for fault in faults {
        let x0 = fault.start_ms as f64 / span * width;
        let x1 = fault.end_ms as f64 / span * width;
        let _ = write!(
            shading,
            r#"<rect x="{x0:.1}" y="0" width="{:.1}" height="{height}" fill="{}" opacity="0.25"><title>{} node {}</title></rect>"#,
            (x1 - x0).max(1.0),
            fault_color(&fault.kind),
            fault.kind,
            fault.node
        );
    }
    // Acknowledged sends per second.
    let seconds = (span / 1000.0).ceil() as usize + 1;
    let mut per_second = vec![0u64; seconds];
    for (start, latency, kind) in &latencies {
        if *kind == Kind::Ok {
            let at = ((start + latency) / 1000) as usize;
            if let Some(count) = per_second.get_mut(at) {
                *count += 1;
            }
        }
    }
    let peak = per_second.iter().copied().max().unwrap_or(1).max(1) as f64;
    let throughput_height = 200.0;
    let line: Vec<String> = per_second
        .iter()
        .enumerate()
        .map(|(second, count)| {
            let x = (second as f64 * 1000.0 + 500.0) / span * width;
            let y = throughput_height - 10.0 - *count as f64 / peak * (throughput_height - 20.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let throughput =
        format!(r##"<polyline fill="none" stroke="#2ca02c" stroke-width="1.5" points="{}"/>"##, line.join(" "));
    let stride = latencies.len().div_ceil(POINTS_MAX).max(1);
    for (start, latency, kind) in latencies.into_iter().step_by(stride) {
        let color = match kind {
            Kind::Ok => "#2ca02c",
            Kind::Info => "#ff7f0e",
            _ => "#d62728",
        };
        let _ = write!(
            points,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{color}"/>"#,
            start as f64 / span * width,
            y(latency)
        );
    }
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>jepsen timeline</title></head><body>
<h3>Send latency over time (log scale, max {max_latency:.0} ms; every {stride}. send drawn)</h3>
<p>Shaded: faults (red kill/disk/bitflip/truncate/full, purple pause, blue partition/delay/loss, orange clock, green membership); hover for details.</p>
<svg width="{width}" height="{height}" style="border:1px solid #ccc">{shading}{points}</svg>
<h3>Acknowledged sends per second (peak {peak:.0})</h3>
<svg width="{width}" height="{throughput_height}" style="border:1px solid #ccc">{shading}{throughput}</svg>
</body></html>"#
    )
}
