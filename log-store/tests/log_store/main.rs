//! Integration tests of `log-store`, one module per area, all against real files.

mod behaviour;
mod common;
mod concurrent_readers;
mod corruption;
mod crash;
mod model;
