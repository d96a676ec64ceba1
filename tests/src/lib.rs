//! Shared pieces for the programs that drive real node processes: `cluster` starts, kills,
//! pauses and restarts `robustmq serve` children on loopback (used by `bench` and `jepsen`).

pub mod cluster;
