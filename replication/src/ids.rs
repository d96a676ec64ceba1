//! Identifiers: nodes and Raft groups.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node of the cluster; also its Raft peer id in every group it belongs to. Never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A Raft group: the metadata group or one partition's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

/// The group holding the cluster catalog, replicated on every configured node.
pub const METADATA_GROUP: GroupId = GroupId(1);

/// The first id handed to a partition group.
pub(crate) const FIRST_PARTITION_GROUP: u64 = 1000;

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
