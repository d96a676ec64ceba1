//! Protobuf definitions for node-to-node RPC and the native client API. Empty until issue 3.
