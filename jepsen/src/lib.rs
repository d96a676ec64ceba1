//! Jepsen-style consistency testing of real clusters. Empty until issue 5.
