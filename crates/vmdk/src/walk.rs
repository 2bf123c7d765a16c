//! Walking a source's whole map front to back in bounded batches.
//!
//! Fixed-size windows make the cost of mapping a disk proportional to its virtual size: an
//! 8 EiB disk of zeros is 2^33 one-GiB windows. The walker asks instead for the next batch
//! of entries ([`Source::map_prefix`]), so a huge zero, unallocated or flat stretch costs one
//! step and memory stays bounded by the batch, whatever the disk.

use std::collections::VecDeque;

use crate::convert::Source;
use crate::error::{Error, Result};
use crate::map::{MapEntry, MapTarget};

/// Entries asked of the source at a time.
const BATCH: usize = 1024;

/// Yields the map entries of `[start, end)` of a source in order. Past the source's end
/// (when `end` is beyond it) the walker yields one [`MapTarget::Zero`] entry of depth 0, so
/// two sources of different sizes can be walked side by side.
pub struct MapWalker<'a> {
    src: &'a dyn Source,
    size: u64,
    end: u64,
    /// Where the next batch starts.
    next_map: u64,
    queue: VecDeque<MapEntry>,
}

impl<'a> MapWalker<'a> {
    /// A walker over `[start, end)` of `src`.
    pub fn new(src: &'a dyn Source, start: u64, end: u64) -> Self {
        MapWalker {
            src,
            size: src.size(),
            end,
            next_map: start,
            queue: VecDeque::new(),
        }
    }

    /// The next entry, or `None` once `end` is reached. Entries are contiguous; an entry may
    /// continue the previous one (batches are cut wherever the limit falls).
    #[allow(clippy::should_implement_trait)] // fallible: Iterator would hide the Result
    pub fn next(&mut self) -> Result<Option<MapEntry>> {
        if self.queue.is_empty() {
            if self.next_map >= self.end {
                return Ok(None);
            }
            if self.next_map < self.size {
                let to = self.end.min(self.size);
                let batch = self
                    .src
                    .map_prefix(self.next_map, to - self.next_map, BATCH)?;
                match batch.last() {
                    Some(e) if e.start + e.length > self.next_map => {
                        self.next_map = e.start + e.length
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "mapping made no progress at offset {}",
                            self.next_map
                        )))
                    }
                }
                self.queue.extend(batch);
            } else {
                self.queue.push_back(MapEntry {
                    start: self.next_map,
                    length: self.end - self.next_map,
                    target: MapTarget::Zero,
                    depth: 0,
                });
                self.next_map = self.end;
            }
        }
        Ok(self.queue.pop_front())
    }
}
