//! Walking a source's whole map front to back in bounded batches.
//!
//! Fixed-size windows make the cost of mapping a disk proportional to its virtual size: an
//! 8 EiB disk of zeros is 2^33 one-GiB windows. The walker asks instead for the next batch
//! of entries ([`Disk::map_prefix`]), so a huge zero, unallocated or flat stretch costs one
//! step and memory stays bounded by the batch, whatever the disk.

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::extent::{MapEntry, MapTarget};
use crate::image::{Disk, Image};

/// Entries asked of the source at a time.
const BATCH: usize = 1024;

/// Yields the map entries of `[start, end)` of a source in order. Past the source's end
/// (when `end` is beyond it) the walker yields one [`MapTarget::Zero`] entry of depth 0, so
/// two sources of different sizes can be walked side by side.
pub struct MapWalker<'a> {
    src: Mapped<'a>,
    size: u64,
    end: u64,
    /// Where the next batch starts.
    next_map: u64,
    queue: VecDeque<MapEntry>,
}

/// What a walker maps: a whole disk (through its backing chain), or one image's own layer.
enum Mapped<'a> {
    Disk(&'a dyn Disk),
    Layer(&'a Image),
}

impl<'a> MapWalker<'a> {
    /// A walker over `[start, end)` of `src`.
    pub fn new(src: &'a dyn Disk, start: u64, end: u64) -> Self {
        MapWalker {
            src: Mapped::Disk(src),
            size: src.size(),
            end,
            next_map: start,
            queue: VecDeque::new(),
        }
    }

    /// A walker over `[start, end)` of what `img` itself holds, not its backing chain
    /// ([`Image::map_layer`]: stretches it leaves to the chain are unallocated).
    pub fn layer(img: &'a Image, start: u64, end: u64) -> Self {
        MapWalker {
            src: Mapped::Layer(img),
            size: img.size(),
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
                let (at, len) = (self.next_map, to - self.next_map);
                let batch = match self.src {
                    Mapped::Disk(d) => d.map_prefix(at, len, BATCH)?,
                    Mapped::Layer(img) => img.map_layer_prefix(at, len, BATCH)?,
                };
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

/// A disk of no bytes: what a missing backing chain is to a walk, which reads it as zeros
/// throughout (see [`MapWalker`]).
pub(crate) struct NoDisk;

impl Disk for NoDisk {
    fn size(&self) -> u64 {
        0
    }
    fn map_prefix(&self, offset: u64, len: u64, _max: usize) -> Result<Vec<MapEntry>> {
        Err(Error::invalid(format!(
            "range {offset}+{len} is outside the 0-byte disk"
        )))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "range {offset}+{} is outside the 0-byte disk",
            buf.len()
        )))
    }
    fn file_ids(&self) -> Vec<crate::storage::FileId> {
        Vec::new()
    }
}

/// Walks two sources side by side: yields the stretches over which neither source's map
/// entry changes, with both entries. Compare and `compare -s` are built on it, so there is
/// one two-cursor merge of maps.
pub struct PairWalker<'a> {
    wa: MapWalker<'a>,
    wb: MapWalker<'a>,
    ea: Option<MapEntry>,
    eb: Option<MapEntry>,
    pos: u64,
    end: u64,
}

impl<'a> PairWalker<'a> {
    /// A walker over `[start, end)` of `a` and `b` (a source shorter than `end` reads as
    /// zeros past its end, see [`MapWalker`]).
    pub fn new(a: &'a dyn Disk, b: &'a dyn Disk, start: u64, end: u64) -> Self {
        PairWalker {
            wa: MapWalker::new(a, start, end),
            wb: MapWalker::new(b, start, end),
            ea: None,
            eb: None,
            pos: start,
            end,
        }
    }

    /// The entry of `w` covering `pos` (`cur` is the last one taken).
    fn covering(w: &mut MapWalker, cur: &mut Option<MapEntry>, pos: u64) -> Result<MapEntry> {
        loop {
            if let Some(e) = cur {
                if e.start + e.length > pos {
                    return Ok(e.clone());
                }
            }
            *cur = w.next()?;
            if cur.is_none() {
                return Err(Error::invalid(format!("map ends before offset {pos}")));
            }
        }
    }

    /// Continue from `pos` (forward only): what lies before it is not visited.
    pub(crate) fn skip_to(&mut self, pos: u64) {
        self.pos = self.pos.max(pos).min(self.end);
    }

    /// The next stretch `(start, end, entry of a, entry of b)`, or `None` at the end.
    #[allow(clippy::should_implement_trait)] // fallible: Iterator would hide the Result
    pub fn next(&mut self) -> Result<Option<(u64, u64, MapEntry, MapEntry)>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let ea = Self::covering(&mut self.wa, &mut self.ea, self.pos)?;
        let eb = Self::covering(&mut self.wb, &mut self.eb, self.pos)?;
        let start = self.pos;
        let end = (ea.start + ea.length)
            .min(eb.start + eb.length)
            .min(self.end);
        self.pos = end;
        Ok(Some((start, end, ea, eb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileId;

    /// A source of `size` bytes alternating 100-byte zero and unallocated stretches, that
    /// counts how often it is mapped.
    struct Striped {
        size: u64,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Disk for Striped {
        fn size(&self) -> u64 {
            self.size
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
            self.map_prefix(offset, len, usize::MAX)
        }
        fn map_prefix(&self, offset: u64, len: u64, max: usize) -> Result<Vec<MapEntry>> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut out = Vec::new();
            let mut pos = offset;
            while pos < offset + len && out.len() < max {
                let end = ((pos / 100 + 1) * 100).min(offset + len);
                let target = if (pos / 100).is_multiple_of(2) {
                    MapTarget::Zero
                } else {
                    MapTarget::Unallocated
                };
                out.push(MapEntry {
                    start: pos,
                    length: end - pos,
                    target,
                    depth: 0,
                });
                pos = end;
            }
            Ok(out)
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn file_ids(&self) -> Vec<FileId> {
            vec![]
        }
    }

    #[test]
    fn walks_in_bounded_batches_and_pads_past_the_end() {
        let src = Striped {
            size: 250_050,
            calls: Default::default(),
        };
        let mut w = MapWalker::new(&src, 50, 300_000);
        let mut pos = 50;
        let mut n = 0;
        while let Some(e) = w.next().unwrap() {
            assert_eq!(e.start, pos, "entries are contiguous");
            pos += e.length;
            n += 1;
        }
        assert_eq!(pos, 300_000);
        // 2500 stretches (one cut at the start), then one padding entry past the end.
        assert_eq!(n, 2501 + 1);
        let calls = src.calls.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(calls, 2501usize.div_ceil(BATCH), "one map call per batch");
    }

    #[test]
    fn an_empty_range_yields_nothing() {
        let src = Striped {
            size: 1000,
            calls: Default::default(),
        };
        assert!(MapWalker::new(&src, 500, 500).next().unwrap().is_none());
    }
}
