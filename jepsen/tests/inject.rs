//! The harness is proven able to fail end to end: nodes that acknowledge some produces without
//! appending them (`--inject`, debug builds) must make the run report lost writes, and the same
//! run without the injection must be valid.

use std::path::PathBuf;
use std::time::Duration;

use jepsen::checker::AnomalyKind;
use jepsen::run::{run, Options};

fn node_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("debug/robustmq");
    assert!(binary.is_file(), "{} is missing: cargo build -p robustmq", binary.display());
    binary
}

fn options(inject: Option<u64>, results: &std::path::Path) -> Options {
    Options {
        network: jepsen::run::NetworkMode::Auto,
        workload: "native".into(),
        nemesis: Vec::new(),
        nodes: 3,
        time_limit: Duration::from_secs(5),
        seed: 11,
        results: results.to_path_buf(),
        robustmq: node_binary(),
        inject_drop_every: inject,
    }
}

#[test]
fn acknowledged_but_dropped_appends_are_reported_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let verdict = run(&options(Some(50), &dir.path().join("inject"))).unwrap();
    let counts = verdict.counts();
    assert!(counts.get(&AnomalyKind::Lost).copied().unwrap_or(0) > 0, "no lost write reported: {counts:?}");
    let summary = std::fs::read_to_string(dir.path().join("inject/summary.txt")).unwrap();
    assert!(summary.contains("INVALID") && summary.contains("replay:"), "{summary}");

    let verdict = run(&options(None, &dir.path().join("clean"))).unwrap();
    assert!(verdict.valid(), "{:?}", verdict.anomalies);
}
