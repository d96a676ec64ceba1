//! Jepsen-style consistency testing of real RobustMQ clusters (issue 5).
//!
//! * `history` — the run's events (invoke / ok / fail / info), as JSON lines.
//! * `checker` — the queue checker: lost, duplicated, reordered, skipped, aborted reads.
//!
//! The harness that runs clusters under faults and drives workloads builds on these.

pub mod checker;
pub mod history;
