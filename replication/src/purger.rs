//! The thread that asks raft-engine to purge its Raft log files, off the store loop.
//!
//! raft-engine purges (deletes, or keeps for reuse) files whose entries were all trimmed, and
//! only once its files hold more than the purge threshold. A purge past it deletes files and
//! copies small idle groups forward with synced writes: ~100 ms, which stalled every produce
//! when it ran on the store loop. raft-engine takes purges concurrent with writes (TiKV purges
//! from a background worker too). The groups raft-engine names as pinning its oldest files go
//! to the loop, which owns their storage ([`StoreMsg::TrimPinning`]).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use tracing::warn;

use crate::cluster::Shared;
use crate::engine_fs::NodeEngine;
use crate::store::{panic_reason, record_storage_failure, StoreMsg};

/// How often raft-engine is asked to purge.
const PURGE_INTERVAL: Duration = Duration::from_secs(2);

/// The purge thread; dropping it stops and joins the thread.
pub(crate) struct Purger {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Purger {
    /// Starts the thread; if it cannot start, the node stops as on a storage failure (the
    /// Raft log would grow without bound).
    pub(crate) fn start(engine: Arc<NodeEngine>, shared: Arc<Shared>) -> Purger {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let shared_for_error = shared.clone();
        let thread = std::thread::Builder::new()
            .name("raft-purge".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(PURGE_INTERVAL) {
                    let purged =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.purge_expired_files()));
                    match purged {
                        Ok(Ok(pinning)) if !pinning.is_empty() => {
                            // A full inbox skips a round: raft-engine names them again.
                            let _ = shared.inbox.try_send(StoreMsg::TrimPinning(pinning));
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => warn!(%error, "purging trimmed Raft log files failed"),
                        Err(panic) => {
                            // raft-engine panics when a synced write fails: the store loop stops.
                            let reason = panic_reason(&*panic).to_string();
                            record_storage_failure(&shared, || format!("raft-engine's purge panicked: {reason}"));
                            return;
                        }
                    }
                }
            })
            .map_err(|error| {
                // Without it the Raft log would grow without bound: stop, as on a storage failure.
                record_storage_failure(&shared_for_error, || format!("cannot start the Raft log purge thread: {error}"))
            })
            .ok();
        Purger { stop: Some(stop), thread }
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
