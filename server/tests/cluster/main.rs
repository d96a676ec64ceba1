//! Black-box tests of real node processes on loopback, through the project's own client.

mod admin;
mod bad_input;
mod failover;
mod harness;
mod kafka;
mod kafka_idempotence;
mod kafka_versions;
mod kafka_wire;
mod membership;
mod quorum;
mod raft_log_purge;
mod rebalance;
mod repair;
mod storage_failure;
