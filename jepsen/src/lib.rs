//! Jepsen-style consistency testing of real RobustMQ clusters (issue 5).
//!
//! * `history` — the run's events (invoke / ok / fail / info), as JSON lines.
//! * `checker` — the queue checker: lost, duplicated, reordered, skipped, aborted reads.
//! * `run` — a cluster of node processes, a workload, a seeded nemesis, the final read.
//! * `nemesis` — the faults and their seeded schedule.
//! * `net` — one network namespace per node, so links between nodes can be cut (root).
//! * `proxy` — a fault proxy per node pair: cuts, delay and loss without root.
//! * `report` — summary text and a timeline page in the results folder.

pub mod checker;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod proxy;
pub mod report;
pub mod run;
