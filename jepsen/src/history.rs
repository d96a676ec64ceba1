//! The history of a run: every operation's invocation and completion, as Jepsen records them,
//! written as JSON lines (one event per line) and read back by the checker.
//!
//! An operation is invoked by one logical process and completes as `ok` (it happened),
//! `fail` (it certainly did not happen) or `info` (unknown: a timeout, a dead connection).

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How an event stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What the operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// Append one unique value to a partition; `ok` carries its offset.
    Send,
    /// A consumer's read of what follows its position; `ok` carries the records.
    Poll,
    /// A consumer group's committed offset for a partition (the next offset to read).
    Commit,
    /// The final read of a whole partition after the faults are healed.
    FinalRead,
    /// A consumer group assigned the partition to the process: its polls of it start afresh.
    Assign,
}

/// One record as read: partition, offset, value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub partition: u32,
    pub offset: u64,
    pub value: u64,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history.
    pub index: usize,
    /// The logical process (a producer or consumer thread; a new number after an `info`).
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: Function,
    /// Milliseconds since the run started.
    pub time_ms: u64,
    /// The partition (send, commit, final read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The value sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// The offset a send got, or a committed offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What a poll or final read returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<Read>,
    /// Why an operation failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event with nothing but its identity filled in.
    pub fn new(process: u64, kind: Kind, f: Function, time_ms: u64) -> Event {
        Event {
            index: 0,
            process,
            kind,
            f,
            time_ms,
            partition: None,
            value: None,
            offset: None,
            reads: Vec::new(),
            error: None,
        }
    }
}

/// Writes a history as JSON lines.
pub fn write(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write`].
pub fn read(path: &Path) -> std::io::Result<Vec<Event>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    file.lines()
        .filter(|line| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| serde_json::from_str(&line?).map_err(std::io::Error::other))
        .collect()
}
