//! Shared pieces for the programs that drive real node processes: `cluster` starts, kills,
//! pauses and restarts `robustmq serve` children on loopback (used by `bench` and `jepsen`);
//! `ports` hands out their listening ports (the server's cluster tests use it too).

pub mod cluster;
pub mod ports;
