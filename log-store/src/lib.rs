//! `log-store`: one partition's durable, segmented commit log on local disk.
//!
//! The log knows nothing of Raft or of protocols. It stores **Kafka RecordBatch v2** batches
//! (see `docs/log-format.md`) in segment files named by their base offset, keeps a sparse offset
//! index and a time index beside each segment, assigns offsets at append, and serves whole batches
//! to any number of concurrent readers while one writer appends.
//!
//! Main types:
//! * [`Log`] — the single writer: [`Log::open`], [`Log::append`], [`Log::flush`], retention,
//!   compaction, [`Log::truncate_suffix`].
//! * [`LogReader`] — a cheap, cloneable read handle: [`LogReader::read`],
//!   [`LogReader::offset_for_timestamp`]. Readers only ever see whole, published batches.
//! * [`batch`] — the RecordBatch v2 codec: header view, validation, [`batch::BatchBuilder`],
//!   record decoding with decompression.
//!
//! # Layout
//! * `batch/` — the byte format: header fields, records and varints, compression, the builder.
//! * `config`, `clock`, `error`, `offset` — the small vocabulary shared by the rest.
//! * `index` — the sparse offset index and the time index, in memory and on disk.
//! * `segment` — one segment: its files, positional reads, the validating scan used by recovery.
//! * `checkpoint` — the recovery point and log start offset, written atomically.
//! * `log` — the writer: append, roll, flush, recovery on open, truncation.
//! * `reader` — the concurrent read path.
//! * `retention`, `compaction` — reclaiming space by age/size and by key.
//! * `salvage` — opening a log with damaged durable data by cutting it (for replicas, which
//!   fetch the rest from another replica).
#![deny(missing_docs)]

pub mod batch;
mod checkpoint;
mod clock;
mod compaction;
mod config;
mod error;
pub mod fault;
mod index;
mod log;
mod offset;
mod reader;
mod retention;
pub mod salvage;
mod segment;
mod sync;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::compaction::Compacted;
pub use crate::config::{CleanupPolicy, LogConfig};
pub use crate::error::{Error, Result};
pub use crate::log::{Appended, Log};
pub use crate::offset::Offset;
pub use crate::reader::{LogReader, SegmentInfo};
pub use crate::retention::Reclaimed;
