//! The partition's checkpoint file: recovery point and log start offset, replaced atomically.
//!
//! The recovery point says up to where the log was durably flushed: bytes before it are trusted
//! on open (a bad batch there is corruption, reported), bytes after it are validated and a torn
//! tail is cut off. The log start offset records `delete_before` and retention across restarts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const FILE_NAME: &str = "log.checkpoint";
const MAGIC: &[u8; 8] = b"RMQLOGCP";
const VERSION: u32 = 1;
const LEN: usize = 8 + 4 + 8 * 4 + 4;

/// What the checkpoint file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Base offset of the segment the recovery point lies in.
    pub recovery_segment: u64,
    /// Byte position in that segment up to which everything was fsynced.
    pub recovery_position: u64,
    /// The log's next offset at the recovery point.
    pub recovery_next_offset: u64,
    /// First offset readers may see.
    pub log_start_offset: u64,
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

impl Checkpoint {
    /// Reads the checkpoint; `None` when it is missing or damaged (the caller recovers everything).
    pub fn read(dir: &Path) -> Option<Checkpoint> {
        let bytes = std::fs::read(path(dir)).ok()?;
        if bytes.len() != LEN || &bytes[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_be_bytes(bytes[LEN - 4..].try_into().ok()?);
        if crc32c::crc32c(&bytes[..LEN - 4]) != crc {
            return None;
        }
        if u32::from_be_bytes(bytes[8..12].try_into().ok()?) != VERSION {
            return None;
        }
        let word = |i: usize| u64::from_be_bytes(bytes[12 + i * 8..20 + i * 8].try_into().expect("8 bytes"));
        Some(Checkpoint {
            recovery_segment: word(0),
            recovery_position: word(1),
            recovery_next_offset: word(2),
            log_start_offset: word(3),
        })
    }

    /// Replaces the checkpoint durably: temporary file, fsync, rename, fsync of the directory.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut bytes = Vec::with_capacity(LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_be_bytes());
        for word in [self.recovery_segment, self.recovery_position, self.recovery_next_offset, self.log_start_offset] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let temporary = dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&temporary)
            .map_err(Error::io(&temporary))?;
        file.write_all(&bytes).map_err(Error::io(&temporary))?;
        file.sync_all().map_err(Error::io(&temporary))?;
        std::fs::rename(&temporary, path(dir)).map_err(Error::io(path(dir)))?;
        sync_dir(dir)
    }
}

/// Makes file creations, renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(Error::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()), None);
        let checkpoint =
            Checkpoint { recovery_segment: 7, recovery_position: 99, recovery_next_offset: 12, log_start_offset: 3 };
        checkpoint.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()), Some(checkpoint));
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[20] ^= 1;
        std::fs::write(path(dir.path()), bytes).unwrap();
        assert_eq!(Checkpoint::read(dir.path()), None);
    }
}
