//! One writer, many readers: readers racing appends and segment rolls only ever see whole,
//! valid batches with the right contents, and never an offset the writer has not published.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log_store::batch::{self, Compression};
use log_store::{Log, LogConfig, Offset};

use crate::common::{payload, payload_batch};

#[test]
fn readers_never_see_a_partial_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes_max: 64 * 1024, index_interval_bytes: 1024, ..LogConfig::default() };
    let mut log = Log::open(dir.path(), config).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|id| {
            let reader = log.reader();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut checked = 0u64;
                let mut from = 0u64;
                while !done.load(Ordering::Acquire) || from < reader.next_offset().0 {
                    let next = reader.next_offset().0;
                    let bytes = reader.read(Offset(from), 1000 + id * 20_000).unwrap();
                    for batch in batch::batches(bytes) {
                        let batch = batch.expect("whole batch with a valid CRC");
                        assert!(batch.header().last_offset().0 < reader.next_offset().0.max(next));
                        for record in batch.records(1 << 20).unwrap() {
                            let record = record.unwrap();
                            assert_eq!(record.value.as_deref(), Some(&payload(record.offset.0)[..]));
                            checked += 1;
                        }
                        from = batch.header().last_offset().0 + 1;
                    }
                }
                checked
            })
        })
        .collect();
    for i in 0..3000u64 {
        let next = log.next_offset().0;
        let mut batch = payload_batch(next, 1 + i % 9, Compression::ALL[(i % 5) as usize]);
        log.append(&mut batch).unwrap();
        if i % 500 == 0 {
            log.flush().unwrap();
        }
    }
    done.store(true, Ordering::Release);
    let total = log.next_offset().0;
    for reader in readers {
        assert_eq!(reader.join().unwrap(), total, "every reader read every record exactly once");
    }
}
