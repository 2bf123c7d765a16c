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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn file() -> Arc<ExtentFile> {
        Arc::new(ExtentFile::new("f", Arc::new(MemStorage::new(vec![]))))
    }

    fn data(f: &Arc<ExtentFile>, offset: u64) -> MapTarget {
        MapTarget::Data {
            file: f.clone(),
            offset,
        }
    }

    #[test]
    fn merges_only_what_continues() {
        let (f, g) = (file(), file());
        let mut b = MapBuilder::default();
        assert!(b.push(0, 10, data(&f, 100), 0));
        assert!(b.push(10, 5, data(&f, 110), 0)); // contiguous in the same file: merged
        assert!(b.push(15, 5, data(&f, 200), 0)); // a jump in the file: new entry
        assert!(b.push(20, 5, data(&g, 205), 0)); // another file: new entry
        assert!(b.push(25, 0, MapTarget::Zero, 0)); // empty stretches vanish
        assert!(b.push(25, 5, MapTarget::Zero, 0));
        assert!(b.push(30, 5, MapTarget::Zero, 0)); // zeros merge
        assert!(b.push(35, 5, MapTarget::Zero, 1)); // ... but not across layers
        assert!(b.push(40, 5, MapTarget::Unallocated, 1));
        let got: Vec<_> = b
            .entries
            .iter()
            .map(|e| (e.start, e.length, e.depth))
            .collect();
        assert_eq!(
            got,
            [
                (0, 15, 0),
                (15, 5, 0),
                (20, 5, 0),
                (25, 10, 0),
                (35, 5, 1),
                (40, 5, 1)
            ]
        );
    }

    #[test]
    fn a_limit_stops_after_a_prefix() {
        let f = file();
        let mut b = MapBuilder::with_limit(2);
        assert_eq!(b.room(), 2);
        assert!(b.push(0, 10, MapTarget::Zero, 0));
        assert!(b.push(10, 10, data(&f, 0), 0));
        // Continuing the last entry still fits; a new one does not.
        assert!(b.push(20, 10, data(&f, 10), 0));
        assert!(!b.push(30, 10, MapTarget::Zero, 0));
        assert!(b.stopped());
        assert_eq!(b.room(), 0);
        assert!(!b.push(40, 10, data(&f, 20), 0));
        let covered: u64 = b.entries.iter().map(|e| e.length).sum();
        assert_eq!(covered, 30);
    }

    #[test]
    fn advancing_moves_offsets_inside_targets() {
        let f = file();
        match data(&f, 100).advanced(7) {
            MapTarget::Data { offset, .. } => assert_eq!(offset, 107),
            t => panic!("{t:?}"),
        }
        assert!(matches!(MapTarget::Zero.advanced(7), MapTarget::Zero));
        assert!(data(&f, 0).is_data() && !MapTarget::Unallocated.is_data());
    }
}
