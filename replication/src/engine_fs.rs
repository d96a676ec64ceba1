//! The file system raft-engine runs on: the real one, plus a record of how much of each file
//! was fsynced, so the simulation can crash a node the way a power cut would — every byte
//! written after the file's last sync is lost (`lose_unsynced`). In production the record is
//! a couple of atomic stores per write and is never used.

use std::collections::HashMap;
use std::io::{Read, Result, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use raft_engine::env::{DefaultFileSystem, FileSystem, Handle, Permission, WriteExt};

type Inner = DefaultFileSystem;

/// How far a file was written, and how far of that is known durable.
#[derive(Debug, Default)]
struct FileState {
    written: AtomicUsize,
    synced: AtomicUsize,
}

impl FileState {
    fn cut(&self, length: usize) {
        self.written.fetch_min(length, Ordering::AcqRel);
        self.synced.fetch_min(length, Ordering::AcqRel);
    }
}

/// raft-engine's file system for a node.
pub(crate) struct NodeFileSystem {
    inner: Inner,
    files: Mutex<HashMap<PathBuf, Arc<FileState>>>,
}

impl Default for NodeFileSystem {
    fn default() -> Self {
        NodeFileSystem { inner: DefaultFileSystem, files: Mutex::new(HashMap::new()) }
    }
}

/// The raft-engine of a node.
pub(crate) type NodeEngine = raft_engine::Engine<NodeFileSystem>;

impl NodeFileSystem {
    fn track(&self, path: &Path, state: FileState) -> Arc<FileState> {
        let state = Arc::new(state);
        self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf(), state.clone());
        state
    }

    /// Cuts every file back to its last fsync. Only for a simulated crash, with the engine
    /// already dropped.
    #[cfg(test)]
    pub fn lose_unsynced(&self) {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for (path, state) in files.iter() {
            let synced = state.synced.load(Ordering::Acquire) as u64;
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
                if file.metadata().is_ok_and(|m| m.len() > synced) {
                    let _ = file.set_len(synced);
                }
            }
            state.cut(synced as usize);
        }
    }
}

/// An open file and its durability record.
pub(crate) struct NodeHandle {
    inner: Arc<<Inner as FileSystem>::Handle>,
    state: Arc<FileState>,
}

impl Handle for NodeHandle {
    fn truncate(&self, offset: usize) -> Result<()> {
        self.inner.truncate(offset)?;
        self.state.cut(offset);
        Ok(())
    }

    fn file_size(&self) -> Result<usize> {
        self.inner.file_size()
    }

    fn sync(&self) -> Result<()> {
        let written = self.state.written.load(Ordering::Acquire);
        self.inner.sync()?;
        self.state.synced.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }
}

/// A writer that records how far it wrote.
pub(crate) struct NodeWriter {
    inner: <Inner as FileSystem>::Writer,
    state: Arc<FileState>,
    position: usize,
}

impl Write for NodeWriter {
    fn write(&mut self, buffer: &[u8]) -> Result<usize> {
        let written = self.inner.write(buffer)?;
        self.position += written;
        self.state.written.fetch_max(self.position, Ordering::AcqRel);
        Ok(written)
    }

    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }
}

impl Seek for NodeWriter {
    fn seek(&mut self, position: SeekFrom) -> Result<u64> {
        let at = self.inner.seek(position)?;
        self.position = at as usize;
        Ok(at)
    }
}

impl WriteExt for NodeWriter {
    fn truncate(&mut self, offset: usize) -> Result<()> {
        self.inner.truncate(offset)?;
        self.state.cut(offset);
        Ok(())
    }

    fn allocate(&mut self, offset: usize, size: usize) -> Result<()> {
        self.inner.allocate(offset, size)
    }
}

/// A reader, unchanged.
pub(crate) struct NodeReader(<Inner as FileSystem>::Reader);

impl Read for NodeReader {
    fn read(&mut self, buffer: &mut [u8]) -> Result<usize> {
        self.0.read(buffer)
    }
}

impl Seek for NodeReader {
    fn seek(&mut self, position: SeekFrom) -> Result<u64> {
        self.0.seek(position)
    }
}

impl FileSystem for NodeFileSystem {
    type Handle = NodeHandle;
    type Reader = NodeReader;
    type Writer = NodeWriter;

    fn create<P: AsRef<Path>>(&self, path: P) -> Result<NodeHandle> {
        let inner = Arc::new(self.inner.create(path.as_ref())?);
        let state = self.track(path.as_ref(), FileState::default());
        Ok(NodeHandle { inner, state })
    }

    fn open<P: AsRef<Path>>(&self, path: P, permission: Permission) -> Result<NodeHandle> {
        let inner = Arc::new(self.inner.open(path.as_ref(), permission)?);
        let existing = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(path.as_ref()).cloned();
        let state = match existing {
            Some(state) => state,
            None => {
                // A file found on disk at start is durable as far as this process knows.
                let size = inner.file_size()?;
                self.track(path.as_ref(), FileState { written: AtomicUsize::new(size), synced: AtomicUsize::new(size) })
            }
        };
        Ok(NodeHandle { inner, state })
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        self.inner.delete(path.as_ref())?;
        self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(path.as_ref());
        Ok(())
    }

    fn rename<P: AsRef<Path>>(&self, source: P, destination: P) -> Result<()> {
        self.inner.rename(source.as_ref(), destination.as_ref())?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = files.remove(source.as_ref()) {
            files.insert(destination.as_ref().to_path_buf(), state);
        }
        Ok(())
    }

    fn new_reader(&self, handle: Arc<NodeHandle>) -> Result<NodeReader> {
        Ok(NodeReader(self.inner.new_reader(handle.inner.clone())?))
    }

    fn new_writer(&self, handle: Arc<NodeHandle>) -> Result<NodeWriter> {
        let inner = self.inner.new_writer(handle.inner.clone())?;
        Ok(NodeWriter { inner, state: handle.state.clone(), position: 0 })
    }
}
