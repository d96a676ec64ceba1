//! Fault injection on a closed log's files, for crash tests and the Jepsen harness: what a
//! power loss leaves behind (everything after the last recovery point gone), a torn last write,
//! a flipped byte.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;

/// The segment files of a log directory, by base offset.
pub(crate) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let base = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
        if let (Some(base), true) = (base, path.extension().is_some_and(|e| e == "log")) {
            segments.push((base, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Cuts the log back to its last recovery point (the last flush), as a power loss would;
/// returns the bytes removed. Without a checkpoint nothing is known to be durable: nothing is cut.
pub fn lose_unflushed(dir: &Path) -> std::io::Result<u64> {
    let Some(checkpoint) = Checkpoint::read(dir) else { return Ok(0) };
    let mut removed = 0;
    for (base, path) in segments(dir)? {
        if base == checkpoint.recovery_segment {
            let file = OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            if len > checkpoint.recovery_position {
                file.set_len(checkpoint.recovery_position)?;
                removed += len - checkpoint.recovery_position;
            }
        } else if base > checkpoint.recovery_segment {
            removed += std::fs::metadata(&path)?.len();
            std::fs::remove_file(&path)?;
        }
    }
    Ok(removed)
}

/// Removes the last `bytes` bytes of the newest segment (a torn write); returns how many.
pub fn truncate_tail(dir: &Path, bytes: u64) -> std::io::Result<u64> {
    let Some((_, path)) = segments(dir)?.pop() else { return Ok(0) };
    let file = OpenOptions::new().write(true).open(&path)?;
    let len = file.metadata()?.len();
    let cut = bytes.min(len);
    file.set_len(len - cut)?;
    Ok(cut)
}

/// Flips the bits of `mask` in the byte `back` bytes before the end of the newest segment;
/// returns whether a byte was there.
pub fn flip_tail_byte(dir: &Path, back: u64, mask: u8) -> std::io::Result<bool> {
    let Some((_, path)) = segments(dir)?.pop() else { return Ok(false) };
    let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let at = len - 1 - back.min(len - 1);
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= mask.max(1);
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&byte)?;
    Ok(true)
}
