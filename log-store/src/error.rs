//! The crate's one error type: each variant is something a caller can act on.

use std::io;
use std::path::PathBuf;

use crate::offset::Offset;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a well-formed RecordBatch v2 (Kafka: `CORRUPT_MESSAGE`).
    #[error("malformed record batch: {0}")]
    MalformedBatch(&'static str),
    /// The batch's CRC-32C does not match its contents (Kafka: `CORRUPT_MESSAGE`).
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the batch header.
        stored: u32,
        /// The CRC computed over the batch.
        computed: u32,
    },
    /// The batch uses a magic other than 2 (Kafka: `UNSUPPORTED_FOR_MESSAGE_FORMAT`).
    #[error("unsupported record batch magic {0} (only v2 is stored)")]
    UnsupportedMagic(i8),
    /// A record inside the batch breaks a rule of the format or of this log (Kafka: `INVALID_RECORD`).
    #[error("invalid record: {0}")]
    InvalidRecord(&'static str),
    /// The batch's compression codec is unknown.
    #[error("unsupported compression codec id {0}")]
    UnsupportedCompression(u8),
    /// The batch is larger than the log accepts (Kafka: `MESSAGE_TOO_LARGE`).
    #[error("record batch of {size} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Size of the rejected batch.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The requested offset is outside `[log_start_offset, next_offset]` (Kafka: `OFFSET_OUT_OF_RANGE`).
    #[error("offset {offset} is out of range [{log_start_offset}, {next_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: Offset,
        /// The first offset still in the log.
        log_start_offset: Offset,
        /// The offset the next append will get.
        next_offset: Offset,
    },
    /// Stored data that was once durable fails validation: never skipped, always reported.
    #[error("corrupt log data in {} at byte {position}: {reason}", file.display())]
    Corrupt {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte position of the bad batch in that file.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// A write or fsync failed earlier; the log refuses further writes because the state of
    /// the file after a failed fsync is unknown (see the note on [`crate::Log::flush`]).
    #[error("the log at {} failed an earlier write or fsync and accepts no more writes", dir.display())]
    Poisoned {
        /// The partition directory.
        dir: PathBuf,
    },
    /// Another `Log` already has this directory open (in this process or another).
    #[error("the log at {} is already open elsewhere", dir.display())]
    Locked {
        /// The partition directory.
        dir: PathBuf,
    },
    /// An I/O error on a file of the log.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
