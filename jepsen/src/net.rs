//! The harness's own network: one namespace per node, joined by veth pairs to a bridge in the
//! harness's namespace (which has an address on it too, so the harness reaches every node), so
//! that links between nodes can be cut. Created with `ip` (iproute2) and removed when dropped;
//! needs root. Nothing outside these namespaces and the bridge is touched.
//!
//! A cut between nodes A and B is a blackhole route to B inside A's namespace and to A inside
//! B's: their packets to each other vanish, as on a failed link, while both still reach the
//! harness. Healing deletes the routes.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The namespaces and bridge of one run.
pub struct Network {
    prefix: String,
    nodes: u64,
    cuts: BTreeSet<(u64, u64)>,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

impl Network {
    /// Whether this process may create namespaces (root, with `ip` available).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
    }

    /// Creates namespaces for `nodes` nodes; the names carry `tag` so runs do not collide.
    pub fn create(nodes: u64, tag: u32) -> Result<Network> {
        let prefix = format!("rj{}", tag % 100_000);
        let network = Network { prefix, nodes, cuts: BTreeSet::new() };
        network.teardown();
        let bridge = network.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", network.harness_address()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for node in 1..=nodes {
            let namespace = network.namespace(node);
            let outside = format!("{}v{node}", network.prefix);
            ip(&["netns", "add", &namespace])?;
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", network.address(node)), "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn subnet(&self) -> u32 {
        // 10.X.Y.0/24 from the tag, away from common ranges.
        100 + (self.prefix[2..].parse::<u32>().unwrap_or(0) % 150)
    }

    /// Node `node`'s namespace.
    pub fn namespace(&self, node: u64) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// Node `node`'s address.
    pub fn address(&self, node: u64) -> String {
        format!("10.{}.0.{node}", self.subnet())
    }

    fn harness_address(&self) -> String {
        format!("10.{}.0.254", self.subnet())
    }

    /// (namespace, address) of every node, for `tests::cluster::Placement::Namespaces`.
    pub fn hosts(&self) -> Vec<(String, String)> {
        (1..=self.nodes).map(|n| (self.namespace(n), self.address(n))).collect()
    }

    /// Cuts the links between each pair of nodes (both directions).
    pub fn cut(&mut self, pairs: &BTreeSet<(u64, u64)>) -> Result<()> {
        for &(a, b) in pairs {
            for (from, to) in [(a, b), (b, a)] {
                if self.cuts.insert((from, to)) {
                    ip(&[
                        "-n",
                        &self.namespace(from),
                        "route",
                        "add",
                        "blackhole",
                        &format!("{}/32", self.address(to)),
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// Restores every link.
    pub fn heal(&mut self) -> Result<()> {
        for (from, to) in std::mem::take(&mut self.cuts) {
            ip(&["-n", &self.namespace(from), "route", "del", "blackhole", &format!("{}/32", self.address(to))])?;
        }
        Ok(())
    }

    /// Removes what `create` made (also leftovers of an earlier run with the same tag).
    fn teardown(&self) {
        for node in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(node)]);
            let _ = ip(&["link", "del", &format!("{}v{node}", self.prefix)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}
