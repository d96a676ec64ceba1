//! Multi-raft replication of partitions (raft-rs + raft-engine). Empty until issue 3.
