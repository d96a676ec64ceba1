//! `proto`: the protobuf messages and gRPC services of RobustMQ's native API (port 9300):
//! node-to-node Raft traffic (`Raft`) and the client API (`Broker`).
//!
//! Generated at build time from `proto/robustmq.proto` by tonic/prost; `protoc` comes from the
//! `protoc-bin-vendored` crate, so the build needs nothing installed.
#![deny(missing_docs)]

/// Version 1 of the API.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("robustmq.v1");
}
