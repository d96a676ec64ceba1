//! Rust client for the native gRPC API. Empty until issue 3.
