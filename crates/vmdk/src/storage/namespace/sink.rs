//! Destinations written front to back, once: stream images, archives, uploads; and those
//! written front to back but for ranges skipped and filled in later (archives).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::storage::Storage;

/// A destination written front to back only. Dropping it without [`StreamSink::finish`]
/// abandons the output (an upload is aborted; a file is left as far as it got).
pub trait StreamSink: Write + Send {
    /// Bytes written so far.
    fn position(&self) -> u64;
    /// Complete the output; with `durable`, make it survive a power cut before returning.
    fn finish(self: Box<Self>, durable: bool) -> Result<()>;
}

/// A [`StreamSink`] appending to positional [`Storage`].
#[derive(Debug)]
pub struct StorageSink {
    storage: Arc<dyn Storage>,
    name: PathBuf,
    /// Where the stream starts in the storage (a tar member's data, say).
    base: u64,
    pos: u64,
}

impl StorageSink {
    /// Append to `storage` (named `name` in messages) from offset 0.
    pub fn new(storage: Arc<dyn Storage>, name: &Path) -> Self {
        Self::at(storage, name, 0)
    }

    /// Append to `storage` from offset `base`: [`StreamSink::position`] counts from there.
    pub fn at(storage: Arc<dyn Storage>, name: &Path, base: u64) -> Self {
        StorageSink {
            storage,
            name: name.to_path_buf(),
            base,
            pos: 0,
        }
    }
}

impl Write for StorageSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.storage.write_at(buf, self.base + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StreamSink for StorageSink {
    fn position(&self) -> u64 {
        self.pos
    }
    fn finish(self: Box<Self>, durable: bool) -> Result<()> {
        if durable {
            self.storage
                .flush()
                .map_err(|e| Error::io(e, "syncing").with_path(&self.name))?;
        }
        Ok(())
    }
}

/// A destination written front to back, except that a range skipped over (written past)
/// may be filled in later: an archive whose headers are known only once the members after
/// them are written. Writes go through [`AppendOutput::storage`]; a write behind the end
/// may only fill such a skipped range. Dropping it without [`AppendOutput::finish`]
/// abandons the output (an upload is aborted).
pub trait AppendOutput: Send {
    /// Where to write.
    fn storage(&self) -> Arc<dyn Storage>;
    /// Complete the output; with `durable`, make it survive a power cut before returning.
    fn finish(self: Box<Self>, durable: bool) -> Result<()>;
}

/// An [`AppendOutput`] that is a positional file (which allows any write).
#[derive(Debug)]
pub struct StorageOutput {
    storage: Arc<dyn Storage>,
    name: PathBuf,
}

impl StorageOutput {
    /// Write into `storage` (named `name` in messages).
    pub fn new(storage: Arc<dyn Storage>, name: &Path) -> Self {
        StorageOutput {
            storage,
            name: name.to_path_buf(),
        }
    }
}

impl AppendOutput for StorageOutput {
    fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }
    fn finish(self: Box<Self>, durable: bool) -> Result<()> {
        if durable {
            self.storage
                .flush()
                .map_err(|e| Error::io(e, "syncing").with_path(&self.name))?;
        }
        Ok(())
    }
}
