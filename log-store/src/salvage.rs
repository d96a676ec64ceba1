//! Opening a log whose durable data is damaged (a flipped byte, a segment cut short below its
//! recovery point): [`open_salvaging`] cuts the log at the first bad batch, reports how much it
//! cut, and opens what is left. Besides what [`Log::open`] checks, it verifies the checksum of
//! every batch of the active segment, where a crash or a failing disk most likely left damage
//! that open trusts (bytes below the recovery point are not re-read on open).
//!
//! Only for a caller that can get the lost part back — a replica fetches it from another
//! replica before using the log. Everyone else wants [`Log::open`], which refuses damaged
//! durable data instead of losing it.

use std::fs::OpenOptions;
use std::path::Path;

use tracing::warn;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::segment::file_name;
use crate::LogConfig;

/// Cuts taken before giving up (each one removes at least one batch or one segment's tail).
const CUTS_MAX: usize = 16;

/// What [`open_salvaging`] had to remove.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Bytes cut off segment files (the damaged batch and everything after it).
    pub bytes_cut: u64,
}

/// Opens the log in `dir`; when durable data fails validation, cuts the log just before the
/// bad batch (later segments are removed) and opens again, validating every segment.
pub fn open_salvaging(dir: &Path, config: LogConfig) -> Result<(Log, Salvaged)> {
    let mut salvaged = Salvaged::default();
    for _ in 0..CUTS_MAX {
        match Log::open(dir, config.clone()).and_then(verify_active_segment) {
            Ok(log) => return Ok((log, salvaged)),
            Err(Error::Corrupt { file, position, reason }) => {
                warn!(file = %file.display(), position, %reason, "cutting the log at damaged durable data");
                salvaged.bytes_cut += cut_at(dir, &file, position)?;
            }
            Err(other) => return Err(other),
        }
    }
    Log::open(dir, config).map(|log| (log, salvaged))
}

/// Reads every batch of the newest segment: the reader checks each one's CRC, and each must
/// start where the one before it ended (a base offset is not covered by the CRC; the partition
/// leader epoch is not either, and a flip there goes unseen, as in Kafka).
fn verify_active_segment(log: Log) -> Result<Log> {
    let reader = log.reader();
    let Some(active) = reader.segments().last().map(|segment| segment.base_offset) else { return Ok(log) };
    let file = log.dir().join(file_name(active.0, "log"));
    let from_start = reader.log_start_offset() <= active;
    // Compaction leaves gaps between batches; elsewhere offsets are dense.
    let gaps_allowed = log.config().cleanup_policy == crate::CleanupPolicy::Compact;
    let mut at = active.max(reader.log_start_offset());
    let mut position = 0u64;
    while at < reader.next_offset() {
        let bytes = reader.read(at, 1 << 20)?;
        if bytes.is_empty() {
            break;
        }
        for batch in crate::batch::batches(bytes) {
            let batch = batch.map_err(|e| Error::Corrupt { file: file.clone(), position, reason: e.to_string() })?;
            let header = batch.header();
            let misplaced = if gaps_allowed { header.base_offset() < at } else { header.base_offset() != at };
            if from_start && misplaced {
                let reason = format!("batch starts at offset {} where {} was expected", header.base_offset(), at);
                return Err(Error::Corrupt { file, position, reason });
            }
            at = crate::Offset(header.last_offset().0 + 1);
            position += batch.bytes().len() as u64;
        }
    }
    Ok(log)
}

/// Truncates segment `file` at `position`, removes the segments after it, and points the
/// recovery point at the start so the next open validates every batch. Returns the bytes cut.
fn cut_at(dir: &Path, file: &Path, position: u64) -> Result<u64> {
    let corrupt = || Error::Corrupt { file: file.to_path_buf(), position, reason: "cannot salvage".into() };
    let base: u64 = file
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .filter(|_| file.extension().is_some_and(|e| e == "log"))
        .ok_or_else(corrupt)?;
    let segments = crate::fault::segments(dir).map_err(Error::io(dir))?;
    let mut cut = 0;
    let segment = OpenOptions::new().write(true).open(file).map_err(Error::io(file))?;
    let len = segment.metadata().map_err(Error::io(file))?.len();
    if position < len {
        segment.set_len(position).map_err(Error::io(file))?;
        segment.sync_all().map_err(Error::io(file))?;
        cut += len - position;
    }
    for (later, path) in segments.iter().filter(|(b, _)| *b > base) {
        cut += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        for extension in ["log", "index", "timeindex"] {
            let _ = std::fs::remove_file(dir.join(file_name(*later, extension)));
        }
    }
    let first = segments.first().map_or(base, |(first, _)| *first);
    let log_start_offset = Checkpoint::read(dir).map_or(first, |c| c.log_start_offset);
    Checkpoint { recovery_segment: first, recovery_position: 0, recovery_next_offset: first, log_start_offset }
        .write(dir)?;
    if position == 0 && cut == 0 {
        // Nothing left to cut here: the damage is elsewhere; do not loop.
        return Err(corrupt());
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Compression, NewRecord};

    fn log_config() -> LogConfig {
        LogConfig { segment_bytes_max: 4096, ..LogConfig::default() }
    }

    fn fill(dir: &Path, batches: u64) -> u64 {
        let mut log = Log::open(dir, log_config()).unwrap();
        for i in 0..batches {
            let mut builder = BatchBuilder::new(Compression::None);
            let value = bytes::Bytes::from(format!("value-{i:04}"));
            builder.push(&NewRecord { value: Some(value), ..NewRecord::default() });
            log.append(&mut builder.build().unwrap()).unwrap();
        }
        log.flush().unwrap();
        log.next_offset().0
    }

    #[test]
    fn a_flipped_byte_in_flushed_data_cuts_the_log_there_and_keeps_what_precedes_it() {
        let dir = tempfile::tempdir().unwrap();
        let end = fill(dir.path(), 200);
        assert!(crate::fault::flip_tail_byte(dir.path(), 30, 0x40).unwrap());
        {
            // A plain open trusts flushed bytes; the damage shows when the batch is read.
            let log = Log::open(dir.path(), log_config()).unwrap();
            let reader = log.reader();
            let active = reader.segments().last().unwrap().base_offset;
            let mut at = active;
            let mut failed = false;
            while at < reader.next_offset() && !failed {
                match reader.read(at, 1 << 20) {
                    Ok(bytes) => {
                        at = crate::Offset(
                            crate::batch::batches(bytes).last().unwrap().unwrap().header().last_offset().0 + 1,
                        )
                    }
                    Err(Error::Corrupt { .. }) => failed = true,
                    Err(other) => panic!("{other}"),
                }
            }
            assert!(failed, "reading the damaged batch fails");
        }
        let (log, salvaged) = open_salvaging(dir.path(), log_config()).unwrap();
        assert!(salvaged.bytes_cut > 0);
        assert!(log.next_offset().0 < end && log.next_offset().0 >= end - 1, "only the damaged batch is lost");
        let reader = log.reader();
        let bytes = reader.read(crate::Offset(0), usize::MAX >> 1).unwrap();
        assert!(!bytes.is_empty());
    }

    #[test]
    fn a_segment_cut_below_its_recovery_point_opens_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let end = fill(dir.path(), 200);
        assert!(crate::fault::truncate_tail(dir.path(), 100).unwrap() == 100);
        assert!(Log::open(dir.path(), log_config()).is_err(), "plain open refuses");
        let (log, _) = open_salvaging(dir.path(), log_config()).unwrap();
        assert!(log.next_offset().0 < end);
        drop(log);
        // The salvaged log is a normal log again.
        let log = Log::open(dir.path(), log_config()).unwrap();
        assert!(log.next_offset().0 < end);
    }
}
