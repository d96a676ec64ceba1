//! Listening ports for node processes started by tests, benches and the Jepsen harness,
//! taken from outside the kernel's ephemeral port range.
//!
//! A port found free with `bind(port 0)` lies in the ephemeral range, where any process's next
//! outgoing connection may take it as its local port in the moment before the node binds it
//! (or while a killed node is down, before it binds it again): the node then cannot listen, and
//! a cluster test waits on a node that is not there. Outside that range only listeners take
//! ports, and each process walks its own stretch of the range, so that cannot happen.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Result};

/// The lowest port handed out (below it sit many well-known services).
const LOWEST: u32 = 10_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port on `ip` that nothing listens on now and no outgoing connection can take.
pub fn free_port_on(ip: &str) -> Result<u16> {
    let (first, last) = listening_range();
    let size = last - first + 1;
    // Processes started together (test binaries, bench and Jepsen runs) begin far apart.
    let start = (std::process::id().wrapping_mul(7919)) % size;
    for _ in 0..size {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (start + step) % size;
        if TcpListener::bind((ip, port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    bail!("no free port on {ip} in {first}-{last}")
}

/// The ports from `LOWEST` up to the kernel's ephemeral range, or above it when that leaves
/// too few.
fn listening_range() -> (u32, u32) {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999));
    if low >= LOWEST + 4_000 {
        (LOWEST, low - 1)
    } else {
        (high + 1, 65_535)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let (first, last) = listening_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let port = free_port_on("127.0.0.1").unwrap() as u32;
            assert!((first..=last).contains(&port), "{port} outside {first}-{last}");
            assert!(seen.insert(port), "{port} handed out twice");
            TcpListener::bind(("127.0.0.1", port as u16)).unwrap();
        }
        let ephemeral = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port() as u32;
        assert!(!(first..=last).contains(&ephemeral), "the kernel's own pick {ephemeral} is in {first}-{last}");
    }
}
