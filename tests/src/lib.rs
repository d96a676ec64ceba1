//! Cross-crate integration tests that start real nodes. Empty until issue 3.
