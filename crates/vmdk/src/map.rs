//! The one mapping primitive everything shares: for a virtual range, what is there.
//! Reads, `map`, `convert`, `check` and the NBD export's block status are all built on it.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
pub use crate::extent::compressed::CompressedGrain;
use crate::storage::Storage;

/// A file holding extent data, with the path it was opened from (for messages and `map`).
#[derive(Debug)]
pub struct ExtentFile {
    /// Where the file lives.
    pub path: std::path::PathBuf,
    /// The open file.
    pub storage: Arc<dyn Storage>,
    /// Unique for the life of the process (keys per-thread caches safely).
    id: u64,
}

impl ExtentFile {
    /// Wrap an open storage.
    pub fn new(path: impl Into<std::path::PathBuf>, storage: Arc<dyn Storage>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ExtentFile {
            path: path.into(),
            storage,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A process-unique identifier of this open file.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a stretch of the virtual disk holds.
#[derive(Debug, Clone)]
pub enum MapTarget {
    /// Plain bytes at `offset` in `file`.
    Data {
        /// The host file.
        file: Arc<ExtentFile>,
        /// Byte offset in the file of the first byte of the stretch.
        offset: u64,
    },
    /// Bytes inside one compressed grain (read them with [`MapTarget::read_into`]).
    Compressed(CompressedGrain),
    /// Reads as zeros in this layer (ZERO extent, zeroed grain); hides any backing file.
    Zero,
    /// Nothing in this layer: the backing file shows through (zeros if there is none).
    Unallocated,
}

impl MapTarget {
    /// Whether this target stores bytes (as opposed to zeros or nothing).
    pub fn is_data(&self) -> bool {
        matches!(self, MapTarget::Data { .. } | MapTarget::Compressed { .. })
    }

    /// The target of the stretch that starts `n` bytes into a stretch with this target.
    pub fn advanced(&self, n: u64) -> MapTarget {
        match self {
            MapTarget::Data { file, offset } => MapTarget::Data {
                file: file.clone(),
                offset: offset + n,
            },
            MapTarget::Compressed(g) => MapTarget::Compressed(g.advanced(n)),
            other => other.clone(),
        }
    }

    /// Fill `dst` with the bytes this target stands for.
    pub fn read_into(&self, dst: &mut [u8]) -> Result<()> {
        match self {
            MapTarget::Data { file, offset } => {
                file.storage.read_at_padded(dst, *offset).map_err(|e| {
                    Error::io(e, format!("reading at offset {offset}")).with_path(&file.path)
                })
            }
            MapTarget::Compressed(g) => g.read_into(dst),
            MapTarget::Zero | MapTarget::Unallocated => {
                dst.fill(0);
                Ok(())
            }
        }
    }

    /// Whether a stretch with target `next` starting right after `len` bytes of `self`
    /// continues it (same kind, and for data, contiguous in the same file).
    pub(crate) fn continues(&self, len: u64, next: &MapTarget) -> bool {
        match (self, next) {
            (MapTarget::Zero, MapTarget::Zero) => true,
            (MapTarget::Unallocated, MapTarget::Unallocated) => true,
            (
                MapTarget::Data {
                    file: f1,
                    offset: o1,
                },
                MapTarget::Data {
                    file: f2,
                    offset: o2,
                },
            ) => Arc::ptr_eq(f1, f2) && o1 + len == *o2,
            _ => false,
        }
    }
}

/// One stretch of the virtual disk with a single target.
#[derive(Debug, Clone)]
pub struct MapEntry {
    /// Virtual byte offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// What is there.
    pub target: MapTarget,
    /// Which layer of the backing chain answered (0 = the image itself).
    pub depth: u32,
}

/// Appends stretches, merging each with the previous one where they continue each other.
/// With a limit, it takes at most that many entries and then refuses everything, so callers
/// can stop early and report the prefix they covered.
#[derive(Debug)]
pub(crate) struct MapBuilder {
    pub(crate) entries: Vec<MapEntry>,
    limit: usize,
    stopped: bool,
}

impl Default for MapBuilder {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl MapBuilder {
    /// A builder that takes at most `limit` entries (at least one).
    pub(crate) fn with_limit(limit: usize) -> Self {
        MapBuilder {
            entries: Vec::new(),
            limit: limit.max(1),
            stopped: false,
        }
    }

    /// Whether a stretch was refused: the entries cover only a prefix of what was asked.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// Entries still to be taken before the limit.
    pub(crate) fn room(&self) -> usize {
        if self.stopped {
            0
        } else {
            self.limit - self.entries.len()
        }
    }

    /// Append a stretch; `false` if it was refused (the limit is reached) and the caller
    /// should stop.
    pub(crate) fn push(&mut self, start: u64, length: u64, target: MapTarget, depth: u32) -> bool {
        if self.stopped {
            return false;
        }
        if length == 0 {
            return true;
        }
        if let Some(last) = self.entries.last_mut() {
            if last.depth == depth
                && last.start + last.length == start
                && last.target.continues(last.length, &target)
            {
                last.length += length;
                return true;
            }
        }
        if self.entries.len() >= self.limit {
            self.stopped = true;
            return false;
        }
        self.entries.push(MapEntry {
            start,
            length,
            target,
            depth,
        });
        true
    }
}
